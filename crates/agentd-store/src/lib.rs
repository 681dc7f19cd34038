//! agentd's durable store: the [`Store`] trait the engine and server talk to,
//! its embedded SQLite implementation, and the PostgreSQL one for several
//! nodes on one database.
//!
//! Invariants every implementation keeps (DESIGN §4):
//! - every method is scoped by tenant, except the worker-side ones, which are
//!   scoped by a [`Lease`] (the run carries its tenant);
//! - a run's state change and the events describing it commit together;
//! - event `seq` is gapless per run from 1, and an event is published to
//!   readers ([`EventHub`]) only after it is durable;
//! - every write on a claimed run is conditional on its lease epoch, so a
//!   worker that lost its lease writes nothing ([`StoreError::LeaseLost`]).

mod error;
mod hub;
mod keys;
mod metrics;
pub mod postgres;
mod recovery;
mod sandboxes;
pub mod sqlite;
mod types;

pub use error::StoreError;
pub use hub::{EventHub, HubMessage, RunSubscription};
pub use keys::*;
pub use metrics::{StoreMetrics, StoreMetricsSnapshot};
pub use sandboxes::{
    ORPHAN_ERROR, ORPHAN_KILL_REASON, ORPHAN_PHASE, SandboxRecord, UNFINISHED_PHASES,
};
pub use types::*;

use agentd_core::time::Millis;
use agentd_core::{AuditRecord, Event, Message, NewEvent, Run, Session, TenantId};
use async_trait::async_trait;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Where committed events and wake-ups are announced.
    fn hub(&self) -> &EventHub;

    /// Counters of the store's own work.
    fn metrics(&self) -> StoreMetricsSnapshot;

    /// Cheap liveness check for `/health/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    // --- sessions -------------------------------------------------------

    /// Fails with [`StoreError::SessionExists`] when the id is taken in this tenant.
    async fn create_session(&self, new: NewSession) -> Result<Session, StoreError>;
    async fn get_session(&self, tenant: &TenantId, id: &str)
    -> Result<Option<Session>, StoreError>;
    async fn list_sessions(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<Session>, StoreError>;
    /// Cancels the session's unfinished runs, then deletes it and its history.
    /// `false` when there was no such session.
    async fn delete_session(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;
    async fn session_messages(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<Message>, StoreError>;

    // --- runs, client side ------------------------------------------------

    /// Writes the run, its `run.created` / `run.queued` events, a new session
    /// if asked, and the idempotency record, in one transaction.
    async fn create_run(&self, new: NewRun) -> Result<CreateRunOutcome, StoreError>;
    async fn get_run(&self, tenant: &TenantId, id: &str) -> Result<Option<Run>, StoreError>;
    async fn list_runs(
        &self,
        tenant: &TenantId,
        filter: RunFilter,
        page: PageRequest,
    ) -> Result<Page<Run>, StoreError>;
    /// Events with `seq > after_seq`, in order, at most `limit`.
    async fn events_after(
        &self,
        tenant: &TenantId,
        run_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;
    /// Cancels a queued or paused run at once; asks the lease holder of a
    /// running one through a control row. A finished run is returned unchanged.
    async fn cancel_run(&self, tenant: &TenantId, id: &str) -> Result<Option<Run>, StoreError>;
    /// Records a human's decisions for a paused run; once nothing is pending
    /// the run resumes (claimable by a worker), all in one transaction.
    async fn signal_run(&self, signal: SignalRun) -> Result<SignalOutcome, StoreError>;

    // --- runs, worker side ------------------------------------------------

    /// Claims up to `max` runs: queued ones first in their session, and
    /// running ones whose lease lapsed (recovery). Bumps each lease epoch.
    async fn claim_runs(&self, claim: ClaimRequest) -> Result<Vec<ClaimedRun>, StoreError>;
    /// Appends events, and optionally changes the run's state, if `lease` is
    /// still current. Returns the run's `last_seq` once they are durable.
    async fn append(
        &self,
        lease: &Lease,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> Result<i64, StoreError>;
    /// Extends every lease `owner` holds; returns which it still holds and the
    /// control rows pending for them.
    async fn heartbeat(&self, owner: &str, lease_ms: i64) -> Result<Heartbeat, StoreError>;
    /// Gives up every lease `owner` holds so another worker can take them now.
    async fn release_leases(&self, owner: &str) -> Result<(), StoreError>;
    /// Gives up one lease if `owner` still holds it at `epoch`: for a run
    /// the process no longer drives (its task ended on a store error), which
    /// the heartbeat would otherwise keep extending, so nobody recovered it.
    async fn release_run(&self, owner: &str, run_id: &str, epoch: i64) -> Result<(), StoreError>;

    // --- API keys and audit -------------------------------------------------

    async fn create_api_key(&self, key: ApiKey) -> Result<(), StoreError>;
    /// By id alone, across tenants: authentication starts from the credential,
    /// and the key says which tenant it acts on. Nothing else is unscoped.
    async fn find_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<ApiKey>, StoreError>;
    /// Idempotent; a revoked key also loses any rotation grace.
    async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
        now: i64,
    ) -> Result<KeyChange, StoreError>;
    async fn rotate_api_key(&self, rotation: KeyRotation) -> Result<KeyChange, StoreError>;
    /// Appends to the audit trail; durable when this returns.
    async fn record_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError>;
    async fn list_audit(
        &self,
        tenant: &TenantId,
        filter: AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, StoreError>;

    // --- sandbox sessions (DESIGN §6) -----------------------------------------

    /// Inserts or replaces the sandbox's record and appends its audit
    /// entries, in one transaction through the group-commit writer; durable
    /// when this returns.
    async fn put_sandbox(
        &self,
        record: SandboxRecord,
        audit: Vec<AuditRecord>,
    ) -> Result<(), StoreError>;
    async fn get_sandbox(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<SandboxRecord>, StoreError>;
    /// Newest first.
    async fn list_sandboxes(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<SandboxRecord>, StoreError>;
    /// Ends every record, in any tenant, still pending or running whose
    /// `deadline_at` is before `now`: no process can be behind it any more.
    /// It becomes [`ORPHAN_PHASE`] with [`ORPHAN_KILL_REASON`]. (SQLite also
    /// ends all of them at open: one process owns a data dir.) Returns how many.
    async fn end_orphaned_sandboxes(&self, now: Millis) -> Result<u64, StoreError>;
}

/// Gives `events` the seqs that follow `last_seq`, and their payload text:
/// the one place seqs are made, for both stores.
pub(crate) fn number_events(
    run_id: &str,
    last_seq: i64,
    events: &[NewEvent],
    now: Millis,
) -> Vec<Event> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Event::new(
                run_id.to_owned(),
                last_seq + 1 + i as i64,
                e.kind,
                now,
                e.value.clone(),
            )
        })
        .collect()
}

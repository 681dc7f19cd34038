//! The arguments and results of [`crate::Store`] methods.

use std::collections::HashMap;
use std::sync::Arc;

use agentd_core::signal::{SignalAction, SignalRefused};
use agentd_core::time::Millis;
use agentd_core::{AuditRecord, Run, RunStatus, RunTransition, TenantId, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Clone, Debug)]
pub struct NewSession {
    pub tenant_id: TenantId,
    pub id: String,
    pub agent: String,
    pub metadata: Value,
    pub created_at: Millis,
}

/// Which session a new run goes on.
#[derive(Clone, Debug)]
pub enum SessionTarget {
    /// Must already exist in the run's tenant.
    Existing(String),
    /// Created in the same transaction as the run.
    New(NewSession),
}

/// What an idempotent create remembers, so a retry gets the same answer.
#[derive(Clone, Debug)]
pub struct IdempotencyRecord {
    /// The route the key is scoped to, e.g. `POST /v1/runs`.
    pub route: String,
    pub key: String,
    /// SHA-256 of the request's canonical JSON.
    pub fingerprint: String,
    /// The response to replay.
    pub status: u16,
    pub body: Value,
}

#[derive(Clone, Debug)]
pub struct NewRun {
    /// Fully formed, `queued`; `last_seq` is set by the store.
    pub run: Run,
    pub session: SessionTarget,
    pub idempotency: Option<IdempotencyRecord>,
    /// The `run_created` entry, committed with the run so neither exists alone.
    pub audit: Option<AuditRecord>,
    /// Claim the run in the same commit if it can start at once.
    pub claim: Option<ClaimOnCreate>,
}

/// Asks `create_run` to claim the new run for this worker in the same
/// commit when it can start at once (its session has no other active run):
/// the run starts without a round trip through the dispatcher. A store may
/// decline (PostgreSQL does, since another node may be creating a run in
/// the same session right now); the run then waits `queued` for a claim as
/// usual.
#[derive(Clone, Debug)]
pub struct ClaimOnCreate {
    pub owner: Arc<str>,
    pub lease_ms: i64,
}

#[derive(Clone, Debug)]
pub enum CreateRunOutcome {
    /// `run` as created (`queued`); `claimed` when the store also claimed it
    /// as [`NewRun::claim`] asked, for the caller to start.
    Created {
        run: Box<Run>,
        claimed: Option<Box<ClaimedRun>>,
    },
    /// The key was seen before with the same request: the original answer.
    Replayed { status: u16, body: Value },
}

/// Position in a newest-first list: the last item of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: Millis,
    pub id: String,
}

#[derive(Clone, Debug)]
pub struct PageRequest {
    /// 1..=100, enforced by the caller.
    pub limit: u32,
    pub after: Option<Cursor>,
}

#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items may follow.
    pub next: Option<Cursor>,
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub session_id: Option<String>,
    pub agent: Option<String>,
    pub created_after: Option<Millis>,
}

#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// The claiming worker, unique per process (and node).
    pub owner: Arc<str>,
    pub max: usize,
    pub lease_ms: i64,
}

/// Proof that a worker holds a run. Only the store hands these out, so every
/// worker-side write carries an epoch the store can check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    run_id: String,
    tenant_id: TenantId,
    epoch: i64,
    owner: Arc<str>,
}

impl Lease {
    pub(crate) fn new(run_id: String, tenant_id: TenantId, epoch: i64, owner: Arc<str>) -> Self {
        Lease {
            run_id,
            tenant_id,
            epoch,
            owner,
        }
    }
    pub fn run_id(&self) -> &str {
        &self.run_id
    }
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

#[derive(Clone, Debug)]
pub struct ClaimedRun {
    pub lease: Lease,
    pub run: Run,
    /// The run was `running` under a lapsed lease: its last attempt was orphaned
    /// (the store already appended `step.done {retry_step}` and `run.worker.recovered`).
    pub recovered: bool,
    /// Control rows that were pending when it was claimed.
    pub controls: Vec<Control>,
}

/// A state change that goes with an append.
#[derive(Clone, Debug)]
pub struct RunUpdate {
    pub transition: RunTransition,
    pub output: Option<Value>,
    /// Added to the run's usage.
    pub usage: Option<Usage>,
    pub reason_code: Option<String>,
    pub error: Option<String>,
    /// Turns appended to the session's history (role, content).
    pub messages: Vec<(String, String)>,
    /// Marks the run's pending control rows handled.
    pub consume_controls: bool,
    /// For a pause: when the wait ends (`approval_timeout_secs`); the run
    /// then ends `limit_exceeded` without a worker.
    pub wait_until: Option<Millis>,
}

impl RunUpdate {
    pub fn new(transition: RunTransition) -> Self {
        RunUpdate {
            transition,
            output: None,
            usage: None,
            reason_code: None,
            error: None,
            messages: Vec::new(),
            consume_controls: false,
            wait_until: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlKind {
    Cancel,
    Signal,
}

impl ControlKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlKind::Cancel => "cancel",
            ControlKind::Signal => "signal",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cancel" => Some(ControlKind::Cancel),
            "signal" => Some(ControlKind::Signal),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Control {
    pub id: i64,
    pub run_id: String,
    pub kind: ControlKind,
    pub payload: Value,
}

#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    /// Run id → lease epoch for every lease the owner still holds.
    pub held: HashMap<String, i64>,
    pub controls: Vec<Control>,
}

/// Events every new run starts with (`run.created`, `run.queued`): its
/// `last_seq` once created.
pub const CREATION_EVENTS: i64 = 2;

/// A human's signal to a paused run (`POST /v1/runs/{id}/signal`).
#[derive(Clone, Debug)]
pub struct SignalRun {
    pub tenant_id: TenantId,
    pub run_id: String,
    pub action: SignalAction,
    pub request_id: Option<String>,
    pub payload: Value,
    /// The `signal_received` entry; its target and details are filled in.
    pub audit: AuditRecord,
    pub idempotency: Option<IdempotencyKey>,
    /// The id of the request carrying the signal, echoed in the receipt.
    pub http_request_id: String,
}

/// A client's idempotency key for a route, and its body's fingerprint.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub route: String,
    pub key: String,
    pub fingerprint: String,
}

/// What a signal did: the answer to the client (and what a retry replays).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SignalReceipt {
    pub run_id: String,
    /// The run's status after the signal: `running` once nothing is pending.
    pub status: RunStatus,
    /// The requests this signal answered.
    pub accepted: Vec<String>,
    /// True when this signal answered the last pending request.
    pub resumed: bool,
    pub request_id: String,
}

#[derive(Clone, Debug)]
pub enum SignalOutcome {
    Applied(SignalReceipt),
    /// The key was seen before with the same body.
    Replayed {
        status: u16,
        body: Value,
    },
    NotFound,
    /// The run is not paused.
    NotAwaiting(RunStatus),
    Refused(SignalRefused),
}

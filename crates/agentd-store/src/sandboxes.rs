//! Sandbox sessions' durable records (DESIGN §6): what `GET /v1/sandboxes`,
//! `/{id}` and `/{id}/result` answer once a sandbox has ended, across
//! daemon restarts. The sandbox crate owns the meaning of the fields (its
//! `Phase`, `Limits`, result body); the store keeps them as plain values so
//! it depends on nothing above it.

use agentd_core::TenantId;
use agentd_core::time::Millis;
use serde_json::Value;
use sqlx::FromRow;

use crate::StoreError;

/// Phases whose sandbox may still have a process behind it.
pub const UNFINISHED_PHASES: [&str; 2] = ["pending", "running"];
/// The phase and kill reason of a record whose daemon stopped while it ran.
pub const ORPHAN_PHASE: &str = "killed";
pub const ORPHAN_KILL_REASON: &str = "daemon_restarted";
pub const ORPHAN_ERROR: &str = "the daemon stopped while this sandbox ran";

/// One sandbox session as stored. Rewritten whole at each change.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxRecord {
    pub tenant_id: TenantId,
    pub id: String,
    /// `pending | running | succeeded | failed | killed | torn_down`.
    pub phase: String,
    pub language: String,
    /// JSON object of the caller's labels.
    pub labels: Value,
    /// JSON of the limits in force.
    pub limits: Value,
    /// JSON of the effective egress (`mode`, `allow`, `dropped`).
    pub egress: Value,
    pub kill_reason: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The result body (stdout, stderr, reported value, usage) once the
    /// workload ended; `None` before, and for records ended as orphans.
    pub result: Option<Value>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub torn_down_at: Option<Millis>,
    /// Past this a pending or running record can have no live process (its
    /// wall clock would have ended it): [`crate::Store::end_orphaned_sandboxes`].
    pub deadline_at: Millis,
}

pub(crate) const SANDBOX_COLUMNS: &str = "tenant_id, id, phase, language, labels, limits, \
    egress, kill_reason, exit_code, error, result, created_at, started_at, finished_at, \
    torn_down_at, deadline_at";

/// The columns an upsert replaces (all but the key).
pub(crate) const SANDBOX_UPDATE: &str = "phase = excluded.phase, language = excluded.language, \
    labels = excluded.labels, limits = excluded.limits, egress = excluded.egress, \
    kill_reason = excluded.kill_reason, exit_code = excluded.exit_code, error = excluded.error, \
    result = excluded.result, started_at = excluded.started_at, \
    finished_at = excluded.finished_at, torn_down_at = excluded.torn_down_at, \
    deadline_at = excluded.deadline_at";

/// A row as both stores return it (JSON as text).
#[derive(FromRow)]
pub(crate) struct SandboxRow {
    tenant_id: String,
    id: String,
    phase: String,
    language: String,
    labels: String,
    limits: String,
    egress: String,
    kill_reason: Option<String>,
    exit_code: Option<i32>,
    error: Option<String>,
    result: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    torn_down_at: Option<i64>,
    deadline_at: i64,
}

impl TryFrom<SandboxRow> for SandboxRecord {
    type Error = StoreError;

    fn try_from(r: SandboxRow) -> Result<Self, StoreError> {
        Ok(SandboxRecord {
            tenant_id: TenantId::parse(&r.tenant_id)
                .ok_or_else(|| StoreError::Corrupt(format!("tenant {:?}", r.tenant_id)))?,
            id: r.id,
            phase: r.phase,
            language: r.language,
            labels: serde_json::from_str(&r.labels)?,
            limits: serde_json::from_str(&r.limits)?,
            egress: serde_json::from_str(&r.egress)?,
            kill_reason: r.kill_reason,
            exit_code: r.exit_code,
            error: r.error,
            result: r.result.as_deref().map(serde_json::from_str).transpose()?,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            torn_down_at: r.torn_down_at,
            deadline_at: r.deadline_at,
        })
    }
}

/// The record's JSON columns as text, in [`SANDBOX_COLUMNS`] order.
pub(crate) struct SandboxText {
    pub labels: String,
    pub limits: String,
    pub egress: String,
    pub result: Option<String>,
}

impl SandboxText {
    pub fn of(r: &SandboxRecord) -> SandboxText {
        SandboxText {
            labels: r.labels.to_string(),
            limits: r.limits.to_string(),
            egress: r.egress.to_string(),
            result: r.result.as_ref().map(Value::to_string),
        }
    }
}

/// `(record, audit entries)`: what the writer's upsert op takes.
pub(crate) type PutSandbox = (SandboxRecord, Vec<agentd_core::AuditRecord>);

//! Row shapes and their conversion into domain types.

use agentd_core::time::to_rfc3339;
use agentd_core::{Event, EventType, Message, Run, RunStatus, Session, TenantId};

use crate::StoreError;

/// A run as selected. `last_seq` is derived from the log itself, so the hot
/// append path writes events and nothing else.
pub(crate) const RUN_COLUMNS: &str = "id, tenant_id, session_id, agent, status, input, \
    user_message, metadata, source, agent_config, output, usage, reason_code, error, \
    (SELECT COALESCE(MAX(e.seq), 0) FROM run_events e WHERE e.run_key = runs.run_key) AS last_seq, \
    lease_epoch, request_id, created_at, updated_at, started_at, finished_at";

/// The stored columns of `runs`, for INSERT.
pub(crate) const RUN_INSERT_COLUMNS: &str = "id, tenant_id, session_id, agent, status, input, \
    user_message, metadata, source, agent_config, output, usage, reason_code, error, \
    lease_epoch, request_id, created_at, updated_at, started_at, finished_at";

/// `last_seq` of the run in the statement's `FROM runs` row.
pub(crate) const LAST_SEQ_OF: &str =
    "(SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_key = runs.run_key)";

/// The events index's key for the run whose id is the statement's next
/// parameter (migration 0005: events are indexed by `(run_key, seq)`).
pub(crate) const RUN_KEY_OF: &str = "(SELECT run_key FROM runs WHERE id = ?)";

#[derive(sqlx::FromRow)]
pub(crate) struct RunRow {
    id: String,
    tenant_id: String,
    session_id: String,
    agent: String,
    status: String,
    input: String,
    user_message: String,
    metadata: String,
    source: String,
    agent_config: String,
    output: Option<String>,
    usage: String,
    reason_code: Option<String>,
    error: Option<String>,
    last_seq: i64,
    lease_epoch: i64,
    request_id: Option<String>,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl RunRow {
    /// A rusqlite row selected with [`RUN_COLUMNS`], in
    /// their order.
    pub(crate) fn from_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            session_id: r.get(2)?,
            agent: r.get(3)?,
            status: r.get(4)?,
            input: r.get(5)?,
            user_message: r.get(6)?,
            metadata: r.get(7)?,
            source: r.get(8)?,
            agent_config: r.get(9)?,
            output: r.get(10)?,
            usage: r.get(11)?,
            reason_code: r.get(12)?,
            error: r.get(13)?,
            last_seq: r.get(14)?,
            lease_epoch: r.get(15)?,
            request_id: r.get(16)?,
            created_at: r.get(17)?,
            updated_at: r.get(18)?,
            started_at: r.get(19)?,
            finished_at: r.get(20)?,
        })
    }
}

fn tenant(s: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("bad tenant id {s:?}")))
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;
    fn try_from(r: RunRow) -> Result<Run, StoreError> {
        Ok(Run {
            tenant_id: tenant(&r.tenant_id)?,
            status: RunStatus::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad run status {:?}", r.status)))?,
            input: serde_json::from_str(&r.input)?,
            metadata: serde_json::from_str(&r.metadata)?,
            source: serde_json::from_str(&r.source)?,
            agent_config: serde_json::from_str(&r.agent_config)?,
            output: r.output.as_deref().map(serde_json::from_str).transpose()?,
            usage: serde_json::from_str(&r.usage)?,
            id: r.id,
            session_id: r.session_id,
            agent: r.agent,
            user_message: r.user_message,
            reason_code: r.reason_code,
            error: r.error,
            last_seq: r.last_seq,
            lease_epoch: r.lease_epoch,
            request_id: r.request_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    tenant_id: String,
    id: String,
    agent: String,
    metadata: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> Result<Session, StoreError> {
        Ok(Session {
            tenant_id: tenant(&r.tenant_id)?,
            metadata: serde_json::from_str(&r.metadata)?,
            id: r.id,
            agent: r.agent,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    run_id: String,
    seq: i64,
    #[sqlx(rename = "type")]
    kind: String,
    payload: String,
    created_at: i64,
}

/// An event row's columns, in [`EventRow::from_columns`]'s order.
pub(crate) const EVENT_COLUMNS: &str = "run_id, seq, type, payload, created_at";

impl EventRow {
    /// A rusqlite row selected with [`EVENT_COLUMNS`], in their order.
    pub(crate) fn from_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            run_id: r.get(0)?,
            seq: r.get(1)?,
            kind: r.get(2)?,
            payload: r.get(3)?,
            created_at: r.get(4)?,
        })
    }
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;
    fn try_from(r: EventRow) -> Result<Event, StoreError> {
        let kind = EventType::parse(&r.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("bad event type {:?}", r.kind)))?;
        Ok(Event::stored(
            r.run_id,
            r.seq,
            kind,
            r.created_at,
            r.payload,
        )?)
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    idx: i64,
    run_id: String,
    role: String,
    content: String,
    created_at: i64,
}

impl MessageRow {
    /// `idx, run_id, role, content, created_at`, in that order.
    pub(crate) fn from_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
        Ok(MessageRow {
            idx: r.get(0)?,
            run_id: r.get(1)?,
            role: r.get(2)?,
            content: r.get(3)?,
            created_at: r.get(4)?,
        })
    }
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Message {
        Message {
            index: r.idx,
            role: r.role,
            content: r.content,
            run_id: r.run_id,
            created_at: to_rfc3339(r.created_at),
        }
    }
}

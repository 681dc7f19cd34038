//! Sessions as the store keeps them: reading a [`SandboxRecord`] back as the
//! API's view, result and (for a session no longer in memory) a summary
//! stream. The record is written by the session's writer (`runner`) and by
//! teardown; a record ended by the orphan sweep has no result body.

use agentd_core::AuditRecord;
use agentd_core::time::{Millis, to_rfc3339};
use agentd_store::{SandboxRecord, StoreError};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::launch::KillReason;
use crate::session::{Frame, Phase, SandboxResult, SandboxView, UsageView};
use crate::spec::{Language, Limits};

/// How long past its wall clock a sandbox's record may stay unfinished
/// before the sweep ends it as orphaned. The wall clock kills the workload
/// at its limit and the final record follows within milliseconds; this
/// covers a slow store. A record ended too early by it is overwritten by
/// the real outcome when that arrives.
pub const ORPHAN_GRACE_SECS: u64 = 10;

/// The record's `deadline_at`.
pub fn deadline(created_at: Millis, limits: &Limits) -> Millis {
    let secs = limits.wall_clock_secs.saturating_add(ORPHAN_GRACE_SECS);
    created_at.saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

fn field<T: DeserializeOwned>(r: &SandboxRecord, name: &str, v: &Value) -> Result<T, StoreError> {
    serde_json::from_value(v.clone())
        .map_err(|e| StoreError::Corrupt(format!("sandbox {} {name}: {e}", r.id)))
}

fn text<T: DeserializeOwned>(r: &SandboxRecord, name: &str, v: &str) -> Result<T, StoreError> {
    field(r, name, &Value::String(v.to_owned()))
}

fn phase(r: &SandboxRecord) -> Result<Phase, StoreError> {
    text(r, "phase", &r.phase)
}

fn kill_reason(r: &SandboxRecord) -> Result<Option<KillReason>, StoreError> {
    r.kill_reason
        .as_deref()
        .map(|k| text(r, "kill_reason", k))
        .transpose()
}

/// `GET /v1/sandboxes/{id}` from the store.
pub fn view_of(r: &SandboxRecord) -> Result<SandboxView, StoreError> {
    Ok(SandboxView {
        id: r.id.clone(),
        customer_id: r.tenant_id.to_string(),
        language: text::<Language>(r, "language", &r.language)?,
        phase: phase(r)?,
        kill_reason: kill_reason(r)?,
        exit_code: r.exit_code,
        error: r.error.clone(),
        limits: field(r, "limits", &r.limits)?,
        egress: field(r, "egress", &r.egress)?,
        labels: field(r, "labels", &r.labels)?,
        created_at: to_rfc3339(r.created_at),
        started_at: r.started_at.map(to_rfc3339),
        finished_at: r.finished_at.map(to_rfc3339),
        torn_down_at: r.torn_down_at.map(to_rfc3339),
    })
}

/// `GET /v1/sandboxes/{id}/result` from the store; `None` while the record
/// says the workload is still running (on another node, or not yet swept).
pub fn result_of(r: &SandboxRecord) -> Result<Option<SandboxResult>, StoreError> {
    let phase = phase(r)?;
    if !phase.is_finished() {
        return Ok(None);
    }
    let mut result = match &r.result {
        Some(body) => field::<SandboxResult>(r, "result", body)?,
        // Ended by the orphan sweep: nothing was collected.
        None => SandboxResult {
            id: r.id.clone(),
            phase,
            kill_reason: None,
            exit_code: r.exit_code,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            result: None,
            result_error: None,
            error: r.error.clone(),
            duration_ms: 0,
            usage: UsageView::default(),
        },
    };
    // Teardown and the sweep change the row after the body was written.
    result.phase = phase;
    result.kill_reason = kill_reason(r)?;
    Ok(Some(result))
}

/// The stream of a session no longer in memory (after a restart, or once
/// evicted): its audit trail, output, result and final phase, then `end`.
/// Live frames are not stored, so chunk boundaries are not kept.
pub fn replay(r: &SandboxRecord, audit: &[AuditRecord]) -> Result<Vec<Frame>, StoreError> {
    let mut bodies: Vec<(&'static str, Millis, Value)> = audit
        .iter()
        .map(|a| {
            let body = json!({"action": a.action.as_str(), "outcome": a.outcome.as_str(), "details": a.details});
            ("audit", a.created_at, body)
        })
        .collect();
    let at = r.finished_at.unwrap_or(r.created_at);
    let phase = phase(r)?;
    if let Some(result) = result_of(r)? {
        for (kind, data) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            if !data.is_empty() {
                bodies.push((kind, at, json!({"data": data})));
            }
        }
        let body = json!({"result": result.result, "result_error": result.result_error, "exit_code": result.exit_code});
        bodies.push(("result", at, body));
    }
    let last = r.torn_down_at.unwrap_or(at);
    bodies.push((
        "phase",
        last,
        json!({"phase": phase, "kill_reason": kill_reason(r)?}),
    ));
    if phase.is_finished() {
        bodies.push(("end", last, json!({"phase": phase})));
    }
    Ok(bodies
        .into_iter()
        .enumerate()
        .map(|(i, (kind, at, body))| Frame {
            seq: i as u64 + 1,
            kind,
            timestamp: to_rfc3339(at),
            body: match body {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
        })
        .collect())
}

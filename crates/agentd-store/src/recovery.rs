//! What a claim reads back from a run's log, decoded the same way on every
//! backend: the attempt a lost worker left open, and pending control rows.

use agentd_core::event::payload::{StepOutcome, step_done};
use agentd_core::{EventType, NewEvent};
use serde_json::{Value, json};

use crate::{Control, ControlKind};

/// The `step.done {retry_step}` that closes an attempt its worker never
/// finished, given the run's newest `step.started`/`step.done` event
/// (`kind`, `payload`); `None` when that attempt was closed.
pub(crate) fn orphaned_step_done(kind: &str, payload: &str) -> Option<NewEvent> {
    if kind != EventType::StepStarted.as_str() {
        return None;
    }
    let started: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    let step_id = started["step_id"].as_str().unwrap_or_default();
    let attempt = started["attempt"].as_u64().unwrap_or(1) as u32;
    Some(step_done(
        step_id,
        attempt,
        StepOutcome::RetryStep,
        Some("WORKER_LOST"),
        json!({}),
    ))
}

/// A `run_controls` row (`id, run_id, kind, payload`); `None` for a kind
/// this version does not know.
pub(crate) fn control_of(
    (id, run_id, kind, payload): (i64, String, String, String),
) -> Option<Control> {
    Some(Control {
        id,
        run_id,
        kind: ControlKind::parse(&kind)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
    })
}

//! Signals to a paused run: the decisions, and the resume once nothing is
//! pending, in one transaction with the audit entry and the idempotency key.

use agentd_core::signal::{PauseState, decide};

use super::runs::{prior_answer, remember_answer};
use super::*;
use crate::sqlite::keys::insert_audit;
use crate::sqlite::rows::{EVENT_COLUMNS, EventRow};
use crate::{SignalOutcome, SignalReceipt, SignalRun};

pub(crate) fn signal_run(
    c: &Connection,
    ctx: &mut Ctx,
    s: &SignalRun,
) -> Op<Result<SignalOutcome, StoreError>> {
    let now = now_millis();
    if let Some(idem) = &s.idempotency {
        match prior_answer(
            c,
            &s.tenant_id,
            &idem.route,
            &idem.key,
            &idem.fingerprint,
            now,
        )? {
            Some(Ok((status, body))) => {
                return Ok(Applied::value(Ok(SignalOutcome::Replayed { status, body })));
            }
            Some(Err(e)) => return Ok(Applied::value(Err(e))),
            None => {}
        }
    }
    let Some(mut run) = load_run(c, &s.run_id)?.filter(|r| r.tenant_id == s.tenant_id) else {
        return Ok(Applied::value(Ok(SignalOutcome::NotFound)));
    };
    if run.status != RunStatus::AwaitingInput {
        return Ok(Applied::value(Ok(SignalOutcome::NotAwaiting(run.status))));
    }
    let rows: Vec<EventRow> = c
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM run_events \
             WHERE run_key = {RUN_KEY_OF} AND type IN ('run.awaiting_input', 'run.signal_received') \
             ORDER BY seq"
        ))?
        .query_map([&s.run_id], EventRow::from_columns)?
        .collect::<rusqlite::Result<_>>()?;
    let events = rows
        .into_iter()
        .map(Event::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    let mut state = PauseState::from_events(&events);
    let decisions = match decide(&state, s.action, s.request_id.as_deref(), &s.payload) {
        Ok(d) => d,
        Err(refused) => return Ok(Applied::value(Ok(SignalOutcome::Refused(refused)))),
    };

    let mut new_events: Vec<NewEvent> = decisions
        .iter()
        .map(|d| {
            let mut value = serde_json::to_value(d).unwrap_or_default();
            value["actor"] = json!(s.audit.actor);
            NewEvent::new(EventType::SignalReceived, value)
        })
        .collect();
    for d in &decisions {
        state.decisions.push(d.clone());
    }
    let resumed = state.outstanding().is_empty();
    if resumed {
        run.status = run
            .status
            .apply(RunTransition::Resume)
            .map_err(|e| corrupt(e.into()))?;
        new_events.push(NewEvent::new(EventType::Resumed, json!({})));
    }
    ctx.forget(&run.id);
    let stored = insert_events(c, &run.tenant_id, &run.id, run.last_seq, &new_events, now)?;
    if resumed {
        // Claimable at once; the claim sees `run.resumed` last and starts
        // a worker rather than a recovery.
        c.prepare_cached(
            "UPDATE runs SET status = 'running', lease_owner = NULL, lease_expires_at = 0, \
             updated_at = ? WHERE id = ?",
        )?
        .execute(params![now, run.id])?;
    }
    let accepted: Vec<String> = decisions.iter().map(|d| d.request_id.clone()).collect();
    let mut audit = s.audit.clone();
    audit.target_type = Some("run".into());
    audit.target_id = Some(run.id.clone());
    audit.details = json!({"action": s.action, "requests": accepted, "resumed": resumed});
    insert_audit(c, std::slice::from_ref(&audit))?;

    let receipt = SignalReceipt {
        run_id: run.id.clone(),
        status: run.status,
        accepted,
        resumed,
        request_id: s.http_request_id.clone(),
    };
    if let Some(idem) = &s.idempotency {
        let body = serde_json::to_value(&receipt).unwrap_or_default();
        remember_answer(
            c,
            &s.tenant_id,
            &idem.route,
            &idem.key,
            &idem.fingerprint,
            (200, &body),
            now,
        )?;
    }
    Ok(Applied {
        value: Ok(SignalOutcome::Applied(receipt)),
        events: stored,
        wake_workers: resumed,
        controls: Vec::new(),
    })
}

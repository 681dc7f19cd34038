//! The worker side: claims, heartbeats, releases.

use std::sync::Arc;

use super::*;
use crate::recovery::{control_of, orphaned_step_done};

/// `?, ?, …` for a dynamic `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(crate) fn claim_runs(c: &Connection, ctx: &mut Ctx, req: &ClaimRequest) -> Op<Vec<ClaimedRun>> {
    let now = now_millis();
    let expired = expire_waits(c, ctx, now)?;
    let pair = |r: &rusqlite::Row| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
    // Lapsed leases first (recovery), then queued runs that are first in
    // their session. Two queries, each on its own index, so neither scans
    // the other's rows.
    let mut candidates: Vec<(String, String)> = c
        .prepare_cached(
            "SELECT id, status FROM runs INDEXED BY runs_by_lease WHERE status = 'running' \
             AND lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?",
        )?
        .query_map(params![now, req.max as i64], pair)?
        .collect::<rusqlite::Result<_>>()?;
    let room = req.max.saturating_sub(candidates.len());
    if room > 0 {
        let mut queued = c.prepare_cached(
            "SELECT r.id, r.status FROM runs r WHERE r.status = 'queued' \
             AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.tenant_id = r.tenant_id \
                 AND p.session_id = r.session_id \
                 AND p.status IN ('queued', 'running', 'awaiting_input') \
                 AND (p.created_at < r.created_at \
                   OR (p.created_at = r.created_at AND p.id < r.id))) \
             ORDER BY r.created_at, r.id LIMIT ?",
        )?;
        for row in queued.query_map([room as i64], pair)? {
            candidates.push(row?);
        }
    }

    if candidates.is_empty() {
        return Ok(Applied {
            value: Vec::new(),
            wake_workers: !expired.is_empty(),
            events: expired,
            controls: Vec::new(),
        });
    }

    // Every claim of the batch in one UPDATE and one SELECT.
    let list = placeholders(candidates.len());
    let ids = candidates.iter().map(|(id, _)| id.as_str());
    let lease_expires = now + req.lease_ms;
    let owner: &str = &req.owner;
    let head: [&dyn rusqlite::ToSql; 4] = [&owner, &lease_expires, &now, &now];
    c.prepare(&format!(
        "UPDATE runs SET status = 'running', lease_epoch = lease_epoch + 1, lease_owner = ?, \
         lease_expires_at = ?, started_at = COALESCE(started_at, ?), updated_at = ? \
         WHERE id IN ({list})"
    ))?
    .execute(rusqlite::params_from_iter(head.into_iter().chain(
        candidates.iter().map(|(id, _)| id as &dyn rusqlite::ToSql),
    )))?;
    let rows: Vec<RunRow> = c
        .prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({list}) ORDER BY created_at, id"
        ))?
        .query_map(rusqlite::params_from_iter(ids), RunRow::from_columns)?
        .collect::<rusqlite::Result<_>>()?;

    let mut claimed = Vec::with_capacity(rows.len());
    let mut published = Vec::new();
    for row in rows {
        let run = Run::try_from(row).map_err(corrupt)?;
        let id = run.id.clone();
        let was_running = candidates
            .iter()
            .any(|(c, status)| c == &id && status == RunStatus::Running.as_str());
        // A run resumed by a signal waits `running` without a lease; its
        // claim starts a worker, it recovers nothing.
        let recovered = was_running && !last_is_resume(c, &id)?;
        let mut events = Vec::new();
        if recovered {
            if let Some(orphan) = orphaned_step(c, &id)? {
                events.push(orphan);
            }
            events.push(NewEvent::new(
                EventType::WorkerRecovered,
                json!({"worker": &*req.owner, "lease_epoch": run.lease_epoch}),
            ));
        } else {
            events.push(worker_started(&req.owner, run.lease_epoch));
        }
        // Control rows are only written for running runs (a queued one is
        // cancelled on the spot), so only a recovered or resumed run can
        // have any.
        let controls = if was_running {
            pending_controls(c, &id)?
        } else {
            Vec::new()
        };
        let (claim, stored) = hold(c, ctx, run, &req.owner, &events, now)?;
        published.extend(stored);
        claimed.push(ClaimedRun {
            recovered,
            controls,
            ..claim
        });
    }
    published.extend(expired);
    Ok(Applied {
        value: claimed,
        events: published,
        wake_workers: false,
        controls: Vec::new(),
    })
}

/// `run.worker.started` for a fresh claim by `owner`.
pub(super) fn worker_started(owner: &str, epoch: i64) -> NewEvent {
    NewEvent::new(
        EventType::WorkerStarted,
        json!({"worker": owner, "lease_epoch": epoch}),
    )
}

/// The claim of `run`, whose row already carries `owner`'s new lease: its
/// claim `events` numbered after its `last_seq` and deferred to the batch's
/// flush (with everyone's deltas), and the run cached for the appends that
/// follow. Returns a fresh claim (not recovered, no controls) and the
/// events to announce.
pub(super) fn hold(
    c: &Connection,
    ctx: &mut Ctx,
    mut run: Run,
    owner: &Arc<str>,
    events: &[NewEvent],
    now: i64,
) -> rusqlite::Result<(ClaimedRun, Vec<Event>)> {
    let run_key = run_key(c, &run.id)?;
    let stored = number_events(&run.id, run.last_seq, events, now);
    run.last_seq += stored.len() as i64;
    // Cached first, then deferred.
    ctx.remember(
        run.id.clone(),
        CachedRun {
            run_key,
            tenant: run.tenant_id.clone(),
            status: RunStatus::Running,
            epoch: run.lease_epoch,
            owner: Some(owner.clone()),
            last_seq: run.last_seq,
            dirty: false,
        },
    );
    ctx.defer(&run.id, &stored);
    let claim = ClaimedRun {
        lease: Lease::new(
            run.id.clone(),
            run.tenant_id.clone(),
            run.lease_epoch,
            owner.clone(),
        ),
        run,
        recovered: false,
        controls: Vec::new(),
    };
    Ok((claim, stored))
}

/// Whether the run's newest event is `run.resumed`.
fn last_is_resume(c: &Connection, run_id: &str) -> rusqlite::Result<bool> {
    let last: Option<String> = c
        .prepare_cached(&format!(
            "SELECT type FROM run_events WHERE run_key = {RUN_KEY_OF} ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row([run_id], |r| r.get(0))
        .optional()?;
    Ok(last.is_some_and(|t| t == EventType::Resumed.as_str()))
}

/// Ends paused runs whose wait for a human ran out (`approval_timeout_secs`):
/// `run.limit_exceeded`, with no worker involved.
fn expire_waits(c: &Connection, ctx: &mut Ctx, now: i64) -> rusqlite::Result<Vec<Event>> {
    let due: Vec<RunRow> = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_by_wait \
             WHERE status = 'awaiting_input' AND lease_expires_at < ? LIMIT 100"
        ))?
        .query_map([now], RunRow::from_columns)?
        .collect::<rusqlite::Result<_>>()?;
    let mut published = Vec::new();
    for row in due {
        let run = Run::try_from(row).map_err(corrupt)?;
        ctx.forget(&run.id);
        let next = run
            .status
            .apply(RunTransition::ExceedLimit)
            .map_err(|e| corrupt(e.into()))?;
        let event = NewEvent::new(
            EventType::LimitExceeded,
            json!({"limit": "approval_timeout_secs", "reason_code": "APPROVAL_TIMEOUT"}),
        );
        let stored = insert_events(c, &run.tenant_id, &run.id, run.last_seq, &[event], now)?;
        c.prepare_cached(
            "UPDATE runs SET status = ?, reason_code = 'APPROVAL_TIMEOUT', updated_at = ?, \
             finished_at = ?, lease_expires_at = NULL WHERE id = ?",
        )?
        .execute(params![next.as_str(), now, now, run.id])?;
        published.extend(stored);
    }
    Ok(published)
}

/// The `step.done {retry_step}` that closes an attempt its worker never finished.
fn orphaned_step(c: &Connection, run_id: &str) -> rusqlite::Result<Option<NewEvent>> {
    let last: Option<(String, String)> = c
        .prepare_cached(&format!(
            "SELECT type, payload FROM run_events WHERE run_key = {RUN_KEY_OF} \
             AND type IN ('step.started', 'step.done') ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(last.and_then(|(kind, payload)| orphaned_step_done(&kind, &payload)))
}

fn pending_controls(c: &Connection, run_id: &str) -> rusqlite::Result<Vec<Control>> {
    let mut select = c.prepare_cached(
        "SELECT id, run_id, kind, payload FROM run_controls \
         WHERE run_id = ? AND consumed_at IS NULL ORDER BY id",
    )?;
    let rows = select.query_map([run_id], control_columns)?;
    Ok(rows
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter_map(control_of)
        .collect())
}

type ControlColumns = (i64, String, String, String);

fn control_columns(r: &rusqlite::Row) -> rusqlite::Result<ControlColumns> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

pub(crate) fn heartbeat(
    c: &Connection,
    _ctx: &mut Ctx,
    (owner, lease_ms): &(String, i64),
) -> Op<Heartbeat> {
    let now = now_millis();
    c.prepare_cached(
        "UPDATE runs SET lease_expires_at = ? WHERE lease_owner = ? AND status = 'running'",
    )?
    .execute(params![now + lease_ms, owner])?;
    let held = c
        .prepare_cached(
            "SELECT id, lease_epoch FROM runs WHERE lease_owner = ? AND status = 'running'",
        )?
        .query_map([owner], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let controls = c
        .prepare_cached(
            "SELECT c.id, c.run_id, c.kind, c.payload FROM run_controls c \
             JOIN runs r ON r.id = c.run_id \
             WHERE r.lease_owner = ? AND r.status = 'running' AND c.consumed_at IS NULL \
             ORDER BY c.id",
        )?
        .query_map([owner], control_columns)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Applied::value(Heartbeat {
        held,
        controls: controls.into_iter().filter_map(control_of).collect(),
    }))
}

pub(crate) fn release_leases(c: &Connection, ctx: &mut Ctx, owner: &String) -> Op<()> {
    c.prepare_cached(
        "UPDATE runs SET lease_owner = NULL, lease_expires_at = 0 \
         WHERE lease_owner = ? AND status = 'running'",
    )?
    .execute([owner])?;
    ctx.forget_all();
    let mut applied = Applied::value(());
    applied.wake_workers = true;
    Ok(applied)
}

/// Gives up one lease, if `owner` still holds it at `epoch`.
pub(crate) fn release_run(
    c: &Connection,
    ctx: &mut Ctx,
    (owner, run_id, epoch): &(String, String, i64),
) -> Op<()> {
    let done = c
        .prepare_cached(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = 0 \
             WHERE id = ? AND lease_owner = ? AND lease_epoch = ? AND status = 'running'",
        )?
        .execute(params![run_id, owner, epoch])?;
    ctx.forget(run_id);
    let mut applied = Applied::value(());
    applied.wake_workers = done > 0;
    Ok(applied)
}

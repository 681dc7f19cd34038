//! The worker side on PostgreSQL: claims (`FOR UPDATE SKIP LOCKED`, so nodes
//! never wait on each other's candidates), heartbeats, releases. Lease times
//! are on the database clock.

use super::*;
use crate::recovery::{control_of, orphaned_step_done};

pub(crate) fn claim_runs<'c>(
    c: &'c mut PgConnection,
    ctx: &'c mut Ctx,
    req: &'c ClaimRequest,
) -> Op<'c, Vec<ClaimedRun>> {
    Box::pin(async move {
        let now = ctx.now;
        let expired = expire_waits(c, now).await?;
        // Lapsed leases first (recovery), then queued runs that are first in
        // their session. A row another node is claiming is skipped, not
        // waited for; a queued run behind it in its session stays excluded
        // because the locked one is still `queued` to us.
        let mut candidates: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, status FROM runs WHERE status = 'running' AND lease_expires_at < $1 \
             ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(req.max as i64)
        .fetch_all(&mut *c)
        .await?;
        let room = req.max.saturating_sub(candidates.len());
        if room > 0 {
            let queued: Vec<(String, String)> = sqlx::query_as(
                "SELECT r.id, r.status FROM runs r WHERE r.status = 'queued' \
                 AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.tenant_id = r.tenant_id \
                     AND p.session_id = r.session_id \
                     AND p.status IN ('queued', 'running', 'awaiting_input') \
                     AND (p.created_at < r.created_at \
                       OR (p.created_at = r.created_at AND p.id < r.id))) \
                 ORDER BY r.created_at, r.id LIMIT $1 FOR UPDATE OF r SKIP LOCKED",
            )
            .bind(room as i64)
            .fetch_all(&mut *c)
            .await?;
            candidates.extend(queued);
        }

        if candidates.is_empty() {
            return Ok(Applied {
                wake_workers: !expired.is_empty(),
                events: expired,
                ..Applied::value(Vec::new())
            });
        }

        let ids: Vec<&str> = candidates.iter().map(|(id, _)| id.as_str()).collect();
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "UPDATE runs SET status = 'running', lease_epoch = lease_epoch + 1, \
             lease_owner = $1, lease_expires_at = $2, started_at = COALESCE(started_at, $3), \
             updated_at = $3 WHERE id = ANY($4) RETURNING {RUN_COLUMNS}"
        ))
        .bind(&*req.owner)
        .bind(now + req.lease_ms)
        .bind(now)
        .bind(&ids)
        .fetch_all(&mut *c)
        .await?;
        let mut runs = rows
            .into_iter()
            .map(Run::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        runs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));

        let mut claimed = Vec::with_capacity(runs.len());
        let mut published = Vec::new();
        for mut run in runs {
            let id = run.id.clone();
            let was_running = candidates
                .iter()
                .any(|(c, status)| c == &id && status == RunStatus::Running.as_str());
            // A run resumed by a signal waits `running` without a lease; its
            // claim starts a worker, it recovers nothing.
            let recovered = was_running && !last_is_resume(c, &id).await?;
            let mut events = Vec::new();
            if recovered {
                if let Some(orphan) = orphaned_step(c, &id).await? {
                    events.push(orphan);
                }
                events.push(NewEvent::new(
                    EventType::WorkerRecovered,
                    json!({"worker": &*req.owner, "lease_epoch": run.lease_epoch}),
                ));
            } else {
                events.push(NewEvent::new(
                    EventType::WorkerStarted,
                    json!({"worker": &*req.owner, "lease_epoch": run.lease_epoch}),
                ));
            }
            let stored = insert_events(c, &run.tenant_id, &id, run.last_seq, &events, now).await?;
            run.last_seq += stored.len() as i64;
            published.extend(stored);
            // Control rows are only written for running runs (a queued one is
            // cancelled on the spot), so only a recovered or resumed run can
            // have any.
            let controls = if was_running {
                pending_controls(c, &id).await?
            } else {
                Vec::new()
            };
            claimed.push(ClaimedRun {
                lease: Lease::new(
                    id,
                    run.tenant_id.clone(),
                    run.lease_epoch,
                    req.owner.clone(),
                ),
                run,
                recovered,
                controls,
            });
        }
        published.extend(expired);
        Ok(Applied {
            events: published,
            ..Applied::value(claimed)
        })
    })
}

/// Whether the run's newest event is `run.resumed`.
async fn last_is_resume(c: &mut PgConnection, run_id: &str) -> sqlx::Result<bool> {
    let last: Option<(String,)> =
        sqlx::query_as("SELECT type FROM run_events WHERE run_id = $1 ORDER BY seq DESC LIMIT 1")
            .bind(run_id)
            .fetch_optional(&mut *c)
            .await?;
    Ok(last.is_some_and(|(t,)| t == EventType::Resumed.as_str()))
}

/// Ends paused runs whose wait for a human ran out (`approval_timeout_secs`):
/// `run.limit_exceeded`, with no worker involved. A run another node is
/// expiring right now is skipped.
async fn expire_waits(c: &mut PgConnection, now: i64) -> sqlx::Result<Vec<Event>> {
    let due: Vec<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM runs \
         WHERE status = 'awaiting_input' AND lease_expires_at < $1 \
         LIMIT 100 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .fetch_all(&mut *c)
    .await?;
    let mut published = Vec::new();
    for row in due {
        let run = Run::try_from(row).map_err(corrupt)?;
        let next = run
            .status
            .apply(RunTransition::ExceedLimit)
            .map_err(|e| corrupt(e.into()))?;
        let event = NewEvent::new(
            EventType::LimitExceeded,
            json!({"limit": "approval_timeout_secs", "reason_code": "APPROVAL_TIMEOUT"}),
        );
        let stored = insert_events(c, &run.tenant_id, &run.id, run.last_seq, &[event], now).await?;
        sqlx::query(
            "UPDATE runs SET status = $1, reason_code = 'APPROVAL_TIMEOUT', updated_at = $2, \
             finished_at = $2, lease_expires_at = NULL WHERE id = $3",
        )
        .bind(next.as_str())
        .bind(now)
        .bind(&run.id)
        .execute(&mut *c)
        .await?;
        published.extend(stored);
    }
    Ok(published)
}

/// The `step.done {retry_step}` that closes an attempt its worker never finished.
async fn orphaned_step(c: &mut PgConnection, run_id: &str) -> sqlx::Result<Option<NewEvent>> {
    let last: Option<(String, String)> = sqlx::query_as(
        "SELECT type, payload FROM run_events WHERE run_id = $1 \
         AND type IN ('step.started', 'step.done') ORDER BY seq DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(&mut *c)
    .await?;
    Ok(last.and_then(|(kind, payload)| orphaned_step_done(&kind, &payload)))
}

async fn pending_controls(c: &mut PgConnection, run_id: &str) -> sqlx::Result<Vec<Control>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, run_id, kind, payload FROM run_controls \
         WHERE run_id = $1 AND consumed_at IS NULL ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().filter_map(control_of).collect())
}

pub(crate) fn heartbeat<'c>(
    c: &'c mut PgConnection,
    ctx: &'c mut Ctx,
    (owner, lease_ms): &'c (String, i64),
) -> Op<'c, Heartbeat> {
    Box::pin(async move {
        let held: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE runs SET lease_expires_at = $1 WHERE lease_owner = $2 AND status = 'running' \
             RETURNING id, lease_epoch",
        )
        .bind(ctx.now + lease_ms)
        .bind(owner)
        .fetch_all(&mut *c)
        .await?;
        let controls: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT c.id, c.run_id, c.kind, c.payload FROM run_controls c \
             JOIN runs r ON r.id = c.run_id \
             WHERE r.lease_owner = $1 AND r.status = 'running' AND c.consumed_at IS NULL \
             ORDER BY c.id",
        )
        .bind(owner)
        .fetch_all(&mut *c)
        .await?;
        Ok(Applied::value(Heartbeat {
            held: held.into_iter().collect(),
            controls: controls.into_iter().filter_map(control_of).collect(),
        }))
    })
}

pub(crate) fn release_leases<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    owner: &'c String,
) -> Op<'c, ()> {
    Box::pin(async move {
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = 0 \
             WHERE lease_owner = $1 AND status = 'running'",
        )
        .bind(owner)
        .execute(c)
        .await?;
        Ok(Applied {
            wake_workers: true,
            ..Applied::value(())
        })
    })
}

/// Gives up one lease, if `owner` still holds it at `epoch`.
pub(crate) fn release_run<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    (owner, run_id, epoch): &'c (String, String, i64),
) -> Op<'c, ()> {
    Box::pin(async move {
        let done = sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = 0 \
             WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND status = 'running'",
        )
        .bind(run_id)
        .bind(owner)
        .bind(epoch)
        .execute(c)
        .await?;
        Ok(Applied {
            wake_workers: done.rows_affected() > 0,
            ..Applied::value(())
        })
    })
}

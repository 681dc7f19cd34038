//! Write operations, each run by the writer inside a group transaction.
//!
//! Each is a plain function returning a boxed future so the writer can queue
//! them uniformly. SQL errors (`sqlx::Error`) abort the batch; domain outcomes
//! (a taken id, a lost lease) are values in the result and abort nothing.

use agentd_core::event::payload::{StepOutcome, step_done};
use agentd_core::time::now_millis;
use agentd_core::{Event, EventType, NewEvent, Run, RunStatus, RunTransition, Session, TenantId};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::batch::{CachedRun, Ctx};
use super::rows::{LAST_SEQ_OF, RUN_COLUMNS, RUN_INSERT_COLUMNS, RunRow};
use super::writer::Applied;
use crate::{
    ClaimRequest, ClaimedRun, Control, ControlKind, CreateRunOutcome, Heartbeat, Lease, NewRun,
    NewSession, RunUpdate, SessionTarget, StoreError,
};

/// How long an idempotency key is remembered (DESIGN §3).
pub(crate) const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

type Op<'c, R> = BoxFuture<'c, sqlx::Result<Applied<R>>>;

async fn load_run(c: &mut SqliteConnection, id: &str) -> sqlx::Result<Option<Run>> {
    let row: Option<RunRow> =
        sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"))
            .bind(id)
            .fetch_optional(c)
            .await?;
    row.map(Run::try_from).transpose().map_err(corrupt)
}

/// Domain decoding errors inside a write surface as SQL errors: they abort
/// the job, which is then retried alone and reported.
fn corrupt(e: StoreError) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

async fn insert_session(c: &mut SqliteConnection, s: &NewSession) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO sessions (tenant_id, id, agent, metadata, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(s.tenant_id.as_str())
    .bind(&s.id)
    .bind(&s.agent)
    .bind(s.metadata.to_string())
    .bind(s.created_at)
    .bind(s.created_at)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn session_of(s: &NewSession) -> Session {
    Session {
        tenant_id: s.tenant_id.clone(),
        id: s.id.clone(),
        agent: s.agent.clone(),
        metadata: s.metadata.clone(),
        created_at: s.created_at,
        updated_at: s.created_at,
    }
}

/// Appends `events` after `last_seq` in one statement; returns them durable-to-be.
async fn insert_events(
    c: &mut SqliteConnection,
    tenant: &TenantId,
    run_id: &str,
    last_seq: i64,
    events: &[NewEvent],
    now: i64,
) -> sqlx::Result<Vec<Event>> {
    let stored: Vec<Event> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Event {
            run_id: run_id.to_owned(),
            seq: last_seq + 1 + i as i64,
            kind: e.kind,
            created_at: now,
            value: e.value.clone(),
        })
        .collect();
    // 6 parameters a row; stay well under SQLite's variable limit.
    for chunk in stored.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO run_events (run_id, seq, tenant_id, type, payload, created_at) ",
        );
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(&e.run_id)
                .push_bind(e.seq)
                .push_bind(tenant.as_str())
                .push_bind(e.kind.as_str())
                .push_bind(e.value.to_string())
                .push_bind(e.created_at);
        });
        qb.build().execute(&mut *c).await?;
    }
    Ok(stored)
}

pub(crate) fn create_session<'c>(
    c: &'c mut SqliteConnection,
    _ctx: &'c mut Ctx,
    s: &'c NewSession,
) -> Op<'c, Result<Session, StoreError>> {
    Box::pin(async move {
        let value = if insert_session(c, s).await? {
            Ok(session_of(s))
        } else {
            Err(StoreError::SessionExists)
        };
        Ok(Applied::value(value))
    })
}

pub(crate) fn create_run<'c>(
    c: &'c mut SqliteConnection,
    _ctx: &'c mut Ctx,
    new: &'c NewRun,
) -> Op<'c, Result<CreateRunOutcome, StoreError>> {
    Box::pin(async move {
        let run = &new.run;
        let now = run.created_at;
        if let Some(idem) = &new.idempotency {
            let prior: Option<(String, i64, String, i64)> = sqlx::query_as(
                "SELECT fingerprint, status, body, created_at FROM idempotency_keys \
                 WHERE tenant_id = ? AND route = ? AND key = ?",
            )
            .bind(run.tenant_id.as_str())
            .bind(&idem.route)
            .bind(&idem.key)
            .fetch_optional(&mut *c)
            .await?;
            if let Some((fingerprint, status, body, created_at)) = prior {
                if created_at > now - IDEMPOTENCY_TTL_MS {
                    let value = if fingerprint == idem.fingerprint {
                        serde_json::from_str(&body)
                            .map(|body| CreateRunOutcome::Replayed {
                                status: status as u16,
                                body,
                            })
                            .map_err(StoreError::from)
                    } else {
                        Err(StoreError::IdempotencyKeyReused)
                    };
                    return Ok(Applied::value(value));
                }
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE tenant_id = ? AND route = ? AND key = ?",
                )
                .bind(run.tenant_id.as_str())
                .bind(&idem.route)
                .bind(&idem.key)
                .execute(&mut *c)
                .await?;
            }
        }

        match &new.session {
            SessionTarget::Existing(id) => {
                let found: Option<(i64,)> =
                    sqlx::query_as("SELECT 1 FROM sessions WHERE tenant_id = ? AND id = ?")
                        .bind(run.tenant_id.as_str())
                        .bind(id)
                        .fetch_optional(&mut *c)
                        .await?;
                if found.is_none() {
                    return Ok(Applied::value(Err(StoreError::SessionNotFound)));
                }
            }
            SessionTarget::New(s) => {
                if !insert_session(c, s).await? {
                    return Ok(Applied::value(Err(StoreError::SessionExists)));
                }
            }
        }

        let created = vec![
            NewEvent::new(
                EventType::RunCreated,
                json!({
                    "session_id": run.session_id,
                    "agent": run.agent,
                    "input": run.input,
                    "metadata": run.metadata,
                }),
            ),
            NewEvent::new(EventType::RunQueued, json!({"status": "queued"})),
        ];
        sqlx::query(&format!(
            "INSERT INTO runs ({RUN_INSERT_COLUMNS}) VALUES \
             (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&run.id)
        .bind(run.tenant_id.as_str())
        .bind(&run.session_id)
        .bind(&run.agent)
        .bind(RunStatus::Queued.as_str())
        .bind(run.input.to_string())
        .bind(&run.user_message)
        .bind(run.metadata.to_string())
        .bind(serde_json::to_string(&run.source).unwrap_or_else(|_| "{}".into()))
        .bind(run.agent_config.to_string())
        .bind(Option::<String>::None)
        .bind(serde_json::to_string(&run.usage).unwrap_or_else(|_| "{}".into()))
        .bind(Option::<String>::None)
        .bind(Option::<String>::None)
        .bind(0_i64)
        .bind(&run.request_id)
        .bind(now)
        .bind(now)
        .bind(Option::<i64>::None)
        .bind(Option::<i64>::None)
        .execute(&mut *c)
        .await?;
        let events = insert_events(c, &run.tenant_id, &run.id, 0, &created, now).await?;

        if let Some(idem) = &new.idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (tenant_id, route, key, fingerprint, status, body, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(run.tenant_id.as_str())
            .bind(&idem.route)
            .bind(&idem.key)
            .bind(&idem.fingerprint)
            .bind(idem.status as i64)
            .bind(idem.body.to_string())
            .bind(now)
            .execute(&mut *c)
            .await?;
        }

        let mut stored = run.clone();
        stored.status = RunStatus::Queued;
        stored.last_seq = events.len() as i64;
        debug_assert_eq!(stored.last_seq, crate::CREATION_EVENTS);
        Ok(Applied {
            value: Ok(CreateRunOutcome::Created(Box::new(stored))),
            events,
            wake_workers: true,
            controls: Vec::new(),
        })
    })
}

pub(crate) fn claim_runs<'c>(
    c: &'c mut SqliteConnection,
    ctx: &'c mut Ctx,
    req: &'c ClaimRequest,
) -> Op<'c, Vec<ClaimedRun>> {
    Box::pin(async move {
        let now = now_millis();
        // Lapsed leases first (recovery), then queued runs that are first in
        // their session. Two queries, each on its own index, so neither scans
        // the other's rows.
        let mut candidates: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, status FROM runs INDEXED BY runs_by_lease WHERE status = 'running' \
             AND lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?",
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
                 ORDER BY r.created_at, r.id LIMIT ?",
            )
            .bind(room as i64)
            .fetch_all(&mut *c)
            .await?;
            candidates.extend(queued);
        }

        let mut claimed = Vec::with_capacity(candidates.len());
        let mut published = Vec::new();
        for (id, status) in candidates {
            let recovered = status == RunStatus::Running.as_str();
            sqlx::query(
                "UPDATE runs SET status = 'running', lease_epoch = lease_epoch + 1, \
                 lease_owner = ?, lease_expires_at = ?, started_at = COALESCE(started_at, ?), \
                 updated_at = ? WHERE id = ?",
            )
            .bind(&*req.owner)
            .bind(now + req.lease_ms)
            .bind(now)
            .bind(now)
            .bind(&id)
            .execute(&mut *c)
            .await?;
            let Some(mut run) = load_run(c, &id).await? else {
                continue;
            };
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
            ctx.remember(
                id.clone(),
                CachedRun {
                    tenant: run.tenant_id.clone(),
                    status: RunStatus::Running,
                    epoch: run.lease_epoch,
                    owner: Some(req.owner.clone()),
                    last_seq: run.last_seq,
                    dirty: false,
                },
            );
            let controls = pending_controls(c, &id).await?;
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
        Ok(Applied {
            value: claimed,
            events: published,
            wake_workers: false,
            controls: Vec::new(),
        })
    })
}

/// The `step.done {retry_step}` that closes an attempt its worker never finished.
async fn orphaned_step(c: &mut SqliteConnection, run_id: &str) -> sqlx::Result<Option<NewEvent>> {
    let last: Option<(String, String)> = sqlx::query_as(
        "SELECT type, payload FROM run_events WHERE run_id = ? \
         AND type IN ('step.started', 'step.done') ORDER BY seq DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(&mut *c)
    .await?;
    let Some((kind, payload)) = last else {
        return Ok(None);
    };
    if kind != EventType::StepStarted.as_str() {
        return Ok(None);
    }
    let started: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
    let step_id = started["step_id"].as_str().unwrap_or_default();
    let attempt = started["attempt"].as_u64().unwrap_or(1) as u32;
    Ok(Some(step_done(
        step_id,
        attempt,
        StepOutcome::RetryStep,
        Some("WORKER_LOST"),
        json!({}),
    )))
}

async fn pending_controls(c: &mut SqliteConnection, run_id: &str) -> sqlx::Result<Vec<Control>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, run_id, kind, payload FROM run_controls \
         WHERE run_id = ? AND consumed_at IS NULL ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().filter_map(control_of).collect())
}

fn control_of((id, run_id, kind, payload): (i64, String, String, String)) -> Option<Control> {
    Some(Control {
        id,
        run_id,
        kind: ControlKind::parse(&kind)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
    })
}

pub(crate) type AppendArgs = (Lease, Vec<NewEvent>, Option<RunUpdate>);

pub(crate) fn append<'c>(
    c: &'c mut SqliteConnection,
    ctx: &'c mut Ctx,
    (lease, new_events, update): &'c AppendArgs,
) -> Op<'c, Result<i64, StoreError>> {
    Box::pin(async move {
        let Some(update) = update else {
            return append_deferred(c, ctx, lease, new_events).await;
        };
        // A state change: the writer flushed before this job, so the row is current.
        ctx.forget(lease.run_id());
        let now = now_millis();
        let current: Option<(String, i64, Option<String>, i64, String, String)> =
            sqlx::query_as(&format!(
                "SELECT status, lease_epoch, lease_owner, {LAST_SEQ_OF}, usage, session_id \
                 FROM runs WHERE id = ?"
            ))
            .bind(lease.run_id())
            .fetch_optional(&mut *c)
            .await?;
        let Some((status, epoch, owner, last_seq, usage, session_id)) = current else {
            return Ok(Applied::value(Err(StoreError::LeaseLost)));
        };
        let status = RunStatus::parse(&status)
            .ok_or_else(|| corrupt(StoreError::Corrupt(format!("bad run status {status:?}"))))?;
        if epoch != lease.epoch()
            || owner.as_deref() != Some(lease.owner())
            || status != RunStatus::Running
        {
            return Ok(Applied::value(Err(StoreError::LeaseLost)));
        }
        let next = match status.apply(update.transition) {
            Err(illegal) => return Ok(Applied::value(Err(illegal.into()))),
            Ok(next) => next,
        };

        let events = insert_events(
            c,
            lease.tenant_id(),
            lease.run_id(),
            last_seq,
            new_events,
            now,
        )
        .await?;
        let mut total: agentd_core::Usage = serde_json::from_str(&usage).unwrap_or_default();
        if let Some(add) = &update.usage {
            total.add(add);
        }
        let releases = next != RunStatus::Running;
        sqlx::query(
            "UPDATE runs SET status = ?, output = COALESCE(?, output), usage = ?, \
             reason_code = COALESCE(?, reason_code), error = COALESCE(?, error), \
             updated_at = ?, \
             finished_at = CASE WHEN ? THEN ? ELSE finished_at END, \
             lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END, \
             lease_expires_at = CASE WHEN ? THEN NULL ELSE lease_expires_at END \
             WHERE id = ?",
        )
        .bind(next.as_str())
        .bind(update.output.as_ref().map(|o| o.to_string()))
        .bind(serde_json::to_string(&total).unwrap_or_else(|_| "{}".into()))
        .bind(&update.reason_code)
        .bind(&update.error)
        .bind(now)
        .bind(next.is_terminal())
        .bind(now)
        .bind(releases)
        .bind(releases)
        .bind(lease.run_id())
        .execute(&mut *c)
        .await?;
        if !update.messages.is_empty() {
            append_messages(c, lease, &session_id, &update.messages, now).await?;
        }
        if update.consume_controls {
            sqlx::query(
                "UPDATE run_controls SET consumed_at = ? WHERE run_id = ? AND consumed_at IS NULL",
            )
            .bind(now)
            .bind(lease.run_id())
            .execute(&mut *c)
            .await?;
        }
        Ok(Applied {
            value: Ok(last_seq + events.len() as i64),
            events,
            wake_workers: next.is_terminal(),
            controls: Vec::new(),
        })
    })
}

/// A plain append (no state change): checked against the cached run and
/// deferred to the writer's flush.
async fn append_deferred(
    c: &mut SqliteConnection,
    ctx: &mut Ctx,
    lease: &Lease,
    new_events: &[NewEvent],
) -> sqlx::Result<Applied<Result<i64, StoreError>>> {
    let run_id = lease.run_id();
    if ctx.cached(run_id).is_none() {
        // Not cached means no deferred appends either: the row is current.
        let row: Option<(String, String, i64, Option<String>, i64)> = sqlx::query_as(&format!(
            "SELECT tenant_id, status, lease_epoch, lease_owner, {LAST_SEQ_OF} \
                 FROM runs WHERE id = ?"
        ))
        .bind(run_id)
        .fetch_optional(&mut *c)
        .await?;
        let Some((tenant, status, epoch, owner, last_seq)) = row else {
            return Ok(Applied::value(Err(StoreError::LeaseLost)));
        };
        let cached = CachedRun {
            tenant: TenantId::parse(&tenant)
                .ok_or_else(|| corrupt(StoreError::Corrupt(format!("bad tenant {tenant:?}"))))?,
            status: RunStatus::parse(&status).ok_or_else(|| {
                corrupt(StoreError::Corrupt(format!("bad run status {status:?}")))
            })?,
            epoch,
            owner: owner.map(Into::into),
            last_seq,
            dirty: false,
        };
        ctx.remember(run_id.to_owned(), cached);
    }
    let Some(run) = ctx.cached(run_id) else {
        return Ok(Applied::value(Err(StoreError::LeaseLost)));
    };
    if run.epoch != lease.epoch()
        || run.owner.as_deref() != Some(lease.owner())
        || run.status != RunStatus::Running
    {
        return Ok(Applied::value(Err(StoreError::LeaseLost)));
    }
    let now = now_millis();
    let events: Vec<Event> = new_events
        .iter()
        .enumerate()
        .map(|(i, e)| Event {
            run_id: run_id.to_owned(),
            seq: run.last_seq + 1 + i as i64,
            kind: e.kind,
            created_at: now,
            value: e.value.clone(),
        })
        .collect();
    run.last_seq += events.len() as i64;
    let last_seq = run.last_seq;
    ctx.defer(run_id, &events);
    Ok(Applied {
        value: Ok(last_seq),
        events,
        wake_workers: false,
        controls: Vec::new(),
    })
}

async fn append_messages(
    c: &mut SqliteConnection,
    lease: &Lease,
    session_id: &str,
    messages: &[(String, String)],
    now: i64,
) -> sqlx::Result<()> {
    let (last,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(idx), 0) FROM messages WHERE tenant_id = ? AND session_id = ?",
    )
    .bind(lease.tenant_id().as_str())
    .bind(session_id)
    .fetch_one(&mut *c)
    .await?;
    for (i, (role, content)) in messages.iter().enumerate() {
        sqlx::query(
            "INSERT INTO messages (tenant_id, session_id, idx, run_id, role, content, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(lease.tenant_id().as_str())
        .bind(session_id)
        .bind(last + 1 + i as i64)
        .bind(lease.run_id())
        .bind(role)
        .bind(content)
        .bind(now)
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

pub(crate) fn heartbeat<'c>(
    c: &'c mut SqliteConnection,
    _ctx: &'c mut Ctx,
    (owner, lease_ms): &'c (String, i64),
) -> Op<'c, Heartbeat> {
    Box::pin(async move {
        let now = now_millis();
        sqlx::query(
            "UPDATE runs SET lease_expires_at = ? WHERE lease_owner = ? AND status = 'running'",
        )
        .bind(now + lease_ms)
        .bind(owner)
        .execute(&mut *c)
        .await?;
        let held: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, lease_epoch FROM runs WHERE lease_owner = ? AND status = 'running'",
        )
        .bind(owner)
        .fetch_all(&mut *c)
        .await?;
        let controls: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT c.id, c.run_id, c.kind, c.payload FROM run_controls c \
             JOIN runs r ON r.id = c.run_id \
             WHERE r.lease_owner = ? AND r.status = 'running' AND c.consumed_at IS NULL \
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
    c: &'c mut SqliteConnection,
    ctx: &'c mut Ctx,
    owner: &'c String,
) -> Op<'c, ()> {
    Box::pin(async move {
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = 0 \
             WHERE lease_owner = ? AND status = 'running'",
        )
        .bind(owner)
        .execute(c)
        .await?;
        ctx.forget_all();
        let mut applied = Applied::value(());
        applied.wake_workers = true;
        Ok(applied)
    })
}

/// What cancelling one run did, folded into the caller's `Applied`.
struct Cancelled {
    run: Run,
    events: Vec<Event>,
    wake: bool,
    control: bool,
}

async fn cancel_one(
    c: &mut SqliteConnection,
    ctx: &mut Ctx,
    mut run: Run,
) -> sqlx::Result<Cancelled> {
    ctx.forget(&run.id);
    let now = now_millis();
    match run.status {
        RunStatus::Succeeded
        | RunStatus::Failed
        | RunStatus::Cancelled
        | RunStatus::LimitExceeded => Ok(Cancelled {
            run,
            events: Vec::new(),
            wake: false,
            control: false,
        }),
        RunStatus::Queued | RunStatus::AwaitingInput => {
            // No lease holder: cancel here and now.
            let next = run
                .status
                .apply(RunTransition::Cancel)
                .map_err(|e| corrupt(e.into()))?;
            let events = insert_events(
                c,
                &run.tenant_id,
                &run.id,
                run.last_seq,
                &[NewEvent::new(
                    EventType::Cancelled,
                    json!({"reason": "cancelled by client", "from": run.status}),
                )],
                now,
            )
            .await?;
            run.last_seq += events.len() as i64;
            run.status = next;
            run.updated_at = now;
            run.finished_at = Some(now);
            sqlx::query(
                "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?, \
                 lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
            )
            .bind(next.as_str())
            .bind(now)
            .bind(now)
            .bind(&run.id)
            .execute(&mut *c)
            .await?;
            Ok(Cancelled {
                run,
                events,
                wake: true,
                control: false,
            })
        }
        RunStatus::Running => {
            // Its lease holder stops it; tell it through a control row.
            sqlx::query(
                "INSERT INTO run_controls (tenant_id, run_id, kind, payload, created_at) \
                 SELECT ?, ?, 'cancel', '{}', ? WHERE NOT EXISTS (SELECT 1 FROM run_controls \
                 WHERE run_id = ? AND kind = 'cancel' AND consumed_at IS NULL)",
            )
            .bind(run.tenant_id.as_str())
            .bind(&run.id)
            .bind(now)
            .bind(&run.id)
            .execute(&mut *c)
            .await?;
            Ok(Cancelled {
                run,
                events: Vec::new(),
                wake: true,
                control: true,
            })
        }
    }
}

pub(crate) fn cancel_run<'c>(
    c: &'c mut SqliteConnection,
    ctx: &'c mut Ctx,
    (tenant, id): &'c (TenantId, String),
) -> Op<'c, Option<Run>> {
    Box::pin(async move {
        let Some(run) = load_run(c, id).await?.filter(|r| &r.tenant_id == tenant) else {
            return Ok(Applied::value(None));
        };
        let done = cancel_one(c, ctx, run).await?;
        Ok(Applied {
            controls: if done.control {
                vec![done.run.id.clone()]
            } else {
                Vec::new()
            },
            value: Some(done.run),
            events: done.events,
            wake_workers: done.wake,
        })
    })
}

pub(crate) fn delete_session<'c>(
    c: &'c mut SqliteConnection,
    ctx: &'c mut Ctx,
    (tenant, id): &'c (TenantId, String),
) -> Op<'c, bool> {
    Box::pin(async move {
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ? AND session_id = ? \
             AND status IN ('queued', 'running', 'awaiting_input')"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_all(&mut *c)
        .await?;
        let mut applied = Applied::value(false);
        for row in rows {
            let done = cancel_one(c, ctx, Run::try_from(row).map_err(corrupt)?).await?;
            applied.events.extend(done.events);
            applied.wake_workers |= done.wake;
            if done.control {
                applied.controls.push(done.run.id);
            }
        }
        sqlx::query("DELETE FROM messages WHERE tenant_id = ? AND session_id = ?")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *c)
            .await?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE tenant_id = ? AND id = ?")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *c)
            .await?;
        applied.value = deleted.rows_affected() == 1;
        Ok(applied)
    })
}

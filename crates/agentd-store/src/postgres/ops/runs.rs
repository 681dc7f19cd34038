//! Runs from the client side: create (with idempotency) and cancel.

use super::*;
use crate::postgres::keys::insert_audit;

pub(crate) fn create_run<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    new: &'c NewRun,
) -> Op<'c, Result<CreateRunOutcome, StoreError>> {
    Box::pin(async move {
        let run = &new.run;
        let now = run.created_at;
        if let Some(idem) = &new.idempotency {
            match prior_answer(
                c,
                &run.tenant_id,
                &idem.route,
                &idem.key,
                &idem.fingerprint,
                now,
            )
            .await?
            {
                Some(Ok((status, body))) => {
                    return Ok(Applied::value(Ok(CreateRunOutcome::Replayed {
                        status,
                        body,
                    })));
                }
                Some(Err(e)) => return Ok(Applied::value(Err(e))),
                None => {}
            }
            // Take the key before anything else. If another node is creating
            // under the same key right now, this waits for its commit and
            // inserts nothing; its answer is then replayed (or the body
            // refused), instead of a second run failing its batch.
            if !claim_key(c, &run.tenant_id, idem, now).await? {
                let prior = prior_answer(
                    c,
                    &run.tenant_id,
                    &idem.route,
                    &idem.key,
                    &idem.fingerprint,
                    now,
                )
                .await?;
                return Ok(Applied::value(match prior {
                    Some(Ok((status, body))) => Ok(CreateRunOutcome::Replayed { status, body }),
                    Some(Err(e)) => Err(e),
                    // Unreachable in practice (the row exists); a retry decides.
                    None => Err(StoreError::IdempotencyKeyReused),
                }));
            }
        }

        let refused = match &new.session {
            SessionTarget::Existing(id) => {
                let found: Option<(i32,)> =
                    sqlx::query_as("SELECT 1 FROM sessions WHERE tenant_id = $1 AND id = $2")
                        .bind(run.tenant_id.as_str())
                        .bind(id)
                        .fetch_optional(&mut *c)
                        .await?;
                found.is_none().then_some(StoreError::SessionNotFound)
            }
            SessionTarget::New(s) => {
                (!insert_session(c, s).await?).then_some(StoreError::SessionExists)
            }
        };
        if let Some(refused) = refused {
            // Nothing was created: the key must not remember an answer.
            if let Some(idem) = &new.idempotency {
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND route = $2 AND key = $3",
                )
                .bind(run.tenant_id.as_str())
                .bind(&idem.route)
                .bind(&idem.key)
                .execute(&mut *c)
                .await?;
            }
            return Ok(Applied::value(Err(refused)));
        }

        let created = vec![
            NewEvent::new(
                EventType::RunCreated,
                json!({
                    "session_id": run.session_id,
                    "agent": run.agent,
                    "input": agentd_core::run::input_for_event(&run.input),
                    "metadata": run.metadata,
                }),
            ),
            NewEvent::new(EventType::RunQueued, json!({"status": "queued"})),
        ];
        sqlx::query(
            "INSERT INTO runs (id, tenant_id, session_id, agent, status, input, user_message, \
             metadata, source, agent_config, usage, last_seq, lease_epoch, request_id, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, $12, $13, $13)",
        )
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
        .bind(serde_json::to_string(&run.usage).unwrap_or_else(|_| "{}".into()))
        .bind(&run.request_id)
        .bind(now)
        .execute(&mut *c)
        .await?;
        let events = insert_events(c, &run.tenant_id, &run.id, 0, &created, now).await?;

        if let Some(audit) = &new.audit {
            insert_audit(c, std::slice::from_ref(audit)).await?;
        }

        let mut stored = run.clone();
        stored.status = RunStatus::Queued;
        stored.last_seq = events.len() as i64;
        debug_assert_eq!(stored.last_seq, crate::CREATION_EVENTS);
        Ok(Applied {
            events,
            wake_workers: true,
            // `new.claim` is declined: another node may be creating a run
            // in this session at the same moment, and only the dispatchers'
            // claim orders the two.
            ..Applied::value(Ok(CreateRunOutcome::Created {
                run: Box::new(stored),
                claimed: None,
            }))
        })
    })
}

/// What cancelling one run did, folded into the caller's `Applied`.
pub(super) struct Cancelled {
    pub run: Run,
    pub events: Vec<Event>,
    pub wake: bool,
    pub control: bool,
}

/// Cancels `run`, whose row the caller locked.
pub(super) async fn cancel_one(
    c: &mut PgConnection,
    now: i64,
    mut run: Run,
) -> sqlx::Result<Cancelled> {
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
                "UPDATE runs SET status = $1, updated_at = $2, finished_at = $2, \
                 lease_owner = NULL, lease_expires_at = NULL WHERE id = $3",
            )
            .bind(next.as_str())
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
            // Its lease holder (on whichever node) stops it; tell it through
            // a control row, which its heartbeat reads even if the
            // notification is missed.
            sqlx::query(
                "INSERT INTO run_controls (tenant_id, run_id, kind, payload, created_at) \
                 SELECT $1, $2, 'cancel', '{}', $3 WHERE NOT EXISTS (SELECT 1 FROM run_controls \
                 WHERE run_id = $2 AND kind = 'cancel' AND consumed_at IS NULL)",
            )
            .bind(run.tenant_id.as_str())
            .bind(&run.id)
            .bind(now)
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
    c: &'c mut PgConnection,
    ctx: &'c mut Ctx,
    (tenant, id): &'c (TenantId, String),
) -> Op<'c, Option<Run>> {
    Box::pin(async move {
        let Some(run) = lock_run(c, id).await?.filter(|r| &r.tenant_id == tenant) else {
            return Ok(Applied::value(None));
        };
        let done = cancel_one(c, ctx.now, run).await?;
        Ok(Applied {
            controls: if done.control {
                vec![done.run.id.clone()]
            } else {
                Vec::new()
            },
            events: done.events,
            wake_workers: done.wake,
            ..Applied::value(Some(done.run))
        })
    })
}

/// What an idempotency key answered before: `Some(Ok((status, body)))` to
/// replay, `Some(Err(..))` when the key came with another body, `None` when
/// it is new (an expired record is deleted here).
pub(super) async fn prior_answer(
    c: &mut PgConnection,
    tenant: &TenantId,
    route: &str,
    key: &str,
    fingerprint: &str,
    now: i64,
) -> sqlx::Result<Option<Result<(u16, Value), StoreError>>> {
    let prior: Option<(String, i64, String, i64)> = sqlx::query_as(
        "SELECT fingerprint, status, body, created_at FROM idempotency_keys \
         WHERE tenant_id = $1 AND route = $2 AND key = $3",
    )
    .bind(tenant.as_str())
    .bind(route)
    .bind(key)
    .fetch_optional(&mut *c)
    .await?;
    let Some((seen, status, body, created_at)) = prior else {
        return Ok(None);
    };
    if created_at > now - IDEMPOTENCY_TTL_MS {
        return Ok(Some(if seen == fingerprint {
            serde_json::from_str(&body)
                .map(|body| (status as u16, body))
                .map_err(StoreError::from)
        } else {
            Err(StoreError::IdempotencyKeyReused)
        }));
    }
    sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND route = $2 AND key = $3")
        .bind(tenant.as_str())
        .bind(route)
        .bind(key)
        .execute(&mut *c)
        .await?;
    Ok(None)
}

/// Records a new run's idempotency key with its answer; `false` when the
/// key is already taken (committed meanwhile by another node).
async fn claim_key(
    c: &mut PgConnection,
    tenant: &TenantId,
    idem: &crate::IdempotencyRecord,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, route, key, fingerprint, status, body, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(tenant.as_str())
    .bind(&idem.route)
    .bind(&idem.key)
    .bind(&idem.fingerprint)
    .bind(idem.status as i64)
    .bind(idem.body.to_string())
    .bind(now)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Remembers the answer to an idempotent request, in its own transaction.
pub(super) async fn remember_answer(
    c: &mut PgConnection,
    tenant: &TenantId,
    route: &str,
    key: &str,
    fingerprint: &str,
    (status, body): (u16, &Value),
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, route, key, fingerprint, status, body, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant.as_str())
    .bind(route)
    .bind(key)
    .bind(fingerprint)
    .bind(status as i64)
    .bind(body.to_string())
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

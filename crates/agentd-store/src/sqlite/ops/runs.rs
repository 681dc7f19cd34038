//! Runs from the client side: create (with idempotency) and cancel.

use super::*;

pub(crate) fn create_run(
    c: &Connection,
    ctx: &mut Ctx,
    new: &NewRun,
) -> Op<Result<CreateRunOutcome, StoreError>> {
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
        )? {
            Some(Ok((status, body))) => {
                return Ok(Applied::value(Ok(CreateRunOutcome::Replayed {
                    status,
                    body,
                })));
            }
            Some(Err(e)) => return Ok(Applied::value(Err(e))),
            None => {}
        }
    }

    // The session is idle (nothing queued, running or waiting before this
    // run) when it is new or has no active run: only then may it start now.
    let idle = match &new.session {
        SessionTarget::Existing(id) => {
            let found = c
                .prepare_cached("SELECT 1 FROM sessions WHERE tenant_id = ? AND id = ?")?
                .exists(params![run.tenant_id.as_str(), id])?;
            if !found {
                return Ok(Applied::value(Err(StoreError::SessionNotFound)));
            }
            new.claim.is_some()
                && !c
                    .prepare_cached(
                        "SELECT 1 FROM runs WHERE tenant_id = ? AND session_id = ? \
                         AND status IN ('queued', 'running', 'awaiting_input')",
                    )?
                    .exists(params![run.tenant_id.as_str(), id])?
        }
        SessionTarget::New(s) => {
            if !insert_session(c, s)? {
                return Ok(Applied::value(Err(StoreError::SessionExists)));
            }
            true
        }
    };

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
    c.prepare_cached(&format!(
        "INSERT INTO runs ({RUN_INSERT_COLUMNS}, run_key) VALUES \
         (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, \
          (SELECT COALESCE(MAX(run_key), 0) + 1 FROM runs))"
    ))?
    .execute(params![
        run.id,
        run.tenant_id.as_str(),
        run.session_id,
        run.agent,
        RunStatus::Queued.as_str(),
        run.input.to_string(),
        run.user_message,
        run.metadata.to_string(),
        serde_json::to_string(&run.source).unwrap_or_else(|_| "{}".into()),
        run.agent_config.to_string(),
        Option::<String>::None,
        serde_json::to_string(&run.usage).unwrap_or_else(|_| "{}".into()),
        Option::<String>::None,
        Option::<String>::None,
        0_i64,
        run.request_id,
        now,
        now,
        Option::<i64>::None,
        Option::<i64>::None,
    ])?;
    let mut events = insert_events(c, &run.tenant_id, &run.id, 0, &created, now)?;

    if let Some(idem) = &new.idempotency {
        remember_answer(
            c,
            &run.tenant_id,
            &idem.route,
            &idem.key,
            &idem.fingerprint,
            (idem.status, &idem.body),
            now,
        )?;
    }
    if let Some(audit) = &new.audit {
        super::super::keys::insert_audit(c, std::slice::from_ref(audit))?;
    }

    let mut stored = run.clone();
    stored.status = RunStatus::Queued;
    stored.last_seq = events.len() as i64;
    debug_assert_eq!(stored.last_seq, crate::CREATION_EVENTS);
    let claimed = match &new.claim {
        Some(claim) if idle => Some(claim_created(c, ctx, &stored, claim, &mut events)?),
        _ => None,
    };
    Ok(Applied {
        // A run claimed here leaves nothing for the dispatchers.
        wake_workers: claimed.is_none(),
        value: Ok(CreateRunOutcome::Created {
            run: Box::new(stored),
            claimed: claimed.map(Box::new),
        }),
        events,
        controls: Vec::new(),
    })
}

/// The claim `claim_runs` would make of a fresh run, made in its creating
/// transaction: `running` under a first lease, `run.worker.started` after
/// its creation events.
fn claim_created(
    c: &Connection,
    ctx: &mut Ctx,
    queued: &Run,
    claim: &ClaimOnCreate,
    events: &mut Vec<Event>,
) -> rusqlite::Result<ClaimedRun> {
    let now = queued.created_at;
    let mut run = queued.clone();
    run.status = RunStatus::Running;
    run.lease_epoch += 1;
    run.started_at = Some(now);
    c.prepare_cached(
        "UPDATE runs SET status = 'running', lease_epoch = ?, lease_owner = ?, \
         lease_expires_at = ?, started_at = ? WHERE id = ?",
    )?
    .execute(params![
        run.lease_epoch,
        &*claim.owner,
        now + claim.lease_ms,
        now,
        run.id
    ])?;
    let started = super::leases::worker_started(&claim.owner, run.lease_epoch);
    let (claimed, stored) = super::leases::hold(c, ctx, run, &claim.owner, &[started], now)?;
    events.extend(stored);
    Ok(claimed)
}

/// What cancelling one run did, folded into the caller's `Applied`.
pub(super) struct Cancelled {
    pub run: Run,
    pub events: Vec<Event>,
    pub wake: bool,
    pub control: bool,
}

pub(super) fn cancel_one(
    c: &Connection,
    ctx: &mut Ctx,
    mut run: Run,
) -> rusqlite::Result<Cancelled> {
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
            )?;
            run.last_seq += events.len() as i64;
            run.status = next;
            run.updated_at = now;
            run.finished_at = Some(now);
            c.prepare_cached(
                "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?, \
                 lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
            )?
            .execute(params![next.as_str(), now, now, run.id])?;
            Ok(Cancelled {
                run,
                events,
                wake: true,
                control: false,
            })
        }
        RunStatus::Running => {
            // Its lease holder stops it; tell it through a control row.
            c.prepare_cached(
                "INSERT INTO run_controls (tenant_id, run_id, kind, payload, created_at) \
                 SELECT ?, ?, 'cancel', '{}', ? WHERE NOT EXISTS (SELECT 1 FROM run_controls \
                 WHERE run_id = ? AND kind = 'cancel' AND consumed_at IS NULL)",
            )?
            .execute(params![run.tenant_id.as_str(), run.id, now, run.id])?;
            Ok(Cancelled {
                run,
                events: Vec::new(),
                wake: true,
                control: true,
            })
        }
    }
}

pub(crate) fn cancel_run(
    c: &Connection,
    ctx: &mut Ctx,
    (tenant, id): &(TenantId, String),
) -> Op<Option<Run>> {
    let Some(run) = load_run(c, id)?.filter(|r| &r.tenant_id == tenant) else {
        return Ok(Applied::value(None));
    };
    let done = cancel_one(c, ctx, run)?;
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
}

/// What an idempotency key answered before: `Some(Ok((status, body)))` to
/// replay, `Some(Err(..))` when the key came with another body, `None` when
/// it is new (an expired record is deleted here).
pub(super) fn prior_answer(
    c: &Connection,
    tenant: &TenantId,
    route: &str,
    key: &str,
    fingerprint: &str,
    now: i64,
) -> rusqlite::Result<Option<Result<(u16, Value), StoreError>>> {
    let prior: Option<(String, i64, String, i64)> = c
        .prepare_cached(
            "SELECT fingerprint, status, body, created_at FROM idempotency_keys \
             WHERE tenant_id = ? AND route = ? AND key = ?",
        )?
        .query_row(params![tenant.as_str(), route, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
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
    c.prepare_cached("DELETE FROM idempotency_keys WHERE tenant_id = ? AND route = ? AND key = ?")?
        .execute(params![tenant.as_str(), route, key])?;
    Ok(None)
}

/// Remembers the answer to an idempotent request, in its own transaction.
pub(super) fn remember_answer(
    c: &Connection,
    tenant: &TenantId,
    route: &str,
    key: &str,
    fingerprint: &str,
    (status, body): (u16, &Value),
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO idempotency_keys (tenant_id, route, key, fingerprint, status, body, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        tenant.as_str(),
        route,
        key,
        fingerprint,
        status as i64,
        body.to_string(),
        now
    ])?;
    Ok(())
}

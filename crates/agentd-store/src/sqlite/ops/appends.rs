//! Appends under a lease: plain ones deferred to the flush, state changes at once.

use super::*;

pub(crate) type AppendArgs = (Lease, Vec<NewEvent>, Option<RunUpdate>);

pub(crate) fn append(
    c: &Connection,
    ctx: &mut Ctx,
    (lease, new_events, update): &AppendArgs,
) -> Op<Result<i64, StoreError>> {
    let Some(update) = update else {
        return append_deferred(c, ctx, lease, new_events);
    };
    // A state change: the writer flushed before this job, so the row is current.
    ctx.forget(lease.run_id());
    let now = now_millis();
    type Current = (String, i64, Option<String>, i64, String, String);
    let current: Option<Current> = c
        .prepare_cached(&format!(
            "SELECT status, lease_epoch, lease_owner, {LAST_SEQ_OF}, usage, session_id \
             FROM runs WHERE id = ?"
        ))?
        .query_row([lease.run_id()], |r| Current::try_from(r))
        .optional()?;
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
    )?;
    let mut total: agentd_core::Usage = serde_json::from_str(&usage).unwrap_or_default();
    if let Some(add) = &update.usage {
        total.add(add);
    }
    let releases = next != RunStatus::Running;
    c.prepare_cached(
        "UPDATE runs SET status = ?, output = COALESCE(?, output), usage = ?, \
         reason_code = COALESCE(?, reason_code), error = COALESCE(?, error), \
         updated_at = ?, \
         finished_at = CASE WHEN ? THEN ? ELSE finished_at END, \
         lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END, \
         lease_expires_at = CASE WHEN ? THEN ? ELSE lease_expires_at END \
         WHERE id = ?",
    )?
    .execute(params![
        next.as_str(),
        update.output.as_ref().map(|o| o.to_string()),
        serde_json::to_string(&total).unwrap_or_else(|_| "{}".into()),
        update.reason_code,
        update.error,
        now,
        next.is_terminal(),
        now,
        releases,
        releases,
        // A paused run keeps its wait's deadline where a lease's would be.
        update
            .wait_until
            .filter(|_| next == RunStatus::AwaitingInput),
        lease.run_id(),
    ])?;
    if !update.messages.is_empty() {
        append_messages(c, lease, &session_id, &update.messages, now)?;
    }
    if update.consume_controls {
        c.prepare_cached(
            "UPDATE run_controls SET consumed_at = ? WHERE run_id = ? AND consumed_at IS NULL",
        )?
        .execute(params![now, lease.run_id()])?;
    }
    Ok(Applied {
        value: Ok(last_seq + events.len() as i64),
        events,
        wake_workers: next.is_terminal(),
        controls: Vec::new(),
    })
}

/// A plain append (no state change): checked against the cached run and
/// deferred to the writer's flush.
fn append_deferred(
    c: &Connection,
    ctx: &mut Ctx,
    lease: &Lease,
    new_events: &[NewEvent],
) -> Op<Result<i64, StoreError>> {
    let run_id = lease.run_id();
    if ctx.cached(run_id).is_none() {
        // Not cached means no deferred appends either: the row is current.
        type Fields = (i64, String, String, i64, Option<String>, i64);
        let row: Option<Fields> = c
            .prepare_cached(&format!(
                "SELECT run_key, tenant_id, status, lease_epoch, lease_owner, {LAST_SEQ_OF} \
                 FROM runs WHERE id = ?"
            ))?
            .query_row([run_id], |r| Fields::try_from(r))
            .optional()?;
        let Some((run_key, tenant, status, epoch, owner, last_seq)) = row else {
            return Ok(Applied::value(Err(StoreError::LeaseLost)));
        };
        let cached = CachedRun {
            run_key,
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
    let events = number_events(run_id, run.last_seq, new_events, now);
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

fn append_messages(
    c: &Connection,
    lease: &Lease,
    session_id: &str,
    messages: &[(String, String)],
    now: i64,
) -> rusqlite::Result<()> {
    let last: i64 = c
        .prepare_cached(
            "SELECT COALESCE(MAX(idx), 0) FROM messages WHERE tenant_id = ? AND session_id = ?",
        )?
        .query_row(params![lease.tenant_id().as_str(), session_id], |r| {
            r.get(0)
        })?;
    let mut insert = c.prepare_cached(
        "INSERT INTO messages (tenant_id, session_id, idx, run_id, role, content, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?;
    for (i, (role, content)) in messages.iter().enumerate() {
        insert.execute(params![
            lease.tenant_id().as_str(),
            session_id,
            last + 1 + i as i64,
            lease.run_id(),
            role,
            content,
            now
        ])?;
    }
    Ok(())
}

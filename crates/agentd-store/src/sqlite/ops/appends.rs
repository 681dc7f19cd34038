//! Appends under a lease: plain ones deferred to the flush, state changes at once.

use super::*;

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
             lease_expires_at = CASE WHEN ? THEN ? ELSE lease_expires_at END \
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
        // A paused run keeps its wait's deadline where a lease's would be.
        .bind(
            update
                .wait_until
                .filter(|_| next == RunStatus::AwaitingInput),
        )
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

//! Appends under a lease: plain ones fenced by one UPDATE and their rows
//! deferred to the flush, state changes at once.

use super::*;

pub(crate) type AppendArgs = (Lease, Vec<NewEvent>, Option<RunUpdate>);

pub(crate) fn append<'c>(
    c: &'c mut PgConnection,
    ctx: &'c mut Ctx,
    (lease, new_events, update): &'c AppendArgs,
) -> Op<'c, Result<i64, StoreError>> {
    Box::pin(async move {
        let Some(update) = update else {
            return append_plain(c, ctx, lease, new_events).await;
        };
        let now = ctx.now;
        let current: Option<(String, i64, Option<String>, i64, String, String)> = sqlx::query_as(
            "SELECT status, lease_epoch, lease_owner, last_seq, usage, session_id \
             FROM runs WHERE id = $1 FOR UPDATE",
        )
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
            "UPDATE runs SET status = $1, output = COALESCE($2, output), usage = $3, \
             reason_code = COALESCE($4, reason_code), error = COALESCE($5, error), \
             updated_at = $6, \
             finished_at = CASE WHEN $7 THEN $6 ELSE finished_at END, \
             lease_owner = CASE WHEN $8 THEN NULL ELSE lease_owner END, \
             lease_expires_at = CASE WHEN $8 THEN $9 ELSE lease_expires_at END \
             WHERE id = $10",
        )
        .bind(next.as_str())
        .bind(update.output.as_ref().map(|o| o.to_string()))
        .bind(serde_json::to_string(&total).unwrap_or_else(|_| "{}".into()))
        .bind(&update.reason_code)
        .bind(&update.error)
        .bind(now)
        .bind(next.is_terminal())
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
                "UPDATE run_controls SET consumed_at = $1 \
                 WHERE run_id = $2 AND consumed_at IS NULL",
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
            ..Applied::value(Ok(0))
        })
    })
}

/// A plain append (no state change): one conditional UPDATE checks the lease
/// and allocates the seqs; the rows wait for the batch's flush.
async fn append_plain(
    c: &mut PgConnection,
    ctx: &mut Ctx,
    lease: &Lease,
    new_events: &[NewEvent],
) -> sqlx::Result<Applied<Result<i64, StoreError>>> {
    let n = new_events.len() as i64;
    let last: Option<(i64,)> = sqlx::query_as(
        "UPDATE runs SET last_seq = last_seq + $1 \
         WHERE id = $2 AND lease_epoch = $3 AND lease_owner = $4 AND status = 'running' \
         RETURNING last_seq",
    )
    .bind(n)
    .bind(lease.run_id())
    .bind(lease.epoch())
    .bind(lease.owner())
    .fetch_optional(&mut *c)
    .await?;
    let Some((last_seq,)) = last else {
        return Ok(Applied::value(Err(StoreError::LeaseLost)));
    };
    let events = number_events(lease.run_id(), last_seq - n, new_events, ctx.now);
    ctx.defer(lease.tenant_id(), &events);
    Ok(Applied {
        value: Ok(last_seq),
        events,
        ..Applied::value(Ok(0))
    })
}

async fn append_messages(
    c: &mut PgConnection,
    lease: &Lease,
    session_id: &str,
    messages: &[(String, String)],
    now: i64,
) -> sqlx::Result<()> {
    let (last,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(idx), 0)::bigint FROM messages \
         WHERE tenant_id = $1 AND session_id = $2",
    )
    .bind(lease.tenant_id().as_str())
    .bind(session_id)
    .fetch_one(&mut *c)
    .await?;
    for (i, (role, content)) in messages.iter().enumerate() {
        sqlx::query(
            "INSERT INTO messages (tenant_id, session_id, idx, run_id, role, content, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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

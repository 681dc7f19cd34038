//! Sessions: create, and delete with their unfinished runs.

use super::*;

pub(crate) fn create_session<'c>(
    c: &'c mut PgConnection,
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

pub(crate) fn delete_session<'c>(
    c: &'c mut PgConnection,
    ctx: &'c mut Ctx,
    (tenant, id): &'c (TenantId, String),
) -> Op<'c, bool> {
    Box::pin(async move {
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND session_id = $2 \
             AND status IN ('queued', 'running', 'awaiting_input') ORDER BY id FOR UPDATE"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_all(&mut *c)
        .await?;
        let mut applied = Applied::value(false);
        for row in rows {
            let done = cancel_one(c, ctx.now, Run::try_from(row).map_err(corrupt)?).await?;
            applied.events.extend(done.events);
            applied.wake_workers |= done.wake;
            if done.control {
                applied.controls.push(done.run.id);
            }
        }
        sqlx::query("DELETE FROM messages WHERE tenant_id = $1 AND session_id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *c)
            .await?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *c)
            .await?;
        applied.value = deleted.rows_affected() == 1;
        Ok(applied)
    })
}

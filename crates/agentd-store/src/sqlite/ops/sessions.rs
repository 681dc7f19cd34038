//! Sessions: create, and delete with their unfinished runs.

use super::*;

pub(crate) fn create_session(
    c: &Connection,
    _ctx: &mut Ctx,
    s: &NewSession,
) -> Op<Result<Session, StoreError>> {
    let value = if insert_session(c, s)? {
        Ok(session_of(s))
    } else {
        Err(StoreError::SessionExists)
    };
    Ok(Applied::value(value))
}

pub(crate) fn delete_session(
    c: &Connection,
    ctx: &mut Ctx,
    (tenant, id): &(TenantId, String),
) -> Op<bool> {
    let rows: Vec<RunRow> = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ? AND session_id = ? \
             AND status IN ('queued', 'running', 'awaiting_input')"
        ))?
        .query_map(params![tenant.as_str(), id], RunRow::from_columns)?
        .collect::<rusqlite::Result<_>>()?;
    let mut applied = Applied::value(false);
    for row in rows {
        let done = cancel_one(c, ctx, Run::try_from(row).map_err(corrupt)?)?;
        applied.events.extend(done.events);
        applied.wake_workers |= done.wake;
        if done.control {
            applied.controls.push(done.run.id);
        }
    }
    c.prepare_cached("DELETE FROM messages WHERE tenant_id = ? AND session_id = ?")?
        .execute(params![tenant.as_str(), id])?;
    let deleted = c
        .prepare_cached("DELETE FROM sessions WHERE tenant_id = ? AND id = ?")?
        .execute(params![tenant.as_str(), id])?;
    applied.value = deleted == 1;
    Ok(applied)
}

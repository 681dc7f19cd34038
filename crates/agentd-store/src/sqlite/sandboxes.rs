//! Sandbox records in SQLite: reads, and the writer's ops.

use agentd_core::TenantId;
use agentd_core::time::Millis;
use rusqlite::{Connection, params};
use sqlx::{QueryBuilder, SqlitePool};

use super::keys::insert_audit;
use super::ops::Op;
use super::writer::Applied;
use super::{batch::Ctx, into_page, push_page};
use crate::sandboxes::{
    ORPHAN_ERROR, ORPHAN_KILL_REASON, ORPHAN_PHASE, PutSandbox, SANDBOX_COLUMNS, SANDBOX_UPDATE,
    SandboxRow, SandboxText,
};
use crate::{Cursor, Page, PageRequest, SandboxRecord, StoreError};

pub(super) async fn get_sandbox(
    pool: &SqlitePool,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<SandboxRecord>, StoreError> {
    let row: Option<SandboxRow> = sqlx::query_as(&format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE tenant_id = ? AND id = ?"
    ))
    .bind(tenant.as_str())
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(SandboxRecord::try_from).transpose()
}

pub(super) async fn list_sandboxes(
    pool: &SqlitePool,
    tenant: &TenantId,
    page: PageRequest,
) -> Result<Page<SandboxRecord>, StoreError> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE tenant_id = "
    ));
    qb.push_bind(tenant.as_str());
    push_page(&mut qb, &page);
    let rows: Vec<SandboxRow> = qb.build_query_as().fetch_all(pool).await?;
    let items = rows
        .into_iter()
        .map(SandboxRecord::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(into_page(items, page.limit, |s| Cursor {
        created_at: s.created_at,
        id: s.id.clone(),
    }))
}

pub(crate) fn put_sandbox(c: &Connection, _ctx: &mut Ctx, (r, audit): &PutSandbox) -> Op<()> {
    let text = SandboxText::of(r);
    c.prepare_cached(&format!(
        "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (tenant_id, id) DO UPDATE SET {SANDBOX_UPDATE}"
    ))?
    .execute(params![
        r.tenant_id.as_str(),
        r.id,
        r.phase,
        r.language,
        text.labels,
        text.limits,
        text.egress,
        r.kill_reason,
        r.exit_code,
        r.error,
        text.result,
        r.created_at,
        r.started_at,
        r.finished_at,
        r.torn_down_at,
        r.deadline_at,
    ])?;
    insert_audit(c, audit)?;
    Ok(Applied::value(()))
}

/// Ends pending or running records: those past their deadline, or (`None`)
/// all of them. Returns how many.
pub(crate) fn end_orphans(
    c: &Connection,
    _ctx: &mut Ctx,
    (now, deadline_before): &(Millis, Option<Millis>),
) -> Op<u64> {
    Ok(Applied::value(end_orphans_on(c, *now, *deadline_before)?))
}

/// Also run at open, before the writer starts.
pub(super) fn end_orphans_on(
    c: &Connection,
    now: Millis,
    deadline_before: Option<Millis>,
) -> rusqlite::Result<u64> {
    let done = c
        .prepare_cached(
            "UPDATE sandboxes SET phase = ?, kill_reason = ?, error = ?, finished_at = ? \
             WHERE phase IN ('pending', 'running') AND deadline_at < ?",
        )?
        .execute(params![
            ORPHAN_PHASE,
            ORPHAN_KILL_REASON,
            ORPHAN_ERROR,
            now,
            deadline_before.unwrap_or(i64::MAX)
        ])?;
    Ok(done as u64)
}

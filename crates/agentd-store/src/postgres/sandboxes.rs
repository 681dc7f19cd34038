//! Sandbox records on PostgreSQL (as in SQLite: `sqlite::sandboxes`): reads, and the writer's ops.

use agentd_core::TenantId;
use agentd_core::time::Millis;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

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
    pool: &PgPool,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<SandboxRecord>, StoreError> {
    let row: Option<SandboxRow> = sqlx::query_as(&format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant.as_str())
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(SandboxRecord::try_from).transpose()
}

pub(super) async fn list_sandboxes(
    pool: &PgPool,
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

pub(crate) fn put_sandbox<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    (r, audit): &'c PutSandbox,
) -> Op<'c, ()> {
    Box::pin(async move {
        let text = SandboxText::of(r);
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES ("
        ));
        let mut v = qb.separated(", ");
        v.push_bind(r.tenant_id.as_str())
            .push_bind(&r.id)
            .push_bind(&r.phase)
            .push_bind(&r.language)
            .push_bind(&text.labels)
            .push_bind(&text.limits)
            .push_bind(&text.egress)
            .push_bind(&r.kill_reason)
            .push_bind(r.exit_code)
            .push_bind(&r.error)
            .push_bind(&text.result)
            .push_bind(r.created_at)
            .push_bind(r.started_at)
            .push_bind(r.finished_at)
            .push_bind(r.torn_down_at)
            .push_bind(r.deadline_at);
        qb.push(format!(
            ") ON CONFLICT (tenant_id, id) DO UPDATE SET {SANDBOX_UPDATE}"
        ));
        qb.build().execute(&mut *c).await?;
        insert_audit(c, audit).await?;
        Ok(Applied::value(()))
    })
}

/// Ends pending or running records past their deadline (`None`: all of
/// them; never used here, where other nodes' sandboxes may be running).
/// Returns how many.
pub(crate) fn end_orphans<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    (now, deadline_before): &'c (Millis, Option<Millis>),
) -> Op<'c, u64> {
    Box::pin(async move {
        let ended = end_orphans_on(c, *now, *deadline_before).await?;
        Ok(Applied::value(ended))
    })
}

async fn end_orphans_on(
    c: &mut PgConnection,
    now: Millis,
    deadline_before: Option<Millis>,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE sandboxes SET phase = $1, kill_reason = $2, error = $3, finished_at = $4 \
         WHERE phase IN ('pending', 'running') AND deadline_at < $5",
    )
    .bind(ORPHAN_PHASE)
    .bind(ORPHAN_KILL_REASON)
    .bind(ORPHAN_ERROR)
    .bind(now)
    .bind(deadline_before.unwrap_or(i64::MAX))
    .execute(&mut *c)
    .await?;
    Ok(done.rows_affected())
}

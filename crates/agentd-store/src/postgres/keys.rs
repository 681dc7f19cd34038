//! API keys and the audit trail on PostgreSQL: reads, and the writer's ops.
//! Rows decode as in SQLite (`sqlite::keys`); revoking or rotating a key is
//! announced to other nodes so they close the streams it opened there.

use agentd_core::{AuditRecord, TenantId};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

use super::ops::Op;
use super::writer::Applied;
use super::{batch::Ctx, into_page, push_page};
use crate::sqlite::keys::{AuditRow, KeyRow};
use crate::{
    ApiKey, AuditFilter, Cursor, KeyChange, KeyRotation, Page, PageRequest, PreviousSecret,
    StoreError,
};

const KEY_COLUMNS: &str = "id, tenant_id, name, scopes, secret_sha256, previous_sha256, \
     previous_valid_until, created_by, created_at, expires_at, rotated_at, revoked_at";

// --- reads --------------------------------------------------------------

pub(super) async fn find_key(pool: &PgPool, id: &str) -> Result<Option<ApiKey>, StoreError> {
    let row: Option<KeyRow> =
        sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(ApiKey::try_from).transpose()
}

pub(super) async fn list_keys(
    pool: &PgPool,
    tenant: &TenantId,
    page: PageRequest,
) -> Result<Page<ApiKey>, StoreError> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = "
    ));
    qb.push_bind(tenant.as_str());
    push_page(&mut qb, &page);
    let rows: Vec<KeyRow> = qb.build_query_as().fetch_all(pool).await?;
    let items = rows
        .into_iter()
        .map(ApiKey::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(into_page(items, page.limit, |k| Cursor {
        created_at: k.created_at,
        id: k.id.clone(),
    }))
}

pub(super) async fn list_audit(
    pool: &PgPool,
    tenant: &TenantId,
    filter: AuditFilter,
    page: PageRequest,
) -> Result<Page<AuditRecord>, StoreError> {
    let mut qb = QueryBuilder::new(
        "SELECT id, tenant_id, created_at, actor, actor_id, action, target_type, target_id, \
         outcome, client_ip, request_id, details FROM audit_events WHERE tenant_id = ",
    );
    qb.push_bind(tenant.as_str());
    if let Some(since) = filter.since {
        qb.push(" AND created_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        qb.push(" AND created_at < ").push_bind(until);
    }
    if let Some(actor) = filter.actor {
        qb.push(" AND actor = ").push_bind(actor);
    }
    if let Some(action) = filter.action {
        qb.push(" AND action = ").push_bind(action.as_str());
    }
    if let Some(outcome) = filter.outcome {
        qb.push(" AND outcome = ").push_bind(outcome.as_str());
    }
    if let Some(target) = filter.target_id {
        qb.push(" AND target_id = ").push_bind(target);
    }
    push_page(&mut qb, &page);
    let rows: Vec<AuditRow> = qb.build_query_as().fetch_all(pool).await?;
    let items = rows
        .into_iter()
        .map(AuditRecord::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(into_page(items, page.limit, |a| Cursor {
        created_at: a.created_at,
        id: a.id.clone(),
    }))
}

// --- writes (run by the writer) -------------------------------------------

pub(crate) fn create_key<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    k: &'c ApiKey,
) -> Op<'c, ()> {
    Box::pin(async move {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&k.id)
        .bind(k.tenant_id.as_str())
        .bind(&k.name)
        .bind(serde_json::to_string(&k.scopes).unwrap_or_else(|_| "[]".into()))
        .bind(hex::encode(k.secret))
        .bind(k.previous.map(|p| hex::encode(p.digest)))
        .bind(k.previous.map(|p| p.valid_until))
        .bind(&k.created_by)
        .bind(k.created_at)
        .bind(k.expires_at)
        .bind(k.rotated_at)
        .bind(k.revoked_at)
        .execute(c)
        .await?;
        Ok(Applied::value(()))
    })
}

/// The key, its row locked for the rest of the batch.
async fn lock_key(
    c: &mut PgConnection,
    tenant: &TenantId,
    id: &str,
) -> sqlx::Result<Option<ApiKey>> {
    let row: Option<KeyRow> = sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
    ))
    .bind(tenant.as_str())
    .bind(id)
    .fetch_optional(c)
    .await?;
    row.map(ApiKey::try_from)
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Idempotent: revoking a revoked key returns it unchanged.
pub(crate) fn revoke_key<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    (tenant, id, now): &'c (TenantId, String, i64),
) -> Op<'c, KeyChange> {
    Box::pin(async move {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1, previous_sha256 = NULL, \
             previous_valid_until = NULL \
             WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(tenant.as_str())
        .bind(id)
        .execute(&mut *c)
        .await?;
        Ok(match lock_key(c, tenant, id).await? {
            Some(k) => Applied {
                keys: vec![k.id.clone()],
                ..Applied::value(KeyChange::Changed(Box::new(k)))
            },
            None => Applied::value(KeyChange::NotFound),
        })
    })
}

pub(crate) fn rotate_key<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    r: &'c KeyRotation,
) -> Op<'c, KeyChange> {
    Box::pin(async move {
        let Some(key) = lock_key(c, &r.tenant_id, &r.id).await? else {
            return Ok(Applied::value(KeyChange::NotFound));
        };
        if key.revoked_at.is_some() {
            return Ok(Applied::value(KeyChange::Revoked));
        }
        let previous = r.previous_valid_until.map(|until| PreviousSecret {
            digest: key.secret,
            valid_until: until,
        });
        sqlx::query(
            "UPDATE api_keys SET secret_sha256 = $1, previous_sha256 = $2, \
             previous_valid_until = $3, rotated_at = $4 WHERE tenant_id = $5 AND id = $6",
        )
        .bind(hex::encode(r.secret))
        .bind(previous.map(|p| hex::encode(p.digest)))
        .bind(previous.map(|p| p.valid_until))
        .bind(r.now)
        .bind(r.tenant_id.as_str())
        .bind(&r.id)
        .execute(&mut *c)
        .await?;
        Ok(Applied {
            keys: vec![r.id.clone()],
            ..Applied::value(KeyChange::Changed(Box::new(ApiKey {
                secret: r.secret,
                previous,
                rotated_at: Some(r.now),
                ..key
            })))
        })
    })
}

// The writer's op signature fixes the argument type as `&A`.
#[allow(clippy::ptr_arg)]
pub(crate) fn record_audit<'c>(
    c: &'c mut PgConnection,
    _ctx: &'c mut Ctx,
    records: &'c Vec<AuditRecord>,
) -> Op<'c, ()> {
    Box::pin(async move {
        insert_audit(c, records).await?;
        Ok(Applied::value(()))
    })
}

/// Also used by ops that audit inside their own transaction (run creation).
pub(crate) async fn insert_audit(
    c: &mut PgConnection,
    records: &[AuditRecord],
) -> sqlx::Result<()> {
    // 12 parameters a row, well under PostgreSQL's limit.
    for chunk in records.chunks(1000) {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO audit_events (id, tenant_id, created_at, actor, actor_id, action, \
             target_type, target_id, outcome, client_ip, request_id, details) ",
        );
        qb.push_values(chunk, |mut b, a| {
            b.push_bind(&a.id)
                .push_bind(a.tenant_id.as_str())
                .push_bind(a.created_at)
                .push_bind(&a.actor)
                .push_bind(&a.actor_id)
                .push_bind(a.action.as_str())
                .push_bind(&a.target_type)
                .push_bind(&a.target_id)
                .push_bind(a.outcome.as_str())
                .push_bind(&a.client_ip)
                .push_bind(&a.request_id)
                .push_bind(a.details.to_string());
        });
        qb.build().execute(&mut *c).await?;
    }
    Ok(())
}

//! API keys and the audit trail in SQLite: rows, reads, and the writer's ops.

use agentd_core::{AuditAction, AuditOutcome, AuditRecord, Scopes, TenantId};
use rusqlite::{Connection, OptionalExtension, params};
use sqlx::{FromRow, QueryBuilder, SqlitePool};

use super::ops::{Op, corrupt};
use super::writer::Applied;
use super::{batch::Ctx, into_page, push_page};
use crate::{
    ApiKey, AuditFilter, Cursor, KeyChange, KeyRotation, Page, PageRequest, PreviousSecret,
    SecretDigest, StoreError,
};

const KEY_COLUMNS: &str = "id, tenant_id, name, scopes, secret_sha256, previous_sha256, \
     previous_valid_until, created_by, created_at, expires_at, rotated_at, revoked_at";

#[derive(FromRow)]
pub(crate) struct KeyRow {
    id: String,
    tenant_id: String,
    name: String,
    scopes: String,
    secret_sha256: String,
    previous_sha256: Option<String>,
    previous_valid_until: Option<i64>,
    created_by: String,
    created_at: i64,
    expires_at: Option<i64>,
    rotated_at: Option<i64>,
    revoked_at: Option<i64>,
}

fn digest_from_hex(text: &str) -> Result<SecretDigest, StoreError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| StoreError::Corrupt(format!("key digest: {e}")))?;
    Ok(out)
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        let previous = match (r.previous_sha256, r.previous_valid_until) {
            (Some(hex), Some(valid_until)) => Some(PreviousSecret {
                digest: digest_from_hex(&hex)?,
                valid_until,
            }),
            _ => None,
        };
        Ok(ApiKey {
            tenant_id: TenantId::parse(&r.tenant_id)
                .ok_or_else(|| StoreError::Corrupt(format!("tenant {:?}", r.tenant_id)))?,
            scopes: serde_json::from_str::<Scopes>(&r.scopes)?,
            secret: digest_from_hex(&r.secret_sha256)?,
            previous,
            id: r.id,
            name: r.name,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            rotated_at: r.rotated_at,
            revoked_at: r.revoked_at,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct AuditRow {
    id: String,
    tenant_id: String,
    created_at: i64,
    actor: String,
    actor_id: Option<String>,
    action: String,
    target_type: Option<String>,
    target_id: Option<String>,
    outcome: String,
    client_ip: Option<String>,
    request_id: Option<String>,
    details: String,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;

    fn try_from(r: AuditRow) -> Result<Self, StoreError> {
        Ok(AuditRecord {
            tenant_id: TenantId::parse(&r.tenant_id)
                .ok_or_else(|| StoreError::Corrupt(format!("tenant {:?}", r.tenant_id)))?,
            action: r
                .action
                .parse::<AuditAction>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            outcome: AuditOutcome::parse(&r.outcome)
                .ok_or_else(|| StoreError::Corrupt(format!("audit outcome {:?}", r.outcome)))?,
            details: serde_json::from_str(&r.details)?,
            id: r.id,
            created_at: r.created_at,
            actor: r.actor,
            actor_id: r.actor_id,
            target_type: r.target_type,
            target_id: r.target_id,
            client_ip: r.client_ip,
            request_id: r.request_id,
        })
    }
}

// --- reads --------------------------------------------------------------

pub(super) async fn find_key(pool: &SqlitePool, id: &str) -> Result<Option<ApiKey>, StoreError> {
    let row: Option<KeyRow> =
        sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(ApiKey::try_from).transpose()
}

pub(super) async fn list_keys(
    pool: &SqlitePool,
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
    pool: &SqlitePool,
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

pub(crate) fn create_key(c: &Connection, _ctx: &mut Ctx, k: &ApiKey) -> Op<()> {
    c.prepare_cached(&format!(
        "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))?
    .execute(params![
        k.id,
        k.tenant_id.as_str(),
        k.name,
        serde_json::to_string(&k.scopes).unwrap_or_else(|_| "[]".into()),
        hex::encode(k.secret),
        k.previous.map(|p| hex::encode(p.digest)),
        k.previous.map(|p| p.valid_until),
        k.created_by,
        k.created_at,
        k.expires_at,
        k.rotated_at,
        k.revoked_at,
    ])?;
    Ok(Applied::value(()))
}

impl KeyRow {
    /// Reads a row selected with [`KEY_COLUMNS`], in that order.
    fn from_columns(r: &rusqlite::Row) -> rusqlite::Result<Self> {
        Ok(KeyRow {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            name: r.get(2)?,
            scopes: r.get(3)?,
            secret_sha256: r.get(4)?,
            previous_sha256: r.get(5)?,
            previous_valid_until: r.get(6)?,
            created_by: r.get(7)?,
            created_at: r.get(8)?,
            expires_at: r.get(9)?,
            rotated_at: r.get(10)?,
            revoked_at: r.get(11)?,
        })
    }
}

fn load_key(c: &Connection, tenant: &TenantId, id: &str) -> rusqlite::Result<Option<ApiKey>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ? AND id = ?"
        ))?
        .query_row(params![tenant.as_str(), id], KeyRow::from_columns)
        .optional()?;
    row.map(ApiKey::try_from).transpose().map_err(corrupt)
}

/// Idempotent: revoking a revoked key returns it unchanged.
pub(crate) fn revoke_key(
    c: &Connection,
    _ctx: &mut Ctx,
    (tenant, id, now): &(TenantId, String, i64),
) -> Op<KeyChange> {
    c.prepare_cached(
        "UPDATE api_keys SET revoked_at = ?, previous_sha256 = NULL, previous_valid_until = NULL \
         WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
    )?
    .execute(params![now, tenant.as_str(), id])?;
    Ok(Applied::value(match load_key(c, tenant, id)? {
        Some(k) => KeyChange::Changed(Box::new(k)),
        None => KeyChange::NotFound,
    }))
}

pub(crate) fn rotate_key(c: &Connection, _ctx: &mut Ctx, r: &KeyRotation) -> Op<KeyChange> {
    let Some(key) = load_key(c, &r.tenant_id, &r.id)? else {
        return Ok(Applied::value(KeyChange::NotFound));
    };
    if key.revoked_at.is_some() {
        return Ok(Applied::value(KeyChange::Revoked));
    }
    let previous = r.previous_valid_until.map(|until| PreviousSecret {
        digest: key.secret,
        valid_until: until,
    });
    c.prepare_cached(
        "UPDATE api_keys SET secret_sha256 = ?, previous_sha256 = ?, previous_valid_until = ?, \
         rotated_at = ? WHERE tenant_id = ? AND id = ?",
    )?
    .execute(params![
        hex::encode(r.secret),
        previous.map(|p| hex::encode(p.digest)),
        previous.map(|p| p.valid_until),
        r.now,
        r.tenant_id.as_str(),
        r.id,
    ])?;
    Ok(Applied::value(KeyChange::Changed(Box::new(ApiKey {
        secret: r.secret,
        previous,
        rotated_at: Some(r.now),
        ..key
    }))))
}

// The writer's op signature fixes the argument type as `&A`.
#[allow(clippy::ptr_arg)]
pub(crate) fn record_audit(c: &Connection, _ctx: &mut Ctx, records: &Vec<AuditRecord>) -> Op<()> {
    insert_audit(c, records)?;
    Ok(Applied::value(()))
}

/// Also used by ops that audit inside their own transaction (run creation).
pub(crate) fn insert_audit(c: &Connection, records: &[AuditRecord]) -> rusqlite::Result<()> {
    let mut insert = c.prepare_cached(
        "INSERT INTO audit_events (id, tenant_id, created_at, actor, actor_id, action, \
         target_type, target_id, outcome, client_ip, request_id, details) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    for a in records {
        insert.execute(params![
            a.id,
            a.tenant_id.as_str(),
            a.created_at,
            a.actor,
            a.actor_id,
            a.action.as_str(),
            a.target_type,
            a.target_id,
            a.outcome.as_str(),
            a.client_ip,
            a.request_id,
            a.details.to_string(),
        ])?;
    }
    Ok(())
}

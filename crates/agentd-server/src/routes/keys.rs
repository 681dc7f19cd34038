//! API key management (seed 001, DESIGN §2): mint, list, revoke, rotate.
//!
//! The admin token manages keys of any tenant (`customer_id`, else
//! `x-agentd-tenant`). A tenant key with `keys:admin` manages keys of its own
//! tenant only, and only keys whose scopes it holds itself: it can never
//! mint, rotate or revoke its way to more power than it has.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use agentd_core::time::{now_millis, parse_rfc3339, to_rfc3339};
use agentd_core::{AuditAction, Scope, Scopes, TenantId, new_id};
use agentd_store::{ApiKey, KeyChange, KeyRotation};

use crate::AppState;
use crate::audit;
use crate::auth::Principal;
use crate::auth::keys::{KEY_ID_PREFIX, mint_secret};
use crate::error::{ApiError, Resource};
use crate::extract::{JsonBody, QueryParams, parse_json, read_body};
use crate::views::{List, PageQuery, encode_cursor};

/// Longest rotation grace period: a week.
const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    /// The tenant; only the admin token may name one other than its own.
    pub customer_id: Option<String>,
    #[schema(value_type = Vec<String>, example = json!(["runs:read", "runs:write"]))]
    pub scopes: Vec<Scope>,
    /// RFC 3339; the key stops working then.
    pub expires_at: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// Seconds the old secret keeps working (0 or absent: it stops now).
    pub grace_period_secs: Option<u64>,
}

/// A key as listed: never its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub key_id: String,
    pub name: String,
    pub customer_id: String,
    #[schema(value_type = Vec<String>)]
    pub scopes: Scopes,
    /// `active`, `revoked` or `expired`.
    pub status: &'static str,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub rotated_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Until when the secret replaced by the last rotation still works.
    pub previous_secret_valid_until: Option<String>,
}

impl KeyView {
    fn of(k: &ApiKey, now: i64) -> Self {
        let status = if k.revoked_at.is_some() {
            "revoked"
        } else if k.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        };
        KeyView {
            key_id: k.id.clone(),
            name: k.name.clone(),
            customer_id: k.tenant_id.to_string(),
            scopes: k.scopes,
            status,
            created_at: to_rfc3339(k.created_at),
            expires_at: k.expires_at.map(to_rfc3339),
            rotated_at: k.rotated_at.map(to_rfc3339),
            revoked_at: k.revoked_at.map(to_rfc3339),
            previous_secret_valid_until: k
                .previous
                .filter(|p| p.valid_until > now)
                .map(|p| to_rfc3339(p.valid_until)),
        }
    }
}

/// Seed 001 names the full credential `key`; it is kept beside the view.
#[derive(Serialize, ToSchema)]
pub struct MintedKey {
    #[serde(flatten)]
    pub view: KeyView,
    pub secret: String,
    pub key: String,
}

fn minted(view: KeyView, secret: String) -> MintedKey {
    let key = format!("{}:{}", view.key_id, secret);
    MintedKey { view, secret, key }
}

/// A tenant key may only act on keys no stronger than itself.
fn check_grant(principal: &Principal, scopes: Scopes) -> Result<(), ApiError> {
    if principal.is_admin() || scopes.is_subset_of(principal.scopes()) {
        Ok(())
    } else {
        Err(ApiError::GrantExceeded(
            "a key can only grant or manage scopes it holds itself".into(),
        ))
    }
}

#[utoipa::path(post, path = "/v1/api-keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = MintedKey), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(req): JsonBody<CreateKeyRequest>,
) -> Result<(StatusCode, Json<MintedKey>), ApiError> {
    principal.require(Scope::KeysAdmin)?;
    let now = now_millis();
    let name = req.name.trim();
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::InvalidRequest(
            "invalid field `name`: 1 to 128 characters".into(),
        ));
    }
    let tenant = match req.customer_id.as_deref() {
        None => principal.tenant.clone(),
        Some(c) => {
            let t = TenantId::parse(c).ok_or_else(|| {
                ApiError::InvalidRequest(
                    "invalid field `customer_id`: 1 to 64 of [A-Za-z0-9_.-]".into(),
                )
            })?;
            if t != principal.tenant && !principal.is_admin() {
                return Err(ApiError::GrantExceeded(
                    "a tenant key can only mint keys for its own tenant".into(),
                ));
            }
            t
        }
    };
    if req.scopes.is_empty() {
        return Err(ApiError::InvalidRequest(
            "invalid field `scopes`: give at least one scope".into(),
        ));
    }
    let scopes: Scopes = req.scopes.into_iter().collect();
    check_grant(&principal, scopes)?;
    let expires_at = req
        .expires_at
        .as_deref()
        .map(|s| {
            parse_rfc3339(s).filter(|at| *at > now).ok_or_else(|| {
                ApiError::InvalidRequest(
                    "invalid field `expires_at`: expected a future RFC 3339 time".into(),
                )
            })
        })
        .transpose()?;
    let secret = mint_secret();
    let key = ApiKey {
        id: new_id(KEY_ID_PREFIX.trim_end_matches('_')),
        tenant_id: tenant,
        name: name.to_owned(),
        scopes,
        secret: secret.digest,
        previous: None,
        created_by: principal.actor(),
        created_at: now,
        expires_at,
        rotated_at: None,
        revoked_at: None,
    };
    state.store().create_api_key(key.clone()).await?;
    let mut entry = audit::on_target(
        &principal,
        AuditAction::KeyCreated,
        ("api_key", &key.id),
        json!({"name": key.name, "scopes": key.scopes, "customer_id": key.tenant_id}),
    );
    // The key's tenant owns the entry, so its own auditors see it.
    entry.tenant_id = key.tenant_id.clone();
    audit::record(&state, entry).await?;
    Ok((
        StatusCode::CREATED,
        Json(minted(KeyView::of(&key, now), secret.secret)),
    ))
}

#[derive(Deserialize)]
pub struct KeyListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/api-keys", tag = "keys",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<KeyView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<KeyListQuery>,
) -> Result<Json<List<KeyView>>, ApiError> {
    principal.require(Scope::KeysAdmin)?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .to_request()?;
    let page = state.store().list_api_keys(&principal.tenant, page).await?;
    let now = now_millis();
    Ok(Json(List {
        data: page.items.iter().map(|k| KeyView::of(k, now)).collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

/// The caller's key by id, or the 404 a missing and another tenant's share.
async fn find_key(state: &AppState, principal: &Principal, id: &str) -> Result<ApiKey, ApiError> {
    state
        .store()
        .find_api_key(id)
        .await?
        .filter(|k| k.tenant_id == principal.tenant)
        .ok_or(ApiError::NotFound(Resource::Key))
}

/// Idempotent: revoking a revoked key answers 204 again.
#[utoipa::path(delete, path = "/v1/api-keys/{key_id}", tag = "keys",
    responses((status = 204), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Scope::KeysAdmin)?;
    let key = find_key(&state, &principal, &key_id).await?;
    check_grant(&principal, key.scopes)?;
    if key.revoked_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    match state
        .store()
        .revoke_api_key(&principal.tenant, &key_id, now_millis())
        .await?
    {
        KeyChange::Changed(_) | KeyChange::Revoked => {}
        KeyChange::NotFound => return Err(ApiError::NotFound(Resource::Key)),
    }
    state.key_streams().close(&key_id, &[]);
    let entry = audit::on_target(
        &principal,
        AuditAction::KeyRevoked,
        ("api_key", &key_id),
        json!({"name": key.name}),
    );
    audit::record(&state, entry).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/api-keys/{key_id}/rotate", tag = "keys", request_body = Option<RotateKeyRequest>,
    responses((status = 200, body = MintedKey), (status = 404, body = crate::error::ErrorEnvelope),
        (status = 409, description = "KEY_REVOKED", body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    principal: Principal,
    Path(key_id): Path<String>,
    req: Request,
) -> Result<Json<MintedKey>, ApiError> {
    principal.require(Scope::KeysAdmin)?;
    let bytes = read_body(req, &state).await?;
    let req: RotateKeyRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RotateKeyRequest::default()
    } else {
        parse_json(&bytes)?
    };
    let grace = req.grace_period_secs.unwrap_or(0);
    if grace > MAX_GRACE_SECS {
        return Err(ApiError::InvalidRequest(format!(
            "invalid field `grace_period_secs`: at most {MAX_GRACE_SECS}"
        )));
    }
    let key = find_key(&state, &principal, &key_id).await?;
    check_grant(&principal, key.scopes)?;
    let now = now_millis();
    let secret = mint_secret();
    let rotation = KeyRotation {
        tenant_id: principal.tenant.clone(),
        id: key_id.clone(),
        secret: secret.digest,
        previous_valid_until: (grace > 0).then(|| now + grace as i64 * 1000),
        now,
    };
    let rotated = match state.store().rotate_api_key(rotation).await? {
        KeyChange::Changed(k) => k,
        KeyChange::NotFound => return Err(ApiError::NotFound(Resource::Key)),
        KeyChange::Revoked => return Err(ApiError::KeyRevoked),
    };
    // Streams on the old secret close now, or when its grace ends.
    let old = key.secret;
    let streams_on_new = [secret.digest];
    if grace == 0 {
        state.key_streams().close(&key_id, &streams_on_new);
    } else {
        state.key_streams().close(&key_id, &[secret.digest, old]);
        let state = state.clone();
        let id = key_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(grace)).await;
            state.key_streams().close(&id, &streams_on_new);
        });
    }
    let entry = audit::on_target(
        &principal,
        AuditAction::KeyRotated,
        ("api_key", &key_id),
        json!({"grace_period_secs": grace}),
    );
    audit::record(&state, entry).await?;
    Ok(Json(minted(KeyView::of(&rotated, now), secret.secret)))
}

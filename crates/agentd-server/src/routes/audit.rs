//! `GET /v1/audit`: the caller's tenant's trail, newest first.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use agentd_core::time::{parse_rfc3339, to_rfc3339};
use agentd_core::{AuditAction, AuditOutcome, AuditRecord, Scope};
use agentd_store::AuditFilter;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::views::{List, PageQuery, encode_cursor};

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub id: String,
    pub timestamp: String,
    pub customer_id: String,
    /// The credential that acted (a key id, `admin`, `anonymous`, …).
    pub actor: String,
    /// Who the client said was behind it, unverified.
    pub actor_id: Option<String>,
    #[schema(value_type = String)]
    pub action: AuditAction,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    #[schema(value_type = String)]
    pub outcome: AuditOutcome,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl AuditView {
    pub(crate) fn of(a: &AuditRecord) -> Self {
        AuditView {
            id: a.id.clone(),
            timestamp: to_rfc3339(a.created_at),
            customer_id: a.tenant_id.to_string(),
            actor: a.actor.clone(),
            actor_id: a.actor_id.clone(),
            action: a.action,
            target_type: a.target_type.clone(),
            target_id: a.target_id.clone(),
            outcome: a.outcome,
            client_ip: a.client_ip.clone(),
            request_id: a.request_id.clone(),
            details: a.details.clone(),
        }
    }
}

#[derive(Deserialize)]
pub struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    target_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|s| {
            parse_rfc3339(s).ok_or_else(|| {
                ApiError::InvalidRequest(format!("invalid field `{name}`: expected RFC 3339"))
            })
        })
        .transpose()
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(("since" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("until" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("actor" = Option<String>, Query), ("action" = Option<String>, Query),
        ("outcome" = Option<String>, Query), ("target_id" = Option<String>, Query),
        ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<AuditView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<List<AuditView>>, ApiError> {
    principal.require(Scope::AuditRead)?;
    let action = q
        .action
        .as_deref()
        .map(|a| {
            a.parse::<AuditAction>()
                .map_err(|e| ApiError::InvalidRequest(format!("invalid field `action`: {e}")))
        })
        .transpose()?;
    let outcome = q
        .outcome
        .as_deref()
        .map(|o| {
            AuditOutcome::parse(o).ok_or_else(|| {
                ApiError::InvalidRequest(format!("invalid field `outcome`: unknown outcome {o:?}"))
            })
        })
        .transpose()?;
    let filter = AuditFilter {
        since: time_param("since", q.since.as_deref())?,
        until: time_param("until", q.until.as_deref())?,
        actor: q.actor,
        action,
        outcome,
        target_id: q.target_id,
    };
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .to_request()?;
    let page = state
        .store()
        .list_audit(&principal.tenant, filter, page)
        .await?;
    Ok(Json(List {
        data: page.items.iter().map(AuditView::of).collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

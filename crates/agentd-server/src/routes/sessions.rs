//! Sessions: create (client-chosen or generated id), list, get, delete, history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use agentd_core::ids::is_valid_client_id;
use agentd_core::time::now_millis;
use agentd_core::{Message, new_id};
use agentd_store::NewSession;

use super::find_session;
use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Resource};
use crate::extract::{JsonBody, QueryParams};
use crate::views::{List, PageQuery, SessionView, encode_cursor};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// Chosen by the client (`"demo"`), else generated.
    pub session_id: Option<String>,
    /// Default agent for the session's runs.
    pub agent: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// A metadata value must be a JSON object (or absent).
pub(crate) fn metadata_object(v: Option<Value>, field: &str) -> Result<Value, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(ApiError::InvalidRequest(format!(
            "invalid field `{field}`: expected an object"
        ))),
    }
}

/// The named agent, else the default.
pub(crate) fn resolve_agent<'a>(
    state: &'a AppState,
    name: Option<&str>,
) -> Result<&'a agentd_engine::AgentSnapshot, ApiError> {
    match name {
        Some(n) => state
            .catalog()
            .get(n)
            .ok_or_else(|| ApiError::UnknownAgent(n.to_owned())),
        None => state
            .catalog()
            .default_agent()
            .ok_or_else(|| ApiError::Internal("no agent is configured".into())),
    }
}

#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSessionRequest,
    responses((status = 201, body = SessionView), (status = 409, description = "SESSION_EXISTS", body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(req): JsonBody<CreateSessionRequest>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    principal.require(Scope::SessionsWrite)?;
    let id = match req.session_id {
        Some(id) if is_valid_client_id(&id) => id,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "invalid field `session_id`: 1 to 128 of A-Z a-z 0-9 _ - . :".into(),
            ));
        }
        None => new_id("ses"),
    };
    let agent = resolve_agent(&state, req.agent.as_deref())?.name.clone();
    let metadata = metadata_object(req.metadata, "metadata")?;
    let session = state
        .store()
        .create_session(NewSession {
            tenant_id: principal.tenant,
            id,
            agent,
            metadata,
            created_at: now_millis(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(SessionView::from(&session))))
}

#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<SessionView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<List<SessionView>>, ApiError> {
    principal.require(Scope::SessionsRead)?;
    let page = state
        .store()
        .list_sessions(&principal.tenant, q.to_request()?)
        .await?;
    Ok(Json(List {
        data: page.items.iter().map(SessionView::from).collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 200, body = SessionView), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    principal.require(Scope::SessionsRead)?;
    let session = find_session(&state, &principal, &id).await?;
    Ok(Json(SessionView::from(&session)))
}

/// Cancels the session's unfinished runs, then deletes it and its history.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 204), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Scope::SessionsWrite)?;
    if state.store().delete_session(&principal.tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(Resource::Session))
    }
}

/// The session's history, oldest first (the order the model reads it).
#[utoipa::path(get, path = "/v1/sessions/{id}/messages", tag = "sessions",
    responses((status = 200, body = List<Message>), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn messages(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<List<Message>>, ApiError> {
    principal.require(Scope::SessionsRead)?;
    find_session(&state, &principal, &id).await?;
    let data = state
        .store()
        .session_messages(&principal.tenant, &id)
        .await?;
    Ok(Json(List {
        data,
        next_cursor: None,
    }))
}

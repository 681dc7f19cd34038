//! Runs: create (seed 000 on a session, seed 001 idempotent), list, get,
//! cancel, signal.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use agentd_core::run::RunSource;
use agentd_core::time::{now_millis, parse_rfc3339};
use agentd_core::{AuditAction, AuditRecord, Run, RunStatus, new_id};
use agentd_store::{
    CREATION_EVENTS, CreateRunOutcome, HubMessage, IdempotencyRecord, NewRun, NewSession,
    RunFilter, SessionTarget,
};

use super::find_run;
use super::sessions::{metadata_object, resolve_agent};
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Resource};
use crate::extract::{QueryParams, parse_json, read_body};
use crate::idempotency::{fingerprint, validate_key};
use crate::request_id::RequestId;
use crate::views::{List, PageQuery, RunView, encode_cursor};
use crate::{AppState, audit};

/// Seed 000's body for `POST /v1/sessions/{id}/runs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRunRequest {
    /// Ordered input; `{"type": "text", "text": "..."}` items become the user's turn.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub input_items: Vec<Value>,
    /// Plain-text input; may be omitted when `input_items` carries it all.
    pub content: Option<String>,
    pub source_plugin: Option<String>,
    pub source_kind: Option<String>,
    /// Who asked, as claimed by the client.
    pub actor_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Overrides the session's agent for this run.
    pub agent: Option<String>,
}

/// Seed 001's body for `POST /v1/runs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    /// `{"user_query": "..."}`, or any object (sent to the model as JSON).
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub agent: Option<String>,
    /// Continue this session; a new one is made when absent.
    pub session_id: Option<String>,
}

/// What every create route reduces to.
pub(crate) struct RunSpec {
    /// An existing session of the caller's; `None` makes a new one.
    pub session: Option<String>,
    pub agent: Option<String>,
    pub input: Value,
    pub user_message: String,
    pub metadata: Value,
    pub source: RunSource,
}

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_HEADER) {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::InvalidRequest("invalid idempotency-key header".into()))?;
            validate_key(key)?;
            Ok(Some(key.to_owned()))
        }
    }
}

/// The user's turn from seed 000's items: text items in order, others as JSON.
fn user_message_from_items(items: &[Value], content: Option<&str>) -> Result<String, ApiError> {
    let mut parts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let kind = item.get("type").and_then(Value::as_str).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "invalid field `input_items[{i}].type`: expected a string"
            ))
        })?;
        if kind == "text" {
            let text = item.get("text").and_then(Value::as_str).ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "invalid field `input_items[{i}].text`: expected a string"
                ))
            })?;
            parts.push(text.to_owned());
        } else {
            parts.push(item.to_string());
        }
    }
    if parts.is_empty()
        && let Some(c) = content.filter(|c| !c.trim().is_empty())
    {
        parts.push(c.to_owned());
    }
    if parts.is_empty() {
        return Err(ApiError::InvalidRequest(
            "invalid field `input_items`: give at least one item, or `content`".into(),
        ));
    }
    Ok(parts.join("\n\n"))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/runs", tag = "runs", request_body = CreateSessionRunRequest,
    params(("idempotency-key" = Option<String>, Header)),
    responses((status = 202, body = RunView), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_on_session(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    principal.require(Scope::RunsWrite)?;
    let key = idempotency_key(&headers)?;
    let bytes = read_body(req, &state).await?;
    let raw: Value = parse_json(&bytes)?;
    let body: CreateSessionRunRequest = parse_json(&bytes)?;
    let user_message = user_message_from_items(&body.input_items, body.content.as_deref())?;
    let spec = RunSpec {
        session: Some(session_id.clone()),
        agent: body.agent,
        input: json!({"input_items": body.input_items, "content": body.content}),
        user_message,
        metadata: metadata_object(body.metadata, "metadata")?,
        source: RunSource {
            source_plugin: body.source_plugin,
            source_kind: body.source_kind,
            actor_id: body.actor_id,
        },
    };
    let idem = key.map(|k| {
        (
            format!("POST /v1/sessions/{session_id}/runs"),
            k,
            fingerprint(&raw),
        )
    });
    create_run(
        &state,
        &principal,
        &request_id,
        spec,
        idem,
        StatusCode::ACCEPTED,
    )
    .await
}

#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = CreateRunRequest,
    params(("idempotency-key" = String, Header, description = "Required; a retry with the same key and body replays the first answer")),
    responses((status = 201, body = RunView), (status = 409, description = "IDEMPOTENCY_KEY_REUSED", body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    principal.require(Scope::RunsWrite)?;
    let key = idempotency_key(&headers)?.ok_or(ApiError::IdempotencyKeyRequired)?;
    let bytes = read_body(req, &state).await?;
    let raw: Value = parse_json(&bytes)?;
    let body: CreateRunRequest = parse_json(&bytes)?;
    let user_message = match &body.input {
        Value::Object(map) => match map.get("user_query") {
            Some(Value::String(q)) => q.clone(),
            _ => body.input.to_string(),
        },
        _ => {
            return Err(ApiError::InvalidRequest(
                "invalid field `input`: expected an object".into(),
            ));
        }
    };
    if let Some(id) = &body.session_id
        && !agentd_core::ids::is_valid_client_id(id)
    {
        return Err(ApiError::InvalidRequest(
            "invalid field `session_id`".into(),
        ));
    }
    let spec = RunSpec {
        session: body.session_id,
        agent: body.agent,
        input: body.input,
        user_message,
        metadata: metadata_object(body.metadata, "metadata")?,
        source: RunSource::default(),
    };
    let idem = Some(("POST /v1/runs".to_owned(), key, fingerprint(&raw)));
    create_run(
        &state,
        &principal,
        &request_id,
        spec,
        idem,
        StatusCode::CREATED,
    )
    .await
}

async fn create_run(
    state: &AppState,
    principal: &Principal,
    request_id: &RequestId,
    spec: RunSpec,
    idempotency: Option<(String, String, String)>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let (outcome, body) =
        insert_run(state, principal, request_id, spec, idempotency, status).await?;
    Ok(match outcome {
        CreateRunOutcome::Created { .. } => (status, Json(body)).into_response(),
        CreateRunOutcome::Replayed { status, mut body } => {
            body["replayed"] = json!(true);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (status, Json(body)).into_response()
        }
    })
}

/// Creates a run (and its session when `spec.session` is `None`) as every
/// create route does: scrubbed input, the agent snapshot, the audit entry,
/// the idempotency record. Returns the outcome and the run's view.
pub(crate) async fn insert_run(
    state: &AppState,
    principal: &Principal,
    request_id: &RequestId,
    mut spec: RunSpec,
    idempotency: Option<(String, String, String)>,
    status: StatusCode,
) -> Result<(CreateRunOutcome, Value), ApiError> {
    let store = state.store();
    let tenant = principal.tenant.clone();
    let now = now_millis();
    // Secrets a client pasted into its input never reach an event (files
    // are left whole: scrubbing base64 would only corrupt them).
    let files = spec
        .input
        .as_object_mut()
        .and_then(|o| o.remove("attachments"));
    state.config().scrubber.scrub_value(&mut spec.input);
    if let (Some(files), Some(o)) = (files, spec.input.as_object_mut()) {
        o.insert("attachments".into(), files);
    }
    state.config().scrubber.scrub_value(&mut spec.metadata);
    let (session, session_agent) = match &spec.session {
        Some(id) => {
            let s = store
                .get_session(&tenant, id)
                .await?
                .ok_or(ApiError::NotFound(Resource::Session))?;
            (SessionTarget::Existing(id.clone()), Some(s.agent))
        }
        None => (
            SessionTarget::New(NewSession {
                tenant_id: tenant.clone(),
                id: new_id("ses"),
                agent: String::new(),
                metadata: json!({}),
                created_at: now,
            }),
            None,
        ),
    };
    let agent = resolve_agent(state, spec.agent.as_deref().or(session_agent.as_deref()))?;
    let session = match session {
        SessionTarget::New(mut s) => {
            s.agent = agent.name.clone();
            SessionTarget::New(s)
        }
        existing => existing,
    };
    let session_id = match &session {
        SessionTarget::Existing(id) => id.clone(),
        SessionTarget::New(s) => s.id.clone(),
    };
    let run = Run {
        input: spec.input,
        metadata: spec.metadata,
        source: spec.source,
        agent_config: serde_json::to_value(agent).map_err(|e| ApiError::Internal(e.to_string()))?,
        last_seq: CREATION_EVENTS,
        request_id: Some(request_id.0.clone()),
        ..Run::queued(
            tenant,
            session_id,
            agent.name.clone(),
            spec.user_message,
            now,
        )
    };
    let body = serde_json::to_value(RunView::of(&run).with_request_id(&request_id.0))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let idempotency = idempotency.map(|(route, key, fingerprint)| IdempotencyRecord {
        route,
        key,
        fingerprint,
        status: status.as_u16(),
        body: body.clone(),
    });
    let audit = AuditRecord {
        actor_id: run.source.actor_id.clone(),
        ..audit::on_target(
            principal,
            AuditAction::RunCreated,
            ("run", &run.id),
            json!({"session_id": run.session_id, "agent": run.agent}),
        )
    };
    // A run that can start at once is claimed in its creating commit and
    // started here, without a round trip through the dispatcher.
    let slot = state.engine().reserve();
    let mut outcome = store
        .create_run(NewRun {
            run,
            session,
            idempotency,
            audit: Some(audit),
            claim: slot.as_ref().map(|s| s.claim()),
        })
        .await?;
    if let (Some(slot), CreateRunOutcome::Created { claimed, .. }) = (slot, &mut outcome)
        && let Some(claimed) = claimed.take()
    {
        slot.start(*claimed);
    }
    Ok((outcome, body))
}

#[derive(Deserialize)]
pub struct RunListQuery {
    status: Option<String>,
    session_id: Option<String>,
    agent: Option<String>,
    created_after: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/runs", tag = "runs",
    params(("status" = Option<RunStatus>, Query), ("session_id" = Option<String>, Query),
        ("agent" = Option<String>, Query), ("created_after" = Option<String>, Query, description = "RFC 3339"),
        ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<RunView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<RunListQuery>,
) -> Result<Json<List<RunView>>, ApiError> {
    principal.require(Scope::RunsRead)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            RunStatus::parse(s).ok_or_else(|| {
                ApiError::InvalidRequest(format!("invalid field `status`: unknown status {s:?}"))
            })
        })
        .transpose()?;
    let created_after = q
        .created_after
        .as_deref()
        .map(|s| {
            parse_rfc3339(s).ok_or_else(|| {
                ApiError::InvalidRequest("invalid field `created_after`: expected RFC 3339".into())
            })
        })
        .transpose()?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .to_request()?;
    let filter = RunFilter {
        status,
        session_id: q.session_id,
        agent: q.agent,
        created_after,
    };
    let page = state
        .store()
        .list_runs(&principal.tenant, filter, page)
        .await?;
    let read_inputs = principal.can(Scope::RunsReadInputs);
    Ok(Json(List {
        data: page
            .items
            .iter()
            .map(|r| RunView::of(r).redacted_unless(read_inputs))
            .collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs",
    responses((status = 200, body = RunView), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    principal.require(Scope::RunsRead)?;
    let run = find_run(&state, &principal, &id).await?;
    Ok(Json(
        RunView::of(&run).redacted_unless(principal.can(Scope::RunsReadInputs)),
    ))
}

/// How long cancel waits for a running run's worker to stop it.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Idempotent: a finished run is returned unchanged with 200.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs",
    responses((status = 200, body = RunView), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    principal.require(Scope::RunsWrite)?;
    let store = state.store();
    let before = find_run(&state, &principal, &id).await?;
    let from = before.status;
    let run_was_live = !from.is_terminal();
    let mut sub = store.hub().subscribe(&id);
    let run = store
        .cancel_run(&principal.tenant, &id)
        .await?
        .ok_or(ApiError::NotFound(Resource::Run))?;
    let read_inputs = principal.can(Scope::RunsReadInputs);
    if run.status.is_terminal() && !run_was_live {
        return Ok(Json(RunView::of(&run).redacted_unless(read_inputs)));
    }
    let entry = audit::on_target(
        &principal,
        AuditAction::RunCancelled,
        ("run", &id),
        json!({"from": from.as_str()}),
    );
    audit::record(&state, entry).await?;
    if run.status.is_terminal() {
        return Ok(Json(RunView::of(&run).redacted_unless(read_inputs)));
    }
    // A worker holds it: wait (bounded) for it to record the cancel.
    let _ = tokio::time::timeout(CANCEL_WAIT, async {
        loop {
            match sub.recv().await {
                Ok(HubMessage::Events(events)) if events.iter().any(|e| e.kind.is_terminal()) => {
                    return;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(Some(r)) = store.get_run(&principal.tenant, &id).await
                        && r.status.is_terminal()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
    .await;
    let run = find_run(&state, &principal, &id).await?;
    Ok(Json(RunView::of(&run).redacted_unless(read_inputs)))
}

//! `/v1/sandboxes` (seed 004, DESIGN §3): run code in the sandbox, follow
//! its frames, read its result and audit trail, tear it down. Tenant-scoped:
//! another tenant's sandbox is a 404 like a missing one. A running sandbox
//! is read from the service's memory; an ended one from the store, so it
//! outlives the process.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, KeepAliveStream, Sse};
use serde::Deserialize;
use utoipa::ToSchema;

use agentd_sandbox::service::{AuditOrigin, CreateError, EgressCeiling, EgressRequest};
use agentd_sandbox::{
    CreateRequest, Found, Frame, Language, LimitsRequest, SandboxService, TeardownOutcome,
};
use agentd_store::AuditFilter;

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Resource};
use crate::extract::{JsonBody, QueryParams};
use crate::routes::audit::AuditView;
use crate::views::{List, MAX_PAGE, PageQuery, encode_cursor};

/// What the server needs to serve sandboxes: the service and the
/// operator's egress ceiling for API-created ones.
#[derive(Clone)]
pub struct SandboxApi {
    pub service: Arc<SandboxService>,
    pub ceiling: EgressCeiling,
}

const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    pub code: String,
    /// `python` or `bash`.
    #[schema(value_type = String)]
    pub language: Language,
    /// `{memory_mb, cpu_secs, wall_clock_secs, pids, output_bytes}`, each optional.
    #[schema(value_type = Option<Object>)]
    pub limits: Option<LimitsRequest>,
    /// `{mode: "deny_all" | "allow_list", allow: [hosts]}`; deny_all by default.
    #[schema(value_type = Option<Object>)]
    pub egress: Option<EgressRequest>,
    pub labels: Option<BTreeMap<String, String>>,
}

fn api(state: &AppState) -> Result<&SandboxApi, ApiError> {
    state
        .sandboxes()
        .ok_or_else(|| ApiError::SandboxUnavailable("no sandbox backend in this process".into()))
}

async fn find(state: &AppState, principal: &Principal, id: &str) -> Result<Found, ApiError> {
    api(state)?
        .service
        .find(&principal.tenant, id)
        .await?
        .ok_or(ApiError::NotFound(Resource::Sandbox))
}

fn origin(principal: &Principal) -> AuditOrigin {
    AuditOrigin {
        tenant: principal.tenant.clone(),
        actor: principal.actor(),
        actor_id: None,
        client_ip: principal.client_ip.map(|ip| ip.to_string()),
        request_id: principal.request_id.clone(),
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Invalid(e) => ApiError::InvalidRequest(e.to_string()),
            CreateError::Unavailable(_) => ApiError::SandboxUnavailable(e.to_string()),
            CreateError::Busy(_) => ApiError::SandboxBusy(e.to_string()),
            CreateError::Store(e) => e.into(),
        }
    }
}

#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    responses((status = 201, body = Object), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 503, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<agentd_sandbox::SandboxView>), ApiError> {
    principal.require(Scope::SandboxesWrite)?;
    let api = api(&state)?;
    let session = api
        .service
        .create(CreateRequest {
            code: body.code,
            language: body.language,
            limits: body.limits.unwrap_or_default(),
            egress: body.egress.unwrap_or_default(),
            labels: body.labels.unwrap_or_default(),
            origin: origin(&principal),
            ceiling: api.ceiling.clone(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(session.view())))
}

#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<List<agentd_sandbox::SandboxView>>, ApiError> {
    principal.require(Scope::SandboxesRead)?;
    let page = q.to_request()?;
    let page = api(&state)?.service.list(&principal.tenant, page).await?;
    Ok(Json(List {
        data: page.items,
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<agentd_sandbox::SandboxView>, ApiError> {
    principal.require(Scope::SandboxesRead)?;
    Ok(Json(find(&state, &principal, &id).await?.view()?))
}

/// The structured result; 409 `SANDBOX_RUNNING` until the workload is over.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/result", tag = "sandboxes",
    responses((status = 200, body = Object), (status = 409, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn result(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<agentd_sandbox::SandboxResult>, ApiError> {
    principal.require(Scope::SandboxesRead)?;
    let result = match find(&state, &principal, &id).await? {
        Found::Live(s) => s.result(),
        Found::Stored(r) => agentd_sandbox::record::result_of(&r)?,
    };
    result.map(Json).ok_or(ApiError::SandboxRunning)
}

/// The sandbox's audit trail from the store, oldest first.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/audit", tag = "sandboxes",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<List<AuditView>>, ApiError> {
    principal.require(Scope::SandboxesRead)?;
    find(&state, &principal, &id).await?;
    Ok(Json(List {
        data: trail(&state, &principal, id)
            .await?
            .iter()
            .map(AuditView::of)
            .collect(),
        next_cursor: None,
    }))
}

/// The sandbox's whole audit trail, oldest first.
async fn trail(
    state: &AppState,
    principal: &Principal,
    id: String,
) -> Result<Vec<agentd_core::AuditRecord>, ApiError> {
    let filter = AuditFilter {
        target_id: Some(id),
        ..AuditFilter::default()
    };
    let mut data = Vec::new();
    let mut cursor = None;
    // A sandbox's trail is short but egress decisions can add up: read it all.
    for _ in 0..50 {
        let page = PageQuery {
            limit: Some(MAX_PAGE),
            cursor: cursor.take(),
        }
        .to_request()?;
        let page = state
            .store()
            .list_audit(&principal.tenant, filter.clone(), page)
            .await?;
        data.extend(page.items);
        match page.next.as_ref() {
            Some(next) => cursor = Some(encode_cursor(next)),
            None => break,
        }
    }
    data.reverse();
    Ok(data)
}

/// Frames `phase`, `stdout`, `stderr`, `audit`, `result`, `end`, from the
/// first; closes after `end`.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/stream", tag = "sandboxes",
    responses((status = 200, description = "text/event-stream of frames")),
    security(("bearer" = [])))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Sse<KeepAliveStream<FrameStream>>, ApiError> {
    principal.require(Scope::SandboxesRead)?;
    // Every frame from memory while the session is there; else a summary
    // from the store (`agentd_sandbox::record::replay`).
    let session = match api(&state)?.service.live(&principal.tenant, &id) {
        Some(s) => s,
        None => {
            let Found::Stored(record) = find(&state, &principal, &id).await? else {
                return Err(ApiError::NotFound(Resource::Sandbox));
            };
            let trail = trail(&state, &principal, id).await?;
            let frames = agentd_sandbox::record::replay(&record, &trail)?;
            return Ok(Sse::new(replayed(frames))
                .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")));
        }
    };
    let (token, slot) = state.stream_token(&principal);
    let frames = futures::stream::unfold(
        (
            session,
            0usize,
            None::<tokio::sync::watch::Receiver<usize>>,
            false,
        ),
        move |(session, mut sent, rx, done)| {
            let token = token.clone();
            let _slot = &slot;
            async move {
                if done {
                    return None;
                }
                let mut rx = rx.unwrap_or_else(|| session.subscribe());
                loop {
                    let (frames, ended) = session.frames_from(sent);
                    if !frames.is_empty() {
                        sent += frames.len();
                        let events: Vec<SseEvent> = frames.iter().map(sse_event).collect();
                        let finished = ended && session.frames_from(sent).0.is_empty();
                        return Some((
                            futures::stream::iter(events),
                            (session, sent, Some(rx), finished),
                        ));
                    }
                    if ended {
                        return None;
                    }
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { return None },
                        _ = token.cancelled() => return None,
                    }
                }
            }
        },
    );
    use futures::StreamExt;
    Ok(Sse::new(frames.flatten().map(Ok).boxed())
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")))
}

type FrameStream = futures::stream::BoxStream<'static, Result<SseEvent, Infallible>>;

fn replayed(frames: Vec<Frame>) -> FrameStream {
    use futures::StreamExt;
    futures::stream::iter(frames.iter().map(sse_event).map(Ok).collect::<Vec<_>>()).boxed()
}

fn sse_event(f: &Frame) -> SseEvent {
    SseEvent::default()
        .event(f.kind)
        .id(f.seq.to_string())
        .data(serde_json::to_string(f).unwrap_or_default())
}

/// Teardown: kills a running sandbox, then 204. Idempotent.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    responses((status = 204), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Scope::SandboxesWrite)?;
    let outcome = api(&state)?
        .service
        .teardown(&principal.tenant, &id, origin(&principal))
        .await?;
    match outcome {
        TeardownOutcome::Done => Ok(StatusCode::NO_CONTENT),
        TeardownOutcome::NotFound => Err(ApiError::NotFound(Resource::Sandbox)),
        TeardownOutcome::RunningElsewhere => Err(ApiError::SandboxRunning),
    }
}

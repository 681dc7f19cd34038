//! The chat surface of seed 002: `POST /api/chat` (JSON or SSE) and
//! `GET /ws/chat`. A chat turn is a run on a session; its events are
//! translated into chat events (`token`, `thinking`, `tool_call`,
//! `tool_result`, `awaiting_input`, `done`, `error`).

pub(crate) mod attachments;
pub(crate) mod state;
pub(crate) mod ws;

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use agentd_core::run::RunSource;
use agentd_core::{Event, EventType, RunStatus, Scope, TenantId};
use agentd_store::CreateRunOutcome;

use self::state::state_object;
use super::runs::{RunSpec, insert_run};
use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Resource};
use crate::extract::parse_json;
use crate::follow::follow;
use crate::request_id::RequestId;
use crate::sse;

/// A chat caller: a credential with the `chat` scope, or — with
/// `chat.public = true` and no `Authorization` header — anyone, on the
/// default tenant.
pub(crate) struct ChatCaller(pub Principal);

impl FromRequestParts<AppState> for ChatCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let anonymous = state.config().chat.public
            && !parts
                .headers
                .contains_key(axum::http::header::AUTHORIZATION);
        let principal = if anonymous {
            Principal::anonymous_chat(state, parts)
        } else {
            Principal::from_request_parts(parts, state).await?
        };
        principal.require(Scope::Chat)?;
        Ok(ChatCaller(principal))
    }
}

#[derive(Deserialize, ToSchema)]
pub struct ChatRequest {
    pub message: String,
    /// SSE when true (the default), one JSON answer when false.
    #[serde(default = "default_stream")]
    pub stream: bool,
    /// The `state` of the previous answer, passed back unmodified.
    #[schema(value_type = Option<Object>)]
    pub state: Option<Value>,
    pub agent_name: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub attachments: Option<Vec<Value>>,
}

fn default_stream() -> bool {
    true
}

/// One message of a conversation, from HTTP or a WebSocket frame.
pub(crate) struct TurnInput {
    pub message: String,
    /// Checked by [`attachments::check`].
    pub attachments: Vec<Value>,
    pub agent_name: Option<String>,
    /// The conversation to continue, already checked against the caller.
    pub session: Option<String>,
}

/// A started turn.
pub(crate) struct Turn {
    pub run_id: String,
    pub session_id: String,
    pub agent: String,
    pub tenant: TenantId,
}

/// Which session a chat `state` continues: its signed token, else its
/// `previous_response_id` (a run of the caller's). `None` starts a new one.
pub(crate) async fn session_from_state(
    app: &AppState,
    caller: &Principal,
    state: Option<&Value>,
) -> Result<Option<String>, ApiError> {
    let Some(state) = state.filter(|s| !s.is_null()) else {
        return Ok(None);
    };
    if !state.is_object() {
        return Err(ApiError::InvalidRequest(
            "invalid field `state`: expected the object a previous answer returned".into(),
        ));
    }
    if let Some(token) = state.get("session_token") {
        let (tenant, session) = token
            .as_str()
            .and_then(|t| app.config().chat.state_key.verify(t))
            .ok_or(ApiError::ChatStateInvalid)?;
        if tenant != caller.tenant {
            return Err(ApiError::NotFound(Resource::Session));
        }
        return Ok(Some(session));
    }
    match state.get("previous_response_id").and_then(Value::as_str) {
        Some(run) => session_of_run(app, caller, run).await.map(Some),
        None => Ok(None),
    }
}

/// The session of one of the caller's runs, or 404.
pub(crate) async fn session_of_run(
    app: &AppState,
    caller: &Principal,
    run_id: &str,
) -> Result<String, ApiError> {
    let run = super::find_run(app, caller, run_id).await?;
    Ok(run.session_id)
}

/// Starts a turn: a run on the conversation's session (made on first use).
pub(crate) async fn start_turn(
    app: &AppState,
    caller: &Principal,
    request_id: &RequestId,
    input: TurnInput,
) -> Result<Turn, ApiError> {
    if input.message.trim().is_empty() {
        return Err(ApiError::InvalidRequest(
            "invalid field `message`: must not be empty".into(),
        ));
    }
    if let Some(name) = &input.agent_name
        && app.catalog().get(name).is_none()
    {
        return Err(ApiError::UnknownAgent(name.clone()));
    }
    let spec = RunSpec {
        session: input.session,
        agent: input.agent_name,
        input: if input.attachments.is_empty() {
            json!({"message": input.message})
        } else {
            json!({"message": input.message, "attachments": input.attachments})
        },
        user_message: input.message,
        metadata: json!({}),
        source: RunSource {
            source_plugin: Some("chat".into()),
            source_kind: None,
            actor_id: None,
        },
    };
    let (outcome, _) = insert_run(
        app,
        caller,
        request_id,
        spec,
        None,
        axum::http::StatusCode::OK,
    )
    .await?;
    let CreateRunOutcome::Created { run, .. } = outcome else {
        return Err(ApiError::Internal("a chat turn was replayed".into()));
    };
    Ok(Turn {
        run_id: run.id.clone(),
        session_id: run.session_id.clone(),
        agent: run.agent.clone(),
        tenant: run.tenant_id.clone(),
    })
}

/// The chat event for a run event, if it has one.
fn translate(app: &AppState, turn: &Turn, e: &Event) -> Option<Value> {
    let v = e.value();
    Some(match e.kind {
        EventType::StepProgress => match v["kind"].as_str()? {
            "content_delta" => json!({"type": "token", "data": v["content_delta"]}),
            "thinking_delta" => json!({"type": "thinking", "data": v["thinking_delta"]}),
            _ => return None,
        },
        EventType::ToolStarted => json!({"type": "tool_call", "data": {
            "tool": v["tool"],
            "arguments": v["arguments"].to_string(),
            "status": "running",
        }}),
        EventType::ToolFinished => json!({"type": "tool_result", "data": {"output": v["content"]}}),
        EventType::AwaitingInput => json!({"type": "awaiting_input", "data": {
            "run_id": turn.run_id,
            "pending": v["pending"],
        }}),
        EventType::WorkerSucceeded => json!({
            "type": "done",
            "data": v["output"]["text"],
            "response_id": turn.run_id,
            "state": turn_state(app, turn),
        }),
        EventType::WorkerFailed => json!({"type": "error", "data": v["error"]}),
        EventType::LimitExceeded => json!({"type": "error", "data": format!(
            "the run stopped at its {} limit", v["limit"].as_str().unwrap_or("")
        )}),
        EventType::Cancelled => json!({"type": "error", "data": "the run was cancelled"}),
        _ => return None,
    })
}

pub(crate) fn turn_state(app: &AppState, turn: &Turn) -> Value {
    let token = app
        .config()
        .chat
        .state_key
        .sign(&turn.tenant, &turn.session_id);
    state_object(&token, &turn.run_id, &turn.agent)
}

/// The turn's chat events, live, ending after `done` or `error`.
pub(crate) fn turn_events(
    app: AppState,
    caller: &Principal,
    turn: Turn,
) -> impl Stream<Item = Value> + Send + 'static {
    let (token, slot) = app.stream_token(caller);
    follow(
        app.store().clone(),
        turn.tenant.clone(),
        turn.run_id.clone(),
        0,
        token,
    )
    .map(move |item| {
        let _slot = &slot;
        match item {
            Ok(e) => (translate(&app, &turn, &e), e.kind.is_terminal()),
            Err(e) => (Some(json!({"type": "error", "data": e.to_string()})), true),
        }
    })
    .scan(false, |ended, (event, last)| {
        let out = if *ended { None } else { Some(event) };
        *ended = last;
        futures::future::ready(out)
    })
    .filter_map(futures::future::ready)
}

/// `POST /api/chat` (seed 002).
#[utoipa::path(post, path = "/api/chat", tag = "chat", request_body = ChatRequest,
    responses((status = 200, description = "`{response, state, done}`, or with `stream` an SSE of `data: {type, data}` events ending `data: [DONE]`")),
    security(("bearer" = [])))]
pub async fn chat(
    State(app): State<AppState>,
    ChatCaller(caller): ChatCaller,
    axum::Extension(request_id): axum::Extension<RequestId>,
    req: Request,
) -> Result<Response, ApiError> {
    // This route's own limit: room for several attachments.
    let bytes = axum::body::to_bytes(req.into_body(), attachments::CHAT_BODY_LIMIT)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(attachments::CHAT_BODY_LIMIT))?;
    let body: ChatRequest = parse_json(&bytes)?;
    let files = attachments::check(body.attachments.as_deref().unwrap_or_default())?;
    let session = session_from_state(&app, &caller, body.state.as_ref()).await?;
    let turn = start_turn(
        &app,
        &caller,
        &request_id,
        TurnInput {
            message: body.message,
            attachments: files,
            agent_name: body.agent_name,
            session,
        },
    )
    .await?;
    if body.stream {
        let events = turn_events(app.clone(), &caller, turn)
            .map(|v| sse::data_frame(&serde_json::to_string(&v).unwrap_or_default()))
            .chain(stream::once(async { sse::data_frame("[DONE]") }));
        return Ok(sse::response(events));
    }
    answer(app, caller, turn).await
}

/// The non-streaming answer: waits for the run to finish (or pause).
async fn answer(app: AppState, caller: Principal, turn: Turn) -> Result<Response, ApiError> {
    let state = turn_state(&app, &turn);
    let run_id = turn.run_id.clone();
    let mut events = Box::pin(turn_events(app.clone(), &caller, turn));
    while let Some(event) = events.next().await {
        match event["type"].as_str() {
            Some("done") => {
                return Ok(
                    Json(json!({"response": event["data"], "state": state, "done": true}))
                        .into_response(),
                );
            }
            Some("awaiting_input") => {
                // Nobody can approve inside this request: answer now, and
                // say what the run waits for (signal it, then ask again).
                return Ok(Json(json!({
                    "response": "", "state": state, "done": false,
                    "awaiting_input": event["data"],
                }))
                .into_response());
            }
            Some("error") => break,
            _ => {}
        }
    }
    let run = super::find_run(&app, &caller, &run_id).await?;
    let message = run
        .error
        .clone()
        .unwrap_or_else(|| format!("the run ended {}", run.status.as_str()));
    Err(match run.status {
        RunStatus::LimitExceeded => ApiError::TurnLimited(message),
        RunStatus::Cancelled => ApiError::TurnCancelled,
        _ => ApiError::TurnFailed(format!(
            "{}: {message}",
            run.reason_code.as_deref().unwrap_or("RUN_FAILED")
        )),
    })
}

//! `GET /ws/chat` (seeds 002 and 003): chat turns over a WebSocket.
//!
//! Authentication, in this order (DESIGN §3): the query's `key` or
//! `session_api_key`; else `Authorization: Bearer` or `X-Session-API-Key`;
//! else a first frame `{"type": "auth", "key": "..."}` within 10 s. Failure:
//! `{"type": "auth_error", "data": "Invalid API key"}`, then close code 4001.
//! The upgrade's `Origin` was already checked by the CORS layer.
//!
//! Frames in: `{message, attachments?, agent_name?, previous_response_id?}`
//! (one turn at a time, in order), `{"type": "clear"}` (a new conversation),
//! `{"type": "signal", run_id, action, request_id?, payload?}` (answers a
//! paused run at once). Frames out: the chat events of `POST /api/chat`.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use agentd_core::signal::SignalAction;
use agentd_core::{AuditAction, AuditOutcome, Scope};
use agentd_store::{SignalOutcome, SignalRun};

use super::{TurnInput, session_of_run, start_turn, turn_events};
use crate::AppState;
use crate::auth::{AuthContext, Principal, authenticate};
use crate::error::ApiError;
use crate::request_id::RequestId;

/// How long an unauthenticated socket may wait for its auth frame.
const AUTH_FRAME_WAIT: Duration = Duration::from_secs(10);
/// Close code for a refused or revoked credential (seed 002).
const CLOSE_AUTH: u16 = 4001;
/// Chat frames a slow client may fall behind by before the turn waits.
const OUTBOX: usize = 256;

#[derive(Deserialize, Default)]
pub struct WsQuery {
    key: Option<String>,
    session_api_key: Option<String>,
}

/// The upgrade request's context, for authenticating after the upgrade.
pub struct UpgradeContext(AuthContext, Option<String>);

impl FromRequestParts<AppState> for UpgradeContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header_key = crate::auth::bearer(&parts.headers)
            .ok()
            .map(str::to_owned)
            .or_else(|| {
                parts
                    .headers
                    .get("x-session-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_owned())
            });
        Ok(UpgradeContext(AuthContext::of(parts, state), header_key))
    }
}

#[utoipa::path(get, path = "/ws/chat", tag = "chat",
    params(("key" = Option<String>, Query), ("session_api_key" = Option<String>, Query)),
    responses((status = 101, description = "WebSocket of chat frames")))]
pub async fn ws_chat(
    State(app): State<AppState>,
    Query(q): Query<WsQuery>,
    UpgradeContext(ctx, header_key): UpgradeContext,
    upgrade: WebSocketUpgrade,
) -> Response {
    let query_key = q.key.or(q.session_api_key).filter(|k| !k.is_empty());
    let presented = query_key.or(header_key);
    upgrade
        .max_message_size(super::attachments::CHAT_BODY_LIMIT)
        .on_upgrade(move |socket| connection(app, ctx, presented, socket))
}

async fn connection(
    app: AppState,
    ctx: AuthContext,
    presented: Option<String>,
    mut socket: WebSocket,
) {
    let caller = match authenticate_socket(&app, &ctx, presented, &mut socket).await {
        Ok(caller) => caller,
        Err(message) => {
            let frame = json!({"type": "auth_error", "data": message});
            let _ = socket.send(Message::Text(frame.to_string().into())).await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: CLOSE_AUTH,
                    reason: Utf8Bytes::from(message),
                })))
                .await;
            return;
        }
    };
    serve(app, caller, socket).await;
}

/// The credential by precedence; a first auth frame when none came with the
/// upgrade (public chat needs none).
async fn authenticate_socket(
    app: &AppState,
    ctx: &AuthContext,
    presented: Option<String>,
    socket: &mut WebSocket,
) -> Result<Principal, String> {
    let key = match presented {
        Some(k) => Some(k),
        None if app.config().chat.public => None,
        None => Some(first_frame_key(socket).await?),
    };
    let principal = match key {
        Some(k) => authenticate(app, ctx, Ok(&k)).await.map_err(|e| match e {
            ApiError::AuthMissing | ApiError::AuthInvalid => "Invalid API key".to_owned(),
            other => other.to_string(),
        })?,
        None => Principal::anonymous_chat_with(app, ctx),
    };
    principal
        .require(Scope::Chat)
        .map_err(|_| "this API key lacks the chat scope".to_owned())?;
    Ok(principal)
}

async fn first_frame_key(socket: &mut WebSocket) -> Result<String, String> {
    let frame = tokio::time::timeout(AUTH_FRAME_WAIT, socket.recv())
        .await
        .map_err(|_| "Invalid API key".to_owned())?;
    let Some(Ok(Message::Text(text))) = frame else {
        return Err("Invalid API key".into());
    };
    let v: Value = serde_json::from_str(&text).map_err(|_| "Invalid API key".to_owned())?;
    match (v["type"].as_str(), v["key"].as_str()) {
        (Some("auth"), Some(key)) if !key.is_empty() => Ok(key.to_owned()),
        _ => Err("Invalid API key".into()),
    }
}

/// Work for the turn task, in arrival order.
enum Job {
    Turn(Value),
    Clear,
}

async fn serve(app: AppState, caller: Principal, socket: WebSocket) {
    let (mut sink, mut inbound) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Value>(OUTBOX);
    let (jobs, job_rx) = mpsc::channel::<Job>(64);
    let (stop, slot) = app.stream_token(&caller);
    let turns = tokio::spawn(run_turns(app.clone(), caller.clone(), job_rx, out.clone()));

    let writer = {
        let stop = stop.clone();
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                // Stop first: when the reader also sees it and drops the
                // outbox, the close frame must still go out.
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        let (code, reason) = if app.is_draining() {
                            (1001, "server shutting down")
                        } else {
                            (CLOSE_AUTH, "credential revoked")
                        };
                        let _ = sink.send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(reason),
                        }))).await;
                        return;
                    }
                    next = outbox.recv() => match next {
                        Some(frame) => {
                            if sink.send(Message::Text(serde_json::to_string(&frame).unwrap_or_default().into())).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                }
            }
        })
    };

    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = inbound.next() => f,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let v: Value = match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let _ = out.send(error_frame("frames must be JSON objects")).await;
                continue;
            }
        };
        match v["type"].as_str() {
            Some("clear") => {
                let _ = jobs.send(Job::Clear).await;
            }
            Some("signal") => {
                let reply = signal(&app, &caller, &v).await;
                let _ = out.send(reply).await;
            }
            Some("auth") => {}
            _ => {
                let _ = jobs.send(Job::Turn(v)).await;
            }
        }
    }
    drop(jobs);
    turns.abort();
    drop(out);
    let _ = writer.await;
    drop(slot);
}

fn error_frame(message: impl Into<String>) -> Value {
    json!({"type": "error", "data": message.into()})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnFrame {
    message: String,
    #[serde(default)]
    attachments: Option<Vec<Value>>,
    agent_name: Option<String>,
    previous_response_id: Option<String>,
    #[serde(rename = "type")]
    _kind: Option<String>,
}

/// One turn at a time: a second message waits for the first to end.
async fn run_turns(
    app: AppState,
    caller: Principal,
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Value>,
) {
    let mut session: Option<String> = None;
    while let Some(job) = jobs.recv().await {
        let frame = match job {
            Job::Clear => {
                session = None;
                continue;
            }
            Job::Turn(frame) => frame,
        };
        let turn: TurnFrame = match serde_json::from_value(frame) {
            Ok(t) => t,
            Err(e) => {
                let _ = out.send(error_frame(format!("invalid message: {e}"))).await;
                continue;
            }
        };
        let files = match super::attachments::check(turn.attachments.as_deref().unwrap_or_default())
        {
            Ok(f) => f,
            Err(e) => {
                let _ = out.send(error_frame(e.to_string())).await;
                continue;
            }
        };
        if let Some(prev) = &turn.previous_response_id {
            match session_of_run(&app, &caller, prev).await {
                Ok(s) => session = Some(s),
                Err(e) => {
                    let _ = out.send(error_frame(e.to_string())).await;
                    continue;
                }
            }
        }
        let request_id = RequestId(agentd_core::new_id("req"));
        let input = TurnInput {
            message: turn.message,
            attachments: files,
            agent_name: turn.agent_name,
            session: session.clone(),
        };
        let started = match start_turn(&app, &caller, &request_id, input).await {
            Ok(t) => t,
            Err(e) => {
                let _ = out.send(error_frame(e.to_string())).await;
                continue;
            }
        };
        session = Some(started.session_id.clone());
        let mut events = Box::pin(turn_events(app.clone(), &caller, started));
        while let Some(event) = events.next().await {
            if out.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// `{"type": "signal", run_id, action, request_id?, payload?}`.
async fn signal(app: &AppState, caller: &Principal, v: &Value) -> Value {
    if let Err(e) = caller.require(Scope::SignalsWrite) {
        return error_frame(e.to_string());
    }
    let Some(run_id) = v["run_id"].as_str() else {
        return error_frame("a signal needs `run_id`");
    };
    let action: SignalAction = match serde_json::from_value(v["action"].clone()) {
        Ok(a) => a,
        Err(_) => return error_frame("a signal's `action` is approve, reject or submit_input"),
    };
    let outcome = app
        .store()
        .signal_run(SignalRun {
            tenant_id: caller.tenant.clone(),
            run_id: run_id.to_owned(),
            action,
            request_id: v["request_id"].as_str().map(str::to_owned),
            payload: if v["payload"].is_object() {
                v["payload"].clone()
            } else {
                json!({})
            },
            audit: caller.audit(
                AuditAction::SignalReceived,
                AuditOutcome::Success,
                json!({}),
            ),
            idempotency: None,
            http_request_id: agentd_core::new_id("req"),
        })
        .await;
    match outcome {
        Ok(SignalOutcome::Applied(receipt)) => json!({"type": "signal_result", "data": receipt}),
        Ok(SignalOutcome::NotFound) => error_frame("run not found"),
        Ok(SignalOutcome::NotAwaiting(s)) => {
            error_frame(format!("run is {}, not awaiting_input", s.as_str()))
        }
        Ok(SignalOutcome::Refused(r)) => error_frame(r.to_string()),
        Ok(SignalOutcome::Replayed { body, .. }) => json!({"type": "signal_result", "data": body}),
        Err(e) => error_frame(e.to_string()),
    }
}

//! The route table. Each submodule holds the handlers of one resource.

pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod chat;
pub(crate) mod health;
pub(crate) mod keys;
pub(crate) mod metrics;
pub(crate) mod runs;
pub mod sandboxes;
pub(crate) mod sessions;
pub(crate) mod signals;
pub(crate) mod streams;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post};

use agentd_core::{Run, Session};

use crate::auth::Principal;
use crate::error::{ApiError, Resource};
use crate::extract::DEFAULT_BODY_LIMIT;
use crate::{AppState, cors, openapi, request_id};

pub fn router(state: AppState) -> Router {
    let cors_policies = Arc::new(state.config().cors.clone());
    let v1 = Router::new()
        .route("/agents", get(agents::list))
        .route("/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/sessions/{id}/messages", get(sessions::messages))
        .route("/sessions/{id}/runs", post(runs::create_on_session))
        .route("/runs", post(runs::create).get(runs::list))
        .route("/runs/{id}", get(runs::get))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/signal", post(signals::signal))
        .route("/runs/{id}/events", get(streams::events_page))
        .route("/runs/{id}/events/stream", get(streams::events_stream))
        .route("/runs/{id}/stream", get(streams::run_updates))
        .route("/api-keys", post(keys::create).get(keys::list))
        .route("/api-keys/{key_id}", delete(keys::revoke))
        .route("/api-keys/{key_id}/rotate", post(keys::rotate))
        .route("/audit", get(audit::list))
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/sandboxes/{id}/result", get(sandboxes::result))
        .route("/sandboxes/{id}/audit", get(sandboxes::audit))
        .route("/sandboxes/{id}/stream", get(sandboxes::stream));
    Router::new()
        .route("/health", get(health::health))
        .route("/health/ready", get(health::ready))
        .route("/api/info", get(health::info))
        .route("/api/chat", post(chat::chat))
        .route("/ws/chat", get(chat::ws::ws_chat))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::metrics))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        // Inside the request-id layer, which renders its 403 envelope.
        .layer(middleware::from_fn_with_state(cors_policies, cors::layer))
        .layer(middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// The caller's run, or the 404 a missing and another tenant's run share.
pub(crate) async fn find_run(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Run, ApiError> {
    state
        .store()
        .get_run(&principal.tenant, id)
        .await?
        .ok_or(ApiError::NotFound(Resource::Run))
}

/// The caller's session, or 404.
pub(crate) async fn find_session(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Session, ApiError> {
    state
        .store()
        .get_session(&principal.tenant, id)
        .await?
        .ok_or(ApiError::NotFound(Resource::Session))
}

async fn not_found() -> ApiError {
    ApiError::NotFound(Resource::Route)
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

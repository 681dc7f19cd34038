//! The route table. Each submodule holds the handlers of one resource.

pub(crate) mod agents;
pub(crate) mod health;
pub(crate) mod runs;
pub(crate) mod sessions;
pub(crate) mod streams;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

use crate::error::{ApiError, Resource};
use crate::extract::DEFAULT_BODY_LIMIT;
use crate::{AppState, openapi, request_id};

pub fn router(state: AppState) -> Router {
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
        .route("/runs/{id}/signal", post(runs::signal))
        .route("/runs/{id}/events", get(streams::events_page))
        .route("/runs/{id}/events/stream", get(streams::events_stream))
        .route("/runs/{id}/stream", get(streams::run_updates));
    Router::new()
        .route("/health", get(health::health))
        .route("/health/ready", get(health::ready))
        .route("/api/info", get(health::info))
        .route("/openapi.json", get(openapi::document))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(middleware::from_fn(request_id::layer))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound(Resource::Route)
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

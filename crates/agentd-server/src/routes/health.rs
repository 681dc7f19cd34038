//! Unauthenticated probes: liveness, readiness, and seed 002's `/api/info`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

/// Liveness and what this process runs on.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is up", body = Object)))]
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let sandbox = match state.sandboxes() {
        Some(api) => serde_json::to_value(api.service.health()).unwrap_or_default(),
        None => json!({"backend": "none", "healthy": false}),
    };
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "store": state.config().store_kind,
        "sandbox": sandbox,
    }))
}

/// Ready to serve: the store answers and shutdown has not begun.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Object), (status = 503, body = Object)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = state.store().ping().await;
    let draining = state.is_draining();
    let ok = store.is_ok() && !draining;
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {
            "store": if store.is_ok() { "ok" } else { "unavailable" },
            "draining": draining,
        },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Seed 002's agent metadata.
#[utoipa::path(get, path = "/api/info", tag = "health",
    responses((status = 200, body = Object)))]
pub async fn info(State(state): State<AppState>) -> Json<Value> {
    let agent = state.catalog().default_agent().map(|a| a.name.clone());
    Json(json!({
        "name": "agentd",
        "agent": agent,
        "auth_required": !state.config().chat.public,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

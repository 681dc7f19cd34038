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
        Some(api) => serde_json::to_value(api.service.health().await).unwrap_or_default(),
        None => json!({"backend": "none", "healthy": false}),
    };
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "store": state.config().store_kind,
        "sandbox": sandbox,
    }))
}

/// Ready to serve: the store answers, shutdown has not begun, and every
/// local model is loaded (`checks.models` says how far a load is, or why
/// it failed).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Object), (status = 503, body = Object)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = state.store().ping().await;
    let draining = state.is_draining();
    let (models_ready, models) = local_models(&state);
    let ok = store.is_ok() && !draining && models_ready;
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {
            "store": if store.is_ok() { "ok" } else { "unavailable" },
            "draining": draining,
            "models": models,
        },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Each local model's load state, and whether all are loaded.
fn local_models(state: &AppState) -> (bool, Value) {
    use agentd_engine::models::local::LoadState;
    let mut all_ready = true;
    let mut out = serde_json::Map::new();
    for (name, s) in state.engine().local_models().states() {
        let v = match s {
            LoadState::Ready(_) => json!({"state": "ready"}),
            LoadState::Loading {
                phase,
                downloaded,
                total,
            } => {
                all_ready = false;
                json!({"state": phase, "downloaded_bytes": downloaded, "total_bytes": total})
            }
            LoadState::Failed(error) => {
                all_ready = false;
                json!({"state": "failed", "error": error})
            }
        };
        out.insert(name, v);
    }
    (all_ready, Value::Object(out))
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

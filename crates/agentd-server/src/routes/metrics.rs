//! `GET /metrics`: Prometheus text for the operator (admin token only).

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    security(("bearer" = [])))]
pub async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    principal.require_admin()?;
    let store = state.store().metrics();
    let (claimed, recovered) = state.engine().claims();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "agentd_store_transactions_total",
        "counter",
        "Committed write transactions (group commits).",
        store.transactions,
    );
    metric(
        "agentd_store_jobs_total",
        "counter",
        "Write operations committed; divide by transactions for the mean batch.",
        store.jobs,
    );
    metric(
        "agentd_store_failed_batches_total",
        "counter",
        "Batches that failed and were retried one job at a time.",
        store.failed_batches,
    );
    metric(
        "agentd_events_appended_total",
        "counter",
        "Run events appended.",
        store.events,
    );
    metric(
        "agentd_runs_claimed_total",
        "counter",
        "Runs claimed by this process.",
        claimed,
    );
    metric(
        "agentd_runs_recovered_total",
        "counter",
        "Claims that recovered a run from a lapsed lease.",
        recovered,
    );
    metric(
        "agentd_runs_active",
        "gauge",
        "Runs this process drives now.",
        state.engine().active_runs() as u64,
    );
    metric(
        "agentd_watched_runs",
        "gauge",
        "Runs with at least one open stream.",
        state.store().hub().watched_runs() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP agentd_info Build information.\n# TYPE agentd_info gauge\nagentd_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

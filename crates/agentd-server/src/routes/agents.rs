use axum::Json;
use axum::extract::State;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::views::{AgentView, List};

/// The agents configured in `agentd.toml`; the first is the default. Any
/// valid credential may list them: they are the operator's configuration,
/// not a tenant's data.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, body = List<AgentView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Principal,
) -> Result<Json<List<AgentView>>, ApiError> {
    let default = state.catalog().default_agent().map(|a| a.name.clone());
    let data = state
        .catalog()
        .iter()
        .map(|a| AgentView {
            name: a.name.clone(),
            model: a.model.model.clone(),
            provider: serde_json::to_value(a.model.provider)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            tools: a.tools.clone(),
            default: Some(&a.name) == default.as_ref(),
        })
        .collect();
    Ok(Json(List {
        data,
        next_cursor: None,
    }))
}

//! `POST /v1/runs/{id}/signal`: a human answers a paused run (DESIGN §3
//! "Signals"). The store checks the run is awaiting input, applies the
//! decisions and resumes the run once nothing is pending, in one
//! transaction with the audit entry and the idempotency key.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use agentd_core::signal::{SignalAction, SignalRefused};
use agentd_core::{AuditAction, AuditOutcome, Scope};
use agentd_store::{IdempotencyKey, SignalOutcome, SignalReceipt, SignalRun};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Resource};
use crate::extract::{parse_json, read_body};
use crate::idempotency::{fingerprint, validate_key};
use crate::request_id::RequestId;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// `approve`, `reject` or `submit_input`.
    pub action: SignalAction,
    /// Picks one pending request; absent means every one the action answers.
    pub request_id: Option<String>,
    /// `reject`: `{"reason": "..."}`; `submit_input`: `{"input": <any JSON>}`.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
}

/// Answers a run that is `awaiting_input`; any other state is a 409.
#[utoipa::path(post, path = "/v1/runs/{id}/signal", tag = "runs", request_body = SignalRequest,
    params(("idempotency-key" = Option<String>, Header)),
    responses((status = 200, body = SignalReceipt),
        (status = 409, description = "RUN_STATE_CONFLICT: not awaiting input, or no such pending request", body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn signal(
    State(state): State<AppState>,
    principal: Principal,
    axum::Extension(request_id): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    principal.require(Scope::SignalsWrite)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::InvalidRequest("invalid idempotency-key header".into()))?;
            validate_key(key)?;
            Some(key.to_owned())
        }
    };
    let bytes = read_body(req, &state).await?;
    let raw: Value = parse_json(&bytes)?;
    let body: SignalRequest = parse_json(&bytes)?;
    let payload = body.payload.unwrap_or_else(|| json!({}));
    if !payload.is_object() {
        return Err(ApiError::InvalidRequest(
            "invalid field `payload`: expected an object".into(),
        ));
    }
    let outcome = state
        .store()
        .signal_run(SignalRun {
            tenant_id: principal.tenant.clone(),
            run_id: id.clone(),
            action: body.action,
            request_id: body.request_id,
            payload,
            audit: principal.audit(
                AuditAction::SignalReceived,
                AuditOutcome::Success,
                json!({}),
            ),
            idempotency: key.map(|key| IdempotencyKey {
                route: format!("POST /v1/runs/{id}/signal"),
                key,
                fingerprint: fingerprint(&raw),
            }),
            http_request_id: request_id.0.clone(),
        })
        .await?;
    match outcome {
        SignalOutcome::Applied(receipt) => Ok(Json(receipt).into_response()),
        SignalOutcome::Replayed { status, mut body } => {
            body["replayed"] = json!(true);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Ok((status, Json(body)).into_response())
        }
        SignalOutcome::NotFound => Err(ApiError::NotFound(Resource::Run)),
        SignalOutcome::NotAwaiting(status) => Err(ApiError::RunStateConflict(format!(
            "run is {}, not awaiting_input",
            status.as_str()
        ))),
        SignalOutcome::Refused(SignalRefused::MissingInput) => Err(ApiError::InvalidRequest(
            "invalid field `payload.input`: submit_input needs it".into(),
        )),
        SignalOutcome::Refused(refused) => Err(ApiError::RunStateConflict(refused.to_string())),
    }
}

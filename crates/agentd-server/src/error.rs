//! Every error a client can see, mapped to HTTP in one place.
//!
//! Handlers return [`ApiError`]; its response carries an [`ErrorEnvelope`]
//! extension and no body. The request-id middleware ([`crate::request_id`])
//! renders the envelope with the request's id, so every error body has one.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use agentd_store::StoreError;

/// The kinds of object a 404 can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Run,
    Session,
    Key,
    Route,
    Sandbox,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a wrong type, an unknown field, a bad parameter.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("an idempotency-key header is required")]
    IdempotencyKeyRequired,
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    #[error("missing Authorization header")]
    AuthMissing,
    /// Unknown, revoked and expired credentials alike.
    #[error("Invalid API key")]
    AuthInvalid,
    #[error("this credential lacks the {0} scope")]
    ScopeMissing(String),
    /// A tenant key asking for more than it holds: keys for another tenant,
    /// scopes beyond its own, or power over a stronger key.
    #[error("{0}")]
    GrantExceeded(String),
    #[error("too many failed authentication attempts; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A browser origin outside the surface's CORS list ([`crate::cors`]).
    #[error("this origin is not allowed to call this API")]
    OriginNotAllowed,
    /// Missing, or another tenant's: the two are indistinguishable.
    #[error("{} not found", resource_name(*.0))]
    NotFound(Resource),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("session already exists")]
    SessionExists,
    #[error("idempotency key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("{0}")]
    RunStateConflict(String),
    #[error("the key is revoked")]
    KeyRevoked,
    /// A chat `state` this server did not sign, or altered.
    #[error("invalid chat state: pass back the state of a previous answer unmodified")]
    ChatStateInvalid,
    /// A chat turn's run failed (non-streaming chat answers with it).
    #[error("{0}")]
    TurnFailed(String),
    #[error("{0}")]
    TurnLimited(String),
    #[error("the run was cancelled")]
    TurnCancelled,
    #[error("{0}")]
    AttachmentTooLarge(String),
    #[error("request body is too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    /// The store is unreachable or the server is shutting down.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
    /// The database cannot be reached (PostgreSQL down or restarting): the
    /// request changed nothing and may be retried. The detail is logged only.
    #[error("the store is unavailable; retry shortly")]
    StoreUnavailable(String),
    /// This host cannot isolate code; nothing runs unconfined.
    #[error("{0}")]
    SandboxUnavailable(String),
    /// Too many sandboxes are running in this process.
    #[error("{0}")]
    SandboxBusy(String),
    #[error("the sandbox is still running; its result is not ready")]
    SandboxRunning,
}

fn resource_name(r: Resource) -> &'static str {
    match r {
        Resource::Run => "run",
        Resource::Session => "session",
        Resource::Key => "API key",
        Resource::Route => "route",
        Resource::Sandbox => "sandbox",
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::IdempotencyKeyRequired
            | ApiError::UnknownAgent(_) => StatusCode::BAD_REQUEST,
            ApiError::AuthMissing | ApiError::AuthInvalid | ApiError::ChatStateInvalid => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::TurnFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::TurnLimited(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TurnCancelled => StatusCode::CONFLICT,
            ApiError::ScopeMissing(_) | ApiError::GrantExceeded(_) | ApiError::OriginNotAllowed => {
                StatusCode::FORBIDDEN
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::SessionExists
            | ApiError::IdempotencyKeyReused
            | ApiError::RunStateConflict(_)
            | ApiError::KeyRevoked => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) | ApiError::AttachmentTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::SandboxUnavailable(_) | ApiError::SandboxBusy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::SandboxRunning => StatusCode::CONFLICT,
        }
    }

    pub fn reason_code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "INVALID_REQUEST",
            ApiError::IdempotencyKeyRequired => "IDEMPOTENCY_KEY_REQUIRED",
            ApiError::UnknownAgent(_) => "AGENT_NOT_FOUND",
            ApiError::AuthMissing => "AUTH_MISSING_HEADER",
            ApiError::AuthInvalid => "AUTH_KEY_INVALID",
            ApiError::ScopeMissing(_) | ApiError::GrantExceeded(_) => "AUTH_SCOPE_MISSING",
            ApiError::RateLimited { .. } => "AUTH_RATE_LIMITED",
            ApiError::KeyRevoked => "KEY_REVOKED",
            ApiError::ChatStateInvalid => "CHAT_STATE_INVALID",
            ApiError::TurnFailed(_) => "RUN_FAILED",
            ApiError::TurnLimited(_) => "LIMIT_EXCEEDED",
            ApiError::TurnCancelled => "RUN_CANCELLED",
            ApiError::AttachmentTooLarge(_) => "ATTACHMENT_TOO_LARGE",
            ApiError::NotFound(Resource::Key) => "KEY_NOT_FOUND",
            ApiError::OriginNotAllowed => "ORIGIN_NOT_ALLOWED",
            ApiError::NotFound(Resource::Run) => "RUN_NOT_FOUND",
            ApiError::NotFound(Resource::Session) => "SESSION_NOT_FOUND",
            ApiError::NotFound(Resource::Route) => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::SessionExists => "SESSION_EXISTS",
            ApiError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ApiError::RunStateConflict(_) => "RUN_STATE_CONFLICT",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::Unavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
            ApiError::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            ApiError::NotFound(Resource::Sandbox) => "SANDBOX_NOT_FOUND",
            ApiError::SandboxUnavailable(_) => "SANDBOX_UNAVAILABLE",
            ApiError::SandboxBusy(_) => "SANDBOX_BUSY",
            ApiError::SandboxRunning => "SANDBOX_RUNNING",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SessionExists => ApiError::SessionExists,
            StoreError::SessionNotFound => ApiError::NotFound(Resource::Session),
            StoreError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            StoreError::IllegalTransition(t) => ApiError::RunStateConflict(t.to_string()),
            StoreError::Unavailable(e) => ApiError::StoreUnavailable(e.to_string()),
            StoreError::Sqlite(e) => ApiError::StoreUnavailable(e.to_string()),
            StoreError::Closed => ApiError::Unavailable("store is closed".into()),
            StoreError::LeaseLost | StoreError::Corrupt(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// The error body of DESIGN §3.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: String,
    pub reason_code: &'static str,
    /// Filled in by the request-id middleware.
    pub request_id: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail)
        | ApiError::Unavailable(detail)
        | ApiError::StoreUnavailable(detail) = &self
        {
            tracing::error!(reason = self.reason_code(), %detail, "request failed");
        }
        let mut response = self.status().into_response();
        if let ApiError::RateLimited { retry_after_secs } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response.extensions_mut().insert(ErrorEnvelope {
            error: self.to_string(),
            reason_code: self.reason_code(),
            request_id: String::new(),
        });
        response
    }
}

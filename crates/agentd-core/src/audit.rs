//! The audit trail's vocabulary (DESIGN §2): who did what, to which object,
//! with what outcome. Records are append-only; the store never updates one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::TenantId;
use crate::time::Millis;

/// Every act agentd records. The wire name is the `action` field and the
/// `?action=` filter of `GET /v1/audit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    /// A request with a missing, unknown, revoked or expired credential.
    AuthFailed,
    /// A valid credential without the scope a route needs.
    ScopeDenied,
    RunCreated,
    RunCancelled,
    SignalReceived,
    // Sandbox lifecycle and egress decisions (seed 004).
    SessionCreated,
    SandboxStarted,
    EgressAllowed,
    EgressDenied,
    WorkloadExited,
    ResultCollected,
    SessionTornDown,
}

impl AuditAction {
    pub const ALL: [AuditAction; 15] = [
        AuditAction::KeyCreated,
        AuditAction::KeyRevoked,
        AuditAction::KeyRotated,
        AuditAction::AuthFailed,
        AuditAction::ScopeDenied,
        AuditAction::RunCreated,
        AuditAction::RunCancelled,
        AuditAction::SignalReceived,
        AuditAction::SessionCreated,
        AuditAction::SandboxStarted,
        AuditAction::EgressAllowed,
        AuditAction::EgressDenied,
        AuditAction::WorkloadExited,
        AuditAction::ResultCollected,
        AuditAction::SessionTornDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::KeyCreated => "key_created",
            AuditAction::KeyRevoked => "key_revoked",
            AuditAction::KeyRotated => "key_rotated",
            AuditAction::AuthFailed => "auth_failed",
            AuditAction::ScopeDenied => "scope_denied",
            AuditAction::RunCreated => "run_created",
            AuditAction::RunCancelled => "run_cancelled",
            AuditAction::SignalReceived => "signal_received",
            AuditAction::SessionCreated => "session_created",
            AuditAction::SandboxStarted => "sandbox_started",
            AuditAction::EgressAllowed => "egress_allowed",
            AuditAction::EgressDenied => "egress_denied",
            AuditAction::WorkloadExited => "workload_exited",
            AuditAction::ResultCollected => "result_collected",
            AuditAction::SessionTornDown => "session_torn_down",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown audit action {0:?}")]
pub struct UnknownAction(pub String);

impl FromStr for AuditAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    /// Refused by policy: a bad credential, a missing scope, denied egress.
    Denied,
    Failure,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failure => "failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(AuditOutcome::Success),
            "denied" => Some(AuditOutcome::Denied),
            "failure" => Some(AuditOutcome::Failure),
            _ => None,
        }
    }
}

/// One entry of the trail.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    /// `aud_<ulid>`: sorts by time, the list cursor.
    pub id: String,
    pub tenant_id: TenantId,
    pub created_at: Millis,
    /// The credential that acted: a key id, `admin`, `static:<n>`,
    /// `jwt:<subject>`, or `anonymous` for a request without one.
    pub actor: String,
    /// Who the client says is behind the request (seed 000's `actor_id`);
    /// recorded as claimed, never trusted.
    pub actor_id: Option<String>,
    pub action: AuditAction,
    /// The kind and id of the object acted on (`run`, `run_…`).
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: AuditOutcome,
    /// The client's address, as the trusted-proxy rules resolve it.
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    /// Anything else worth keeping (the missing scope, a key's name).
    pub details: Value,
}

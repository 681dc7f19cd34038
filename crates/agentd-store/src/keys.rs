//! API keys and the audit trail as the store keeps them (DESIGN §2).

use agentd_core::time::Millis;
use agentd_core::{AuditAction, AuditOutcome, Scopes, TenantId};

/// SHA-256 of a key's secret: all the store ever holds of it.
pub type SecretDigest = [u8; 32];

/// An API key. `id` is globally unique (the credential `key_id:secret` names
/// it, and the tenant comes from the key, not the request).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub scopes: Scopes,
    pub secret: SecretDigest,
    /// The secret a rotation replaced, still accepted until its deadline.
    pub previous: Option<PreviousSecret>,
    /// The credential that minted it (`admin`, a key id, …).
    pub created_by: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub rotated_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviousSecret {
    pub digest: SecretDigest,
    pub valid_until: Millis,
}

/// A new secret for an existing key.
#[derive(Clone, Debug)]
pub struct KeyRotation {
    pub tenant_id: TenantId,
    pub id: String,
    pub secret: SecretDigest,
    /// Until when the old secret keeps working; `None`: it stops now.
    pub previous_valid_until: Option<Millis>,
    pub now: Millis,
}

/// What rotating or revoking found.
#[derive(Clone, Debug)]
pub enum KeyChange {
    Changed(Box<ApiKey>),
    /// No such key in this tenant.
    NotFound,
    /// Rotation refused: a revoked key stays revoked.
    Revoked,
}

/// `GET /v1/audit`'s filters; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    pub outcome: Option<AuditOutcome>,
    pub target_id: Option<String>,
}

//! Who is calling, and what they may do.
//!
//! Every authenticated route takes a [`Principal`]; handlers call
//! [`Principal::require`] with the scope they need. Today the only credential
//! is the operator's admin token (all scopes, any tenant by `x-agentd-tenant`);
//! per-tenant API keys resolve to the same `Principal` shape.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use agentd_core::TenantId;

use crate::AppState;
use crate::error::ApiError;

/// A permission a credential may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    RunsRead,
    RunsWrite,
    RunsReadInputs,
    SessionsRead,
    SessionsWrite,
    SignalsWrite,
    AgentsRead,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RunsRead => "runs:read",
            Scope::RunsWrite => "runs:write",
            Scope::RunsReadInputs => "runs:read_inputs",
            Scope::SessionsRead => "sessions:read",
            Scope::SessionsWrite => "sessions:write",
            Scope::SignalsWrite => "signals:write",
            Scope::AgentsRead => "agents:read",
        }
    }
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant: TenantId,
    /// `None` for the admin token.
    pub key_id: Option<String>,
    admin: bool,
}

impl Principal {
    /// Operator-only routes (`/metrics`): the admin token, never a tenant key.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::ScopeMissing("admin"))
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::ScopeMissing(scope.as_str()))
        }
    }
}

/// The admin token, kept only as its SHA-256 so comparisons take the same
/// time whatever the candidate's length or content.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    fn matches(&self, candidate: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        d.ct_eq(&self.digest).into()
    }
}

/// The tenant an admin request acts on.
const TENANT_HEADER: &str = "x-agentd-tenant";

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::AuthMissing)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::AuthInvalid)?;
        if !state.admin_token().matches(token) {
            return Err(ApiError::AuthInvalid);
        }
        let tenant = match parts.headers.get(TENANT_HEADER) {
            None => TenantId::default_tenant(),
            Some(v) => v.to_str().ok().and_then(TenantId::parse).ok_or_else(|| {
                ApiError::InvalidRequest(format!("invalid {TENANT_HEADER} header"))
            })?,
        };
        Ok(Principal {
            tenant,
            key_id: None,
            admin: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_matches_only_itself() {
        let t = AdminToken::new("s3cret");
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cret "));
        assert!(!t.matches(""));
    }
}

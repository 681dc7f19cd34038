//! Who is calling, and what they may do (DESIGN §2, §3).
//!
//! Every authenticated route takes a [`Principal`] and calls
//! [`Principal::require`] with the scope it needs. A principal comes from
//! one of four credentials, tried in this order on `Authorization: Bearer`:
//! the operator's admin token (every scope, any tenant by
//! `x-agentd-tenant`), an API key `key_id:secret` (its tenant and scopes), a
//! JWT when configured, and the static chat keys of `AGENTD_API_KEYS`.
//! Failures are counted per client address and audited.

mod client;
pub mod keys;
mod limiter;
mod revocation;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use agentd_core::net::InvalidBlock;
use agentd_core::time::now_millis;
use agentd_core::{AuditAction, AuditOutcome, AuditRecord, TenantId, new_id};
pub use agentd_core::{Scope, Scopes};
use agentd_store::{SecretDigest, Store};
pub use client::TrustedProxies;
pub use keys::StaticKeys;
use keys::{KeyCheck, check_key, split_credential};
pub use limiter::FailureLimit;
pub(crate) use limiter::FailureLimiter;
pub(crate) use revocation::{KeyStreams, StreamSlot, follow_remote_changes};

use crate::AppState;
use crate::error::ApiError;
use crate::request_id::RequestId;

/// The operator's settings for authentication.
#[derive(Clone)]
pub struct AuthConfig {
    pub admin_token: AdminToken,
    pub static_keys: StaticKeys,
    pub trusted_proxies: TrustedProxies,
    pub failure_limit: FailureLimit,
}

/// What a request authenticated with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Admin,
    /// `secret` is the digest that matched: after a rotation, streams opened
    /// with the old secret close when its grace ends, the new ones stay.
    Key {
        id: String,
        secret: SecretDigest,
    },
    /// The n-th key of `AGENTD_API_KEYS`.
    Static {
        index: usize,
    },
    Jwt {
        subject: Option<String>,
    },
    /// No credential, on the public chat surface.
    Anonymous,
}

/// The authenticated caller of one request.
#[derive(Clone)]
pub struct Principal {
    pub tenant: TenantId,
    pub credential: Credential,
    scopes: Scopes,
    /// For the audit trail.
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<String>,
    /// Where scope denials are recorded.
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("tenant", &self.tenant)
            .field("credential", &self.credential)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.credential == Credential::Admin
    }

    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    pub fn can(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// The credential as the audit trail names it.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::Admin => "admin".to_owned(),
            Credential::Key { id, .. } => id.clone(),
            Credential::Static { index } => format!("static:{index}"),
            Credential::Jwt { subject } => {
                format!("jwt:{}", subject.as_deref().unwrap_or("-"))
            }
            Credential::Anonymous => "anonymous".to_owned(),
        }
    }

    /// 403 `AUTH_SCOPE_MISSING` (and an audit entry) without `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.can(scope) {
            return Ok(());
        }
        let record = self.audit(
            AuditAction::ScopeDenied,
            AuditOutcome::Denied,
            json!({"scope": scope.as_str()}),
        );
        spawn_audit(self.store.clone(), record);
        Err(ApiError::ScopeMissing(scope.as_str().to_owned()))
    }

    /// Operator-only routes (`/metrics`): the admin token, never a tenant key.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            return Ok(());
        }
        let record = self.audit(
            AuditAction::ScopeDenied,
            AuditOutcome::Denied,
            json!({"scope": "admin"}),
        );
        spawn_audit(self.store.clone(), record);
        Err(ApiError::ScopeMissing("admin".to_owned()))
    }

    /// An audit entry for an act of this caller, in its tenant.
    pub fn audit(&self, action: AuditAction, outcome: AuditOutcome, details: Value) -> AuditRecord {
        AuditRecord {
            id: new_id("aud"),
            tenant_id: self.tenant.clone(),
            created_at: now_millis(),
            actor: self.actor(),
            actor_id: None,
            action,
            target_type: None,
            target_id: None,
            outcome,
            client_ip: self.client_ip.map(|ip| ip.to_string()),
            request_id: self.request_id.clone(),
            details,
        }
    }
}

/// Records without holding up the response; a failure is logged, not lost
/// silently.
pub(crate) fn spawn_audit(store: Arc<dyn Store>, record: AuditRecord) {
    tokio::spawn(async move {
        if let Err(e) = store.record_audit(vec![record]).await {
            tracing::warn!(error = %e, "could not record an audit entry");
        }
    });
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

/// Who a bearer token is, before the request's context is attached.
struct Identity {
    tenant: TenantId,
    credential: Credential,
    scopes: Scopes,
}

/// Why authentication failed, with what the audit entry needs.
struct Refusal {
    error: ApiError,
    /// The tenant whose key was tried, when the key id exists.
    tenant: Option<TenantId>,
    key_id: Option<String>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal {
            error,
            tenant: None,
            key_id: None,
        }
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let header = headers.get(AUTHORIZATION).ok_or(ApiError::AuthMissing)?;
    header
        .to_str()
        .ok()
        .and_then(|h| {
            let (scheme, rest) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::AuthInvalid)
}

/// Resolves a bearer token to an identity.
async fn identify(state: &AppState, token: &str, headers: &HeaderMap) -> Result<Identity, Refusal> {
    let auth = &state.config().auth;
    if auth.admin_token.matches(token) {
        let tenant = match headers.get(TENANT_HEADER) {
            None => TenantId::default_tenant(),
            Some(v) => v.to_str().ok().and_then(TenantId::parse).ok_or_else(|| {
                ApiError::InvalidRequest(format!("invalid {TENANT_HEADER} header"))
            })?,
        };
        return Ok(Identity {
            tenant,
            credential: Credential::Admin,
            scopes: Scopes::all(),
        });
    }
    if let Some((key_id, secret)) = split_credential(token) {
        return match check_key(state.store().as_ref(), key_id, secret, now_millis())
            .await
            .map_err(ApiError::from)?
        {
            KeyCheck::Valid { key, secret } => Ok(Identity {
                tenant: key.tenant_id,
                credential: Credential::Key { id: key.id, secret },
                scopes: key.scopes,
            }),
            KeyCheck::Invalid { tenant } => Err(Refusal {
                error: ApiError::AuthInvalid,
                tenant,
                key_id: Some(key_id.to_owned()),
            }),
        };
    }
    if let Some(verifier) = &state.config().jwt
        && crate::jwt::looks_like_jwt(token)
    {
        return match verifier.verify_or_refresh(token).await {
            Ok(id) => Ok(Identity {
                tenant: id.tenant,
                credential: Credential::Jwt {
                    subject: id.subject,
                },
                scopes: id.scopes,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "JWT refused");
                Err(ApiError::AuthInvalid.into())
            }
        };
    }
    if let Some(index) = auth.static_keys.find(token) {
        return Ok(Identity {
            tenant: TenantId::default_tenant(),
            credential: Credential::Static { index },
            scopes: [Scope::Chat].into_iter().collect(),
        });
    }
    Err(ApiError::AuthInvalid.into())
}

/// Where a credential came from: what rate limiting and the audit trail need.
#[derive(Clone, Debug)]
pub(crate) struct AuthContext {
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<String>,
    /// For `x-agentd-tenant` (admin token only).
    pub headers: HeaderMap,
    pub path: String,
}

impl AuthContext {
    pub fn of(parts: &Parts, state: &AppState) -> AuthContext {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        AuthContext {
            client_ip: state
                .config()
                .auth
                .trusted_proxies
                .client_ip(peer, &parts.headers),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            headers: parts.headers.clone(),
            path: parts.uri.path().to_owned(),
        }
    }
}

/// Turns a presented credential (or the lack of one) into a principal:
/// rate limited per address, failures counted and audited.
pub(crate) async fn authenticate(
    state: &AppState,
    ctx: &AuthContext,
    token: Result<&str, ApiError>,
) -> Result<Principal, ApiError> {
    let limiter = state.failure_limiter();
    if let Some(ip) = ctx.client_ip
        && let Err(retry) = limiter.check(ip, Instant::now())
    {
        return Err(ApiError::RateLimited {
            retry_after_secs: retry.as_secs().max(1),
        });
    }
    let identity = match token {
        Ok(token) => identify(state, token, &ctx.headers).await,
        Err(e) => Err(e.into()),
    };
    match identity {
        Ok(id) => Ok(Principal {
            tenant: id.tenant,
            credential: id.credential,
            scopes: id.scopes,
            client_ip: ctx.client_ip,
            request_id: ctx.request_id.clone(),
            store: state.store().clone(),
        }),
        Err(refusal) => {
            if matches!(refusal.error, ApiError::AuthMissing | ApiError::AuthInvalid) {
                if let Some(ip) = ctx.client_ip {
                    limiter.record_failure(ip, Instant::now());
                }
                let record = AuditRecord {
                    id: new_id("aud"),
                    tenant_id: refusal.tenant.unwrap_or_else(TenantId::default_tenant),
                    created_at: now_millis(),
                    actor: refusal.key_id.unwrap_or_else(|| "anonymous".to_owned()),
                    actor_id: None,
                    action: AuditAction::AuthFailed,
                    target_type: None,
                    target_id: None,
                    outcome: AuditOutcome::Denied,
                    client_ip: ctx.client_ip.map(|ip| ip.to_string()),
                    request_id: ctx.request_id.clone(),
                    details: json!({
                        "reason_code": refusal.error.reason_code(),
                        "path": ctx.path,
                    }),
                };
                spawn_audit(state.store().clone(), record);
            }
            Err(refusal.error)
        }
    }
}

impl Principal {
    /// A caller of the public chat surface (`chat.public = true`, no
    /// credential): the default tenant, the `chat` scope only.
    pub(crate) fn anonymous_chat(state: &AppState, parts: &Parts) -> Principal {
        Self::anonymous_chat_with(state, &AuthContext::of(parts, state))
    }

    pub(crate) fn anonymous_chat_with(state: &AppState, ctx: &AuthContext) -> Principal {
        let ctx = ctx.clone();
        Principal {
            tenant: TenantId::default_tenant(),
            credential: Credential::Anonymous,
            scopes: [Scope::Chat].into_iter().collect(),
            client_ip: ctx.client_ip,
            request_id: ctx.request_id,
            store: state.store().clone(),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ctx = AuthContext::of(parts, state);
        authenticate(state, &ctx, bearer(&parts.headers)).await
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

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Err(ApiError::AuthMissing)));
        h.insert(AUTHORIZATION, "BEARER abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc");
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(matches!(bearer(&h), Err(ApiError::AuthInvalid)));
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(matches!(bearer(&h), Err(ApiError::AuthInvalid)));
    }
}

//! Optional user JWTs (DESIGN §3 "Auth"): tokens an operator's identity
//! provider mints, verified here and mapped to a tenant and scopes.
//!
//! The algorithm is pinned in the configuration, never taken from the token:
//! a token is refused unless its header names exactly that algorithm, which
//! shuts out `alg: none` and the classic key confusion (an HS256 token
//! "signed" with the RS256 public key). `exp`, `aud` and `iss` are required.
//! HS256 verifies with a shared secret read from a named variable; RS256 with
//! public keys from a JWKS file or URL ([`jwks`]), picked by the token's `kid`.
//!
//! This module only verifies; the auth extractor decides where a bearer
//! token is a JWT ([`looks_like_jwt`]) and what a refusal answers.

mod jwks;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use agentd_core::{Scope, Scopes, TenantId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use jwks::{JwksKeys, Timing};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// RFC 7518 §3.2: an HS256 key at least as long as the hash.
const MIN_SECRET_BYTES: usize = 32;

/// The algorithms agentd verifies; the configuration pins one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::RS256 => "RS256",
        }
    }

    fn library(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[auth.jwt]` in `agentd.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// `"HS256"` or `"RS256"`; a token naming any other is refused.
    pub algorithm: JwtAlgorithm,
    /// The exact `iss` tokens must carry.
    pub issuer: String,
    /// A value tokens' `aud` must be or contain.
    pub audience: String,
    /// HS256: the name of the variable holding the shared secret (the secret
    /// itself never sits in the file).
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// RS256: a JWKS document on disk, read at startup.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// RS256: a JWKS URL (https, or http to a loopback host), fetched at
    /// startup and refreshed in the background.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The top-level claim naming the tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The top-level claim holding scopes: a space-separated string (OAuth's
    /// `scope`) or an array of strings.
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
}

fn default_tenant_claim() -> String {
    "tenant".into()
}

fn default_scopes_claim() -> String {
    "scope".into()
}

impl JwtSettings {
    /// Checks the combination of keys, without I/O: each algorithm has
    /// exactly one key source and no stray one, so a half-edited section
    /// fails at startup instead of verifying with something unintended.
    pub fn validate(&self) -> Result<(), JwtConfigError> {
        for (name, value) in [
            ("issuer", &self.issuer),
            ("audience", &self.audience),
            ("tenant_claim", &self.tenant_claim),
            ("scopes_claim", &self.scopes_claim),
        ] {
            if value.trim().is_empty() {
                return Err(JwtConfigError::Empty(name));
            }
        }
        let jwks_sources =
            usize::from(self.jwks_file.is_some()) + usize::from(self.jwks_url.is_some());
        match self.algorithm {
            JwtAlgorithm::HS256 => {
                if jwks_sources > 0 {
                    return Err(JwtConfigError::JwksWithHs256);
                }
                match self.hs256_secret_env.as_deref() {
                    None | Some("") => Err(JwtConfigError::SecretEnvMissing),
                    Some(_) => Ok(()),
                }
            }
            JwtAlgorithm::RS256 => {
                if self.hs256_secret_env.is_some() {
                    return Err(JwtConfigError::SecretWithRs256);
                }
                if jwks_sources != 1 {
                    return Err(JwtConfigError::KeySourceCount);
                }
                Ok(())
            }
        }
    }
}

/// Why `[auth.jwt]` cannot be served; startup stops on it.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("[auth.jwt] {0} must not be empty")]
    Empty(&'static str),
    #[error(
        "[auth.jwt] algorithm HS256 needs hs256_secret_env, the name of the variable holding the secret"
    )]
    SecretEnvMissing,
    #[error("[auth.jwt] HS256 verifies with hs256_secret_env only; remove jwks_file / jwks_url")]
    JwksWithHs256,
    #[error(
        "[auth.jwt] hs256_secret_env is for HS256; RS256 verifies with public keys from jwks_file or jwks_url"
    )]
    SecretWithRs256,
    #[error("[auth.jwt] algorithm RS256 needs exactly one of jwks_file and jwks_url")]
    KeySourceCount,
    #[error("the HS256 secret variable {0} is not set")]
    SecretNotSet(String),
    #[error("the HS256 secret in {0} is shorter than {MIN_SECRET_BYTES} bytes")]
    SecretTooShort(String),
    #[error("invalid jwks_url {url:?}: {reason}")]
    JwksUrl { url: String, reason: &'static str },
    #[error("cannot read the JWKS file {path}: {source}")]
    JwksRead {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot fetch the JWKS from {url}: {reason}")]
    JwksFetch { url: String, reason: String },
    #[error("invalid JWKS from {origin}: {reason}")]
    JwksInvalid { origin: String, reason: String },
    #[error("the JWKS from {origin} holds no RSA signing key usable with RS256")]
    JwksNoKeys { origin: String },
}

/// Why a token was refused. Details are for logs; the wire answer is the
/// auth layer's business.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a well-formed JWT: {0}")]
    Malformed(&'static str),
    #[error("token algorithm {found:?} is not the configured {expected}")]
    Algorithm {
        found: String,
        expected: JwtAlgorithm,
    },
    #[error("token names an unknown signing key (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token lacks the required {0:?} claim")]
    MissingClaim(String),
    #[error("token audience does not match")]
    Audience,
    #[error("token issuer does not match")]
    Issuer,
    #[error("token claim {0:?} has the wrong type")]
    InvalidClaim(String),
    #[error("token claim {0:?} is not a valid tenant name")]
    InvalidTenant(String),
}

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtIdentity {
    pub tenant: TenantId,
    /// The known scopes among the token's; others are ignored, since a token
    /// minted for several services may carry theirs too.
    pub scopes: Scopes,
    /// `sub`, when present.
    pub subject: Option<String>,
}

/// Verifies tokens against one `[auth.jwt]` section. Build it once at
/// startup; `verify` is cheap and never blocks.
pub struct JwtVerifier {
    algorithm: JwtAlgorithm,
    validation: Validation,
    tenant_claim: String,
    scopes_claim: String,
    keys: Keys,
}

enum Keys {
    Secret(DecodingKey),
    Jwks(JwksKeys),
}

impl fmt::Debug for JwtVerifier {
    /// Names the policy, never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Validates the settings and loads the key: the secret from its
    /// variable, or the JWKS from its file or URL (a URL is then refreshed
    /// every 10 minutes, and on an unknown `kid` at most once a minute).
    pub async fn new(settings: &JwtSettings) -> Result<JwtVerifier, JwtConfigError> {
        Self::build(
            settings,
            &|name| std::env::var(name).ok(),
            Timing::default(),
        )
        .await
    }

    /// [`JwtVerifier::new`] with the variable lookup and refresh timing
    /// supplied, so tests touch neither the process environment nor the clock.
    async fn build(
        settings: &JwtSettings,
        lookup: &dyn Fn(&str) -> Option<String>,
        timing: Timing,
    ) -> Result<JwtVerifier, JwtConfigError> {
        settings.validate()?;
        let keys = match settings.algorithm {
            JwtAlgorithm::HS256 => {
                let var = settings.hs256_secret_env.clone().unwrap_or_default();
                let secret =
                    lookup(&var).ok_or_else(|| JwtConfigError::SecretNotSet(var.clone()))?;
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(JwtConfigError::SecretTooShort(var));
                }
                Keys::Secret(DecodingKey::from_secret(secret.as_bytes()))
            }
            JwtAlgorithm::RS256 => Keys::Jwks(match (&settings.jwks_file, &settings.jwks_url) {
                (Some(path), _) => JwksKeys::from_file(path)?,
                (None, Some(url)) => JwksKeys::from_url(url, timing).await?,
                (None, None) => return Err(JwtConfigError::KeySourceCount),
            }),
        };
        let mut validation = Validation::new(settings.algorithm.library());
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_audience(&[settings.audience.as_str()]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = LEEWAY_SECS;
        Ok(JwtVerifier {
            algorithm: settings.algorithm,
            validation,
            tenant_claim: settings.tenant_claim.clone(),
            scopes_claim: settings.scopes_claim.clone(),
            keys,
        })
    }

    /// Verifies a token and maps its claims. With a JWKS URL, an unknown
    /// `kid` also asks the background task for a refresh (at most once a
    /// minute), so a rotated key is picked up for the next request.
    pub fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        let result = self.verify_now(token);
        if let (Err(JwtError::UnknownKey(_)), Keys::Jwks(keys)) = (&result, &self.keys) {
            keys.request_refresh();
        }
        result
    }

    /// Like [`JwtVerifier::verify`], but on an unknown `kid` waits for the
    /// JWKS refresh (at most once a minute) and tries once more, so the first
    /// request after a key rotation already succeeds.
    pub async fn verify_or_refresh(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        match (self.verify_now(token), &self.keys) {
            (Err(JwtError::UnknownKey(_)), Keys::Jwks(keys)) => {
                keys.refresh_for_unknown_kid().await;
                self.verify_now(token)
            }
            (result, _) => result,
        }
    }

    fn verify_now(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        if !looks_like_jwt(token) {
            return Err(JwtError::Malformed("expected three base64url segments"));
        }
        let header = RawHeader::parse(token)?;
        if header.alg != self.algorithm.as_str() {
            return Err(JwtError::Algorithm {
                found: header.alg,
                expected: self.algorithm,
            });
        }
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not implement must refuse.
            return Err(JwtError::Malformed("critical header extensions"));
        }
        let claims = match &self.keys {
            Keys::Secret(key) => self.decode(token, key)?,
            Keys::Jwks(keys) => {
                let key = keys
                    .find(header.kid.as_deref())
                    .ok_or(JwtError::UnknownKey(header.kid))?;
                self.decode(token, &key)?
            }
        };
        self.identity(&claims)
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<Map<String, Value>, JwtError> {
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature => JwtError::Signature,
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidAudience => JwtError::Audience,
                ErrorKind::InvalidIssuer => JwtError::Issuer,
                ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c),
                ErrorKind::InvalidClaimFormat(c) => JwtError::InvalidClaim(c),
                ErrorKind::InvalidAlgorithm => JwtError::Algorithm {
                    found: "mismatched key".into(),
                    expected: self.algorithm,
                },
                _ => JwtError::Malformed("undecodable payload or signature"),
            })
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<JwtIdentity, JwtError> {
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => {
                return Err(JwtError::MissingClaim(self.tenant_claim.clone()));
            }
            Some(Value::String(s)) => TenantId::parse(s),
            Some(_) => None,
        }
        .ok_or_else(|| JwtError::InvalidTenant(self.tenant_claim.clone()))?;
        let scopes = match claims.get(&self.scopes_claim) {
            None | Some(Value::Null) => Scopes::default(),
            Some(Value::String(s)) => known_scopes(s.split_whitespace()),
            Some(Value::Array(items)) => {
                let names = items
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| JwtError::InvalidClaim(self.scopes_claim.clone()))?;
                known_scopes(names.into_iter())
            }
            Some(_) => return Err(JwtError::InvalidClaim(self.scopes_claim.clone())),
        };
        let subject = match claims.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(JwtError::InvalidClaim("sub".into())),
        };
        Ok(JwtIdentity {
            tenant,
            scopes,
            subject,
        })
    }
}

fn known_scopes<'a>(names: impl Iterator<Item = &'a str>) -> Scopes {
    names.filter_map(|n| n.parse::<Scope>().ok()).collect()
}

/// The header fields we decide on before any cryptography.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl RawHeader {
    fn parse(token: &str) -> Result<RawHeader, JwtError> {
        let segment = token.split('.').next().unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| JwtError::Malformed("header is not base64url"))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| JwtError::Malformed("header is not a JOSE header"))
    }
}

/// Whether a bearer credential is shaped like a JWT rather than an agentd
/// key (`key_id:secret`): three base64url segments, the first a JSON object
/// (`eyJ` is `{"` encoded). The signature may be empty so that `alg: none`
/// tokens reach [`JwtVerifier`] and are refused there, by name.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    header.starts_with("eyJ")
        && !payload.is_empty()
        && b64url(header)
        && b64url(payload)
        && b64url(signature)
}

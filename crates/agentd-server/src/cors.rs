//! Browser CORS (DESIGN §3 "CORS", seed 000 "CORS and gateway notes").
//!
//! Two surfaces, two lists. `/v1/*` is the operator API: only loopback
//! origins by default (a local console or dev server), or an exact list of
//! loopback origins; `*`, remote and path-bearing entries are refused at
//! startup, because a browser page that can call `/v1` with a pasted key can
//! drive every run. The chat surface (`/api/chat`, `/api/info`, `/ws/chat`)
//! is meant to be embedded in other sites, as seed 002's is, so its list may
//! name any origin or `*`. Neither ever sends
//! `Access-Control-Allow-Credentials`: agentd authenticates with bearer
//! headers, never ambient cookies, on these surfaces.
//!
//! A request whose `Origin` is not allowed is answered 403
//! `ORIGIN_NOT_ALLOWED` before any handler runs — preflight or not — so a
//! "simple" cross-site POST (which a browser sends without a preflight) never
//! reaches a handler either. Requests without `Origin` (curl, SDKs, servers)
//! pass untouched. `/health*`, `/openapi.json` and `/metrics` are not
//! browser surfaces and get no CORS handling at all.

use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Methods a preflight may be granted: every method agentd's routes use.
pub const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";

/// Request headers a browser may send: bearer auth, JSON, idempotency, SSE
/// resume, the web gateway's pair (seed 000), the admin tenant selector and
/// a caller-chosen request id.
pub const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key, last-event-id, \
     x-agentd-daemon-token, x-agentd-daemon-url, x-agentd-tenant, x-request-id";

/// Response headers a page may read beyond the CORS-safelisted ones.
pub const EXPOSE_HEADERS: &str = "x-request-id";

/// How long a browser may cache a preflight answer, in seconds.
pub const MAX_AGE_SECS: u32 = 600;

/// `http` or `https`: the only schemes a web origin agentd serves can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A web origin, `scheme://host[:port]`, normalised: scheme and host
/// lower-case, an IPv6 host in its canonical bracketed form, and a port equal
/// to the scheme's default dropped — so a configured entry and the header a
/// browser sends compare equal exactly when they name the same origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: Option<u16>,
}

/// Why a text is not an origin agentd accepts. Each names the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error(
        "wildcard origins are not allowed here; list exact origins such as http://localhost:5173"
    )]
    Wildcard,
    #[error("an empty origin")]
    Empty,
    #[error("malformed origin: {0}")]
    Malformed(&'static str),
    #[error("the scheme must be http or https")]
    Scheme,
    #[error("an origin carries no user info (`user@`)")]
    UserInfo,
    #[error("an origin has no path, not even a trailing `/`: use scheme://host[:port]")]
    PathBearing,
    #[error("an origin has no query or fragment (`?`, `#`)")]
    QueryOrFragment,
    #[error("invalid host")]
    Host,
    #[error("the port must be a number from 1 to 65535 without leading zeros")]
    Port,
    #[error(
        "not a loopback origin: /v1 allows only localhost, 127.0.0.1 and [::1] (any port); \
         embed remote sites through chat_cors_allow_origins instead"
    )]
    NotLoopback,
}

impl Origin {
    /// Parses `scheme://host[:port]` strictly: no path, user info, query,
    /// fragment, whitespace or trailing garbage, so that lookalikes such as
    /// `http://evil.com#@localhost` never read as something they are not.
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        if text.is_empty() {
            return Err(OriginError::Empty);
        }
        if text.contains('*') {
            return Err(OriginError::Wildcard);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OriginError::Malformed(
                "only printable ASCII without spaces (punycode for other names)",
            ));
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or(OriginError::Malformed("expected scheme://host[:port]"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(OriginError::Scheme),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        match tail.bytes().next() {
            None => {}
            Some(b'/') => return Err(OriginError::PathBearing),
            Some(_) => return Err(OriginError::QueryOrFragment),
        }
        if authority.contains('@') {
            return Err(OriginError::UserInfo);
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p)?),
        }
        .filter(|p| *p != scheme.default_port());
        Ok(Origin { scheme, host, port })
    }

    /// `localhost`, `127.0.0.1` or `[::1]`, any port, either scheme.
    pub fn is_loopback(&self) -> bool {
        matches!(self.host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl std::str::FromStr for Origin {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Origin::parse(s)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Splits `host[:port]`, validating and normalising the host.
fn split_host_port(authority: &str) -> Result<(String, Option<&str>), OriginError> {
    if let Some(inner) = authority.strip_prefix('[') {
        let (literal, after) = inner.split_once(']').ok_or(OriginError::Host)?;
        let addr: Ipv6Addr = literal.parse().map_err(|_| OriginError::Host)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(OriginError::Host)?),
        };
        return Ok((format!("[{addr}]"), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if !is_host_name(host) {
        return Err(OriginError::Host);
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// A DNS name or dotted IPv4: non-empty labels of letters, digits and `-`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_port(text: &str) -> Result<u16, OriginError> {
    let digits_only =
        !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || text.starts_with('0') {
        return Err(OriginError::Port);
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(OriginError::Port),
    }
}

/// A configured entry that was refused, and why: startup names both.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refusing CORS origin {entry:?}: {reason}")]
pub struct CorsConfigError {
    pub entry: String,
    pub reason: OriginError,
}

/// Which origins one surface lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsPolicy {
    allow: Allow,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Allow {
    /// Any loopback origin: the default, safe for a local console.
    Loopback,
    /// Exactly these origins (possibly none).
    Exact(Vec<Origin>),
    /// Any origin, answered `Access-Control-Allow-Origin: *` (chat only).
    Any,
}

/// What to answer an allowed origin with.
enum Grant {
    /// Echo the request's own `Origin` (the answer then varies by origin).
    Echo(HeaderValue),
    Wildcard,
}

impl CorsPolicy {
    /// Every loopback origin, any port: `/v1`'s and chat's default.
    pub fn loopback() -> CorsPolicy {
        CorsPolicy {
            allow: Allow::Loopback,
        }
    }

    /// `/v1`'s exact list (`--http-cors-allow-origin`): loopback origins
    /// only, each without a path; the first bad entry is refused.
    pub fn api<S: AsRef<str>>(entries: &[S]) -> Result<CorsPolicy, CorsConfigError> {
        let origins = entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                let refuse = |reason| CorsConfigError {
                    entry: entry.to_owned(),
                    reason,
                };
                let origin = Origin::parse(entry).map_err(refuse)?;
                if !origin.is_loopback() {
                    return Err(refuse(OriginError::NotLoopback));
                }
                Ok(origin)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CorsPolicy {
            allow: Allow::Exact(origins),
        })
    }

    /// The chat surface's list (`chat_cors_allow_origins`): any origins, or
    /// `*` for all; entries must still be well-formed origins.
    pub fn chat<S: AsRef<str>>(entries: &[S]) -> Result<CorsPolicy, CorsConfigError> {
        let mut origins = Vec::new();
        let mut any = false;
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry == "*" {
                any = true;
                continue;
            }
            origins.push(Origin::parse(entry).map_err(|reason| CorsConfigError {
                entry: entry.to_owned(),
                reason,
            })?);
        }
        let allow = if any {
            Allow::Any
        } else {
            Allow::Exact(origins)
        };
        Ok(CorsPolicy { allow })
    }

    /// Whether a request's `Origin` header value may call this surface.
    pub fn allows(&self, origin: &str) -> bool {
        match HeaderValue::from_str(origin) {
            Ok(v) => self.grant(&v).is_some(),
            Err(_) => false,
        }
    }

    fn grant(&self, header: &HeaderValue) -> Option<Grant> {
        if self.allow == Allow::Any {
            return Some(Grant::Wildcard);
        }
        let origin = Origin::parse(header.to_str().ok()?).ok()?;
        let allowed = match &self.allow {
            Allow::Loopback => origin.is_loopback(),
            Allow::Exact(list) => list.contains(&origin),
            Allow::Any => true,
        };
        allowed.then(|| Grant::Echo(header.clone()))
    }
}

/// The two surfaces' policies, as `ServerConfig` carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsPolicies {
    /// `/v1/*`.
    pub api: CorsPolicy,
    /// `/api/chat`, `/api/info`, `/ws/chat`.
    pub chat: CorsPolicy,
}

impl Default for CorsPolicies {
    fn default() -> Self {
        CorsPolicies {
            api: CorsPolicy::loopback(),
            chat: CorsPolicy::loopback(),
        }
    }
}

/// Which list a path answers to, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    Api,
    Chat,
}

impl Surface {
    /// Decided by path, in one place, so a route added later under `/v1`
    /// is covered without anyone remembering to add a layer to it.
    fn of(path: &str) -> Option<Surface> {
        if path == "/v1" || path.starts_with("/v1/") {
            Some(Surface::Api)
        } else if matches!(path, "/api/chat" | "/api/info" | "/ws/chat") {
            Some(Surface::Chat)
        } else {
            None
        }
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`). It must sit
/// inside the request-id layer, which renders its 403 into the envelope.
pub async fn layer(
    State(policies): State<Arc<CorsPolicies>>,
    req: Request,
    next: Next,
) -> Response {
    let policy = match Surface::of(req.uri().path()) {
        None => return next.run(req).await,
        Some(Surface::Api) => &policies.api,
        Some(Surface::Chat) => &policies.chat,
    };
    let mut origins = req.headers().get_all(ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return next.run(req).await;
    };
    // Two Origin headers is no browser's doing: refuse rather than pick one.
    let grant = match origins.next() {
        None => policy.grant(origin),
        Some(_) => None,
    };
    let Some(grant) = grant else {
        tracing::debug!(origin = ?origin, path = req.uri().path(), "origin refused");
        return ApiError::OriginNotAllowed.into_response();
    };
    if req.method() == Method::OPTIONS && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow_origin(headers, grant);
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECS));
        return response;
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    allow_origin(headers, grant);
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    response
}

fn allow_origin(headers: &mut HeaderMap, grant: Grant) {
    match grant {
        Grant::Echo(origin) => {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            // Appended: another layer's Vary must survive.
            headers.append(VARY, HeaderValue::from_static("origin"));
        }
        Grant::Wildcard => {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
    }
}

#[cfg(test)]
mod tests;

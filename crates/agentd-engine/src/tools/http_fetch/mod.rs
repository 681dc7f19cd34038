//! `http_fetch {url, method?, headers?, body?}`: an HTTP request on the
//! model's behalf, inside the agent's egress allow-list (DESIGN §5, §6).
//!
//! The model is not trusted with the network: content it read may be
//! steering it. So the host must be on the allow-list (checked on the name,
//! before DNS); the name is resolved once and every address checked
//! (loopback, private, link-local… refused unless the operator opened the
//! block) and the connection pinned to those addresses; redirects are
//! followed here, one checked hop at a time; no environment proxy is used;
//! and the headers that would redirect or reshape the connection are
//! refused. Every refusal is an error result with a stable code.

pub mod addr;
mod args;
mod error;
mod hop;
mod policy;
mod resolve;

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use url::Url;

pub use policy::{DEFAULT_PORTS, EgressConfigError, HttpFetchPolicy, OperatorEgress};
pub use resolve::{HostResolver, SystemResolver};

use super::{Tool, ToolContext, ToolOutput};
use crate::models::ToolSpec;
use args::FetchArgs;
use error::FetchError;

/// Response headers worth showing the model; the rest is noise or cookies.
const SHOWN_HEADERS: [&str; 10] = [
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "last-modified",
    "etag",
    "cache-control",
    "expires",
    "retry-after",
    "location",
];

/// Headers that carry credentials: dropped when a redirect leaves the
/// origin they were meant for.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "cookie2"];

/// Headers describing a body: dropped when a redirect turns the request
/// into a GET without one.
const BODY_HEADERS: [&str; 4] = [
    "content-type",
    "content-encoding",
    "content-language",
    "content-location",
];

/// The `http_fetch` tool for one agent's policy.
pub struct HttpFetch {
    policy: HttpFetchPolicy,
    resolver: Arc<dyn HostResolver>,
}

impl HttpFetch {
    pub const NAME: &'static str = "http_fetch";

    /// Resolves names with the system resolver.
    pub fn new(policy: HttpFetchPolicy) -> Self {
        Self::with_resolver(policy, Arc::new(SystemResolver))
    }

    /// Resolves names with `resolver` (another DNS client, or a test's).
    pub fn with_resolver(policy: HttpFetchPolicy, resolver: Arc<dyn HostResolver>) -> Self {
        HttpFetch { policy, resolver }
    }

    pub fn policy(&self) -> &HttpFetchPolicy {
        &self.policy
    }

    /// Every hop, each checked from scratch, up to the final response.
    async fn fetch(&self, args: FetchArgs) -> Result<Value, FetchError> {
        let mut url = Url::parse(&args.url)
            .map_err(|e| FetchError::InvalidUrl(format!("{:?}: {e}", args.url)))?;
        url.set_fragment(None);
        let mut method = args.method;
        let mut headers = args.headers;
        let mut body = args.body;
        let mut hop = 0;
        loop {
            let target = hop::check_target(&url, &self.policy, self.resolver.as_ref())
                .await
                .map_err(|e| e.at_hop(hop, &url))?;
            let request = hop::Request {
                method: &method,
                headers: &headers,
                body: body.as_deref(),
            };
            let response = hop::send(&target, &request)
                .await
                .map_err(|e| e.at_hop(hop, &url))?;
            let Some(next) = redirect_target(&url, response.status(), response.headers())
                .map_err(|e| e.at_hop(hop, &url))?
            else {
                return self.output(url, response).await;
            };
            if hop >= self.policy.max_redirects {
                return Err(FetchError::TooManyRedirects(hop));
            }
            hop += 1;
            if changes_to_get(response.status(), &method) {
                method = Method::GET;
                body = None;
                headers.retain(|(name, _)| !BODY_HEADERS.contains(&name.as_str()));
            }
            if next.origin() != url.origin() {
                headers.retain(|(name, _)| !CREDENTIAL_HEADERS.contains(&name.as_str()));
            }
            tracing::debug!(hop, from = %url, to = %next, "http_fetch: following a redirect");
            url = next;
        }
    }

    async fn output(&self, url: Url, response: reqwest::Response) -> Result<Value, FetchError> {
        let status = response.status().as_u16();
        let mut shown = Map::new();
        for name in SHOWN_HEADERS {
            let values: Vec<String> = response
                .headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            if !values.is_empty() {
                shown.insert(name.to_owned(), Value::String(values.join(", ")));
            }
        }
        let (bytes, truncated) = hop::read_body(response, self.policy.max_response_bytes).await?;
        Ok(json!({
            "status": status,
            "headers": shown,
            "body": hop::body_text(&bytes, truncated),
            "truncated": truncated,
            "url": url.as_str(),
        }))
    }
}

/// The next URL when `status` is a redirect with a usable `Location`;
/// `None` for any other response (a 3xx without one is the answer).
fn redirect_target(
    current: &Url,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Option<Url>, FetchError> {
    let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
    let Some(location) = headers.get(header::LOCATION).filter(|_| is_redirect) else {
        return Ok(None);
    };
    let location = location
        .to_str()
        .map_err(|_| FetchError::BadRedirect("the Location header is not ASCII".into()))?;
    let mut next = current
        .join(location)
        .map_err(|e| FetchError::BadRedirect(format!("Location {location:?}: {e}")))?;
    next.set_fragment(None);
    Ok(Some(next))
}

/// 303 turns everything but HEAD into GET; 301 and 302 turn POST into GET,
/// as browsers and most clients do. 307 and 308 keep the method and body.
fn changes_to_get(status: StatusCode, method: &Method) -> bool {
    match status.as_u16() {
        303 => *method != Method::HEAD && *method != Method::GET,
        301 | 302 => *method == Method::POST,
        _ => false,
    }
}

#[async_trait]
impl Tool for HttpFetch {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: Self::NAME.into(),
            description: "Make an HTTP(S) request. Only hosts on this agent's egress \
                allow-list can be reached; private and loopback addresses are refused. \
                Returns JSON {status, headers, body, truncated, url}; the body is text, \
                cut at a size limit."
                .into(),
            parameters: args::schema(),
        }
    }

    async fn call(&self, ctx: &ToolContext, arguments: Value) -> ToolOutput {
        let timeout = self.policy.timeout;
        let result = match args::parse(&arguments) {
            Err(e) => Err(e),
            Ok(args) => tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => Err(FetchError::Cancelled),
                r = tokio::time::timeout(timeout, self.fetch(args)) => {
                    r.unwrap_or(Err(FetchError::Timeout(timeout)))
                }
            },
        };
        match result {
            Ok(value) => ToolOutput::ok(value.to_string()),
            Err(e) => {
                // The code only: the full text can carry URLs with secrets.
                tracing::info!(run_id = %ctx.run_id, code = e.code(), "http_fetch refused or failed");
                ToolOutput::error(e.to_string())
            }
        }
    }
}

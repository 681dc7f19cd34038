//! One request of a fetch: checking its target, connecting to exactly the
//! checked addresses, and reading a bounded body. Redirects come back to
//! the caller, which checks the next hop here from scratch.

use std::net::IpAddr;
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, redirect};
use url::{Host, Url};

use super::addr::{self, AddrRefusal};
use super::error::FetchError;
use super::policy::HttpFetchPolicy;
use super::resolve::{HostResolver, PinnedResolver};

/// A URL that passed every check, and the only addresses it may use.
#[derive(Debug)]
pub struct Target {
    pub url: Url,
    pub addrs: Vec<IpAddr>,
}

/// Scheme, credentials, allow-list and port are checked on the URL alone;
/// only then is the name resolved, and every answer checked.
pub async fn check_target(
    url: &Url,
    policy: &HttpFetchPolicy,
    resolver: &dyn HostResolver,
) -> Result<Target, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Userinfo);
    }
    let host = url
        .host()
        .ok_or_else(|| FetchError::InvalidUrl(format!("{url} has no host")))?;
    let host_text = url.host_str().unwrap_or_default().to_owned();
    if !policy.host_allowed(&host) {
        return Err(FetchError::HostDenied(host_text));
    }
    // http and https always have a default port.
    let port = url.port_or_known_default().unwrap_or(0);
    if !policy.port_allowed(port) {
        let allowed: Vec<String> = policy.allowed_ports.iter().map(u16::to_string).collect();
        return Err(FetchError::Port {
            port,
            allowed: if allowed.is_empty() {
                "none".into()
            } else {
                allowed.join(", ")
            },
        });
    }
    let answers = match host {
        Host::Ipv4(v4) => vec![IpAddr::V4(v4)],
        Host::Ipv6(v6) => vec![IpAddr::V6(v6)],
        Host::Domain(name) => resolver
            .lookup(name, port)
            .await
            .map_err(|e| FetchError::Dns {
                host: host_text.clone(),
                reason: e.to_string(),
            })?,
    };
    let addrs = addr::check_resolved(&answers, &policy.allow_cidrs).map_err(|r| match r {
        AddrRefusal::NoAddresses => FetchError::Dns {
            host: host_text.clone(),
            reason: "no addresses".into(),
        },
        AddrRefusal::Forbidden { ip, why } => FetchError::Address {
            host: host_text.clone(),
            ip,
            why,
        },
    })?;
    Ok(Target {
        url: url.clone(),
        addrs,
    })
}

/// What to send on one hop.
pub struct Request<'a> {
    pub method: &'a Method,
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub body: Option<&'a str>,
}

/// Sends one request to the pinned addresses, following nothing.
pub async fn send(target: &Target, request: &Request<'_>) -> Result<Response, FetchError> {
    let host = target.url.host_str().unwrap_or_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(redirect::Policy::none())
        .dns_resolver(Arc::new(PinnedResolver::new(host, target.addrs.clone())))
        .user_agent(concat!("agentd-http-fetch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(FetchError::request)?;
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers {
        headers.append(name.clone(), value.clone());
    }
    let mut builder = client
        .request(request.method.clone(), target.url.clone())
        .headers(headers);
    if let Some(body) = request.body {
        builder = builder.body(body.to_owned());
    }
    builder.send().await.map_err(FetchError::request)
}

/// Reads at most `limit` bytes of the body; `true` when more was cut.
pub async fn read_body(
    mut response: Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::request)? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Body bytes as text. A cut body may end inside a character: that partial
/// character is dropped rather than shown as a replacement mark.
pub fn body_text(body: &[u8], truncated: bool) -> String {
    let mut end = body.len();
    if truncated
        && let Err(e) = std::str::from_utf8(body)
        && e.error_len().is_none()
    {
        end = e.valid_up_to();
    }
    String::from_utf8_lossy(&body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_text_drops_only_a_partial_last_character() {
        let text = "héllo wörld".as_bytes();
        // Cut inside the two-byte 'ö'.
        let cut = &text[..text.len() - 4];
        assert_eq!(body_text(cut, true), "héllo w");
        assert_eq!(body_text(text, false), "héllo wörld");
        // Invalid bytes in the middle stay visible as replacement marks.
        assert_eq!(body_text(b"a\xffb", false), "a\u{fffd}b");
        assert_eq!(body_text(b"a\xffb", true), "a\u{fffd}b");
    }
}

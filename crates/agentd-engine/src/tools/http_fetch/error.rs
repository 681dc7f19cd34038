//! Every way a fetch can end without a response, as the model reads it.
//!
//! Each message starts with a short, stable code (`EGRESS_DENIED: …`) so a
//! model, a test or an operator grepping logs can tell refusals apart without
//! parsing prose; the rest of the text says what to change.

use std::net::IpAddr;
use std::time::Duration;

use super::addr::Forbidden;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("INVALID_ARGUMENTS: {0}")]
    InvalidArguments(String),
    #[error("INVALID_URL: {0}")]
    InvalidUrl(String),
    #[error("SCHEME_NOT_ALLOWED: only http and https URLs may be fetched, not {0:?}")]
    Scheme(String),
    #[error(
        "USERINFO_NOT_ALLOWED: credentials in the URL are refused; send an Authorization header instead"
    )]
    Userinfo,
    #[error("EGRESS_DENIED: host {0} is not on the allow-list")]
    HostDenied(String),
    #[error("PORT_NOT_ALLOWED: port {port} is not allowed (allowed: {allowed})")]
    Port { port: u16, allowed: String },
    #[error("ADDRESS_FORBIDDEN: {host} is {ip}, a {why}")]
    Address {
        host: String,
        ip: IpAddr,
        why: Forbidden,
    },
    #[error("DNS_FAILED: {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error("HEADER_NOT_ALLOWED: {0}")]
    Header(String),
    #[error("TOO_MANY_REDIRECTS: stopped after {0} redirects")]
    TooManyRedirects(u32),
    #[error("BAD_REDIRECT: {0}")]
    BadRedirect(String),
    #[error("TIMEOUT: no complete response within {0:?}")]
    Timeout(Duration),
    #[error("CANCELLED: the run was cancelled")]
    Cancelled,
    #[error("REQUEST_FAILED: {0}")]
    Request(String),
    /// A refusal or failure on a redirect, naming the hop and its target.
    #[error("{error} (redirect {hop} to {url})")]
    AtHop {
        hop: u32,
        url: String,
        error: Box<FetchError>,
    },
}

impl FetchError {
    /// The stable code at the start of the message, for logs.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            FetchError::InvalidArguments(_) => "INVALID_ARGUMENTS",
            FetchError::InvalidUrl(_) => "INVALID_URL",
            FetchError::Scheme(_) => "SCHEME_NOT_ALLOWED",
            FetchError::Userinfo => "USERINFO_NOT_ALLOWED",
            FetchError::HostDenied(_) => "EGRESS_DENIED",
            FetchError::Port { .. } => "PORT_NOT_ALLOWED",
            FetchError::Address { .. } => "ADDRESS_FORBIDDEN",
            FetchError::Dns { .. } => "DNS_FAILED",
            FetchError::Header(_) => "HEADER_NOT_ALLOWED",
            FetchError::TooManyRedirects(_) => "TOO_MANY_REDIRECTS",
            FetchError::BadRedirect(_) => "BAD_REDIRECT",
            FetchError::Timeout(_) => "TIMEOUT",
            FetchError::Cancelled => "CANCELLED",
            FetchError::Request(_) => "REQUEST_FAILED",
            FetchError::AtHop { error, .. } => error.code(),
        }
    }

    /// Names the redirect hop an error happened on; hop 0 is the request
    /// the model asked for and needs no label.
    pub(super) fn at_hop(self, hop: u32, url: &url::Url) -> FetchError {
        if hop == 0 {
            return self;
        }
        FetchError::AtHop {
            hop,
            url: url.to_string(),
            error: Box::new(self),
        }
    }

    /// A transport error with its causes, since reqwest's own message
    /// ("error sending request") hides the useful part.
    pub(super) fn request(err: reqwest::Error) -> FetchError {
        let err = err.without_url();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        FetchError::Request(text)
    }
}

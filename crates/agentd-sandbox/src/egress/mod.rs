//! Egress for allow-list sandboxes (DESIGN §6): the policy one sandbox is
//! held to, and the proxy that enforces it ([`proxy`]), reached through
//! the door of [`bridge`]. A deny_all sandbox has none of this: its netns
//! is empty.

pub mod bridge;
pub mod proxy;
pub mod sni;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// Ports allowed when the operator lists none.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// One host entry: `api.example.com` or `*.example.com` (strict subdomains).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRule {
    Exact(String),
    /// Stored as `.example.com`.
    Subdomains(String),
}

impl HostRule {
    /// Parses an entry; IP literals, ports, paths and odd characters are refused.
    pub fn parse(entry: &str) -> Option<HostRule> {
        let (wild, name) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let name = normalize_host(name)?;
        if name.parse::<IpAddr>().is_ok() || !name.contains(|c: char| c.is_ascii_alphabetic()) {
            return None;
        }
        Some(if wild {
            HostRule::Subdomains(format!(".{name}"))
        } else {
            HostRule::Exact(name)
        })
    }

    /// Whether this rule admits the (normalized) host name.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Exact(n) => n == host,
            HostRule::Subdomains(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }

    /// Whether everything `other` admits, this rule admits too.
    pub fn covers(&self, other: &HostRule) -> bool {
        match (self, other) {
            (_, HostRule::Exact(n)) => self.matches(n),
            (HostRule::Subdomains(a), HostRule::Subdomains(b)) => {
                a == b || (b.len() > a.len() && b.ends_with(a.as_str()))
            }
            (HostRule::Exact(_), HostRule::Subdomains(_)) => false,
        }
    }

    pub fn to_entry(&self) -> String {
        match self {
            HostRule::Exact(n) => n.clone(),
            HostRule::Subdomains(s) => format!("*{s}"),
        }
    }
}

/// Lowercase ASCII, no trailing dot, only letters, digits, `-` and `.`.
pub fn normalize_host(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with('.')
        && !name.contains("..");
    ok.then_some(name)
}

/// The request's list cut down to what the ceiling admits: an entry stays
/// only if some ceiling entry covers it. Returns (kept, dropped).
pub fn intersect(request: &[HostRule], ceiling: &[HostRule]) -> (Vec<HostRule>, Vec<HostRule>) {
    request
        .iter()
        .cloned()
        .partition(|r| ceiling.iter().any(|c| c.covers(r)))
}

/// Judges one resolved address: `Err(why)` refuses it. Built by whoever
/// knows the operator's address blocks (the engine's SSRF rules).
pub type AddrCheck = Arc<dyn Fn(IpAddr) -> Result<(), String> + Send + Sync>;

/// What one sandbox may reach.
#[derive(Clone)]
pub struct EgressPolicy {
    /// The effective list: request ∩ ceiling.
    pub hosts: Vec<HostRule>,
    /// Destination ports; [`DEFAULT_PORTS`] unless the operator lists others.
    pub ports: Vec<u16>,
    pub check_addr: AddrCheck,
    /// Bytes (both directions) one connection may carry.
    pub max_bytes_per_connection: u64,
    /// How long one connection may stay open.
    pub max_connection_time: Duration,
    /// Connections one sandbox may open in all.
    pub max_connections: u32,
}

impl std::fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressPolicy")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// One decision of the proxy, recorded as `egress_allowed` / `egress_denied`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressDecision {
    pub allowed: bool,
    /// The host as the sandbox named it (absent when the request was unreadable).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The address connected to, when allowed.
    pub address: Option<String>,
    /// Why it was refused: a stable code (`HOST_NOT_ALLOWED`, …).
    pub reason: Option<&'static str>,
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> Vec<HostRule> {
        list.iter().map(|e| HostRule::parse(e).unwrap()).collect()
    }

    #[test]
    fn entries_parse_and_match() {
        assert!(HostRule::parse("127.0.0.1").is_none());
        assert!(HostRule::parse("a.com:80").is_none());
        let w = HostRule::parse("*.Example.com.").unwrap();
        assert!(w.matches("api.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("badexample.com"));
    }

    #[test]
    fn intersection_keeps_only_covered_entries() {
        let (kept, dropped) = intersect(
            &rules(&[
                "a.example.com",
                "b.test",
                "*.x.example.com",
                "*.example.com",
            ]),
            &rules(&["*.example.com", "c.test"]),
        );
        assert_eq!(
            kept,
            rules(&["a.example.com", "*.x.example.com", "*.example.com"])
        );
        assert_eq!(dropped, rules(&["b.test"]));
    }
}

//! What one agent's `http_fetch` may reach: its egress allow-list (the
//! agent's `egress` setting) plus the operator's address blocks and ports.
//!
//! Deny by default: no `egress` setting, `deny_all`, or an empty list all
//! mean every fetch is refused. Hosts are matched on the name in the URL
//! before any DNS lookup, so a refused name never leaks to a resolver.

use std::net::IpAddr;
use std::time::Duration;

use agentd_core::net::IpBlock;
use serde_json::Value;
use url::{Host, Url};

/// Ports reachable when the operator lists none.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// The limits and allow-lists one agent's fetches run under.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpFetchPolicy {
    /// Host names (case-insensitive, a trailing dot ignored), IP literals,
    /// or `*.example.com` for the subdomains of `example.com` (not itself).
    /// Empty: every fetch is refused.
    pub allow_hosts: Vec<String>,
    /// Blocks that may be reached although loopback, private, link-local….
    pub allow_cidrs: Vec<IpBlock>,
    /// Response body bytes kept; the rest is cut and the output says so.
    pub max_response_bytes: usize,
    /// For the whole call: every hop, the body included.
    pub timeout: Duration,
    pub max_redirects: u32,
    /// The only destination ports allowed; empty allows none.
    pub allowed_ports: Vec<u16>,
}

impl Default for HttpFetchPolicy {
    /// Refuses everything (no hosts), with the default limits.
    fn default() -> Self {
        HttpFetchPolicy {
            allow_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            max_response_bytes: 1024 * 1024,
            timeout: Duration::from_secs(20),
            max_redirects: 5,
            allowed_ports: DEFAULT_PORTS.to_vec(),
        }
    }
}

/// The operator's side of egress, from `agentd.toml`: what agents' lists
/// cannot grant on their own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperatorEgress {
    /// Private, loopback… blocks tools may reach.
    pub allow_cidrs: Vec<IpBlock>,
    /// Destination ports allowed; empty means [`DEFAULT_PORTS`].
    pub allowed_ports: Vec<u16>,
}

/// An agent's `egress` setting that cannot be understood. Refusing it at
/// load time beats guessing what a typo meant for network access.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EgressConfigError {
    #[error("egress must be a table like {{ mode = \"allow_list\", allow = [...] }}")]
    NotATable,
    #[error("egress: unknown key {0:?} (expected mode, allow)")]
    UnknownKey(String),
    #[error("egress: missing mode (\"allow_list\" or \"deny_all\")")]
    MissingMode,
    #[error("egress: unknown mode {0} (expected \"allow_list\" or \"deny_all\")")]
    UnknownMode(String),
    #[error("egress: mode \"allow_list\" needs allow = [\"host\", ...]")]
    MissingAllow,
    #[error("egress: allow must be a list of host names")]
    AllowNotAList,
    #[error("egress: mode \"deny_all\" cannot have an allow list")]
    AllowWithDenyAll,
    #[error("egress: allow[{index}] = {entry} is not a host name, IP address or *.domain pattern")]
    InvalidHost { index: usize, entry: String },
}

impl HttpFetchPolicy {
    /// The default limits with `hosts` allowed.
    pub fn allow_list<S: Into<String>>(hosts: impl IntoIterator<Item = S>) -> Self {
        HttpFetchPolicy {
            allow_hosts: hosts.into_iter().map(Into::into).collect(),
            ..HttpFetchPolicy::default()
        }
    }

    /// Builds the policy from an agent's `egress` value (`None` when the
    /// agent has none: deny all) and the operator's settings.
    pub fn from_egress(
        value: Option<&Value>,
        operator: &OperatorEgress,
    ) -> Result<Self, EgressConfigError> {
        let mut policy = HttpFetchPolicy {
            allow_cidrs: operator.allow_cidrs.clone(),
            ..HttpFetchPolicy::default()
        };
        if !operator.allowed_ports.is_empty() {
            policy.allowed_ports = operator.allowed_ports.clone();
        }
        let Some(value) = value else {
            return Ok(policy);
        };
        let table = value.as_object().ok_or(EgressConfigError::NotATable)?;
        if let Some(key) = table.keys().find(|k| *k != "mode" && *k != "allow") {
            return Err(EgressConfigError::UnknownKey(key.clone()));
        }
        let allow = match table.get("allow") {
            None => None,
            Some(Value::Array(list)) => Some(list),
            Some(_) => return Err(EgressConfigError::AllowNotAList),
        };
        match table.get("mode") {
            None => Err(EgressConfigError::MissingMode),
            Some(Value::String(mode)) if mode == "deny_all" => match allow {
                Some(list) if !list.is_empty() => Err(EgressConfigError::AllowWithDenyAll),
                _ => Ok(policy),
            },
            Some(Value::String(mode)) if mode == "allow_list" => {
                let list = allow.ok_or(EgressConfigError::MissingAllow)?;
                for (index, entry) in list.iter().enumerate() {
                    let host = entry
                        .as_str()
                        .filter(|s| HostPattern::parse(s).is_some())
                        .ok_or_else(|| EgressConfigError::InvalidHost {
                            index,
                            entry: entry.to_string(),
                        })?;
                    policy.allow_hosts.push(host.to_owned());
                }
                Ok(policy)
            }
            Some(other) => Err(EgressConfigError::UnknownMode(other.to_string())),
        }
    }

    /// Whether the URL's host is on the allow-list. Entries that do not
    /// parse never match.
    pub(crate) fn host_allowed(&self, host: &Host<&str>) -> bool {
        self.allow_hosts
            .iter()
            .filter_map(|entry| HostPattern::parse(entry))
            .any(|pattern| pattern.matches(host))
    }

    pub(crate) fn port_allowed(&self, port: u16) -> bool {
        self.allowed_ports.contains(&port)
    }
}

/// One allow-list entry, normalized the way URL hosts are.
#[derive(Clone, Debug, PartialEq)]
enum HostPattern {
    /// A lowercase ASCII (punycode) name without a trailing dot.
    Exact(String),
    /// `*.example.com` as `.example.com`: strict subdomains only.
    Subdomains(String),
    Ip(IpAddr),
}

impl HostPattern {
    fn parse(entry: &str) -> Option<HostPattern> {
        let bare = entry
            .strip_prefix('[')
            .and_then(|e| e.strip_suffix(']'))
            .unwrap_or(entry);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(HostPattern::Ip(ip));
        }
        if let Some(parent) = entry.strip_prefix("*.") {
            return match normalize(parent)? {
                HostPattern::Exact(name) => Some(HostPattern::Subdomains(format!(".{name}"))),
                _ => None,
            };
        }
        normalize(entry)
    }

    fn matches(&self, host: &Host<&str>) -> bool {
        match (self, host) {
            (HostPattern::Exact(name), Host::Domain(d)) => strip_dot(d) == name,
            (HostPattern::Subdomains(suffix), Host::Domain(d)) => {
                let d = strip_dot(d);
                d.len() > suffix.len() && d.ends_with(suffix.as_str())
            }
            (HostPattern::Ip(ip), Host::Ipv4(v4)) => *ip == IpAddr::V4(*v4),
            (HostPattern::Ip(ip), Host::Ipv6(v6)) => *ip == IpAddr::V6(*v6),
            _ => false,
        }
    }
}

/// Puts a name through the same host parser URLs go through (lowercase,
/// IDNA, IPv4 spellings) so entry and URL compare like for like.
fn normalize(name: &str) -> Option<HostPattern> {
    let plain = |c: char| !(c.is_whitespace() || ":/?#@[]\\%*".contains(c));
    if name.is_empty() || !name.chars().all(plain) {
        return None;
    }
    let url = Url::parse(&format!("http://{name}/")).ok()?;
    match url.host()? {
        Host::Domain(d) if !strip_dot(d).is_empty() => {
            Some(HostPattern::Exact(strip_dot(d).to_owned()))
        }
        Host::Ipv4(v4) => Some(HostPattern::Ip(IpAddr::V4(v4))),
        _ => None,
    }
}

fn strip_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn allowed(policy: &HttpFetchPolicy, url: &str) -> bool {
        let url = Url::parse(url).unwrap();
        policy.host_allowed(&url.host().unwrap())
    }

    #[test]
    fn exact_hosts_ignore_case_and_a_trailing_dot() {
        let p = HttpFetchPolicy::allow_list(["API.GitHub.com.", "example.org"]);
        assert!(allowed(&p, "https://api.github.com/repos"));
        assert!(allowed(&p, "https://API.GITHUB.COM./"));
        assert!(allowed(&p, "http://example.org./x"));
        assert!(!allowed(&p, "https://github.com/"));
        assert!(!allowed(&p, "https://evil-api.github.com/"));
        assert!(!allowed(&p, "https://api.github.com.evil.net/"));
        assert!(!allowed(&p, "https://sub.example.org/"));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = HttpFetchPolicy::allow_list(["*.example.com"]);
        assert!(allowed(&p, "https://a.example.com/"));
        assert!(allowed(&p, "https://a.b.example.com./"));
        assert!(!allowed(&p, "https://example.com/"));
        assert!(!allowed(&p, "https://badexample.com/"));
        assert!(!allowed(&p, "https://example.com.evil.net/"));
    }

    #[test]
    fn empty_list_and_bad_entries_match_nothing() {
        let p = HttpFetchPolicy::default();
        assert!(!allowed(&p, "https://example.com/"));
        let p = HttpFetchPolicy::allow_list(["*", "", "http://example.com", "example.com:443"]);
        assert!(!allowed(&p, "https://example.com/"));
        assert!(!allowed(&p, "https://a.b/"));
    }

    #[test]
    fn ip_entries_match_literals_in_any_spelling() {
        let p = HttpFetchPolicy::allow_list(["127.0.0.1", "[::1]", "::ffff:10.0.0.1"]);
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:a00:1]/",
        ] {
            assert!(allowed(&p, url), "{url}");
        }
        assert!(!allowed(&p, "http://[::ffff:127.0.0.1]/"));
        assert!(!allowed(&p, "http://10.0.0.1/"));
        assert!(!allowed(&p, "http://localhost/"));
    }

    #[test]
    fn unicode_names_compare_as_punycode() {
        let p = HttpFetchPolicy::allow_list(["bücher.example"]);
        assert!(allowed(&p, "https://xn--bcher-kva.example/"));
        assert!(allowed(&p, "https://BÜCHER.example/"));
    }

    #[test]
    fn missing_egress_denies_everything_with_operator_settings() {
        let operator = OperatorEgress {
            allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            allowed_ports: vec![8443],
        };
        let p = HttpFetchPolicy::from_egress(None, &operator).unwrap();
        assert!(p.allow_hosts.is_empty());
        assert_eq!(p.allow_cidrs, operator.allow_cidrs);
        assert_eq!(p.allowed_ports, vec![8443]);
        let p = HttpFetchPolicy::from_egress(None, &OperatorEgress::default()).unwrap();
        assert_eq!(p.allowed_ports, DEFAULT_PORTS.to_vec());
        assert_eq!(p.max_response_bytes, 1024 * 1024);
        assert_eq!(p.timeout, Duration::from_secs(20));
        assert_eq!(p.max_redirects, 5);
    }

    #[test]
    fn allow_list_and_deny_all_modes_parse() {
        let op = OperatorEgress::default();
        let v = json!({"mode": "allow_list", "allow": ["api.github.com", "*.example.com"]});
        let p = HttpFetchPolicy::from_egress(Some(&v), &op).unwrap();
        assert_eq!(p.allow_hosts, vec!["api.github.com", "*.example.com"]);
        let v = json!({"mode": "deny_all"});
        assert!(
            HttpFetchPolicy::from_egress(Some(&v), &op)
                .unwrap()
                .allow_hosts
                .is_empty()
        );
        let v = json!({"mode": "deny_all", "allow": []});
        assert!(HttpFetchPolicy::from_egress(Some(&v), &op).is_ok());
        let v = json!({"mode": "allow_list", "allow": []});
        assert!(
            HttpFetchPolicy::from_egress(Some(&v), &op)
                .unwrap()
                .allow_hosts
                .is_empty()
        );
    }

    #[test]
    fn bad_egress_settings_are_typed_errors() {
        let op = OperatorEgress::default();
        let err = |v: Value| HttpFetchPolicy::from_egress(Some(&v), &op).unwrap_err();
        assert_eq!(err(json!("allow_list")), EgressConfigError::NotATable);
        assert_eq!(err(json!({})), EgressConfigError::MissingMode);
        assert_eq!(
            err(json!({"mode": "allow_all"})),
            EgressConfigError::UnknownMode("\"allow_all\"".into())
        );
        assert_eq!(
            err(json!({"mode": 1})),
            EgressConfigError::UnknownMode("1".into())
        );
        assert_eq!(
            err(json!({"mode": "allow_list"})),
            EgressConfigError::MissingAllow
        );
        assert_eq!(
            err(json!({"mode": "allow_list", "allow": "api.github.com"})),
            EgressConfigError::AllowNotAList
        );
        assert_eq!(
            err(json!({"mode": "deny_all", "allow": ["a.com"]})),
            EgressConfigError::AllowWithDenyAll
        );
        assert_eq!(
            err(json!({"mode": "allow_list", "allow": ["a.com"], "alow": []})),
            EgressConfigError::UnknownKey("alow".into())
        );
        assert_eq!(
            err(json!({"mode": "allow_list", "allow": ["a.com", 7]})),
            EgressConfigError::InvalidHost {
                index: 1,
                entry: "7".into()
            }
        );
        for bad in [
            "https://a.com",
            "a.com:443",
            "*",
            "*.",
            "a.com/x",
            "user@a.com",
            "",
        ] {
            assert!(
                matches!(
                    err(json!({"mode": "allow_list", "allow": [bad]})),
                    EgressConfigError::InvalidHost { index: 0, .. }
                ),
                "{bad:?}"
            );
        }
    }
}

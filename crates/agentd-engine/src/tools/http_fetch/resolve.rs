//! DNS for `http_fetch`, done once per hop and pinned.
//!
//! A name is resolved here, every answer is checked, and the HTTP client is
//! handed a resolver that can only return those checked answers for that
//! one name. The client never performs a lookup of its own, so a rebinding
//! DNS server cannot answer "public" to the check and "loopback" to the
//! connection.

use std::io;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Turns a host name into addresses. The system resolver in production;
/// tests substitute their own to play a rebinding or split-horizon DNS.
#[async_trait]
pub trait HostResolver: Send + Sync + 'static {
    async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>>;
}

/// `getaddrinfo` through tokio (honours `/etc/hosts`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

#[async_trait]
impl HostResolver for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        let addrs = tokio::net::lookup_host((host, port)).await?;
        Ok(addrs.map(|a| a.ip()).collect())
    }
}

/// The client's only resolver for one hop: the checked addresses for the
/// checked name, and an error for any other name.
#[derive(Clone, Debug)]
pub struct PinnedResolver {
    host: String,
    addrs: Vec<IpAddr>,
}

impl PinnedResolver {
    pub fn new(host: &str, addrs: Vec<IpAddr>) -> Self {
        PinnedResolver {
            host: comparable(host).to_owned(),
            addrs,
        }
    }
}

impl Resolve for PinnedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let result = if comparable(name.as_str()) == self.host {
            // Port 0: the client fills in the URL's port.
            let addrs: Vec<SocketAddr> = self
                .addrs
                .iter()
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        } else {
            Err(io::Error::other(format!(
                "no pinned address for {:?} (only {:?})",
                name.as_str(),
                self.host
            ))
            .into())
        };
        Box::pin(std::future::ready(result))
    }
}

/// Host names compare case-insensitively, a trailing dot ignored.
fn comparable(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answers(r: &PinnedResolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        let name: Name = name.parse().map_err(|_| "bad name".to_string())?;
        r.resolve(name)
            .await
            .map(|addrs| addrs.collect())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn pinned_resolver_returns_exactly_the_checked_addresses() {
        let checked: Vec<IpAddr> = vec![
            "93.184.216.34".parse().unwrap(),
            "2606:2800::1".parse().unwrap(),
        ];
        let r = PinnedResolver::new("example.com", checked.clone());
        let got = answers(&r, "example.com").await.unwrap();
        assert_eq!(got.iter().map(|a| a.ip()).collect::<Vec<_>>(), checked);
        assert!(got.iter().all(|a| a.port() == 0));
        // Same name in another spelling.
        assert_eq!(answers(&r, "EXAMPLE.com.").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn pinned_resolver_refuses_every_other_name() {
        let r = PinnedResolver::new("example.com", vec!["93.184.216.34".parse().unwrap()]);
        for other in ["localhost", "evil.example.com", "example.com.evil.net"] {
            let err = answers(&r, other).await.unwrap_err();
            assert!(err.contains("no pinned address"), "{other}: {err}");
        }
    }

    #[tokio::test]
    async fn system_resolver_reads_the_hosts_file() {
        let addrs = SystemResolver.lookup("localhost", 80).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|ip| ip.is_loopback()), "{addrs:?}");
    }
}

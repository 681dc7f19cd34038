//! The client's address, for rate limiting and the audit trail. Behind a
//! configured proxy it comes from `X-Forwarded-For`; otherwise that header
//! is ignored, since anyone can send it.

use std::net::IpAddr;
use std::str::FromStr;

use agentd_core::net::{InvalidBlock, IpBlock, canonical};
use axum::http::HeaderMap;

/// The `trusted_proxies` setting.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpBlock>);

impl TrustedProxies {
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidBlock> {
        entries
            .into_iter()
            .map(IpBlock::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|b| b.contains(ip))
    }

    /// The client behind `peer`: the peer itself unless it is a trusted
    /// proxy, in which case the right-most untrusted `X-Forwarded-For` hop.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.map(canonical)?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .collect();
        hops.iter()
            .rev()
            .find(|hop| !self.trusts(**hop))
            .or(hops.first())
            .copied()
            .or(Some(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.5".parse().unwrap());
        assert_eq!(
            proxies.client_ip(Some(ip("127.0.0.1")), &h),
            Some(ip("203.0.113.7"))
        );
        // An untrusted peer's header is its own claim: ignored.
        assert_eq!(
            proxies.client_ip(Some(ip("198.51.100.1")), &h),
            Some(ip("198.51.100.1"))
        );
        // A spoofed left-most hop does not win over the real one.
        h.insert("x-forwarded-for", "1.2.3.4, 203.0.113.9".parse().unwrap());
        assert_eq!(
            proxies.client_ip(Some(ip("10.0.0.1")), &h),
            Some(ip("203.0.113.9"))
        );
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(Some(ip("127.0.0.1")), &h),
            Some(ip("127.0.0.1"))
        );
    }
}

//! Which destination addresses `http_fetch` may connect to.
//!
//! A model steered by hostile content would love to reach the daemon's own
//! loopback services, the LAN, or the cloud metadata endpoint. So every
//! address a fetch would connect to — an IP literal or each address a name
//! resolves to — is classified here, and anything that is not ordinary public
//! unicast is refused unless the operator listed a block containing it.
//! IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4)
//! are judged by the address they carry.
//!
//! Public so the sandbox's egress proxy (DESIGN §6) can apply the same rules.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agentd_core::net::{IpBlock, canonical};

/// Why an address is refused: its range, and the IPv6 wrapping it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forbidden {
    pub class: &'static str,
    /// `Some("NAT64")` for `64:ff9b::7f00:1`, and so on.
    pub via: Option<&'static str>,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Some(via) => write!(f, "{} address (in {via} form)", self.class),
            None => write!(f, "{} address", self.class),
        }
    }
}

/// Why a resolved address list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrRefusal {
    /// The name resolved to nothing.
    NoAddresses,
    /// One of the addresses is off limits; the whole name is refused, so a
    /// mix of public and private answers cannot smuggle in the private one.
    Forbidden { ip: IpAddr, why: Forbidden },
}

/// IPv4 ranges that are not ordinary public unicast (IANA special-purpose
/// registry). Broadcast is checked before the `240/4` block it sits in.
const V4_RANGES: &[([u8; 4], u32, &str)] = &[
    ([0, 0, 0, 0], 8, "unspecified"),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "shared (CGNAT)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "IETF protocol assignment"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast"),
    ([192, 168, 0, 0], 16, "private"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([255, 255, 255, 255], 32, "broadcast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

/// IPv6 ranges refused outright. Forms that embed an IPv4 address are
/// handled in [`v6_class`] before this table.
const V6_RANGES: &[(u128, u32, &str)] = &[
    (0, 128, "unspecified"),
    (1, 128, "loopback"),
    (0x0064_ff9b_0001 << 80, 48, "local-use NAT64"),
    (0x0100 << 112, 64, "discard-only"),
    (0x2001 << 112, 32, "Teredo"),
    ((0x2001 << 112) | (0x0002 << 96), 48, "benchmarking"),
    ((0x2001 << 112) | (0x0010 << 96), 28, "ORCHID"),
    ((0x2001 << 112) | (0x0db8 << 96), 32, "documentation"),
    (0x3fff << 112, 20, "documentation"),
    (0xfc00 << 112, 7, "unique local (ULA)"),
    (0xfe80 << 112, 10, "link-local"),
    (0xfec0 << 112, 10, "site-local"),
    (0xff00 << 112, 8, "multicast"),
];

/// The reason `ip` may not be reached, or `None` for public unicast.
/// Operator blocks are not consulted here; see [`check`].
pub fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_class(v4).map(|class| Forbidden { class, via: None }),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// `Ok` when `ip` may be reached: public, or inside an operator block.
pub fn check(ip: IpAddr, allow_cidrs: &[IpBlock]) -> Result<(), Forbidden> {
    if allow_cidrs.iter().any(|block| block.contains(ip)) {
        return Ok(());
    }
    forbidden(ip).map_or(Ok(()), Err)
}

/// Checks every address a name resolved to and returns them, deduplicated,
/// in order: the exact list the connection may use. Refuses the whole list
/// when any one is off limits.
pub fn check_resolved(
    addrs: &[IpAddr],
    allow_cidrs: &[IpBlock],
) -> Result<Vec<IpAddr>, AddrRefusal> {
    let mut checked: Vec<IpAddr> = Vec::with_capacity(addrs.len());
    for &ip in addrs {
        check(ip, allow_cidrs).map_err(|why| AddrRefusal::Forbidden { ip, why })?;
        if !checked.contains(&ip) {
            checked.push(ip);
        }
    }
    if checked.is_empty() {
        return Err(AddrRefusal::NoAddresses);
    }
    Ok(checked)
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            n & mask == u32::from_be_bytes(*net) & mask
        })
        .map(|(_, _, class)| *class)
}

fn v6_class(ip: Ipv6Addr) -> Option<Forbidden> {
    let n = u128::from(ip);
    let in_block = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        n & mask == net & mask
    };
    // The low 32 bits as IPv4, for the forms that carry one there.
    let low_v4 = Ipv4Addr::from((n & 0xffff_ffff) as u32);
    let carried = |via| {
        v4_class(low_v4).map(|class| Forbidden {
            class,
            via: Some(via),
        })
    };

    // `::` and `::1` sit inside `::/96`; they get their own names below.
    if in_block(0, 96) && n > 1 {
        // Deprecated IPv4-compatible addresses (RFC 4291): never legitimate.
        return Some(carried("IPv4-compatible").unwrap_or(Forbidden {
            class: "deprecated IPv4-compatible",
            via: None,
        }));
    }
    if in_block(0x0064_ff9b << 96, 96) {
        // Well-known NAT64 prefix: fine for public IPv4, not for the rest.
        return carried("NAT64");
    }
    if in_block(0x2002 << 112, 16) {
        // 6to4 carries its IPv4 address in bits 16..48.
        let v4 = Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32);
        return v4_class(v4).map(|class| Forbidden {
            class,
            via: Some("6to4"),
        });
    }
    V6_RANGES
        .iter()
        .find(|(net, prefix, _)| in_block(*net, *prefix))
        .map(|(_, _, class)| Forbidden { class, via: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn class(s: &str) -> Option<&'static str> {
        forbidden(ip(s)).map(|f| f.class)
    }

    #[test]
    fn public_addresses_pass() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(forbidden(ip(s)), None, "{s}");
        }
    }

    #[test]
    fn special_ipv4_ranges_are_named() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.0.0.8", "IETF protocol assignment"),
        ];
        for (s, want) in cases {
            assert_eq!(class(s), Some(want), "{s}");
        }
    }

    #[test]
    fn special_ipv6_ranges_are_named() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local (ULA)"),
            ("fd12:3456::1", "unique local (ULA)"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("100::1", "discard-only"),
            ("64:ff9b:1::1", "local-use NAT64"),
        ];
        for (s, want) in cases {
            assert_eq!(class(s), Some(want), "{s}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4() {
        let loopback = |via| {
            Some(Forbidden {
                class: "loopback",
                via,
            })
        };
        // Mapped: canonical() turns it into plain IPv4.
        assert_eq!(forbidden(ip("::ffff:127.0.0.1")), loopback(None));
        assert_eq!(forbidden(ip("::ffff:7f00:1")), loopback(None));
        assert_eq!(
            forbidden(ip("::127.0.0.1")),
            loopback(Some("IPv4-compatible"))
        );
        assert_eq!(forbidden(ip("64:ff9b::7f00:1")), loopback(Some("NAT64")));
        assert_eq!(forbidden(ip("2002:7f00:1::")), loopback(Some("6to4")));
        assert_eq!(
            forbidden(ip("64:ff9b::a9fe:a9fe")).map(|f| f.class),
            Some("link-local")
        );
        assert_eq!(
            forbidden(ip("::ffff:10.0.0.1")).map(|f| f.class),
            Some("private")
        );
        // A compatible form of a public address is still refused.
        assert_eq!(class("::8.8.8.8"), Some("deprecated IPv4-compatible"));
    }

    #[test]
    fn operator_blocks_open_private_ranges() {
        let blocks: Vec<IpBlock> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(check(ip("10.9.9.9"), &blocks), Ok(()));
        assert_eq!(check(ip("::ffff:10.9.9.9"), &blocks), Ok(()));
        assert!(check(ip("192.168.0.1"), &blocks).is_err());
        assert!(check(ip("127.0.0.1"), &blocks).is_err());
        assert_eq!(check(ip("8.8.8.8"), &[]), Ok(()));
    }

    #[test]
    fn one_forbidden_answer_refuses_the_whole_name() {
        let addrs = [ip("93.184.216.34"), ip("10.0.0.5"), ip("93.184.216.35")];
        assert_eq!(
            check_resolved(&addrs, &[]),
            Err(AddrRefusal::Forbidden {
                ip: ip("10.0.0.5"),
                why: Forbidden {
                    class: "private",
                    via: None
                }
            })
        );
        let rebinding = [ip("93.184.216.34"), ip("127.0.0.1")];
        assert!(matches!(
            check_resolved(&rebinding, &[]),
            Err(AddrRefusal::Forbidden { .. })
        ));
    }

    #[test]
    fn checked_list_is_exactly_the_answers_deduplicated() {
        let addrs = [ip("93.184.216.34"), ip("2606:2800::1"), ip("93.184.216.34")];
        assert_eq!(
            check_resolved(&addrs, &[]),
            Ok(vec![ip("93.184.216.34"), ip("2606:2800::1")])
        );
        assert_eq!(check_resolved(&[], &[]), Err(AddrRefusal::NoAddresses));
        let blocks: Vec<IpBlock> = vec!["127.0.0.1/32".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(
            check_resolved(&[ip("127.0.0.1"), ip("::1")], &blocks),
            Ok(vec![ip("127.0.0.1"), ip("::1")])
        );
    }
}

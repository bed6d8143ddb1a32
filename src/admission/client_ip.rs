//! The true client address. By default the TCP peer; `X-Forwarded-For` counts only when the peer is
//! a trusted proxy, and then it is walked from the right, skipping trusted hops, so entries a client
//! wrote on the left cannot be used to spoof an address.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::proxy::headers::X_FORWARDED_FOR;

/// The address decided on, and whether a trusted peer sent a header that did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    pub ip: IpAddr,
    pub malformed_forwarded_for: bool,
}

/// Decides the client address for a request from `peer` (already canonical for IPv4-mapped IPv6).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> ClientIp {
    let peer = peer.to_canonical();
    let plain = ClientIp {
        ip: peer,
        malformed_forwarded_for: false,
    };
    if !is_trusted(peer, trusted_proxies) || !headers.contains_key(X_FORWARDED_FOR) {
        return plain;
    }
    // Every X-Forwarded-For field, in order, as one comma-separated list.
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else {
            return ClientIp {
                malformed_forwarded_for: true,
                ..plain
            };
        };
        for entry in text.split(',') {
            match parse_hop(entry.trim()) {
                Some(ip) => hops.push(ip.to_canonical()),
                None => {
                    return ClientIp {
                        malformed_forwarded_for: true,
                        ..plain
                    };
                }
            }
        }
    }
    // From the right: the first hop that is not a trusted proxy is the client.
    let client = hops
        .iter()
        .rev()
        .find(|ip| !is_trusted(**ip, trusted_proxies))
        .or(hops.first())
        .copied()
        .unwrap_or(peer);
    ClientIp {
        ip: client,
        malformed_forwarded_for: false,
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:443`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        m
    }

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let c = client_ip(ip("192.0.2.1"), &h(&["203.0.113.9"]), &trusted());
        assert_eq!(c.ip, ip("192.0.2.1"));
    }

    #[test]
    fn trusted_peer_header_is_honoured_from_the_right() {
        let c = client_ip(
            ip("10.0.0.5"),
            &h(&["1.1.1.1, 203.0.113.9, 10.0.0.7"]),
            &trusted(),
        );
        assert_eq!(
            c.ip,
            ip("203.0.113.9"),
            "spoofed leftmost entry ignored, trusted hop skipped"
        );
    }

    #[test]
    fn multiple_header_fields_form_one_list() {
        let c = client_ip(
            ip("10.0.0.5"),
            &h(&["198.51.100.1", "203.0.113.9"]),
            &trusted(),
        );
        assert_eq!(c.ip, ip("203.0.113.9"));
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let c = client_ip(ip("10.0.0.5"), &h(&["10.9.9.9, 10.0.0.7"]), &trusted());
        assert_eq!(c.ip, ip("10.9.9.9"));
    }

    #[test]
    fn malformed_header_falls_back_to_the_peer_and_is_flagged() {
        let c = client_ip(ip("10.0.0.5"), &h(&["203.0.113.9, not-an-ip"]), &trusted());
        assert_eq!(
            c,
            ClientIp {
                ip: ip("10.0.0.5"),
                malformed_forwarded_for: true
            }
        );
    }

    #[test]
    fn ports_and_brackets_and_mapped_addresses() {
        let c = client_ip(
            ip("::ffff:10.0.0.5"),
            &h(&["[2001:db8::7]:443"]),
            &trusted(),
        );
        assert_eq!(c.ip, ip("2001:db8::7"));
        let c = client_ip(ip("10.0.0.5"), &h(&["::ffff:203.0.113.9"]), &trusted());
        assert_eq!(c.ip, ip("203.0.113.9"));
    }
}

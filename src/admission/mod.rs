//! Admission: who gets in, decided before any byte reaches the backend. Pure functions and values:
//! nothing here bumps a metric or writes a log; `pipeline.rs` and the listener record outcomes.

pub mod ban;
pub mod client_ip;
pub mod conn_limit;
pub mod ip_allow;
pub mod rate_limit;

use std::net::IpAddr;

/// The key a client is counted under: IPv4 (and IPv4-mapped IPv6) as is, IPv6 masked to `prefix`
/// bits, because one subscriber usually holds a whole /64. Shared by the rate limiter and the bans.
pub fn client_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u32::from(prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_mask_ipv6_only() {
        let k = |s: &str, p| client_key(s.parse().unwrap(), p).to_string();
        assert_eq!(k("2001:db8:1:2:3:4:5:6", 64), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:3:4:5:6", 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(k("2001:db8::1", 0), "::");
        assert_eq!(k("::ffff:192.0.2.1", 64), "192.0.2.1");
        assert_eq!(k("192.0.2.1", 8), "192.0.2.1");
    }
}

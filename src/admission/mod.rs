//! Admission: who gets in, decided before any byte reaches the backend. Pure functions and values:
//! nothing here bumps a metric or writes a log; `pipeline.rs` and the listener record outcomes.

pub mod ban;
pub mod client_ip;
pub mod conn_limit;
pub mod ip_allow;
pub mod rate_limit;
pub mod signature;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

/// Removes the `n` entries with the lowest `rank` (all strictly lower ones first, then ties), and
/// returns how many went. One O(len) pass: callers evict in batches to amortise it.
pub(crate) fn evict_lowest<K: Hash + Eq, V, R: Ord + Copy>(
    map: &mut HashMap<K, V>,
    n: usize,
    rank: impl Fn(&V) -> R,
) -> usize {
    let n = n.min(map.len());
    if n == 0 {
        return 0;
    }
    let mut ranks: Vec<R> = map.values().map(&rank).collect();
    let (_, threshold, _) = ranks.select_nth_unstable(n - 1);
    let threshold = *threshold;
    let below = map.values().filter(|v| rank(v) < threshold).count();
    let mut ties = n - below;
    map.retain(|_, v| {
        let r = rank(v);
        if r < threshold {
            false
        } else if r == threshold && ties > 0 {
            ties -= 1;
            false
        } else {
            true
        }
    });
    n
}

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
    fn evicts_strictly_lower_ranks_before_ties() {
        let mut m: HashMap<u32, u32> = (0..100).map(|k| (k, 50)).collect();
        m.insert(1000, 1);
        m.insert(1001, 2);
        assert_eq!(evict_lowest(&mut m, 3, |v| *v), 3);
        assert!(!m.contains_key(&1000) && !m.contains_key(&1001));
        assert_eq!(m.len(), 99);
        assert_eq!(evict_lowest(&mut m, 500, |v| *v), 99);
        assert!(m.is_empty());
    }

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

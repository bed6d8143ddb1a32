//! Concurrent-use caps per client address (connections per IP, WebSocket sessions per IP and route),
//! released by RAII [`Slot`]s so an early return or a panic cannot leak a count.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// Counts holders per address. Only addresses with a holder are stored, so memory follows the number
/// of open connections (itself capped by `server.max_connections`).
pub struct PerIpCounter {
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Changeable on reload without losing the live counts.
    max: AtomicU32,
}

/// One held unit; dropping it gives the unit back.
pub struct Slot {
    counter: Arc<PerIpCounter>,
    ip: IpAddr,
}

impl PerIpCounter {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            max: AtomicU32::new(max),
        })
    }

    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `ip`, or `None` when it already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        let mut map = self.shard(&ip);
        let held = map.entry(ip).or_insert(0);
        if *held >= self.max.load(Ordering::Relaxed) {
            if *held == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *held += 1;
        Some(Slot {
            counter: self.clone(),
            ip,
        })
    }

    /// Units `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> u32 {
        self.shard(&ip.to_canonical())
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counter.shard(&self.ip);
        if let Some(held) = map.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_releases_on_drop() {
        let c = PerIpCounter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let s1 = c.try_acquire(a).unwrap();
        let _s2 = c.try_acquire(a).unwrap();
        assert!(c.try_acquire(a).is_none());
        assert!(
            c.try_acquire("192.0.2.2".parse().unwrap()).is_some(),
            "per address"
        );
        drop(s1);
        assert_eq!(c.held(a), 1);
        assert!(c.try_acquire(a).is_some());
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4_and_empty_entries_are_removed() {
        let c = PerIpCounter::new(1);
        let s = c.try_acquire("::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert!(c.try_acquire("192.0.2.1".parse().unwrap()).is_none());
        drop(s);
        assert!(c.shards.iter().all(|m| m.lock().unwrap().is_empty()));
    }

    #[test]
    fn max_zero_refuses_and_leaves_nothing_behind() {
        let c = PerIpCounter::new(0);
        assert!(c.try_acquire("192.0.2.1".parse().unwrap()).is_none());
        assert!(c.shards.iter().all(|m| m.lock().unwrap().is_empty()));
    }
}

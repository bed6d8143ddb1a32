//! Per-IP rate limits (GCRA, governor) with a bounded key store.
//!
//! governor's keyed limiter is used with our own [`BoundedStore`]: sharded maps with a hard cap on
//! tracked keys. When a shard is full, the keys whose theoretical arrival time (TAT) is lowest are
//! evicted first: those are the keys closest to a full bucket, so an idle key (bucket already full)
//! always goes before a busy one, and an abusive key (TAT far in the future) goes last. Evicting an
//! idle key loses nothing, because it would get a full burst anyway. Envoy's per-IP limiter instead
//! forgets keys by recency, handing an evicted abuser a fresh burst.
//!
//! IPv6 clients are keyed by a prefix (default /64), because one subscriber holds a whole /64.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

pub use crate::config::{Rate, RateLimitConfig as RateLimitSpec};

const SHARDS: usize = 16;

/// A bounded, sharded key → TAT map that governor's keyed limiter runs on.
pub struct BoundedStore<K> {
    shards: Vec<Mutex<HashMap<K, u64>>>,
    per_shard_cap: usize,
    hasher: std::collections::hash_map::RandomState,
    /// Shared with the owner, because governor's limiter owns the store.
    evictions: Arc<AtomicU64>,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    /// `max_keys` is the total cap across shards (rounded down to a multiple of the shard count,
    /// at least one key per shard); evictions are added to `evictions`.
    pub fn new(max_keys: usize, evictions: Arc<AtomicU64>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard_cap: (max_keys / SHARDS).max(1),
            hasher: Default::default(),
            evictions,
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, u64>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Drops the lowest-TAT eighth of a full shard (amortises the scan over many inserts).
    fn evict(&self, map: &mut HashMap<K, u64>) {
        let removed = super::evict_lowest(map, (map.len() / 8).max(1), |tat| *tat);
        self.evictions.fetch_add(removed as u64, Ordering::Relaxed);
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let prev = map.get(key).copied();
        let (out, tat) = f(prev.map(Nanos::from))?;
        if prev.is_none() && map.len() >= self.per_shard_cap {
            self.evict(&mut map);
        }
        map.insert(key.clone(), tat.into());
        Ok(out)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let below: u64 = drop_below.into();
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, tat| *tat >= below);
        }
    }

    fn shrink_to_fit(&self) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn quota(rate: Rate, burst: NonZeroU32) -> Quota {
    Quota::with_period(rate.per / rate.count.get())
        .expect("rate period is non-zero")
        .allow_burst(burst)
}

/// Which limit refused a request (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    PerIp { retry_after: Duration },
    Total { retry_after: Duration },
}

impl Limited {
    pub fn scope(self) -> &'static str {
        match self {
            Limited::PerIp { .. } => "per_ip",
            Limited::Total { .. } => "total",
        }
    }

    /// Whole seconds, at least 1, for `Retry-After`.
    pub fn retry_after_secs(self) -> u32 {
        let (Limited::PerIp { retry_after } | Limited::Total { retry_after }) = self;
        (retry_after.as_secs_f64().ceil() as u32).max(1)
    }
}

type Keyed<C> = RateLimiter<IpAddr, BoundedStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A route's limiter: per-IP (keyed, bounded) and an optional route total.
pub struct RouteLimiter<C: Clock = MonotonicClock> {
    pub spec: RateLimitSpec,
    per_ip: Option<Keyed<C>>,
    total: Option<Direct<C>>,
    evictions: Arc<AtomicU64>,
    clock: C,
}

impl RouteLimiter<MonotonicClock> {
    pub fn new(spec: RateLimitSpec) -> Self {
        Self::with_clock(spec, MonotonicClock)
    }
}

impl<C: Clock + Clone> RouteLimiter<C> {
    /// With an injected clock (tests use governor's `FakeRelativeClock`).
    pub fn with_clock(spec: RateLimitSpec, clock: C) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        Self {
            per_ip: spec.per_ip.map(|(r, b)| {
                let store = BoundedStore::new(spec.max_keys, evictions.clone());
                RateLimiter::new(quota(r, b), store, clock.clone())
            }),
            evictions,
            total: spec
                .total
                .map(|(r, b)| RateLimiter::direct_with_clock(quota(r, b), clock.clone())),
            spec,
            clock,
        }
    }

    /// The limiter key: IPv4 as is, IPv6 masked to the configured prefix.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        super::client_key(ip, self.spec.ipv6_prefix)
    }

    /// Admits or refuses one request from `ip`. Per-IP is checked first, so one noisy client
    /// cannot spend the route total that others need.
    pub fn check(&self, ip: IpAddr) -> Result<(), Limited> {
        if let Some(l) = &self.per_ip {
            l.check_key(&self.key(ip)).map_err(|nu| Limited::PerIp {
                retry_after: nu.wait_time_from(self.clock.now()),
            })?;
        }
        if let Some(l) = &self.total {
            l.check().map_err(|nu| Limited::Total {
                retry_after: nu.wait_time_from(self.clock.now()),
            })?;
        }
        Ok(())
    }

    /// Drops keys whose bucket is full again; returns (tracked keys, evictions so far).
    pub fn sweep(&self) -> (usize, u64) {
        match &self.per_ip {
            Some(l) => {
                l.retain_recent();
                l.shrink_to_fit();
                (l.len(), self.evictions())
            }
            None => (0, 0),
        }
    }

    pub fn tracked_keys(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |l| l.len())
    }

    /// Keys evicted because the store was full, since the limiter was built.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(per_ip: &str, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            per_ip: Some((per_ip.parse().unwrap(), NonZeroU32::new(burst).unwrap())),
            total: None,
            ipv6_prefix: 64,
            max_keys: 1024,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let clock = FakeRelativeClock::default();
        let l = RouteLimiter::with_clock(spec("2/s", 3), clock.clone());
        for _ in 0..3 {
            assert!(l.check(ip("192.0.2.1")).is_ok());
        }
        let refused = l.check(ip("192.0.2.1")).unwrap_err();
        assert_eq!(refused.scope(), "per_ip");
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(
            l.check(ip("192.0.2.2")).is_ok(),
            "other clients have their own bucket"
        );
        clock.advance(Duration::from_millis(500));
        assert!(
            l.check(ip("192.0.2.1")).is_ok(),
            "one cell refilled after 1/rate"
        );
        assert!(l.check(ip("192.0.2.1")).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let clock = FakeRelativeClock::default();
        let l = RouteLimiter::with_clock(spec("1/m", 1), clock);
        assert!(l.check(ip("192.0.2.1")).is_ok());
        assert_eq!(l.check(ip("192.0.2.1")).unwrap_err().retry_after_secs(), 60);
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        let clock = FakeRelativeClock::default();
        let l = RouteLimiter::with_clock(spec("1/s", 1), clock);
        assert!(l.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(
            l.check(ip("2001:db8:1:2:ffff::9")).is_err(),
            "same /64 shares a bucket"
        );
        assert!(
            l.check(ip("2001:db8:1:3::1")).is_ok(),
            "another /64 does not"
        );
        assert_eq!(
            l.key(ip("::ffff:192.0.2.1")),
            ip("192.0.2.1"),
            "mapped IPv4 is IPv4"
        );
    }

    #[test]
    fn route_total_applies_across_clients() {
        let clock = FakeRelativeClock::default();
        let mut s = spec("100/s", 100);
        s.total = Some(("2/s".parse().unwrap(), NonZeroU32::new(2).unwrap()));
        let l = RouteLimiter::with_clock(s, clock);
        assert!(l.check(ip("192.0.2.1")).is_ok());
        assert!(l.check(ip("192.0.2.2")).is_ok());
        assert_eq!(l.check(ip("192.0.2.3")).unwrap_err().scope(), "total");
    }

    #[test]
    fn a_million_distinct_keys_stay_under_the_cap() {
        let clock = FakeRelativeClock::default();
        let mut s = spec("10/s", 10);
        s.max_keys = 4096;
        let l = RouteLimiter::with_clock(s, clock);
        for i in 0..1_000_000u32 {
            let _ = l.check(IpAddr::V4(i.into()));
        }
        assert!(l.tracked_keys() <= 4096, "tracked {}", l.tracked_keys());
        assert!(l.evictions() >= 1_000_000 - 4096);
    }

    #[test]
    fn an_abusive_key_is_not_evicted_before_idle_ones() {
        let clock = FakeRelativeClock::default();
        let mut s = spec("1/s", 2);
        s.max_keys = 1024;
        let l = RouteLimiter::with_clock(s, clock.clone());
        let abuser = ip("198.51.100.66");
        assert!(l.check(abuser).is_ok());
        assert!(l.check(abuser).is_ok());
        assert!(l.check(abuser).is_err(), "abuser spent its burst");
        // Many fresh keys arrive; the abuser's shard fills and evicts by lowest TAT.
        clock.advance(Duration::from_millis(100));
        for i in 0..10_000u32 {
            let _ = l.check(IpAddr::V4((0x0a00_0000 + i).into()));
        }
        assert!(
            l.check(abuser).is_err(),
            "the abuser must not come back with a fresh burst after evictions"
        );
    }

    #[test]
    fn sweep_drops_keys_whose_bucket_is_full_again() {
        let clock = FakeRelativeClock::default();
        let l = RouteLimiter::with_clock(spec("10/s", 5), clock.clone());
        for i in 0..100u32 {
            let _ = l.check(IpAddr::V4(i.into()));
        }
        assert_eq!(l.tracked_keys(), 100);
        clock.advance(Duration::from_secs(5));
        assert_eq!(l.sweep().0, 0);
    }

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!("20/s".parse::<Rate>().unwrap().to_string(), "20/s");
        assert!("0/s".parse::<Rate>().is_err());
        assert!("5/d".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }
}

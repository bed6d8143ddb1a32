//! Replay protection: the delivery ids a route has accepted, remembered for a window in a bounded map.
//!
//! An id is claimed when its request is verified and settled when the backend answers: a non-5xx answer
//! keeps it, so a repeat is refused (409) until the window ends; a 5xx, a timeout, a connection error
//! or a client that went away releases it (the guard's `Drop`), so the provider's retry goes through.
//! While the first delivery is still in flight a duplicate is refused too: the backend is already
//! handling it. The window counts from the claim, not the answer: an id goes into the map once, with
//! its expiry, and a successful answer only takes it off the small in-flight set, so the request
//! path touches the large map (which misses the CPU's caches) once per id, not three times.
//!
//! Ids are stored as the first 96 bits of a SHA-256 digest under a per-cache random salt: fixed size,
//! nothing a provider put in a header is kept, and no sender can predict where an id lands in the map,
//! so the map finds a digest's bucket from its first eight bytes (no second, keyed hash per lookup; no
//! bucket grinding). Two of the ids one cache holds sharing 96 bits is out of reach (about n²/2⁹⁷:
//! 10⁻¹⁹ for 100,000 ids). Expiries are 8-byte stamps, so an entry is 20 bytes, and three of them
//! share one cache line of the map ([`IdTable`]): a claim misses the CPU's caches once per id.
//!
//! When the map is full, the oldest ids go in a batch: every id (not in flight) whose expiry is no
//! later than the `max_entries / 16`-th oldest, found in a queue of expiries kept in claim order
//! (the window being fixed, that is expiry order). One pass over the map then makes room for a
//! sixteenth of it, instead of a lookup of the oldest id (another cache miss) for every new one; about
//! fifteen sixteenths of `max_entries`, the newest, are always kept (ids that expire in the same
//! millisecond go together). In-flight claims are never evicted. The pass over a full 100,000-id map
//! takes ~0.5 ms, once per ~6,000 new ids. The periodic sweep drops expired ids the same way.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::rand::{SecureRandom, SystemRandom};

use super::id_table::{IdTable, Key};
use crate::admission::ban::Now;
use crate::config::webhook::ReplayConfig;

/// Milliseconds since the cache was built: an expiry in 8 bytes instead of an `Instant`'s 16.
type Stamp = u64;

/// The fraction of `max_entries` one eviction pass makes room for.
const EVICTION_BATCH_DIVISOR: usize = 16;

/// Hashes a salted digest by its first eight bytes, for the in-flight set: the salt makes them
/// unpredictable, so they are as good as a keyed hash of the id.
#[derive(Default)]
struct DigestPrefix(u64);

impl Hasher for DigestPrefix {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(head) = bytes.first_chunk::<8>() {
            self.0 = u64::from_ne_bytes(*head);
        }
    }

    /// The array's length prefix: the same for every key.
    fn write_usize(&mut self, _: usize) {}
}

type ByDigest = BuildHasherDefault<DigestPrefix>;

/// The remembered ids, the claims still in flight and the expiries in claim order.
#[derive(Default)]
struct Ids {
    /// Every remembered id (claimed or accepted) and when its window ends.
    map: IdTable,
    /// Claims not settled yet: refused as duplicates, never evicted, removed from `map` if released.
    in_flight: HashSet<Key, ByDigest>,
    /// One expiry per claimed id, oldest first: where an eviction batch ends. A released id's
    /// expiry stays until it comes up (it only moves a batch's end a little).
    expiries: VecDeque<Stamp>,
}

impl Ids {
    /// Whether `key` is refused: in flight, or accepted and inside its window.
    fn holds(&self, key: &Key, now: Stamp) -> bool {
        self.in_flight.contains(key) || self.map.get(key).is_some_and(|until| until > now)
    }

    /// Drops every id, not in flight, whose window ends no later than `through`, and those expiries
    /// from the queue; returns how many of the dropped ids were still inside their window at `now`.
    fn drop_through(&mut self, through: Stamp, now: Stamp) -> u64 {
        let in_flight = &self.in_flight;
        let mut early = 0;
        self.map.retain(|key, until| {
            let drop = until <= through && !in_flight.contains(key);
            early += u64::from(drop && until > now);
            !drop
        });
        let passed = self.expiries.partition_point(|&until| until <= through);
        self.expiries.drain(..passed);
        early
    }

    /// Makes room for `needed` more ids under `max`: the oldest batch goes (expired ones first, being
    /// the oldest). Returns the evictions (ids dropped inside their window). With only in-flight
    /// claims left the map may pass `max` by the requests in flight.
    fn make_room(&mut self, needed: usize, max: usize, now: Stamp) -> u64 {
        if self.map.len() + needed <= max || self.expiries.is_empty() {
            return 0;
        }
        let over = self.map.len() + needed - max;
        let batch = over
            .max(max / EVICTION_BATCH_DIVISOR)
            .min(self.expiries.len());
        self.drop_through(self.expiries[batch - 1], now)
    }

    /// Rebuilds the expiry queue from the map when released claims have left it more than twice
    /// as long as it needs to be, so a backend answering 5xx for hours cannot grow it.
    fn compact_expiries(&mut self) {
        if self.expiries.len() <= 2 * self.map.len().max(EVICTION_BATCH_DIVISOR) {
            return;
        }
        let mut stamps: Vec<Stamp> = self.map.expiries().collect();
        stamps.sort_unstable();
        self.expiries = stamps.into();
    }
}

/// One route's accepted ids.
pub struct ReplayCache {
    ids: Mutex<Ids>,
    salt: [u8; 16],
    pub spec: ReplayConfig,
    evictions: AtomicU64,
    now: Now,
    /// What stamps count from.
    epoch: Instant,
}

/// A repeat of an id that is accepted or in flight.
#[derive(Debug, PartialEq, Eq)]
pub struct Replayed;

impl ReplayCache {
    pub fn new(spec: ReplayConfig, now: Now) -> Arc<Self> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .expect("system randomness");
        Arc::new(Self {
            ids: Mutex::new(Ids::default()),
            salt,
            spec,
            evictions: AtomicU64::new(0),
            epoch: now(),
            now,
        })
    }

    pub fn with_system_clock(spec: ReplayConfig) -> Arc<Self> {
        Self::new(spec, Arc::new(Instant::now))
    }

    /// The salted digest an id is stored as.
    fn key(&self, id: &[u8]) -> Key {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.salt);
        ctx.update(id);
        let mut key = Key::default();
        key.copy_from_slice(&ctx.finish().as_ref()[..size_of::<Key>()]);
        key
    }

    /// The clock now, as a stamp.
    fn stamp(&self) -> Stamp {
        let since = (self.now)().saturating_duration_since(self.epoch);
        Stamp::try_from(since.as_millis()).unwrap_or(Stamp::MAX)
    }

    fn window_ms(&self) -> Stamp {
        Stamp::try_from(self.spec.window.as_millis()).unwrap_or(Stamp::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims every id of one delivery, or none if any of them is taken.
    pub fn claim(self: &Arc<Self>, ids: &[Vec<u8>]) -> Result<Claim, Replayed> {
        let now = self.stamp();
        let until = now.saturating_add(self.window_ms());
        let keys: Vec<Key> = ids.iter().map(|id| self.key(id)).collect();
        let mut ids = self.lock();
        if keys.iter().any(|k| ids.holds(k, now)) {
            return Err(Replayed);
        }
        let evicted = ids.make_room(keys.len(), self.spec.max_entries, now);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        for k in &keys {
            ids.map.insert(*k, until);
            ids.in_flight.insert(*k);
            // Kept in order although claims that read the clock at once may lock in either order.
            let queued = ids.expiries.back().map_or(until, |&last| until.max(last));
            ids.expiries.push_back(queued);
        }
        Ok(Claim {
            cache: self.clone(),
            keys,
            settled: false,
        })
    }

    /// Ids held (accepted, possibly expired, and in flight).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids dropped to stay under `max_entries` before their window ended.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Drops expired entries (called periodically, off the request path): one pass over the map,
    /// only when some expiry has passed. Returns the ids held.
    pub fn sweep(&self) -> usize {
        let now = self.stamp();
        let mut ids = self.lock();
        if ids.expiries.front().is_some_and(|&until| until <= now) {
            ids.drop_through(now, now);
        }
        ids.compact_expiries();
        ids.map.len()
    }
}

/// A delivery's claim on its ids. Settle it with the backend's status; dropped unsettled, it releases
/// the ids so a retry can go through.
pub struct Claim {
    cache: Arc<ReplayCache>,
    keys: Vec<Key>,
    settled: bool,
}

impl Claim {
    /// Keeps the ids for the rest of their window unless the backend failed (5xx).
    pub fn settle(mut self, status: http::StatusCode) {
        if status.is_server_error() {
            return; // Drop releases.
        }
        self.settled = true;
        let mut ids = self.cache.lock();
        for k in &self.keys {
            ids.in_flight.remove(k);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.settled {
            let mut ids = self.cache.lock();
            for k in &self.keys {
                ids.in_flight.remove(k);
                ids.map.remove(k);
            }
            ids.compact_expiries();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::sync::atomic::AtomicU64 as Clock;
    use std::time::Duration;

    /// A cache whose clock counts seconds from 0, with a 600-second window.
    fn cache(max: usize) -> (Arc<ReplayCache>, Arc<Clock>) {
        cache_ticking(Duration::from_secs(1), Duration::from_secs(600), max)
    }

    /// A cache whose clock counts `tick`s from 0.
    fn cache_ticking(
        tick: Duration,
        window: Duration,
        max: usize,
    ) -> (Arc<ReplayCache>, Arc<Clock>) {
        let start = Instant::now();
        let ticks = Arc::new(Clock::new(0));
        let t = ticks.clone();
        let now: Now = Arc::new(move || start + tick * t.load(Ordering::Relaxed) as u32);
        let spec = ReplayConfig {
            window,
            max_entries: max,
        };
        (ReplayCache::new(spec, now), ticks)
    }

    fn id(s: &str) -> Vec<Vec<u8>> {
        vec![s.as_bytes().to_vec()]
    }

    /// Accepts `k{i}` for each `i` in `ids`, one second apart (at second `i`).
    fn accept_in_turn(c: &Arc<ReplayCache>, clock: &Clock, ids: std::ops::Range<u64>) {
        for i in ids {
            clock.store(i, Ordering::Relaxed);
            c.claim(&id(&format!("k{i}")))
                .unwrap()
                .settle(StatusCode::OK);
        }
    }

    #[test]
    fn ids_are_salted_per_cache_and_hashed_by_their_digest() {
        let (a, _) = cache(100);
        let (b, _) = cache(100);
        assert_ne!(
            a.key(b"id-1"),
            b.key(b"id-1"),
            "each cache has its own salt"
        );
        assert_ne!(a.key(b"id-1"), a.key(b"id-2"));
        let hash = |k: &Key| {
            use std::hash::BuildHasher;
            BuildHasherDefault::<DigestPrefix>::default().hash_one(k)
        };
        let k = a.key(b"id-1");
        assert_eq!(hash(&k), u64::from_ne_bytes(k[..8].try_into().unwrap()));
        // Keys equal in their first eight bytes share a bucket but stay distinct entries.
        let (c, _) = cache(100);
        let mut ids = c.lock();
        let mut other = k;
        other[11] ^= 1;
        ids.map.insert(k, 1);
        ids.map.insert(other, 1);
        assert_eq!(ids.map.len(), 2);
    }

    #[test]
    fn an_id_is_held_to_the_millisecond() {
        let (c, ms) = cache_ticking(Duration::from_millis(1), Duration::from_millis(1500), 100);
        ms.store(700, Ordering::Relaxed);
        c.claim(&id("a")).unwrap().settle(StatusCode::OK);
        ms.store(2199, Ordering::Relaxed);
        assert!(
            c.claim(&id("a")).is_err(),
            "claimed at 0.7 s for 1.5 s: held at 2.199 s"
        );
        ms.store(2200, Ordering::Relaxed);
        assert_eq!(c.sweep(), 0, "expired at 2.2 s, and swept");
        assert!(c.claim(&id("a")).is_ok());
    }

    #[test]
    fn an_answered_id_is_refused_until_the_window_ends() {
        let (c, clock) = cache(100);
        c.claim(&id("a")).unwrap().settle(StatusCode::OK);
        assert_eq!(c.claim(&id("a")).err(), Some(Replayed));
        clock.store(599, Ordering::Relaxed);
        assert!(c.claim(&id("a")).is_err());
        clock.store(601, Ordering::Relaxed);
        assert!(c.claim(&id("a")).is_ok());
    }

    #[test]
    fn a_4xx_answer_counts_as_accepted() {
        let (c, _) = cache(100);
        c.claim(&id("a")).unwrap().settle(StatusCode::BAD_REQUEST);
        assert!(c.claim(&id("a")).is_err());
    }

    #[test]
    fn a_5xx_or_an_unsettled_claim_lets_the_retry_through() {
        let (c, _) = cache(100);
        c.claim(&id("a"))
            .unwrap()
            .settle(StatusCode::SERVICE_UNAVAILABLE);
        assert!(c.claim(&id("a")).is_ok(), "after a 5xx");
        drop(c.claim(&id("b")).unwrap());
        assert!(
            c.claim(&id("b")).is_ok(),
            "after a timeout or a dropped connection"
        );
    }

    #[test]
    fn a_duplicate_in_flight_is_refused() {
        let (c, _) = cache(100);
        let first = c.claim(&id("a")).unwrap();
        assert!(c.claim(&id("a")).is_err());
        first.settle(StatusCode::OK);
        assert!(c.claim(&id("a")).is_err());
    }

    #[test]
    fn any_shared_id_is_a_replay() {
        let (c, _) = cache(100);
        c.claim(&[b"mac:1".to_vec(), b"id:x".to_vec()])
            .unwrap()
            .settle(StatusCode::OK);
        assert!(
            c.claim(&[b"mac:1".to_vec(), b"id:y".to_vec()]).is_err(),
            "edited id"
        );
        assert!(c.claim(&[b"mac:2".to_vec(), b"id:y".to_vec()]).is_ok());
    }

    #[test]
    fn stays_bounded_and_evicts_the_oldest_first() {
        let (c, clock) = cache(16);
        accept_in_turn(&c, &clock, 0..16);
        let in_flight = c.claim(&id("pending")).unwrap();
        for i in 16..40 {
            accept_in_turn(&c, &clock, i..i + 1);
            assert!(c.len() <= 16);
        }
        assert_eq!(
            c.evictions(),
            25,
            "one id made room for each of 25 new ones"
        );
        assert!(
            c.claim(&id("pending")).is_err(),
            "in-flight claims are never evicted"
        );
        for i in 25..40 {
            assert!(c.claim(&id(&format!("k{i}"))).is_err(), "k{i} is kept");
        }
        assert!(c.claim(&id("k24")).is_ok(), "the oldest went first");
        drop(in_flight);
    }

    #[test]
    fn a_full_cache_makes_room_for_a_sixteenth_of_it_at_once() {
        let (c, clock) = cache(64);
        accept_in_turn(&c, &clock, 0..64);
        assert_eq!(c.len(), 64);
        let pending = c.claim(&id("k64")).unwrap();
        assert_eq!(c.len(), 61, "the four oldest went in one pass");
        assert_eq!(c.evictions(), 4);
        for i in 4..64 {
            assert!(c.claim(&id(&format!("k{i}"))).is_err(), "k{i} is kept");
        }
        // The next three claims fit without another pass.
        accept_in_turn(&c, &clock, 65..68);
        assert_eq!((c.len(), c.evictions()), (64, 4));
        assert!(
            c.claim(&id("k0")).is_ok(),
            "an evicted id is accepted again"
        );
        assert!(c.claim(&id("k64")).is_err(), "still in flight");
        drop(pending);
    }

    #[test]
    fn expired_ids_are_reclaimed_before_live_ones_are_evicted() {
        let (c, clock) = cache(32);
        for i in 0..32 {
            c.claim(&id(&format!("old{i}")))
                .unwrap()
                .settle(StatusCode::OK);
        }
        clock.store(601, Ordering::Relaxed);
        c.claim(&id("new")).unwrap().settle(StatusCode::OK);
        assert_eq!(c.evictions(), 0, "the ids that went had expired");
        assert!(c.claim(&id("new")).is_err());
        assert!(c.claim(&id("old0")).is_ok(), "its window is over");
    }

    #[test]
    fn released_claims_do_not_grow_the_cache() {
        let (c, _) = cache(100);
        c.claim(&id("kept")).unwrap().settle(StatusCode::OK);
        for i in 0..10_000 {
            drop(c.claim(&id(&format!("failed{i}"))).unwrap());
        }
        assert_eq!(c.len(), 1);
        let queued = c.lock().expiries.len();
        assert!(queued <= 2 * 16 + 1, "{queued} expiries queued for one id");
        assert!(c.claim(&id("kept")).is_err());
    }

    #[test]
    fn an_in_flight_claim_outlives_its_window_and_a_sweep() {
        let (c, clock) = cache(100);
        let slow = c.claim(&id("slow")).unwrap();
        clock.store(700, Ordering::Relaxed);
        assert_eq!(c.sweep(), 1, "in flight: kept");
        assert!(
            c.claim(&id("slow")).is_err(),
            "a duplicate of a request in flight"
        );
        slow.settle(StatusCode::OK);
        assert!(
            c.claim(&id("slow")).is_ok(),
            "answered, and its window is over"
        );
    }

    #[test]
    fn a_sweep_drops_only_what_expired() {
        let (c, clock) = cache(100);
        c.claim(&id("a")).unwrap().settle(StatusCode::OK);
        // Past a's window: a is claimed again (its old queue entry goes stale) and b is accepted.
        clock.store(601, Ordering::Relaxed);
        let again = c.claim(&id("a")).unwrap();
        c.claim(&id("b")).unwrap().settle(StatusCode::OK);
        assert_eq!(c.sweep(), 2, "a in flight and b accepted are both kept");
        assert_eq!(
            c.claim(&id("b")).err(),
            Some(Replayed),
            "b is inside its window"
        );
        again.settle(StatusCode::OK);
        clock.store(1202, Ordering::Relaxed);
        assert_eq!(c.sweep(), 0, "both windows are over");
    }
}

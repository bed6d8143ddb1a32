//! Replay protection: the delivery ids a route has accepted, remembered for a window in a bounded map.
//!
//! An id is claimed when its request is verified and settled when the backend answers: a non-5xx answer
//! keeps it for the window, so a repeat is refused (409); a 5xx, a timeout, a connection error or a
//! client that went away releases it (the guard's `Drop`), so the provider's retry goes through. While
//! the first delivery is still in flight a duplicate is refused too: the backend is already handling it.
//!
//! Ids are stored as the first 128 bits of a SHA-256 digest under a per-cache random salt: fixed size,
//! nothing a provider put in a header is kept, and no sender can predict where an id lands in the map,
//! so the map hashes a digest by taking its first eight bytes (no second, keyed hash per lookup; no
//! bucket grinding). Two of the ids one cache holds sharing 128 bits is out of reach (about n²/2¹²⁹).
//! Half the digest, and expiries as 8-byte stamps, halve the map: a full map of random digests is
//! far larger than the CPU's caches, so nearly every lookup misses them, and a smaller map misses less.
//! Accepted ids also go into a queue in the order they were accepted, which (the window being fixed)
//! is the order they expire in: when the map is full, the oldest accepted id goes, one per new id, in
//! constant time (no scan of the map under the lock). In-flight claims are never evicted.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::rand::{SecureRandom, SystemRandom};

use crate::admission::ban::Now;
use crate::config::webhook::ReplayConfig;

/// A stored id: the first 128 bits of its salted digest.
type Key = [u8; 16];

/// Milliseconds since the cache was built: an expiry in 8 bytes instead of an `Instant`'s 16.
type Stamp = u64;

/// An id's state: in flight, or accepted until a stamp. Eight bytes; 0 is in flight (`accepted`
/// keeps every expiry above 0).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry(Stamp);

impl Entry {
    const IN_FLIGHT: Entry = Entry(0);

    fn accepted(until: Stamp) -> Entry {
        Entry(until.max(1))
    }

    /// The expiry of an accepted id.
    fn until(self) -> Option<Stamp> {
        (self.0 != 0).then_some(self.0)
    }
}

/// Hashes a salted digest by its first eight bytes: the salt makes them unpredictable, so they are
/// as good as a keyed hash of the id.
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

/// The map of ids and the acceptance order.
#[derive(Default)]
struct Ids {
    map: HashMap<Key, Entry, BuildHasherDefault<DigestPrefix>>,
    /// Accepted ids, oldest first, with the expiry they were accepted with. An id released or
    /// accepted again since is skipped when it comes up (its entry no longer matches).
    order: VecDeque<(Key, Stamp)>,
}

impl Ids {
    /// Drops every accepted id whose window is over. Every accepted id has its entry in `order`,
    /// which is in expiry order, so only the expired head of the queue is read, never the whole map;
    /// a queue entry gone stale (its id released or claimed again) is popped and its id kept.
    fn drop_expired(&mut self, now: Stamp) {
        while let Some(&(key, until)) = self.order.front() {
            if until > now {
                return;
            }
            self.order.pop_front();
            self.remove_if_current(key, until);
        }
    }

    /// Removes `key` if its entry is still the acceptance a queue entry recorded; whether it was.
    fn remove_if_current(&mut self, key: Key, until: Stamp) -> bool {
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(held)
                if held.get().until() == Some(until) =>
            {
                held.remove();
                true
            }
            _ => false,
        }
    }

    /// Pops the oldest accepted id; whether it was still unexpired (an eviction, not a clean-up).
    /// `None` when nothing accepted is left.
    fn drop_oldest(&mut self, now: Stamp) -> Option<bool> {
        while let Some((key, until)) = self.order.pop_front() {
            if self.remove_if_current(key, until) {
                return Some(until > now);
            }
        }
        None
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
        let keys: Vec<Key> = ids.iter().map(|id| self.key(id)).collect();
        let mut ids = self.lock();
        let taken = |e: &Entry| e.until().is_none_or(|until| until > now);
        if keys.iter().any(|k| ids.map.get(k).is_some_and(taken)) {
            return Err(Replayed);
        }
        // Make room: the oldest accepted ids go first (expired ones are simply cleaned up). With only
        // in-flight claims left the map may pass `max_entries` by the requests in flight.
        while ids.map.len() + keys.len() > self.spec.max_entries {
            match ids.drop_oldest(now) {
                Some(true) => {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                Some(false) => {}
                None => break,
            }
        }
        for k in &keys {
            ids.map.insert(*k, Entry::IN_FLIGHT);
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

    /// Drops expired entries (called periodically, off the request path).
    pub fn sweep(&self) -> usize {
        let now = self.stamp();
        let mut ids = self.lock();
        ids.drop_expired(now);
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
    /// Keeps the ids for the window unless the backend failed (5xx).
    pub fn settle(mut self, status: http::StatusCode) {
        if status.is_server_error() {
            return; // Drop releases.
        }
        self.settled = true;
        let until = Entry::accepted(self.cache.stamp().saturating_add(self.cache.window_ms()));
        let mut ids = self.cache.lock();
        for k in &self.keys {
            ids.map.insert(*k, until);
            ids.order.push_back((*k, until.0));
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.settled {
            let mut ids = self.cache.lock();
            for k in &self.keys {
                ids.map.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::sync::atomic::AtomicU64 as Clock;
    use std::time::Duration;

    fn cache(max: usize) -> (Arc<ReplayCache>, Arc<Clock>) {
        let start = Instant::now();
        let secs = Arc::new(Clock::new(0));
        let s = secs.clone();
        let now: Now = Arc::new(move || start + Duration::from_secs(s.load(Ordering::Relaxed)));
        let spec = ReplayConfig {
            window: Duration::from_secs(600),
            max_entries: max,
        };
        (ReplayCache::new(spec, now), secs)
    }

    fn id(s: &str) -> Vec<Vec<u8>> {
        vec![s.as_bytes().to_vec()]
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
        other[15] ^= 1;
        ids.map.insert(k, Entry::IN_FLIGHT);
        ids.map.insert(other, Entry::IN_FLIGHT);
        assert_eq!(ids.map.len(), 2);
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
        for i in 0..16 {
            clock.store(i, Ordering::Relaxed);
            c.claim(&id(&format!("k{i}")))
                .unwrap()
                .settle(StatusCode::OK);
        }
        let in_flight = c.claim(&id("pending")).unwrap();
        for i in 16..40 {
            c.claim(&id(&format!("k{i}")))
                .unwrap()
                .settle(StatusCode::OK);
            assert!(c.len() <= 16);
        }
        assert!(c.evictions() > 0);
        assert!(
            c.claim(&id("pending")).is_err(),
            "in-flight claims are never evicted"
        );
        assert!(c.claim(&id("k39")).is_err(), "the newest is kept");
        assert!(c.claim(&id("k0")).is_ok(), "the oldest went first");
        drop(in_flight);
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

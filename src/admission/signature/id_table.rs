//! The replay cache's table of ids and their expiries: one 64-byte cache line holds three ids with
//! their expiries, so that looking an id up and inserting it touch one line.
//!
//! A route's table is large (100,000 ids, 4 MiB, by default) and every delivery brings a new id, so
//! each lookup misses the CPU's caches. A `HashMap` keeps its control bytes and its entries in two
//! arrays: a lookup missed twice, once on each, and the unlock after the insert waited for the
//! second. Here a bucket is one line: three 8-byte expiries, three 12-byte ids, and a count of ids
//! that had to go past it.
//!
//! Ids are salted digests (see `replay`), so their first eight bytes pick the bucket directly. A full
//! bucket sends an insert on to the next one (linear probing) and counts it there, so a lookup stops
//! at the first bucket that nothing went past; removing the id takes the counts down again, so they
//! stay exact and no tombstones build up. The table doubles when it is five-eighths full: at the
//! default 100,000 ids, 65,536 buckets, about 1.5 ids each, and ~7 % of them have ever had one go
//! past.

/// A stored id: the first 96 bits of its salted digest.
pub type Key = [u8; 12];

/// An id's expiry; the table only compares it with 0.
type Expiry = u64;

/// Ids per bucket: three ids and their expiries fill a 64-byte line with the overflow count.
const SLOTS: usize = 3;

/// A slot whose expiry is this is empty. Expiries are at least 1.
const EMPTY: Expiry = 0;

/// One cache line of the table. The expiries come first, so that nothing needs padding.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    expiries: [Expiry; SLOTS],
    keys: [Key; SLOTS],
    /// Ids whose probe started at or before this bucket and went past it: while it is 0, a lookup
    /// that did not find its id here can stop.
    passed: u32,
}

const EMPTY_BUCKET: Bucket = Bucket {
    expiries: [EMPTY; SLOTS],
    keys: [[0; 12]; SLOTS],
    passed: 0,
};

/// Ids with an expiry each (non-zero), in open addressing over cache-line buckets.
#[derive(Default)]
pub struct IdTable {
    /// A power of two of them, or none before the first insert.
    buckets: Vec<Bucket>,
    len: usize,
}

/// Where an id is: its bucket and slot.
struct Found {
    bucket: usize,
    slot: usize,
}

impl IdTable {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The bucket an id's probe starts at: its first eight bytes, which the salt makes unpredictable.
    fn home(&self, key: &Key) -> usize {
        let head = u64::from_ne_bytes(*key.first_chunk::<8>().expect("12 bytes"));
        // The mask keeps it below the bucket count, a `usize`.
        (head & (self.buckets.len() as u64 - 1)) as usize
    }

    fn next(&self, bucket: usize) -> usize {
        (bucket + 1) & (self.buckets.len() - 1)
    }

    fn find(&self, key: &Key) -> Option<Found> {
        if self.buckets.is_empty() {
            return None;
        }
        let mut b = self.home(key);
        // At most once round: removals can leave every bucket counted as passed (each holding an
        // id from the one before), and a lookup must still end.
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            for slot in 0..SLOTS {
                if bucket.expiries[slot] != EMPTY && bucket.keys[slot] == *key {
                    return Some(Found { bucket: b, slot });
                }
            }
            if bucket.passed == 0 {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// The id's expiry, if the table holds it.
    pub fn get(&self, key: &Key) -> Option<Expiry> {
        self.find(key)
            .map(|f| self.buckets[f.bucket].expiries[f.slot])
    }

    /// Stores the id with its expiry, replacing the expiry if it is there already. An expiry of 0
    /// (which marks an empty slot) is stored as 1.
    pub fn insert(&mut self, key: Key, expiry: Expiry) {
        let expiry = expiry.max(1);
        if let Some(f) = self.find(&key) {
            self.buckets[f.bucket].expiries[f.slot] = expiry;
            return;
        }
        if (self.len + 1) * 8 > self.buckets.len() * SLOTS * 5 {
            self.grow();
        }
        self.place(key, expiry);
        self.len += 1;
    }

    /// Puts an id that is not in the table into the first free slot of its probe, counting it in
    /// every full bucket it goes past.
    fn place(&mut self, key: Key, expiry: Expiry) {
        let mut b = self.home(&key);
        loop {
            let bucket = &mut self.buckets[b];
            if let Some(slot) = bucket.expiries.iter().position(|&e| e == EMPTY) {
                bucket.keys[slot] = key;
                bucket.expiries[slot] = expiry;
                return;
            }
            bucket.passed += 1;
            b = self.next(b);
        }
    }

    /// Doubles the buckets (at least 16) and puts every id back.
    fn grow(&mut self) {
        let count = (self.buckets.len() * 2).max(16);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY_BUCKET; count]);
        for bucket in &old {
            for slot in 0..SLOTS {
                if bucket.expiries[slot] != EMPTY {
                    self.place(bucket.keys[slot], bucket.expiries[slot]);
                }
            }
        }
    }

    /// Takes the id out; returns its expiry if it was there.
    pub fn remove(&mut self, key: &Key) -> Option<Expiry> {
        let found = self.find(key)?;
        let expiry = self.buckets[found.bucket].expiries[found.slot];
        self.clear(key, found);
        Some(expiry)
    }

    /// Empties the id's slot and takes it out of the counts of the buckets its probe went past.
    fn clear(&mut self, key: &Key, at: Found) {
        self.buckets[at.bucket].expiries[at.slot] = EMPTY;
        self.len -= 1;
        let mut b = self.home(key);
        while b != at.bucket {
            self.buckets[b].passed -= 1;
            b = self.next(b);
        }
    }

    /// Keeps only the ids for which `keep(id, expiry)` is true: one pass over the table.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, Expiry) -> bool) {
        for b in 0..self.buckets.len() {
            for slot in 0..SLOTS {
                let bucket = &self.buckets[b];
                let (key, expiry) = (bucket.keys[slot], bucket.expiries[slot]);
                if expiry != EMPTY && !keep(&key, expiry) {
                    self.clear(&key, Found { bucket: b, slot });
                }
            }
        }
    }

    /// Every expiry held, in no particular order.
    pub fn expiries(&self) -> impl Iterator<Item = Expiry> + '_ {
        self.buckets
            .iter()
            .flat_map(|b| b.expiries)
            .filter(|&e| e != EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A key whose home bucket (in a table of `buckets`) is `home`, made distinct by `n`.
    fn key_at(home: usize, n: u8) -> Key {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&(home as u64).to_ne_bytes());
        k[11] = n;
        k
    }

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(size_of::<Bucket>(), 64);
        assert_eq!(align_of::<Bucket>(), 64);
    }

    #[test]
    fn holds_what_was_inserted_until_it_is_removed() {
        let mut t = IdTable::default();
        assert_eq!(t.get(&key_at(3, 0)), None);
        assert_eq!(t.remove(&key_at(3, 0)), None);
        t.insert(key_at(3, 0), 7);
        t.insert(key_at(3, 1), 8);
        assert_eq!(
            (t.get(&key_at(3, 0)), t.get(&key_at(3, 1))),
            (Some(7), Some(8))
        );
        t.insert(key_at(3, 0), 9);
        assert_eq!(
            (t.len(), t.get(&key_at(3, 0))),
            (2, Some(9)),
            "replaced, not added"
        );
        assert_eq!(t.remove(&key_at(3, 0)), Some(9));
        assert_eq!((t.len(), t.get(&key_at(3, 0))), (1, None));
        assert_eq!(t.get(&key_at(3, 1)), Some(8));
    }

    #[test]
    fn ids_that_overflow_a_bucket_are_found_and_the_counts_go_back_to_zero() {
        let mut t = IdTable::default();
        t.insert(key_at(0, 0), 1); // 16 buckets from here on
        // Eight ids for bucket 5: three there, three in 6, two in 7.
        for n in 1..=8 {
            t.insert(key_at(5, n), u64::from(n));
        }
        assert_eq!((t.buckets[5].passed, t.buckets[6].passed), (5, 2));
        for n in 1..=8 {
            assert_eq!(t.get(&key_at(5, n)), Some(u64::from(n)), "id {n}");
        }
        // One that was never inserted is looked for across the run and not found.
        assert_eq!(t.get(&key_at(5, 99)), None);
        // Removing an id from bucket 7 takes it out of 5's and 6's counts.
        assert_eq!(t.remove(&key_at(5, 8)), Some(8));
        assert_eq!((t.buckets[5].passed, t.buckets[6].passed), (4, 1));
        t.retain(|k, _| k[11] % 2 == 0);
        assert_eq!(t.len(), 4, "ids 0, 2, 4 and 6 are left");
        assert_eq!(t.get(&key_at(0, 0)), Some(1));
        for n in 1..=8 {
            let want = (n % 2 == 0 && n < 8).then_some(u64::from(n));
            assert_eq!(t.get(&key_at(5, n)), want, "id {n}");
        }
        assert_eq!((t.buckets[5].passed, t.buckets[6].passed), (2, 0));
        t.retain(|_, _| false);
        assert_eq!(t.len(), 0);
        assert!(t.buckets.iter().all(|b| b.passed == 0), "no stale counts");
    }

    /// Each bucket left holding one id that overflowed from the bucket before it: every bucket
    /// is counted as passed, and a lookup of an absent id still ends.
    #[test]
    fn a_lookup_ends_when_every_bucket_is_counted_as_passed() {
        let mut t = IdTable::default();
        t.insert(key_at(0, 0), 1);
        t.remove(&key_at(0, 0));
        let n = t.buckets.len();
        for b in 0..n {
            for i in 0..4 {
                t.insert(key_at(b, i), 1);
            }
            for i in 0..3 {
                t.remove(&key_at(b, i));
            }
        }
        assert_eq!((t.len(), t.buckets.len()), (n, n), "no growth");
        assert!(t.buckets.iter().all(|b| b.passed > 0));
        assert_eq!(t.get(&key_at(5, 99)), None);
        assert_eq!(t.get(&key_at(5, 3)), Some(1));
    }

    #[test]
    fn a_probe_wraps_around_the_last_bucket() {
        let mut t = IdTable::default();
        t.insert(key_at(0, 0), 1);
        let last = t.buckets.len() - 1;
        for n in 1..=5 {
            t.insert(key_at(last, n), 2);
        }
        assert_eq!(t.buckets[last].passed, 2);
        assert_eq!(t.get(&key_at(last, 5)), Some(2));
        assert_eq!(t.remove(&key_at(last, 5)), Some(2));
        assert_eq!(t.buckets[last].passed, 1);
    }

    /// Random inserts, removals and retains against a `HashMap`, through growth: the same ids and
    /// expiries, and counts that are exactly the ids that went past each bucket.
    #[test]
    fn behaves_as_a_map() {
        use proptest::prelude::*;
        #[derive(Debug, Clone)]
        enum Op {
            Insert(u16, u64),
            Remove(u16),
            RetainBelow(u64),
        }
        let op = prop_oneof![
            6 => (any::<u16>(), 1..1000u64).prop_map(|(k, e)| Op::Insert(k, e)),
            3 => any::<u16>().prop_map(Op::Remove),
            1 => (1..1000u64).prop_map(Op::RetainBelow),
        ];
        // Few distinct home buckets, so runs form and overflow.
        let key = |k: u16| key_at(usize::from(k % 64), (k / 64) as u8);
        proptest!(ProptestConfig::with_cases(64), |(ops in prop::collection::vec(op, 1..600))| {
            let mut t = IdTable::default();
            let mut m = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, e) => { t.insert(key(k), e); m.insert(key(k), e); }
                    Op::Remove(k) => prop_assert_eq!(t.remove(&key(k)), m.remove(&key(k))),
                    Op::RetainBelow(x) => { t.retain(|_, e| e < x); m.retain(|_, e| *e < x); }
                }
            }
            prop_assert_eq!(t.len(), m.len());
            for (k, e) in &m {
                prop_assert_eq!(t.get(k), Some(*e));
            }
            let mut held: Vec<u64> = t.expiries().collect();
            let mut want: Vec<u64> = m.values().copied().collect();
            held.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(held, want);
            let mut passed = vec![0u32; t.buckets.len()];
            for (b, bucket) in t.buckets.iter().enumerate() {
                for slot in 0..SLOTS {
                    if bucket.expiries[slot] != EMPTY {
                        let mut p = t.home(&bucket.keys[slot]);
                        while p != b {
                            passed[p] += 1;
                            p = t.next(p);
                        }
                    }
                }
            }
            let counts: Vec<u32> = t.buckets.iter().map(|b| b.passed).collect();
            prop_assert_eq!(counts, passed);
        });
    }
}

//! Temporary bans after repeated offences, as voice services run them: "5 webhook signature failures
//! within 15 minutes → ban 1 hour", "20 rate-limit refusals within a minute → ban 10 minutes".
//!
//! Offences are counted per rule and per client key (IPv6 by prefix, as the rate limiter does) in a
//! sliding window that keeps at most `count` timestamps per key. A banned key is refused at accept,
//! before TLS, and after the client address is known (for clients behind trusted proxies). Bans expire
//! on their own. Both maps are bounded by `max_entries`: expired entries go first, then the entries
//! closest to expiry (bans) or with the oldest last offence (strikes). The clock is injected.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::config::{BanRule, Offence};

/// A ban that has just been imposed, for the caller to record (metric, log, audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    pub rule: String,
    pub duration: Duration,
}

/// The clock bans run on; tests pass a manual one.
pub type Now = Arc<dyn Fn() -> Instant + Send + Sync>;

struct State {
    rules: Vec<BanRule>,
    /// Never banned and never counted (a provider's shared egress, a health checker).
    exempt: Vec<ipnet::IpNet>,
    /// (rule name, key) → offence times within the window, oldest first.
    strikes: HashMap<(String, IpAddr), VecDeque<Instant>>,
    /// key → ban end.
    bans: HashMap<IpAddr, Instant>,
}

/// The ban list. One per process; survives reloads (rules are replaced, bans and strikes kept).
pub struct BanList {
    state: Mutex<State>,
    /// Bans held (possibly expired), readable without the lock: with no bans, checks are free.
    held: AtomicUsize,
    max_entries: usize,
    ipv6_prefix: u8,
    now: Now,
}

impl BanList {
    pub fn new(rules: Vec<BanRule>, max_entries: usize, ipv6_prefix: u8, now: Now) -> Self {
        Self {
            state: Mutex::new(State {
                rules,
                exempt: Vec::new(),
                strikes: HashMap::new(),
                bans: HashMap::new(),
            }),
            held: AtomicUsize::new(0),
            max_entries: max_entries.max(1),
            ipv6_prefix,
            now,
        }
    }

    /// With the real monotonic clock.
    pub fn with_system_clock(rules: Vec<BanRule>, max_entries: usize, ipv6_prefix: u8) -> Self {
        Self::new(rules, max_entries, ipv6_prefix, Arc::new(Instant::now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the rules (on reload). Strikes of rules that no longer exist are dropped.
    pub fn set_rules(&self, rules: Vec<BanRule>) {
        let mut st = self.lock();
        st.strikes
            .retain(|(name, _), _| rules.iter().any(|r| &r.name == name));
        st.rules = rules;
    }

    /// Replaces the exempt networks (at start and on reload); bans they hold are lifted.
    pub fn set_exempt(&self, exempt: Vec<ipnet::IpNet>) {
        let mut st = self.lock();
        st.bans
            .retain(|ip, _| !exempt.iter().any(|n| n.contains(ip)));
        st.strikes
            .retain(|(_, ip), _| !exempt.iter().any(|n| n.contains(ip)));
        st.exempt = exempt;
        self.held.store(st.bans.len(), Ordering::Relaxed);
    }

    fn key(&self, ip: IpAddr) -> IpAddr {
        super::client_key(ip, self.ipv6_prefix)
    }

    /// Time left on `ip`'s ban, or `None` if it is not banned. Cheap when there are no bans.
    pub fn banned(&self, ip: IpAddr) -> Option<Duration> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let key = self.key(ip);
        let now = (self.now)();
        let mut st = self.lock();
        match st.bans.get(&key).copied() {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                st.bans.remove(&key);
                self.held.store(st.bans.len(), Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    /// Records one offence by `ip`; returns the ban if a rule fired now.
    pub fn record(&self, offence: Offence, ip: IpAddr) -> Option<NewBan> {
        let key = self.key(ip);
        let now = (self.now)();
        let mut st = self.lock();
        if st.exempt.iter().any(|n| n.contains(&ip.to_canonical())) {
            return None;
        }
        if st.bans.get(&key).is_some_and(|until| *until > now) {
            return None; // already banned
        }
        let rules: Vec<BanRule> = st
            .rules
            .iter()
            .filter(|r| r.on == offence)
            .cloned()
            .collect();
        let mut fired: Option<NewBan> = None;
        for rule in rules {
            let slot = (rule.name.clone(), key);
            if !st.strikes.contains_key(&slot) && st.strikes.len() >= self.max_entries {
                evict_strikes(&mut st.strikes, self.max_entries);
            }
            let times = st.strikes.entry(slot.clone()).or_default();
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > rule.window)
            {
                times.pop_front();
            }
            times.push_back(now);
            while times.len() > rule.count as usize {
                times.pop_front();
            }
            if times.len() >= rule.count as usize {
                st.strikes.remove(&slot);
                if fired.as_ref().is_none_or(|f| rule.duration > f.duration) {
                    fired = Some(NewBan {
                        rule: rule.name.clone(),
                        duration: rule.duration,
                    });
                }
            }
        }
        if let Some(ban) = &fired {
            if st.bans.len() >= self.max_entries {
                evict_bans(&mut st.bans, now, self.max_entries);
            }
            st.bans.insert(key, now + ban.duration);
            self.held.store(st.bans.len(), Ordering::Relaxed);
        }
        fired
    }

    /// Drops expired bans and stale strikes; returns the number of active bans (for the gauge).
    pub fn sweep(&self) -> usize {
        let now = (self.now)();
        let mut st = self.lock();
        st.bans.retain(|_, until| *until > now);
        self.held.store(st.bans.len(), Ordering::Relaxed);
        let longest_window = st.rules.iter().map(|r| r.window).max().unwrap_or_default();
        st.strikes.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) <= longest_window)
        });
        st.bans.len()
    }

    /// Active bans: the banned key (an address, or an IPv6 prefix) and the time left.
    pub fn list(&self) -> Vec<(IpAddr, Duration)> {
        let now = (self.now)();
        let mut out: Vec<(IpAddr, Duration)> = self
            .lock()
            .bans
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(ip, until)| (*ip, *until - now))
            .collect();
        out.sort();
        out
    }

    /// Lifts the ban on `ip`'s key (and forgets its offences); returns whether one was held.
    pub fn lift(&self, ip: IpAddr) -> bool {
        let key = self.key(ip);
        let mut st = self.lock();
        st.strikes.retain(|(_, k), _| *k != key);
        let had = st.bans.remove(&key).is_some();
        self.held.store(st.bans.len(), Ordering::Relaxed);
        had
    }

    pub fn active_bans(&self) -> usize {
        let now = (self.now)();
        self.lock()
            .bans
            .values()
            .filter(|until| **until > now)
            .count()
    }
}

/// Makes room for one ban: expired ones go first, then the ones closest to expiry until an eighth of
/// the room is free, so a flood of new bans pays for one scan per `cap / 8` inserts, not one per insert.
fn evict_bans(bans: &mut HashMap<IpAddr, Instant>, now: Instant, cap: usize) {
    bans.retain(|_, until| *until > now);
    // Leave an eighth free, so the next scan is `cap / 8` inserts away even if few bans had expired.
    let target = cap.saturating_sub((cap / 8).max(1));
    if bans.len() > target {
        let excess = bans.len() - target;
        super::evict_lowest(bans, excess, |until| *until);
    }
}

/// Makes room for one key's offences: the eighth with the oldest last offence goes.
fn evict_strikes(strikes: &mut HashMap<(String, IpAddr), VecDeque<Instant>>, cap: usize) {
    super::evict_lowest(strikes, (cap / 8).max(1), |times| times.back().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ManualClock(Mutex<Instant>);
    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    fn setup(max: usize) -> (BanList, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        let c = clock.clone();
        let rules = vec![BanRule {
            name: "sig".into(),
            on: Offence::SignatureFailure,
            count: 5,
            window: Duration::from_secs(15 * 60),
            duration: Duration::from_secs(3600),
        }];
        (
            BanList::new(rules, max, 64, Arc::new(move || *c.0.lock().unwrap())),
            clock,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bans_are_listed_and_lifted() {
        let (bans, _) = setup(100);
        for _ in 0..5 {
            bans.record(Offence::SignatureFailure, ip("192.0.2.9"));
        }
        assert_eq!(bans.list().len(), 1);
        assert!(bans.lift(ip("192.0.2.9")));
        assert!(bans.list().is_empty() && bans.banned(ip("192.0.2.9")).is_none());
        assert!(!bans.lift(ip("192.0.2.9")));
    }

    #[test]
    fn exempt_addresses_are_never_counted_or_banned() {
        let (bans, _) = setup(100);
        for _ in 0..4 {
            bans.record(Offence::SignatureFailure, ip("198.51.100.9"));
        }
        bans.set_exempt(vec!["198.51.100.0/24".parse().unwrap()]);
        for _ in 0..10 {
            assert_eq!(
                bans.record(Offence::SignatureFailure, ip("198.51.100.9")),
                None
            );
        }
        assert_eq!(bans.banned(ip("198.51.100.9")), None);
        for _ in 0..4 {
            assert_eq!(
                bans.record(Offence::SignatureFailure, ip("192.0.2.1")),
                None
            );
        }
        assert!(
            bans.record(Offence::SignatureFailure, ip("192.0.2.1"))
                .is_some(),
            "others still are"
        );
        bans.set_exempt(vec!["192.0.2.1/32".parse().unwrap()]);
        assert_eq!(bans.banned(ip("192.0.2.1")), None, "exempting lifts a ban");
    }

    #[test]
    fn five_failures_within_the_window_ban_for_an_hour_then_expire() {
        let (bans, clock) = setup(100);
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            assert_eq!(bans.record(Offence::SignatureFailure, a), None);
            clock.advance(Duration::from_secs(60));
        }
        assert_eq!(bans.banned(a), None);
        let ban = bans.record(Offence::SignatureFailure, a).unwrap();
        assert_eq!(ban.rule, "sig");
        assert_eq!(bans.banned(a), Some(Duration::from_secs(3600)));
        assert_eq!(bans.active_bans(), 1);
        clock.advance(Duration::from_secs(3600));
        assert_eq!(bans.banned(a), None, "bans expire on their own");
        assert_eq!(bans.sweep(), 0);
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_ban() {
        let (bans, clock) = setup(100);
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            assert_eq!(bans.record(Offence::SignatureFailure, a), None);
            clock.advance(Duration::from_secs(4 * 60)); // 5 strikes span 16 minutes
        }
        assert_eq!(bans.banned(a), None);
    }

    #[test]
    fn other_offences_and_other_addresses_do_not_count() {
        let (bans, _) = setup(100);
        for _ in 0..10 {
            assert_eq!(bans.record(Offence::RateLimited, ip("192.0.2.1")), None);
        }
        for i in 0..4 {
            bans.record(
                Offence::SignatureFailure,
                ip(&format!("192.0.2.{}", 10 + i)),
            );
        }
        assert_eq!(bans.active_bans(), 0);
    }

    #[test]
    fn ipv6_is_banned_by_prefix() {
        let (bans, _) = setup(100);
        for i in 0..5 {
            bans.record(Offence::SignatureFailure, ip(&format!("2001:db8:1:2::{i}")));
        }
        assert!(
            bans.banned(ip("2001:db8:1:2:ffff::1")).is_some(),
            "the whole /64 is banned"
        );
        assert!(bans.banned(ip("2001:db8:1:3::1")).is_none());
    }

    #[test]
    fn the_lists_stay_bounded() {
        let (bans, _) = setup(1000);
        for i in 0..20_000u32 {
            let a = IpAddr::V4(i.into());
            for _ in 0..5 {
                bans.record(Offence::SignatureFailure, a);
            }
        }
        assert!(bans.active_bans() <= 1000);
        assert!(bans.lock().strikes.len() <= 1000);
    }

    #[test]
    fn a_full_ban_list_drops_the_bans_closest_to_expiry_first() {
        let (bans, clock) = setup(16);
        let ban = |i: u32| {
            for _ in 0..5 {
                bans.record(
                    Offence::SignatureFailure,
                    IpAddr::V4((0x0a00_0000 + i).into()),
                );
            }
        };
        ban(0); // ends soonest
        clock.advance(Duration::from_secs(600));
        for i in 1..=16 {
            ban(i);
        }
        assert!(bans.active_bans() <= 16);
        assert!(
            bans.banned(ip("10.0.0.0")).is_none(),
            "the oldest ban made room"
        );
        assert!(
            bans.banned(ip("10.0.0.16")).is_some(),
            "the newest ban is kept"
        );
    }

    #[test]
    fn reload_keeps_bans_and_strikes_of_kept_rules() {
        let (bans, _) = setup(100);
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            bans.record(Offence::SignatureFailure, a);
        }
        let b = ip("192.0.2.2");
        for _ in 0..4 {
            bans.record(Offence::SignatureFailure, b);
        }
        let rules = bans.lock().rules.clone();
        bans.set_rules(rules);
        assert!(bans.banned(a).is_some());
        assert!(
            bans.record(Offence::SignatureFailure, b).is_some(),
            "the fifth strike still counts"
        );
    }
}

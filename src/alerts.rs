//! Security alert gauges: for each `[[alerts]]` rule, how many offences of a kind happened in its
//! window, and whether that reached the threshold, as gauges that alerting rules can use
//! (`voxguard_alert_events{alert}`, `voxguard_alert_firing{alert}`). Counted in one-minute buckets, so
//! memory is fixed per rule whatever the traffic.

use std::sync::Mutex;
use std::time::Instant;

use prometheus::{IntGauge, IntGaugeVec};

use crate::config::{AlertRule, Offence};

struct Rule {
    spec: AlertRule,
    /// (minute, count) per bucket, `window` buckets.
    buckets: Vec<(u64, u64)>,
    /// This rule's gauges, resolved once.
    events: IntGauge,
    firing: IntGauge,
}

impl Rule {
    /// Sets the gauges from the buckets still inside the window at minute `now`.
    fn publish(&self, now: u64) {
        let window = self.buckets.len() as u64;
        let count: u64 = self
            .buckets
            .iter()
            .filter(|(m, _)| *m != u64::MAX && now.saturating_sub(*m) < window)
            .map(|(_, c)| c)
            .sum();
        self.events.set(count as i64);
        self.firing
            .set(i64::from(count >= u64::from(self.spec.threshold)));
    }
}

pub struct Alerts {
    rules: Mutex<Vec<Rule>>,
    started: Instant,
    events: IntGaugeVec,
    firing: IntGaugeVec,
}

impl Alerts {
    pub fn new(rules: &[AlertRule], events: IntGaugeVec, firing: IntGaugeVec) -> Self {
        let a = Self {
            rules: Mutex::new(Vec::new()),
            started: Instant::now(),
            events,
            firing,
        };
        a.set_rules(rules);
        a
    }

    /// Replaces the rules (on reload); counts of rules that keep their name and window are kept.
    pub fn set_rules(&self, rules: &[AlertRule]) {
        let mut held = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::new();
        for spec in rules {
            let buckets = held
                .iter()
                .find(|r| r.spec.name == spec.name && r.spec.window_minutes == spec.window_minutes)
                .map_or_else(
                    || vec![(u64::MAX, 0); spec.window_minutes as usize],
                    |r| r.buckets.clone(),
                );
            next.push(Rule {
                events: self.events.with_label_values(&[&spec.name]),
                firing: self.firing.with_label_values(&[&spec.name]),
                spec: spec.clone(),
                buckets,
            });
        }
        *held = next;
        drop(held);
        self.publish();
    }

    fn minute(&self) -> u64 {
        self.started.elapsed().as_secs() / 60
    }

    /// Counts one offence; only the rules on its kind are touched.
    pub fn record(&self, offence: Offence) {
        let now = self.minute();
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        for r in rules.iter_mut().filter(|r| r.spec.on == offence) {
            let slot = (now % r.buckets.len() as u64) as usize;
            if r.buckets[slot].0 != now {
                r.buckets[slot] = (now, 0);
            }
            r.buckets[slot].1 += 1;
            r.publish(now);
        }
    }

    /// Publishes every rule's gauges (called periodically, so old minutes fall out of the window).
    pub fn publish(&self) {
        let now = self.minute();
        for r in self.rules.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            r.publish(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> (IntGaugeVec, IntGaugeVec) {
        let o = |n: &str| prometheus::Opts::new(n, "t");
        (
            IntGaugeVec::new(o("e"), &["alert"]).unwrap(),
            IntGaugeVec::new(o("f"), &["alert"]).unwrap(),
        )
    }

    #[test]
    fn an_alert_fires_at_its_threshold() {
        let (events, firing) = gauges();
        let rule = AlertRule {
            name: "sig".into(),
            on: Offence::SignatureFailure,
            threshold: 3,
            window_minutes: 15,
        };
        let a = Alerts::new(&[rule], events.clone(), firing.clone());
        a.record(Offence::SignatureFailure);
        a.record(Offence::RateLimited);
        a.record(Offence::SignatureFailure);
        assert_eq!(
            (
                events.with_label_values(&["sig"]).get(),
                firing.with_label_values(&["sig"]).get()
            ),
            (2, 0)
        );
        a.record(Offence::SignatureFailure);
        assert_eq!(
            (
                events.with_label_values(&["sig"]).get(),
                firing.with_label_values(&["sig"]).get()
            ),
            (3, 1)
        );
    }
}

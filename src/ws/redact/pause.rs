//! Pause/resume: while active, all audio of the call is silenced (in the recording, and in the
//! forwarded stream if the route says so). Started by the backend's pause mark (until its resume
//! mark) or by DTMF entry (until no digit for `after_dtmf`); never longer than `max` at a stretch.

use std::time::{Duration, Instant};

pub struct Pause {
    after_dtmf: Option<Duration>,
    max: Duration,
    manual: bool,
    dtmf_until: Option<Instant>,
    since: Option<Instant>,
}

impl Pause {
    pub fn new(after_dtmf: Option<Duration>, max: Duration) -> Self {
        Self {
            after_dtmf,
            max,
            manual: false,
            dtmf_until: None,
            since: None,
        }
    }

    pub fn pause(&mut self, now: Instant) {
        self.manual = true;
        self.since.get_or_insert(now);
    }

    pub fn resume(&mut self) {
        self.manual = false;
        self.dtmf_until = None;
        self.since = None;
    }

    /// A digit was entered (event or tone).
    pub fn digit(&mut self, now: Instant) {
        if let Some(d) = self.after_dtmf {
            self.dtmf_until = Some(now + d);
            self.since.get_or_insert(now);
        }
    }

    /// Whether audio at `now` is silenced; ends a pause that ran out.
    pub fn active(&mut self, now: Instant) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        let dtmf = self.dtmf_until.is_some_and(|until| now < until);
        if now.duration_since(since) >= self.max || !(self.manual || dtmf) {
            self.resume();
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_pause_until_resume_or_the_maximum() {
        let t = Instant::now();
        let mut p = Pause::new(None, Duration::from_secs(60));
        assert!(!p.active(t));
        p.pause(t);
        assert!(p.active(t + Duration::from_secs(30)));
        p.resume();
        assert!(!p.active(t + Duration::from_secs(31)));
        p.pause(t);
        assert!(
            !p.active(t + Duration::from_secs(61)),
            "the maximum ends it"
        );
    }

    #[test]
    fn dtmf_entry_pauses_until_digits_stop() {
        let t = Instant::now();
        let mut p = Pause::new(Some(Duration::from_secs(3)), Duration::from_secs(60));
        p.digit(t);
        assert!(p.active(t + Duration::from_secs(2)));
        p.digit(t + Duration::from_secs(2));
        assert!(
            p.active(t + Duration::from_secs(4)),
            "each digit extends it"
        );
        assert!(!p.active(t + Duration::from_secs(6)));
        let mut off = Pause::new(None, Duration::from_secs(60));
        off.digit(t);
        assert!(!off.active(t), "off unless configured");
    }
}

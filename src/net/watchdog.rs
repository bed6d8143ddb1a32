//! A connection's one timer: it closes the connection once it has been idle for the keep-alive
//! timeout, and wakes it when a request head's deadline passes (hyper then answers 408).
//!
//! hyper's HTTP/1.1 server starts a header-read timer for every request head. A tokio timer per head
//! is registered with the timer wheel and cancelled again for each request (~1,000 instructions and
//! two locks of the wheel). Here hyper's timer is a bare deadline ([`HeadTimer`]) that it checks
//! whenever it polls the connection, and the watchdog is what wakes the connection when that
//! deadline passes. The watchdog is re-armed only when it fires, never earlier than it has to be:
//! a head read that starts after it was armed ends no earlier than the header-read timeout after
//! arming, so the watchdog is never armed later than that. A busy connection thus costs one timer
//! operation per header-read timeout, not one per request, and an idle one is woken exactly when
//! its head deadline or its keep-alive timeout is due.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Requests in flight on one connection, since when it has had none, and the deadline of the
/// request head being read, if one is.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Milliseconds since `epoch`, rounded up; 0 when no head is being read.
    head_deadline_ms: AtomicU64,
}

/// Held while a request (including its response body) is in flight.
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_deadline_ms: AtomicU64::new(0),
        })
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        // Rounded up, and never 0 (which means "none").
        (since.as_nanos().div_ceil(1_000_000) as u64).max(1)
    }

    fn instant(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    /// When the connection has been idle for `keepalive`, or `None` while a request is in flight.
    fn idle_deadline(&self, keepalive: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.instant(self.idle_since_ms.load(Ordering::Relaxed)) + keepalive)
    }

    fn head_deadline(&self) -> Option<Instant> {
        match self.head_deadline_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.instant(ms)),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let now = self.0.epoch.elapsed().as_millis() as u64;
            self.0.idle_since_ms.store(now, Ordering::Relaxed);
        }
    }
}

/// hyper's header-read timer for one HTTP/1.1 connection: its sleeps are deadlines that wake
/// nothing themselves; they tell the connection's [`Watchdog`] when to wake. The HTTP/1.1 server's
/// only use of its timer is the header-read timeout.
#[derive(Clone)]
pub struct HeadTimer(pub Arc<Activity>);

/// A request head's deadline: due once the clock passes it.
struct Deadline {
    at: Instant,
    millis: u64,
    activity: Arc<Activity>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

impl Drop for Deadline {
    fn drop(&mut self) {
        // Only if a newer deadline has not replaced it already.
        let _ = self.activity.head_deadline_ms.compare_exchange(
            self.millis,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let millis = self.0.millis(at);
        self.0.head_deadline_ms.store(millis, Ordering::Relaxed);
        Box::pin(Deadline {
            at,
            millis,
            activity: self.0.clone(),
        })
    }
}

/// What the watchdog found when it fired.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    /// Nothing is due; it is armed again.
    Armed,
    /// The connection has been idle for the keep-alive timeout: shut it down.
    Idle,
}

/// The connection's timer; see the module's comment.
pub struct Watchdog {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Whether `sleep` has been polled since its last reset, so that it wakes this task when it
    /// fires (until then tokio counts it neither registered nor elapsed).
    armed: bool,
    keepalive: Duration,
    /// The longest the watchdog may sleep: the header-read timeout on HTTP/1.1 (so that it is never
    /// armed past a head deadline that did not exist yet), the keep-alive timeout on h2.
    longest: Duration,
    activity: Arc<Activity>,
}

impl Watchdog {
    pub fn new(
        activity: Arc<Activity>,
        keepalive: Duration,
        header_read_timeout: Option<Duration>,
    ) -> Self {
        let longest = header_read_timeout.map_or(keepalive, |h| h.min(keepalive));
        Self {
            sleep: Box::pin(tokio::time::sleep(longest)),
            armed: false,
            keepalive,
            longest,
            activity,
        }
    }

    /// Checks the connection if the timer fired (a load, otherwise), and arms it for whatever is
    /// due next, so that `cx` is woken then.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Watch {
        if self.armed && !self.sleep.is_elapsed() {
            return Watch::Armed;
        }
        loop {
            let now = Instant::now();
            let idle_at = self.activity.idle_deadline(self.keepalive);
            if idle_at.is_some_and(|at| at <= now) {
                return Watch::Idle;
            }
            let next = next_wake(now, idle_at, self.activity.head_deadline(), self.longest);
            self.sleep.as_mut().reset(next.into());
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return Watch::Armed;
            }
        }
    }
}

/// When the watchdog fires next: at the idle deadline or the head deadline, whichever comes first,
/// and no later than `longest` from now. A head deadline that has passed was seen by hyper in the
/// poll just before this one (it answers 408 and the connection ends); the watchdog then fires again
/// a millisecond later in any case.
fn next_wake(
    now: Instant,
    idle_at: Option<Instant>,
    head_at: Option<Instant>,
    longest: Duration,
) -> Instant {
    let head_at = head_at.map(|at| at.max(now + Duration::from_millis(1)));
    [idle_at, head_at]
        .into_iter()
        .flatten()
        .fold(now + longest, Instant::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[test]
    fn a_head_deadline_is_published_until_its_sleep_is_dropped() {
        let activity = Activity::new();
        let timer = HeadTimer(activity.clone());
        assert_eq!(activity.head_deadline(), None);
        let at = Instant::now() + Duration::from_secs(10);
        let first = timer.sleep_until(at);
        let published = activity.head_deadline().unwrap();
        assert!(published >= at && published < at + Duration::from_millis(2));
        // hyper's default `reset` makes the new sleep before it drops the old one.
        let second = timer.sleep_until(at + Duration::from_secs(1));
        drop(first);
        assert!(
            activity.head_deadline().unwrap() > at,
            "the newer deadline stays"
        );
        drop(second);
        assert_eq!(activity.head_deadline(), None);
    }

    #[test]
    fn a_deadline_is_due_once_the_clock_passes_it() {
        let activity = Activity::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut past = HeadTimer(activity.clone()).sleep_until(Instant::now());
        assert!(past.as_mut().poll(&mut cx).is_ready());
        let mut future = HeadTimer(activity).sleep(Duration::from_secs(60));
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn the_watchdog_fires_at_the_first_deadline_and_never_later_than_the_longest_wait() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let longest = s(10);
        assert_eq!(
            next_wake(now, None, None, longest),
            now + s(10),
            "busy, no head"
        );
        assert_eq!(
            next_wake(now, Some(now + s(60)), None, longest),
            now + s(10),
            "idle, keep-alive further off than a head could be"
        );
        assert_eq!(
            next_wake(now, Some(now + s(4)), Some(now + s(7)), longest),
            now + s(4)
        );
        assert_eq!(
            next_wake(now, Some(now + s(50)), Some(now + s(7)), longest),
            now + s(7),
            "exactly at the head's deadline"
        );
        assert_eq!(
            next_wake(now, None, Some(now - s(1)), longest),
            now + Duration::from_millis(1),
            "a passed deadline: again in a moment"
        );
    }

    async fn poll(w: &mut Watchdog) -> Watch {
        std::future::poll_fn(|cx| Poll::Ready(w.poll(cx))).await
    }

    #[tokio::test]
    async fn the_watchdog_reports_an_idle_connection_and_never_a_busy_one() {
        let activity = Activity::new();
        let keepalive = Duration::from_millis(50);
        let mut watchdog =
            Watchdog::new(activity.clone(), keepalive, Some(Duration::from_secs(10)));
        assert_eq!(poll(&mut watchdog).await, Watch::Armed);
        assert!(
            watchdog.sleep.deadline().into_std()
                <= activity.epoch + keepalive + Duration::from_millis(1),
            "armed for the keep-alive deadline"
        );
        let busy = activity.enter();
        tokio::time::sleep(keepalive * 2).await;
        assert_eq!(
            poll(&mut watchdog).await,
            Watch::Armed,
            "in flight: not idle"
        );
        drop(busy);
        tokio::time::sleep(keepalive + Duration::from_millis(10)).await;
        assert_eq!(poll(&mut watchdog).await, Watch::Idle);
    }
}

//! A connection's one timer: it closes the connection once it has been idle for the keep-alive
//! timeout, and wakes it when a deadline of the request it is serving passes: hyper's header-read
//! timeout (hyper then answers 408) and, on HTTP/1.1, the upstream's response timeout (504).
//!
//! Both deadlines start once per request. A tokio timer per deadline is registered with the timer
//! wheel and cancelled again for every request (~600 instructions and two locks of the wheel each).
//! Here they are bare [`Deadline`]s, checked whenever their future is polled, that publish their
//! instant in the connection's [`Activity`]; the watchdog is what wakes the connection when one
//! passes. It is re-armed only when it fires or when a deadline earlier than the one it is armed
//! for is published, and a request's deadlines almost always come after the previous request's,
//! so a busy connection costs about one timer operation per header-read timeout, not two per
//! request, and an idle one is woken exactly when its head deadline or keep-alive timeout is due.
//!
//! A deadline reads the clock only when the watchdog has fired since it last looked: before that,
//! none can have passed, since the watchdog is armed for the earliest. That saves three or four
//! clock reads per request (~20 ns each), one each time the request's future is polled while it
//! waits for the upstream. When the watchdog fires, the connection is polled again at once.
//!
//! This works because on HTTP/1.1 hyper polls the request's future, and reads the request head,
//! inside the connection's own task: a wake-up of that task reaches them. An h2 stream runs in a
//! task of its own, so h2 requests keep a tokio timer for their response timeout
//! ([`Activity::response_deadline`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Requests in flight on one connection, since when it has had none, and the deadlines the
/// watchdog wakes the connection for.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Whether the connection's requests run in its own task (HTTP/1.1), so that the watchdog's
    /// wake-ups reach them.
    requests_inline: bool,
    /// Per [`Slot`]: milliseconds since `epoch`, rounded up; 0 when none.
    deadlines_ms: [AtomicU64; 2],
    /// How many times the watchdog's timer has fired: a deadline reads the clock only after one.
    firings: AtomicU64,
}

/// Which deadline a [`Deadline`] publishes.
#[derive(Clone, Copy)]
enum Slot {
    Head = 0,
    Response = 1,
}

/// Held while a request (including its response body) is in flight.
pub struct InFlight(Arc<Activity>);

impl Activity {
    /// `h2`: the connection's requests run in tasks of their own.
    pub fn new(h2: bool) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            requests_inline: !h2,
            deadlines_ms: [AtomicU64::new(0), AtomicU64::new(0)],
            firings: AtomicU64::new(0),
        })
    }

    /// Whether it was made for an HTTP/1.1 connection, whose requests run in its own task.
    pub fn runs_requests_inline(&self) -> bool {
        self.requests_inline
    }

    /// The upstream's response timeout for a request on this connection: a [`Deadline`] the
    /// watchdog wakes the request for on HTTP/1.1, a tokio timer on h2.
    pub fn response_deadline(self: &Arc<Self>, timeout: Duration) -> ResponseDeadline {
        if self.requests_inline {
            ResponseDeadline::Watched {
                deadline: Deadline::publish(self, Slot::Response, Instant::now() + timeout),
            }
        } else {
            ResponseDeadline::Timer {
                sleep: tokio::time::sleep(timeout),
            }
        }
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        // Rounded up, and never 0 (which means "none"); no 128-bit division.
        let millis = since.as_secs() * 1000 + u64::from(since.subsec_nanos().div_ceil(1_000_000));
        millis.max(1)
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

    /// The earliest published deadline, in milliseconds (0: none).
    fn earliest_deadline_ms(&self) -> u64 {
        let [head, response] = &self.deadlines_ms;
        match (
            head.load(Ordering::Relaxed),
            response.load(Ordering::Relaxed),
        ) {
            (0, ms) | (ms, 0) => ms,
            (a, b) => a.min(b),
        }
    }

    /// The earliest published deadline.
    fn earliest_deadline(&self) -> Option<Instant> {
        match self.earliest_deadline_ms() {
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

/// hyper's header-read timer for one HTTP/1.1 connection: its sleeps are [`Deadline`]s. The
/// HTTP/1.1 server's only use of its timer is the header-read timeout.
#[derive(Clone)]
pub struct HeadTimer(pub Arc<Activity>);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::publish(&self.0, Slot::Head, at))
    }

    /// Moves the deadline in place. hyper's default makes a new sleep and then drops the old one,
    /// whose drop would clear the new deadline if both fell in the same millisecond.
    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, at: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(deadline) => deadline.get_mut().move_to(at),
            None => *sleep = self.sleep_until(at),
        }
    }
}

/// A deadline that is due once the clock passes it. It wakes nothing itself: it publishes its
/// instant in the connection's [`Activity`] until it is dropped, and the watchdog wakes the
/// connection then.
pub struct Deadline {
    at: Instant,
    millis: u64,
    slot: Slot,
    activity: Arc<Activity>,
    /// The watchdog's firings when the clock was last read (or the deadline set): until there are
    /// more, the deadline cannot have passed.
    firings_seen: u64,
}

impl Deadline {
    fn publish(activity: &Arc<Activity>, slot: Slot, at: Instant) -> Self {
        let millis = activity.millis(at);
        activity.deadlines_ms[slot as usize].store(millis, Ordering::Relaxed);
        Self {
            at,
            millis,
            slot,
            activity: activity.clone(),
            firings_seen: activity.firings.load(Ordering::Relaxed),
        }
    }

    fn move_to(&mut self, at: Instant) {
        self.at = at;
        self.millis = self.activity.millis(at);
        self.activity.deadlines_ms[self.slot as usize].store(self.millis, Ordering::Relaxed);
        self.firings_seen = self.activity.firings.load(Ordering::Relaxed);
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let firings = this.activity.firings.load(Ordering::Relaxed);
        if firings == this.firings_seen {
            return Poll::Pending;
        }
        if Instant::now() >= this.at {
            return Poll::Ready(());
        }
        this.firings_seen = firings;
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Deadline {}

impl Drop for Deadline {
    fn drop(&mut self) {
        // Only if a newer deadline has not replaced it already.
        let _ = self.activity.deadlines_ms[self.slot as usize].compare_exchange(
            self.millis,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

pin_project_lite::pin_project! {
    /// The upstream's response timeout for one request; see [`Activity::response_deadline`]. The
    /// h2 timer is held in place, not boxed: no allocation per request.
    #[project = ResponseDeadlineProj]
    pub enum ResponseDeadline {
        Watched { deadline: Deadline },
        Timer { #[pin] sleep: tokio::time::Sleep },
    }
}

impl Future for ResponseDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            ResponseDeadlineProj::Watched { deadline } => Pin::new(deadline).poll(cx),
            ResponseDeadlineProj::Timer { sleep } => sleep.poll(cx),
        }
    }
}

/// What the watchdog found when it was polled.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    /// Nothing is due; it is armed again.
    Armed,
    /// Its timer fired and it is armed again: a deadline may have passed, so the connection must
    /// be polled again (its deadlines read the clock only after a firing).
    Fired,
    /// The connection has been idle for the keep-alive timeout: shut it down.
    Idle,
}

/// The connection's timer; see the module's comment.
pub struct Watchdog {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The millisecond `sleep` is armed for, once it has been polled since its last reset (so that
    /// it wakes this task when it fires); `None` before that.
    armed_ms: Option<u64>,
    keepalive: Duration,
    activity: Arc<Activity>,
}

impl Watchdog {
    pub fn new(activity: Arc<Activity>, keepalive: Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(keepalive)),
            armed_ms: None,
            keepalive,
            activity,
        }
    }

    /// Checks the connection if the timer fired or a deadline earlier than the armed one was
    /// published (two loads, otherwise), and arms it for whatever is due next, so that `cx` is
    /// woken then.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Watch {
        let earliest = self.activity.earliest_deadline_ms();
        if let Some(armed) = self.armed_ms
            && !self.sleep.is_elapsed()
            && (earliest == 0 || earliest >= armed)
        {
            return Watch::Armed;
        }
        let fired = self.armed_ms.is_some() && self.sleep.is_elapsed();
        if fired {
            self.activity.firings.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let now = Instant::now();
            let idle_at = self.activity.idle_deadline(self.keepalive);
            if idle_at.is_some_and(|at| at <= now) {
                return Watch::Idle;
            }
            let next = next_wake(
                now,
                idle_at,
                self.activity.earliest_deadline(),
                self.keepalive,
            );
            self.sleep.as_mut().reset(next.into());
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.armed_ms = Some(self.activity.millis(next));
                return if fired { Watch::Fired } else { Watch::Armed };
            }
        }
    }
}

/// When the watchdog fires next: at the idle deadline or the earliest published deadline, whichever
/// comes first, and no later than `longest` from now. A deadline that has passed was seen by its
/// future in the poll just before this one (the request then ends); the watchdog then fires again a
/// millisecond later in any case.
fn next_wake(
    now: Instant,
    idle_at: Option<Instant>,
    deadline: Option<Instant>,
    longest: Duration,
) -> Instant {
    let deadline = deadline.map(|at| at.max(now + Duration::from_millis(1)));
    [idle_at, deadline]
        .into_iter()
        .flatten()
        .fold(now + longest, Instant::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    fn published(activity: &Activity) -> Option<Instant> {
        activity.earliest_deadline()
    }

    #[tokio::test]
    async fn a_deadline_is_published_until_it_is_dropped() {
        let activity = Activity::new(false);
        let timer = HeadTimer(activity.clone());
        assert_eq!(published(&activity), None);
        let at = Instant::now() + Duration::from_secs(10);
        let first = timer.sleep_until(at);
        let head = published(&activity).unwrap();
        assert!(head >= at && head < at + Duration::from_millis(2));
        // hyper's default `reset` makes the new sleep before it drops the old one.
        let second = timer.sleep_until(at + Duration::from_secs(1));
        drop(first);
        assert!(
            published(&activity).unwrap() > at,
            "the newer deadline stays"
        );
        // The earliest of a head and a response deadline is what the watchdog sees.
        let response = activity.response_deadline(Duration::from_secs(5));
        assert!(matches!(response, ResponseDeadline::Watched { .. }));
        assert!(published(&activity).unwrap() < at);
        drop(response);
        drop(second);
        assert_eq!(published(&activity), None);
        let h2 = Activity::new(true);
        assert!(
            matches!(
                h2.response_deadline(Duration::from_secs(5)),
                ResponseDeadline::Timer { .. }
            ),
            "h2 streams run in their own tasks: a tokio timer"
        );
        assert_eq!(published(&h2), None);
    }

    #[test]
    fn a_reset_moves_the_deadline_in_place() {
        let activity = Activity::new(false);
        let timer = HeadTimer(activity.clone());
        let at = Instant::now() + Duration::from_secs(10);
        let mut head = timer.sleep_until(at);
        // The same millisecond: hyper's default (a new sleep, then the old one dropped) would
        // leave nothing published.
        timer.reset(&mut head, at);
        assert!(published(&activity).is_some_and(|p| p >= at));
        timer.reset(&mut head, at + Duration::from_secs(5));
        let moved = published(&activity).unwrap();
        assert!(moved >= at + Duration::from_secs(5) && moved < at + Duration::from_millis(5_002));
        drop(head);
        assert_eq!(published(&activity), None);
    }

    #[test]
    fn a_deadline_is_due_once_the_watchdog_has_fired_and_the_clock_passed_it() {
        let activity = Activity::new(false);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut past = HeadTimer(activity.clone()).sleep_until(Instant::now());
        let mut future = HeadTimer(activity.clone()).sleep(Duration::from_secs(60));
        assert!(
            past.as_mut().poll(&mut cx).is_pending(),
            "the clock is not read before the watchdog fires for it"
        );
        activity.firings.fetch_add(1, Ordering::Relaxed);
        assert!(past.as_mut().poll(&mut cx).is_ready());
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }

    /// A deadline that passes is seen in the poll right after the watchdog fires for it: the
    /// watchdog reports the firing, so the connection is polled again.
    #[tokio::test]
    async fn the_watchdog_fires_for_a_deadline_and_the_deadline_is_then_due() {
        let activity = Activity::new(false);
        let mut watchdog = Watchdog::new(activity.clone(), Duration::from_secs(60));
        let _busy = activity.enter();
        let mut response = std::pin::pin!(activity.response_deadline(Duration::from_millis(30)));
        assert_eq!(poll(&mut watchdog).await, Watch::Armed);
        let deadline = std::future::poll_fn(|cx| Poll::Ready(response.as_mut().poll(cx)));
        assert!(deadline.await.is_pending());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(response.as_mut().poll(cx)))
                .await
                .is_pending(),
            "passed, but the watchdog has not been polled since it fired"
        );
        assert_eq!(poll(&mut watchdog).await, Watch::Fired);
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(response.as_mut().poll(cx)))
                .await
                .is_ready()
        );
    }

    #[test]
    fn the_watchdog_fires_at_the_first_deadline_and_never_later_than_the_keepalive() {
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
        let activity = Activity::new(false);
        let keepalive = Duration::from_millis(50);
        let mut watchdog = Watchdog::new(activity.clone(), keepalive);
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
            Watch::Fired,
            "in flight: not idle; it fired, so the connection is polled again"
        );
        drop(busy);
        tokio::time::sleep(keepalive + Duration::from_millis(10)).await;
        assert_eq!(poll(&mut watchdog).await, Watch::Idle);
    }

    #[tokio::test]
    async fn an_earlier_deadline_rearms_the_watchdog_and_a_later_one_does_not() {
        let activity = Activity::new(false);
        let mut watchdog = Watchdog::new(activity.clone(), Duration::from_secs(60));
        let _busy = activity.enter();
        assert_eq!(poll(&mut watchdog).await, Watch::Armed);
        let armed = |w: &Watchdog| w.sleep.deadline().into_std();
        let first = armed(&watchdog);
        assert!(first >= Instant::now() + Duration::from_secs(59));
        let head = HeadTimer(activity.clone()).sleep(Duration::from_secs(10));
        poll(&mut watchdog).await;
        let at_head = armed(&watchdog);
        assert!(at_head < first && at_head >= Instant::now() + Duration::from_secs(9));
        let response = activity.response_deadline(Duration::from_secs(30));
        poll(&mut watchdog).await;
        assert_eq!(
            armed(&watchdog),
            at_head,
            "a later deadline waits for the next firing"
        );
        drop((head, response));
    }
}

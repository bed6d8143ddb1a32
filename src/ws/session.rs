//! One relayed WebSocket session: a pump over two message streams, generic over `Stream + Sink`
//! so tests can drive it without sockets. Ping, pong and close frames are relayed like data; close
//! codes and reasons pass through. An idle session, an oversized message, or the end of the drain's
//! grace period closes both sides (1001 going away, 1009 to the sender of a too-large message).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::intercept::{CloseCall, MediaRoute, MediaSession};
use super::protocols::Direction;
use super::stall::StallGuard;
use super::wake::{self, WakeFlags};
use crate::metrics::{MediaMetrics, WsMetrics};

/// Per-route session limits. Built once per route with the runtime (`pipeline::Runtime`) and shared
/// by the route's sessions: a session holds an `Arc` to them, 8 bytes in its future instead of ~200.
pub struct SessionSettings {
    pub route: Arc<str>,
    pub idle_timeout: Duration,
    pub max_message_bytes: usize,
    /// A write to either side that makes no progress this long ends the session.
    pub write_timeout: Duration,
    /// Media interception (`[route.media]` with a codec); `None` relays messages untouched.
    pub media: Option<MediaRoute>,
    /// The session is closed (1001) when this has passed.
    pub max_duration: Option<Duration>,
    /// Media sessions are audited when they end (the stream id only as a keyed hash).
    pub audit: Option<(crate::audit::log::AuditLog, crate::keys::KeyBytes)>,
}

/// The soonest a media session looks again for frames that waited out their delay on a quiet stream.
const MEDIA_TICK: Duration = Duration::from_millis(20);

/// How long to wait for the far side's reply to a relayed close frame.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The caller's side reads from rustls, which already holds what came off the socket (4 KiB at a
/// time): a small buffer there costs no system call, only a few more copies in a burst, and saves a
/// KiB per session.
const CLIENT_READ_BUFFER: usize = 1024;
/// The backend's side is usually a plain socket, where every read is a system call. A paced call's
/// message comes alone either way; flat out, 1 KiB instead of 2 made 0.56 reads per relayed message
/// instead of 0.42 and no difference in CPU per message that this VM resolves, and saves a KiB per
/// session (an idle relayed session is ~15 KiB in all; docs/PERFORMANCE.md, sixteenth session).
const UPSTREAM_READ_BUFFER: usize = 1024;

/// tungstenite's defaults keep 128 KiB of read buffer per socket; calls are many and idle-ish.
fn ws_config(max_message_bytes: usize, read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        // Frames queue up to this much before a write; the pump flushes at the end of each burst.
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(max_message_bytes.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Waits for both upgrades, then relays until either side ends. `keep` is held for the session's
/// lifetime (the connection-count guard: the TCP connection lives on inside the upgrade).
///
/// The body is an `async move` block, not an `async fn`: an `async fn` moves its arguments into
/// locals and the future keeps room for both copies, which made every idle session ~1 KiB larger
/// (`a_session_future_stays_small`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice"
)]
pub fn run<K: Send>(
    client: OnUpgrade,
    upstream: OnUpgrade,
    settings: Arc<SessionSettings>,
    metrics: WsMetrics,
    media_metrics: MediaMetrics,
    grace_over: CancellationToken,
    keep: K,
) -> impl Future<Output = ()> {
    async move {
        let Some((client, upstream)) = websockets(client, upstream, &settings).await else {
            return;
        };
        metrics.active.inc();
        let counters = Counters {
            to_upstream: metrics
                .messages
                .with_label_values(&[&*settings.route, "client_to_upstream"]),
            to_client: metrics
                .messages
                .with_label_values(&[&*settings.route, "upstream_to_client"]),
        };
        let started = std::time::Instant::now();
        if let Some((audit, _)) = &settings.audit {
            audit.record(
                crate::audit::log::Event::new(
                    "websocket_session_start",
                    "ok",
                    serde_json::json!({"media": settings.media.is_some()}),
                )
                .route(&settings.route),
            );
        }
        let mut media = settings
            .media
            .as_ref()
            .map(|m| MediaSession::start(m, settings.route.clone(), media_metrics.clone()))
            .map(Box::new);
        let end = pump(
            client,
            upstream,
            &settings,
            &counters,
            &grace_over,
            media.as_deref_mut(),
        )
        .await;
        if media.is_none()
            && let Some((audit, _)) = &settings.audit
        {
            audit.record(
                crate::audit::log::Event::new(
                    "websocket_session",
                    "ok",
                    serde_json::json!({
                        "duration_ms": started.elapsed().as_millis() as u64,
                        "messages_to_backend": counters.to_upstream.get(),
                        "messages_to_caller": counters.to_client.get(),
                        "end": format!("{end:?}"),
                    }),
                )
                .route(&settings.route),
            );
        }
        if let Some(m) = &media {
            media_metrics
                .session_duration
                .with_label_values(&[&*settings.route])
                .observe(started.elapsed().as_secs_f64());
            if let Some((audit, key)) = &settings.audit {
                let redactions: serde_json::Map<String, serde_json::Value> = m
                    .redactions()
                    .iter()
                    .map(|(k, n)| (k.label().to_string(), (*n).into()))
                    .collect();
                audit.record(
                    crate::audit::log::Event::new(
                        "media_session",
                        "ok",
                        serde_json::json!({
                            "stream": m.stream_id().map(|id| crate::audit::keyed_id(key, id)),
                            "duration_ms": started.elapsed().as_millis() as u64,
                            "messages_to_backend": counters.to_upstream.get(),
                            "messages_to_caller": counters.to_client.get(),
                            "redactions": redactions,
                            "end": format!("{end:?}"),
                        }),
                    )
                    .route(&settings.route),
                );
            }
        }
        metrics.active.dec();
        tracing::debug!(route = &*settings.route, ?end, "WebSocket session ended");
        drop(keep);
    }
}

/// Both sides as WebSocket streams, once both upgrades are done; `None` (logged) if one failed.
/// A function of its own so that its awaits' state is not kept in the session's future beside
/// the relay's.
async fn websockets(
    client: OnUpgrade,
    upstream: OnUpgrade,
    settings: &SessionSettings,
) -> Option<(Side, Side)> {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(route = &*settings.route, error = %e, "WebSocket upgrade failed");
            return None;
        }
    };
    let config = |read_buffer| Some(ws_config(settings.max_message_bytes, read_buffer));
    let client = WebSocketStream::from_raw_socket(
        TokioIo::new(client),
        Role::Server,
        config(CLIENT_READ_BUFFER),
    )
    .await;
    let upstream = WebSocketStream::from_raw_socket(
        TokioIo::new(upstream),
        Role::Client,
        config(UPSTREAM_READ_BUFFER),
    )
    .await;
    Some((
        StallGuard::new(client, settings.write_timeout),
        StallGuard::new(upstream, settings.write_timeout),
    ))
}

/// One side of a relayed session.
type Side = StallGuard<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>;

/// Message counters for both directions, resolved once per session.
pub struct Counters {
    pub to_upstream: IntCounter,
    pub to_client: IntCounter,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClosedByClient,
    ClosedByUpstream,
    Idle,
    Draining,
    TooLarge,
    /// The peer broke RFC 6455 (unmasked or reserved-bit frames, invalid UTF-8, bad fragments).
    ProtocolError,
    Error,
    /// A message could not be redacted and the route closes on that.
    Malformed,
    MaxDuration,
}

#[derive(Clone, Copy)]
enum From {
    Client,
    Upstream,
}

/// Relays messages both ways until a close, an error, idleness or the drain ends the session.
/// An `async move` block, like `run`'s, so the streams are held once, not twice.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice"
)]
pub fn pump<'a, C, U>(
    mut client: C,
    mut upstream: U,
    settings: &'a SessionSettings,
    counters: &'a Counters,
    grace_over: &'a CancellationToken,
    mut media: Option<&'a mut MediaSession>,
) -> impl Future<Output = End> + 'a
where
    C: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + 'a,
    U: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + 'a,
{
    async move {
        // One timer ends the session: set for the idle timeout after the last message or the
        // maximum duration, whichever is sooner. It is not re-armed per message (a timer-wheel
        // update each time): it fires, and if a message came since, it is set again.
        let mut last_activity = tokio::time::Instant::now();
        let max_end = settings.max_duration.map(|d| last_activity + d);
        let end_timer =
            tokio::time::sleep_until(sooner(last_activity + settings.idle_timeout, max_end));
        tokio::pin!(end_timer);
        let draining = grace_over.cancelled();
        tokio::pin!(draining);
        let recorder_token = media.as_deref().map(|m| m.recorder_failed.clone());
        let recorder_failed = async move {
            match recorder_token {
                Some(token) => token.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(recorder_failed);
        // Frames held in a media delay go out on their own once they have waited long enough: the
        // timer is armed for the oldest one's deadline, not ticking every frame. It is boxed when
        // first armed: a relay, and a media call that has held no audio, never need it, and inline
        // it made every session's task 128 bytes larger.
        let mut media_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut media_armed = false;
        // Messages are written with `feed` and flushed once nothing more is ready to read: a burst
        // becomes one TLS record and one write per side, while a lone message is flushed at once.
        let mut ready: Option<(From, Option<Result<Message, WsError>>)> = None;
        let mut batched = 0usize;
        // A wake-up polls only the sources that asked for it (`ws::wake`); which socket goes first
        // alternates, so a flood on one side cannot starve the other.
        let flags = WakeFlags::default();
        let mut first = From::Client;
        let mut pings = PingLedger::default();
        loop {
            if ready.is_none() {
                if batched > 0 && flush_both(&mut client, &mut upstream).await.is_err() {
                    close_both(&mut client, &mut upstream, "peer gone").await;
                    return End::Error;
                }
                batched = 0;
            }
            let (from, next) = match ready.take() {
                Some(item) => item,
                None => {
                    let woke = wait(
                        &flags,
                        &mut first,
                        &mut client,
                        &mut upstream,
                        &mut House {
                            media_timer: media_timer
                                .as_mut()
                                .filter(|_| media_armed)
                                .map(Pin::as_mut),
                            recorder_failed: recorder_failed.as_mut(),
                            end_timer: end_timer.as_mut(),
                            draining: draining.as_mut(),
                        },
                    )
                    .await;
                    match woke {
                        Woke::Message(from, next) => (from, next),
                        Woke::MediaDue => {
                            if let Some(sends) = media.as_deref_mut().and_then(MediaSession::due)
                                && Box::pin(send_all(sends, &mut client, &mut upstream))
                                    .await
                                    .is_err()
                            {
                                close_both(&mut client, &mut upstream, "peer gone").await;
                                return End::Error;
                            }
                            media_armed = arm_media_timer(media.as_deref(), &mut media_timer);
                            continue;
                        }
                        Woke::RecorderFailed => {
                            close_both(&mut client, &mut upstream, "recording failed").await;
                            return End::Error;
                        }
                        Woke::EndTimer
                            if max_end.is_some_and(|end| end <= tokio::time::Instant::now()) =>
                        {
                            flush_media(&mut media, &mut client, &mut upstream).await;
                            close_both(&mut client, &mut upstream, "maximum call duration").await;
                            return End::MaxDuration;
                        }
                        Woke::EndTimer => {
                            let due = last_activity + settings.idle_timeout;
                            if due > tokio::time::Instant::now() {
                                end_timer.as_mut().reset(sooner(due, max_end));
                                continue;
                            }
                            close_both(&mut client, &mut upstream, "idle timeout").await;
                            return End::Idle;
                        }
                        Woke::Draining => {
                            close_both(&mut client, &mut upstream, "server shutting down").await;
                            return End::Draining;
                        }
                    }
                }
            };
            last_activity = tokio::time::Instant::now();
            if let Some(m) = media.as_deref_mut() {
                match next {
                    Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                        let (direction, counter) = match from {
                            From::Client => (Direction::ToBackend, &counters.to_upstream),
                            From::Upstream => (Direction::ToCaller, &counters.to_client),
                        };
                        counter.inc();
                        let sends = match m.handle(direction, msg) {
                            Ok(sends) => sends,
                            Err(close) => {
                                close_malformed(close, &mut client, &mut upstream).await;
                                return End::Malformed;
                            }
                        };
                        if feed_all(sends, &mut client, &mut upstream).await.is_err() {
                            close_both(&mut client, &mut upstream, "peer gone").await;
                            return End::Error;
                        }
                        batched += 1;
                        ready = peek_ready(&flags, from, &mut client, &mut upstream, batched);
                        if media_armed && let Some(timer) = media_timer.as_mut() {
                            extend_media_timer(m, timer.as_mut());
                        } else {
                            media_armed = arm_media_timer(Some(m), &mut media_timer);
                            flags.flag(wake::HOUSEKEEPING);
                        }
                        continue;
                    }
                    // Whatever ends the call, what waits in a delay goes out first.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        flush_media(&mut media, &mut client, &mut upstream).await;
                    }
                    _ => {}
                }
            }
            if let Some(Ok(msg)) = &next
                && !pings.should_relay(from, msg)
            {
                batched += 1;
                ready = peek_ready(&flags, from, &mut client, &mut upstream, batched);
                continue;
            }
            let step = match (next, from) {
                (Some(Ok(msg)), From::Client) if !matches!(msg, Message::Close(_)) => {
                    forward(msg, &mut client, &mut upstream, &counters.to_upstream).await
                }
                (Some(Ok(msg)), From::Upstream) if !matches!(msg, Message::Close(_)) => {
                    forward(msg, &mut upstream, &mut client, &counters.to_client).await
                }
                // A close, an error, a side gone: once a session (`relay_end` is boxed).
                (end, From::Client) => {
                    relay_end(end, &mut client, &mut upstream, &counters.to_upstream).await
                }
                (end, From::Upstream) => {
                    relay_end(end, &mut upstream, &mut client, &counters.to_client).await
                }
            };
            match (step, from) {
                (Step::Continue, _) => {
                    batched += 1;
                    ready = peek_ready(&flags, from, &mut client, &mut upstream, batched);
                }
                (Step::Closed, From::Client) => return End::ClosedByClient,
                (Step::Closed, From::Upstream) => return End::ClosedByUpstream,
                (Step::TooLarge, _) => return End::TooLarge,
                (Step::Violation, _) => return End::ProtocolError,
                (Step::Failed, _) => return End::Error,
            }
        }
    }
}

/// Pings travel end to end (a backend that times out silent sessions still sees the client's
/// keep-alives), but tungstenite already answers each one on its own hop, so the far side's pong to
/// a relayed ping would be a second one: those are dropped. Unsolicited pongs (heartbeats) pass.
#[derive(Default)]
struct PingLedger {
    /// Payloads of pings relayed to the upstream / to the client, oldest first.
    to_upstream: std::collections::VecDeque<bytes::Bytes>,
    to_client: std::collections::VecDeque<bytes::Bytes>,
}

/// Pings relayed and not yet answered, per direction; past it a ping is answered but not relayed, so
/// a ping flood costs no memory.
const MAX_OUTSTANDING_PINGS: usize = 8;

impl PingLedger {
    /// Whether `msg`, read from `from`, goes on to the other side.
    fn should_relay(&mut self, from: From, msg: &Message) -> bool {
        let (relayed_by_from, relayed_to_from) = match from {
            From::Client => (&mut self.to_upstream, &mut self.to_client),
            From::Upstream => (&mut self.to_client, &mut self.to_upstream),
        };
        match msg {
            Message::Ping(payload) => {
                if relayed_by_from.len() >= MAX_OUTSTANDING_PINGS {
                    return false;
                }
                relayed_by_from.push_back(payload.clone());
                true
            }
            // A pong may answer only the latest of several pings (RFC 6455 §5.5.3).
            Message::Pong(payload) => match relayed_to_from.iter().position(|p| p == payload) {
                Some(i) => {
                    relayed_to_from.drain(..=i);
                    false
                }
                None => true,
            },
            _ => true,
        }
    }
}

enum Step {
    Continue,
    Closed,
    TooLarge,
    Violation,
    Failed,
}

/// The close code and reason for a peer that broke RFC 6455; `None` for a peer that just went away.
fn violation(e: &WsError) -> Option<(CloseCode, &'static str)> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
        WsError::Utf8 => Some((CloseCode::Invalid, "invalid UTF-8")),
        WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing,
        ) => None,
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        _ => None,
    }
}

/// Feeds a data, ping or pong message to the other side; it is flushed with the rest of its burst.
async fn forward<A, B>(msg: Message, from: &mut A, to: &mut B, counter: &IntCounter) -> Step
where
    A: Sink<Message, Error = WsError> + Unpin,
    B: Sink<Message, Error = WsError> + Unpin,
{
    if matches!(msg, Message::Frame(_)) {
        return Step::Continue; // raw frames are never yielded when reading
    }
    counter.inc();
    if to.feed(msg).await.is_err() {
        let _ = from.send(going_away("upstream gone")).await;
        return Step::Failed;
    }
    Step::Continue
}

/// What ends a session from one side: its close is relayed at once and the far side's reply
/// awaited; a protocol violation is answered with its close code; a side gone is told to the other.
/// Boxed, like `close_both`.
fn relay_end<'a, A, B>(
    next: Option<Result<Message, WsError>>,
    from: &'a mut A,
    to: &'a mut B,
    counter: &'a IntCounter,
) -> Pin<Box<impl Future<Output = Step> + 'a>>
where
    A: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    B: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    Box::pin(async move {
        match next {
            Some(Ok(close)) => {
                counter.inc();
                if to.send(close).await.is_err() {
                    let _ = from.send(going_away("upstream gone")).await;
                    return Step::Failed;
                }
                // tungstenite already queued the echo to `from`; wait for the far side's reply,
                // then flush.
                let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
                    while let Some(Ok(m)) = to.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
                let _ = from.close().await;
                Step::Closed
            }
            Some(Err(e)) if let Some((code, reason)) = violation(&e) => {
                // The offender is told why (RFC 6455 §7.4.1); the other side just sees the call end.
                let _ = from
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                let _ = to.send(going_away("peer broke the protocol")).await;
                if code == CloseCode::Size {
                    Step::TooLarge
                } else {
                    Step::Violation
                }
            }
            Some(Err(_)) | None => {
                let _ = to.send(going_away("peer went away")).await;
                Step::Failed
            }
        }
    })
}

/// Sets the media timer for the oldest held frame's deadline, but never sooner than a frame from now
/// (so a clock that does not move, as in paused-time tests, cannot spin the pump). Whether it is set.
fn arm_media_timer(
    media: Option<&MediaSession>,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> bool {
    let Some(due) = media.and_then(MediaSession::next_due) else {
        return false;
    };
    let soonest = tokio::time::Instant::now() + MEDIA_TICK;
    let deadline = tokio::time::Instant::from_std(due).max(soonest);
    match timer {
        Some(timer) => timer.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
    true
}

/// Moves the media timer to the oldest held frame's deadline when that is later than the timer's:
/// while audio flows, later frames release the held ones and the deadline keeps moving on, so the
/// timer fires only once the call goes quiet (each message also releases whatever has waited its
/// longest, in either direction). Re-arming only when it fired woke each paced call every ~40 ms
/// to release nothing. A later deadline costs one compare-and-swap in tokio (the timer wheel is
/// not touched, and the registered waker stays).
fn extend_media_timer(media: &MediaSession, timer: std::pin::Pin<&mut tokio::time::Sleep>) {
    if let Some(due) = media.next_due().map(tokio::time::Instant::from_std)
        && due > timer.deadline()
    {
        timer.reset(due);
    }
}

/// Most messages relayed before the sinks are flushed, so a flood on one side cannot starve the
/// other side or the timers.
const MAX_BATCH: usize = 64;

/// The next message from the side that just sent one, if it is already buffered (no waiting). The
/// side is polled with its own waker: if nothing is there, it is registered and will flag itself.
fn peek_ready<C, U>(
    flags: &WakeFlags,
    from: From,
    client: &mut C,
    upstream: &mut U,
    batched: usize,
) -> Option<(From, Option<Result<Message, WsError>>)>
where
    C: Stream<Item = Result<Message, WsError>> + Unpin,
    U: Stream<Item = Result<Message, WsError>> + Unpin,
{
    if batched >= MAX_BATCH {
        return None;
    }
    poll_side(flags, from, client, upstream).map(|next| (from, next))
}

/// Polls one side if it is flagged; `Some` if it had a message (or ended), and then it stays
/// flagged, since it may have more.
fn poll_side<C, U>(
    flags: &WakeFlags,
    from: From,
    client: &mut C,
    upstream: &mut U,
) -> Option<Option<Result<Message, WsError>>>
where
    C: Stream<Item = Result<Message, WsError>> + Unpin,
    U: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let source = match from {
        From::Client => wake::CLIENT,
        From::Upstream => wake::UPSTREAM,
    };
    if flags.take(source) == 0 {
        return None;
    }
    let mut cx = flags.context(source);
    let polled = match from {
        From::Client => client.poll_next_unpin(&mut cx),
        From::Upstream => upstream.poll_next_unpin(&mut cx),
    };
    match polled {
        Poll::Ready(next) => {
            flags.flag(source);
            Some(next)
        }
        Poll::Pending => None,
    }
}

/// The idle timeout's instant, or the maximum duration's if that comes first.
fn sooner(
    idle_due: tokio::time::Instant,
    max_end: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    max_end.map_or(idle_due, |end| end.min(idle_due))
}

/// What woke the pump.
enum Woke {
    Message(From, Option<Result<Message, WsError>>),
    MediaDue,
    RecorderFailed,
    /// The idle timeout or the maximum duration, whichever was set.
    EndTimer,
    Draining,
}

/// The session's timers and tokens: polled together, and only when one of them has fired or was
/// reset (`ws::wake::HOUSEKEEPING`).
struct House<'a, R, D> {
    /// Only while it is armed.
    media_timer: Option<Pin<&'a mut tokio::time::Sleep>>,
    recorder_failed: Pin<&'a mut R>,
    end_timer: Pin<&'a mut tokio::time::Sleep>,
    draining: Pin<&'a mut D>,
}

impl<R: Future<Output = ()>, D: Future<Output = ()>> House<'_, R, D> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Option<Woke> {
        if let Some(timer) = self.media_timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            return Some(Woke::MediaDue);
        }
        if self.recorder_failed.as_mut().poll(cx).is_ready() {
            return Some(Woke::RecorderFailed);
        }
        if self.end_timer.as_mut().poll(cx).is_ready() {
            return Some(Woke::EndTimer);
        }
        if self.draining.as_mut().poll(cx).is_ready() {
            return Some(Woke::Draining);
        }
        None
    }
}

/// Waits until a flagged source has something: the timers and tokens first (they end or steer the
/// session), then both sides, the one that went second last time first.
async fn wait<C, U, R, D>(
    flags: &WakeFlags,
    first: &mut From,
    client: &mut C,
    upstream: &mut U,
    house: &mut House<'_, R, D>,
) -> Woke
where
    C: Stream<Item = Result<Message, WsError>> + Unpin,
    U: Stream<Item = Result<Message, WsError>> + Unpin,
    R: Future<Output = ()>,
    D: Future<Output = ()>,
{
    std::future::poll_fn(|task| {
        flags.register(task.waker());
        if flags.take(wake::HOUSEKEEPING) != 0 {
            let woke = house.poll(&mut flags.context(wake::HOUSEKEEPING));
            if let Some(woke) = woke {
                // Whatever fired is handled (a timer reset, a session ended): look again next time.
                flags.flag(wake::HOUSEKEEPING);
                return Poll::Ready(woke);
            }
        }
        let order = match *first {
            From::Client => [From::Client, From::Upstream],
            From::Upstream => [From::Upstream, From::Client],
        };
        for from in order {
            if let Some(next) = poll_side(flags, from, client, upstream) {
                *first = match from {
                    From::Client => From::Upstream,
                    From::Upstream => From::Client,
                };
                return Poll::Ready(Woke::Message(from, next));
            }
        }
        Poll::Pending
    })
    .await
}

async fn flush_both<C, U>(client: &mut C, upstream: &mut U) -> Result<(), WsError>
where
    C: Sink<Message, Error = WsError> + Unpin,
    U: Sink<Message, Error = WsError> + Unpin,
{
    let (a, b) = tokio::join!(client.flush(), upstream.flush());
    a.and(b)
}

/// Queues each message on its side, in order; the caller flushes.
async fn feed_all<C, U>(
    sends: impl IntoIterator<Item = (Direction, Message)>,
    client: &mut C,
    upstream: &mut U,
) -> Result<(), WsError>
where
    C: Sink<Message, Error = WsError> + Unpin,
    U: Sink<Message, Error = WsError> + Unpin,
{
    for (direction, msg) in sends {
        match direction {
            Direction::ToBackend => upstream.feed(msg).await?,
            Direction::ToCaller => client.feed(msg).await?,
        }
    }
    Ok(())
}

/// Sends each message to its side, in order, and flushes both sides.
async fn send_all<C, U>(
    sends: impl IntoIterator<Item = (Direction, Message)>,
    client: &mut C,
    upstream: &mut U,
) -> Result<(), WsError>
where
    C: Sink<Message, Error = WsError> + Unpin,
    U: Sink<Message, Error = WsError> + Unpin,
{
    feed_all(sends, client, upstream).await?;
    flush_both(client, upstream).await
}

/// Sends what the media session still holds in its delays (the call is ending). Boxed, like
/// `close_both`.
fn flush_media<'a, C, U>(
    media: &'a mut Option<&mut MediaSession>,
    client: &'a mut C,
    upstream: &'a mut U,
) -> Pin<Box<impl Future<Output = ()> + 'a>>
where
    C: Sink<Message, Error = WsError> + Unpin,
    U: Sink<Message, Error = WsError> + Unpin,
{
    Box::pin(async move {
        if let Some(m) = media.as_deref_mut() {
            let _ = send_all(m.finish(), client, upstream).await;
        }
    })
}

fn going_away(reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: reason.into(),
    }))
}

/// The caller is told why its message ended the call (`on_malformed = "close"`); the backend
/// that the call is going away.
/// Boxed, like `close_both`.
fn close_malformed<'a, C, U>(
    close: CloseCall,
    client: &'a mut C,
    upstream: &'a mut U,
) -> Pin<Box<impl Future<Output = ()> + 'a>>
where
    C: Sink<Message, Error = WsError> + Unpin,
    U: Sink<Message, Error = WsError> + Unpin,
{
    Box::pin(async move {
        let CloseCall { code, reason } = close;
        let to_caller = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::join!(client.send(to_caller), upstream.send(going_away(reason)));
    })
}

/// Tells both sides the session is going away. This and the session's other ends
/// (`flush_media`, `close_malformed`, `relay_end`) return boxed futures: each runs once a session,
/// and inline they would make the session's future keep room for them all the time.
fn close_both<'a, C, U>(
    client: &'a mut C,
    upstream: &'a mut U,
    reason: &'static str,
) -> Pin<Box<impl Future<Output = ()> + 'a>>
where
    C: Sink<Message, Error = WsError> + Unpin,
    U: Sink<Message, Error = WsError> + Unpin,
{
    Box::pin(async move {
        let _ = tokio::join!(
            client.send(going_away(reason)),
            upstream.send(going_away(reason))
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pongs_to_relayed_pings_are_dropped_and_heartbeats_pass() {
        let mut ledger = PingLedger::default();
        let ping = |p: &'static [u8]| Message::Ping(bytes::Bytes::from_static(p));
        let pong = |p: &'static [u8]| Message::Pong(bytes::Bytes::from_static(p));
        assert!(ledger.should_relay(From::Client, &ping(b"a")));
        assert!(ledger.should_relay(From::Client, &ping(b"b")));
        // The backend answers only the latest: both are settled, the client already has its pongs.
        assert!(!ledger.should_relay(From::Upstream, &pong(b"b")));
        assert!(ledger.to_upstream.is_empty());
        // An unsolicited pong is a heartbeat and goes through; so does a pong from the client.
        assert!(ledger.should_relay(From::Upstream, &pong(b"b")));
        assert!(ledger.should_relay(From::Client, &pong(b"x")));
        // A flood: past the limit, pings are answered on their hop but not relayed.
        let relayed = (0..100)
            .filter(|_| ledger.should_relay(From::Upstream, &ping(b"p")))
            .count();
        assert_eq!(relayed, MAX_OUTSTANDING_PINGS);
    }

    /// An idle session's memory is mostly this future (≤ 20 KB per idle WebSocket session is a target,
    /// docs/PERFORMANCE.md): a plain relay must not carry a media session's state inline.
    #[test]
    fn a_session_future_stays_small() {
        let metrics = crate::metrics::Metrics::new();
        let settings = Arc::new(SessionSettings {
            route: "plain".into(),
            idle_timeout: Duration::from_secs(1),
            max_message_bytes: 1024,
            write_timeout: Duration::from_secs(1),
            media: None,
            max_duration: None,
            audit: None,
        });
        let session = run(
            hyper::upgrade::on(http::Request::new(())),
            hyper::upgrade::on(http::Request::new(())),
            settings,
            metrics.ws.clone(),
            metrics.media.clone(),
            CancellationToken::new(),
            (),
        );
        let size = std::mem::size_of_val(&session);
        // 2,448 bytes in a debug build; 2,648 with the route's settings held by value (208)
        // instead of shared, which in a release build made the session's task 2,432 bytes instead
        // of 2,176 (heaptrack; tokio rounds a task to 128), and 2,760 with the media timer inline.
        // It was 4,528 while `run` and `pump` were `async fn`s (which keep a second copy of their
        // arguments), kept the upgrades' and the close handshake's state inline, and had two
        // timers where one serves. A `MediaSession` inline (688) takes it over the bound.
        assert!(size <= 2_560, "the session future grew to {size} bytes");
    }
}

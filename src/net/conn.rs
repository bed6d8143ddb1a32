//! Serving one TLS connection: HTTP/1.1 (with upgrades) or h2 chosen by ALPN, the keep-alive idle
//! watchdog, and the drain's `graceful_shutdown()`.
//!
//! The protocol is picked from ALPN rather than sniffed, so hyper's header-read timer runs from the
//! first byte of HTTP/1.1 (auto-detection would leave the preface untimed). That timer, the
//! keep-alive timeout and the wake-ups for both are the connection's [`Watchdog`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::watchdog::{HeadTimer, Watch, Watchdog};
use crate::proxy::body::ProxyBody;

pub use super::watchdog::{Activity, InFlight};

/// Per-connection HTTP settings, from `[server]`.
#[derive(Clone, Copy)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// A hyper connection the drain can shut down gracefully.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<ProxyBody>,
            Error = std::convert::Infallible,
        >,
    S::Future: 'static,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S> Graceful for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<ProxyBody>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// A connection being served, on the heap: its HTTP/1.1 state is ~1.9 KB and h2's more, and a
/// connection task that embedded it would keep room for the larger of the two, for every keep-alive
/// connection, as long as it stays open.
type BoxedConnection = Pin<Box<dyn Graceful + Send>>;

/// Serves HTTP on an established stream until the client leaves, the idle watchdog fires, or the
/// drain shuts it down (in-flight requests finish first). Returns the
/// `voxguard_http_malformed_requests_total` reason when the client broke the protocol (hyper has
/// then already answered 400/431/408 where HTTP/1.1 allows, or sent GOAWAY).
///
/// A plain function that builds the connection before the future starts: an `async fn` would keep
/// its arguments (the TLS stream, ~1.3 KB) in its state beside the connection that took them.
pub fn serve<I, S>(
    io: I,
    h2: bool,
    service: S,
    settings: HttpSettings,
    activity: Arc<Activity>,
    drain_started: tokio_util::sync::CancellationToken,
) -> impl Future<Output = Option<&'static str>> + Send
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<ProxyBody>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    debug_assert_eq!(
        activity.runs_requests_inline(),
        !h2,
        "Activity::new(h2) must match"
    );
    let watchdog = Watchdog::new(activity.clone(), settings.keepalive_timeout);
    let conn: BoxedConnection = if h2 {
        Box::pin(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(settings.max_header_bytes as u32)
                .max_concurrent_streams(256)
                .serve_connection(io, service),
        )
    } else {
        Box::pin(
            hyper::server::conn::http1::Builder::new()
                .timer(HeadTimer(activity))
                .header_read_timeout(settings.header_read_timeout)
                // One buffer per response instead of a vectored write: rustls makes one TLS record
                // of either, but a vectored write costs it a list of slices and a second chunk to
                // walk. The price, a copy of the body into hyper's buffer, is small next to
                // encrypting it (callgrind: GET −2.0 %, POST −1.0 % per request).
                .writev(false)
                .max_header_size(settings.max_header_bytes)
                .max_headers(settings.max_headers)
                .serve_connection(io, service)
                .with_upgrades(),
        )
    };
    async move {
        let e = drive(conn, watchdog, &drain_started).await.err()?;
        tracing::debug!(error = %e, "connection ended with an error");
        client_fault(&e, h2)
    }
}

/// The malformed-request reason for a connection error the client caused; `None` for errors that
/// are not the client's (our own body, shutdown) or are ordinary hang-ups.
fn client_fault(e: &hyper::Error, h2: bool) -> Option<&'static str> {
    if e.is_parse_too_large() {
        Some("head_too_large")
    } else if e.is_parse() || e.is_parse_version_h2() {
        Some("malformed")
    } else if e.is_timeout() {
        Some("header_timeout")
    } else if e.is_incomplete_message() {
        Some("incomplete")
    } else if e.is_user()
        || e.is_canceled()
        || e.is_closed()
        || e.is_shutdown()
        || e.is_body_write_aborted()
    {
        None
    } else if h2 {
        Some("h2_protocol")
    } else {
        Some("other")
    }
}

async fn drive(
    mut conn: BoxedConnection,
    mut watchdog: Watchdog,
    drain_started: &tokio_util::sync::CancellationToken,
) -> Result<(), hyper::Error> {
    let drain = drain_started.cancelled();
    tokio::pin!(drain);
    let mut drain_watched = false;
    let mut shutting_down = false;
    std::future::poll_fn(|cx| {
        loop {
            // The connection first: nearly every wake-up is its socket.
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            if shutting_down {
                // Still woken for the deadlines of the requests finishing (a 504 is due on time).
                if watchdog.poll(cx) == Watch::Fired {
                    continue;
                }
                return Poll::Pending;
            }
            // The drain's future is polled once, so that cancelling wakes this task; after that a
            // wake-up reads the token, which costs less than polling the future again.
            let draining = if drain_watched {
                drain_started.is_cancelled()
            } else {
                drain_watched = true;
                drain.as_mut().poll(cx).is_ready()
            };
            let idle = match watchdog.poll(cx) {
                // A deadline may have passed: the connection reads the clock now.
                Watch::Fired if !draining => continue,
                watch => watch == Watch::Idle,
            };
            if !(draining || idle) {
                return Poll::Pending;
            }
            conn.as_mut().shutdown();
            shutting_down = true;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection's task embeds this future for as long as the connection lasts, idle
    /// keep-alive connections included: the hyper connection belongs on the heap, and the stream
    /// must not be kept a second time beside it.
    #[tokio::test]
    async fn a_served_connection_keeps_its_state_on_the_heap() {
        let settings = HttpSettings {
            header_read_timeout: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
            max_headers: 100,
        };
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(crate::proxy::body::empty()))
        });
        let (stream, _client) = tokio::io::duplex(64);
        let serving = serve(
            hyper_util::rt::TokioIo::new(stream),
            false,
            service,
            settings,
            Activity::new(false),
            tokio_util::sync::CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&serving);
        // 352 bytes in a debug build; 3,288 with the HTTP/1.1 and h2 connections inline (and
        // with a TLS stream, ~7,250 in a release build: h2's connection, the larger, set the size).
        assert!(size <= 512, "the serving future grew to {size} bytes");
    }
}

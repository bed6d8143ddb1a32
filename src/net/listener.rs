//! Accept loops: the TLS listener (connection limit, handshake timeout, per-connection task) and the
//! optional plain-HTTP listener that only redirects to https.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::Either;
use http::{HeaderValue, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admission::conn_limit::{PerIpCounter, Slot};
use crate::metrics::NetMetrics;
use crate::net::conn::{self, Activity, HttpSettings};
use crate::net::proxy_protocol;
use crate::net::tls::handshake_failure_reason;
use crate::pipeline::{ConnCtx, Pipeline};
use crate::proxy::body::{ProxyBody, empty};
use crate::respond::Rejection;

/// Connections the kernel completes and queues for a listener before voxguard accepts them.
///
/// Tokio and std listen with 128. When calls arrive in a burst (a campaign dialling out, every
/// stream of a restarted backend reconnecting) while the workers are busy with TLS handshakes,
/// a full queue makes Linux drop the SYN, and the caller's connect waits for its retransmit: a
/// second at the first try, which is already past most clients' and backends' connect timeouts.
/// nginx listens with 511. Linux clamps the value to `net.core.somaxconn` (4096 by default
/// since 5.4).
pub const LISTEN_BACKLOG: u32 = 1024;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`], set up as tokio's `TcpListener::bind`
/// otherwise is (`SO_REUSEADDR`, so a restart can bind while old connections are in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Counts open client connections (RAII), shared by the accept loop and upgraded sessions.
pub struct ConnGuard {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
    _per_ip: Option<Slot>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// Settings of the TLS listener that a reload does not change.
#[derive(Clone)]
pub struct TlsListenerSettings {
    pub http: HttpSettings,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: Option<u32>,
    /// Expect a PROXY protocol v1/v2 header before TLS on every connection.
    pub proxy_protocol: bool,
}

/// Accepts until the drain starts. Every connection runs in a task tracked by the drain.
pub async fn run_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    pipeline: Arc<Pipeline>,
    settings: TlsListenerSettings,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let per_ip = settings.max_connections_per_ip.map(PerIpCounter::new);
    let drain = pipeline.drain.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = drain.started.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let net = pipeline.metrics.net.clone();
        let over_limit = open.fetch_add(1, Ordering::Relaxed) >= settings.max_connections;
        net.active_connections.inc();
        let guard = ConnGuard {
            open: open.clone(),
            gauge: net.active_connections.clone(),
            _per_ip: None,
        };
        if over_limit {
            net.connections_rejected
                .with_label_values(&["max_connections"])
                .inc();
        }
        let conn = Accepted {
            tcp,
            peer,
            guard,
            over_limit,
        };
        drain.tasks.spawn(handle_tls(
            conn,
            acceptor.clone(),
            pipeline.clone(),
            settings.clone(),
            per_ip.clone(),
        ));
    }
}

/// A connection as accepted, counted but not yet admitted.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    over_limit: bool,
}

/// Admission at accept, before TLS: global lists, bans, the per-address connection cap.
/// `Err` carries the refusal reason (a metric label); the caller closes the connection.
fn admit_connection(
    pipeline: &Pipeline,
    ip: std::net::IpAddr,
    per_ip: Option<&Arc<PerIpCounter>>,
) -> Result<Option<Slot>, &'static str> {
    pipeline
        .runtime
        .load()
        .accept_lists
        .check(ip)
        .map_err(|refusal| refusal.label())?;
    if pipeline.bans.banned(ip).is_some() {
        return Err("banned");
    }
    match per_ip {
        None => Ok(None),
        Some(counter) => counter.try_acquire(ip).map(Some).ok_or("ip_connections"),
    }
}

/// One accepted connection, from admission to its last response. A plain function returning the
/// future, so that its arguments are kept once, not twice; the task lives as long as the
/// connection, and every keep-alive connection pays for its size.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of its arguments in its future"
)]
fn handle_tls(
    conn: Accepted,
    acceptor: TlsAcceptor,
    pipeline: Arc<Pipeline>,
    settings: TlsListenerSettings,
    per_ip: Option<Arc<PerIpCounter>>,
) -> impl Future<Output = ()> + Send {
    async move {
        // Boxed: the PROXY header's read and the TLS handshake are ~1.4 KB of futures that a
        // connection being served no longer needs room for.
        let handshake = admit_and_handshake(conn, &acceptor, &pipeline, &settings, per_ip);
        let Some(ready) = Box::pin(handshake).await else {
            return;
        };
        serve_tls(ready, pipeline, settings.http).await
    }
}

/// A connection through admission and its TLS handshake.
struct Handshaken {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
    over_limit: bool,
}

/// The PROXY header (when configured), admission, and the TLS handshake under its timeout; `None`
/// when the connection is refused or the handshake fails (counted, and the socket closed).
async fn admit_and_handshake(
    conn: Accepted,
    acceptor: &TlsAcceptor,
    pipeline: &Pipeline,
    settings: &TlsListenerSettings,
    per_ip: Option<Arc<PerIpCounter>>,
) -> Option<Handshaken> {
    let Accepted {
        mut tcp,
        mut peer,
        mut guard,
        over_limit,
    } = conn;
    let refusals = &pipeline.metrics.admission.refusals;
    if settings.proxy_protocol {
        match proxy_protocol::read_header(&mut tcp, settings.handshake_timeout).await {
            Ok(Some(source)) => peer = source,
            Ok(None) => {} // LOCAL / UNKNOWN: the balancer's own connection
            Err(reason) => {
                refusals
                    .with_label_values(&["proxy_protocol", "_accept"])
                    .inc();
                tracing::debug!(peer = %peer.ip(), reason, "bad PROXY protocol header; closing");
                return None;
            }
        }
    }
    match admit_connection(pipeline, peer.ip(), per_ip.as_ref()) {
        Ok(slot) => guard._per_ip = slot,
        Err(reason) => {
            refusals.with_label_values(&[reason, "_accept"]).inc();
            return None; // dropping `tcp` closes it before the TLS handshake
        }
    }
    let net: &NetMetrics = &pipeline.metrics.net;
    match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(Handshaken {
            tls,
            peer,
            guard: Arc::new(guard),
            over_limit,
        }),
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            net.tls_handshake_failures
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(client = %peer.ip(), reason, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            net.tls_handshake_failures
                .with_label_values(&["timeout"])
                .inc();
            tracing::debug!(client = %peer.ip(), "TLS handshake timed out");
            None
        }
    }
}

/// HTTP on a handshaken connection, then its malformed-request metric. A plain function: the TLS
/// stream goes straight into the connection, and the future keeps no copy of it.
fn serve_tls(
    ready: Handshaken,
    pipeline: Arc<Pipeline>,
    http: HttpSettings,
) -> impl Future<Output = ()> + Send {
    let h2 = ready.tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let flooded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = TokioIo::new(super::h2_flood::FloodGuard::new(
        ready.tls,
        h2,
        flooded.clone(),
    ));
    let activity = Activity::new(h2);
    let drain_started = pipeline.drain.started.clone();
    let malformed = pipeline.metrics.http.malformed.clone();
    // The connection counts against the limits until it closes: the service's context holds the
    // guard, and the refusing service has none, so this future holds it then.
    let mut refused_guard = None;
    // One service type per branch (each is its own `conn::serve`), the same arguments otherwise.
    macro_rules! serve_with {
        ($svc:expr) => {
            conn::serve(io, h2, $svc, http, activity, drain_started)
        };
    }
    let serving = if ready.over_limit {
        refused_guard = Some(ready.guard);
        // Answer 503 + Retry-After instead of a bare reset, so clients back off correctly.
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(Rejection::Overloaded.response())
        });
        Either::Left(serve_with!(svc))
    } else {
        let ctx = ConnCtx {
            peer: ready.peer,
            activity: activity.clone(),
            keep: ready.guard,
        };
        let handle = move |req| pipeline.clone().handle(req, ctx.clone());
        if h2 {
            // hyper spawns each HTTP/2 stream's future as a task of its own, moving it (~2.6 KB)
            // several times on the way into tokio's task cell. Boxed, what moves is a pointer:
            // ~2,000 fewer `memcpy` instructions per request (docs/PERFORMANCE.md, twenty-sixth
            // session). HTTP/1.1 keeps the future inline in the connection and moves it once per
            // request, so it is not boxed there.
            let svc = hyper::service::service_fn(move |req| Box::pin(handle(req)));
            Either::Right(Either::Left(serve_with!(svc)))
        } else {
            let svc = hyper::service::service_fn(handle);
            Either::Right(Either::Right(serve_with!(svc)))
        }
    };
    async move {
        let fault = serving.await;
        if refused_guard.is_some() {
            return;
        }
        if flooded.load(std::sync::atomic::Ordering::Relaxed) {
            malformed.with_label_values(&["h2_flood"]).inc();
        } else if let Some(reason) = fault {
            malformed.with_label_values(&[reason]).inc();
        }
    }
}

/// Plain-HTTP listener: every request gets 308 to the same path on https.
pub async fn run_redirect(
    listener: TcpListener,
    https_port: u16,
    settings: HttpSettings,
    drain: crate::shutdown::Drain,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = drain.started.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = hyper::service::service_fn(
            move |req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, Infallible>(redirect(&req, https_port))
            },
        );
        drain.tasks.spawn(conn::serve(
            TokioIo::new(tcp),
            false,
            svc,
            settings,
            Activity::new(false),
            drain.started.clone(),
        ));
    }
}

fn redirect(req: &http::Request<hyper::body::Incoming>, https_port: u16) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(crate::routing::strip_port)
        .filter(|h| !h.is_empty() && !h.contains(['/', '@', '\\']));
    let mut res = Response::new(empty());
    let Some(host) = host else {
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return res;
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{port}{path}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

//! Keep-alive HTTP/1.1 connections to one upstream, built on hyper's connection API.
//!
//! The pool replaces `hyper_util`'s general client, which keys every checkout by (scheme,
//! authority) through a hashed map and spawns a task per request to wait for the connection to
//! turn idle. An upstream here has exactly one origin, so its pool is a stack of idle senders:
//! the most recently used connection is reused first (its socket and TLS state are warm), and a
//! connection goes back on the stack when the response body it carried has been read to the end.
//!
//! A connection is not a task of its own. Whoever leases it (the request being sent, then the
//! response body being read) polls hyper's connection future beside its own work, so a request
//! and its response wake no second task: the client connection's task writes the request
//! upstream and reads the response in its own polls (`Lease::drive`). An idle connection is
//! polled by no one; the reaper looks at it every half idle period, and a checkout that finds the
//! backend gone retries as below. A 101 gives the connection's future a task of its own, to hand
//! the socket to the upgrade.
//!
//! What the general client did and this pool keeps:
//! - a request that a reused connection refused before writing a byte (the backend closed it while
//!   it sat idle) is retried once per pooled connection, then on a fresh one; a fresh connection's
//!   failure is final;
//! - idle connections are closed after `pool_idle_timeout` (checked at each checkout and by a
//!   reaper that runs every half period while the pool lives);
//! - the connect timeout is shared across the addresses a host name resolves to.
//!
//! Unlike the general client, the connect timeout here also covers the TLS handshake to an
//! `https://` upstream: a backend that accepts TCP and never finishes TLS is a connect failure
//! (502), not a slow response (504).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::proxy::body::ProxyBody;

/// Idle connections kept per upstream beyond which the oldest is closed: enough for a busy
/// sidecar's concurrency, small enough that a burst does not pin thousands of backend sockets.
pub const MAX_IDLE: usize = 512;

/// Why a request did not get a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, timed out, TLS failed): 502.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// A connection was made and the exchange on it failed: 502.
    #[error("{0}")]
    Protocol(hyper::Error),
}

/// Socket and TLS failures while opening a connection.
impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        Self::Connect(e)
    }
}

/// How to open a connection to the upstream: its address, and TLS when it is `https://`.
pub struct Connector {
    /// Host name or IP literal without brackets, as DNS or `SocketAddr` parsing wants it.
    pub host: String,
    pub port: u16,
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub connect_timeout: Duration,
}

/// hyper's connection future, boxed once per connection so that plain and TLS sockets share a
/// type and the future can move between the tasks that lease it. The mutex is never locked (the
/// lease is only ever used through `&mut`, so `get_mut` reaches the future): it is there to make
/// the response body `Sync`, as the proxy's boxed bodies must be, around a future that is not.
type Driver = std::sync::Mutex<Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>>;

/// One upstream connection: the handle that sends on it and the future that does the I/O.
struct Lease {
    sender: SendRequest<ProxyBody>,
    /// `None` once the connection has ended (closed by either side, or handed to an upgrade).
    driver: Option<Driver>,
    wake: Arc<DriverWake>,
    /// `wake` as a `Waker`, made once per connection.
    waker: std::task::Waker,
}

/// What the connection's future is polled with: the leasing task's waker, except while the
/// leaseholder itself is polling. Then a wake-up is only noted, and the leaseholder polls the
/// connection again itself. Reading the response body wakes the connection (it may send more),
/// and that would otherwise wake the task that is already running, which then polls the whole
/// client connection again for nothing: once per request.
#[derive(Default)]
struct DriverWake {
    task: futures_util::task::AtomicWaker,
    in_poll: AtomicBool,
    woken_in_poll: AtomicBool,
}

impl std::task::Wake for DriverWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.in_poll.load(Ordering::SeqCst) {
            self.woken_in_poll.store(true, Ordering::SeqCst);
        } else {
            self.task.wake();
        }
    }
}

/// How often a leaseholder polls the connection again in one poll when it keeps asking, before it
/// yields to the other tasks.
const DRIVES_PER_POLL: usize = 4;

impl Lease {
    fn new(sender: SendRequest<ProxyBody>, driver: Driver) -> Self {
        let wake = Arc::new(DriverWake::default());
        Self {
            sender,
            driver: Some(driver),
            waker: std::task::Waker::from(wake.clone()),
            wake,
        }
    }

    /// `step` (the response, or its body: what only the connection's future completes), then,
    /// while it is pending, the connection's future and `step` again; the connection is polled
    /// again while it asks to be. `step` is polled unwatched: the connection's wake-ups cover it.
    fn drive<T>(&mut self, cx: &mut Context<'_>, mut step: impl FnMut() -> Poll<T>) -> Poll<T> {
        self.wake.task.register(cx.waker());
        self.wake.in_poll.store(true, Ordering::SeqCst);
        let mut out = step();
        for _ in 0..DRIVES_PER_POLL {
            if out.is_ready() || self.driver.is_none() {
                break;
            }
            self.wake.woken_in_poll.store(false, Ordering::SeqCst);
            poll_connection(&mut self.driver, &mut Context::from_waker(&self.waker));
            out = step();
            if !self.wake.woken_in_poll.load(Ordering::SeqCst) {
                break;
            }
        }
        self.wake.in_poll.store(false, Ordering::SeqCst);
        if out.is_pending() && self.wake.woken_in_poll.swap(false, Ordering::SeqCst) {
            // Asked again after the last drive (or too often): the task runs again later.
            cx.waker().wake_by_ref();
        }
        out
    }

    /// Lets the connection do what it can now (see the end of an exchange, notice the backend's
    /// close) when no task waits on the outcome: an idle connection wakes no one.
    fn poll_driver_unwatched(&mut self) {
        poll_connection(&mut self.driver, &mut unwatched());
    }

    fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }
}

/// Polls a connection's future unless it has ended; once it ends it is dropped, never polled again.
fn poll_connection(driver: &mut Option<Driver>, cx: &mut Context<'_>) {
    if let Some(future) = driver
        && future
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .poll(cx)
            .is_ready()
    {
        *driver = None;
    }
}

/// A context whose wake-ups go nowhere: for polling what only a connection's own future, polled
/// with the task's context just before, can complete. Its wake-up would only wake this task again.
fn unwatched() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}

struct Idle {
    lease: Lease,
    since: Instant,
}

/// The keep-alive connections of one upstream.
pub struct Pool {
    connector: Connector,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    reaper_started: AtomicBool,
}

impl Pool {
    pub fn new(connector: Connector, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connector,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            reaper_started: AtomicBool::new(false),
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one, and returns
    /// the response whose body hands the connection back when it has been read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut lease, reused) = match self.checkout() {
                Some(lease) => (lease, true),
                // Boxed: the connect future (TCP, TLS handshake, timers) is most of this one's
                // size, and every request's future embeds this one, though few requests connect.
                None => (Box::pin(self.connect()).await?, false),
            };
            let mut response = std::pin::pin!(lease.sender.try_send_request(req));
            let sent = std::future::poll_fn(|cx| {
                lease.drive(cx, || response.as_mut().poll(&mut unwatched()))
            })
            .await;
            match sent {
                Ok(res) => return Ok(self.attach(lease, res)),
                Err(mut failed) => match failed.take_message() {
                    // Nothing was written: the backend closed this idle connection first.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Protocol(failed.into_error())),
                },
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock leaves a valid Vec; keep serving.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently idled live connection; closes the expired and the dead on the way.
    /// Dropped outside the lock: closing a socket is a system call.
    fn checkout(&self) -> Option<Lease> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() >= self.idle_timeout {
                // The newest is expired, so every older one is too.
                let expired = std::mem::take(&mut *idle);
                drop(idle);
                drop((entry, expired));
                return None;
            }
            if entry.lease.is_open() {
                return Some(entry.lease);
            }
        }
        None
    }

    /// Takes back a connection whose exchange is over; one that ended with it is dropped instead.
    fn release(&self, mut lease: Lease) {
        // The task that used the connection is forgotten: the next request on it would wake that
        // task for nothing, and an idle connection would keep the finished task's memory.
        drop(lease.wake.task.take());
        if !lease.sender.is_ready() {
            // hyper has not yet seen the end of the exchange.
            lease.poll_driver_unwatched();
        }
        if !lease.is_open() {
            return;
        }
        let mut idle = self.lock();
        let oldest = (idle.len() >= MAX_IDLE).then(|| idle.remove(0));
        idle.push(Idle {
            lease,
            since: Instant::now(),
        });
        drop(idle);
        drop(oldest);
    }

    /// Closes the expired, and those the backend closed while no one was polling them.
    fn evict_expired(&self) {
        let mut idle = self.lock();
        let timeout = self.idle_timeout;
        idle.retain_mut(|e| {
            e.lease.poll_driver_unwatched();
            e.since.elapsed() < timeout && e.lease.is_open()
        });
    }

    fn attach(self: &Arc<Self>, mut lease: Lease, res: Response<Incoming>) -> Response<PooledBody> {
        let owner = if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A 101 hands the socket to the upgrade, which hyper's connection future completes
            // when it next runs: give it a task of its own. The connection never comes back.
            if let Some(driver) = lease.driver.take() {
                let driver = driver
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                tokio::spawn(async move {
                    let _ended = driver.await; // logged by the driver itself
                });
            }
            None
        } else {
            Some((Arc::downgrade(self), lease))
        };
        res.map(|inner| {
            let mut body = PooledBody {
                inner,
                owner,
                held_error: None,
            };
            if body.inner.is_end_stream() {
                body.give_back();
            }
            body
        })
    }

    async fn connect(self: &Arc<Self>) -> Result<Lease, SendError> {
        self.start_reaper();
        let c = &self.connector;
        let timeout = c.connect_timeout;
        let opened = tokio::time::timeout(timeout, async {
            let tcp = connect_tcp(&c.host, c.port, timeout).await?;
            tcp.set_nodelay(true)?;
            match &c.tls {
                None => handshake(tcp).await,
                Some((tls, name)) => handshake(tls.connect(name.clone(), tcp).await?).await,
            }
        })
        .await;
        match opened {
            Err(_) => Err(SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection within {}",
                    humantime::format_duration(timeout)
                ),
            ))),
            Ok(result) => result,
        }
    }

    /// Closes idle connections past their time even when no request comes to notice them.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.evict_expired(),
                    None => return,
                }
            }
        });
    }
}

/// Tries each address the host resolves to, splitting the connect timeout among them.
async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, SendError> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port)).await?.collect();
    let share = timeout / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolved to no address");
    for addr in addrs {
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("{addr} timed out")),
        }
    }
    Err(SendError::Connect(last))
}

/// Starts HTTP/1.1 on an open socket (with upgrades, so a WebSocket handshake can take the socket
/// over). The connection's future is returned to be polled by its lease holders, not spawned.
async fn handshake<T>(io: T) -> Result<Lease, SendError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Protocol)?;
    let driver: Driver = std::sync::Mutex::new(Box::pin(async move {
        let ended = conn.with_upgrades().await;
        if let Err(e) = &ended {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
        ended
    }));
    Ok(Lease::new(sender, driver))
}

/// An upstream response body that drives its connection while it is read, and returns the
/// connection to the pool when read to the end. Dropped early, it drops the connection, which
/// closes it: a half-read response cannot be reused.
pub struct PooledBody {
    inner: Incoming,
    owner: Option<(Weak<Pool>, Lease)>,
    /// The error the backend's body broke off with, held back for one poll. The connection reads
    /// in the client's task, so a head, some body and a reset can arrive in one poll; hyper's
    /// server drops what it has not flushed when a body fails, and the client would get nothing.
    /// Held back, the error reaches the client after what the backend sent before it.
    held_error: Option<hyper::Error>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, lease)) = self.owner.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.release(lease);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(e) = self.held_error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        // The connection is driven only when the body has nothing yet: most responses are whole
        // in hyper's channel by the time the client's side asks, and another poll of the
        // connection then finds nothing to do.
        let this = &mut *self;
        let inner = &mut this.inner;
        let polled = match &mut this.owner {
            // Most responses are whole in hyper's channel by the time the client's side asks: the
            // connection is polled only when the body has nothing yet.
            Some((_, lease)) => {
                lease.drive(cx, || Pin::new(&mut *inner).poll_frame(&mut unwatched()))
            }
            None => Pin::new(inner).poll_frame(cx),
        };
        match polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(e))) => {
                // A broken body leaves the connection in an unknown state: never reuse it.
                self.owner = None;
                self.held_error = Some(e);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

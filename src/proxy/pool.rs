//! Keep-alive HTTP/1.1 connections to one upstream, built on hyper's connection API.
//!
//! The pool replaces `hyper_util`'s general client, which keys every checkout by (scheme,
//! authority) through a hashed map and spawns a task per request to wait for the connection to
//! turn idle. An upstream here has exactly one origin, so its pool is a stack of idle senders:
//! the most recently used connection is reused first (its socket and TLS state are warm), and a
//! connection goes back on the stack when the response body it carried has been read to the end.
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

struct Idle {
    sender: SendRequest<ProxyBody>,
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
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: the connect future (TCP, TLS handshake, timers) is most of this one's
                // size, and every request's future embeds this one, though few requests connect.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.attach(sender, res)),
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
    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() >= self.idle_timeout {
                // The newest is expired, so every older one is too.
                idle.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<ProxyBody>) {
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    fn evict_expired(&self) {
        let mut idle = self.lock();
        let timeout = self.idle_timeout;
        idle.retain(|e| e.since.elapsed() < timeout && !e.sender.is_closed());
    }

    /// Hands a connection whose exchange is over back to the pool, once hyper says it is idle.
    fn release(self: Arc<Self>, mut sender: SendRequest<ProxyBody>) {
        if sender.is_ready() {
            self.put(sender);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the exchange; wait for it off the
            // request path. It resolves as soon as the task runs, or fails if the backend closes.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    self.put(sender);
                }
            });
        }
    }

    fn attach(
        self: &Arc<Self>,
        sender: SendRequest<ProxyBody>,
        res: Response<Incoming>,
    ) -> Response<PooledBody> {
        // A 101 hands the socket to the upgrade: the connection never comes back.
        let owner = (res.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(sender);
        res.map(|inner| {
            let mut body = PooledBody {
                inner,
                owner: owner.map(|s| (Arc::downgrade(self), s)),
            };
            if body.inner.is_end_stream() {
                body.give_back();
            }
            body
        })
    }

    async fn connect(self: &Arc<Self>) -> Result<SendRequest<ProxyBody>, SendError> {
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

/// Starts HTTP/1.1 on an open socket; the connection runs as its own task (with upgrades, so a
/// WebSocket handshake can take the socket over).
async fn handshake<T>(io: T) -> Result<SendRequest<ProxyBody>, SendError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Protocol)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An upstream response body that returns its connection to the pool when read to the end.
/// Dropped early, it drops the connection, which hyper then closes: a half-read response cannot
/// be reused.
pub struct PooledBody {
    inner: Incoming,
    owner: Option<(Weak<Pool>, SendRequest<ProxyBody>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, sender)) = self.owner.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.release(sender);
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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            // A broken body leaves the connection in an unknown state: never reuse it.
            Poll::Ready(Some(Err(_))) => self.owner = None,
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

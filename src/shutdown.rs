//! Drain coordination: readiness, "stop accepting", "grace over", and task tracking.
//!
//! Order on SIGTERM/SIGINT: readiness false → listeners stop → connections get `graceful_shutdown()`
//! → in-flight requests finish → when the grace period ends, WebSocket sessions close with 1001 on both
//! sides → exit 0. A second signal exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every listener, connection and session. Cloning is cheap.
#[derive(Clone, Default)]
pub struct Drain {
    draining: Arc<AtomicBool>,
    /// Cancelled when the drain starts: stop accepting, shut connections down gracefully.
    pub started: CancellationToken,
    /// Cancelled when the grace period is over: close WebSocket sessions with 1001.
    pub grace_over: CancellationToken,
    /// Every connection and session task, so the drain can wait for them.
    pub tasks: TaskTracker,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// `/readyz` answers 503 once this is true.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs the drain: waits for tracked tasks up to `grace`, then tells sessions to close and waits
    /// a short, bounded time for their close handshakes. Returns whether everything finished.
    pub async fn run(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        self.started.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return true;
        }
        tracing::warn!(grace = ?grace, open = self.tasks.len(), "grace period over; closing remaining sessions");
        self.grace_over.cancel();
        tokio::time::timeout(CLOSE_HANDSHAKE_BOUND, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// How long closing sessions get to finish their close handshakes after the grace period.
const CLOSE_HANDSHAKE_BOUND: Duration = Duration::from_secs(5);

/// The signals that drive the process: the first SIGTERM/SIGINT starts the drain, SIGHUP reloads.
pub enum Signal {
    Terminate,
    Reload,
}

/// Waits for the next SIGTERM, SIGINT or SIGHUP.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) -> Signal {
        self.next_or(&tokio::sync::Notify::new()).await
    }

    /// Like `next`, and a reload also when `reload` is notified (the admin API).
    pub async fn next_or(&mut self, reload: &tokio::sync::Notify) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Terminate,
            _ = self.hup.recv() => Signal::Reload,
            _ = reload.notified() => Signal::Reload,
        }
    }
}

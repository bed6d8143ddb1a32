//! The audit writer: events go through a bounded queue to one thread of its own that appends them
//! to JSON Lines files in the audit directory. Its writes and fsyncs block on the disk, so they
//! never run on the threads the calls run on (with one CPU there is only one). A full queue is
//! counted and reported in the log itself (an `audit_dropped` entry), never silently lost. Files
//! rotate by size and by day; the chain continues across files and across restarts (the existing
//! files are replayed at start to find where it stands). A drain writes a `stop` entry and a
//! closing checkpoint, then syncs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::chain::{Chain, Position};
use crate::admission::signature::encoding::{hex_exact, sha256};

/// One event to record. Never content, digits, numbers, tokens or secrets.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: &'static str,
    pub actor: String,
    pub route: Option<String>,
    pub outcome: &'static str,
    pub fields: Value,
}

impl Event {
    pub fn new(event: &'static str, outcome: &'static str, fields: Value) -> Self {
        Self {
            event,
            actor: "voxguard".into(),
            route: None,
            outcome,
            fields,
        }
    }

    pub fn route(mut self, route: &str) -> Self {
        self.route = Some(route.to_string());
        self
    }
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub max_file_bytes: u64,
    /// Events queued for the writer before they are dropped (and counted).
    pub queue: usize,
}

enum Msg {
    Event(Event),
    Close(oneshot::Sender<()>),
}

/// The handle the proxy records through. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    pub dropped_counter: prometheus::IntCounter,
}

/// Queue length before events are dropped (and counted).
pub const QUEUE: usize = 4096;

impl AuditLog {
    /// Starts the writer. `mac_key` and `signing_seed` are 32 bytes each.
    pub fn start(
        settings: Settings,
        mac_key: [u8; 32],
        signing_seed: [u8; 32],
        dropped_counter: prometheus::IntCounter,
    ) -> Result<Self, String> {
        crate::recording::writer::create_private_dir(&settings.dir)
            .map_err(|e| format!("audit.dir: {e}"))?;
        probe_writable(&settings.dir)?;
        let at = resume(&settings.dir)?;
        let chain = Chain::new(&mac_key, &signing_seed, at);
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let counters = (dropped.clone(), dropped_counter.clone());
        // A runtime of its own, for the checkpoint timer; it ends when every sender is gone.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| format!("audit writer: {e}"))?;
        std::thread::Builder::new()
            .name("voxguard-audit".into())
            .spawn(move || runtime.block_on(writer(settings, chain, rx, counters)))
            .map_err(|e| format!("audit writer: {e}"))?;
        Ok(Self {
            tx,
            dropped,
            dropped_counter,
        })
    }

    /// Records an event without waiting; a full queue counts it.
    pub fn record(&self, e: Event) {
        if self.tx.try_send(Msg::Event(e)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_counter.inc();
        }
    }

    /// Writes `stop` and the closing checkpoint, then syncs (on drain).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The audit files in `dir`, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    f.sort();
    f
}

/// Every audit file's text, oldest first, as one chain to verify or report on.
pub fn read_all(dir: &Path) -> String {
    files(dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

/// Where the chain stands after the existing files.
fn resume(dir: &Path) -> Result<Position, String> {
    let mut at = Position::default();
    for f in files(dir) {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).map_err(|_| {
                format!(
                    "{}: a line is not JSON; run `voxguard audit verify`",
                    f.display()
                )
            })?;
            at.seq = v["seq"].as_u64().unwrap_or(at.seq);
            if let Some(mac) = v["mac"].as_str().and_then(|m| hex_exact(m, 32).ok()) {
                at.prev_mac.copy_from_slice(&mac);
            }
            at.head = sha256(&[at.head.as_slice(), line.as_bytes()].concat());
        }
    }
    Ok(at)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

struct File {
    out: std::fs::File,
    bytes: u64,
    day: String,
}

/// A log that cannot be written must stop the start, not fail silently later.
fn probe_writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("audit.dir {}: not writable: {e}", dir.display()))
}

fn open_new(dir: &Path, seq: u64) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let now = now_rfc3339();
    let stamp: String = now
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(15)
        .collect();
    let path = dir.join(format!("audit-{stamp}-{:012}.jsonl", seq + 1));
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    Ok(File {
        out,
        bytes: 0,
        day: now[..10].to_string(),
    })
}

async fn writer(
    settings: Settings,
    mut chain: Chain,
    mut rx: mpsc::Receiver<Msg>,
    (dropped, dropped_counter): (Arc<AtomicU64>, prometheus::IntCounter),
) {
    let mut file: Option<File> = None;
    let mut since_checkpoint = 0u64;
    let mut tick = tokio::time::interval(settings.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A line that cannot be written is lost like a dropped event: counted, and reported by an
    // `audit_dropped` entry once writing works again (the verifier also shows the chain break).
    let lost = |_: &std::io::Error| {
        dropped.fetch_add(1, Ordering::Relaxed);
        dropped_counter.inc();
    };
    let write = |chain: &mut Chain, line: String, file: &mut Option<File>| {
        let now = now_rfc3339();
        let rotate = file
            .as_ref()
            .is_none_or(|f| f.bytes >= settings.max_file_bytes || f.day != now[..10]);
        if rotate {
            match open_new(&settings.dir, chain.seq.saturating_sub(1)) {
                Ok(f) => *file = Some(f),
                Err(e) => {
                    tracing::error!(error = %e, "audit log: cannot open a file");
                    lost(&e);
                    return;
                }
            }
        }
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.out.write_all(format!("{line}\n").as_bytes()) {
                tracing::error!(error = %e, "audit log: write failed");
                lost(&e);
                // Reopen next time: the file may be gone or its filesystem remounted.
                *file = None;
                return;
            }
            f.bytes += line.len() as u64 + 1;
        }
    };
    // Events dropped since the last entry get one `audit_dropped` entry with their count.
    let report_dropped = |chain: &mut Chain, file: &mut Option<File>| {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let line = chain.entry(
                &now_rfc3339(),
                "audit_dropped",
                "voxguard",
                None,
                "error",
                &serde_json::json!({"count": lost}),
            );
            write(chain, line, file);
        }
    };
    let start = chain.entry(
        &now_rfc3339(),
        "audit_start",
        "voxguard",
        None,
        "ok",
        &serde_json::json!({}),
    );
    write(&mut chain, start, &mut file);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Event(e)) => {
                    report_dropped(&mut chain, &mut file);
                    let line = chain.entry(&now_rfc3339(), e.event, &e.actor, e.route.as_deref(), e.outcome, &e.fields);
                    write(&mut chain, line, &mut file);
                    since_checkpoint += 1;
                    if since_checkpoint >= settings.checkpoint_every {
                        let line = chain.checkpoint(&now_rfc3339(), false);
                        write(&mut chain, line, &mut file);
                        since_checkpoint = 0;
                    }
                }
                Some(Msg::Close(done)) => {
                    report_dropped(&mut chain, &mut file);
                    let line = chain.entry(&now_rfc3339(), "stop", "voxguard", None, "ok", &serde_json::json!({}));
                    write(&mut chain, line, &mut file);
                    let line = chain.checkpoint(&now_rfc3339(), true);
                    write(&mut chain, line, &mut file);
                    if let Some(f) = &file {
                        let _ = f.out.sync_all();
                    }
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
            _ = tick.tick() => {
                if since_checkpoint > 0 {
                    let line = chain.checkpoint(&now_rfc3339(), false);
                    write(&mut chain, line, &mut file);
                    since_checkpoint = 0;
                    if let Some(f) = &file {
                        let _ = f.out.sync_data();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, queue: usize) -> Settings {
        Settings {
            dir: dir.join("audit"),
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(60),
            max_file_bytes: 1 << 20,
            queue,
        }
    }

    fn text_of(dir: &Path) -> String {
        files(&dir.join("audit"))
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_is_counted_and_reported_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let counter = prometheus::IntCounter::new("d", "d").unwrap();
        let log =
            AuditLog::start(settings(dir.path(), 1), [1; 32], [2; 32], counter.clone()).unwrap();
        // A burst into a queue of one: the writer (a file write per event) keeps few of them.
        const BURST: u64 = 10_000;
        for i in 0..BURST {
            log.record(Event::new("test", "ok", serde_json::json!({"i": i})));
        }
        assert!(counter.get() > 0, "a queue of one drops most of a burst");
        log.close().await;
        let text = text_of(dir.path());
        // Every event is either written or counted in an `audit_dropped` entry: none silently lost.
        let entries: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let written = entries.iter().filter(|e| e["event"] == "test").count() as u64;
        let reported: u64 = entries
            .iter()
            .filter(|e| e["event"] == "audit_dropped")
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        assert_eq!((reported, written + reported), (counter.get(), BURST));
        let pk =
            super::super::chain::Chain::new(&[1; 32], &[2; 32], Position::default()).public_key();
        assert!(matches!(
            super::super::chain::verify(text.lines(), Some(&[1; 32]), &pk),
            super::super::chain::Verdict::Ok { .. }
        ));
    }

    /// The writer blocks on the disk; it must do so on its own thread. This test holds the
    /// runtime's only thread without yielding, and the event must reach the file meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn the_writer_needs_none_of_the_runtime_threads() {
        let dir = tempfile::tempdir().unwrap();
        let counter = prometheus::IntCounter::new("d", "d").unwrap();
        let log = AuditLog::start(settings(dir.path(), 16), [1; 32], [2; 32], counter).unwrap();
        log.record(Event::new("while_blocked", "ok", serde_json::json!({})));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !text_of(dir.path()).contains("\"event\":\"while_blocked\"") {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing was written while the runtime's thread was busy"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        log.close().await;
    }
}

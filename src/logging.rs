//! Log output that never blocks a request: each formatted line goes through a bounded queue to one
//! thread that writes it to stderr. When the reader of stderr (a container runtime, journald, a pipe)
//! falls behind, the pipe fills and that thread waits; the proxy's threads do not. Lines that find
//! the queue full are dropped and counted in `voxguard_log_lines_dropped_total`.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

/// Lines waiting for stderr before new ones are dropped: a burst of ~1 MiB of access lines.
pub const QUEUE_LINES: usize = 4096;

/// How long the exit waits for queued lines to reach stderr.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Lines dropped because the queue was full. One process-wide counter, registered in every
/// `Metrics` registry (a process has one logger).
pub static LINES_DROPPED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        crate::metrics::LOG_LINES_DROPPED,
        "Log lines dropped because stderr's reader fell behind and the log queue was full.",
    )
    .expect("valid metric")
});

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The `MakeWriter` for `tracing_subscriber::fmt`: one `LineWriter` per event.
#[derive(Clone)]
pub struct QueuedStderr {
    tx: SyncSender<Msg>,
}

/// Held by `main` until exit: dropping it waits (briefly) for queued lines to be written.
pub struct FlushOnDrop {
    tx: SyncSender<Msg>,
}

/// The process's log queue, for `flush` on paths that exit without unwinding.
static PROCESS_QUEUE: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Starts the writer thread for the process's logs.
pub fn queued_stderr() -> std::io::Result<(QueuedStderr, FlushOnDrop)> {
    let (writer, guard) = queued(std::io::stderr(), QUEUE_LINES)?;
    let _ = PROCESS_QUEUE.set(guard.tx.clone());
    Ok((writer, guard))
}

/// Waits (briefly) until what is queued reaches stderr: before `std::process::exit`, which skips
/// `FlushOnDrop`.
pub fn flush() {
    if let Some(tx) = PROCESS_QUEUE.get() {
        flush_queue(tx);
    }
}

fn flush_queue(tx: &SyncSender<Msg>) {
    let (done, wait) = sync_channel(1);
    // Blocks while the queue is full, as an exit should: lines before it go first.
    if tx.send(Msg::Flush(done)).is_ok() {
        let _ = wait.recv_timeout(FLUSH_WAIT);
    }
}

/// The same over any output, with `capacity` lines of queue (tests).
pub fn queued(
    out: impl Write + Send + 'static,
    capacity: usize,
) -> std::io::Result<(QueuedStderr, FlushOnDrop)> {
    let (tx, rx) = sync_channel(capacity);
    std::thread::Builder::new()
        .name("voxguard-log".into())
        .spawn(move || write_lines(out, rx))?;
    Ok((QueuedStderr { tx: tx.clone() }, FlushOnDrop { tx }))
}

fn write_lines(mut out: impl Write, rx: Receiver<Msg>) {
    for msg in rx {
        match msg {
            // Nowhere to report a failed write to stderr: the line is lost, as it would be inline.
            Msg::Line(line) => {
                let _ = out.write_all(&line);
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        flush_queue(&self.tx);
    }
}

/// One event's line, sent whole when the formatter is done with it.
pub struct LineWriter {
    line: Vec<u8>,
    tx: SyncSender<Msg>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => LINES_DROPPED.inc(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            line: Vec::new(),
            tx: self.tx.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that takes nothing until the test opens it: a pipe whose reader stalled.
    #[derive(Clone)]
    struct Stalled {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.open;
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                is_open = cv.wait(is_open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_blocking_the_caller() {
        use tracing_subscriber::fmt::MakeWriter;
        let out = Stalled {
            open: Arc::default(),
            got: Arc::default(),
        };
        let (make, flush) = queued(out.clone(), 8).unwrap();
        let before = LINES_DROPPED.get();
        // The writer thread holds one line in the stalled write; 8 wait; the rest are dropped. None
        // of these calls waits (this test would hang if one did).
        for i in 0..100 {
            writeln!(make.make_writer(), "line {i}").unwrap();
        }
        let dropped = LINES_DROPPED.get() - before;
        assert!((91..=92).contains(&dropped), "{dropped}");
        let (open, cv) = &*out.open;
        *open.lock().unwrap() = true;
        cv.notify_all();
        drop(flush); // waits until what was queued is written
        let got = String::from_utf8(out.got.lock().unwrap().clone()).unwrap();
        assert!(got.starts_with("line 0\nline 1\n"), "{got}");
        assert_eq!(got.lines().count() as u64, 100 - dropped, "{got}");
    }
}

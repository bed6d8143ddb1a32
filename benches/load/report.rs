//! What a run prints: counts, an HDR latency histogram, and the CPU time and memory that the named
//! processes (the proxy) used while the load was measured, read from `/proc`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Round-trip latencies in microseconds, 1 µs to 60 s at three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

/// Clock ticks per second for `/proc/PID/stat`'s utime and stime (USER_HZ is 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, all threads) and resident memory of a set of processes.
#[derive(Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

impl ProcSample {
    /// Reads every PID; a PID that has gone away counts as nothing.
    pub fn read(pids: &[u32]) -> Self {
        let mut s = Self::default();
        for pid in pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // Fields after the command name, which is in parentheses and may hold spaces.
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
                let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
                s.cpu_seconds += ticks as f64 / USER_HZ;
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                s.rss_kib += status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        s
    }
}

/// The measured span of a run: from the end of the warm-up to the end of the run.
#[derive(Clone, Copy)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
}

impl Span {
    /// Whether an operation that completed at `t` is counted.
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// The span plus the `/proc` samples taken when it began.
pub struct Window {
    pub span: Span,
    before: ProcSample,
    load_before: ProcSample,
}

/// What the proxy used over the window, and what the load side used: this generator and the
/// `--load-pid` processes (compare.sh: the backend, which shares the generator's core). Per-process
/// times, not `/proc/stat`'s per-CPU ticks: a paced generator wakes on millisecond timers, in step
/// with the tick, and the tick's samples then miss most of its work.
pub struct Usage {
    pub proxy: (ProcSample, ProcSample),
    /// CPU seconds per second of the window (on one pinned core: the share of it that was busy).
    pub load_cpu_busy: f64,
}

/// This process and the `--load-pid` processes.
fn load_side(load_pids: &[u32]) -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    pids.extend_from_slice(load_pids);
    pids
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            span: Span {
                start,
                end: start + duration,
            },
            before: ProcSample::default(),
            load_before: ProcSample::default(),
        }
    }

    /// Waits for the warm-up to end and takes the first `/proc` samples.
    pub async fn begin(&mut self, common: &crate::Common) {
        tokio::time::sleep_until(self.span.start.into()).await;
        self.before = ProcSample::read(&common.pids);
        self.load_before = ProcSample::read(&load_side(&common.load_pids));
    }

    /// Waits for the run to end; the usage over the window.
    pub async fn finish(&self, common: &crate::Common) -> Usage {
        tokio::time::sleep_until(self.span.end.into()).await;
        let load = ProcSample::read(&load_side(&common.load_pids));
        let seconds = (self.span.end - self.span.start).as_secs_f64();
        Usage {
            proxy: (self.before, ProcSample::read(&common.pids)),
            load_cpu_busy: (load.cpu_seconds - self.load_before.cpu_seconds) / seconds,
        }
    }
}

/// The JSON line a run prints; `ops` are requests or round trips, counted in the measured span.
pub fn result(
    mode: &str,
    common: &crate::Common,
    (ops, errors): (u64, u64),
    hist: &Histogram<u64>,
    usage: Usage,
    extra: Value,
) -> Value {
    let (label, pids) = (&common.label, &common.pids);
    let seconds = common.duration.as_secs_f64();
    let (before, after) = usage.proxy;
    let cpu = after.cpu_seconds - before.cpu_seconds;
    let mut v = json!({
        "mode": mode,
        "label": label,
        "ops": ops,
        "errors": errors,
        "seconds": seconds,
        "ops_per_s": ops as f64 / seconds,
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "max_us": hist.max(),
    });
    if !pids.is_empty() {
        v["proxy_cpu_s"] = json!(cpu);
        v["proxy_cpu_us_per_op"] = json!(if ops > 0 { cpu * 1e6 / ops as f64 } else { 0.0 });
        v["proxy_rss_kib"] = json!(after.rss_kib);
    }
    v["load_cpu_busy"] = json!(usage.load_cpu_busy);
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    v
}

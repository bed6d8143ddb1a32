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

/// Busy and total time of the CPUs this process may run on, from `/proc/stat`. Under `compare.sh`
/// that is the one core the load generator shares with the backend: when it is busy all the time,
/// the generator's own delays (not the proxy) set the round trips' tail.
#[derive(Clone, Copy, Default)]
pub struct LoadCpus {
    busy: u64,
    total: u64,
}

impl LoadCpus {
    /// `None` when the process may run on every CPU (then the figure would include the proxy's).
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
        let allowed = parse_cpu_list(list.trim())?;
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut sample = Self::default();
        let mut cpus = 0;
        for line in stat.lines() {
            let mut fields = line.split_whitespace();
            let Some(cpu) = fields
                .next()
                .and_then(|name| name.strip_prefix("cpu"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            cpus += 1;
            if !allowed.contains(&cpu) {
                continue;
            }
            // user nice system idle iowait irq softirq steal (then guest time, already in user).
            let ticks: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
            if ticks.len() < 8 {
                return None;
            }
            let idle = ticks[3] + ticks[4];
            sample.total += ticks.iter().sum::<u64>();
            sample.busy += ticks.iter().sum::<u64>() - idle;
        }
        (allowed.len() < cpus).then_some(sample)
    }

    /// The share of the time between `before` and `self` that the CPUs were busy.
    pub fn busy_since(&self, before: &Self) -> Option<f64> {
        let total = self.total.checked_sub(before.total)?;
        (total > 0).then(|| self.busy.saturating_sub(before.busy) as f64 / total as f64)
    }
}

/// `0-1,4` → [0, 1, 4].
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
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
    load_before: Option<LoadCpus>,
}

/// What the proxy used over the window, and how busy the load generator's own CPUs were.
pub struct Usage {
    pub proxy: (ProcSample, ProcSample),
    pub load_cpu_busy: Option<f64>,
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
            load_before: None,
        }
    }

    /// Waits for the warm-up to end and takes the first `/proc` sample.
    pub async fn begin(&mut self, pids: &[u32]) {
        tokio::time::sleep_until(self.span.start.into()).await;
        self.before = ProcSample::read(pids);
        self.load_before = LoadCpus::read();
    }

    /// Waits for the run to end; the usage over the window.
    pub async fn finish(&self, pids: &[u32]) -> Usage {
        tokio::time::sleep_until(self.span.end.into()).await;
        let load_after = LoadCpus::read();
        Usage {
            proxy: (self.before, ProcSample::read(pids)),
            load_cpu_busy: self
                .load_before
                .zip(load_after)
                .and_then(|(before, after)| after.busy_since(&before)),
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
    if let Some(busy) = usage.load_cpu_busy {
        v["load_cpu_busy"] = json!(busy);
    }
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    v
}

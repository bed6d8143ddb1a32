//! `voxguard-load`: the load harness behind `benches/compare.sh` (docs/PERFORMANCE.md).
//!
//! One binary plays both ends of a benchmark so that every proxy is measured with the same client
//! and the same backend: `backend` serves a trivial HTTP app and a WebSocket echo; `http` and `ws`
//! drive load through whatever sits in between and print one JSON line of results, including the
//! CPU time and memory of the processes named with `--pid` (read from `/proc`).

mod audio;
mod backend;
mod http;
mod net;
mod report;
mod ws;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "voxguard-load",
    about = "Load harness for voxguard and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `200 ok` on one port and a WebSocket echo on another, until killed.
    Backend(backend::BackendArgs),
    /// HTTP requests: keep-alive or a new (resumed) TLS connection each, GET or signed POST.
    Http(http::HttpArgs),
    /// WebSocket calls sending Twilio Media Streams messages, paced or flat out, to an echo.
    Ws(ws::WsArgs),
}

/// Options every load mode shares.
#[derive(Args, Clone)]
pub struct Common {
    /// A label copied into the JSON result (e.g. "nginx").
    #[arg(long, default_value = "")]
    pub label: String,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load that runs before measuring starts (connections open, caches warm).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// PEM certificate(s) to trust for https:// and wss:// (the benchmark's own CA or leaf).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Processes whose CPU time and RSS are reported (the proxy; repeat for nginx's workers).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Processes on the load side (the backend): their CPU time and this generator's, over the
    /// window, are reported as `load_cpu_busy`.
    #[arg(long = "load-pid")]
    pub load_pids: Vec<u32>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = std::env::var("VOXGUARD_LOAD_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Backend(a) => backend::run(a).await,
            Command::Http(a) => http::run(a).await,
            Command::Ws(a) => ws::run(a).await,
        }
    })
}

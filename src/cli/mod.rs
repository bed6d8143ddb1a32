//! Command-line interface. `run` lives in `main.rs`; the other subcommands are here.

pub mod audit;
pub mod recording;
pub mod webhook;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "voxguard",
    version,
    about = "TLS-terminating reverse-proxy sidecar for voice services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy. SIGTERM/SIGINT drain and exit 0 (a second signal exits at once); SIGHUP reloads
    /// routes, upstreams and per-route limits from the same file.
    Run {
        /// Path to proxy.toml.
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Validate a config and print the effective configuration (secrets masked). Exit 64 if invalid.
    Check {
        /// Path to proxy.toml.
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Sign or verify a webhook request the way the proxy does, to test a provider setup.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Print a new key-encryption key (an id and base64 of 32 random bytes) for a secret store.
    Keygen {
        /// The KEK id (default: k + today's date, e.g. k20261202).
        #[arg(long)]
        id: Option<String>,
    },
    /// Key maintenance.
    #[command(subcommand)]
    Keys(recording::KeysCommand),
    /// Verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// List, verify, decrypt and erase recordings.
    #[command(subcommand)]
    Recording(recording::RecordingCommand),
    /// Print the version.
    Version,
}

/// Exit code for a configuration error (EX_USAGE / EX_DATAERR family, as linkerd and sysexits use).
pub const EXIT_CONFIG: i32 = 64;
/// Exit code when a second signal cuts the drain short.
pub const EXIT_FORCED: i32 = 130;

/// The process environment, the only place the proxy reads it.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

//! voxguard: a TLS-terminating HTTP/WebSocket reverse proxy that hardens voice services.
//! See `docs/ARCHITECTURE.md` for the data flow.

pub mod admin;
pub mod admission;
pub mod alerts;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod proxy;
pub mod recording;
pub mod respond;
pub mod routing;
pub mod shutdown;
pub mod ws;

pub use app::{App, BoundAddrs};
pub use config::Config;

/// Installs the process-wide rustls provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

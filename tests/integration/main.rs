//! The one integration-test binary: real TLS sockets on 127.0.0.1:0, real backends, real clients.

mod support;

mod admin_api;
mod admission;
mod audit;
mod backend_faults;
mod chart;
mod config_cli;
mod deploy;
mod framing;
mod http;
mod lifecycle;
mod load_harness;
mod media;
mod media_audio;
mod ops_faults;
mod properties;
mod recording;
mod tls;
mod upstream_pool;
mod webhook;
mod webhook_cli;
mod websocket;
mod ws_hostile;

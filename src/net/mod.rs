//! Sockets: accepting, TLS, and serving one connection with hyper.

pub mod cert_expiry;
pub mod conn;
pub mod h2_flood;
pub mod listener;
pub mod proxy_protocol;
pub mod tls;
pub mod watchdog;

//! HTTP forwarding: header rewriting, streaming bodies, pooled upstream clients.

pub mod body;
pub mod headers;
pub mod http;
pub mod pool;
pub mod upstream;

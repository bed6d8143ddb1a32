//! Admission: who gets in, decided before any byte reaches the backend. Pure functions and values:
//! nothing here bumps a metric or writes a log; `pipeline.rs` and the listener record outcomes.

pub mod ban;
pub mod client_ip;
pub mod conn_limit;
pub mod ip_allow;
pub mod rate_limit;

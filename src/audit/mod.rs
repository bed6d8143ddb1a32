//! The tamper-evident audit log: who did what, when, to which data. The chain format is in `chain.rs`.
pub mod chain;

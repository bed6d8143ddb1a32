//! Redactors over decoded call events.
pub mod goertzel;

//! WebSocket relay. Both sides are upgraded by hyper; each message is decoded by tungstenite and
//! relayed one by one, so later stages (codecs, redactors) can inspect every message.

pub mod call;
pub mod intercept;
pub mod protocols;
pub mod record;
pub mod record_line;
pub mod record_queue;
pub mod redact;
pub mod session;
pub mod stall;
pub mod wake;

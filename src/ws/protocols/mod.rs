//! Media protocols: a [`FrameCodec`] turns one WebSocket message into a [`Frame`] (what kind of event
//! it is, its JSON, its audio as samples) and back. One file per protocol. A frame that no redactor
//! changed is forwarded as the original message, byte for byte.

pub mod audio;
pub mod media_scan;
pub mod payload;
pub mod pcm;
pub mod twilio;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub use audio::Audio;

/// Which way a message travels. The client side of the proxy is the provider (the caller's leg).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ToBackend,
    ToCaller,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::ToBackend => "to_backend",
            Direction::ToCaller => "to_caller",
        }
    }
}

/// What a message is. `Other` covers every event a protocol does not name: it passes untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connected,
    Start,
    Media,
    Dtmf,
    Mark,
    Clear,
    Stop,
    Metadata,
    Other,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Connected => "connected",
            Kind::Start => "start",
            Kind::Media => "media",
            Kind::Dtmf => "dtmf",
            Kind::Mark => "mark",
            Kind::Clear => "clear",
            Kind::Stop => "stop",
            Kind::Metadata => "metadata",
            Kind::Other => "other",
        }
    }
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    /// A text message's JSON, unknown fields and all (key order kept).
    pub json: Option<Value>,
    /// A media message's samples, in the wire's encoding.
    pub audio: Option<Audio>,
    /// The audio track (`inbound`/`outbound` for Twilio; PCM has one).
    pub track: Track,
    /// For a media message decoded on the fast path: the original text and where its base64 payload
    /// sits in it, so a changed frame is re-encoded by replacing just the payload (no JSON tree).
    pub payload_at: Option<(
        tokio_tungstenite::tungstenite::Utf8Bytes,
        std::ops::Range<usize>,
    )>,
}

/// An audio track within one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    Inbound,
    Outbound,
    Single,
}

/// Why a message could not be decoded (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not valid JSON")]
    Json,
    #[error("a required field is missing or has the wrong type")]
    Field,
    #[error("payload is not valid base64")]
    Base64,
    #[error("audio is not a whole number of samples")]
    PartialSample,
    #[error("binary message on a text protocol")]
    UnexpectedBinary,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Json => "json",
            Malformed::Field => "field",
            Malformed::Base64 => "base64",
            Malformed::PartialSample => "partial_sample",
            Malformed::UnexpectedBinary => "unexpected_binary",
        }
    }
}

/// One media protocol.
pub trait FrameCodec: Send + Sync {
    fn name(&self) -> &'static str;
    /// Decodes a text or binary message (control frames never reach a codec).
    fn decode(&self, msg: &Message, direction: Direction) -> Result<Frame, Malformed>;
    /// Encodes a frame that a redactor changed.
    fn encode(&self, frame: &Frame) -> Message;
}

/// Reads a string field by JSON pointer.
pub(crate) fn str_at<'a>(json: &'a Value, pointer: &str) -> Option<&'a str> {
    json.pointer(pointer).and_then(Value::as_str)
}

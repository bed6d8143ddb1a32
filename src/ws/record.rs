//! What a call's recording receives: the redacted events, through a bounded queue that never stalls
//! the call (a full queue drops the entry and counts its events). Media frames arrive encoded, a
//! few to an entry (`ToRecorder::Frames`). `RecordingSink` is the seam; the encrypted
//! file recorder (`recording::writer::FileSink`) stands behind it, and an object-store sink could.

use std::time::Duration;

use serde_json::Value;

use super::protocols::{Audio, Direction, Kind, Track};

/// One redacted event, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Since the call started.
    pub at: Duration,
    pub direction: Direction,
    pub kind: Kind,
    pub track: Track,
    pub audio: Option<Audio>,
    /// Text events (media messages carry only their audio). Boxed, like `call`: events wait in
    /// per-call queues and batches by the dozen, and most are media frames without either, so an
    /// inline `Value` (72 bytes) and `CallInfo` (56) would triple every slot (see `slot_size`).
    pub json: Option<Box<Value>>,
    /// On the event that starts the call (Twilio `start`, the first PCM metadata message): what the
    /// recorder needs to decide whether and under whom to record, taken before redaction.
    pub call: Option<Box<CallInfo>>,
}

/// What a call's recording queue carries, in the call's order.
#[derive(Debug, PartialEq)]
pub enum ToRecorder {
    /// A text event, kept whole: the recorder reads the call's first event for consent and
    /// subject, and serialises text events itself.
    Event(RecordedEvent),
    /// Media frames, already encoded as the recording's records, back to back
    /// (`recording::writer::encode_event`). The session encodes each frame as the delay releases
    /// it and hands them over about a kilobyte at a time, instead of queueing every 20 ms frame as
    /// an event for the recorder to wake for and copy out of later, by then out of the cache.
    Frames {
        records: Vec<u8>,
        /// Frames in `records` (what a full queue drops is counted in frames).
        count: u32,
        /// The last frame's time since the call started (the recording's duration).
        last_at: Duration,
    },
}

/// Consent and subject, read from the route's configured parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallInfo {
    /// The consent parameter was present and `"true"`.
    pub consent: bool,
    /// The raw subject value; the recorder keeps only its keyed hash.
    pub subject: Option<String>,
    /// The provider's stream id (Twilio `streamSid`); the audit log keeps only its keyed hash.
    pub stream: Option<String>,
}

/// What a sink is told when a call starts.
#[derive(Debug, Clone)]
pub struct CallStart {
    pub route: String,
    pub codec: crate::recording::format::Codec,
    pub sample_rate: u32,
    /// The route's own retention, if it overrides `[recording] retention`.
    pub retention: Option<std::time::Duration>,
    /// Nothing is recorded unless the call's first event carries consent.
    pub consent_required: bool,
}

/// The sending side of a call's recording queue, and a token the recorder cancels when the call must
/// end because it cannot be recorded (`on_error = "close"`).
pub struct CallRecorder {
    pub events: tokio::sync::mpsc::Sender<ToRecorder>,
    pub failed: tokio_util::sync::CancellationToken,
}

/// Receives recordings, one queue per call.
pub trait RecordingSink: Send + Sync {
    fn start_call(&self, call: &CallStart) -> CallRecorder;
}

/// Entries per call queue before the call's events are dropped (and counted). A `Frames` entry
/// holds several frames, so this is more than ten seconds of a call's audio.
pub const QUEUE_EVENTS: usize = 1024;

#[cfg(test)]
mod tests {
    /// A recorded call holds up to a few hundred of these in its queue, batch and delay line; the
    /// 64 KiB-per-recorded-call target depends on the slot staying small.
    #[test]
    fn slot_size() {
        let size = std::mem::size_of::<super::RecordedEvent>();
        assert!(size <= 80, "RecordedEvent grew to {size} bytes");
    }
}

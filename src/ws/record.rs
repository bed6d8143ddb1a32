//! What a call's recording receives: the redacted events, through a bounded queue that never stalls
//! the call (a full queue drops the entry and counts its events). Media frames arrive encoded, a
//! chunk's worth to an entry (`ToRecorder::Frames`). `RecordingSink` is the seam; the encrypted
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
    /// A text event, kept whole: the call's first event, which the recorder reads for consent and
    /// subject, and any text event before it. The recorder serialises them itself. Boxed: such
    /// events are a few per call, and inline they would make every slot of the call's queue (and
    /// of the recorder's batch) 72 bytes instead of 16.
    Event(Box<RecordedEvent>),
    /// Media frames, and the text events after the call's first event, already encoded (see
    /// [`EncodedFrames`]). Boxed, like `Event`: the call's queue keeps the room its busiest moment
    /// needed, idle or not, so its slots stay 16 bytes; the box is one more allocation per batch,
    /// about once a second.
    Frames(Box<EncodedFrames>),
}

/// Media frames, and the text events after the call's first event, already encoded as the
/// recording's records, back to back (`recording::writer::encode_event`). The session encodes each
/// as it arrives (`ws::record_line`) and gathers them, once the tone delay releases them, up to the
/// sink's [`FrameBatch`], so that the recorder
/// wakes about once a second per call, for a whole chunk, instead of for every few frames.
/// `records` is allocated with [`FRAME_ROOM`] to spare, so the recorder can seal it in place as
/// the chunk.
#[derive(Debug, PartialEq)]
pub struct EncodedFrames {
    pub records: Vec<u8>,
    /// Events in `records` (what a full queue drops is counted in events).
    pub count: u32,
    /// The last frame's time since the call started (the recording's duration).
    pub last_at: Duration,
    /// The batch reached `FrameBatch::bytes` or waited `FrameBatch::wait`: the recorder writes
    /// it as a chunk now. Otherwise (the call went quiet, a text event came, the session
    /// ended) it joins the chunk being gathered.
    pub whole: bool,
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
    pub events: super::record_queue::Sender<ToRecorder>,
    pub failed: tokio_util::sync::CancellationToken,
    /// How many encoded frames the session gathers into one `ToRecorder::Frames`.
    pub batch: FrameBatch,
}

/// How long a session gathers encoded frames before handing them to the recorder: the sink's
/// chunk, in bytes and in time, so that each whole batch is one chunk to seal and write.
/// The default (nothing gathered) is for sessions that record nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameBatch {
    /// Hand over once the encoded frames reach this many bytes...
    pub bytes: usize,
    /// ...or once the oldest of them has waited this long (the recording's `flush_interval`: a
    /// crash loses no more audio than the sink's own flushing would).
    pub wait: Duration,
}

/// What a batch's buffer holds beyond `FrameBatch::bytes`: the frame that passes it (a 20 ms
/// frame of 16 kHz PCM is 652 bytes as a record) and the AEAD tag the recorder seals in place.
pub const FRAME_ROOM: usize = 2 * 1024;

/// Receives recordings, one queue per call.
pub trait RecordingSink: Send + Sync {
    fn start_call(&self, call: &CallStart) -> CallRecorder;
}

/// Entries per call queue before the call's events are dropped (and counted). A whole `Frames`
/// entry holds about a second of a call's audio, so this is well over a minute of a two-way call
/// with a text event every few seconds (each hands over the frames before it). It bounds a call whose recorder is stuck (a hung disk) to about
/// `QUEUE_EVENTS` × (`FrameBatch::bytes` + `FRAME_ROOM`), 2 MiB.
pub const QUEUE_EVENTS: usize = 128;

#[cfg(test)]
mod tests {
    /// A recorded call holds up to a few hundred of these in its queue, batch and delay line; the
    /// 64 KiB-per-recorded-call target depends on the slot staying small.
    #[test]
    fn slot_size() {
        let size = std::mem::size_of::<super::RecordedEvent>();
        assert!(size <= 80, "RecordedEvent grew to {size} bytes");
        let queued = std::mem::size_of::<super::ToRecorder>();
        assert!(queued <= 16, "ToRecorder grew to {queued} bytes");
    }
}

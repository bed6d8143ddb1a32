//! One call's media processing: decode → redactors → encode, for the forwarded stream and the
//! recording separately (each redactor has a scope), with the delays that let a tone's onset be
//! silenced after it is detected. Synchronous and allocation-light: the session pump calls it per
//! message.
//!
//! Order is kept per direction: a message waits behind media frames still inside the delay. The
//! forwarded stream's delay is `dtmf_lookahead_ms` (40 ms by default, enough to silence a tone from
//! its onset; with 0, frames go out as they are decoded, and up to ~40 ms of a tone's onset can pass
//! before it is confirmed); the recording's is at least the detector's confirmation delay, so
//! recorded tones are silenced from their onset.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::protocols::{Audio, Direction, Frame, FrameCodec, Kind, Malformed, Track, str_at};
use super::record::RecordedEvent;
use super::record_line::{HeldAudio, RecordLine};
use super::redact::pause::Pause;
use super::redact::text_pii::TextPii;
use super::redact::tone_mask::ToneMask;
use super::redact::{DTMF_MASK, Kind as Redaction, Report, Scope};

/// A route's media policy, built once per config.
pub struct MediaSettings {
    pub codec: Box<dyn FrameCodec>,
    pub sample_rate: u32,
    pub text: Scope,
    pub pii: TextPii,
    pub dtmf_events: Scope,
    pub dtmf_tones: Scope,
    pub lookahead: Duration,
    pub pause: Scope,
    pub pause_mark: Option<String>,
    pub resume_mark: Option<String>,
    pub pause_after_dtmf: Option<Duration>,
    pub max_pause: Duration,
    /// Parameter names the recorder reads on the call's first event (consent flag, subject).
    pub consent_param: Option<String>,
    pub subject_param: Option<String>,
}

impl MediaSettings {
    /// `None` for `passthrough`: nothing to decode.
    pub fn from_config(c: &crate::config::media::MediaConfig) -> Option<Self> {
        use crate::config::media::Protocol;
        let codec: Box<dyn FrameCodec> = match c.protocol {
            Protocol::Twilio => Box::new(super::protocols::twilio::TwilioCodec),
            Protocol::Pcm => Box::new(super::protocols::pcm::PcmCodec),
            Protocol::Passthrough => return None,
        };
        let patterns = c
            .patterns
            .iter()
            .filter_map(|p| regex::Regex::new(p).ok())
            .collect();
        Some(Self {
            codec,
            sample_rate: c.sample_rate,
            text: c.text,
            pii: TextPii::new(&c.text_fields, patterns),
            dtmf_events: c.dtmf_events,
            dtmf_tones: c.dtmf_tones,
            lookahead: Duration::from_millis(c.dtmf_lookahead_ms),
            pause: c.pause,
            pause_mark: c.pause_mark.clone(),
            resume_mark: c.resume_mark.clone(),
            pause_after_dtmf: c.pause_on_dtmf,
            max_pause: c.max_pause,
            consent_param: c.consent_param.clone(),
            subject_param: c.subject_param.clone(),
        })
    }
}

/// What processing one message produced, in order.
#[derive(Debug, PartialEq)]
pub enum Output {
    Forward(Direction, Message),
    /// An event the recorder takes whole: the call's first event (whether and under whom to
    /// record) and any text event before it.
    Record(RecordedEvent),
    /// An event that was encoded into the call's recording line when it arrived is released: the
    /// line's records up to `end` may go to the recorder (`CallProcessor::take_records`). Every
    /// event of a call that is not recorded comes out this way too, for the metrics, with
    /// nothing in the line.
    Recorded {
        direction: Direction,
        kind: Kind,
        /// Since the call started, to the millisecond (as the record has it).
        at: Duration,
        end: u64,
    },
}

type StreamKey = (Direction, Track);

/// One tone mask per stream (direction × track), looked up by index: the lookup happens for every
/// held frame on every message, and hashing the key was a visible share of the media path.
#[derive(Default)]
struct Masks([Option<Box<ToneMask>>; 6]);

impl Masks {
    fn slot(key: StreamKey) -> usize {
        let track = match key.1 {
            Track::Inbound => 0,
            Track::Outbound => 1,
            Track::Single => 2,
        };
        key.0 as usize * 3 + track
    }

    fn get(&self, key: &StreamKey) -> Option<&ToneMask> {
        self.0[Self::slot(*key)].as_deref()
    }

    fn get_or_new(&mut self, key: StreamKey, rate: u32) -> &mut ToneMask {
        self.0[Self::slot(key)].get_or_insert_with(|| Box::new(ToneMask::new(rate)))
    }
}

/// The recording's delay in time: the detector's confirmation delay (3 blocks, ~38 ms at 8 kHz).
const CONFIRMATION_WAIT: Duration = Duration::from_millis(40);

struct Forwarded {
    arrived: Arrival,
    original: Message,
    /// What is forwarded is `original` or, once `dirty`, this rewritten.
    rewrite: Rewrite,
    dirty: bool,
    /// The media stream and sample range, for frames that wait in the delay.
    media: Option<Span>,
}

/// When a held entry arrived, in milliseconds since the call started: an `Instant` is 16 bytes, and
/// every message of a call waits in a queue whose entries are written and read cold
/// (docs/PERFORMANCE.md, twenty-second session). A `u32` lasts 49 days.
type Arrival = u32;

/// A media frame's stream and samples `[start, start + len)`, kept small for the same reason.
#[derive(Clone, Copy)]
struct Span {
    key: StreamKey,
    len: u32,
    start: u64,
}

impl Span {
    fn end(self) -> u64 {
        self.start + u64::from(self.len)
    }
}

/// Time since the call started as an `Arrival`, rounded down (without `as_millis`' 128-bit
/// arithmetic: this runs for every message).
fn arrival(since_start: Duration) -> Arrival {
    let ms = since_start
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(since_start.subsec_millis()));
    Arrival::try_from(ms).unwrap_or(Arrival::MAX)
}

impl Forwarded {
    /// The message as it goes out: the original, or re-encoded if a redactor changed it.
    fn into_message(self, codec: &dyn FrameCodec) -> Message {
        if self.dirty {
            self.rewrite.encode(&self.original, codec)
        } else {
            self.original
        }
    }
}

/// How a held message is re-encoded if it turns out it must change. Kept small: every message of a
/// call waits in a queue, and the decoded `Frame` (160 bytes) made each entry 280 bytes, moved in
/// and out of the queue and touched cold, per message.
enum Rewrite {
    /// Sent as it came (nothing changed it, and nothing later can).
    Unchanged,
    /// A media frame: its samples went to the recording, so it is forwarded as is or as silence of
    /// the same shape. On Twilio's fast path the rest of the message is `original`'s text around
    /// the payload at `payload` (byte offsets); without it, the frame has no other fields (PCM).
    Media {
        shape: Shape,
        track: super::protocols::Track,
        payload: Option<(u32, u32)>,
    },
    /// Anything else that changed or may (a redacted text field, a masked DTMF digit, a media
    /// frame in JSON that the fast path gave way on): the frame, with its JSON, and the shape of
    /// its audio if it is a media frame. Such messages are few, so the box costs nothing on the
    /// media path.
    Frame {
        frame: Box<Frame>,
        shape: Option<Shape>,
    },
}

impl Rewrite {
    /// Whether this is a media frame, which a tone found later may silence.
    fn has_audio(&self) -> bool {
        matches!(
            self,
            Rewrite::Media { .. } | Rewrite::Frame { shape: Some(_), .. }
        )
    }

    /// The message with its samples silenced (a media frame) and its JSON as redacted.
    fn encode(self, original: &Message, codec: &dyn super::protocols::FrameCodec) -> Message {
        let frame = match self {
            // Not reached: a message with nothing to rewrite is never dirty.
            Rewrite::Unchanged => return original.clone(),
            Rewrite::Frame { mut frame, shape } => {
                if let Some(shape) = shape {
                    frame.audio = Some(shape.silence());
                }
                *frame
            }
            Rewrite::Media {
                shape,
                track,
                payload,
            } => Frame {
                kind: Kind::Media,
                json: None,
                audio: Some(shape.silence()),
                track,
                payload_at: match (original, payload) {
                    (Message::Text(text), Some((start, end))) => {
                        Some((text.clone(), start as usize..end as usize))
                    }
                    _ => None,
                },
            },
        };
        codec.encode(&frame)
    }
}

/// The encoding and length of a frame's audio: enough to forward its silence.
#[derive(Clone, Copy)]
struct Shape {
    pcm: bool,
    /// A frame's samples (a `u32`, like `Span::len`: a frame is milliseconds of audio).
    len: u32,
}

impl Shape {
    fn of(audio: &Audio) -> Self {
        Self {
            pcm: matches!(audio, Audio::Pcm16(_)),
            len: u32::try_from(audio.len()).unwrap_or(u32::MAX),
        }
    }

    fn silence(self) -> Audio {
        if self.pcm {
            Audio::Pcm16(vec![0; self.len as usize])
        } else {
            Audio::Ulaw(vec![
                super::protocols::audio::ULAW_SILENCE;
                self.len as usize
            ])
        }
    }
}

/// An event in the recording's delay. Its record is already in the line (or it is kept whole):
/// the entry says only when it may go, and where a tone found later must silence it.
struct Recorded {
    arrived: Arrival,
    direction: Direction,
    kind: Kind,
    /// A media frame's samples are 16-bit PCM (else μ-law).
    pcm: bool,
    record: InLine,
    media: Option<Span>,
}

/// Where a recorded event is.
enum InLine {
    /// Encoded in the call's `RecordLine`, its record ending at this position.
    Encoded(u64),
    /// Kept whole for the recorder ([`Output::Record`]).
    Whole(Box<RecordedEvent>),
}

impl Recorded {
    fn into_output(self) -> Output {
        match self.record {
            InLine::Whole(event) => Output::Record(*event),
            InLine::Encoded(end) => Output::Recorded {
                direction: self.direction,
                kind: self.kind,
                at: Duration::from_millis(u64::from(self.arrived)),
                end,
            },
        }
    }

    /// The samples of a held media frame in the line.
    fn held_audio(&self) -> Option<HeldAudio> {
        let (InLine::Encoded(end), Some(span)) = (&self.record, self.media) else {
            return None;
        };
        let (width, silence) = if self.pcm {
            (2, 0)
        } else {
            (1, super::protocols::audio::ULAW_SILENCE)
        };
        Some(HeldAudio {
            end: *end,
            len: span.len.saturating_mul(width),
            silence,
        })
    }
}

pub struct CallProcessor {
    s: Arc<MediaSettings>,
    started: Instant,
    masks: Masks,
    to_backend: VecDeque<Forwarded>,
    to_caller: VecDeque<Forwarded>,
    recording: VecDeque<Recorded>,
    /// The recording's records, encoded on arrival; `None` when the call is not recorded.
    line: Option<RecordLine>,
    pause: Pause,
    call_seen: bool,
}

impl CallProcessor {
    /// Consent and subject from the raw (not yet redacted) first event.
    fn call_info(&self, frame: &Frame) -> super::record::CallInfo {
        let params = frame.json.as_ref().map(|j| match frame.kind {
            Kind::Start => j.pointer("/start/customParameters").unwrap_or(&Value::Null),
            _ => j,
        });
        let get = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| params?.get(n))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        super::record::CallInfo {
            consent: get(&self.s.consent_param).is_some_and(|v| v.eq_ignore_ascii_case("true")),
            subject: get(&self.s.subject_param),
            stream: frame
                .json
                .as_ref()
                .and_then(|j| j.pointer("/start/streamSid").or_else(|| j.get("streamSid")))
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    pub fn new(settings: Arc<MediaSettings>, now: Instant) -> Self {
        let pause = Pause::new(settings.pause_after_dtmf, settings.max_pause);
        Self {
            s: settings,
            started: now,
            masks: Masks::default(),
            to_backend: VecDeque::new(),
            to_caller: VecDeque::new(),
            recording: VecDeque::new(),
            line: None,
            pause,
            call_seen: false,
        }
    }

    /// Records the call: each event is encoded into a line whose records the recorder takes in
    /// batches of about `batch_bytes` (`take_records`).
    pub fn with_recording(mut self, batch_bytes: usize) -> Self {
        self.line = Some(RecordLine::new(batch_bytes));
        self
    }

    /// The released records up to `through` (an [`Output::Recorded`]'s `end`), for the recorder.
    pub fn take_records(&mut self, through: u64) -> Vec<u8> {
        self.line
            .as_mut()
            .map_or_else(Vec::new, |line| line.take_through(through))
    }

    /// The position of the first record not taken yet: bytes released up to a position are that
    /// position less this.
    pub fn records_taken_through(&self) -> u64 {
        self.line.as_ref().map_or(0, RecordLine::base)
    }

    /// Where an event's recording goes: whole, if it is the call's first event or a text event
    /// before it (the recorder reads them for consent and subject); otherwise encoded into the
    /// line now, while its samples are in the cache.
    fn keep(&mut self, event: RecordedEvent, call_seen_before: bool) -> InLine {
        if event.call.is_some() || (event.audio.is_none() && !call_seen_before) {
            return InLine::Whole(Box::new(event));
        }
        InLine::Encoded(self.line.as_mut().map_or(0, |line| line.push(&event)))
    }

    /// Processes one text or binary message; appends what is ready to `out`.
    pub fn process(
        &mut self,
        direction: Direction,
        msg: Message,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<Report, Malformed> {
        let mut frame = self.s.codec.decode(&msg, direction)?;
        let mut report = Report::default();
        let since_start = now.saturating_duration_since(self.started);
        let arrived = arrival(since_start);
        if frame.kind == Kind::Mark && direction == Direction::ToCaller {
            let name = frame.json.as_ref().and_then(|j| str_at(j, "/mark/name"));
            let pause = name.is_some() && name == self.s.pause_mark.as_deref();
            let resume = name.is_some() && name == self.s.resume_mark.as_deref();
            if pause || resume {
                if pause {
                    self.pause.pause(now);
                } else {
                    self.pause.resume();
                }
                // Consumed: the caller's side never sees it; the recording's timeline does.
                let event = RecordedEvent {
                    at: since_start,
                    direction,
                    kind: Kind::Mark,
                    track: frame.track,
                    audio: None,
                    json: frame.json.take().map(Box::new),
                    call: None,
                };
                let record = self.keep(event, self.call_seen);
                self.recording.push_back(Recorded {
                    arrived,
                    direction,
                    kind: Kind::Mark,
                    pcm: false,
                    record,
                    media: None,
                });
                self.release(out, arrived, false);
                return Ok(report);
            }
        }
        let paused = self.pause.active(now);
        let mut event = RecordedEvent {
            at: since_start,
            direction,
            kind: frame.kind,
            track: frame.track,
            audio: None,
            json: None,
            call: None,
        };
        let call_seen_before = self.call_seen;
        if !self.call_seen && matches!(frame.kind, Kind::Start | Kind::Metadata) {
            self.call_seen = true;
            event.call = Some(Box::new(self.call_info(&frame)));
        }
        let mut dirty = false;
        let mut media = None;
        let mut shape = None;
        match frame.kind {
            Kind::Media => {
                let (key, start, end) = self.feed_tones(direction, &frame, now, &mut report);
                media = key.map(|key| Span {
                    key,
                    start,
                    len: u32::try_from(end - start).unwrap_or(u32::MAX),
                });
                // The samples move to the recording (no copy per frame); the forwarded side keeps
                // the original message and, if it must be silenced, the shape of its audio.
                let mut recorded = frame.audio.take().expect("media frames carry audio");
                shape = Some(Shape::of(&recorded));
                if paused && self.s.pause != Scope::Off {
                    report.add(Redaction::PausedFrame, 1);
                    if self.s.pause.forward() {
                        dirty = true;
                    }
                    if self.s.pause.record() {
                        recorded.silence();
                    }
                }
                event.audio = Some(recorded);
            }
            Kind::Dtmf => {
                report.add(Redaction::DtmfEvent, 1);
                self.pause.digit(now);
                let json = frame.json.as_mut().expect("dtmf frames carry JSON");
                let mut masked = json.clone();
                mask_digit(&mut masked);
                event.json = Some(Box::new(if self.s.dtmf_events.record() {
                    masked.clone()
                } else {
                    json.clone()
                }));
                if self.s.dtmf_events.forward() {
                    *json = masked;
                    dirty = true;
                }
            }
            _ => {
                if let Some(json) = frame.json.as_mut() {
                    let mut recorded = json.clone();
                    let mut counted = Report::default();
                    if self.s.text.record() {
                        self.s.pii.redact_json(&mut recorded, &mut counted);
                    }
                    if self.s.text.forward() {
                        let mut fwd = Report::default();
                        dirty = self.s.pii.redact_json(json, &mut fwd);
                        if !self.s.text.record() {
                            counted = fwd;
                        }
                    }
                    for (k, n) in counted.iter() {
                        report.add(k, n);
                    }
                    event.json = Some(Box::new(recorded));
                }
            }
        }
        let ends_stream = frame.kind == Kind::Stop;
        let rewrite = match shape {
            Some(shape) if frame.json.is_none() => Rewrite::Media {
                shape,
                track: frame.track,
                payload: frame.payload_at.as_ref().and_then(|(_, at)| {
                    Some((u32::try_from(at.start).ok()?, u32::try_from(at.end).ok()?))
                }),
            },
            _ if dirty || shape.is_some() => Rewrite::Frame {
                frame: Box::new(frame),
                shape,
            },
            _ => Rewrite::Unchanged,
        };
        let forwarded = Forwarded {
            arrived,
            original: msg,
            rewrite,
            dirty,
            media,
        };
        // A message the tone detector does not delay (a text event, or any frame when tone
        // redaction is off) goes straight out when nothing waits ahead of it: it would be queued
        // and released at once, and a call that only ever sends such messages (connected, on
        // hold) would keep queues it does not need.
        if media.is_none() && self.queue(direction).is_empty() {
            out.push(Output::Forward(
                direction,
                forwarded.into_message(&*self.s.codec),
            ));
        } else {
            self.queue(direction).push_back(forwarded);
        }
        let kind = event.kind;
        let recorded = Recorded {
            arrived,
            direction,
            kind,
            pcm: shape.is_some_and(|s| s.pcm),
            record: self.keep(event, call_seen_before),
            media,
        };
        if media.is_none() && self.recording.is_empty() {
            out.push(recorded.into_output());
        } else {
            self.recording.push_back(recorded);
        }
        if let Some(span) = media {
            self.apply_tone_masks(span.key);
        }
        // `stop` ends the stream: nothing more will come to complete a delay.
        self.release(out, arrived, ends_stream);
        Ok(report)
    }

    /// Everything still waiting in a delay, at the end of the call.
    pub fn flush(&mut self, out: &mut Vec<Output>) {
        self.release(out, Arrival::MAX, true);
    }

    /// Releases frames that waited past their delay in wall-clock time (the stream went quiet, so no
    /// later samples will come to release them). The pump calls this on a timer.
    pub fn release_due(&mut self, now: Instant, out: &mut Vec<Output>) {
        let now = arrival(now.saturating_duration_since(self.started));
        self.release(out, now, false);
    }

    /// When the frame that has waited longest must go out even if no later audio comes: the pump
    /// sleeps until then instead of polling on a fixed tick. `None` when nothing waits.
    pub fn next_due(&self) -> Option<Instant> {
        let fronts = [
            self.to_backend.front().map(|i| i.arrived),
            self.to_caller.front().map(|i| i.arrived),
            self.recording.front().map(|i| i.arrived),
        ];
        fronts
            .into_iter()
            .flatten()
            .min()
            .map(|ms| self.started + Duration::from_millis(u64::from(ms)) + self.max_wait())
    }

    /// A frame never waits longer than its delay plus two frames of wall-clock time.
    fn max_wait(&self) -> Duration {
        self.s.lookahead.max(CONFIRMATION_WAIT) + Duration::from_millis(40)
    }

    /// Frees the delay queues' buffers if nothing waits in them, and says whether it did: a call
    /// that goes quiet (on hold, or only connected) keeps none of the ~1.5 KiB they grew to. They
    /// grow again with the next message.
    pub fn free_queues_if_empty(&mut self) -> bool {
        let empty = !self.holding();
        if empty {
            self.to_backend = VecDeque::new();
            self.to_caller = VecDeque::new();
            self.recording = VecDeque::new();
        }
        empty
    }

    /// Bytes the recording line's buffer has room for (tests check what audio reserves).
    #[cfg(test)]
    pub fn record_line_capacity(&self) -> usize {
        self.line.as_ref().map_or(0, RecordLine::capacity)
    }

    /// Elements the delay queues have room for (tests check that a quiet call frees them).
    #[cfg(test)]
    pub fn queue_capacity(&self) -> usize {
        self.to_backend.capacity() + self.to_caller.capacity() + self.recording.capacity()
    }

    /// Whether anything waits in a delay.
    pub fn holding(&self) -> bool {
        !(self.to_backend.is_empty() && self.to_caller.is_empty() && self.recording.is_empty())
    }

    fn queue(&mut self, direction: Direction) -> &mut VecDeque<Forwarded> {
        match direction {
            Direction::ToBackend => &mut self.to_backend,
            Direction::ToCaller => &mut self.to_caller,
        }
    }

    /// Runs the tone detector over a media frame; returns its stream and sample range (`None` when
    /// tone redaction is off, so the frame never waits).
    fn feed_tones(
        &mut self,
        direction: Direction,
        frame: &Frame,
        now: Instant,
        report: &mut Report,
    ) -> (Option<StreamKey>, u64, u64) {
        if self.s.dtmf_tones == Scope::Off {
            return (None, 0, 0);
        }
        let key = (direction, frame.track);
        let rate = self.s.sample_rate;
        let mask = self.masks.get_or_new(key, rate);
        let start = mask.position();
        let began = mask.feed(frame.audio.as_ref().expect("media"));
        if began > 0 {
            report.add(Redaction::DtmfTone, began);
            self.pause.digit(now);
        }
        (Some(key), start, mask.position())
    }

    /// Silences every waiting frame of `key` that a tone range now covers.
    fn apply_tone_masks(&mut self, key: StreamKey) {
        let Some(mask) = self.masks.get(&key) else {
            return;
        };
        let covered = |m: &Option<Span>| {
            m.is_some_and(|span| span.key == key && mask.covers(span.start, span.end()))
        };
        // A stream's frames wait in the order of their samples, so its first waiting frame starts
        // earliest: when no tone range reaches it, none reaches a later one, and the scan (most
        // messages of a call) is skipped.
        let may_cover = |start: Option<u64>| start.is_some_and(|start| mask.reaches(start));
        if self.s.dtmf_tones.forward() {
            let queue = match key.0 {
                Direction::ToBackend => &mut self.to_backend,
                Direction::ToCaller => &mut self.to_caller,
            };
            if may_cover(first_start(queue.iter().map(|i| &i.media), key)) {
                for item in queue.iter_mut().filter(|i| covered(&i.media)) {
                    if item.rewrite.has_audio() {
                        item.dirty = true;
                    }
                }
            }
        }
        if self.s.dtmf_tones.record()
            && let Some(line) = self.line.as_mut()
            && may_cover(first_start(self.recording.iter().map(|i| &i.media), key))
        {
            for item in self.recording.iter().filter(|i| covered(&i.media)) {
                if let Some(audio) = item.held_audio() {
                    line.silence(audio);
                }
            }
        }
    }

    /// Releases what is ready at `now` (milliseconds since the call started); everything if `all`.
    fn release(&mut self, out: &mut Vec<Output>, now: Arrival, all: bool) {
        let rate = u64::from(self.s.sample_rate);
        let forward_delay = self.s.lookahead.as_millis() as u64 * rate / 1000;
        // Frames that arrived by this millisecond have waited their longest (one subtraction per
        // call, not one per held frame; to the millisecond, so up to 1 ms early).
        let overdue_if_by = now.checked_sub(arrival(self.max_wait()));
        let ready = |masks: &Masks, media: &Option<Span>, arrived: Arrival, delay: u64| {
            all || overdue_if_by.is_some_and(|t| arrived <= t)
                || media.is_none_or(|span| {
                    masks
                        .get(&span.key)
                        .is_some_and(|m| m.position() >= span.end() + delay)
                })
        };
        for direction in [Direction::ToBackend, Direction::ToCaller] {
            loop {
                let head_ready = {
                    let q = match direction {
                        Direction::ToBackend => &self.to_backend,
                        Direction::ToCaller => &self.to_caller,
                    };
                    q.front()
                        .is_some_and(|i| ready(&self.masks, &i.media, i.arrived, forward_delay))
                };
                if !head_ready {
                    break;
                }
                let item = self.queue(direction).pop_front().expect("a head");
                out.push(Output::Forward(
                    direction,
                    item.into_message(&*self.s.codec),
                ));
            }
        }
        while let Some(head) = self.recording.front() {
            let delay = head
                .media
                .and_then(|span| self.masks.get(&span.key))
                .map_or(0, |m| forward_delay.max(m.confirmation_delay()));
            if !ready(&self.masks, &head.media, head.arrived, delay) {
                break;
            }
            let item = self.recording.pop_front().expect("a head");
            out.push(item.into_output());
        }
    }
}

/// The first sample of `key`'s earliest waiting frame.
fn first_start<'a>(media: impl Iterator<Item = &'a Option<Span>>, key: StreamKey) -> Option<u64> {
    media
        .filter_map(|m| m.filter(|span| span.key == key))
        .map(|span| span.start)
        .next()
}

/// Replaces the digit of a `dtmf` event (Twilio `dtmf.digit`, Vonage-style `digit`).
fn mask_digit(json: &mut Value) {
    if let Some(d) = json.pointer_mut("/dtmf/digit") {
        *d = Value::String(DTMF_MASK.into());
    }
    if let Some(d) = json.get_mut("digit") {
        *d = Value::String(DTMF_MASK.into());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ws::protocols::audio::linear_to_ulaw;
    use crate::ws::protocols::twilio::TwilioCodec;
    use crate::ws::protocols::twilio::tests::{DTMF, START, media};
    use crate::ws::protocols::{Audio, audio::ulaw_to_linear};
    use crate::ws::redact::goertzel::tests::{detect, tone};

    /// A call processor that records, into batches of 16 KiB.
    pub fn recorded_processor(settings: MediaSettings, now: Instant) -> CallProcessor {
        CallProcessor::new(Arc::new(settings), now).with_recording(16 * 1024)
    }

    /// An event as the recording has it.
    #[derive(Debug)]
    pub struct Seen {
        pub kind: u8,
        /// A media frame's samples, in the wire's encoding (μ-law here).
        pub audio: Option<Vec<u8>>,
        pub json: Option<Value>,
    }

    /// What `out` gave the recording, in order: the events kept whole as they are, and the
    /// records of the line that `p` released decoded, as the recorder gets them.
    pub fn recording(p: &mut CallProcessor, out: &[Output]) -> Vec<Seen> {
        let through = out
            .iter()
            .filter_map(|o| match o {
                Output::Recorded { end, .. } => Some(*end),
                _ => None,
            })
            .max();
        let records = through.map(|t| p.take_records(t)).unwrap_or_default();
        let mut decoded = crate::recording::format::Record::decode_all(&records)
            .unwrap()
            .into_iter();
        out.iter()
            .filter_map(|o| match o {
                Output::Forward(..) => None,
                Output::Record(e) => Some(Seen {
                    kind: e.kind as u8,
                    audio: None,
                    json: e.json.as_deref().cloned(),
                }),
                Output::Recorded {
                    direction, kind, ..
                } => {
                    use crate::recording::format::RecordBody;
                    let r = decoded.next().expect("a record for every released event");
                    assert_eq!((r.kind, r.direction), (*kind as u8, *direction as u8));
                    let (audio, json) = match r.body {
                        RecordBody::Audio(b) => (Some(b), None),
                        RecordBody::Event(b) => (None, Some(serde_json::from_slice(&b).unwrap())),
                    };
                    Some(Seen {
                        kind: r.kind,
                        audio,
                        json,
                    })
                }
            })
            .collect()
    }

    /// Whether each recorded media frame is silent, in order.
    fn recorded_silence(p: &mut CallProcessor, out: &[Output]) -> Vec<bool> {
        recording(p, out)
            .into_iter()
            .filter(|e| e.kind == Kind::Media as u8)
            .map(|e| Audio::Ulaw(e.audio.unwrap()).is_silent())
            .collect()
    }

    pub fn settings(lookahead_ms: u64) -> MediaSettings {
        MediaSettings {
            codec: Box::new(TwilioCodec),
            sample_rate: 8000,
            text: Scope::Both,
            pii: TextPii::new(&["start.customParameters".into()], Vec::new()),
            dtmf_events: Scope::Record,
            dtmf_tones: Scope::Both,
            lookahead: Duration::from_millis(lookahead_ms),
            pause: Scope::Record,
            pause_mark: Some("voxguard:pause".into()),
            resume_mark: Some("voxguard:resume".into()),
            pause_after_dtmf: None,
            max_pause: Duration::from_secs(300),
            consent_param: Some("recording_consent".into()),
            subject_param: Some("caller".into()),
        }
    }

    /// Runs `samples` through as 20 ms Twilio media frames; returns (forwarded, recorded) audio.
    pub fn run_audio(p: &mut CallProcessor, samples: &[i16]) -> (Vec<i16>, Vec<i16>) {
        run_audio_as(p, samples, |ulaw| media("inbound", ulaw))
    }

    /// `run_audio` with each frame's message made by `message`.
    fn run_audio_as(
        p: &mut CallProcessor,
        samples: &[i16],
        message: impl Fn(&[u8]) -> String,
    ) -> (Vec<i16>, Vec<i16>) {
        let t = Instant::now();
        let mut out = Vec::new();
        for (i, chunk) in samples.chunks(160).enumerate() {
            let ulaw: Vec<u8> = chunk.iter().map(|&s| linear_to_ulaw(s)).collect();
            let msg = Message::text(message(&ulaw));
            p.process(
                Direction::ToBackend,
                msg,
                t + Duration::from_millis(20 * i as u64),
                &mut out,
            )
            .unwrap();
        }
        p.flush(&mut out);
        let mut fwd = Vec::new();
        for o in &out {
            if let Output::Forward(_, m) = o {
                let f = TwilioCodec.decode(m, Direction::ToBackend).unwrap();
                fwd.extend(f.audio.unwrap().linear());
            }
        }
        let rec = recording(p, &out)
            .into_iter()
            .filter_map(|e| e.audio)
            .flat_map(|ulaw| ulaw.into_iter().map(ulaw_to_linear))
            .collect();
        (fwd, rec)
    }

    fn ulaw_tone(digits: &str) -> Vec<i16> {
        let mut s = vec![0i16; 333];
        for d in digits.chars() {
            s.extend(tone(d, 70, 8000, -12.0, 0.0, 0.0));
            s.extend(vec![0i16; 600]);
        }
        // through μ-law and back, as the wire carries it
        s.iter()
            .map(|&x| ulaw_to_linear(linear_to_ulaw(x)))
            .collect()
    }

    #[test]
    fn untouched_messages_are_forwarded_byte_identical() {
        let mut p = recorded_processor(settings(0), Instant::now());
        let mut out = Vec::new();
        let speechless = media("inbound", &[0x7E; 160]);
        p.process(
            Direction::ToBackend,
            Message::text(speechless.clone()),
            Instant::now(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out[0],
            Output::Forward(Direction::ToBackend, Message::text(speechless))
        );
    }

    /// Text events go out and to the recording as they come when nothing waits ahead of them,
    /// without passing through the delay queues (a call that is only connected holds none). Behind
    /// a held frame, a text event waits its turn, in both.
    #[test]
    fn text_events_skip_empty_delays_and_wait_behind_held_frames() {
        let mut p = recorded_processor(settings(40), Instant::now());
        let mut out = Vec::new();
        let connected = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
        let now = Instant::now();
        for (direction, text) in [
            (Direction::ToBackend, connected),
            (Direction::ToBackend, START),
            (Direction::ToCaller, connected),
        ] {
            p.process(direction, Message::text(text), now, &mut out)
                .unwrap();
        }
        let kinds: Vec<_> = out
            .iter()
            .map(|o| match o {
                Output::Forward(d, _) => format!("forward {d:?}"),
                Output::Record(e) => format!("record {:?} {:?}", e.direction, e.kind),
                Output::Recorded {
                    direction, kind, ..
                } => format!("record {direction:?} {kind:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "forward ToBackend",
                "record ToBackend Connected",
                "forward ToBackend",
                "record ToBackend Start",
                "forward ToCaller",
                "record ToCaller Connected",
            ]
        );
        assert_eq!(p.queue_capacity(), 0, "no delay queue was needed");
        assert!(!p.holding());

        out.clear();
        let frame = media("inbound", &[0x7E; 160]);
        p.process(Direction::ToBackend, Message::text(frame), now, &mut out)
            .unwrap();
        p.process(Direction::ToBackend, Message::text(DTMF), now, &mut out)
            .unwrap();
        assert!(out.is_empty(), "the event waits behind the held frame");
        p.flush(&mut out);
        let order: Vec<_> = out
            .iter()
            .map(|o| match o {
                Output::Forward(_, m) => {
                    let json: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                    format!("forward {}", json["event"].as_str().unwrap())
                }
                Output::Record(e) => format!("record {:?}", e.kind),
                Output::Recorded { kind, .. } => format!("record {kind:?}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "forward media",
                "forward dtmf",
                "record Media",
                "record Dtmf",
            ]
        );
    }

    #[test]
    fn custom_parameters_are_redacted_both_ways_and_dtmf_events_only_in_the_recording() {
        let mut p = recorded_processor(settings(0), Instant::now());
        let mut out = Vec::new();
        let report = p
            .process(
                Direction::ToBackend,
                Message::text(START),
                Instant::now(),
                &mut out,
            )
            .unwrap();
        assert_eq!(report.count(Redaction::Phone), 1);
        assert_eq!(report.count(Redaction::Card), 1);
        let Output::Forward(_, fwd) = &out[0] else {
            panic!()
        };
        let fwd: Value = serde_json::from_str(fwd.to_text().unwrap()).unwrap();
        assert_eq!(
            fwd["start"]["customParameters"]["caller"],
            "[REDACTED:phone]"
        );
        assert_eq!(
            fwd["start"]["customParameters"]["note"],
            "card [REDACTED:card]"
        );
        assert_eq!(fwd["start"]["callSid"], "CA123");
        let Output::Record(rec) = &out[1] else {
            panic!()
        };
        assert_eq!(
            rec.json.as_ref().unwrap()["start"]["customParameters"]["caller"],
            "[REDACTED:phone]"
        );

        out.clear();
        p.process(
            Direction::ToBackend,
            Message::text(DTMF),
            Instant::now(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out[0],
            Output::Forward(Direction::ToBackend, Message::text(DTMF)),
            "IVRs get their digits"
        );
        let recorded = recording(&mut p, &out);
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            recorded[0].json.as_ref().unwrap()["dtmf"]["digit"],
            DTMF_MASK
        );
    }

    #[test]
    fn tones_are_silenced_in_the_recording_from_their_onset() {
        let digits = "159#";
        let audio = ulaw_tone(digits);
        assert_eq!(
            detect(&audio, 8000),
            digits,
            "the test signal has its digits"
        );
        let mut p = recorded_processor(settings(40), Instant::now());
        let (fwd, rec) = run_audio(&mut p, &audio);
        assert_eq!(
            (fwd.len(), rec.len()),
            (audio.len(), audio.len()),
            "length and timing kept"
        );
        assert_eq!(detect(&rec, 8000), "");
        assert_eq!(detect(&fwd, 8000), "", "with the default 40 ms lookahead");
        let mut no_lookahead = recorded_processor(settings(0), Instant::now());
        let (_, rec) = run_audio(&mut no_lookahead, &audio);
        assert_eq!(detect(&rec, 8000), "", "the recording needs no lookahead");
    }

    #[test]
    fn with_lookahead_the_forwarded_stream_is_silenced_from_the_onset_too() {
        let audio = ulaw_tone("5");
        let mut p = recorded_processor(settings(40), Instant::now());
        let (fwd, rec) = run_audio(&mut p, &audio);
        let loud = |s: &[i16]| s.iter().filter(|x| x.abs() > 200).count();
        assert_eq!(loud(&rec), 0);
        assert_eq!(loud(&fwd), 0, "no tone sample forwarded");
        let mut no_lookahead = recorded_processor(settings(0), Instant::now());
        let (leaky, _) = run_audio(&mut no_lookahead, &audio);
        assert!(
            loud(&leaky) > 0 && loud(&leaky) <= 320,
            "without lookahead only the onset passes: {}",
            loud(&leaky)
        );
    }

    /// Media messages the fast path gives way on (here, an escaped streamSid) are held as decoded
    /// frames with their JSON; a tone found later must silence them all the same.
    #[test]
    fn media_in_json_the_fast_path_gives_way_on_is_silenced_too() {
        let escaped = |ulaw: &[u8]| media("inbound", ulaw).replace("MZ123", r"MZ\u0031");
        let probe = Message::text(escaped(&[0x7E; 160]));
        let frame = TwilioCodec.decode(&probe, Direction::ToBackend).unwrap();
        assert!(
            frame.payload_at.is_none() && frame.json.is_some(),
            "the general path decodes it"
        );
        let mut p = recorded_processor(settings(40), Instant::now());
        let (fwd, rec) = run_audio_as(&mut p, &ulaw_tone("5"), escaped);
        let loud = |s: &[i16]| s.iter().filter(|x| x.abs() > 200).count();
        assert!(!fwd.is_empty() && !rec.is_empty());
        assert_eq!(loud(&rec), 0);
        assert_eq!(loud(&fwd), 0, "no tone sample forwarded");
    }

    #[test]
    fn audio_without_tones_is_recorded_and_forwarded_as_is() {
        let hum: Vec<i16> = (0..1600)
            .map(|i| {
                (6000.0 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 8000.0).sin()) as i16
            })
            .collect();
        let wire: Vec<i16> = hum
            .iter()
            .map(|&x| ulaw_to_linear(linear_to_ulaw(x)))
            .collect();
        let mut p = recorded_processor(settings(40), Instant::now());
        let (fwd, rec) = run_audio(&mut p, &hum);
        assert_eq!(fwd, wire);
        assert_eq!(rec, wire);
        let mut with_tone = hum.clone();
        with_tone.extend(tone('4', 80, 8000, -10.0, 0.0, 0.0));
        with_tone.extend(hum.clone());
        let mut p = recorded_processor(settings(40), Instant::now());
        let (_, rec) = run_audio(&mut p, &with_tone);
        let pattern: String = rec
            .chunks(160)
            .map(|c| if c.iter().all(|&x| x == 0) { '_' } else { '#' })
            .collect();
        assert!(pattern.starts_with("########"), "{pattern}");
        assert!(pattern.ends_with("########"), "{pattern}");
    }

    #[test]
    fn every_digit_at_every_alignment_leaves_nothing_to_detect() {
        for offset in (0..160).step_by(23) {
            let mut audio = vec![0i16; offset];
            for d in "123A456B789C*0#D".chars() {
                audio.extend(tone(d, 40, 8000, -20.0, 0.0, 0.0));
                audio.extend(vec![0i16; 400]);
            }
            let mut p = recorded_processor(settings(40), Instant::now());
            let (fwd, rec) = run_audio(&mut p, &audio);
            assert_eq!(detect(&fwd, 8000), "", "forwarded, offset {offset}");
            assert_eq!(detect(&rec, 8000), "", "recorded, offset {offset}");
        }
    }

    #[test]
    fn pause_marks_are_consumed_and_silence_the_recording() {
        let mut p = recorded_processor(settings(0), Instant::now());
        let mut out = Vec::new();
        let t = Instant::now();
        let mark = |name: &str| {
            Message::text(format!(
                r#"{{"event":"mark","streamSid":"MZ1","mark":{{"name":"{name}"}}}}"#
            ))
        };
        p.process(Direction::ToCaller, mark("voxguard:pause"), t, &mut out)
            .unwrap();
        assert!(
            out.iter()
                .all(|o| matches!(o, Output::Record(e) if e.kind == Kind::Mark)),
            "the pause mark is not forwarded, only recorded: {out:?}"
        );
        let speech = media("inbound", &[0x10; 160]);
        let r = p
            .process(
                Direction::ToBackend,
                Message::text(speech.clone()),
                t,
                &mut out,
            )
            .unwrap();
        assert_eq!(r.count(Redaction::PausedFrame), 1);
        p.process(Direction::ToCaller, mark("voxguard:resume"), t, &mut out)
            .unwrap();
        p.process(
            Direction::ToBackend,
            Message::text(speech.clone()),
            t,
            &mut out,
        )
        .unwrap();
        p.process(Direction::ToCaller, mark("other"), t, &mut out)
            .unwrap();
        p.flush(&mut out);
        let forwarded: Vec<&Output> = out
            .iter()
            .filter(|o| matches!(o, Output::Forward(..)))
            .collect();
        assert_eq!(forwarded.len(), 3, "both frames, and the unconfigured mark");
        let recorded = recorded_silence(&mut p, &out);
        assert_eq!(
            recorded,
            vec![true, false],
            "silent while paused, audible after resume"
        );
        assert!(
            matches!(forwarded[0], Output::Forward(_, m) if *m == Message::text(speech.clone())),
            "forward untouched (pause scope = record)"
        );
    }

    #[test]
    fn dtmf_entry_pauses_the_recording_until_digits_stop() {
        let mut s = settings(0);
        s.pause_after_dtmf = Some(Duration::from_secs(2));
        let mut p = recorded_processor(s, Instant::now());
        let t = Instant::now();
        let mut out = Vec::new();
        let speech = Message::text(media("inbound", &[0x10; 160]));
        p.process(Direction::ToBackend, Message::text(DTMF), t, &mut out)
            .unwrap();
        for ms in [100, 1900, 2100, 5000] {
            p.process(
                Direction::ToBackend,
                speech.clone(),
                t + Duration::from_millis(ms),
                &mut out,
            )
            .unwrap();
        }
        p.flush(&mut out);
        let silent = recorded_silence(&mut p, &out);
        assert_eq!(
            silent,
            [true, true, false, false],
            "paused for 2 s after the digit"
        );
    }

    #[test]
    fn malformed_messages_are_errors_and_change_nothing() {
        let mut p = recorded_processor(settings(0), Instant::now());
        let mut out = Vec::new();
        assert_eq!(
            p.process(
                Direction::ToBackend,
                Message::text("{"),
                Instant::now(),
                &mut out
            ),
            Err(Malformed::Json)
        );
        assert_eq!(
            p.process(
                Direction::ToBackend,
                Message::binary(vec![1u8]),
                Instant::now(),
                &mut out
            ),
            Err(Malformed::UnexpectedBinary)
        );
        assert!(out.is_empty());
        let _ = Audio::Ulaw(Vec::new());
    }

    /// A frame that comes a second after the last (a stalled caller) releases the frames that
    /// waited past their longest, and is itself held: its delay starts when it came.
    #[test]
    fn a_late_frame_releases_the_overdue_ones_and_waits_itself() {
        let start = Instant::now();
        let mut p = recorded_processor(settings(40), start);
        let frame = |b: u8| Message::text(media("inbound", &[b; 160]));
        let mut out = Vec::new();
        p.process(Direction::ToBackend, frame(1), start, &mut out)
            .unwrap();
        assert!(out.is_empty(), "held for the tone detector");
        let later = start + Duration::from_secs(1);
        p.process(Direction::ToBackend, frame(2), later, &mut out)
            .unwrap();
        let forwarded = out
            .iter()
            .filter(|o| matches!(o, Output::Forward(..)))
            .count();
        assert_eq!(forwarded, 1, "the first frame, overdue");
        assert!(p.holding(), "the second waits");
        assert_eq!(
            p.next_due(),
            Some(later + p.max_wait()),
            "until its own longest wait"
        );
    }

    #[test]
    fn arrivals_are_whole_milliseconds_since_the_start_and_saturate() {
        assert_eq!(arrival(Duration::from_micros(10_999)), 10);
        assert_eq!(arrival(Duration::from_millis(86_400_000)), 86_400_000);
        assert_eq!(arrival(Duration::from_secs(50 * 86_400)), Arrival::MAX);
        assert_eq!(arrival(Duration::MAX), Arrival::MAX);
    }

    /// Every message of a call waits in one of these queues, written and read cold: they must not
    /// grow back unnoticed (docs/PERFORMANCE.md, twenty-second session).
    #[test]
    fn delay_queue_entries_stay_small() {
        let forwarded = std::mem::size_of::<Forwarded>();
        let recorded = std::mem::size_of::<Recorded>();
        assert!(forwarded <= 104, "Forwarded grew to {forwarded} bytes");
        assert!(recorded <= 48, "Recorded grew to {recorded} bytes");
    }
}

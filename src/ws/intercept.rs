//! A media session's side of the pump: runs each data message through the call's
//! [`CallProcessor`], hands recorded events to the recorder without ever waiting for it, and records
//! metrics. Says what to send where; the pump does the sending.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::record_queue;
use prometheus::{Histogram, IntCounter};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::call::{CallProcessor, MediaSettings, Output};
use super::protocols::{Direction, Malformed};
use super::record::{EncodedFrames, FrameBatch, RecordedEvent, ToRecorder};
use crate::config::media::OnMalformed;
use crate::metrics::MediaMetrics;

/// What to send where, in order. Built in the runtime thread's send list, which it gives back
/// when dropped: every session on the thread shares one list, kept in the CPU's cache, instead of
/// writing a cold one of its own for every message (docs/PERFORMANCE.md, twenty-second session).
/// While one session's sends wait on a slow socket, another session on the thread builds its own.
pub struct Sends {
    list: VecDeque<(Direction, Message)>,
}

thread_local! {
    static SEND_LIST: std::cell::Cell<VecDeque<(Direction, Message)>> =
        const { std::cell::Cell::new(VecDeque::new()) };
}

impl Sends {
    fn new(list: VecDeque<(Direction, Message)>) -> Self {
        Self { list }
    }
}

impl Iterator for Sends {
    type Item = (Direction, Message);

    fn next(&mut self) -> Option<Self::Item> {
        self.list.pop_front()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.list.len(), Some(self.list.len()))
    }
}

impl ExactSizeIterator for Sends {}

impl Drop for Sends {
    /// Gives the list back to the thread (replacing one another session gave back meanwhile). A
    /// thread that is ending, its locals already gone, keeps nothing.
    fn drop(&mut self) {
        if self.list.capacity() <= THREAD_LIST_ROOM {
            self.list.clear();
            let list = std::mem::take(&mut self.list);
            let _ = SEND_LIST.try_with(|kept| kept.set(list));
        }
    }
}

/// The most room a thread's list (of outputs, of sends) keeps between messages: more is something
/// unusual, such as a call's end flushing a long delay, and is freed.
const THREAD_LIST_ROOM: usize = 64;

/// Message kinds (`protocols::Kind` variants; `Other` is the last).
const KINDS: usize = crate::ws::protocols::Kind::Other as usize + 1;

/// Per-route media settings a session starts from.
#[derive(Clone)]
pub struct MediaRoute {
    pub settings: Arc<MediaSettings>,
    pub on_malformed: OnMalformed,
    /// Recording is on for the route, and this is where it goes.
    pub recorder: Option<Arc<dyn super::record::RecordingSink>>,
    /// What the recorder is told at each call's start.
    pub call: super::record::CallStart,
}

impl MediaRoute {
    /// `None` for `passthrough` (nothing to decode).
    pub fn from_config(
        c: &crate::config::media::MediaConfig,
        sink: &Arc<dyn super::record::RecordingSink>,
    ) -> Option<Self> {
        use crate::config::media::Protocol;
        use crate::recording::format::Codec;
        Some(Self {
            settings: Arc::new(MediaSettings::from_config(c)?),
            on_malformed: c.on_malformed,
            recorder: c.record.then(|| sink.clone()),
            call: super::record::CallStart {
                route: String::new(),
                codec: if c.protocol == Protocol::Pcm {
                    Codec::Pcm16
                } else {
                    Codec::Mulaw
                },
                sample_rate: c.sample_rate,
                retention: c.retention,
                consent_required: c.consent_param.is_some(),
            },
        })
    }
}

pub struct MediaSession {
    processor: CallProcessor,
    route: Arc<str>,
    metrics: MediaMetrics,
    on_malformed: OnMalformed,
    recorder: Option<record_queue::Sender<ToRecorder>>,
    /// How many frames the recorder takes to an entry.
    batch: FrameBatch,
    /// Released media frames (and text events after the call's first event), encoded in the
    /// processor's recording line, not yet handed to the recorder.
    frames: Frames,
    /// Cancelled by the recorder when the call must end (`on_error = "close"`).
    pub recorder_failed: tokio_util::sync::CancellationToken,
    dropped: IntCounter,
    processing: Histogram,
    /// `messages{route,direction,kind}` resolved once per session: it is bumped for every message.
    messages: [[Option<IntCounter>; KINDS]; 2],
    redacted: crate::ws::redact::Report,
    stream: Option<String>,
}

thread_local! {
    /// What the processor released for the message in hand, before `drain` sorts it out: one list
    /// per runtime thread, not one per session. It is filled and emptied within one synchronous
    /// call, so every session on the thread can share it, and it stays in the CPU's cache: a
    /// session's own list was a cold cache line written and read again for every output
    /// (docs/PERFORMANCE.md, twenty-second session).
    static OUTPUTS: std::cell::Cell<Vec<Output>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The thread's output list, empty; give it back with [`put_outputs`].
fn take_outputs() -> Vec<Output> {
    OUTPUTS.try_with(std::cell::Cell::take).unwrap_or_default()
}

/// Returns the output list to the thread, keeping its room up to [`THREAD_LIST_ROOM`].
fn put_outputs(mut outs: Vec<Output>) {
    debug_assert!(outs.is_empty(), "drained before it is put back");
    if outs.capacity() > THREAD_LIST_ROOM {
        outs = Vec::new();
    }
    let _ = OUTPUTS.try_with(|kept| kept.set(outs));
}

/// A message that cannot be redacted ends the call (route `on_malformed = "close"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCall {
    pub code: CloseCode,
    pub reason: &'static str,
}

/// The released records in the processor's line not yet handed to the recorder: how many, over
/// what time, and where the last one ends.
#[derive(Default)]
struct Frames {
    count: u32,
    first_at: std::time::Duration,
    last_at: std::time::Duration,
    through: u64,
}

impl Frames {
    /// Counts a released record ending at `end`; returns whether the batch is now whole: its
    /// records (those since `taken_through`) reached `batch.bytes`, or the first of them has
    /// waited `batch.wait`.
    fn released(
        &mut self,
        at: std::time::Duration,
        end: u64,
        taken_through: u64,
        batch: FrameBatch,
    ) -> bool {
        if self.count == 0 {
            self.first_at = at;
        }
        self.count += 1;
        self.last_at = at;
        self.through = end;
        end.saturating_sub(taken_through) >= batch.bytes as u64
            || at.saturating_sub(self.first_at) >= batch.wait
    }
}

/// A session that ends without `finish` (its task cancelled, a broken socket) still hands over
/// the frames it encoded.
impl Drop for MediaSession {
    fn drop(&mut self) {
        self.hand_frames(false);
    }
}

impl MediaSession {
    pub fn start(route: &MediaRoute, name: Arc<str>, metrics: MediaMetrics) -> Self {
        let started = route.recorder.as_ref().map(|r| {
            let mut call = route.call.clone();
            call.route = name.to_string();
            r.start_call(&call)
        });
        let (recorder, recorder_failed, batch) = match started {
            Some(c) => (Some(c.events), c.failed, c.batch),
            None => (None, Default::default(), FrameBatch::default()),
        };
        let mut processor = CallProcessor::new(route.settings.clone(), Instant::now());
        if recorder.is_some() {
            processor = processor.with_recording(batch.bytes);
        }
        Self {
            recorder_failed,
            processor,
            dropped: metrics.recording_dropped.with_label_values(&[&name]),
            processing: metrics.processing.with_label_values(&[&name]),
            route: name,
            metrics,
            on_malformed: route.on_malformed,
            recorder,
            batch,
            frames: Frames::default(),
            messages: Default::default(),
            redacted: Default::default(),
            stream: None,
        }
    }

    /// Processes one text or binary message; returns what to send, in order.
    pub fn handle(&mut self, direction: Direction, msg: Message) -> Result<Sends, CloseCall> {
        let started = Instant::now();
        let mut outs = take_outputs();
        let decoded = self.processor.process(direction, msg, started, &mut outs);
        self.processing.observe(started.elapsed().as_secs_f64());
        match decoded {
            Ok(report) => {
                for (kind, n) in report.iter() {
                    self.redacted.add(kind, n);
                    self.metrics
                        .redactions
                        .with_label_values(&[&self.route, kind.label()])
                        .inc_by(u64::from(n));
                }
            }
            Err(malformed) => {
                self.metrics
                    .malformed
                    .with_label_values(&[&self.route, malformed.label()])
                    .inc();
                tracing::debug!(
                    route = &*self.route,
                    reason = malformed.label(),
                    "malformed media message dropped"
                );
                if self.on_malformed == OnMalformed::Close {
                    drop(self.drain(outs));
                    return Err(CloseCall {
                        code: match malformed {
                            Malformed::UnexpectedBinary => CloseCode::Policy,
                            _ => CloseCode::Invalid,
                        },
                        reason: "message could not be redacted",
                    });
                }
            }
        }
        Ok(self.drain(outs))
    }

    /// When `due` next has something to release (see `CallProcessor::next_due`).
    pub fn next_due(&self) -> Option<Instant> {
        self.processor.next_due()
    }

    /// What waited past its delay in wall-clock time; `None` if nothing waits.
    ///
    /// The pump calls this only when the stream has been quiet for a delay's length. If that
    /// released everything, the call is idle (on hold, or only connected): the delay queues are
    /// freed, not kept for a next message that may be minutes away. While audio flows, later
    /// frames release the held ones and this is not called.
    pub fn due(&mut self) -> Option<Sends> {
        if !self.processor.holding() {
            return None;
        }
        let mut outs = take_outputs();
        self.processor.release_due(Instant::now(), &mut outs);
        self.processor.free_queues_if_empty();
        Some(self.drain(outs))
    }

    fn message_counter(
        &mut self,
        direction: Direction,
        kind: crate::ws::protocols::Kind,
    ) -> &IntCounter {
        let (metrics, route) = (&self.metrics, &self.route);
        self.messages[direction as usize][kind as usize].get_or_insert_with(|| {
            metrics
                .messages
                .with_label_values(&[route, direction.label(), kind.label()])
        })
    }

    /// Redactions so far, by kind (for the audit log).
    pub fn redactions(&self) -> Vec<(crate::ws::redact::Kind, u32)> {
        self.redacted.iter().collect()
    }

    /// The provider's stream id, once the call's first event named it.
    pub fn stream_id(&self) -> Option<&str> {
        self.stream.as_deref()
    }

    /// Everything still held in a delay (call end).
    pub fn finish(&mut self) -> Sends {
        let mut outs = take_outputs();
        self.processor.flush(&mut outs);
        self.drain(outs)
    }

    /// A released record in the processor's line joins the pending batch, handed over whole once
    /// it reaches the recorder's `FrameBatch`. Media frames, and text events after the call's
    /// first event (marks, DTMF events, `stop`), are encoded there: a voice agent that marks
    /// every chunk of its audio would otherwise split the batch a few times a second.
    fn record_released(&mut self, at: std::time::Duration, end: u64) {
        if self.recorder.is_none() {
            return;
        }
        let taken_through = self.processor.records_taken_through();
        if self.frames.released(at, end, taken_through, self.batch) {
            self.hand_frames(true);
        }
    }

    /// The call's first event (consent, subject) goes to the recorder as it is, after the frames
    /// before it, and so does any text event before it.
    fn record_whole(&mut self, event: RecordedEvent) {
        if self.recorder.is_none() {
            return;
        }
        self.hand_frames(false);
        self.send(ToRecorder::Event(Box::new(event)), 1);
    }

    /// Hands the pending frames to the recorder; `whole` when the batch is full or due.
    fn hand_frames(&mut self, whole: bool) {
        let pending = std::mem::take(&mut self.frames);
        if pending.count == 0 {
            return;
        }
        let records = self.processor.take_records(pending.through);
        let entry = ToRecorder::Frames(Box::new(EncodedFrames {
            records,
            count: pending.count,
            last_at: pending.last_at,
            whole,
        }));
        self.send(entry, pending.count);
    }

    /// Never waits: a full queue drops the entry, counted in events.
    fn send(&self, entry: ToRecorder, events: u32) {
        if let Some(tx) = &self.recorder
            && tx.try_send(entry).is_err()
        {
            self.dropped.inc_by(u64::from(events));
        }
    }

    /// Hands what the processor released to the recorder, and returns what goes to the sockets;
    /// gives the output list back to the thread.
    fn drain(&mut self, mut outs: Vec<Output>) -> Sends {
        let mut sends = SEND_LIST
            .try_with(std::cell::Cell::take)
            .unwrap_or_default();
        for out in outs.drain(..) {
            match out {
                Output::Forward(d, m) => sends.push_back((d, m)),
                Output::Record(event) => {
                    if self.stream.is_none() {
                        self.stream = event.call.as_ref().and_then(|c| c.stream.clone());
                    }
                    self.message_counter(event.direction, event.kind).inc();
                    self.record_whole(event);
                }
                Output::Recorded {
                    direction,
                    kind,
                    at,
                    end,
                } => {
                    self.message_counter(direction, kind).inc();
                    self.record_released(at, end);
                }
            }
        }
        // A quiet call releases everything it held: what it recorded goes to the recorder now,
        // not when the next frame comes.
        if !self.processor.holding() {
            self.hand_frames(false);
        }
        put_outputs(outs);
        Sends::new(sends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::record::RecordingSink;

    /// A recorder that never reads: each call's queue (of `capacity` entries) is kept here for the
    /// test to look at.
    struct Unread {
        capacity: usize,
        queues: std::sync::Mutex<Vec<record_queue::Receiver<ToRecorder>>>,
    }

    /// Six 20 ms μ-law frames as records (172 bytes each) make a whole batch.
    const SIX_FRAMES: FrameBatch = FrameBatch {
        bytes: 1024,
        wait: std::time::Duration::from_secs(60),
    };

    impl Unread {
        fn new(capacity: usize) -> Arc<Self> {
            Arc::new(Self {
                capacity,
                queues: Default::default(),
            })
        }

        fn queue(&self) -> record_queue::Receiver<ToRecorder> {
            self.queues.lock().unwrap().pop().expect("a call started")
        }
    }

    impl RecordingSink for Unread {
        fn start_call(
            &self,
            _call: &crate::ws::record::CallStart,
        ) -> crate::ws::record::CallRecorder {
            let (tx, rx) = record_queue::channel(self.capacity);
            self.queues.lock().unwrap().push(rx);
            crate::ws::record::CallRecorder {
                events: tx,
                failed: Default::default(),
                batch: SIX_FRAMES,
            }
        }
    }

    /// Two lists out at once (one session's sends waiting on a socket while another's are built)
    /// each keep their order; the last one dropped goes back to the thread for the next message.
    #[test]
    fn sends_keep_their_order_and_give_their_list_back() {
        let msg = |n: u8| (Direction::ToCaller, Message::binary(vec![n]));
        let first = Sends::new([msg(1), msg(2), msg(3)].into());
        let second = Sends::new([msg(4)].into());
        assert_eq!(first.len(), 3);
        let order: Vec<Message> = second.map(|(_, m)| m).collect();
        assert_eq!(order, [msg(4).1]);
        let order: Vec<Message> = first.map(|(_, m)| m).collect();
        assert_eq!(order, [1, 2, 3].map(|n| msg(n).1));
        let list = SEND_LIST.take();
        assert!(
            list.is_empty() && list.capacity() >= 3,
            "the list is given back"
        );
    }

    fn recorded_route(sink: Arc<Unread>) -> MediaRoute {
        MediaRoute {
            settings: Arc::new(crate::ws::call::tests::settings(0)),
            on_malformed: OnMalformed::Drop,
            recorder: Some(sink),
            call: crate::ws::record::CallStart {
                route: "media".into(),
                codec: crate::recording::format::Codec::Mulaw,
                sample_rate: 8000,
                retention: None,
                consent_required: false,
            },
        }
    }

    /// A session on a recorded route whose recorder never reads (a queue of `capacity`), that
    /// recorder, and the metrics the session counts in.
    fn unread_session(capacity: usize) -> (MediaSession, Arc<Unread>, crate::metrics::Metrics) {
        let metrics = crate::metrics::Metrics::new();
        let sink = Unread::new(capacity);
        let route = recorded_route(sink.clone());
        let session = MediaSession::start(&route, "media".into(), metrics.media.clone());
        (session, sink, metrics)
    }

    /// A Twilio `mark`, a text event that is not the call's first.
    const MARK: &str = r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"x"}}"#;

    /// A recorded session (its recorder never reads) that has had the call's `start`.
    fn started_session() -> (MediaSession, Arc<Unread>) {
        let (mut s, sink, _metrics) = unread_session(crate::ws::record::QUEUE_EVENTS);
        s.handle(
            Direction::ToBackend,
            Message::text(crate::ws::protocols::twilio::tests::START),
        )
        .unwrap();
        (s, sink)
    }

    /// A 20 ms inbound μ-law frame whose samples are all `byte`.
    fn frame(byte: u8) -> Message {
        Message::text(crate::ws::protocols::twilio::tests::media(
            "inbound",
            &[byte; 160],
        ))
    }

    #[test]
    fn a_stuck_recorder_never_stalls_the_call() {
        let (mut s, stuck, metrics) = unread_session(2);
        let frame = crate::ws::protocols::twilio::tests::media("inbound", &[0x10; 160]);
        for _ in 0..20 {
            let sends = s
                .handle(Direction::ToBackend, Message::text(frame.clone()))
                .unwrap();
            assert_eq!(sends.len(), 1, "every frame is forwarded at once");
        }
        s.finish();
        let dropped = metrics
            .media
            .recording_dropped
            .with_label_values(&["media"])
            .get();
        let mut rx = stuck.queue();
        let entries = rx.len();
        assert!(entries <= 2, "the queue stays bounded: {entries}");
        let mut queued = 0;
        while let Ok(entry) = rx.try_recv() {
            queued += match entry {
                ToRecorder::Frames(f) => u64::from(f.count),
                ToRecorder::Event(_) => 1,
            };
        }
        assert!(dropped > 0, "the queue was full");
        assert_eq!(
            dropped + queued,
            20,
            "what did not fit was dropped and counted, in frames"
        );
    }

    /// Every frame reaches the recorder encoded, a few to an entry, in the call's order: the text
    /// event between frames comes after the frames before it. Frames encoded but not yet handed
    /// over when the session is dropped without `finish` (a cancelled task) are handed over then.
    #[test]
    fn frames_reach_the_recorder_batched_and_in_order() {
        use crate::recording::format::{Record, RecordBody};
        let (mut s, sink, _metrics) = unread_session(crate::ws::record::QUEUE_EVENTS);
        // The recording's delay is wall-clock time: frames still inside it are released by the
        // first message after it has passed.
        let past_the_delay = || std::thread::sleep(std::time::Duration::from_millis(150));
        for i in 0..10u8 {
            s.handle(Direction::ToBackend, frame(i)).unwrap();
        }
        past_the_delay();
        s.handle(Direction::ToBackend, Message::text(MARK)).unwrap();
        for i in 10..13u8 {
            s.handle(Direction::ToBackend, frame(i)).unwrap();
        }
        past_the_delay();
        // Releases frames 10 to 12 (encoded, not yet a full batch) and holds 13 in the delay.
        s.handle(Direction::ToBackend, frame(13)).unwrap();
        drop(s);

        let mut rx = sink.queue();
        let mut seen = Vec::new();
        let mut batches = Vec::new();
        while let Ok(entry) = rx.try_recv() {
            match entry {
                ToRecorder::Frames(f) => {
                    batches.push((f.count, f.whole));
                    let decoded = Record::decode_all(&f.records).unwrap();
                    assert_eq!(decoded.len(), f.count as usize);
                    for r in decoded {
                        let RecordBody::Audio(audio) = r.body else {
                            panic!("frames are audio records");
                        };
                        assert_eq!(audio.len(), 160);
                        seen.push(format!("frame {}", audio[0]));
                    }
                }
                ToRecorder::Event(e) => seen.push(format!("{:?}", e.kind)),
            }
        }
        let ulaw = |i: u8| format!("frame {i}");
        let mut expected: Vec<String> = (0..10).map(ulaw).collect();
        expected.push("Mark".into());
        // Frame 13 was still in the delay: only `finish` releases that.
        expected.extend((10..13).map(ulaw));
        assert_eq!(seen, expected);
        // Six frames fill a batch, written as a chunk at once; the mark hands over the four before
        // it, and the drop the last three, to join the chunk being gathered.
        assert_eq!(
            batches,
            [(6, true), (4, false), (3, false)],
            "frames go a batch to an entry, not one each"
        );
    }

    /// The call's first event goes to the recorder whole, and frames can come before it and
    /// still be held in the recording's delay when it comes (their records already in the line,
    /// with the records of frames after it behind them): the recorder gets the frames before it,
    /// then the event, then the frames after it, each once.
    #[test]
    fn frames_around_the_first_event_reach_the_recorder_on_its_two_sides() {
        use crate::recording::format::{Record, RecordBody};
        let (mut s, sink, _metrics) = unread_session(crate::ws::record::QUEUE_EVENTS);
        for i in 0..2u8 {
            s.handle(Direction::ToBackend, frame(i)).unwrap();
        }
        assert!(
            s.processor.holding(),
            "the frames wait in the recording's delay"
        );
        s.handle(
            Direction::ToBackend,
            Message::text(crate::ws::protocols::twilio::tests::START),
        )
        .unwrap();
        for i in 2..4u8 {
            s.handle(Direction::ToBackend, frame(i)).unwrap();
        }
        s.finish();
        drop(s);

        let mut rx = sink.queue();
        let mut seen = Vec::new();
        while let Ok(entry) = rx.try_recv() {
            match entry {
                ToRecorder::Event(e) => seen.push(format!("{:?}", e.kind)),
                ToRecorder::Frames(f) => {
                    let decoded = Record::decode_all(&f.records).unwrap();
                    assert_eq!(decoded.len(), f.count as usize);
                    seen.extend(decoded.into_iter().map(|r| match r.body {
                        RecordBody::Audio(audio) => format!("frame {}", audio[0]),
                        RecordBody::Event(json) => String::from_utf8(json).unwrap(),
                    }));
                }
            }
        }
        assert_eq!(seen, ["frame 0", "frame 1", "Start", "frame 2", "frame 3"]);
    }

    /// A call that goes quiet gets what it held out on the pump's timer, in order, and then holds
    /// no buffers for its delays: an idle call costs what its sockets cost. The next frame is
    /// held and released as before.
    #[test]
    fn a_quiet_call_releases_what_it_held_and_frees_its_delay_buffers() {
        let metrics = crate::metrics::Metrics::new();
        let mut route = recorded_route(Unread::new(crate::ws::record::QUEUE_EVENTS));
        // The default delay: forwarded frames wait 40 ms for the tone detector.
        route.settings = Arc::new(crate::ws::call::tests::settings(40));
        let mut s = MediaSession::start(&route, "media".into(), metrics.media.clone());
        // Two 20 ms frames: neither has 40 ms of audio after it.
        for i in 0..2u8 {
            let sends = s.handle(Direction::ToBackend, frame(i)).unwrap();
            assert_eq!(sends.len(), 0, "held in the tone detector's delay");
        }
        assert!(s.due().is_some_and(|sends| sends.len() == 0), "not due yet");
        assert!(s.processor.queue_capacity() > 0);
        assert!(
            s.processor.record_line_capacity() > 0,
            "the held frames' records"
        );
        std::thread::sleep(std::time::Duration::from_millis(150));
        let released: Vec<u8> = s
            .due()
            .expect("frames were held")
            .map(|(d, m)| {
                assert_eq!(d, Direction::ToBackend);
                let json: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                let payload = json["media"]["payload"].as_str().unwrap();
                crate::ws::protocols::payload::decode(payload).unwrap()[0]
            })
            .collect();
        assert_eq!(released, [0, 1]);
        assert!(!s.processor.holding());
        assert_eq!(
            s.processor.queue_capacity(),
            0,
            "the delay queues are freed"
        );
        assert_eq!(
            s.processor.record_line_capacity(),
            0,
            "the records went to the recorder with their buffer"
        );
        let outs = take_outputs();
        assert!(outs.is_empty(), "the thread's output list is left empty");
        put_outputs(outs);
        assert!(s.due().is_none(), "nothing waits");
        // The call goes on as before.
        assert_eq!(s.handle(Direction::ToBackend, frame(2)).unwrap().len(), 0);
        assert!(s.processor.holding());
    }

    /// A text event on a quiet call goes to the recorder in a buffer of its own size; the first
    /// frame of audio gets a whole batch's buffer, which is then never reallocated.
    #[test]
    fn a_text_event_alone_takes_only_its_size_and_audio_a_whole_batch() {
        let (mut s, sink) = started_session();
        s.handle(Direction::ToCaller, Message::text(MARK)).unwrap();
        let mut rx = sink.queue();
        assert!(matches!(rx.try_recv(), Ok(ToRecorder::Event(_))), "start");
        let Ok(ToRecorder::Frames(alone)) = rx.try_recv() else {
            panic!("the mark is handed over at once: nothing is held");
        };
        assert_eq!(alone.count, 1);
        assert!(
            alone.records.capacity() < 256,
            "a mark's record is small: {}",
            alone.records.capacity()
        );
        s.handle(Direction::ToCaller, Message::text(MARK)).unwrap();
        let _ = rx.try_recv();
        // The recording's delay holds a frame until ~40 ms of audio follows it.
        for i in 1..=4 {
            s.handle(Direction::ToBackend, frame(i)).unwrap();
        }
        assert!(s.frames.count > 0, "frames were released into the batch");
        assert!(
            s.processor.record_line_capacity()
                >= SIX_FRAMES.bytes + super::super::record::FRAME_ROOM,
            "audio reserves the batch"
        );
    }

    /// After the call's first event (which the recorder reads for consent and subject, so it goes
    /// whole), text events such as a voice agent's marks are encoded into the batch in their
    /// place among the frames instead of splitting it.
    #[test]
    fn text_events_after_the_first_event_join_the_batch_in_order() {
        use crate::recording::format::{Record, RecordBody};
        let (mut s, sink) = started_session();
        for i in 0..4u8 {
            s.handle(Direction::ToBackend, frame(i)).unwrap();
            s.handle(Direction::ToBackend, Message::text(MARK)).unwrap();
        }
        s.finish(); // releases what the tone delay still holds
        drop(s);

        let mut rx = sink.queue();
        let mut entries = Vec::new();
        let mut seen = Vec::new();
        while let Ok(entry) = rx.try_recv() {
            match entry {
                ToRecorder::Event(e) => {
                    entries.push("event");
                    seen.push(format!("{:?}", e.kind));
                }
                ToRecorder::Frames(f) => {
                    entries.push("batch");
                    let decoded = Record::decode_all(&f.records).unwrap();
                    assert_eq!(decoded.len(), f.count as usize);
                    for r in decoded {
                        seen.push(match r.body {
                            RecordBody::Audio(audio) => format!("frame {}", audio[0]),
                            RecordBody::Event(json) => {
                                assert_eq!(json, MARK.as_bytes());
                                "Mark".into()
                            }
                        });
                    }
                }
            }
        }
        assert_eq!(
            entries,
            ["event", "batch"],
            "the start event, then one batch"
        );
        let mut expected = vec!["Start".to_string()];
        for i in 0..4 {
            expected.push(format!("frame {i}"));
            expected.push("Mark".into());
        }
        assert_eq!(seen, expected);
    }

    /// A batch is whole once its records reach the recorder's size, or once the oldest has waited
    /// the recorder's time (a call with audio one way only fills a chunk half as fast).
    #[test]
    fn a_batch_is_whole_by_size_or_by_the_wait() {
        use std::time::Duration;
        // A 20 ms μ-law frame's record is 172 bytes; the line had 5,000 bytes taken before.
        let record = 172u64;
        let taken = 5000u64;
        let by_size = FrameBatch {
            bytes: 1024,
            wait: Duration::from_secs(1),
        };
        let mut frames = Frames::default();
        let whole: Vec<bool> = (0..6)
            .map(|i| {
                frames.released(
                    Duration::from_millis(i * 20),
                    taken + (i + 1) * record,
                    taken,
                    by_size,
                )
            })
            .collect();
        assert_eq!(whole, [false, false, false, false, false, true]);
        assert_eq!((frames.count, frames.through), (6, taken + 6 * record));

        let by_time = FrameBatch {
            bytes: 14 * 1024,
            wait: Duration::from_millis(100),
        };
        let mut frames = Frames::default();
        // One frame each 20 ms, starting 1 s into the call: the sixth has waited 100 ms.
        let whole: Vec<bool> = (0..6)
            .map(|i| {
                frames.released(
                    Duration::from_millis(1000 + i * 20),
                    (i + 1) * record,
                    0,
                    by_time,
                )
            })
            .collect();
        assert_eq!(whole, [false, false, false, false, false, true]);
        assert_eq!(frames.last_at, Duration::from_millis(1100));
        let mut frames = Frames::default(); // as `hand_frames` leaves it
        assert!(
            !frames.released(Duration::from_millis(2000), 7 * record, 6 * record, by_time),
            "a new batch's wait starts at its first frame"
        );
    }
}

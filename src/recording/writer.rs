//! The file sink: one writer task per call behind the media session's bounded queue. It decides at the
//! call's first event whether to record (consent), creates the file (0600, in a 0700 directory) and its
//! keystore entry, seals chunks every `flush_interval` or 14 KiB, and marks the last chunk on close.
//! Everything that waits on the disk (SQLite, file writes, fsync) runs on tokio's blocking pool,
//! through the lanes in `lane.rs`.
//! A failure (disk full, permission) never breaks the call unless the route asked for that: the
//! recording is marked failed, counted and logged, and the rest of the call's events are discarded.

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ws::record_queue;
use arc_swap::ArcSwap;
use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;

use super::format::{Codec, Header, Record, RecordBody, seal_chunk_in_place};
use super::keystore::{Entry, Keystore};
use super::lane::{self, Lane};
use super::write_behind::WriteBehind;
use crate::admission::signature::encoding::to_hex;
use crate::config::recording::{Fsync, OnError, RecordingConfig};
use crate::keys::{KeyBytes, KeyRing, keyed_hash};
use crate::metrics::RecordingMetrics;
use crate::ws::protocols::{Audio, Direction, Track};
use crate::ws::record::{
    CallRecorder, CallStart, FRAME_ROOM, FrameBatch, QUEUE_EVENTS, RecordedEvent, RecordingSink,
    ToRecorder,
};

/// Plaintext gathered before a chunk is sealed early. With the buffer (at most `BUFFER_BYTES`, kept
/// from chunk to chunk) sealed in place, this bounds an open recording's memory. One second of a
/// two-way Twilio call is ~17 KiB, so a busy call seals a chunk a little more often than every
/// `flush_interval`.
pub const CHUNK_BYTES: usize = 14 * 1024;
/// The plaintext buffer of an open recording, at most.
const BUFFER_BYTES: usize = 16 * 1024;
/// The buffer starts at this and doubles as the first chunk fills, up to `BUFFER_BYTES`: a call
/// that has sent only its `start` event holds 1 KiB, not 16 (allocated whole, the 16 KiB touched
/// two pages of RSS per call). A busy call reaches 16 KiB within its first second, and keeps it.
const FIRST_BUFFER_BYTES: usize = 1024;
/// The AEAD tag that sealing appends in place.
const TAG_BYTES: usize = 16;
/// Bytes a record takes ahead of its body (`Record::encode_head_into`).
const RECORD_HEAD_BYTES: usize = 12;
// A chunk is sealed once it passes CHUNK_BYTES, so the buffer stays within BUFFER_BYTES unless one
// record is over 2 KiB (a large `start` event, very long PCM frames), and an open call within the
// 64 KiB target. A session's whole batch of frames is CHUNK_BYTES plus FRAME_ROOM at most.
const _: () = assert!(CHUNK_BYTES + FRAME_ROOM <= BUFFER_BYTES);

/// Opens the file a recording is written to (injectable: tests simulate a full disk).
pub type Opener =
    Arc<dyn Fn(&std::path::Path) -> std::io::Result<Box<dyn Write + Send>> + Send + Sync>;

/// Creates files 0600 and fails if one exists.
pub fn open_file(path: &std::path::Path) -> std::io::Result<Box<dyn Write + Send>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    Ok(Box::new(SyncOnFlush(f)))
}

/// `flush` = fsync for real files.
struct SyncOnFlush(std::fs::File);

impl Write for SyncOnFlush {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

pub struct FileSink {
    pub config: RecordingConfig,
    pub keystore: Arc<Keystore>,
    pub ring: ArcSwap<KeyRing>,
    pub subject_key: KeyBytes,
    pub metrics: RecordingMetrics,
    pub open: Opener,
    /// Recordings created, finished and failed are audited (set once the audit log runs).
    pub audit: std::sync::OnceLock<crate::audit::log::AuditLog>,
    /// Creating recordings and marking their end: SQLite work (`recording::lane`).
    keystore_lane: Lane,
    /// Chunk writes that sync, each alone.
    disk_lane: Lane,
    /// Chunk writes that do not sync, gathered into one job (`recording::write_behind`).
    write_behind: WriteBehind,
    /// Every call's writer task: the drain waits for them (`finish_writers`).
    writers: tokio_util::task::TaskTracker,
}

impl FileSink {
    /// Creates the directory (0700) and opens the keystore in it.
    pub fn new(
        config: RecordingConfig,
        ring: KeyRing,
        subject_key: KeyBytes,
        metrics: RecordingMetrics,
    ) -> Result<Arc<Self>, String> {
        create_private_dir(&config.dir)?;
        let keystore =
            Keystore::open(&config.dir.join("keystore.sqlite")).map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            config,
            keystore: Arc::new(keystore),
            ring: ArcSwap::from_pointee(ring),
            subject_key,
            metrics,
            open: Arc::new(open_file),
            audit: std::sync::OnceLock::new(),
            keystore_lane: Lane::new(lane::KEYSTORE_JOBS),
            disk_lane: Lane::new(lane::DISK_JOBS),
            write_behind: WriteBehind::new(Lane::new(lane::WRITE_BEHIND_JOBS)),
            writers: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// Waits, up to `limit`, for every call's writer to finish: once the drain has ended the calls,
    /// each writes its last chunk (synced) and marks its keystore entry. Without this, the process
    /// exited with recordings unfinished. Returns how many were still open at the limit.
    pub async fn finish_writers(&self, limit: std::time::Duration) -> usize {
        self.writers.close();
        if tokio::time::timeout(limit, self.writers.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let open = self.writers.len();
        tracing::warn!(
            open,
            "recordings still being written when the drain's time for them ran out"
        );
        open
    }
}

/// `dir` with mode 0700 (created if missing; an existing one is tightened).
pub fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: cannot set mode 0700: {e}", dir.display()))
}

impl RecordingSink for Arc<FileSink> {
    fn start_call(&self, call: &CallStart) -> CallRecorder {
        let (tx, rx) = record_queue::channel(QUEUE_EVENTS);
        let failed = CancellationToken::new();
        self.writers
            .spawn(write_call(self.clone(), call.clone(), rx, failed.clone()));
        CallRecorder {
            events: tx,
            failed,
            batch: FrameBatch {
                bytes: CHUNK_BYTES,
                wait: self.config.flush_interval,
            },
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One open recording.
struct Open {
    id: String,
    out: Box<dyn Write + Send>,
    dek: KeyBytes,
    header: Vec<u8>,
    prefix: [u8; 7],
    counter: u32,
    /// The chunk being gathered. Between chunks it is usually empty and unallocated: a session's
    /// whole batch of frames becomes the next chunk as it is.
    plain: Vec<u8>,
    /// A whole batch came: the chunk is written before the next entry is taken.
    due: bool,
    bytes: i64,
    last_at_ms: u32,
    /// When the last chunk was sealed.
    last_chunk: Option<std::time::Instant>,
}

/// A call that seals chunks closer together than this is sending faster than real time (a
/// real-time two-way call seals one about every 0.85 s): its chunks are written at once, alone,
/// as they were before chunk writes were gathered. Each of a call's writes waits for the one
/// before it, so gathering would hold such a call's queue back: flat out, 64 calls then held
/// 400–525 KiB of RSS each instead of ~120 KiB (docs/PERFORMANCE.md, twenty-fourth session).
const FASTER_THAN_REAL_TIME: std::time::Duration = std::time::Duration::from_millis(200);

impl Open {
    /// Seals what `plain` holds as the next chunk, then writes it (and syncs it, with `fsync =
    /// "chunk"` or for the last chunk) on the blocking pool: alone if it syncs or the call sends
    /// faster than real time, otherwise with the other calls' chunks sealed within
    /// `write_behind::GATHER`. A write can wait on the disk too
    /// (dirty-page throttling, a slow volume), and a sync always does: that stalls this recording
    /// only, never the calls on the runtime's threads (with one CPU there is only one). The
    /// buffer goes to the blocking thread, so it is never copied or reallocated, and is freed after
    /// the write: the next chunk is the session's next batch, and keeping it would hold two per call.
    async fn write_chunk(&mut self, last: bool, sink: &FileSink) -> std::io::Result<()> {
        make_room(&mut self.plain, TAG_BYTES);
        let len = seal_chunk_in_place(
            &self.dek,
            &self.header,
            &self.prefix,
            self.counter,
            last,
            &mut self.plain,
        );
        let written = (len.len() + self.plain.len()) as u64;
        let sync = sink.config.fsync == Fsync::Chunk || last;
        let mut out = std::mem::replace(&mut self.out, Box::new(std::io::sink()));
        let chunk = std::mem::take(&mut self.plain);
        let write = move || {
            let wrote = write_both(&mut *out, &len, &chunk)
                .and_then(|()| if sync { out.flush() } else { Ok(()) });
            (out, chunk, wrote)
        };
        let now = std::time::Instant::now();
        let hurried = self
            .last_chunk
            .replace(now)
            .is_some_and(|before| now.duration_since(before) < FASTER_THAN_REAL_TIME);
        let written_back = if sync || hurried {
            sink.disk_lane.run(write).await
        } else {
            sink.write_behind.run(write).await
        };
        let (out, chunk, wrote) = written_back
            .map_err(|_| std::io::Error::other("the recording's write task panicked"))?;
        self.out = out;
        drop(chunk);
        self.due = false;
        wrote?;
        self.counter += 1;
        self.bytes += written as i64;
        sink.metrics.chunks.inc();
        sink.metrics.bytes.inc_by(written);
        Ok(())
    }

    fn push(&mut self, e: &RecordedEvent) {
        self.last_at_ms = at_ms(e.at);
        encode_event(e, &mut self.plain, make_room);
    }

    /// Frames the session already encoded (`ToRecorder::Frames`). A whole batch, with nothing
    /// gathered before it, becomes the chunk as it is (it was allocated with room for the tag) and
    /// is written at once. A batch that is not whole is copied: its buffer has a chunk's capacity,
    /// and kept while more gathers it would be a second chunk's worth of memory beside the
    /// session's next batch.
    fn push_frames(&mut self, records: Vec<u8>, last_at: std::time::Duration, whole: bool) {
        self.last_at_ms = at_ms(last_at);
        if whole && self.plain.is_empty() && records.capacity() - records.len() >= TAG_BYTES {
            self.plain = records;
        } else {
            make_room(&mut self.plain, records.len());
            self.plain.extend_from_slice(&records);
        }
        self.due |= whole;
    }
}

fn at_ms(at: std::time::Duration) -> u32 {
    u32::try_from(at.as_millis()).unwrap_or(u32::MAX)
}

/// Appends `e` to `out` as one record of a chunk's plaintext (`format::Record`), after `reserve`
/// has been given the record's size; an event with neither audio nor JSON writes nothing. Audio is
/// encoded straight from the event's samples (no owned copy per frame); only an event's JSON is
/// serialised first, since its length goes ahead of it. Public for the media session, which
/// encodes frames as they are released (`ToRecorder::Frames`).
pub fn encode_event(
    e: &RecordedEvent,
    out: &mut Vec<u8>,
    reserve: impl FnOnce(&mut Vec<u8>, usize),
) {
    let event = match (&e.audio, &e.json) {
        (Some(_), _) => None,
        (None, Some(j)) => Some(j.to_string().into_bytes()),
        (None, None) => return,
    };
    let head = Record {
        at_ms: at_ms(e.at),
        direction: match e.direction {
            Direction::ToBackend => 0,
            Direction::ToCaller => 1,
        },
        track: match e.track {
            Track::Inbound => 0,
            Track::Outbound => 1,
            Track::Single => 2,
        },
        kind: e.kind as u8,
        body: match event {
            Some(json) => RecordBody::Event(json),
            None => RecordBody::Audio(Vec::new()),
        },
    };
    let body_len = match (&e.audio, &head.body) {
        (Some(Audio::Ulaw(b)), _) => b.len(),
        (Some(Audio::Pcm16(samples)), _) => samples.len() * 2,
        (None, RecordBody::Event(json) | RecordBody::Audio(json)) => json.len(),
    };
    reserve(out, RECORD_HEAD_BYTES + body_len);
    match &e.audio {
        Some(Audio::Ulaw(b)) => {
            head.encode_head_into(b.len(), out);
            out.extend_from_slice(b);
        }
        Some(Audio::Pcm16(samples)) => {
            head.encode_head_into(samples.len() * 2, out);
            out.extend(samples.iter().flat_map(|x| x.to_le_bytes()));
        }
        None => head.encode_into(out),
    }
}

/// Grows `plain` to fit `extra` more bytes: by doubling from `FIRST_BUFFER_BYTES`, so that a full
/// chunk's buffer is exactly `BUFFER_BYTES` and is never reallocated again.
fn make_room(plain: &mut Vec<u8>, extra: usize) {
    let needed = plain.len() + extra;
    if needed <= plain.capacity() {
        return;
    }
    let target = needed
        .next_power_of_two()
        .clamp(FIRST_BUFFER_BYTES, BUFFER_BYTES)
        .max(needed);
    plain.reserve_exact(target - plain.len());
}

/// Writes the chunk's length and body with one system call where the file takes both at once.
fn write_both(out: &mut dyn Write, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < head.len() {
        let n = out.write_vectored(&[
            std::io::IoSlice::new(&head[done..]),
            std::io::IoSlice::new(body),
        ])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    // Whatever of the body the vectored writes did not take.
    out.write_all(&body[done - head.len()..])
}

enum State {
    /// Waiting for the event that says whether to record.
    Undecided(Vec<ToRecorder>),
    /// To be recorded: the file and keystore entry are created (on the blocking pool) once the
    /// batch that decided it is taken; its events wait here until then.
    Opening {
        held: Vec<ToRecorder>,
        subject: Option<String>,
    },
    Recording(Box<Open>),
    /// Not recorded (no consent, or failed): events are discarded.
    Off,
}

/// The call's writer: takes the queue's entries into the recording until the session is gone,
/// then finishes it.
///
/// A function returning an `async move` block, not an `async fn`: an `async fn` keeps its
/// arguments twice, and this future is held by every recorded call
/// (`a_call_writer_future_stays_small`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice"
)]
fn write_call(
    sink: Arc<FileSink>,
    call: CallStart,
    mut rx: record_queue::Receiver<ToRecorder>,
    failed: CancellationToken,
) -> impl Future<Output = ()> {
    async move {
        let mut state = State::Undecided(Vec::new());
        // Armed while a partial chunk waits to be written, at most `flush_interval` after it began
        // to gather. An idle call holds no timer and is never woken (a ticking interval held a
        // boxed timer for every call and woke each one every `flush_interval`).
        let mut flush_due: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // Grows as batches need it (one or two entries for a paced call): an idle call holds 4
        // slots, not 64.
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH_EVENTS) => {
                    if n == 0 {
                        break;
                    }
                    // Boxed, like the call's end below: the task's future is as large as its
                    // largest await, and a call waits in `select!` almost all the time (one
                    // allocation a batch, about one a second, keeps ~600 bytes off every recorded
                    // call).
                    state = Box::pin(take_batch(state, &mut batch, &sink, &call, &failed)).await;
                    // Let entries gather before waking again: a call's text events (and the frames
                    // each hands over ahead of it) come in bursts. The queue holds over a minute of
                    // audio; the call never waits on this. A big batch means the call is sending
                    // faster than real time: keep draining. Boxed for the same reason as above.
                    if n < BATCH_EVENTS / 4 && matches!(state, State::Recording(_)) {
                        Box::pin(tokio::time::sleep(BATCH_WAIT.min(sink.config.flush_interval)))
                            .await;
                    }
                }
                () = expiry(&mut flush_due) => {
                    flush_due = None;
                    if let State::Recording(open) = &mut state
                        && !open.plain.is_empty()
                        && let Err(why) = Box::pin(open.write_chunk(false, &sink)).await
                    {
                        let id = open.id.clone();
                        state = fail(&sink, &call, Some(open), &why.to_string(), &failed);
                        tracing::debug!(recording = %id, "recording stopped after a write error");
                    }
                }
            }
            match &state {
                State::Recording(open) if !open.plain.is_empty() => {
                    if flush_due.is_none() {
                        flush_due = Some(Box::pin(tokio::time::sleep(sink.config.flush_interval)));
                    }
                }
                _ => flush_due = None,
            }
        }
        if let State::Recording(open) = state {
            Box::pin(finish(open, &sink, &call, &failed)).await;
        }
    }
}

/// Completes when `timer` fires; never, when there is none.
async fn expiry(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Takes a batch of queue entries into the recording, then opens its file if they decided it.
async fn take_batch(
    mut state: State,
    batch: &mut Vec<ToRecorder>,
    sink: &Arc<FileSink>,
    call: &CallStart,
    failed: &CancellationToken,
) -> State {
    for e in batch.drain(..) {
        state = take(state, e, sink, call, failed).await;
    }
    opened(state, sink, call, failed).await
}

/// Writes the last chunk when the call ends and marks the recording complete.
async fn finish(
    mut open: Box<Open>,
    sink: &FileSink,
    call: &CallStart,
    failed: &CancellationToken,
) {
    match open.write_chunk(true, sink).await {
        Ok(()) => {
            // The file is whole either way; a keystore that could not be updated leaves the
            // entry in state `recording`, which the audit entry and the log say.
            let marked = finish_entry(sink, &open, "complete").await;
            sink.metrics.finished.inc();
            let fields = serde_json::json!({"recording": open.id, "bytes": open.bytes, "duration_ms": open.last_at_ms});
            let outcome = if let Err(why) = &marked {
                tracing::warn!(route = %call.route, recording = %open.id, error = %why, "recording finished, but its keystore entry was not marked complete");
                "error"
            } else {
                "ok"
            };
            audit(sink, "recording_finished", outcome, &call.route, fields);
        }
        Err(why) => {
            fail(sink, call, Some(&open), &why.to_string(), failed);
        }
    }
}

/// Most events taken from a call's queue at once (the batch buffer is per call: kept small).
const BATCH_EVENTS: usize = 64;

/// How long the writer lets entries gather after a batch (at most `flush_interval`): a paced call
/// queues a whole batch of frames about once a second, plus its text events, each with the frames
/// that came before it.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// One event through the recording's state: held until the call's first event decides consent,
/// then added to the chunk being gathered (`take` writes it once full), or dropped when the call is
/// not recorded.
fn apply(state: State, e: ToRecorder, sink: &FileSink, call: &CallStart) -> State {
    match state {
        State::Undecided(mut held) => {
            let (info, has_audio) = match &e {
                ToRecorder::Event(e) => (e.call.clone(), e.audio.is_some()),
                ToRecorder::Frames(_) => (None, true),
            };
            let decides = info.is_some() || (has_audio && !call.consent_required);
            held.push(e);
            if !decides {
                State::Undecided(held)
            } else if call.consent_required && !info.as_ref().is_some_and(|i| i.consent) {
                sink.metrics
                    .not_consented
                    .with_label_values(&[&call.route])
                    .inc();
                audit(
                    sink,
                    "recording_not_consented",
                    "ok",
                    &call.route,
                    serde_json::json!({}),
                );
                State::Off
            } else {
                State::Opening {
                    held,
                    subject: info.and_then(|i| i.subject),
                }
            }
        }
        State::Opening { mut held, subject } => {
            held.push(e);
            State::Opening { held, subject }
        }
        State::Recording(mut open) => {
            match e {
                ToRecorder::Event(e) => open.push(&e),
                ToRecorder::Frames(f) => open.push_frames(f.records, f.last_at, f.whole),
            }
            State::Recording(open)
        }
        State::Off => State::Off,
    }
}

/// `state` with its file and keystore entry created, if it was waiting for them. SQLite commits
/// (an fsync of its log) and waits up to its busy timeout while another writer, such as `voxguard
/// keys rewrap`, holds the lock: both happen on the blocking pool, so the calls sharing this
/// runtime thread go on meanwhile. Their events wait in the call's queue.
async fn opened(
    state: State,
    sink: &Arc<FileSink>,
    call: &CallStart,
    failed: &CancellationToken,
) -> State {
    let State::Opening { held, subject } = state else {
        return state;
    };
    let (for_start, call_start) = (sink.clone(), call.clone());
    let started = sink
        .keystore_lane
        .run(move || start(&for_start, &call_start, subject.as_deref()))
        .await
        .unwrap_or_else(|_| Err("creating the recording panicked".to_string()));
    let mut state = match started {
        Ok(open) => State::Recording(open),
        Err(why) => return fail(sink, call, None, &why, failed),
    };
    for e in held {
        state = take(state, e, sink, call, failed).await;
    }
    state
}

/// One event through `apply`; when it fills a chunk, or is a session's whole batch, the chunk is
/// written before the next event is taken, so an open recording's buffer never grows past
/// `BUFFER_BYTES`.
async fn take(
    state: State,
    e: ToRecorder,
    sink: &FileSink,
    call: &CallStart,
    failed: &CancellationToken,
) -> State {
    let state = apply(state, e, sink, call);
    let State::Recording(mut open) = state else {
        return state;
    };
    if open.plain.len() < CHUNK_BYTES && !open.due {
        return State::Recording(open);
    }
    match open.write_chunk(false, sink).await {
        Ok(()) => State::Recording(open),
        Err(why) => fail(sink, call, Some(&open), &why.to_string(), failed),
    }
}

/// Creates the file and its keystore entry.
fn start(sink: &FileSink, call: &CallStart, subject: Option<&str>) -> Result<Box<Open>, String> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 16];
    let mut prefix = [0u8; 7];
    rng.fill(&mut id).map_err(|_| "no randomness".to_string())?;
    rng.fill(&mut prefix)
        .map_err(|_| "no randomness".to_string())?;
    let ring = sink.ring.load();
    let dek = KeyBytes::random();
    let created = now_ms();
    let header = Header {
        recording_id: id,
        created_ms: created as u64,
        codec: call.codec,
        sample_rate: match call.codec {
            Codec::Mulaw => 8000,
            Codec::Pcm16 => call.sample_rate,
        },
        channels: 2,
        nonce_prefix: prefix,
        kek_id: ring.active_id().to_string(),
    };
    let id_hex = to_hex(&id);
    let path: PathBuf = sink.config.dir.join(format!("{id_hex}.vxr"));
    let retention = call.retention.unwrap_or(sink.config.retention);
    let entry = Entry {
        id: id_hex.clone(),
        route: call.route.clone(),
        path: path.clone(),
        wrapped: ring.wrap(&dek),
        subject_hash: subject.map(|s| keyed_hash(&sink.subject_key, s)),
        created_ms: created,
        expires_ms: created + retention.as_millis() as i64,
        state: "recording".into(),
        bytes: 0,
        duration_ms: 0,
    };
    sink.keystore.insert(&entry).map_err(|e| e.to_string())?;
    let header_bytes = header.encode();
    let opened = (sink.open)(&path).and_then(|mut out| {
        out.write_all(&header_bytes)?;
        Ok(out)
    });
    let out = match opened {
        Ok(out) => out,
        Err(e) => {
            let _ = sink.keystore.delete(&id_hex);
            return Err(format!("{}: {e}", path.display()));
        }
    };
    sink.metrics.started.inc();
    audit(
        sink,
        "recording_created",
        "ok",
        &call.route,
        serde_json::json!({"recording": id_hex, "kek": header.kek_id}),
    );
    Ok(Box::new(Open {
        id: id_hex,
        out,
        dek,
        bytes: header_bytes.len() as i64,
        header: header_bytes,
        prefix,
        counter: 0,
        plain: Vec::new(),
        due: false,
        last_at_ms: 0,
        last_chunk: None,
    }))
}

/// Records a recording event in the audit log, once it runs.
fn audit(
    sink: &FileSink,
    event: &'static str,
    outcome: &'static str,
    route: &str,
    fields: serde_json::Value,
) {
    if let Some(a) = sink.audit.get() {
        a.record(crate::audit::log::Event::new(event, outcome, fields).route(route));
    }
}

/// Marks the recording's keystore entry `state` (with its size and duration) in the keystore's lane:
/// a SQLite commit. Owns what it needs, so it can be spawned and left to finish.
fn finish_entry(
    sink: &FileSink,
    open: &Open,
    state: &'static str,
) -> impl Future<Output = Result<(), String>> + Send + 'static {
    let (keystore, lane, id) = (
        sink.keystore.clone(),
        sink.keystore_lane.clone(),
        open.id.clone(),
    );
    let (bytes, duration_ms) = (open.bytes, i64::from(open.last_at_ms));
    async move {
        lane.run(move || keystore.finish(&id, state, bytes, duration_ms))
            .await
            .map_err(|_| "the keystore update panicked".to_string())?
            .map_err(|e| e.to_string())
    }
}

fn fail(
    sink: &FileSink,
    call: &CallStart,
    open: Option<&Open>,
    why: &str,
    failed: &CancellationToken,
) -> State {
    sink.metrics.failed.inc();
    audit(
        sink,
        "recording_failed",
        "error",
        &call.route,
        serde_json::json!({"recording": open.map(|o| o.id.clone())}),
    );
    if let Some(open) = open {
        // Not waited for: the recording is over either way, and the call must not wait on SQLite.
        tokio::spawn(finish_entry(sink, open, "failed"));
    }
    tracing::warn!(route = %call.route, recording = open.map(|o| o.id.as_str()), error = %why, "recording failed");
    if sink.config.on_error == OnError::Close {
        failed.cancel();
    }
    State::Off
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::record::EncodedFrames;

    fn media_event(i: u64) -> RecordedEvent {
        RecordedEvent {
            at: std::time::Duration::from_millis(i * 10),
            direction: if i % 2 == 0 {
                Direction::ToBackend
            } else {
                Direction::ToCaller
            },
            kind: crate::ws::protocols::Kind::Media,
            track: Track::Inbound,
            audio: Some(Audio::Ulaw(vec![0x7E; 160])),
            json: None,
            call: None,
        }
    }

    /// A file sink in `dir`, and a Twilio call that needs no consent.
    fn sink_in(dir: &std::path::Path) -> (Arc<FileSink>, CallStart) {
        sink_flushing_every(dir, "1s")
    }

    fn sink_flushing_every(dir: &std::path::Path, flush: &str) -> (Arc<FileSink>, CallStart) {
        let text = format!(
            "[server]\ndata_dir = {:?}\n[recording]\ndir = {:?}\nflush_interval = {flush:?}\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\nname = \"media\"\nupstream = \"a\"\n[route.media]\nprotocol = \"twilio\"\n",
            dir.join("data"),
            dir.join("rec"),
        );
        let config = crate::Config::parse(&text, "t", &|_| None).unwrap();
        let sink = FileSink::new(
            config.recording.clone(),
            crate::recording::key_ring(&config).unwrap(),
            crate::recording::subject_key(&config).unwrap(),
            crate::metrics::Metrics::new().recording,
        )
        .unwrap();
        let call = CallStart {
            route: "media".into(),
            codec: crate::recording::format::Codec::Mulaw,
            sample_rate: 8000,
            retention: None,
            consent_required: false,
        };
        (sink, call)
    }

    /// A session's batch of `count` encoded media frames from the `from`th, allocated with a
    /// chunk's capacity as the session allocates it.
    fn encoded_batch(from: u64, count: u64, whole: bool) -> ToRecorder {
        let mut records = Vec::with_capacity(CHUNK_BYTES + FRAME_ROOM);
        for i in from..from + count {
            encode_event(&media_event(i), &mut records, |v, n| v.reserve(n));
        }
        ToRecorder::Frames(Box::new(EncodedFrames {
            records,
            count: count as u32,
            last_at: media_event(from + count - 1).at,
            whole,
        }))
    }

    /// Every recorded call has one of these tasks, waiting on its queue almost all the time; the
    /// task is as large as its future (an idle recorded call is ~19 KiB in all, docs/PERFORMANCE.md).
    #[test]
    fn a_call_writer_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, call) = sink_in(dir.path());
        let (_tx, rx) = record_queue::channel(1);
        let writer = write_call(sink, call, rx, CancellationToken::new());
        let size = std::mem::size_of_val(&writer);
        // 328 bytes in a debug build. 424 as an `async fn` (its arguments kept twice) with a
        // ticking interval, which in a release build made the task 640 bytes instead of 512
        // (tokio rounds a task to 128); 928 with the batch's and the end's awaits inline.
        assert!(size <= 384, "the call writer's future grew to {size} bytes");
    }

    /// Frames a call handed over early (it went quiet) are written `flush_interval` after they
    /// came, not before, and again for the next ones: the timer is armed only while a partial
    /// chunk waits. Without it they would wait for the call's end.
    #[tokio::test]
    async fn a_partial_chunk_is_written_one_flush_interval_after_it_came() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, call) = sink_in(dir.path());
        let interval = sink.config.flush_interval;
        let (tx, rx) = record_queue::channel(QUEUE_EVENTS);
        let writer = tokio::spawn(write_call(sink.clone(), call, rx, CancellationToken::new()));
        let written = || sink.metrics.chunks.get();
        let until_written = |n: u64| async move {
            tokio::time::timeout(std::time::Duration::from_secs(20), async {
                while written() < n {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await
            .is_ok()
        };
        for (round, from) in [(1, 0), (2, 10)] {
            let came = std::time::Instant::now();
            tx.try_send(encoded_batch(from, 3, false)).unwrap();
            tokio::time::sleep(interval / 2).await;
            assert_eq!(written(), round - 1, "not written before its time");
            assert!(
                until_written(round).await,
                "batch {round} was never written"
            );
            assert!(came.elapsed() >= interval, "written after a whole interval");
        }
        drop(tx);
        writer.await.unwrap();
        assert_eq!(written(), 3, "and the call's end is the last chunk");
    }

    /// Once what a call sent is written, its writer sleeps until the next entry: an idle recorded
    /// call costs no wake-ups (a ticking interval woke every call's writer every
    /// `flush_interval`, and kept a timer per call).
    #[tokio::test]
    async fn an_idle_recorded_calls_writer_is_not_woken() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (sink, call) = sink_flushing_every(dir.path(), "50ms");
        let interval = sink.config.flush_interval;
        let (tx, rx) = record_queue::channel(QUEUE_EVENTS);
        let polls = Arc::new(AtomicUsize::new(0));
        let mut writer = Box::pin(write_call(sink.clone(), call, rx, CancellationToken::new()));
        let counted = polls.clone();
        let writer = tokio::spawn(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            writer.as_mut().poll(cx)
        }));
        tx.try_send(encoded_batch(0, 1, false)).unwrap();
        let first_written = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while sink.metrics.chunks.get() < 1 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert!(
            first_written.await.is_ok(),
            "the partial chunk was never written"
        );
        tokio::time::sleep(interval).await;
        let settled = polls.load(Ordering::SeqCst);
        tokio::time::sleep(interval * 10).await;
        assert_eq!(
            polls.load(Ordering::SeqCst),
            settled,
            "the writer of an idle call was woken"
        );
        drop(tx);
        writer.await.unwrap();
        assert_eq!(sink.metrics.chunks.get(), 2, "the call's end is written");
    }

    /// Frames the session encoded start the recording like any audio, and land in the chunk as
    /// they came, with the call's duration taken from the last of them.
    #[tokio::test]
    async fn encoded_frames_are_recorded_as_they_came() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, call) = sink_in(dir.path());
        let failed = CancellationToken::new();
        let mut records = Vec::with_capacity(CHUNK_BYTES + FRAME_ROOM);
        for i in 0..3 {
            encode_event(&media_event(i), &mut records, |v, n| v.reserve(n));
        }
        let expected = records.clone();
        let frames = ToRecorder::Frames(Box::new(EncodedFrames {
            records, // with a chunk's capacity, as the session allocates it
            count: 3,
            last_at: std::time::Duration::from_millis(40),
            whole: false,
        }));
        let state = take(State::Undecided(Vec::new()), frames, &sink, &call, &failed).await;
        assert!(
            matches!(state, State::Opening { .. }),
            "audio decides a call that needs no consent"
        );
        let State::Recording(open) = opened(state, &sink, &call, &failed).await else {
            panic!("the call is recorded");
        };
        assert_eq!(open.plain, expected);
        assert_eq!(open.last_at_ms, 40);
        assert_eq!(open.counter, 0, "a batch that is not whole waits for more");
        assert!(
            open.plain.capacity() < CHUNK_BYTES,
            "and is copied into a buffer of its size, not kept with a chunk's capacity"
        );
    }

    /// A session's whole batch becomes the chunk as it is (no copy) and is written when it comes,
    /// not at the writer's next tick; its buffer is freed after the write. A batch that is not
    /// whole (the call went quiet) is copied into the chunk being gathered, and so is the whole
    /// batch after it, behind it.
    #[tokio::test]
    async fn a_whole_batch_is_the_chunk_and_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, call) = sink_in(dir.path());
        let failed = CancellationToken::new();
        let batch = |from: u64, whole: bool| encoded_batch(from, 6, whole);
        let state = take(
            State::Undecided(Vec::new()),
            batch(0, false),
            &sink,
            &call,
            &failed,
        )
        .await;
        let State::Recording(open) = opened(state, &sink, &call, &failed).await else {
            panic!("the call is recorded");
        };
        assert_eq!(open.counter, 0);
        let gathered = open.plain.len();

        let mut state = take(
            State::Recording(open),
            batch(6, true),
            &sink,
            &call,
            &failed,
        )
        .await;
        let State::Recording(open) = &state else {
            panic!("still recording");
        };
        assert_eq!(
            open.counter, 1,
            "the whole batch was written with what was gathered"
        );
        assert_eq!(
            open.plain.capacity(),
            0,
            "the written chunk's buffer is freed"
        );
        assert!(
            open.bytes as usize > 2 * gathered,
            "both batches are in the file"
        );

        let whole = batch(12, true);
        let ToRecorder::Frames(f) = &whole else {
            unreachable!()
        };
        let buffer = f.records.as_ptr();
        state = apply(state, whole, &sink, &call);
        let State::Recording(open) = &state else {
            panic!("still recording");
        };
        assert_eq!(
            open.plain.as_ptr(),
            buffer,
            "the batch is the chunk, not a copy"
        );
        assert!(open.due, "and `take` writes it before the next entry");
    }

    #[tokio::test]
    async fn an_open_recording_holds_at_most_one_chunk_of_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, call) = sink_in(dir.path());
        let failed = CancellationToken::new();
        let mut state = State::Undecided(Vec::new());
        let mut largest = 0;
        let mut largest_buffer = 0;
        // Ten seconds of a two-way Twilio call (50 frames of 160 μ-law bytes each way per second),
        // through the writer's own state machine, which seals a chunk whenever one is full.
        for i in 0..1000u64 {
            state = take(
                state,
                ToRecorder::Event(Box::new(media_event(i))),
                &sink,
                &call,
                &failed,
            )
            .await;
            state = opened(state, &sink, &call, &failed).await;
            let State::Recording(open) = &state else {
                panic!("the call is recorded");
            };
            if i == 0 {
                assert_eq!(
                    open.plain.capacity(),
                    FIRST_BUFFER_BYTES,
                    "a call that has sent one frame holds a small buffer"
                );
            }
            let footprint = std::mem::size_of::<Open>()
                + open.plain.capacity()
                + open.header.len()
                + open.id.len();
            largest = largest.max(footprint);
            largest_buffer = largest_buffer.max(open.plain.capacity());
        }
        let State::Recording(open) = &state else {
            unreachable!()
        };
        assert!(open.counter > 0, "chunks were sealed on the way");
        assert_eq!(
            largest_buffer, BUFFER_BYTES,
            "the buffer grew to a chunk's size, and no further"
        );
        eprintln!("an open recording holds at most {largest} bytes");
        assert!(largest <= 64 * 1024, "{largest}");
    }
}

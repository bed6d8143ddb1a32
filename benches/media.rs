//! One media message through decode → every redactor → encode (the call processor), with the
//! default route settings: a Twilio `media` message (160 μ-law samples, 20 ms) and a 20 ms frame of
//! 16 kHz PCM (320 samples). Speech-like audio, so nothing is masked and the original bytes are
//! forwarded; the tone detector, the recording copy and the delay queues all run. A third case sends
//! the same Twilio messages at background level (-60 dBFS), as in a call's pauses, where the tone
//! detector can tell from a block's energy alone that no digit is there. `media_payload_decode`
//! compares the payload decoder with the `base64` crate's on one 20 ms payload;
//! `media_twilio_decode` is one `media` message's decoding alone (scan and payload).
//! `media_calls_round_robin` is a whole media session's handling (`MediaSession::handle`: the
//! processor, the recording's frame encoding, the metrics) of one message each way, for 1, 500 and
//! 5,000 calls taken in turn, as a paced load reaches them. 500 calls' state still fits the L2
//! cache; 5,000 calls' does not, so that case shows what cold per-call state costs (the live
//! proxy's state is colder still: the kernel's network path runs between two messages of a call).
//! With `VOXGUARD_BENCH_STEPS=N` the binary runs the 5,000-call case for exactly N steps instead,
//! for a cache simulator (`valgrind --tool=callgrind --cache-sim=yes`), whose counts do not move
//! with the host's load the way times do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use criterion::{Criterion, criterion_group};
use tokio_tungstenite::tungstenite::Message;
use voxguard::ws::call::{CallProcessor, MediaSettings};
use voxguard::ws::protocols::Direction;
use voxguard::ws::protocols::audio::linear_to_ulaw;

fn settings(media: &str) -> Arc<MediaSettings> {
    let text = format!(
        "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\nupstream = \"a\"\n[route.media]\n{media}"
    );
    let config = voxguard::Config::parse(&text, "bench", &|_| None).unwrap();
    Arc::new(MediaSettings::from_config(config.routes[0].media.as_ref().unwrap()).unwrap())
}

/// A vowel-like signal: a 140 Hz fundamental with harmonics.
fn voice(n: usize, rate: f32, offset: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (i + offset) as f32 / rate;
            let s: f32 = (1..8)
                .map(|h| (2.0 * std::f32::consts::PI * 140.0 * h as f32 * t).sin() / h as f32)
                .sum();
            (s * 4000.0) as i16
        })
        .collect()
}

/// Fifty Twilio `media` messages of the vowel, its samples divided by `attenuation`.
fn twilio_messages(attenuation: i16) -> Vec<Message> {
    let b64 = base64::engine::general_purpose::STANDARD;
    (0..50)
        .map(|i| {
            let ulaw: Vec<u8> = voice(160, 8000.0, i * 160)
                .iter()
                .map(|&s| linear_to_ulaw(s / attenuation))
                .collect();
            Message::text(format!(
                r#"{{"event":"media","sequenceNumber":"{i}","media":{{"track":"inbound","chunk":"{i}","timestamp":"{}","payload":"{}"}},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}}"#,
                i * 20,
                b64.encode(ulaw)
            ))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let twilio = settings("protocol = \"twilio\"");
    let mut out = Vec::new();
    let t0 = Instant::now();
    // Speech at about -12 dBFS, then the same at -60 dBFS (1/250 of the amplitude).
    for (name, attenuation) in [
        ("media_twilio_message", 1),
        ("media_twilio_quiet_message", 250),
    ] {
        let messages = twilio_messages(attenuation);
        let mut p = CallProcessor::new(twilio.clone(), Instant::now());
        let mut i = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let now = t0 + Duration::from_millis(20 * i as u64);
                p.process(
                    Direction::ToBackend,
                    messages[i % 50].clone(),
                    now,
                    &mut out,
                )
                .unwrap();
                out.clear();
            })
        });
    }

    let pcm = settings("protocol = \"pcm\"\nsample_rate = 16000");
    let frames: Vec<Message> = (0..50)
        .map(|i| {
            let bytes: Vec<u8> = voice(320, 16000.0, i * 320)
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect();
            Message::binary(bytes)
        })
        .collect();
    let mut p = CallProcessor::new(pcm, Instant::now());
    let mut j = 0usize;
    c.bench_function("media_pcm16k_frame", |b| {
        b.iter(|| {
            j += 1;
            let now = t0 + Duration::from_millis(20 * j as u64);
            p.process(Direction::ToBackend, frames[j % 50].clone(), now, &mut out)
                .unwrap();
            out.clear();
        })
    });
}

fn payload(c: &mut Criterion) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let ulaw: Vec<u8> = voice(160, 8000.0, 0)
        .iter()
        .map(|&s| linear_to_ulaw(s))
        .collect();
    let text = b64.encode(&ulaw);
    let message = &twilio_messages(1)[7];
    c.bench_function("media_twilio_decode", |b| {
        use voxguard::ws::protocols::FrameCodec;
        let codec = voxguard::ws::protocols::twilio::TwilioCodec;
        b.iter(|| codec.decode(std::hint::black_box(message), Direction::ToBackend))
    });
    let mut group = c.benchmark_group("media_payload_decode");
    group.bench_function("voxguard", |b| {
        b.iter(|| voxguard::ws::protocols::payload::decode(std::hint::black_box(&text)).unwrap())
    });
    group.bench_function("base64_crate", |b| {
        b.iter(|| b64.decode(std::hint::black_box(&text)).unwrap())
    });
    group.finish();
}

/// Keeps each call's recording queue, in the order the calls started, for the bench to empty as
/// the recorder would. A batch of frames goes to the recorder when it is full or has waited `wait`.
struct DrainedSink {
    queues: std::sync::Mutex<
        Vec<voxguard::ws::record_queue::Receiver<voxguard::ws::record::ToRecorder>>,
    >,
    wait: Duration,
}

impl voxguard::ws::record::RecordingSink for DrainedSink {
    fn start_call(
        &self,
        _: &voxguard::ws::record::CallStart,
    ) -> voxguard::ws::record::CallRecorder {
        let (events, rx) = voxguard::ws::record_queue::channel(voxguard::ws::record::QUEUE_EVENTS);
        self.queues.lock().unwrap().push(rx);
        voxguard::ws::record::CallRecorder {
            events,
            failed: Default::default(),
            batch: voxguard::ws::record::FrameBatch {
                bytes: voxguard::recording::writer::CHUNK_BYTES,
                wait: self.wait,
            },
        }
    }
}

/// `calls` media sessions on a recorded route, each past its `start` event, and their recording
/// queues (session k's is the k-th), with the Twilio messages they are sent in turn.
struct RoundRobin {
    sessions: Vec<voxguard::ws::intercept::MediaSession>,
    queues: Vec<voxguard::ws::record_queue::Receiver<voxguard::ws::record::ToRecorder>>,
    messages: Vec<Message>,
    step: usize,
}

impl RoundRobin {
    /// `batch_wait`: the recorder's `FrameBatch::wait`.
    fn new(calls: usize, batch_wait: Duration) -> Self {
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\nupstream = \"a\"\n[route.media]\nprotocol = \"twilio\"\nrecord = true\ndtmf_events = \"both\"";
        let config = voxguard::Config::parse(text, "bench", &|_| None).unwrap();
        let sink = Arc::new(DrainedSink {
            queues: Default::default(),
            wait: batch_wait,
        });
        let as_sink: Arc<dyn voxguard::ws::record::RecordingSink> = sink.clone();
        let route = voxguard::ws::intercept::MediaRoute::from_config(
            config.routes[0].media.as_ref().unwrap(),
            &as_sink,
        )
        .unwrap();
        let metrics = voxguard::metrics::Metrics::new();
        let start = Message::text(
            r#"{"event":"start","sequenceNumber":"1","start":{"streamSid":"MZ1","accountSid":"AC1","callSid":"CA1","tracks":["inbound"],"customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ1"}"#,
        );
        let sessions: Vec<_> = (0..calls)
            .map(|_| {
                let mut s = voxguard::ws::intercept::MediaSession::start(
                    &route,
                    "media".into(),
                    metrics.media.clone(),
                );
                s.handle(Direction::ToBackend, start.clone())
                    .unwrap()
                    .for_each(drop);
                s
            })
            .collect();
        let queues = std::mem::take(&mut *sink.queues.lock().unwrap());
        assert_eq!(queues.len(), calls);
        Self {
            sessions,
            queues,
            messages: twilio_messages(1),
            step: 0,
        }
    }

    /// The next call in turn handles one message each way, and its recording queue is emptied, so
    /// every case pays the same for that, however many calls there are.
    fn step(&mut self) {
        let calls = self.sessions.len();
        let call = self.step % calls;
        let m = &self.messages[(self.step / calls) % 50];
        let s = &mut self.sessions[call];
        for direction in [Direction::ToBackend, Direction::ToCaller] {
            s.handle(direction, m.clone()).unwrap().for_each(drop);
        }
        while let Ok(entry) = self.queues[call].try_recv() {
            drop(entry);
        }
        self.step += 1;
    }
}

/// Many calls at once, each sent one message each way in turn, as a paced load does: between two
/// messages of a call, every other call's state has passed through the caches. Per pair of messages.
fn many_calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("media_calls_round_robin");
    for calls in [1usize, 500, 5000] {
        let mut calls_in_turn = RoundRobin::new(calls, Duration::from_secs(1));
        group.bench_function(calls.to_string(), |b| b.iter(|| calls_in_turn.step()));
    }
    group.finish();
}

/// `VOXGUARD_BENCH_STEPS=N` runs `media_calls_round_robin/5000` for exactly N steps after two
/// rounds of every call, instead of criterion: for a cache simulator, whose counts do not depend
/// on how busy the machine is (docs/PERFORMANCE.md, twenty-second session, has the command). Only
/// `measured_steps` is to be counted (`--toggle-collect`).
fn fixed_steps(steps: usize) {
    // Batches go when full (~0.8 s of a paced call's audio), as they do live, not after a second
    // of the simulator's slowed clock.
    let mut calls_in_turn = RoundRobin::new(5000, Duration::from_secs(3600));
    for _ in 0..2 * 5000 {
        calls_in_turn.step();
    }
    measured_steps(&mut calls_in_turn, steps);
}

#[inline(never)]
fn measured_steps(calls_in_turn: &mut RoundRobin, steps: usize) {
    for _ in 0..steps {
        calls_in_turn.step();
    }
}

criterion_group!(benches, bench, payload, many_calls);

fn main() {
    if let Some(steps) = std::env::var("VOXGUARD_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        fixed_steps(steps);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

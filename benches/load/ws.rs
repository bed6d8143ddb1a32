//! WebSocket mode: `--calls` Twilio Media Streams calls, each `connected`, `start` (with a phone
//! number and a card number in `customParameters`, for the redactors), then `media` messages of real
//! μ-law audio with DTMF digits, paced at `--rate` per second (Twilio's 50) or flat out with
//! `--window` messages in flight, then `stop`. The echo backend returns every message, so the client
//! measures each message's round trip through the proxy both ways, and counts what never came back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Common;
use crate::net::Target;
use crate::report::{self, ProcSample, Span, Window};

#[derive(Args)]
pub struct WsArgs {
    /// e.g. wss://127.0.0.1:8443/stream
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    calls: usize,
    /// Media messages per second per call; 0 sends flat out.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Flat out: messages in flight per call.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Open the calls, send `start`, then send nothing: memory per idle session.
    #[arg(long)]
    idle: bool,
    /// Calls are opened evenly over this long (part of the warm-up).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    /// After the run, how long to wait for echoes still on their way before counting them lost.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// The proxy holds each frame until this many later frames of the call have arrived (a
    /// lookahead: voxguard's DTMF masking holds 2 frames each way, so 4 for a round trip). Adds
    /// `after_hold_*`: each round trip counted from when the frame that completed its hold was
    /// sent, which leaves out the load generator's own lateness in sending those frames.
    #[arg(long, default_value_t = 0)]
    hold_frames: u64,
    /// Send a `mark` after every this many media messages (0: never), as a voice agent marks the
    /// chunks of audio it sends to learn when they have played. The echo backend returns it like
    /// the rest; only media messages are timed.
    #[arg(long, default_value_t = 0)]
    mark_every: u64,
    /// Paced: the round trip a call may take (the hold included), for `tail_windows`: which 100 ms
    /// windows of the run had more than 1 % of their round trips over it. compare.sh passes 20 ms,
    /// plus the 80 ms hold for the media route.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    tail_bound: Duration,
    #[command(flatten)]
    common: Common,
}

/// Send times are kept in a ring indexed by sequence number; far larger than any window.
const RING: usize = 4096;

struct Shared {
    target: Target,
    frames: Vec<String>,
    span: Span,
    rate: u32,
    window: usize,
    idle: bool,
    drain: Duration,
    hold_frames: u64,
    mark_every: u64,
    tail_bound: Duration,
    /// `WINDOW`s in the measured span when paced (0 otherwise): each call's `windows` has this many.
    windows: usize,
}

struct CallResult {
    sent: u64,
    received: u64,
    counted: u64,
    errors: u64,
    hist: hdrhistogram::Histogram<u64>,
    /// Paced: how late each send was against its tick (the generator's own delay).
    late: hdrhistogram::Histogram<u64>,
    /// With `--hold-frames`: round trips from the send of the frame that completed the hold.
    after_hold: hdrhistogram::Histogram<u64>,
    /// With `--hold-frames`: echoes that came back before the frames completing their hold were
    /// sent (released by the proxy's wall-clock limit).
    released_early: u64,
    /// Per `WINDOW` of the measured span: round trips, and those over `tail_bound`.
    windows: Vec<[u32; 2]>,
}

/// The width of the windows that `tail_windows` counts: short enough to tell a stall of the whole
/// machine (every call late at once, for a few hundred milliseconds) from a cost every message pays.
const WINDOW: Duration = Duration::from_millis(100);

/// A window is in the tail when more than this share of its round trips are over the bound.
const TAIL_SHARE: f64 = 0.01;

impl CallResult {
    fn new(windows: usize) -> Self {
        Self {
            sent: 0,
            received: 0,
            counted: 0,
            errors: 0,
            hist: report::histogram(),
            late: report::histogram(),
            after_hold: report::histogram(),
            released_early: 0,
            windows: vec![[0, 0]; windows],
        }
    }

    fn add(&mut self, r: CallResult) -> anyhow::Result<()> {
        self.sent += r.sent;
        self.received += r.received;
        self.counted += r.counted;
        self.errors += r.errors;
        self.released_early += r.released_early;
        self.hist.add(r.hist)?;
        self.late.add(r.late)?;
        self.after_hold.add(r.after_hold)?;
        for (mine, theirs) in self.windows.iter_mut().zip(&r.windows) {
            mine[0] += theirs[0];
            mine[1] += theirs[1];
        }
        Ok(())
    }

    /// Counts a round trip that completed `since_start` into the measured span, and whether it
    /// was over the bound.
    fn window(&mut self, since_start: Duration, over: bool) {
        let i = (since_start.as_millis() / WINDOW.as_millis()) as usize;
        if let Some(w) = self.windows.get_mut(i) {
            w[0] += 1;
            w[1] += u32::from(over);
        }
    }

    /// `tail_windows` and its companions: how many windows had more than `TAIL_SHARE` of their
    /// round trips over the bound, and what share of all those over it fell in them. Most of the
    /// over-bound round trips in a few windows: the tail came in episodes, all calls at once.
    fn tail_into(&self, bound: Duration, v: &mut Value) {
        let in_tail = |w: &&[u32; 2]| w[0] > 0 && f64::from(w[1]) > TAIL_SHARE * f64::from(w[0]);
        let (mut over, mut over_in_tail, mut tail_windows) = (0u64, 0u64, 0usize);
        for w in &self.windows {
            over += u64::from(w[1]);
            if in_tail(&w) {
                over_in_tail += u64::from(w[1]);
                tail_windows += 1;
            }
        }
        v["tail_bound_us"] = (bound.as_micros() as u64).into();
        v["windows"] = self.windows.len().into();
        v["tail_windows"] = tail_windows.into();
        v["over_bound"] = over.into();
        v["over_bound_in_tail_windows"] =
            (over > 0).then(|| over_in_tail as f64 / over as f64).into();
    }
}

pub async fn run(args: WsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.window > 0 && args.window < RING,
        "--window must be 1..{RING}"
    );
    anyhow::ensure!(
        args.ramp <= args.common.warmup,
        "--ramp must fit in --warmup, so that every call is open when measuring starts"
    );
    let target = Target::parse(&args.url, args.common.ca.as_deref())?;
    let pids = args.common.pids.clone();
    let baseline = ProcSample::read(&pids);
    let mut window = Window::new(args.common.warmup, args.common.duration);
    let paced = args.rate > 0 && !args.idle;
    let shared = Arc::new(Shared {
        target,
        frames: crate::audio::call_frames(),
        span: window.span,
        rate: args.rate,
        window: args.window,
        idle: args.idle,
        drain: args.drain,
        hold_frames: args.hold_frames,
        mark_every: args.mark_every,
        tail_bound: args.tail_bound,
        windows: if paced {
            window
                .span
                .end
                .duration_since(window.span.start)
                .div_duration_f64(WINDOW)
                .ceil() as usize
        } else {
            0
        },
    });
    let opened = Instant::now();
    let calls: Vec<_> = (0..args.calls)
        .map(|i| {
            let shared = shared.clone();
            let at = opened + args.ramp.mul_f64(i as f64 / args.calls.max(1) as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                call(&shared, i).await
            })
        })
        .collect();
    window.begin(&args.common).await;
    // Memory with every call open, halfway through the run.
    tokio::time::sleep(args.common.duration / 2).await;
    let loaded = ProcSample::read(&pids);
    let usage = window.finish(&args.common).await;
    let mut total = CallResult::new(shared.windows);
    for c in calls {
        total.add(c.await?)?;
    }
    let mode = match (args.idle, args.rate) {
        (true, _) => "ws_idle",
        (false, 0) => "ws_flat",
        (false, _) => "ws_paced",
    };
    let rss_per_call = (loaded.rss_kib.saturating_sub(baseline.rss_kib)) as f64 / args.calls as f64;
    let mut v = report::result(
        mode,
        &args.common,
        (total.counted, total.errors),
        &total.hist,
        usage,
        json!({
            "calls": args.calls,
            "rate": args.rate,
            "sent": total.sent,
            "received": total.received,
            "lost": total.sent.saturating_sub(total.received),
            "rss_per_call_kib": if pids.is_empty() { serde_json::Value::Null } else { rss_per_call.into() },
        }),
    );
    if paced {
        v["send_late_p50_us"] = total.late.value_at_quantile(0.50).into();
        v["send_late_p99_us"] = total.late.value_at_quantile(0.99).into();
        total.tail_into(args.tail_bound, &mut v);
    }
    if args.hold_frames > 0 {
        v["hold_frames"] = args.hold_frames.into();
        v["after_hold_p50_us"] = total.after_hold.value_at_quantile(0.50).into();
        v["after_hold_p99_us"] = total.after_hold.value_at_quantile(0.99).into();
        v["released_early"] = total.released_early.into();
    }
    if args.mark_every > 0 {
        v["mark_every"] = args.mark_every.into();
    }
    println!("{v}");
    Ok(())
}

async fn call(shared: &Shared, index: usize) -> CallResult {
    let mut result = CallResult::new(shared.windows);
    if let Err(e) = drive(shared, index, &mut result).await {
        result.errors += 1;
        if result.errors == 1 && index < 3 {
            eprintln!("call {index}: {e:#}");
        }
    }
    result
}

async fn drive(shared: &Shared, index: usize, r: &mut CallResult) -> anyhow::Result<()> {
    let io = shared.target.connect().await?;
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(shared.target.url.as_str(), io, Some(config))
            .await?;
    let (mut sink, mut stream) = ws.split();
    let sid = format!("MZ{index:032x}");
    sink.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await?;
    sink.send(Message::text(start_event(&sid, index))).await?;

    let mut sent_at = vec![Instant::now(); RING];
    let mut seq: u64 = 1;
    let mut in_flight = 0usize;
    let mut sending = !shared.idle;
    let paced = shared.rate > 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / shared.rate.max(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::sleep_until(shared.span.end.into());
    tokio::pin!(end);
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if sending && !paced && in_flight < shared.window {
            while in_flight < shared.window {
                seq += 1;
                sent_at[seq as usize % RING] = Instant::now();
                sink.feed(Message::text(media_event(shared, &sid, seq)))
                    .await?;
                if let Some(mark) = mark_after(shared, &sid, seq) {
                    sink.feed(Message::text(mark)).await?;
                }
                r.sent += 1;
                in_flight += 1;
            }
            sink.flush().await?;
        }
        tokio::select! {
            due = ticker.tick(), if sending && paced => {
                seq += 1;
                let now = Instant::now();
                sent_at[seq as usize % RING] = now;
                if shared.span.contains(now) {
                    let late = now.saturating_duration_since(due.into_std());
                    let _ = r.late.record(late.as_micros() as u64);
                }
                sink.send(Message::text(media_event(shared, &sid, seq))).await?;
                if let Some(mark) = mark_after(shared, &sid, seq) {
                    sink.send(Message::text(mark)).await?;
                }
                r.sent += 1;
                in_flight += 1;
            }
            _ = &mut end, if drain_until.is_none() => {
                sending = false;
                if in_flight == 0 {
                    break;
                }
                drain_until = Some(tokio::time::Instant::now() + shared.drain);
            }
            _ = async { tokio::time::sleep_until(drain_until.expect("guarded")).await }, if drain_until.is_some() => break,
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Some(n) = media_seq(&t) else { continue };
                    let now = Instant::now();
                    r.received += 1;
                    in_flight = in_flight.saturating_sub(1);
                    if shared.span.contains(now) {
                        r.counted += 1;
                        let rtt = now - sent_at[n as usize % RING];
                        let _ = r.hist.record(rtt.as_micros() as u64);
                        r.window(now - shared.span.start, rtt > shared.tail_bound);
                        if shared.hold_frames > 0 {
                            let completing = n + shared.hold_frames;
                            if completing <= seq {
                                let since = now - sent_at[completing as usize % RING];
                                let _ = r.after_hold.record(since.as_micros() as u64);
                            } else {
                                r.released_early += 1;
                            }
                        }
                    }
                    if drain_until.is_some() && in_flight == 0 {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the proxy closed the call"),
            },
        }
    }
    seq += 1;
    sink.send(Message::text(format!(
        r#"{{"event":"stop","sequenceNumber":"{seq}","stop":{{"accountSid":"AC00000000000000000000000000000000","callSid":"CA{index:032x}"}},"streamSid":"{sid}"}}"#
    )))
    .await?;
    let _ = sink.close().await;
    // The close handshake: read until the proxy's reply.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    Ok(())
}

fn start_event(sid: &str, index: usize) -> String {
    format!(
        r#"{{"event":"start","sequenceNumber":"1","start":{{"accountSid":"AC00000000000000000000000000000000","streamSid":"{sid}","callSid":"CA{index:032x}","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{"caller":"+14155550100","note":"card 4111 1111 1111 1111"}}}},"streamSid":"{sid}"}}"#
    )
}

fn media_event(shared: &Shared, sid: &str, seq: u64) -> String {
    let chunk = seq - 1;
    let payload = &shared.frames[chunk as usize % shared.frames.len()];
    format!(
        r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{payload}"}},"streamSid":"{sid}"}}"#,
        chunk * 20
    )
}

/// The `mark` to send after media message `seq`, if one is due (`--mark-every`).
fn mark_after(shared: &Shared, sid: &str, seq: u64) -> Option<String> {
    let chunk = seq - 1;
    (shared.mark_every > 0 && chunk % shared.mark_every == 0).then(|| {
        format!(
            r#"{{"event":"mark","sequenceNumber":"{seq}","streamSid":"{sid}","mark":{{"name":"chunk-{chunk}"}}}}"#
        )
    })
}

/// The sequence number of an echoed `media` message; other events give `None`.
fn media_seq(text: &str) -> Option<u64> {
    if !text.starts_with(r#"{"event":"media""#) {
        return None;
    }
    let rest = text.split_once(r#""sequenceNumber":""#)?.1;
    rest[..rest.find('"')?].parse().ok()
}

//! A scripted Twilio Media Streams call through the proxy, to a WebSocket backend that records what
//! it receives: PII in customParameters arrives redacted, dtmf events as configured, pause/resume
//! marks silence the recording and are not forwarded, a malformed message is dropped and counted while
//! the call goes on, and no DTMF digit survives in the forwarded or recorded audio (multimon-ng).

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use voxguard::ws::protocols::audio::{linear_to_ulaw, ulaw_to_linear};

use crate::support::audio::{multimon, silence, tone};
use crate::support::client::{Ws, ws_connect};
use crate::support::ws_backend::{WsBackend, spawn_ws_backend};
use crate::support::{TestProxy, admin_get, config_text, spawn_proxy_with};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn proxy(media_extra: &str) -> (TestProxy, WsBackend) {
    let backend = spawn_ws_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let route = format!(
        "[[route]]\nname = \"media\"\npath_prefix = \"/media\"\nupstream = \"voice\"\n[route.media]\nprotocol = \"twilio\"\npatterns = [\"ACCT-[0-9]{{6}}\"]\n{media_extra}"
    );
    let text = format!("{}\n{route}", config_text(dir.path(), backend.addr, "", ""));
    (spawn_proxy_with(dir, &text).await, backend)
}

fn media_msg(seq: usize, samples: &[i16]) -> Message {
    let ulaw: Vec<u8> = samples.iter().map(|&s| linear_to_ulaw(s)).collect();
    Message::text(
        json!({
            "event": "media", "sequenceNumber": seq.to_string(), "streamSid": "MZ1",
            "media": {"track": "inbound", "chunk": seq.to_string(), "timestamp": (seq * 20).to_string(), "payload": B64.encode(ulaw)}
        })
        .to_string(),
    )
}

/// A steady, audible, non-DTMF signal (a 440 Hz hum).
fn hum(ms: u32) -> Vec<i16> {
    (0..(8 * ms) as usize)
        .map(|i| (6000.0 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 8000.0).sin()) as i16)
        .collect()
}

async fn send_audio(ws: &mut Ws, seq: &mut usize, samples: &[i16]) {
    for chunk in samples.chunks(160) {
        *seq += 1;
        ws.send(media_msg(*seq, chunk)).await.unwrap();
    }
}

/// Reads from the caller's side until a mark with `name` arrives; returns the mark names seen.
async fn until_mark(ws: &mut Ws, name: &str) -> Vec<String> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = &m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if let Some(n) = v.pointer("/mark/name").and_then(Value::as_str) {
                    seen.push(n.to_string());
                    if n == name {
                        return;
                    }
                }
            }
        }
    })
    .await
    .expect("the mark arrives");
    seen
}

/// Waits until the backend has `n` media frames (the last two may wait in the 40 ms lookahead).
async fn wait_for_frames(backend: &WsBackend, n: usize) {
    for _ in 0..200 {
        let got = backend
            .received
            .lock()
            .unwrap()
            .iter()
            .filter_map(json_of)
            .filter(|v| v["event"] == "media")
            .count();
        if got >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the backend did not get {n} frames");
}

/// The close frame the proxy sends, skipping other messages.
async fn next_close(ws: &mut Ws) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

fn mark(name: &str) -> Message {
    Message::text(json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}}).to_string())
}

fn json_of(m: &Message) -> Option<Value> {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
        _ => None,
    }
}

fn audio_of(events: &[Value]) -> Vec<i16> {
    events
        .iter()
        .filter(|v| v["event"] == "media")
        .flat_map(|v| B64.decode(v["media"]["payload"].as_str().unwrap()).unwrap())
        .map(ulaw_to_linear)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_twilio_call_is_redacted_forwarded_and_recorded() {
    let (proxy, backend) = proxy("").await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    let mut seq = 0;
    ws.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await
    .unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"caller": "+14155550100", "card": "4111 1111 1111 1111", "acct": "ACCT-123456", "lang": "en-US"}}});
    ws.send(Message::text(start.to_string())).await.unwrap();
    send_audio(&mut ws, &mut seq, &hum(200)).await;
    ws.send(Message::text(r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"9","dtmf":{"track":"inbound_track","digit":"7"}}"#)).await.unwrap();
    let mut keyed = silence(40);
    for d in "4321".chars() {
        keyed.extend(tone(d, 80, -10.0, 0.0, 0.0));
        keyed.extend(silence(100));
    }
    send_audio(&mut ws, &mut seq, &keyed).await;
    ws.send(Message::text("{not json")).await.unwrap();

    // The backend pauses the recording (once it has the audio so far: the two directions are not
    // ordered against each other), then sends a mark the caller does see.
    wait_for_frames(&backend, seq - 2).await;
    backend.to_caller.send(mark("voxguard:pause")).unwrap();
    backend.to_caller.send(mark("sync-1")).unwrap();
    assert_eq!(
        until_mark(&mut ws, "sync-1").await,
        ["sync-1"],
        "the pause mark is consumed"
    );
    send_audio(&mut ws, &mut seq, &hum(200)).await;
    wait_for_frames(&backend, seq - 2).await;
    backend.to_caller.send(mark("voxguard:resume")).unwrap();
    backend.to_caller.send(mark("sync-2")).unwrap();
    assert_eq!(until_mark(&mut ws, "sync-2").await, ["sync-2"]);
    send_audio(&mut ws, &mut seq, &hum(200)).await;
    ws.send(Message::text(r#"{"event":"stop","sequenceNumber":"99","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#)).await.unwrap();

    // Everything arrives at the backend (the delay is flushed at the latest on close).
    let mut got: Vec<Value> = Vec::new();
    for _ in 0..100 {
        got = backend
            .received
            .lock()
            .unwrap()
            .iter()
            .filter_map(json_of)
            .collect();
        if got.iter().any(|v| v["event"] == "stop") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start_seen = got
        .iter()
        .find(|v| v["event"] == "start")
        .expect("start forwarded");
    let params = &start_seen["start"]["customParameters"];
    assert_eq!(params["caller"], "[REDACTED:phone]");
    assert_eq!(params["card"], "[REDACTED:card]");
    assert_eq!(params["acct"], "[REDACTED:pattern]");
    assert_eq!(params["lang"], "en-US");
    assert_eq!(start_seen["start"]["callSid"], "CA1", "ids are not PII");
    let dtmf = got.iter().find(|v| v["event"] == "dtmf").unwrap();
    assert_eq!(
        dtmf["dtmf"]["digit"], "7",
        "by default the IVR gets its digits"
    );
    let fwd_pattern: String = got
        .iter()
        .filter(|v| v["event"] == "media")
        .map(|v| {
            let b = B64.decode(v["media"]["payload"].as_str().unwrap()).unwrap();
            if b.iter().all(|&x| x == 0xFF || x == 0x7F) {
                '_'
            } else {
                '#'
            }
        })
        .collect();
    assert_eq!(fwd_pattern.len(), seq);
    assert!(
        fwd_pattern.starts_with(&"#".repeat(10)) && fwd_pattern.ends_with(&"#".repeat(20)),
        "{fwd_pattern}"
    );
    let frames = got.iter().filter(|v| v["event"] == "media").count();
    assert_eq!(
        frames, seq,
        "every media frame forwarded; the malformed message dropped, the call went on"
    );

    let dir = tempfile::tempdir().unwrap();
    let wire: Vec<i16> = keyed
        .iter()
        .map(|&s| ulaw_to_linear(linear_to_ulaw(s)))
        .collect();
    assert_eq!(
        multimon(dir.path(), "keyed", &wire),
        "4321",
        "the caller keyed four digits"
    );
    assert_eq!(
        multimon(dir.path(), "forwarded", &audio_of(&got)),
        "",
        "no digit reached the backend"
    );

    // The recording, decrypted from disk: same redactions, the dtmf digit masked, the paused stretch
    // silent. It is complete once the call has ended.
    let _ = ws.close(None).await;
    let sink = &proxy.app.recordings;
    let mut decrypted = None;
    for _ in 0..100 {
        if let Some(e) = sink
            .keystore
            .list()
            .unwrap()
            .into_iter()
            .find(|e| e.state == "complete")
        {
            decrypted = Some(
                voxguard::recording::read::decrypt(&e.path, &sink.keystore, &sink.ring.load())
                    .unwrap(),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = decrypted.expect("the recording completes");
    assert!(
        matches!(
            rec.integrity,
            voxguard::recording::format::Integrity::Complete { .. }
        ),
        "{}",
        rec.integrity
    );
    let events: Vec<Value> = rec
        .events_jsonl()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .collect();
    let rec_start = events.iter().find(|v| v["event"] == "start").unwrap();
    assert_eq!(
        rec_start["start"]["customParameters"]["card"],
        "[REDACTED:card]"
    );
    let marks: Vec<&str> = events
        .iter()
        .filter_map(|v| v.pointer("/mark/name")?.as_str())
        .collect();
    assert_eq!(
        marks,
        ["voxguard:pause", "sync-1", "voxguard:resume", "sync-2"],
        "pause/resume are on the timeline"
    );
    let rec_dtmf = events.iter().find(|v| v["event"] == "dtmf").unwrap();
    assert_eq!(
        rec_dtmf["dtmf"]["digit"], "X",
        "always masked in the recording"
    );
    let rec_audio: Vec<voxguard::ws::protocols::Audio> = rec
        .records
        .iter()
        .filter_map(|r| match &r.body {
            voxguard::recording::format::RecordBody::Audio(b) => {
                Some(voxguard::ws::protocols::Audio::Ulaw(b.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(rec_audio.len(), seq);
    let samples: Vec<i16> = rec_audio.iter().flat_map(|a| a.linear()).collect();
    assert_eq!(
        multimon(dir.path(), "recorded", &samples),
        "",
        "no digit in the recording"
    );
    let hum_frames = 10;
    let keyed_frames = keyed.len().div_ceil(160);
    let paused = &rec_audio[hum_frames + keyed_frames..hum_frames + keyed_frames + 10];
    let pattern: String = rec_audio
        .iter()
        .map(|a| if a.is_silent() { '_' } else { '#' })
        .collect();
    assert!(
        paused.iter().all(|a| a.is_silent()),
        "silent while paused: {pattern}"
    );
    assert!(
        rec_audio[..hum_frames].iter().all(|a| !a.is_silent()),
        "speech before is kept"
    );
    assert!(
        rec_audio[rec_audio.len() - 10..]
            .iter()
            .all(|a| !a.is_silent()),
        "and after resume"
    );

    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    for line in [
        r#"voxguard_media_malformed_total{reason="json",route="media"} 1"#,
        r#"voxguard_media_redactions_total{kind="phone",route="media"} 1"#,
        r#"voxguard_media_redactions_total{kind="card",route="media"} 1"#,
        r#"voxguard_media_redactions_total{kind="dtmf_event",route="media"} 1"#,
        r#"voxguard_media_redactions_total{kind="dtmf_tone",route="media"} 4"#,
        r#"voxguard_media_redactions_total{kind="paused_frame",route="media"} 10"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert!(
        !metrics.contains("CA1") && !metrics.contains("4155550100"),
        "no ids or numbers in metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_malformed_close_ends_the_call_with_1008_or_1007() {
    let (proxy, _backend) = proxy("on_malformed = \"close\"\n").await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), next_close(&mut ws))
        .await
        .unwrap();
    assert_eq!(u16::from(close.expect("a close frame").code), 1008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_caps_concurrent_calls_per_route() {
    let (proxy, _backend) = proxy("max_sessions = 1\n").await;
    let (_first, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    match ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_held_for_the_lookahead_go_out_when_the_stream_goes_quiet() {
    let (proxy, backend) = proxy("").await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    let mut seq = 0;
    send_audio(&mut ws, &mut seq, &hum(100)).await;
    // No more audio: the last frames must not wait for samples that never come.
    wait_for_frames(&backend, 5).await;
}

/// The backend's audio stops while the caller's keeps flowing: the caller's frames release one
/// another, but no later audio comes to release the backend's last ones. They must go out once
/// they have waited their longest (each message through the session looks for such frames, and the
/// session's timer does when no message comes), not wait for the caller to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_frames_of_a_quiet_direction_go_out_while_the_other_flows() {
    let (proxy, backend) = proxy("").await;
    let (ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    let (mut to_proxy, mut from_proxy) = ws.split();
    // Two seconds of the caller's audio, paced as a call sends it.
    let caller = tokio::spawn(async move {
        let audio = hum(2000);
        for (seq, chunk) in audio.chunks(160).enumerate() {
            to_proxy.send(media_msg(seq + 1, chunk)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        to_proxy
    });
    wait_for_frames(&backend, 3).await;
    // The backend says three frames' worth, then nothing.
    for (seq, chunk) in hum(60).chunks(160).enumerate() {
        backend.to_caller.send(media_msg(seq + 1, chunk)).unwrap();
    }
    let mut got = 0;
    tokio::time::timeout(Duration::from_secs(5), async {
        while got < 3 {
            if let Some(Ok(Message::Text(t))) = from_proxy.next().await
                && t.as_str().contains("\"media\"")
            {
                got += 1;
            }
        }
    })
    .await
    .expect("the backend's frames reach the caller");
    assert!(
        !caller.is_finished(),
        "they arrived while the caller's audio still flowed, not when it stopped"
    );
    caller.abort();
}

/// One timer serves both of a session's limits: a call that keeps talking through several idle
/// timeouts is not closed as idle, and is closed at its maximum duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_talking_call_outlives_its_idle_timeout_and_ends_at_max_duration() {
    let backend = spawn_ws_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let route = "[[route]]\nname = \"media\"\npath_prefix = \"/media\"\nupstream = \"voice\"\nwebsocket_idle_timeout = \"200ms\"\n[route.media]\nprotocol = \"twilio\"\nmax_duration = \"1s\"\n";
    let text = format!("{}\n{route}", config_text(dir.path(), backend.addr, "", ""));
    let proxy = spawn_proxy_with(dir, &text).await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut seq = 0;
    let close = loop {
        seq += 1;
        if ws.send(media_msg(seq, &hum(20))).await.is_err() {
            break next_close(&mut ws).await;
        }
        // Read what the backend echoed for ~50 ms, then send again: never 200 ms quiet.
        let until = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut closed = None;
        while let Ok(next) = tokio::time::timeout_at(until, ws.next()).await {
            match next {
                Some(Ok(Message::Close(frame))) => {
                    closed = Some(frame);
                    break;
                }
                Some(Ok(_)) => {}
                _ => {
                    closed = Some(None);
                    break;
                }
            }
        }
        if let Some(frame) = closed {
            break frame;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never closed");
    };
    let frame = close.expect("a close frame");
    assert_eq!(frame.reason.as_str(), "maximum call duration");
    assert_eq!(u16::from(frame.code), 1001);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "not before the maximum duration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_max_duration_is_closed_with_1001() {
    let (proxy, _backend) = proxy("max_duration = \"300ms\"\n").await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), next_close(&mut ws))
        .await
        .expect("closed by the proxy");
    let frame = close.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "maximum call duration");
}

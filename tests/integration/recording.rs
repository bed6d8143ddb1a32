//! Encrypted recordings end to end: calls through the proxy are written encrypted, read back with the
//! real CLI (`recording verify|decrypt|erase`, `keys rewrap`), and survive KEK rotation; erased subjects
//! stay unreadable in backups; retention deletes; consent gates; a full disk never breaks the call;
//! `kill -9` mid-call leaves a truncated file that decrypts up to the last flush.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use voxguard::keys::KeyBytes;

use crate::support::client::ws_connect;
use crate::support::ws_backend::spawn_ws_backend;
use crate::support::{TestProxy, admin_get, bin, config_text, spawn_proxy_env};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// A μ-law pattern no encryption would leave in place.
const PATTERN: [u8; 8] = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0x0F];

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    text: String,
}

/// A config with a media route recording into `<dir>/rec`, KEKs from files `<dir>/<id>.kek`.
fn setup(backend: std::net::SocketAddr, keks: &[&str], active: &str, media_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = format!("[keys]\nactive = \"{active}\"\n");
    for id in keks {
        let path = dir.path().join(format!("{id}.kek"));
        if !path.exists() {
            std::fs::write(&path, &*KeyBytes::random().to_base64()).unwrap();
        }
        keys.push_str(&format!(
            "[[keys.kek]]\nid = \"{id}\"\nfile = {:?}\n",
            path.display().to_string()
        ));
    }
    let text = rewrite(dir.path(), backend, &keys, media_extra);
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, &text).unwrap();
    Setup { dir, config, text }
}

fn rewrite(dir: &Path, backend: std::net::SocketAddr, keys: &str, media_extra: &str) -> String {
    format!(
        "{}\n[[route]]\nname = \"media\"\npath_prefix = \"/media\"\nupstream = \"voice\"\n[route.media]\nprotocol = \"twilio\"\nsubject_param = \"subject_id\"\n{media_extra}\n[recording]\ndir = {:?}\nflush_interval = \"100ms\"\nsubject_key_file = {:?}\n{keys}",
        config_text(dir, backend, "", ""),
        dir.join("rec").display().to_string(),
        subject_key(dir).display().to_string(),
    )
}

fn subject_key(dir: &Path) -> PathBuf {
    let p = dir.join("subject.key");
    if !p.exists() {
        std::fs::write(&p, &*KeyBytes::random().to_base64()).unwrap();
    }
    p
}

fn start_msg(params: serde_json::Value) -> Message {
    Message::text(
        json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
            "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params}})
        .to_string(),
    )
}

fn media(seq: usize) -> Message {
    let payload: Vec<u8> = PATTERN.iter().copied().cycle().take(160).collect();
    Message::text(
        json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": "MZ1",
            "media": {"track": "inbound", "chunk": seq.to_string(), "timestamp": (seq * 20).to_string(), "payload": B64.encode(payload)}})
        .to_string(),
    )
}

/// One call of `frames` media frames with `params`; waits until its recording is complete (or, when
/// `expect_recording` is false, gives the writer time to decide).
async fn call(proxy: &TestProxy, params: serde_json::Value, frames: usize) {
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    ws.send(start_msg(params)).await.unwrap();
    for i in 0..frames {
        ws.send(media(i + 2)).await.unwrap();
    }
    ws.send(Message::text(
        r#"{"event":"stop","sequenceNumber":"999","streamSid":"MZ1"}"#,
    ))
    .await
    .unwrap();
    let _ = ws.close(None).await;
}

async fn complete_recordings(
    proxy: &TestProxy,
    n: usize,
) -> Vec<voxguard::recording::keystore::Entry> {
    for _ in 0..100 {
        let done: Vec<_> = proxy
            .app
            .recordings
            .keystore
            .list()
            .unwrap()
            .into_iter()
            .filter(|e| e.state == "complete")
            .collect();
        if done.len() >= n {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} complete recording(s) expected");
}

fn cli(args: &[&str], config: &Path) -> (i32, String, String) {
    crate::support::cli(args, config)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_recorded_encrypted_and_decrypts_to_a_two_channel_wav() {
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "");
    let proxy = spawn_proxy_env(tempfile::tempdir().unwrap(), &s.text, &|_| None).await;
    call(
        &proxy,
        json!({"subject_id": "+14155550100", "note": "call me at +14155550100"}),
        50,
    )
    .await;
    let e = &complete_recordings(&proxy, 1).await[0];
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&e.path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(s.dir.path().join("rec"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // No plaintext on disk: not the audio, not the subject, not the parameters.
    let file = std::fs::read(&e.path).unwrap();
    let store = std::fs::read(s.dir.path().join("rec/keystore.sqlite")).unwrap();
    for (name, bytes) in [("recording", &file), ("keystore", &store)] {
        assert!(
            !contains(bytes, &PATTERN),
            "{name} holds the audio in clear"
        );
        assert!(!contains(bytes, b"4155550100"), "{name} holds the number");
        assert!(
            !contains(bytes, b"customParameters"),
            "{name} holds the events in clear"
        );
    }

    let path = e.path.to_str().unwrap();
    let (code, verdict, _) = cli(&["recording", "verify", path], &s.config);
    assert_eq!(code, 0);
    assert!(verdict.starts_with("complete ("), "{verdict}");
    let wav = s.dir.path().join("call.wav");
    let events = s.dir.path().join("call.jsonl");
    let (code, _, err) = cli(
        &[
            "recording",
            "decrypt",
            path,
            "--out",
            wav.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
        &s.config,
    );
    assert_eq!(code, 0, "{err}");
    let info = Command::new("sox").arg("--i").arg(&wav).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Channels       : 2"), "{info}");
    assert!(info.contains("Sample Rate    : 8000"), "{info}");
    let samples: usize = info
        .split(" = ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a duration line");
    // 50 frames of 160 samples, placed at their arrival time after the call's start.
    assert!((8000..8800).contains(&samples), "{info}");
    let timeline = std::fs::read_to_string(&events).unwrap();
    assert!(
        timeline.contains("[REDACTED:phone]") && !timeline.contains("4155550100"),
        "{timeline}"
    );
    assert!(timeline.contains("\"stop\""), "{timeline}");
    // Tampering, as `verify` reports it.
    let header_len = voxguard::recording::format::Header::decode(&file)
        .unwrap()
        .1;
    let cases: [(&str, Vec<u8>, i32, &str); 3] = [
        (
            "header (created time)",
            flip(&file, 30),
            1,
            "chunk 0 does not authenticate",
        ),
        (
            "chunk",
            flip(&file, header_len + 10),
            1,
            "chunk 0 does not authenticate",
        ),
        (
            "cut",
            file[..file.len() - 3].to_vec(),
            2,
            "truncated after chunk",
        ),
    ];
    for (name, bytes, expected, says) in cases {
        let copy = s.dir.path().join(format!("{name}.vxr"));
        std::fs::write(&copy, bytes).unwrap();
        let (code, msg) = verify(&copy, &s.config);
        assert_eq!(code, expected, "{name}: {msg}");
        assert!(msg.contains(says), "{name}: {msg}");
    }
    let (code, list, _) = cli(&["recording", "list"], &s.config);
    assert_eq!(code, 0);
    assert!(
        list.contains(&e.id) && list.contains("complete") && list.contains("k1"),
        "{list}"
    );
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    b
}

fn verify(path: &Path, config: &Path) -> (i32, String) {
    let (code, out, err) = cli(&["recording", "verify", path.to_str().unwrap()], config);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_recordings_decrypt_after_rotation_and_after_rewrap_with_the_old_kek_gone() {
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "");
    let proxy = spawn_proxy_env(tempfile::tempdir().unwrap(), &s.text, &|_| None).await;
    call(&proxy, json!({}), 5).await;
    let first = complete_recordings(&proxy, 1).await.remove(0);
    assert_eq!(first.wrapped.kek_id, "k1");

    // k2 becomes active on reload, no restart.
    let both = setup_in(&s, backend.addr, &["k1", "k2"], "k2", "both.toml");
    proxy
        .app
        .reload(&voxguard::Config::load(&both, &|_| None).unwrap())
        .unwrap();
    call(&proxy, json!({}), 5).await;
    let all = complete_recordings(&proxy, 2).await;
    let second = all.iter().find(|e| e.id != first.id).unwrap();
    assert_eq!(
        second.wrapped.kek_id, "k2",
        "new recordings use the new KEK"
    );
    assert_eq!(
        verify(&first.path, &both).0,
        0,
        "the old one still decrypts"
    );

    // Without k1 the old recording fails with a clear error, not garbage...
    let only_k2 = setup_in(&s, backend.addr, &["k2"], "k2", "k2.toml");
    let (code, msg) = verify(&first.path, &only_k2);
    assert_eq!(code, 64);
    assert!(msg.contains("KEK \"k1\" is not configured"), "{msg}");
    // ...until `keys rewrap` moves it to k2; then k1 can go.
    let (code, out, err) = cli(&["keys", "rewrap"], &both);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rewrapped 1 recording(s) under KEK \"k2\""),
        "{out}"
    );
    assert_eq!(verify(&first.path, &only_k2).0, 0);
    assert_eq!(verify(&second.path, &only_k2).0, 0);
}

/// Another config file beside `s`'s, with other KEKs.
fn setup_in(
    s: &Setup,
    backend: std::net::SocketAddr,
    keks: &[&str],
    active: &str,
    name: &str,
) -> PathBuf {
    let mut keys = format!("[keys]\nactive = \"{active}\"\n");
    for id in keks {
        let path = s.dir.path().join(format!("{id}.kek"));
        if !path.exists() {
            std::fs::write(&path, &*KeyBytes::random().to_base64()).unwrap();
        }
        keys.push_str(&format!(
            "[[keys.kek]]\nid = \"{id}\"\nfile = {:?}\n",
            path.display().to_string()
        ));
    }
    let path = s.dir.path().join(name);
    std::fs::write(&path, rewrite(s.dir.path(), backend, &keys, "")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_subject_makes_even_backup_copies_unreadable() {
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "");
    let proxy = spawn_proxy_env(tempfile::tempdir().unwrap(), &s.text, &|_| None).await;
    call(&proxy, json!({"subject_id": "alice@example.com"}), 5).await;
    call(&proxy, json!({"subject_id": "bob@example.com"}), 5).await;
    let recs = complete_recordings(&proxy, 2).await;
    let backup = s.dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    let mut copies = Vec::new();
    for e in &recs {
        let copy = backup.join(e.path.file_name().unwrap());
        std::fs::copy(&e.path, &copy).unwrap();
        copies.push(copy);
    }
    let (code, out, _) = cli(
        &["recording", "erase", "--subject", "alice@example.com"],
        &s.config,
    );
    assert_eq!((code, out.as_str()), (0, "erased 1 recording(s)\n"));
    let verdicts: Vec<(i32, String)> = copies.iter().map(|c| verify(c, &s.config)).collect();
    let erased = verdicts
        .iter()
        .filter(|(code, msg)| *code == 64 && msg.contains("not in the keystore"))
        .count();
    let intact = verdicts.iter().filter(|(code, _)| *code == 0).count();
    assert_eq!((erased, intact), (1, 1), "{verdicts:?}");
    assert!(
        !recs.iter().all(|e| e.path.exists()),
        "the erased subject's file is gone too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_recordings_and_keys_when_they_expire() {
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "retention = \"1h\"\n");
    let proxy = spawn_proxy_env(tempfile::tempdir().unwrap(), &s.text, &|_| None).await;
    call(&proxy, json!({}), 5).await;
    let e = complete_recordings(&proxy, 1).await.remove(0);
    assert_eq!(
        e.expires_ms - e.created_ms,
        3_600_000,
        "the route's retention"
    );
    let ks = &proxy.app.recordings.keystore;
    assert_eq!(
        voxguard::recording::sweep_expired(ks, e.created_ms + 3_599_000),
        0,
        "not yet"
    );
    assert_eq!(
        voxguard::recording::sweep_expired(ks, e.created_ms + 3_600_000),
        1
    );
    assert!(ks.list().unwrap().is_empty() && !e.path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_consent_nothing_is_recorded_and_that_is_counted() {
    let backend = spawn_ws_backend().await;
    let s = setup(
        backend.addr,
        &["k1"],
        "k1",
        "consent_param = \"recording_consent\"\n",
    );
    let proxy = spawn_proxy_env(tempfile::tempdir().unwrap(), &s.text, &|_| None).await;
    call(&proxy, json!({"recording_consent": "false"}), 5).await;
    call(&proxy, json!({}), 5).await;
    call(&proxy, json!({"recording_consent": "true"}), 5).await;
    complete_recordings(&proxy, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        proxy.app.recordings.keystore.list().unwrap().len(),
        1,
        "only the consented call"
    );
    let (_, metrics) = crate::support::admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_recordings_not_consented_total{route="media"} 2"#),
        "{metrics}"
    );
    let files = std::fs::read_dir(s.dir.path().join("rec"))
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "vxr")
        })
        .count();
    assert_eq!(files, 1);
}

/// A recorded call that sends `frames` media frames 20 ms apart and then waits `then`, when the
/// proxy is killed (`kill -9`). Its one recording must still be open (`recording`); it is decrypted
/// with the real CLI. Returns the setup, the recording's keystore entry and the two-channel samples
/// recovered.
async fn killed_after(
    frames: usize,
    then: Duration,
) -> (Setup, voxguard::recording::keystore::Entry, u64) {
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "");
    let mut proxy = crate::lifecycle::start(&s.config, &s.dir.path().join("data")).await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/media", &[])
        .await
        .unwrap();
    ws.send(start_msg(json!({}))).await.unwrap();
    for i in 0..frames {
        ws.send(media(i + 2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(then).await;
    proxy.child.start_kill().unwrap();
    let _ = proxy.child.wait().await;
    let ks =
        voxguard::recording::keystore::Keystore::open(&s.dir.path().join("rec/keystore.sqlite"))
            .unwrap();
    let e = ks.list().unwrap().remove(0);
    assert_eq!(e.state, "recording", "it never finished");
    let wav = s.dir.path().join("killed.wav");
    let (code, _, err) = cli(
        &[
            "recording",
            "decrypt",
            e.path.to_str().unwrap(),
            "--out",
            wav.to_str().unwrap(),
        ],
        &s.config,
    );
    assert_eq!(code, 0, "{err}");
    let samples = (std::fs::metadata(&wav).unwrap().len() - 44) / 4;
    (s, e, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_call_leaves_a_truncated_file_that_decrypts_up_to_the_last_flush() {
    // At least one 100 ms flush after the last frame.
    let (s, e, samples) = killed_after(30, Duration::from_millis(300)).await;
    let (code, msg) = verify(&e.path, &s.config);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.starts_with("truncated after chunk "), "{msg}");
    assert!(
        samples >= 30 * 160,
        "every frame flushed before the kill is recovered: {samples}"
    );
}

/// `kill -9` while audio still flows: no quiet gap hands the session's frames over, so only the
/// `flush_interval` rule can have written them. Everything but the last `flush_interval` (plus the
/// tone delay and the write) must be on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_audio_flows_loses_no_more_than_the_flush_interval() {
    // 60 frames (1.2 s, one way: ~10 KiB of records, short of a chunk's 14 KiB), then 25 more
    // (500 ms: the 100 ms flush interval, the 40 ms tone delay and room for a slow write) before
    // the kill, without a pause.
    let (counted, more) = (60, 25);
    let (_s, _, samples) = killed_after(counted + more, Duration::ZERO).await;
    assert!(
        samples >= counted as u64 * 160,
        "the frames sent more than a flush interval before the kill are recovered: {samples}"
    );
}

/// SIGTERM mid-call: the drain closes the call with 1001 at the end of the grace period, and the
/// recording must then be finished (last chunk flagged and synced, entry `complete`) before the
/// process exits, as after any call's end. Many calls end at once in a drain, so their writers wait
/// in the recordings' lanes; the exit must wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_every_open_recording_before_exit() {
    const CALLS: usize = 40;
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "");
    let mut proxy = crate::lifecycle::start(&s.config, &s.dir.path().join("data")).await;
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/media", &[])
            .await
            .unwrap();
        ws.send(start_msg(json!({}))).await.unwrap();
        for i in 0..10 {
            ws.send(media(i + 2)).await.unwrap();
        }
        calls.push(ws);
    }
    let keystore = s.dir.path().join("rec/keystore.sqlite");
    let entries = || {
        voxguard::recording::keystore::Keystore::open(&keystore)
            .unwrap()
            .list()
            .unwrap()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while entries().len() < CALLS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every call is being recorded");

    assert_eq!(crate::lifecycle::terminate(&mut proxy).await, Some(0));
    let entries = entries();
    assert_eq!(entries.len(), CALLS);
    for e in &entries {
        assert_eq!(e.state, "complete", "finished before the exit: {}", e.id);
        let (code, msg) = verify(&e.path, &s.config);
        assert_eq!(code, 0, "{msg}");
    }
    drop(calls);
}

/// Accepts `room` bytes, then fails as a full disk does.
struct FullDisk {
    room: usize,
}

impl std::io::Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.room {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.room -= buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type SinkSession = (
    voxguard::ws::intercept::MediaSession,
    std::sync::Arc<voxguard::recording::writer::FileSink>,
    voxguard::metrics::Metrics,
    tempfile::TempDir,
);

/// A file sink on a disk with room for the header only, and a media session recording into it.
fn full_disk_session(on_error: &str) -> SinkSession {
    session_writing_to(
        std::sync::Arc::new(|_| {
            Ok(Box::new(FullDisk { room: 100 }) as Box<dyn std::io::Write + Send>)
        }),
        &format!("on_error = \"{on_error}\""),
    )
}

/// A file sink whose files `open` makes, with `[recording]` settings `extra` and a 10 ms flush
/// interval, and a media session recording into it.
fn session_writing_to(open: voxguard::recording::writer::Opener, extra: &str) -> SinkSession {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\ndata_dir = {:?}\n[recording]\ndir = {:?}\n{extra}\nflush_interval = \"10ms\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\nname = \"media\"\nupstream = \"a\"\n[route.media]\nprotocol = \"twilio\"\n",
        dir.path().join("data").display().to_string(),
        dir.path().join("rec").display().to_string()
    );
    let config = voxguard::Config::parse(&text, "t", &|_| None).unwrap();
    let metrics = voxguard::metrics::Metrics::new();
    let mut sink = voxguard::recording::writer::FileSink::new(
        config.recording.clone(),
        voxguard::recording::key_ring(&config).unwrap(),
        voxguard::recording::subject_key(&config).unwrap(),
        metrics.recording.clone(),
    )
    .unwrap();
    std::sync::Arc::get_mut(&mut sink).unwrap().open = open;
    let as_sink: std::sync::Arc<dyn voxguard::ws::record::RecordingSink> =
        std::sync::Arc::new(sink.clone());
    let route = voxguard::ws::intercept::MediaRoute::from_config(
        config.routes[0].media.as_ref().unwrap(),
        &as_sink,
    )
    .unwrap();
    let session =
        voxguard::ws::intercept::MediaSession::start(&route, "media".into(), metrics.media.clone());
    (session, sink, metrics, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_breaks_the_call() {
    use voxguard::ws::protocols::Direction;
    let (mut session, sink, metrics, _dir) = full_disk_session("continue");
    let mut forwarded = 0;
    forwarded += session
        .handle(Direction::ToBackend, start_msg(json!({})))
        .unwrap()
        .len();
    for i in 0..100 {
        forwarded += session
            .handle(Direction::ToBackend, media(i + 2))
            .unwrap()
            .len();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await; // let a flush hit the full disk
        }
    }
    forwarded += session.finish().len();
    assert_eq!(forwarded, 101, "every message still reaches the backend");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metrics.recording.failed.get(),
        1,
        "the failure is counted once"
    );
    let entries = sink.keystore.list().unwrap();
    assert_eq!(entries[0].state, "failed");
    assert!(
        !session.recorder_failed.is_cancelled(),
        "on_error = continue: the call goes on"
    );

    let (mut closing, _, _, _dir) = full_disk_session("close");
    closing
        .handle(Direction::ToBackend, start_msg(json!({})))
        .unwrap();
    for i in 0..20 {
        closing.handle(Direction::ToBackend, media(i + 2)).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), closing.recorder_failed.cancelled())
        .await
        .expect("on_error = close asks the session to end the call");
}

/// Which of a file's calls `Held` holds: its first fsync, or its first write after the header
/// (the first chunk's).
#[derive(Clone, Copy, PartialEq)]
enum HoldOn {
    Sync,
    ChunkWrite,
}

/// A file whose held call says when it starts, then waits (up to 5 s) for the test to let it
/// finish: a slow disk. `released` says whether the test did, which it can only do if the call left
/// the runtime's thread free.
struct Held {
    on: HoldOn,
    writes: usize,
    held_once: bool,
    started: std::sync::mpsc::Sender<()>,
    release: std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    released: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Held {
    fn hold(&mut self) {
        if self.held_once {
            return; // one call is held; the rest go straight through
        }
        self.held_once = true;
        let _ = self.started.send(());
        let waited = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(5));
        if !matches!(waited, Err(std::sync::mpsc::RecvTimeoutError::Timeout)) {
            self.released
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl std::io::Write for Held {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        if self.on == HoldOn::ChunkWrite && self.writes == 2 {
            self.hold(); // the header was the first write
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.on == HoldOn::Sync {
            self.hold();
        }
        Ok(())
    }
}

/// One thread for the calls and the recording writers, as a proxy with one worker thread has: an
/// fsync held by a slow disk must leave it free. (A current_thread runtime also refuses
/// `block_in_place`, the way this was done before.)
#[tokio::test(flavor = "current_thread")]
async fn a_slow_fsync_never_stalls_the_thread_the_calls_run_on() {
    held_disk_never_stalls_the_call(HoldOn::Sync, "fsync = \"chunk\"").await;
}

/// The same for a chunk's write (a disk throttling writers, a slow volume), with the default fsync.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_write_never_stalls_the_thread_the_calls_run_on() {
    held_disk_never_stalls_the_call(HoldOn::ChunkWrite, "").await;
}

async fn held_disk_never_stalls_the_call(on: HoldOn, recording_extra: &str) {
    use std::sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering, mpsc};
    use voxguard::ws::protocols::Direction;
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let released = Arc::new(AtomicBool::new(false));
    let file = Held {
        on,
        writes: 0,
        held_once: false,
        started: started_tx,
        release: release_rx,
        released: released.clone(),
    };
    let file = Mutex::new(Some(file));
    let (mut session, sink, metrics, _dir) = session_writing_to(
        Arc::new(move |_| {
            let file = file.lock().unwrap().take().expect("one recording");
            Ok(Box::new(file) as Box<dyn std::io::Write + Send>)
        }),
        recording_extra,
    );
    let mut forwarded = session
        .handle(Direction::ToBackend, start_msg(json!({})))
        .unwrap()
        .len();
    // The next media frame in; how many messages came out for the backend.
    let send_next = |session: &mut voxguard::ws::intercept::MediaSession, seq: &mut usize| {
        let out = session
            .handle(Direction::ToBackend, media(*seq))
            .unwrap()
            .len();
        *seq += 1;
        out
    };
    let mut seq = 2;
    tokio::time::timeout(Duration::from_secs(10), async {
        while started.try_recv().is_err() {
            forwarded += send_next(&mut session, &mut seq);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a chunk is sealed and the held call starts");
    // The disk holds the call. This thread still runs the call and its timers:
    for _ in 0..50 {
        forwarded += send_next(&mut session, &mut seq);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).unwrap();
    drop(release); // later calls go straight through
    forwarded += session.finish().len();
    assert_eq!(forwarded, seq - 1, "every message reaches the backend");
    drop(session); // the call ends
    tokio::time::timeout(Duration::from_secs(10), async {
        while sink.keystore.list().unwrap()[0].state != "complete" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the recording completes once the disk catches up");
    assert!(
        released.load(Ordering::SeqCst),
        "the test released the held call while it was held"
    );
    assert_eq!(metrics.recording.failed.get(), 0);
}

#[test]
fn keygen_prints_an_id_and_a_usable_kek() {
    let out = Command::new(bin())
        .args(["keygen", "--id", "k7"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id = k7"));
    let key = lines.next().unwrap().strip_prefix("key = ").unwrap();
    assert!(KeyBytes::from_base64(key).is_ok(), "base64 of 32 bytes");
    let again = Command::new(bin()).args(["keygen"]).output().unwrap();
    assert_ne!(
        String::from_utf8(again.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
        format!("key = {key}"),
        "fresh each time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recordings_dir_on_a_full_256k_tmpfs_never_breaks_the_call() {
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "");
    let _disk = crate::support::Tmpfs::mount(&s.dir.path().join("rec"), "256k");
    let mut proxy = crate::lifecycle::start(&s.config, &s.dir.path().join("data")).await;
    let media_received = || {
        backend
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.to_text().is_ok_and(|t| t.contains("\"event\":\"media\"")))
            .count()
    };
    let wait_for = |n: usize| async move {
        for _ in 0..200 {
            if media_received() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        media_received()
    };
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/media", &[])
        .await
        .unwrap();
    // 3000 frames is ~500 KB of recorded audio: the disk is full halfway in.
    let frames = 3000;
    ws.send(start_msg(json!({}))).await.unwrap();
    for i in 0..frames {
        ws.send(media(i + 2)).await.unwrap();
    }
    assert_eq!(
        wait_for(frames).await,
        frames,
        "every frame still reaches the backend"
    );
    let _ = ws.close(None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_recordings_failed_total 1"),
        "the full disk is counted: {metrics}"
    );
    // The proxy still takes calls and answers health checks.
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/media", &[])
        .await
        .unwrap();
    ws.send(media(1)).await.unwrap();
    assert_eq!(
        wait_for(frames + 1).await,
        frames + 1,
        "a new call goes through"
    );
    assert_eq!(admin_get(proxy.admin, "/readyz").await.0, 200);
    assert_eq!(crate::lifecycle::terminate(&mut proxy).await, Some(0));
}

/// Threads of the process `pid` (every tokio blocking-pool thread it ever started and has not yet
/// retired: an idle one lingers for 10 s).
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// A burst of recorded calls starting and ending together (a campaign dialling out, a drain)
/// must not start a thread per recording. Each call's keystore entry, chunk writes and final sync
/// wait for a place in the recordings' lanes, on a capped pool (`recording::lane`); before, the
/// blocking pool started a thread for each job that found none idle, hundreds of them, mostly
/// waiting on SQLite or the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_recorded_calls_runs_on_a_few_threads() {
    use voxguard::recording::lane::RUNTIME_BLOCKING_THREADS;
    const CALLS: usize = 200;
    let backend = spawn_ws_backend().await;
    let s = setup(backend.addr, &["k1"], "k1", "");
    let proxy = crate::lifecycle::start(&s.config, &s.dir.path().join("data")).await;
    let pid = proxy.child.id().unwrap();
    let before = threads_of(pid);

    let (tls, ca) = (proxy.tls, proxy.ca.clone());
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let ca = ca.clone();
            tokio::spawn(async move {
                let (mut ws, _) = ws_connect(tls, &ca, "/media", &[]).await.unwrap();
                ws.send(start_msg(json!({}))).await.unwrap();
                for i in 0..5 {
                    ws.send(media(i + 2)).await.unwrap();
                }
                ws
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in calls {
        open.push(c.await.unwrap());
    }
    // Every call ends at once: a last chunk, synced, and a keystore update each.
    futures_util::future::join_all(open.iter_mut().map(|ws| ws.close(None))).await;

    let keystore = s.dir.path().join("rec/keystore.sqlite");
    let complete = || -> usize {
        let db = rusqlite::Connection::open(&keystore).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.query_row(
            "SELECT count(*) FROM recordings WHERE state = 'complete'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while complete() < CALLS {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every call's recording completes");

    let started = threads_of(pid).saturating_sub(before);
    assert!(
        started <= RUNTIME_BLOCKING_THREADS,
        "{started} threads started for {CALLS} recorded calls (cap {RUNTIME_BLOCKING_THREADS})"
    );
}

//! The admin API: tokens by hash and role (401 without a valid token, 403 with the wrong role, 200 with
//! the right one, each audited), recording export as WAV, subject erasure, bans, and reload through the
//! API against the real binary.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use voxguard::admission::signature::encoding::{sha256, to_hex};

use crate::support::client::{h1_over, ws_connect};
use crate::support::ws_backend::spawn_ws_backend;
use crate::support::{TestProxy, config_text, spawn_proxy_with};

fn tokens() -> String {
    [
        ("root", "admin", "admin-token"),
        ("ops", "operator", "ops-token"),
        ("auditor", "auditor", "audit-token"),
    ]
    .iter()
    .map(|(name, role, token)| {
        format!(
            "[[admin.token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            to_hex(&sha256(token.as_bytes()))
        )
    })
    .collect()
}

async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, http::HeaderMap, Bytes) {
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut send = h1_over(tcp).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let res = send.send_request(req.body(body).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes)
}

fn json_of(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap()
}

/// A media call on `/media` for `subject`: start, ten frames, stop, close.
async fn recorded_call(proxy: &TestProxy, sid: &str, subject: &str) {
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    ws.send(Message::text(json!({"event": "start", "streamSid": sid, "start": {"streamSid": sid, "customParameters": {"subject_id": subject}}}).to_string())).await.unwrap();
    for i in 0..10 {
        let payload = voxguard::admission::signature::encoding::to_base64(&[0x10u8; 160]);
        ws.send(Message::text(json!({"event": "media", "streamSid": sid, "media": {"track": "inbound", "timestamp": (i * 20).to_string(), "payload": payload}}).to_string())).await.unwrap();
    }
    ws.send(Message::text(
        json!({"event": "stop", "streamSid": sid}).to_string(),
    ))
    .await
    .unwrap();
    let _ = ws.close(None).await;
}

/// The ids of the recordings listed `complete`, once there are `n` (within 5 s).
async fn complete_recordings(admin: SocketAddr, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..100 {
        let (status, _, body) =
            call(admin, "GET", "/admin/recordings", Some("audit-token"), "").await;
        assert_eq!(status, 200);
        ids = json_of(&body)["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "complete")
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() >= n {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} recordings complete: only {ids:?}");
}

/// The proxy with the admin tokens and a recorded media route on `/media` (subject in `subject_id`).
async fn media_proxy(backend: SocketAddr) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[route]]\nname = \"media\"\npath_prefix = \"/media\"\nupstream = \"voice\"\n[route.media]\nprotocol = \"twilio\"\nsubject_param = \"subject_id\"\n[audit]\ncheckpoint_interval = \"100ms\"\n[[alerts]]\nname = \"admin-tokens\"\non = \"admin_auth\"\nthreshold = 2\nwindow = \"15m\"\n";
    // The [[admin.token]] tables go right after [admin].
    let text = format!("{}\n{extra}", config_text(dir.path(), backend, "", "")).replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", tokens()),
        1,
    );
    spawn_proxy_with(dir, &text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_every_endpoint_and_every_call_is_audited() {
    let backend = spawn_ws_backend().await;
    let proxy = media_proxy(backend.addr).await;
    let admin = proxy.admin;

    // A recorded call to export and erase.
    recorded_call(&proxy, "MZ1", "carol").await;
    let id = complete_recordings(admin, 1).await.remove(0);

    // 401 / 403 / 200.
    let (status, headers, _) = call(admin, "GET", "/admin/recordings", None, "").await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(
        call(admin, "GET", "/admin/recordings", Some("nope"), "")
            .await
            .0,
        401
    );
    let wav_path = format!("/admin/recordings/{id}/wav");
    assert_eq!(
        call(admin, "GET", &wav_path, Some("audit-token"), "")
            .await
            .0,
        403,
        "auditors may not export"
    );
    assert_eq!(
        call(admin, "GET", &wav_path, Some("ops-token"), "").await.0,
        403
    );
    assert_eq!(
        call(admin, "POST", "/admin/reload", Some("audit-token"), "")
            .await
            .0,
        403
    );
    let (status, headers, wav) = call(admin, "GET", &wav_path, Some("admin-token"), "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "audio/wav");
    assert!(
        wav.starts_with(b"RIFF") && &wav[8..12] == b"WAVE" && wav.len() > 44 + 10 * 160 * 4 - 1
    );
    assert_eq!(
        call(admin, "GET", "/admin/bans", Some("ops-token"), "")
            .await
            .0,
        200
    );
    assert_eq!(
        call(admin, "GET", "/admin/audit", Some("audit-token"), "")
            .await
            .0,
        200
    );
    assert_eq!(
        call(admin, "GET", "/healthz", None, "").await.0,
        200,
        "health stays token-free"
    );
    let (status, _, metrics) = call(admin, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"voxguard_alert_firing{alert="admin-tokens"} 1"#),
        "two 401s and three 403s: {metrics}"
    );
    assert!(
        metrics.contains(r#"voxguard_alert_events{alert="admin-tokens"} 5"#),
        "{metrics}"
    );

    // Erasure through the API.
    assert_eq!(
        call(
            admin,
            "POST",
            "/admin/subjects/erase",
            Some("admin-token"),
            "{}"
        )
        .await
        .0,
        400
    );
    let (status, _, body) = call(
        admin,
        "POST",
        "/admin/subjects/erase",
        Some("admin-token"),
        r#"{"subject":"carol"}"#,
    )
    .await;
    assert_eq!((status, json_of(&body)["erased"].as_u64()), (200, Some(1)));
    assert_eq!(
        call(admin, "GET", &wav_path, Some("admin-token"), "")
            .await
            .0,
        404,
        "gone"
    );

    // Every call is in the audit log, with the token's name and the status, never the token.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, body) = call(admin, "GET", "/admin/audit", Some("audit-token"), "").await;
    let audit_body = body.clone();
    let entries = json_of(&body)["entries"].as_array().unwrap().clone();
    let calls: Vec<(String, u64)> = entries
        .iter()
        .filter(|e| e["event"] == "admin_call")
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("anonymous".to_string(), 401),
        ("token:auditor".into(), 403),
        ("token:ops".into(), 403),
        ("token:root".into(), 200),
    ] {
        assert!(calls.contains(&expected), "{expected:?} not in {calls:?}");
    }
    assert!(entries.iter().any(|e| e["event"] == "subject_erased"));
    assert!(entries.iter().any(|e| e["event"] == "recording_exported"));
    // The report's counts match what this test did.
    let (status, _, body) = call(admin, "GET", "/admin/report", Some("audit-token"), "").await;
    assert_eq!(status, 200);
    let report = json_of(&body);
    assert_eq!(report["chain"]["verified"], true, "{report}");
    assert_eq!(
        (report["calls"].as_u64(), report["recorded_calls"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert_eq!(
        (report["exports"].as_u64(), report["erasures"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert!(
        report["admin_actions_by_role"]["admin"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert_eq!(
        report["admin_actions_by_role"]["none"].as_u64(),
        Some(2),
        "the two 401s: {report}"
    );
    let all = audit_body.escape_ascii().to_string();
    assert!(
        !all.contains("admin-token") && !all.contains("carol"),
        "no tokens or subjects in the audit log"
    );
}

/// `(path, method, documented status codes)` from docs/admin-api.yaml (its layout: paths at two
/// spaces, methods at four, status codes at eight).
fn spec() -> Vec<(String, String, Vec<u16>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml"))
        .unwrap();
    let mut out: Vec<(String, String, Vec<u16>)> = Vec::new();
    let mut path = String::new();
    let mut in_paths = false;
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            path = format!("/{p}");
        } else if let Some(m) = line
            .strip_prefix("    ")
            .and_then(|m| m.strip_suffix(':'))
            .filter(|m| !m.starts_with(' '))
        {
            out.push((path.clone(), m.to_uppercase(), Vec::new()));
        } else if let Some(code) = line
            .strip_prefix("        \"")
            .and_then(|c| c.strip_suffix("\":"))
        {
            out.last_mut().unwrap().2.push(code.parse().unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_server_answers_as_the_openapi_document_says() {
    let backend = crate::support::backend::spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), backend, "", "").replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", tokens()),
        1,
    );
    let proxy = spawn_proxy_with(dir, &text).await;
    let endpoints = spec();
    assert!(endpoints.len() >= 13, "{endpoints:?}");
    for (path, method, codes) in endpoints {
        let concrete = path
            .replace("{id}", "00000000000000000000000000000000")
            .replace("{ip}", "192.0.2.1");
        let body = if path.ends_with("/erase") {
            r#"{"subject":"nobody"}"#
        } else {
            ""
        };
        let (status, _, _) = call(proxy.admin, &method, &concrete, Some("admin-token"), body).await;
        assert!(
            codes.contains(&status),
            "{method} {path}: {status} is not among {codes:?}"
        );
        if path.starts_with("/admin/") {
            let (status, _, _) = call(proxy.admin, &method, &concrete, None, body).await;
            assert_eq!(status, 401, "{method} {path} without a token");
            assert!(codes.contains(&401), "{method} {path} documents 401");
        }
    }
}

/// One thread runs the calls, the recording writers and the admin API, as a proxy with
/// `worker_threads = 1` does. A second SQLite connection holds the keystore's write lock, as another
/// writer (`voxguard keys rewrap`, a commit on a slow disk) can for seconds. An erasure and a new
/// call's recording must wait for it off that thread: the call is relayed meanwhile, and both
/// finish once the lock is released.
#[tokio::test(flavor = "current_thread")]
async fn a_locked_keystore_never_stalls_the_thread_the_calls_run_on() {
    let backend = spawn_ws_backend().await;
    let proxy = media_proxy(backend.addr).await;
    recorded_call(&proxy, "MZ1", "carol").await;
    let carols = complete_recordings(proxy.admin, 1).await;

    let keystore = proxy.dir.path().join("data/recordings/keystore.sqlite");
    let lock = rusqlite::Connection::open(&keystore).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    let admin = proxy.admin;
    let erase = tokio::spawn(async move {
        call(
            admin,
            "POST",
            "/admin/subjects/erase",
            Some("admin-token"),
            r#"{"subject":"carol"}"#,
        )
        .await
    });
    recorded_call(&proxy, "MZ2", "dave").await;
    let relayed = || {
        let received = backend.received.lock().unwrap();
        received
            .iter()
            .filter(|m| {
                m.to_text()
                    .is_ok_and(|t| t.contains("MZ2") && t.contains("\"media\""))
            })
            .count()
    };
    tokio::time::timeout(Duration::from_secs(3), async {
        while relayed() < 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the second call's frames reach the backend while the keystore is locked");
    assert!(
        !erase.is_finished(),
        "the erasure waits for the keystore's lock (it must not give up, or say it erased)"
    );

    lock.execute_batch("COMMIT").unwrap();
    let (status, _, body) = erase.await.unwrap();
    assert_eq!(
        (status, json_of(&body)),
        (200, json!({"erased": 1, "failed": 0}))
    );
    let daves = complete_recordings(proxy.admin, 1).await;
    assert_ne!(
        daves, carols,
        "the second call was recorded; the first is gone"
    );
    let metrics = crate::support::admin_get(proxy.admin, "/metrics").await.1;
    assert!(
        metrics.contains("voxguard_recordings_failed_total 0"),
        "no recording failed: {metrics}"
    );
}

/// A delete the keystore refuses (locked past SQLite's 5 s busy timeout) leaves the recording's key,
/// so the recording is not shredded: the API must say so, keep the file, and succeed on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_the_keystore_refuses_is_an_error_and_keeps_the_recording() {
    let backend = spawn_ws_backend().await;
    let proxy = media_proxy(backend.addr).await;
    recorded_call(&proxy, "MZ1", "carol").await;
    let carols = complete_recordings(proxy.admin, 1).await.remove(0);
    recorded_call(&proxy, "MZ2", "dave").await;
    let daves = complete_recordings(proxy.admin, 2)
        .await
        .into_iter()
        .find(|id| *id != carols)
        .unwrap();
    let ids = [carols, daves.clone()];
    let files = |ids: &[String]| -> Vec<bool> {
        ids.iter()
            .map(|id| {
                proxy
                    .dir
                    .path()
                    .join(format!("data/recordings/{id}.vxr"))
                    .exists()
            })
            .collect()
    };
    assert_eq!(files(&ids), [true, true]);

    let keystore = proxy.dir.path().join("data/recordings/keystore.sqlite");
    let lock = rusqlite::Connection::open(&keystore).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let admin = proxy.admin;
    let erase_path = "/admin/subjects/erase";
    let carol = r#"{"subject":"carol"}"#;
    let delete_path = format!("/admin/recordings/{daves}");
    let (erase, delete) = tokio::join!(
        call(admin, "POST", erase_path, Some("admin-token"), carol),
        call(admin, "DELETE", &delete_path, Some("admin-token"), "")
    );
    assert_eq!(
        (erase.0, json_of(&erase.2)),
        (500, json!({"erased": 0, "failed": 1}))
    );
    assert_eq!(delete.0, 500, "{:?}", delete.2);
    assert_eq!(
        files(&ids),
        [true, true],
        "no file is deleted while its key stays"
    );
    assert_eq!(
        complete_recordings(admin, 2).await.len(),
        2,
        "both are still listed"
    );

    lock.execute_batch("COMMIT").unwrap();
    let erase = call(admin, "POST", erase_path, Some("admin-token"), carol).await;
    let delete = call(admin, "DELETE", &delete_path, Some("admin-token"), "").await;
    assert_eq!(erase.0, 200);
    assert_eq!(delete.0, 200);
    let (_, _, body) = call(admin, "GET", "/admin/recordings", Some("audit-token"), "").await;
    assert_eq!(json_of(&body)["recordings"], json!([]));
    assert_eq!(files(&ids), [false, false]);
}

/// A call that ends while the keystore is locked past SQLite's busy timeout: its file is whole, but
/// its entry cannot be marked `complete`. That must not pass silently: the audit log says
/// `recording_finished` with outcome `error`, and the listing still says `recording`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_whose_end_the_keystore_refuses_is_audited_as_an_error() {
    let backend = spawn_ws_backend().await;
    let proxy = media_proxy(backend.addr).await;
    let admin = proxy.admin;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/media", &[])
        .await
        .unwrap();
    ws.send(Message::text(json!({"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1", "customParameters": {"subject_id": "erin"}}}).to_string())).await.unwrap();
    let payload = voxguard::admission::signature::encoding::to_base64(&[0x10u8; 160]);
    ws.send(Message::text(json!({"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "timestamp": "0", "payload": payload}}).to_string())).await.unwrap();
    let listed = || async {
        let (_, _, body) = call(admin, "GET", "/admin/recordings", Some("audit-token"), "").await;
        json_of(&body)["recordings"].as_array().unwrap().clone()
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while listed().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the recording's entry is created");

    let keystore = proxy.dir.path().join("data/recordings/keystore.sqlite");
    let lock = rusqlite::Connection::open(&keystore).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    ws.send(Message::text(
        json!({"event": "stop", "streamSid": "MZ1"}).to_string(),
    ))
    .await
    .unwrap();
    let _ = ws.close(None).await;
    let finished = || async {
        let (_, _, body) = call(admin, "GET", "/admin/audit", Some("audit-token"), "").await;
        json_of(&body)["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "recording_finished")
            .cloned()
    };
    let entry = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(e) = finished().await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the recording's end is audited once the keystore gives up");
    lock.execute_batch("COMMIT").unwrap();
    assert_eq!(entry["outcome"], "error", "{entry}");
    let recordings = listed().await;
    assert_eq!(recordings.len(), 1);
    assert_eq!(recordings[0]["state"], "recording", "{recordings:?}");
    assert_eq!(
        entry["recording"], recordings[0]["id"],
        "the entry names the recording (an id, never the subject)"
    );
    let metrics = crate::support::admin_get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("voxguard_recordings_finished_total 1"),
        "the file is whole, so it counts as finished: {metrics}"
    );
}

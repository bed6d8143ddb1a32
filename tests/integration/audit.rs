//! The audit log against the real binary: a run with webhook failures, a ban and a media call is
//! recorded, verifies with the audit key and with the public key alone, names a tampered entry, rotates
//! across files, and holds none of the PII the test sent (nor do the logs or `/metrics`).

use std::path::Path;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::lifecycle::{start, terminate};
use crate::support::client::{https_post, ws_connect};
use crate::support::ws_backend::spawn_ws_backend;
use crate::support::{admin_get, config_text};

const SSN: &str = "123-45-6789";
const CARD: &str = "4111 1111 1111 1111";
const PHONE: &str = "+14155550123";

fn cli(args: &[&str], config: &Path) -> (i32, String) {
    let (code, out, err) = crate::support::cli(args, config);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_audited_verifiable_and_free_of_pii() {
    let backend = spawn_ws_backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gh.secret"), "webhook-secret").unwrap();
    let extra = format!(
        "[[route]]\nname = \"limited\"\npath_prefix = \"/limited\"\nupstream = \"voice\"\nrate_limit = {{ per_ip = \"1/m\", burst = 1 }}\n\
         [[route]]\nname = \"hooks\"\npath_prefix = \"/hooks\"\nupstream = \"voice\"\n[route.webhook]\nscheme = \"github\"\nsecret_file = {:?}\n\
         [[route]]\nname = \"media\"\npath_prefix = \"/media\"\nupstream = \"voice\"\n[route.media]\nprotocol = \"twilio\"\n\
         [[bans.rule]]\nname = \"sig\"\non = \"signature_failure\"\ncount = 3\nwindow = \"1m\"\nduration = \"1h\"\n\
         [audit]\nmax_file_bytes = 1500\ncheckpoint_every = 4\n",
        dir.path().join("gh.secret").display().to_string()
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!("{}\n{extra}", config_text(dir.path(), backend.addr, "", "")),
    )
    .unwrap();
    let mut proxy = start(&config, &dir.path().join("data")).await;

    // A media call carrying PII in its parameters.
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/media", &[])
        .await
        .unwrap();
    let start_msg = json!({"event": "start", "streamSid": "MZsecretstream", "start": {"streamSid": "MZsecretstream", "callSid": "CA1",
        "customParameters": {"ssn": SSN, "card": CARD, "caller": PHONE}}});
    ws.send(Message::text(start_msg.to_string())).await.unwrap();
    ws.send(Message::text(
        r#"{"event":"stop","streamSid":"MZsecretstream"}"#,
    ))
    .await
    .unwrap();
    let _ = ws.close(None).await;
    // Rate-limited requests: one aggregated entry, not one per request.
    for _ in 0..6 {
        let _ = crate::support::client::https_get(proxy.tls, &proxy.ca, "/limited/x").await;
    }
    // Forged webhooks carrying PII in the body: refused, then banned.
    let body = format!("{{\"ssn\":\"{SSN}\",\"card\":\"{CARD}\",\"phone\":\"{PHONE}\"}}");
    for _ in 0..3 {
        let status = https_post(
            proxy.tls,
            &proxy.ca,
            "/hooks/x",
            &[("x-hub-signature-256", &format!("sha256={}", "0".repeat(64)))],
            body.as_bytes(),
        )
        .await
        .0;
        assert_eq!(status, 403);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert_eq!(terminate(&mut proxy).await, Some(0));

    let audit_dir = dir.path().join("data/audit");
    let files = voxguard::audit::log::files(&audit_dir);
    assert!(files.len() >= 2, "rotated across files: {files:?}");
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for event in [
        "\"start\"",
        "webhook_signature_failure",
        "\"ban\"",
        "media_session",
        "recording_created",
        "recording_finished",
        "\"stop\"",
        "checkpoint",
    ] {
        assert!(text.contains(event), "{event} missing:\n{text}");
    }
    assert!(!text.contains("MZsecretstream"), "the stream id is hashed");
    let limited: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"event\":\"rate_limited\""))
        .collect();
    assert_eq!(limited.len(), 1, "aggregated: {limited:?}");
    assert!(
        limited[0].contains("\"count\":5") && limited[0].contains("\"route\":\"limited\""),
        "{limited:?}"
    );
    let logs = proxy.logs.lock().unwrap().join("\n");
    for pii in [
        SSN,
        CARD,
        PHONE,
        "4111111111111111",
        "14155550123",
        "webhook-secret",
    ] {
        assert!(!text.contains(pii), "audit log holds {pii}");
        assert!(!logs.contains(pii), "logs hold {pii}");
        assert!(!metrics.contains(pii), "metrics hold {pii}");
    }

    let (code, out) = cli(&["audit", "verify"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("ok: ") && out.contains("last checkpoint seq"),
        "{out}"
    );
    let (code, pk) = cli(&["audit", "public-key"], &config);
    assert_eq!(code, 0);
    let mut args: Vec<String> = vec![
        "audit".into(),
        "verify".into(),
        "--public-key".into(),
        pk.trim().into(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = cli(&args, &config);
    assert_eq!(code, 0, "public key alone: {out}");

    // One changed byte is found and named.
    let victim = &files[0];
    let original = std::fs::read_to_string(victim).unwrap();
    std::fs::write(
        victim,
        original.replacen("\"outcome\":\"ok\"", "\"outcome\":\"no\"", 1),
    )
    .unwrap();
    let (code, out) = cli(&["audit", "verify"], &config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("broken at line ") && out.contains("mac does not match"),
        "{out}"
    );
    // A cut tail is reported as unsealed.
    std::fs::write(victim, &original).unwrap();
    let last = files.last().unwrap();
    let text = std::fs::read_to_string(last).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept: String = lines[..lines.len().saturating_sub(2)]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(last, kept).unwrap();
    let (code, out) = cli(&["audit", "verify"], &config);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("unsealed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_admin_reload_reloads_the_running_binary_and_is_audited() {
    let backend = crate::support::backend::spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let token = format!(
        "[[admin.token]]\nname = \"ops\"\nrole = \"operator\"\nsha256 = \"{}\"\n",
        voxguard::admission::signature::encoding::to_hex(
            &voxguard::admission::signature::encoding::sha256(b"ops-token")
        )
    );
    let base = config_text(dir.path(), backend, "", "")
        .replace("path_prefix = \"/\"", "path_prefix = \"/a\"")
        .replacen(
            "[admin]\nlisten = \"127.0.0.1:0\"\n",
            &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{token}"),
            1,
        );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, &base).unwrap();
    let mut proxy = start(&config, &dir.path().join("data")).await;
    assert_eq!(
        crate::support::client::https_get(proxy.tls, &proxy.ca, "/b/headers")
            .await
            .0,
        404
    );
    std::fs::write(
        &config,
        format!("{base}\n[[route]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"voice\"\n"),
    )
    .unwrap();

    let tcp = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    let mut send = crate::support::client::h1_over(tcp).await;
    let req = http::Request::post("/admin/reload")
        .header("host", "localhost")
        .header("authorization", "Bearer ops-token")
        .body(crate::support::client::empty())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 202);
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = crate::support::client::https_get(proxy.tls, &proxy.ca, "/b/headers")
            .await
            .0;
        if status == 200 {
            break;
        }
    }
    assert_eq!(
        status, 200,
        "the new route is served after POST /admin/reload"
    );
    assert_eq!(terminate(&mut proxy).await, Some(0));
    let text: String = voxguard::audit::log::files(&dir.path().join("data/audit"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        text.contains("\"event\":\"admin_call\"") && text.contains("\"endpoint\":\"reload\""),
        "{text}"
    );
    assert!(
        text.contains(
            "\"event\":\"config_reload\",\"actor\":\"voxguard\",\"route\":null,\"outcome\":\"ok\""
        ),
        "{text}"
    );
    assert_eq!(cli(&["audit", "verify"], &config).0, 0);
}

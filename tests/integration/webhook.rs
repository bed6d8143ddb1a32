//! Webhook signatures end to end: the providers' official SDKs sign real requests (see
//! `support::sdk`), a real TLS client sends them through the proxy, and a recording backend shows
//! what arrived. Genuine → forwarded byte-identical; tampered → 403 and the backend saw nothing;
//! replayed → 409; retry after a 5xx → forwarded; repeated failures → banned.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::support::backend::spawn_backend;
use crate::support::client::{h1, h1_from, read, ws_connect};
use crate::support::recorder::{Recorder, spawn_recorder};
use crate::support::sdk::{Signed, now, sign};
use crate::support::{TestProxy, admin_get, config_text, spawn_proxy_env};

const TWILIO_TOKEN: &str = "twilio-test-auth-token";
const STRIPE_SECRET: &str = "whsec_test_stripe_secret";
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
/// Ed25519 seed bytes 0..32, base64; TELNYX_PUBLIC is its public key.
const TELNYX_SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const TELNYX_PUBLIC: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";

fn env(k: &str) -> Option<String> {
    Some(
        match k {
            "TWILIO_AUTH_TOKEN" => TWILIO_TOKEN,
            "STRIPE_SECRET" => STRIPE_SECRET,
            "STANDARD_SECRET" => STANDARD_SECRET,
            "SLACK_SECRET" => SLACK_SECRET,
            "TELNYX_PUBLIC_KEY" => TELNYX_PUBLIC,
            _ => return None,
        }
        .to_string(),
    )
}

/// One signed route per scheme, under `/<scheme>/`.
fn signed_routes() -> String {
    let route = |name: &str, table: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"voice\"\nmax_body_bytes = 4096\n[route.webhook]\n{table}\n"
        )
    };
    [
        route(
            "twilio",
            "scheme = \"twilio\"\nsecret_env = \"TWILIO_AUTH_TOKEN\"\npublic_url = \"https://voice.example.com\"",
        ),
        route("stripe", "scheme = \"stripe\"\nsecret_env = \"STRIPE_SECRET\""),
        route(
            "standard-webhooks",
            "scheme = \"standard-webhooks\"\nsecret_env = \"STANDARD_SECRET\"",
        ),
        route("svix", "scheme = \"svix\"\nsecret_env = \"STANDARD_SECRET\""),
        route("slack", "scheme = \"slack\"\nsecret_env = \"SLACK_SECRET\""),
        route("telnyx", "scheme = \"telnyx\"\nsecret_env = \"TELNYX_PUBLIC_KEY\""),
    ]
    .concat()
}

async fn proxy_with(server_extra: &str) -> (TestProxy, Recorder) {
    let (backend, recorder) = spawn_recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n{}",
        config_text(dir.path(), backend, server_extra, ""),
        signed_routes()
    );
    (spawn_proxy_env(dir, &text, &env).await, recorder)
}

/// POSTs `signed` (its URL's path and query, its headers, its body) on a fresh connection.
async fn send(proxy: &TestProxy, signed: &Signed) -> (u16, String) {
    send_from(proxy, None, signed).await
}

async fn send_from(proxy: &TestProxy, source: Option<&str>, signed: &Signed) -> (u16, String) {
    let mut conn = match source {
        None => h1(proxy.tls, &proxy.ca_pem).await,
        Some(ip) => h1_from(ip, proxy.tls, &proxy.ca_pem).await.unwrap(),
    };
    let mut req = Request::builder()
        .method("POST")
        .uri(signed.path_and_query())
        .header("host", "voice.example.com");
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let body = Full::new(Bytes::from(signed.body.clone()))
        .map_err(|never| match never {})
        .boxed();
    let (status, _, body) = read(conn.send_request(req.body(body).unwrap()).await.unwrap()).await;
    (status, body)
}

fn tamper_body(signed: &Signed, from: &str, to: &str) -> Signed {
    let mut t = signed.clone();
    assert!(t.body.contains(from), "{} lacks {from}", t.body);
    t.body = t.body.replacen(from, to, 1);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_sdk_signed_form_is_forwarded_byte_identical_and_tampering_is_refused() {
    let (proxy, recorder) = proxy_with("").await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    let before = r#"voxguard_webhook_verified_total{route="twilio",scheme="twilio"} 0"#;
    assert!(
        metrics.contains(before),
        "a signed route's series exists before its first delivery (rate() and alerts see a 0)\n{metrics}"
    );
    let signed = sign(json!({
        "scheme": "twilio",
        "secret": TWILIO_TOKEN,
        "url": "https://voice.example.com/twilio/incoming?foo=1&bar=a%20b",
        "params": [
            ["CallSid", "CA1234567890ABCDE"], ["From", "+14158675309"], ["To", "+18005551212"],
            ["SpeechResult", "Ünïcode café & more"], ["Digits", "5678"], ["Digits", "1234"]
        ],
    }))
    .await;
    assert_eq!(send(&proxy, &signed).await, (200, "recorded\n".into()));
    let seen = recorder.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].body,
        signed.body.as_bytes(),
        "body forwarded byte-identical"
    );
    assert_eq!(
        seen[0].path_and_query, "/twilio/incoming?foo=1&bar=a%20b",
        "raw query kept"
    );
    assert_eq!(
        seen[0].headers["x-twilio-signature"],
        signed.headers[0].1.as_str(),
        "the backend can still verify for itself"
    );

    let changed = tamper_body(&signed, "5678", "5679");
    assert_eq!(send(&proxy, &changed).await, (403, "Forbidden\n".into()));
    let added = Signed {
        body: format!("{}&Extra=1", signed.body),
        ..signed.clone()
    };
    assert_eq!(send(&proxy, &added).await.0, 403, "param added");
    let other_path = Signed {
        url: signed.url.replace("incoming", "outgoing"),
        ..signed.clone()
    };
    assert_eq!(send(&proxy, &other_path).await.0, 403, "path changed");
    let unsigned = Signed {
        headers: signed.headers[1..].to_vec(),
        ..signed.clone()
    };
    assert_eq!(send(&proxy, &unsigned).await.0, 403, "signature missing");
    assert_eq!(
        recorder.requests().len(),
        1,
        "the backend saw none of the refused requests"
    );

    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    for line in [
        r#"voxguard_webhook_verified_total{route="twilio",scheme="twilio"} 1"#,
        r#"voxguard_webhook_signature_failures_total{reason="mismatch",route="twilio",scheme="twilio"} 3"#,
        r#"voxguard_webhook_signature_failures_total{reason="missing",route="twilio",scheme="twilio"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_json_body_is_covered_by_body_sha256() {
    let (proxy, recorder) = proxy_with("").await;
    let signed = sign(json!({
        "scheme": "twilio",
        "secret": TWILIO_TOKEN,
        "url": "https://voice.example.com/twilio/events",
        "body": "{\"CallSid\":\"CA1\",\"Caller\":\"+12349013030\"}",
    }))
    .await;
    assert!(signed.url.contains("bodySHA256="), "{}", signed.url);
    assert_eq!(send(&proxy, &signed).await.0, 200);
    assert_eq!(recorder.requests()[0].body, signed.body.as_bytes());
    let tampered = tamper_body(&signed, "CA1", "CA2");
    assert_eq!(send(&proxy, &tampered).await.0, 403);
    assert_eq!(recorder.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_get_409_and_a_retry_after_a_5xx_goes_through() {
    let (proxy, recorder) = proxy_with("").await;
    let signed = sign(json!({
        "scheme": "twilio",
        "secret": TWILIO_TOKEN,
        "url": "https://voice.example.com/twilio/flaky/status",
        "params": [["CallSid", "CA1"], ["CallStatus", "completed"]],
        "id": "idem-token-1",
    }))
    .await;
    assert_eq!(
        send(&proxy, &signed).await.0,
        500,
        "the backend failed the first delivery"
    );
    assert_eq!(
        send(&proxy, &signed).await.0,
        200,
        "Twilio's retry after a 5xx is forwarded"
    );
    assert_eq!(
        send(&proxy, &signed).await,
        (409, "Conflict\n".into()),
        "a replay"
    );
    assert_eq!(
        recorder.requests().len(),
        2,
        "the replay never reached the backend"
    );

    // Standard Webhooks: the signed webhook-id is the id, and a retry carries a fresh signature.
    let id = format!("msg_{}", now());
    let first = sign(json!({
        "scheme": "standard-webhooks", "secret": STANDARD_SECRET,
        "url": "https://x/standard-webhooks/flaky", "body": "{\"n\":1}",
        "timestamp": now(), "id": id,
    }))
    .await;
    assert_eq!(send(&proxy, &first).await.0, 500);
    assert_eq!(send(&proxy, &first).await.0, 200);
    let resigned = sign(json!({
        "scheme": "standard-webhooks", "secret": STANDARD_SECRET,
        "url": "https://x/standard-webhooks/flaky", "body": "{\"n\":1}",
        "timestamp": now() - 1, "id": id,
    }))
    .await;
    assert_eq!(
        send(&proxy, &resigned).await.0,
        409,
        "same webhook-id, new signature"
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    let line = r#"voxguard_webhook_signature_failures_total{reason="replayed",route="twilio",scheme="twilio"} 1"#;
    assert!(metrics.contains(line), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_signature_verifies_and_a_changed_byte_does_not() {
    let (proxy, recorder) = proxy_with("").await;
    let cases = [
        (
            "stripe",
            STRIPE_SECRET,
            "{\"id\":\"evt_1\",\"type\":\"charge.succeeded\"}",
        ),
        (
            "standard-webhooks",
            STANDARD_SECRET,
            "{\"type\":\"call.ended\",\"n\":1}",
        ),
        ("svix", STANDARD_SECRET, "{\"type\":\"call.ended\",\"n\":2}"),
        (
            "slack",
            SLACK_SECRET,
            "token=x&team_id=T1&text=hello%20world",
        ),
        (
            "telnyx",
            TELNYX_SEED,
            "{\"data\":{\"event_type\":\"call.initiated\"}}",
        ),
    ];
    for (i, (scheme, secret, body)) in cases.iter().enumerate() {
        let signed = sign(json!({
            "scheme": scheme, "secret": secret, "url": format!("https://x/{scheme}/hook"),
            "body": body, "timestamp": now(), "id": format!("msg_case_{i}"),
        }))
        .await;
        assert_eq!(send(&proxy, &signed).await.0, 200, "{scheme}");
        assert_eq!(
            recorder.requests().last().unwrap().body,
            body.as_bytes(),
            "{scheme}"
        );
        let tampered = Signed {
            body: format!("{body} "),
            ..signed.clone()
        };
        assert_eq!(
            send(&proxy, &tampered).await.0,
            403,
            "{scheme}: one byte added"
        );
        let stale = sign(json!({
            "scheme": scheme, "secret": secret, "url": format!("https://x/{scheme}/hook"),
            "body": body, "timestamp": now() - 600, "id": format!("msg_stale_{i}"),
        }))
        .await;
        assert_eq!(
            send(&proxy, &stale).await.0,
            403,
            "{scheme}: ten minutes old"
        );
    }
    assert_eq!(recorder.requests().len(), cases.len());
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    for (scheme, route) in [
        ("stripe", "stripe"),
        ("standard-webhooks", "svix"),
        ("slack", "slack"),
        ("telnyx", "telnyx"),
    ] {
        let line = format!(
            "voxguard_webhook_signature_failures_total{{reason=\"stale\",route=\"{route}\",scheme=\"{scheme}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_bad_signatures_ban_the_address() {
    let rule = "[[bans.rule]]\nname = \"bad-signatures\"\non = \"signature_failure\"\ncount = 5\nwindow = \"1m\"\nduration = \"1h\"\n";
    let (backend, recorder) = spawn_recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n{}\n{rule}",
        config_text(dir.path(), backend, "", ""),
        signed_routes()
    );
    let proxy = spawn_proxy_env(dir, &text, &env).await;
    let good = sign(json!({
        "scheme": "stripe", "secret": STRIPE_SECRET, "url": "https://x/stripe/hook",
        "body": "{\"id\":\"evt_ban\"}", "timestamp": now(),
    }))
    .await;
    let forged = tamper_body(&good, "evt_ban", "evt_bad");
    for i in 0..5 {
        assert_eq!(
            send_from(&proxy, Some("127.0.0.7"), &forged).await.0,
            403,
            "failure {i}"
        );
    }
    let refused = h1_from("127.0.0.7", proxy.tls, &proxy.ca_pem).await;
    assert!(
        refused.is_none(),
        "banned: the connection is closed before TLS"
    );
    assert_eq!(
        send_from(&proxy, Some("127.0.0.8"), &good).await.0,
        200,
        "others are unaffected"
    );
    assert_eq!(recorder.requests().len(), 1);
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_bans_total{rule="bad-signatures"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_over_the_cap_is_413_and_never_forwarded() {
    let (proxy, recorder) = proxy_with("").await;
    let signed = sign(json!({
        "scheme": "stripe", "secret": STRIPE_SECRET, "url": "https://x/stripe/big",
        "body": "x".repeat(5000), "timestamp": now(),
    }))
    .await;
    assert_eq!(send(&proxy, &signed).await.0, 413);
    assert!(recorder.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_media_stream_handshakes_are_verified_over_wss() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let route = "[[route]]\nname = \"media\"\npath_prefix = \"/ws\"\nupstream = \"voice\"\nwebsocket = true\n[route.webhook]\nscheme = \"twilio\"\nsecret_env = \"TWILIO_AUTH_TOKEN\"\npublic_url = \"https://voice.example.com\"\n";
    let text = format!("{}\n{route}", config_text(dir.path(), backend, "", ""));
    let proxy = spawn_proxy_env(dir, &text, &env).await;
    let signed = sign(json!({
        "scheme": "twilio", "secret": TWILIO_TOKEN,
        "url": "wss://voice.example.com/ws/stream?call=1", "params": [],
    }))
    .await;
    let sig = &signed.headers[0].1;
    let (mut ws, res) = ws_connect(
        proxy.tls,
        &proxy.ca_pem,
        "/ws/stream?call=1",
        &[("x-twilio-signature", sig)],
    )
    .await
    .expect("a signed handshake is relayed");
    assert_eq!(res.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    let https_signed = sign(json!({
        "scheme": "twilio", "secret": TWILIO_TOKEN,
        "url": "https://voice.example.com/ws/stream?call=1", "params": [],
    }))
    .await;
    let wrong_scheme = ws_connect(
        proxy.tls,
        &proxy.ca_pem,
        "/ws/stream?call=1",
        &[("x-twilio-signature", &https_signed.headers[0].1)],
    )
    .await;
    match wrong_scheme {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(
        ws_connect(proxy.tls, &proxy.ca_pem, "/ws/stream?call=1", &[])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_over_http2_too() {
    let (proxy, recorder) = proxy_with("").await;
    let signed = sign(json!({
        "scheme": "twilio", "secret": TWILIO_TOKEN,
        "url": "https://voice.example.com/twilio/h2?x=%2B1",
        "params": [["CallSid", "CA9"], ["From", "+14155550100"]],
    }))
    .await;
    let mut conn = crate::support::client::h2(proxy.tls, &proxy.ca_pem).await;
    let mut req = Request::builder().method("POST").uri(format!(
        "https://voice.example.com{}",
        signed.path_and_query()
    ));
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let body = Full::new(Bytes::from(signed.body.clone()))
        .map_err(|never| match never {})
        .boxed();
    let res = conn.send_request(req.body(body).unwrap()).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(read(res).await.0, 200);
    let seen = recorder.requests();
    assert_eq!(seen[0].body, signed.body.as_bytes());
    assert_eq!(seen[0].path_and_query, "/twilio/h2?x=%2B1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_that_stalls_gets_408_and_is_never_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, recorder) = spawn_recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n{}",
        config_text(dir.path(), backend, "", ""),
        signed_routes().replace(
            "scheme = \"stripe\"",
            "scheme = \"stripe\"\nbody_timeout = \"300ms\""
        )
    );
    let proxy = spawn_proxy_env(dir, &text, &env).await;
    let cfg = crate::support::client::tls_config(
        &[&proxy.ca_pem],
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
    );
    let mut tls = crate::support::client::tls_connect(proxy.tls, cfg)
        .await
        .unwrap();
    tls.write_all(
        b"POST /stripe/hook HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nstripe-signature: t=1,v1=00\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut response),
    )
    .await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(recorder.requests().is_empty());
}

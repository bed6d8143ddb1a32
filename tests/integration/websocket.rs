//! WebSocket relay through the proxy to a real WebSocket backend.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::backend::spawn_backend;
use crate::support::client::ws_connect;
use crate::support::{admin_get, spawn_proxy};

async fn next_data(ws: &mut crate::support::client::Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("no error");
        if !matches!(m, Message::Pong(_) | Message::Ping(_)) {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_of_1000_text_and_binary_messages_then_ping_and_close() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let (mut ws, res) = ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[])
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    for i in 0..1000u32 {
        let msg = if i % 2 == 0 {
            Message::text(format!("text {i}"))
        } else {
            Message::binary(i.to_be_bytes().repeat(40))
        };
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(next_data(&mut ws).await, msg, "message {i}");
    }
    ws.send(Message::Ping("are-you-there".into()))
        .await
        .unwrap();
    let pong = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Pong(p) => break p,
            _ => continue,
        }
    };
    assert_eq!(&pong[..], b"are-you-there");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_websocket_sessions_active 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"voxguard_websocket_messages_total{direction="client_to_upstream",route="default"} 1001"#),
        "{metrics}"
    );

    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let mut got_close = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Close(Some(f)) = m {
            assert_eq!(f.code, CloseCode::Normal);
            got_close = true;
        }
    }
    assert!(got_close);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_websocket_sessions_active 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_code_and_reason_reach_the_client() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[])
        .await
        .unwrap();
    ws.send(Message::text("close-me")).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Library(4001));
            assert_eq!(f.reason.as_str(), "bye");
        }
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_passes_and_compression_is_not_negotiated() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let (mut ws, res) = ws_connect(
        proxy.tls,
        &proxy.ca_pem,
        "/ws",
        &[
            ("sec-websocket-protocol", "audio.twilio.com"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "audio.twilio.com");
    assert!(!res.headers().contains_key("sec-websocket-extensions"));
    ws.send(Message::text("hello")).await.unwrap();
    // The backend announces "extensions-offered" first if the offer reached it.
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_with_1009() {
    let proxy = spawn_proxy(
        spawn_backend().await,
        "",
        "websocket_max_message_bytes = 1024",
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[])
        .await
        .unwrap();
    ws.send(Message::binary(vec![0u8; 4096])).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_with_1001() {
    let proxy = spawn_proxy(
        spawn_backend().await,
        "",
        "websocket_idle_timeout = \"300ms\"",
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[])
        .await
        .unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_websocket_do_not_upgrade() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = crate::support::config_text(dir.path(), backend, "", "")
        .replace("websocket = true", "websocket = false");
    let proxy = crate::support::spawn_proxy_with(dir, &text).await;
    let proxy_text = ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[]).await;
    assert!(
        proxy_text.is_err(),
        "upgrade must not succeed on a route without websocket = true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_sessions_with_1001_when_the_grace_period_ends() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = crate::support::config_text(dir.path(), backend, "", "")
        .replace("grace_period = \"2s\"", "grace_period = \"300ms\"");
    let proxy = crate::support::spawn_proxy_with(dir, &text).await;
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[])
        .await
        .unwrap();
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    let drain = tokio::spawn(proxy.app.shutdown());
    // During the grace period the call goes on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.send(Message::text("during grace")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("during grace"));
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let _ = ws.close(None).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .unwrap()
            .unwrap()
    );
}

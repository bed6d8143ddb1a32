//! Broken backends: refused, blackholed, reset mid-response, trickling or hanging mid-body, and a
//! WebSocket backend that stops reading. Each ends in a bounded 502/504 or close, and afterwards the
//! active-connection and session gauges are back to zero (nothing leaked).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::backend::{raw_backend, read_head};
use crate::support::client::{get, h1, ws_connect};
use crate::support::{TestProxy, admin_get, closed_port, config_text, spawn_proxy_with};

async fn proxy_for(backend: SocketAddr, route_extra: &str) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), backend, "", route_extra)
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"300ms\"")
        .replace(
            "response_timeout = \"2s\"",
            "response_timeout = \"1s\"\nread_timeout = \"500ms\"",
        );
    spawn_proxy_with(dir, &text).await
}

/// Waits until both gauges read zero; fails with the metrics if they do not within 10 s.
async fn gauges_drain(proxy: &TestProxy) {
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = admin_get(proxy.admin, "/metrics").await.1;
        if metrics.contains("voxguard_active_connections 0")
            && metrics.contains("voxguard_websocket_sessions_active 0")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gauges not back to zero:\n{metrics}");
}

/// A GET through the proxy: the status and whether the body arrived whole.
async fn fetch(proxy: &TestProxy, path: &str) -> (u16, Result<Vec<u8>, String>) {
    let mut send = h1(proxy.tls, &proxy.ca_pem).await;
    let res = tokio::time::timeout(Duration::from_secs(10), send.send_request(get(path)))
        .await
        .expect("answered in bounded time")
        .unwrap();
    let status = res.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .expect("body ended in bounded time")
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_blackholed_backends_get_502() {
    let proxy = proxy_for(closed_port(), "").await;
    assert_eq!(fetch(&proxy, "/").await.0, 502);
    gauges_drain(&proxy).await;

    // A listener whose accept queue is full drops further SYNs: the connect hangs like a blackhole.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
        {
            fillers.push(c);
        }
    }
    let proxy = proxy_for(addr, "").await;
    assert_eq!(
        fetch(&proxy, "/").await.0,
        502,
        "connect_timeout (300ms, under response_timeout 1s) → 502"
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_upstream_errors_total{reason="connect",upstream="voice"} 1"#),
        "{metrics}"
    );
    gauges_drain(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_response_ends_the_clients_response_early() {
    let backend = raw_backend(|mut tcp| async move {
        read_head(&mut tcp).await;
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            .await
            .unwrap();
        tcp.write_all(&[b'x'; 100]).await.unwrap();
        tcp.set_zero_linger().unwrap(); // close with RST
    })
    .await;
    let proxy = proxy_for(backend, "").await;
    let (status, body) = fetch(&proxy, "/").await;
    assert_eq!(status, 200, "the head had already gone to the client");
    assert!(
        body.is_err(),
        "a truncated body must not look complete: {body:?}"
    );
    gauges_drain(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_heads_get_504_and_a_body_that_goes_silent_is_cut_at_read_timeout() {
    let backend = raw_backend(|mut tcp| async move {
        let head = read_head(&mut tcp).await;
        if head.starts_with("GET /trickle-head") {
            for b in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
                if tcp.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else if head.starts_with("GET /silent-body") {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        } else {
            // A slow but steady body: a byte every 100 ms, under the 500 ms read_timeout.
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                .await
                .unwrap();
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tcp.write_all(b"s").await.unwrap();
            }
        }
    })
    .await;
    let proxy = proxy_for(backend, "").await;
    assert_eq!(
        fetch(&proxy, "/trickle-head").await.0,
        504,
        "head not done within response_timeout"
    );
    let (status, body) = fetch(&proxy, "/silent-body").await;
    assert_eq!(status, 200);
    assert!(
        body.is_err(),
        "a body silent past read_timeout is cut: {body:?}"
    );
    let (status, body) = fetch(&proxy, "/steady").await;
    assert_eq!(
        (status, body),
        (200, Ok(b"ssssssssss".to_vec())),
        "steady progress is not cut"
    );
    gauges_drain(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_backend_that_stops_reading_is_closed_at_write_timeout() {
    // Completes the handshake, then never reads again (its socket buffers fill and stay full).
    let backend = raw_backend(|mut tcp| async move {
        let head = read_head(&mut tcp).await;
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            .unwrap_or_default()
            .trim()
            .to_string();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        );
        tcp.write_all(reply.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(tcp);
    })
    .await;
    let proxy = proxy_for(backend, "websocket_write_timeout = \"500ms\"").await;
    let (ws, _) = ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[])
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 256 * 1024];
        while tx.send(Message::binary(chunk.clone())).await.is_ok() {}
    });
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the client is released once the backend stalls");
    assert_eq!(closed, Some(1001));
    writer.abort();
    gauges_drain(&proxy).await;
}

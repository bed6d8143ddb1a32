//! Hostile WebSocket clients, on a passthrough route and on a media-inspecting route: raw frames a
//! library would never send, each answered with the RFC 6455 close code, while a well-behaved call on
//! the same proxy keeps working.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::backend::spawn_backend;
use crate::support::client::{Ws, tls_config, tls_connect, ws_connect};
use crate::support::{TestProxy, admin_get, config_text, spawn_proxy_with};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

const PASSTHROUGH: &str = "/ws/plain";
const MEDIA: &str = "/ws/media";

/// A passthrough route with a 64 KiB message cap and an Origin list, and a Twilio media route.
async fn proxy() -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let routes = "websocket_max_message_bytes = 65536\n\
        websocket_allowed_origins = [\"https://app.example\"]\n\
        \n[[route]]\nname = \"media\"\npath_prefix = \"/ws/media\"\nupstream = \"voice\"\n\
        websocket_max_message_bytes = 65536\n[route.media]\nprotocol = \"twilio\"\n";
    let text = config_text(dir.path(), spawn_backend().await, "", routes);
    spawn_proxy_with(dir, &text).await
}

/// Opens a WebSocket by hand: the status line of the reply, its lower-cased head, and the stream.
async fn handshake(
    addr: std::net::SocketAddr,
    ca: &[u8],
    path: &str,
    extra: &str,
) -> (u16, String, Tls) {
    let mut tls = tls_connect(
        addr,
        tls_config(&[ca], &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{extra}\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tls.read(&mut byte).await.unwrap(),
            1,
            "reply head cut short"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head, tls)
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame as a client sends it. `declared` overrides the payload length in the header.
fn frame(
    fin: bool,
    rsv1: bool,
    opcode: u8,
    masked: bool,
    payload: &[u8],
    declared: Option<u64>,
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    let len = declared.unwrap_or(payload.len() as u64);
    let mask_bit = u8::from(masked) << 7;
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until a close frame and returns its code; `None` if the connection ends
/// without one. Data frames before it are returned too.
async fn read_until_close(tls: &mut Tls) -> (Option<u16>, Vec<Vec<u8>>) {
    let mut data = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut head = [0u8; 2];
            if tls.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    tls.read_exact(&mut b).await.ok()?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    tls.read_exact(&mut b).await.ok()?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
            let mut payload = vec![0u8; len as usize];
            tls.read_exact(&mut payload).await.ok()?;
            match head[0] & 0x0f {
                0x8 => return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                0x9 | 0xa => {}
                _ => data.push(payload),
            }
        }
    })
    .await;
    (result.expect("the proxy answers within 10 s"), data)
}

/// Sends `frames` on a fresh session at `path` and returns the close code the proxy answers with.
async fn close_code_for(proxy: &TestProxy, path: &str, extra: &str, frames: &[u8]) -> Option<u16> {
    let (status, head, mut tls) = handshake(proxy.tls, &proxy.ca_pem, path, extra).await;
    assert_eq!(status, 101, "{head}");
    // The proxy may close before it has read everything.
    let _ = tls.write_all(frames).await;
    read_until_close(&mut tls).await.0
}

/// A well-behaved call that must survive every attack on the other sessions.
async fn bystander(proxy: &TestProxy) -> Ws {
    ws_connect(proxy.tls, &proxy.ca_pem, PASSTHROUGH, &[])
        .await
        .unwrap()
        .0
}

async fn still_echoes(ws: &mut Ws, n: usize) {
    let text = format!("still here {n}");
    ws.send(Message::text(text.clone())).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("bystander answered in time")
            .expect("bystander open")
            .expect("bystander ok");
        match m {
            Message::Text(t) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("bystander got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_are_closed_with_rfc_6455_codes_and_other_calls_continue() {
    let proxy = proxy().await;
    let mut calm = bystander(&proxy).await;
    let text = br#"{"event":"media","media":{"payload":"AAAA"}}"#;
    let fragments_over_cap: Vec<u8> = {
        let mut raw = frame(false, false, 0x2, true, &[0u8; 1], None);
        let one = frame(false, false, 0x0, true, &[0u8; 1], None);
        for _ in 0..100_000 {
            raw.extend_from_slice(&one);
        }
        raw
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a 2^63 - 1 byte frame",
            frame(true, false, 0x2, true, &[], Some(u64::MAX >> 1)),
            1009,
        ),
        (
            "a frame length with the top bit set",
            frame(true, false, 0x2, true, &[], Some(u64::MAX)),
            1009,
        ),
        (
            "one frame over the 64 KiB cap",
            frame(true, false, 0x2, true, &vec![0u8; 70_000], None),
            1009,
        ),
        ("100,000 fragments past the cap", fragments_over_cap, 1009),
        (
            "an unmasked client frame",
            frame(true, false, 0x1, false, text, None),
            1002,
        ),
        (
            "RSV1 (deflate) never negotiated",
            frame(true, true, 0x1, true, text, None),
            1002,
        ),
        (
            "invalid UTF-8 in a text frame",
            frame(true, false, 0x1, true, b"{\"event\":\"\xff\xfe\"}", None),
            1007,
        ),
        (
            "a reserved opcode",
            frame(true, false, 0x3, true, b"x", None),
            1002,
        ),
        (
            "a continuation with nothing to continue",
            frame(true, false, 0x0, true, b"x", None),
            1002,
        ),
        (
            "a fragmented ping",
            frame(false, false, 0x9, true, b"x", None),
            1002,
        ),
        (
            "a 200-byte ping",
            frame(true, false, 0x9, true, &[0u8; 200], None),
            1002,
        ),
        (
            "a new message inside a fragmented one",
            [
                frame(false, false, 0x1, true, b"a", None),
                frame(true, false, 0x1, true, b"b", None),
            ]
            .concat(),
            1002,
        ),
    ];
    for path in [PASSTHROUGH, MEDIA] {
        for (i, (name, raw, code)) in cases.iter().enumerate() {
            let got = close_code_for(&proxy, path, "", raw).await;
            assert_eq!(got, Some(*code), "{name} on {path}");
            still_echoes(&mut calm, i).await;
        }
    }
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_websocket_sessions_active 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_offered_by_the_client_is_not_negotiated() {
    let proxy = proxy().await;
    for path in [PASSTHROUGH, MEDIA] {
        let (status, head, mut tls) = handshake(
            proxy.tls,
            &proxy.ca_pem,
            path,
            "sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n",
        )
        .await;
        assert_eq!(status, 101, "{head}");
        assert!(!head.contains("sec-websocket-extensions"), "{head}");
        // A client that compresses anyway: 1 KiB of zeros deflated, as a bomb would start.
        let bomb = [0xf2u8, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let _ = tls
            .write_all(&frame(true, true, 0x2, true, &bomb, None))
            .await;
        assert_eq!(read_until_close(&mut tls).await.0, Some(1002), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_fragments_under_the_cap_arrive_as_one_message() {
    let proxy = proxy().await;
    let (status, _, mut tls) = handshake(proxy.tls, &proxy.ca_pem, PASSTHROUGH, "").await;
    assert_eq!(status, 101);
    // 50,000 one-byte fragments: 50 KB, under the 64 KiB cap.
    let mut raw = frame(false, false, 0x2, true, &[7], None);
    let one = frame(false, false, 0x0, true, &[7], None);
    for _ in 0..49_998 {
        raw.extend_from_slice(&one);
    }
    raw.extend_from_slice(&frame(true, false, 0x0, true, &[7], None));
    // A small text message after it: its echo shows the big one has come back first.
    raw.extend_from_slice(&frame(true, false, 0x1, true, b"end", None));
    tls.write_all(&raw).await.unwrap();
    let mut echoed = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !echoed.ends_with(b"end") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        assert!(n > 0, "closed before the echo");
        echoed.extend_from_slice(&buf[..n]);
    }
    // One unfragmented binary frame of 50,000 bytes (0x82, 126, length), then the text frame.
    assert_eq!(&echoed[..4], &[0x82, 126, 0xc3, 0x50]);
    assert_eq!(&echoed[4..50_004], &[7u8; 50_000][..]);
    assert_eq!(&echoed[50_004..], &[0x81, 3, b'e', b'n', b'd']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_routes_list_get_403() {
    let proxy = proxy().await;
    for (origin, expected) in [
        ("origin: https://app.example\r\n", 101),
        ("origin: HTTPS://APP.EXAMPLE\r\n", 101),
        ("", 101), // not a browser
        ("origin: https://evil.example\r\n", 403),
        ("origin: https://app.example.evil.example\r\n", 403),
        ("origin: null\r\n", 403),
        (
            "origin: https://app.example\r\norigin: https://evil.example\r\n",
            403,
        ),
    ] {
        let (status, head, _) = handshake(proxy.tls, &proxy.ca_pem, PASSTHROUGH, origin).await;
        assert_eq!(status, expected, "{origin:?}: {head}");
    }
    // The media route has no list: any origin.
    let (status, _, _) = handshake(
        proxy.tls,
        &proxy.ca_pem,
        MEDIA,
        "origin: https://evil.example\r\n",
    )
    .await;
    assert_eq!(status, 101);
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_admission_refusals_total{reason="origin",route="default"} 4"#),
        "{metrics}"
    );
}

//! HTTP/1.1 framing and size limits against a recording backend: every ambiguous or oversized
//! request is refused with the right 4xx, and the backend never receives a complete request it could
//! read differently from the proxy. Raw bytes over real TLS, since a well-behaved client cannot send
//! these.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client::{tls_config, tls_connect};
use crate::support::recorder::{Recorder, spawn_recorder};
use crate::support::{TestProxy, admin_get, spawn_proxy};

/// Writes `raw` on a fresh TLS connection and reads until the proxy closes it (or 3 s pass).
async fn exchange(proxy: &TestProxy, raw: &[u8]) -> String {
    exchange_at(proxy.tls, &proxy.ca_pem, raw).await
}

async fn exchange_at(addr: std::net::SocketAddr, ca: &[u8], raw: &[u8]) -> String {
    let mut tls = tls_connect(
        addr,
        tls_config(&[ca], &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    // The proxy may refuse and close before it has read everything: a failed write is expected.
    let _ = tls.write_all(raw).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await
    {
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status lines of every response in `reply`.
fn statuses(reply: &str) -> Vec<&str> {
    reply
        .lines()
        .filter(|l| l.starts_with("HTTP/1."))
        .map(|l| l.get(9..12).unwrap_or(l))
        .collect()
}

/// Complete requests the backend received since `before`.
fn complete_since(rec: &Recorder, before: usize) -> Vec<String> {
    rec.requests()[before..]
        .iter()
        .filter(|r| r.complete)
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect()
}

fn chunk_extension_flood() -> Vec<u8> {
    let mut raw =
        b"POST /a HTTP/1.1\r\nhost: voice.example\r\ntransfer-encoding: chunked\r\n\r\n5;".to_vec();
    raw.extend(std::iter::repeat_n(b'e', 100_000));
    raw.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_requests_get_400_and_never_reach_the_backend() {
    let (backend, rec) = spawn_recorder().await;
    let proxy = spawn_proxy(backend, "", "").await;
    let head = "host: voice.example\r\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two different Content-Lengths", format!("POST /a HTTP/1.1\r\n{head}content-length: 5\r\ncontent-length: 6\r\n\r\nhello!").into_bytes()),
        ("a Content-Length list", format!("POST /a HTTP/1.1\r\n{head}content-length: 5, 6\r\n\r\nhello!").into_bytes()),
        ("a negative Content-Length", format!("POST /a HTTP/1.1\r\n{head}content-length: -1\r\n\r\n").into_bytes()),
        ("a signed Content-Length", format!("POST /a HTTP/1.1\r\n{head}content-length: +5\r\n\r\nhello").into_bytes()),
        ("Transfer-Encoding without chunked last", format!("POST /a HTTP/1.1\r\n{head}transfer-encoding: chunked, gzip\r\n\r\nhello").into_bytes()),
        ("Transfer-Encoding on HTTP/1.0", format!("POST /a HTTP/1.0\r\n{head}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()),
        ("space before the colon", format!("POST /a HTTP/1.1\r\n{head}transfer-encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()),
        ("obsolete line folding", format!("GET /a HTTP/1.1\r\n{head}x-a: b\r\n c\r\n\r\n").into_bytes()),
        ("a bare CR", format!("GET /a HTTP/1.1\r\n{head}x-a: b\rx-b: c\r\n\r\n").into_bytes()),
        ("a NUL in a value", format!("GET /a HTTP/1.1\r\n{head}x-a: b\0c\r\n\r\n").into_bytes()),
        ("HTTP/0.9", b"GET /a\r\n\r\n".to_vec()),
        ("HTTP/2.0 on an HTTP/1 connection", format!("GET /a HTTP/2.0\r\n{head}\r\n").into_bytes()),
        ("a chunk size that is not hex", format!("POST /a HTTP/1.1\r\n{head}transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").into_bytes()),
        ("a chunk size past 64 bits", format!("POST /a HTTP/1.1\r\n{head}transfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n").into_bytes()),
        ("100 KB of chunk extensions", chunk_extension_flood()),
        ("no Host on HTTP/1.1", b"GET /a HTTP/1.1\r\n\r\n".to_vec()),
        ("two Host lines", format!("GET /a HTTP/1.1\r\n{head}host: other.example\r\n\r\n").into_bytes()),
        ("a Host with userinfo", b"GET /a HTTP/1.1\r\nhost: user@voice.example\r\n\r\n".to_vec()),
        ("an absolute target naming another host", format!("GET http://evil.example/a HTTP/1.1\r\n{head}\r\n").into_bytes()),
    ];
    for (name, raw) in &cases {
        let before = rec.requests().len();
        let reply = exchange(&proxy, raw).await;
        assert_eq!(statuses(&reply), ["400"], "{name}: {reply}");
        assert_eq!(
            complete_since(&rec, before),
            Vec::<String>::new(),
            "{name} reached the backend"
        );
    }

    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    for reason in ["malformed", "bad_host", "bad_body"] {
        let line = format!("voxguard_http_malformed_requests_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_wins_over_content_length_and_the_connection_closes() {
    // RFC 9112 §6.1: the proxy drops the Content-Length, forwards by the chunked framing alone, and
    // closes the connection after responding, so nothing smuggled after the body is ever read.
    let (backend, rec) = spawn_recorder().await;
    let proxy = spawn_proxy(backend, "", "").await;
    for raw in [
        &b"POST /a HTTP/1.1\r\nhost: voice.example\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: voice.example\r\n\r\n"[..],
        &b"POST /a HTTP/1.1\r\nhost: voice.example\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: voice.example\r\n\r\n"[..],
    ] {
        let before = rec.requests().len();
        let reply = exchange(&proxy, raw).await;
        assert_eq!(statuses(&reply), ["200"], "{reply}");
        assert!(reply.to_ascii_lowercase().contains("connection: close"), "{reply}");
        let seen = rec.requests()[before..].to_vec();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].path_and_query, "/a");
        assert_eq!(&seen[0].body[..], b"hello");
        assert!(seen[0].complete);
        let lengths: Vec<_> = seen[0].headers.get_all("content-length").iter().collect();
        assert!(lengths.is_empty() || lengths == ["5"], "{lengths:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_but_unambiguous_forms_are_forwarded_normalised() {
    // Bare LF line ends (RFC 9112 §2.2 lets a recipient accept them) and a repeated identical
    // Content-Length (§6.3) have one reading; the backend gets a re-serialised CRLF request with a
    // single length.
    let (backend, rec) = spawn_recorder().await;
    let proxy = spawn_proxy(backend, "", "").await;
    let reply = exchange(
        &proxy,
        b"GET /lf HTTP/1.1\nhost: voice.example\nx-a: b\nconnection: close\n\n",
    )
    .await;
    assert_eq!(statuses(&reply), ["200"], "{reply}");
    let reply = exchange(
        &proxy,
        b"POST /twice HTTP/1.1\r\nhost: voice.example\r\ncontent-length: 5\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(statuses(&reply), ["200"], "{reply}");
    let seen = rec.requests();
    assert_eq!(seen[0].path_and_query, "/lf");
    assert_eq!(seen[0].headers["x-a"], "b");
    assert_eq!(seen[1].path_and_query, "/twice");
    assert_eq!(&seen[1].body[..], b"hello");
    let lengths: Vec<_> = seen[1].headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_never_reach_the_backend() {
    let (backend, rec) = spawn_recorder().await;
    let proxy = spawn_proxy(backend, "", "").await;
    let head = "host: voice.example\r\n";
    let ten_thousand: String = (0..10_000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases = [
        (
            "a 70 KB URI",
            format!("GET /{} HTTP/1.1\r\n{head}\r\n", "a".repeat(70_000)),
        ),
        (
            "a 20 KB header",
            format!(
                "GET / HTTP/1.1\r\n{head}x-a: {}\r\n\r\n",
                "a".repeat(20_000)
            ),
        ),
        (
            "a 25 KB cookie",
            format!(
                "GET / HTTP/1.1\r\n{head}cookie: {}\r\n\r\n",
                "a=b; ".repeat(5_000)
            ),
        ),
        (
            "10,000 headers",
            format!("GET / HTTP/1.1\r\n{head}{ten_thousand}\r\n"),
        ),
        (
            "101 small headers",
            format!(
                "GET / HTTP/1.1\r\n{head}{}\r\n",
                &ten_thousand[..ten_thousand.match_indices("x-h100:").next().unwrap().0]
            ),
        ),
    ];
    for (name, raw) in &cases {
        let reply = exchange(&proxy, raw.as_bytes()).await;
        assert_eq!(
            statuses(&reply),
            ["431"],
            "{name}: {}",
            &reply[..reply.len().min(200)]
        );
    }
    assert!(rec.requests().is_empty(), "{:?}", rec.requests().len());
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_http_malformed_requests_total{reason="head_too_large"} 5"#),
        "{metrics}"
    );
}

/// Sends a `mib` MiB chunked upload to the default route while reading the reply, as curl would:
/// the proxy answers 413 and closes before the client has finished writing.
async fn chunked_upload(addr: std::net::SocketAddr, ca: &[u8], mib: usize) -> String {
    let tls = tls_connect(
        addr,
        tls_config(&[ca], &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    let (mut rx, mut tx) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let head =
            b"POST /upload HTTP/1.1\r\nhost: voice.example\r\ntransfer-encoding: chunked\r\n\r\n";
        tx.write_all(head).await?;
        let chunk = [
            format!("{:x}\r\n", 64 * 1024).into_bytes(),
            vec![b'a'; 64 * 1024],
            b"\r\n".to_vec(),
        ]
        .concat();
        for _ in 0..mib * 16 {
            tx.write_all(&chunk).await?;
        }
        tx.write_all(b"0\r\n\r\n").await
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(Duration::from_secs(5), rx.read(&mut buf)).await
    {
        out.extend_from_slice(&buf[..n]);
    }
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

/// The proxy process's resident set, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_are_refused_or_streamed_with_flat_memory() {
    use crate::support::client::{h1, read};
    let dir = tempfile::tempdir().unwrap();
    let big_route = "\n[[route]]\nname = \"big\"\nhost = \"big.example\"\npath_prefix = \"/\"\nupstream = \"voice\"\nmax_body_bytes = 67108864\n";
    let backend = crate::support::backend::spawn_backend().await;
    let text = crate::support::config_text(dir.path(), backend, "", big_route);
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut running = crate::lifecycle::start(&config, &dir.path().join("data")).await;
    let pid = running.child.id().unwrap();

    let post = |host: &str, mib: usize| {
        http::Request::builder()
            .method(http::Method::POST)
            .uri("/upload")
            .header("host", host)
            .body(crate::http::streamed_body(mib * 16, 64 * 1024))
            .unwrap()
    };
    // Warm up: one streamed body through, so buffers and the upstream pool exist.
    let mut send = h1(running.tls, &running.ca).await;
    let (status, _, body) = read(send.send_request(post("big.example", 1)).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "received 1048576"));
    let before = rss_kib(pid);

    let reply = exchange_at(
        running.tls,
        &running.ca,
        b"POST /upload HTTP/1.1\r\nhost: voice.example\r\ncontent-length: 10737418240\r\n\r\nhello",
    )
    .await;
    assert_eq!(statuses(&reply), ["413"], "a 10 GB Content-Length: {reply}");
    for _ in 0..3 {
        let reply = chunked_upload(running.tls, &running.ca, 20).await;
        assert_eq!(
            statuses(&reply),
            ["413"],
            "20 MB chunked past the 10 MiB default cap"
        );
        let mut send = h1(running.tls, &running.ca).await;
        let (status, _, body) =
            read(send.send_request(post("big.example", 20)).await.unwrap()).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "received 20971520"),
            "20 MB chunked streamed on a 64 MiB route"
        );
    }
    let after = rss_kib(pid);
    eprintln!("proxy RSS {before} KiB before, {after} KiB after 60 MB streamed and 60 MB refused");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} to {after} KiB: a body was buffered"
    );
    assert_eq!(crate::lifecycle::terminate(&mut running).await, Some(0));
}

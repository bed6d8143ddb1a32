//! HTTP proxying: h1 and h2, streaming, headers, routing, limits, upstream failures.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::backend::spawn_backend;
use crate::support::client::{
    self, BoxBody, get, h1, h2, https_get, read, tls_config, tls_connect,
};
use crate::support::{admin_get, closed_port, spawn_proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_over_http11_and_h2() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let mut one = h1(proxy.tls, &proxy.ca_pem).await;
    let (status, headers, body) = read(one.send_request(get("/headers?x=1")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("GET /headers?x=1 HTTP/1.1"), "{body}");
    assert_eq!(headers["x-backend-end"], "1");

    let mut two = h2(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .uri("https://localhost/headers")
        .body(client::empty())
        .unwrap();
    let res = two.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let (status, _, body) = read(res).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("host: localhost"),
        "h2 :authority becomes Host upstream: {body}"
    );
}

pub(crate) fn streamed_body(chunks: usize, chunk_size: usize) -> BoxBody {
    let stream = futures_util::stream::iter((0..chunks).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(Bytes::from(
            vec![b'a'; chunk_size],
        )))
    }));
    StreamBody::new(stream).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_8_mib_post_arrives_whole_over_h1_and_h2() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let mut one = h1(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/upload")
        .header("host", "localhost")
        .body(streamed_body(128, 64 * 1024))
        .unwrap();
    let (status, _, body) = read(one.send_request(req).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "received 8388608"));

    let mut two = h2(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("https://localhost/upload")
        .body(streamed_body(128, 64 * 1024))
        .unwrap();
    let (status, _, body) = read(two.send_request(req).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "received 8388608"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mib_response_arrives_byte_exact_over_h1_and_h2() {
    // Responses are written through one buffer per write (no vectored writes): a large body must
    // still come out whole and in order.
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let expected = crate::support::backend::download_body();
    let mut one = h1(proxy.tls, &proxy.ca_pem).await;
    let mut two = h2(proxy.tls, &proxy.ca_pem).await;
    let over_h1 = Request::get("/download").header("host", "localhost");
    let over_h2 = Request::get("https://localhost/download");
    let answers = [
        (
            "h1",
            one.send_request(over_h1.body(client::empty()).unwrap())
                .await,
        ),
        (
            "h2",
            two.send_request(over_h2.body(client::empty()).unwrap())
                .await,
        ),
    ];
    for (protocol, answer) in answers {
        let res = answer.unwrap();
        assert_eq!(res.status(), 200, "{protocol}");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let len = body.len();
        assert!(
            body == expected,
            "{protocol}: {len} bytes, not the 8 MiB sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let mut send = h1(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .uri("/headers")
        .header("host", "voice.example.com")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "client-chosen")
        .header("x-end-to-end", "kept")
        .body(client::empty())
        .unwrap();
    let (status, headers, body) = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(status, 200);
    let upstream_saw = body.to_lowercase();
    for gone in [
        "x-client-hop",
        "keep-alive",
        "te:",
        "proxy-authorization",
        "connection: x-client-hop",
    ] {
        assert!(
            !upstream_saw.contains(gone),
            "{gone} reached the upstream:\n{body}"
        );
    }
    assert!(upstream_saw.contains("x-end-to-end: kept"), "{body}");
    assert!(
        upstream_saw.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1"),
        "{body}"
    );
    assert!(upstream_saw.contains("x-forwarded-proto: https"), "{body}");
    assert!(
        upstream_saw.contains("x-forwarded-host: voice.example.com"),
        "{body}"
    );
    assert!(
        upstream_saw.contains("host: voice.example.com"),
        "Host preserved: {body}"
    );
    assert!(upstream_saw.contains("x-request-id: "), "{body}");
    assert!(!upstream_saw.contains("client-chosen"), "{body}");

    // And on the way back.
    assert!(
        !headers.contains_key("server"),
        "upstream Server header must not be advertised"
    );
    assert!(!headers.contains_key("x-backend-hop"));
    assert!(!headers.contains_key("keep-alive"));
    assert_eq!(headers["x-backend-end"], "1");
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(headers["x-content-type-options"], "nosniff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_rewritten_when_the_route_says_so() {
    let backend = spawn_backend().await;
    let proxy = spawn_proxy(backend, "", "preserve_host = false").await;
    let (_, _, body) = https_get(proxy.tls, &proxy.ca_pem, "/headers").await;
    assert!(body.contains(&format!("host: {backend}")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_selects_the_route_and_no_match_is_404() {
    let a = spawn_backend().await;
    let b = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"
[admin]
listen = "127.0.0.1:0"
[[upstream]]
name = "a"
url = "http://{a}"
[[upstream]]
name = "b"
url = "http://{b}"
[[route]]
name = "voice"
path_prefix = "/voice/"
upstream = "a"
[[route]]
name = "voice-status"
path_prefix = "/voice/status"
upstream = "b"
"#,
        dir.path().join("data").display()
    );
    let proxy = crate::support::spawn_proxy_with(dir, &text).await;
    let (status, _, _) = https_get(proxy.tls, &proxy.ca_pem, "/voice/status/headers").await;
    assert_eq!(status, 200);
    let (status, _, _) = https_get(proxy.tls, &proxy.ca_pem, "/voice/other").await;
    assert_eq!(status, 200);
    let (status, headers, body) = https_get(proxy.tls, &proxy.ca_pem, "/elsewhere").await;
    assert_eq!(status, 404);
    assert_eq!(body, "Not Found\n");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_http_requests_total{route="voice-status",status="2xx"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"voxguard_http_requests_total{route="voice",status="2xx"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"voxguard_http_requests_total{route="none",status="4xx"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_route_limit_is_413_by_length_and_mid_stream() {
    let proxy = spawn_proxy(spawn_backend().await, "", "max_body_bytes = 1000").await;
    let mut send = h1(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/upload")
        .header("host", "localhost")
        .header("content-length", "5000")
        .body(
            http_body_util::Full::new(Bytes::from(vec![b'x'; 5000]))
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap();
    let (status, _, _) = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(status, 413);

    let mut send = h1(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/upload")
        .header("host", "localhost")
        .body(streamed_body(10, 500))
        .unwrap();
    let (status, _, _) = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(status, 413, "chunked body passing the cap mid-stream");
}

async fn raw_tls(
    proxy: &crate::support::TestProxy,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect(
        proxy.tls,
        tls_config(&[&proxy.ca_pem], &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let proxy = spawn_proxy(spawn_backend().await, "max_header_bytes = 4096", "").await;
    let mut tls = raw_tls(&proxy).await;
    let big = "a".repeat(8000);
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: localhost\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let n = tls.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off_by_the_header_read_timeout() {
    let proxy = spawn_proxy(spawn_backend().await, "header_read_timeout = \"500ms\"", "").await;
    let mut tls = raw_tls(&proxy).await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: local")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
    let n = read
        .expect("the proxy must close a slow client")
        .unwrap_or(0);
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || reply.starts_with("HTTP/1.1 408"),
        "unexpected reply {reply}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

/// Reads until the proxy closes the connection (or 10 s pass); returns what arrived.
async fn read_until_closed(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    // A close without TLS close_notify is an error here; what arrived before it is kept.
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
        .await
        .expect("the proxy must close the connection")
        .ok();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_after_a_keepalive_request_is_cut_off_too() {
    let proxy = spawn_proxy(
        spawn_backend().await,
        "header_read_timeout = \"500ms\"\nkeepalive_timeout = \"60s\"",
        "",
    )
    .await;
    let mut tls = raw_tls(&proxy).await;
    tls.write_all(b"GET /headers HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The response's body may still be arriving; the next head then stalls half-way.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: local")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let rest = read_until_closed(&mut tls).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        !text.contains("HTTP/1.1 ") || text.contains("HTTP/1.1 408"),
        "a second response other than 408: {text}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keepalive_connection_is_closed() {
    let proxy = spawn_proxy(spawn_backend().await, "keepalive_timeout = \"300ms\"", "").await;
    let mut tls = raw_tls(&proxy).await;
    tls.write_all(b"GET /headers HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let got = read_until_closed(&mut tls).await;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed once idle, not at once"
    );
}

/// A proxy whose upstream times out fast: 100 ms to connect, 300 ms to the response head.
async fn proxy_with_short_timeouts(backend: std::net::SocketAddr) -> crate::support::TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let text = crate::support::config_text(dir.path(), backend, "", "")
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"100ms\"")
        .replace("response_timeout = \"2s\"", "response_timeout = \"300ms\"");
    crate::support::spawn_proxy_with(dir, &text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    let proxy = spawn_proxy(closed_port(), "", "").await;
    let (status, _, body) = https_get(proxy.tls, &proxy.ca_pem, "/headers").await;
    assert_eq!(status, 502);
    assert_eq!(body, "Bad Gateway\n", "generic body, no detail");

    let backend = spawn_backend().await;
    let proxy = proxy_with_short_timeouts(backend).await;
    let (status, _, _) = https_get(proxy.tls, &proxy.ca_pem, "/slow").await;
    assert_eq!(status, 504);
    // Over h2 too, where each stream runs in a task of its own (not the connection's).
    let mut two = h2(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .uri("https://localhost/slow")
        .body(client::empty())
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), two.send_request(req)).await;
    assert_eq!(
        answered.expect("an answer, not a hang").unwrap().status(),
        504
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_upstream_errors_total{reason="timeout",upstream="voice"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_drain_starts_still_gets_its_504() {
    let proxy = proxy_with_short_timeouts(spawn_backend().await).await;
    let (tls, ca) = (proxy.tls, proxy.ca_pem.clone());
    let in_flight = tokio::spawn(async move { https_get(tls, &ca, "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _dir = proxy.dir;
    let drain = tokio::spawn(proxy.app.shutdown());
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the upstream's response timeout still applies while draining")
        .unwrap();
    assert_eq!(status, 504);
    assert!(drain.await.unwrap(), "the drain finishes clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408_and_the_upstream_is_not_blamed() {
    let backend = spawn_backend().await;
    let proxy = proxy_with_short_timeouts(backend).await;

    // Declares 100 bytes, sends 10, then goes quiet: the backend is still reading the body.
    let mut tls = raw_tls(&proxy).await;
    tls.write_all(
        b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut reply))
        .await
        .expect("answered and closed in bounded time")
        .ok();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );

    // Over h2 the same: a stream whose DATA stops coming gets 408.
    let mut two = h2(proxy.tls, &proxy.ca_pem).await;
    let stalled = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            http_body::Frame::data(Bytes::from_static(b"0123456789")),
        )]),
        futures_util::stream::pending(),
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("https://localhost/upload")
        .body(StreamBody::new(stalled).boxed())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), two.send_request(req))
        .await
        .expect("answered in bounded time")
        .unwrap();
    assert_eq!(res.status(), 408, "h2 stream with a stalled body");

    // The same timeout with the whole body sent is the backend's: 504, counted against it.
    let mut tls = raw_tls(&proxy).await;
    tls.write_all(
        b"POST /slow HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut head))
        .await
        .expect("answered in bounded time")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");

    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_upstream_errors_total{reason="timeout",upstream="voice"} 1"#),
        "only the slow backend counts as an upstream timeout:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"voxguard_http_requests_total{route="default",status="4xx"} 2"#),
        "the stalled bodies count as the client's 4xx:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_is_503_with_retry_after() {
    let proxy = spawn_proxy(spawn_backend().await, "max_connections = 1", "").await;
    let mut first = h1(proxy.tls, &proxy.ca_pem).await;
    let (status, _, _) = read(first.send_request(get("/headers")).await.unwrap()).await;
    assert_eq!(status, 200);
    let (status, headers, _) = https_get(proxy.tls, &proxy.ca_pem, "/headers").await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_connections_rejected_total{reason="max_connections"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("voxguard_active_connections 2")
            || metrics.contains("voxguard_active_connections 1"),
        "{metrics}"
    );
}

/// A connection refused with 503 still counts against the limit until it closes: a client that
/// finished its handshake and has not sent its request yet must not free a place for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_counts_against_the_limit_until_it_closes() {
    let proxy = spawn_proxy(spawn_backend().await, "max_connections = 1", "").await;
    let active = |n: u32| {
        let admin = proxy.admin;
        async move {
            for _ in 0..100 {
                let (_, metrics) = admin_get(admin, "/metrics").await;
                if metrics.contains(&format!("voxguard_active_connections {n}\n")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("voxguard_active_connections never reached {n}");
        }
    };
    let mut first = h1(proxy.tls, &proxy.ca_pem).await;
    let (status, _, _) = read(first.send_request(get("/headers")).await.unwrap()).await;
    assert_eq!(status, 200);
    // Over the limit: handshaken, its request not sent yet.
    let refused = h1(proxy.tls, &proxy.ca_pem).await;
    active(2).await;
    drop(first);
    active(1).await;
    let (status, _, _) = https_get(proxy.tls, &proxy.ca_pem, "/headers").await;
    assert_eq!(
        status, 503,
        "the refused connection still holds the only place"
    );
    drop(refused);
    active(0).await;
    let (status, _, _) = https_get(proxy.tls, &proxy.ca_pem, "/headers").await;
    assert_eq!(status, 200, "and gives it back when it closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed() {
    let proxy = spawn_proxy(spawn_backend().await, "keepalive_timeout = \"300ms\"", "").await;
    let mut two = h2(proxy.tls, &proxy.ca_pem).await;
    let req = Request::builder()
        .uri("https://localhost/headers")
        .body(client::empty())
        .unwrap();
    assert_eq!(read(two.send_request(req).await.unwrap()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        two.is_closed() || two.ready().await.is_err(),
        "idle h2 connection must be closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_listener_redirects_to_https() {
    let proxy = spawn_proxy(
        spawn_backend().await,
        "http_redirect_listen = \"127.0.0.1:0\"",
        "",
    )
    .await;
    let addr = proxy.app.addrs.redirect.unwrap();
    let (status, headers, _) = client::plain_request(addr, Method::GET, "/voice/x?y=1").await;
    assert_eq!(status, 308);
    assert_eq!(
        headers["location"],
        format!("https://localhost:{}/voice/x?y=1", proxy.tls.port())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_page_over_tls13_and_http2() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let ca = proxy.dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--tlsv1.3", "--http2", "--cacert"])
        .arg(&ca)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(format!("https://localhost:{}/headers", proxy.tls.port()))
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("200 2"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let (backend, backend_ca) = crate::support::backend::spawn_tls_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, &backend_ca).unwrap();
    let text = crate::support::config_text(dir.path(), backend, "", "").replace(
        &format!("url = \"http://{backend}\""),
        &format!(
            "url = \"https://{backend}\"\nca_file = \"{}\"",
            ca_path.display()
        ),
    );
    let proxy = crate::support::spawn_proxy_with(dir, &text).await;
    let (status, _, body) = https_get(proxy.tls, &proxy.ca_pem, "/headers").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    // Without the CA the upstream's certificate is not trusted: 502, never an unverified connection.
    let (backend, _) = crate::support::backend::spawn_tls_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = crate::support::config_text(dir.path(), backend, "", "").replace(
        &format!("url = \"http://{backend}\""),
        &format!("url = \"https://{backend}\""),
    );
    let proxy = crate::support::spawn_proxy_with(dir, &text).await;
    assert_eq!(https_get(proxy.tls, &proxy.ca_pem, "/headers").await.0, 502);
}

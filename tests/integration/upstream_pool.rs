//! The upstream connection pool, seen from the backend: keep-alive connections are reused, a
//! connection the backend closed costs no request, a half-read response is never reused, idle
//! connections are closed after `pool_idle_timeout` (or when the backend closes them), concurrent
//! clients each get their own responses, and an IPv6 literal upstream works.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::backend::{raw_backend, read_head};
use crate::support::client::{get, h1, read};
use crate::support::{TestProxy, config_text, spawn_proxy_with};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Answers `ok` to every request on a connection until the proxy closes it; `/big` gets 4 MiB.
async fn keep_alive(mut tcp: TcpStream) {
    loop {
        let head = read_head(&mut tcp).await;
        if head.is_empty() {
            return;
        }
        let sent = if head.starts_with("GET /big ") {
            let body = vec![b'x'; 4 << 20];
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            match tcp.write_all(head.as_bytes()).await {
                Ok(()) => tcp.write_all(&body).await,
                Err(e) => Err(e),
            }
        } else {
            tcp.write_all(OK).await
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A backend whose accepted connections are counted.
async fn counting_backend<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let addr = raw_backend(move |tcp| {
        counter.fetch_add(1, Ordering::SeqCst);
        serve(tcp)
    })
    .await;
    (addr, accepted)
}

/// A backend that answers one request per connection, closes its side `hang_up_after` later if
/// given, then waits for the proxy to close the connection. It reports the bytes it read after
/// its answer and the time from its answer (or its close) to the proxy's close.
async fn answers_once_then_waits_for_the_close(
    hang_up_after: Option<Duration>,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<(usize, Duration)>,
) {
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    let (backend, accepted) = counting_backend(move |mut tcp| {
        let closed_tx = closed_tx.clone();
        async move {
            read_head(&mut tcp).await;
            tcp.write_all(OK).await.unwrap();
            if let Some(after) = hang_up_after {
                tokio::time::sleep(after).await;
                tcp.shutdown().await.unwrap();
            }
            let since = Instant::now();
            let mut rest = [0u8; 64];
            // The proxy sends nothing more; the read ends when it closes the connection.
            let n = tcp.read(&mut rest).await.unwrap_or(0);
            let _ = closed_tx.send((n, since.elapsed()));
        }
    })
    .await;
    (backend, accepted, closed_rx)
}

/// How long after the backend's answer (or close) the proxy closed the connection, having sent
/// nothing more on it.
async fn proxy_closed_it(closed_rx: &mut mpsc::UnboundedReceiver<(usize, Duration)>) -> Duration {
    let (bytes, after) = tokio::time::timeout(Duration::from_secs(10), closed_rx.recv())
        .await
        .expect("the proxy closes the connection within 10 s")
        .unwrap();
    assert_eq!(bytes, 0, "closed, nothing more sent on it");
    after
}

async fn proxy_with_upstream(backend: SocketAddr, upstream_extra: &str) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), backend, "", "").replace(
        "response_timeout = \"2s\"",
        &format!("response_timeout = \"2s\"\n{upstream_extra}"),
    );
    spawn_proxy_with(dir, &text).await
}

async fn get_ok(proxy: &TestProxy, path: &str) -> (u16, String) {
    let mut client = h1(proxy.tls, &proxy.ca_pem).await;
    let (status, _, body) = read(client.send_request(get(path)).await.unwrap()).await;
    (status, body)
}

/// Sends `n` GETs one after another on one client connection; each must get `200 ok`.
async fn all_ok_on_one_client(proxy: &TestProxy, n: usize) {
    let mut client = h1(proxy.tls, &proxy.ca_pem).await;
    for i in 0..n {
        let (status, _, body) = read(client.send_request(get("/")).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
}

#[tokio::test]
async fn sequential_requests_share_one_backend_connection() {
    let (backend, accepted) = counting_backend(keep_alive).await;
    let proxy = proxy_with_upstream(backend, "").await;
    all_ok_on_one_client(&proxy, 20).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one keep-alive connection"
    );
}

#[tokio::test]
async fn a_backend_that_closes_after_each_response_costs_no_request() {
    // No `Connection: close`: the backend just hangs up after answering, as an idle timeout does.
    let (backend, accepted) = counting_backend(|mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp.write_all(OK).await;
    })
    .await;
    let proxy = proxy_with_upstream(backend, "").await;
    all_ok_on_one_client(&proxy, 30).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn a_half_read_response_never_serves_the_next_request() {
    let (backend, accepted) = counting_backend(keep_alive).await;
    let proxy = proxy_with_upstream(backend, "").await;
    {
        let mut client = h1(proxy.tls, &proxy.ca_pem).await;
        let res = client.send_request(get("/big")).await.unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
        // Client and response dropped here, 4 MiB unread.
    }
    for i in 0..5 {
        let (status, body) = get_ok(&proxy, "/").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the cut-off connection was replaced once, and the new one reused"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_pool_idle_timeout() {
    let (backend, accepted, mut closed_rx) = answers_once_then_waits_for_the_close(None).await;
    let proxy = proxy_with_upstream(backend, "pool_idle_timeout = \"400ms\"").await;
    assert_eq!(get_ok(&proxy, "/").await, (200, "ok".to_string()));
    let idle_for = proxy_closed_it(&mut closed_rx).await;
    assert!(
        idle_for >= Duration::from_millis(350),
        "kept for the idle timeout first: {idle_for:?}"
    );
    assert_eq!(get_ok(&proxy, "/").await, (200, "ok".to_string()));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_ipv6_literal_upstream_is_reached_with_its_host_header() {
    let listener = TcpListener::bind("[::1]:0").await.expect("::1 is up");
    let backend = listener.local_addr().unwrap();
    let (head_tx, mut head_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        head_tx.send(read_head(&mut tcp).await).unwrap();
        tcp.write_all(OK).await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), backend, "", "preserve_host = false");
    let proxy = spawn_proxy_with(dir, &text).await;
    assert_eq!(get_ok(&proxy, "/v6?q=1").await, (200, "ok".to_string()));
    let head = head_rx.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /v6?q=1 http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nhost: [::1]:{}\r\n", backend.port())),
        "{head}"
    );
}

#[tokio::test]
async fn a_pooled_connection_carries_a_websocket_upgrade_and_is_then_never_reused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let backend = crate::support::backend::spawn_backend().await;
    let proxy = proxy_with_upstream(backend, "").await;
    // Leaves one idle keep-alive connection in the pool, which the upgrade below takes.
    assert_eq!(get_ok(&proxy, "/headers").await.0, 200);
    let (mut ws, _) = crate::support::client::ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &[])
        .await
        .expect("the upgrade goes through");
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    // Had the upgraded socket gone back to the pool, this request would be written into the
    // WebSocket stream and never answered. (Two guards: the pool keeps no sender past a 101, and
    // hyper's sender never turns ready again after an upgrade.)
    for _ in 0..3 {
        let (status, body) = get_ok(&proxy, "/headers").await;
        assert_eq!(status, 200, "{body}");
    }
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("two"));
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_closed_before_it_would_expire() {
    // The socket must not sit in CLOSE_WAIT until its idle timeout: each pooled connection's task
    // notices the backend's close at once (a design without that task needs the reaper, every
    // half idle period, to look, and this bound still holds). The backend's FIN comes long after
    // the proxy has pooled the connection, as a backend's own idle timeout would send it.
    let hang_up_after = Duration::from_millis(500);
    let (backend, _, mut closed_rx) =
        answers_once_then_waits_for_the_close(Some(hang_up_after)).await;
    let proxy = proxy_with_upstream(backend, "pool_idle_timeout = \"6s\"").await;
    assert_eq!(get_ok(&proxy, "/").await, (200, "ok".to_string()));
    let closed_after = proxy_closed_it(&mut closed_rx).await;
    assert!(
        closed_after < Duration::from_millis(4500),
        "closed when the backend closed it (at the latest by the reaper, every 3 s), not at the 6 s expiry: {closed_after:?}"
    );
}

#[tokio::test]
async fn concurrent_clients_sharing_pooled_connections_each_get_their_own_response() {
    // Pooled connections move between client connections (and worker threads) from one request
    // to the next; a response must never reach another client's request.
    let (backend, accepted) = counting_backend(keep_alive_echo).await;
    let proxy = proxy_with_upstream(backend, "").await;
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (addr, ca) = (proxy.tls, proxy.ca_pem.clone());
            tokio::spawn(async move {
                let mut client = h1(addr, &ca).await;
                for i in 0..40 {
                    let path = format!("/client-{c}/request-{i}");
                    let (status, _, body) =
                        read(client.send_request(get(&path)).await.unwrap()).await;
                    assert_eq!((status, body), (200, path));
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=16).contains(&opened),
        "at most one backend connection per concurrent client: {opened}"
    );
}

/// Answers every request on a connection with its own request target, until the proxy closes it.
async fn keep_alive_echo(mut tcp: TcpStream) {
    loop {
        let head = read_head(&mut tcp).await;
        let Some(target) = head.split(' ').nth(1) else {
            return;
        };
        let res = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{target}",
            target.len()
        );
        if tcp.write_all(res.as_bytes()).await.is_err() {
            return;
        }
    }
}

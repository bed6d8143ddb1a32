//! Real clients: rustls over TCP, hyper's HTTP/1.1 and h2 client connections, tungstenite.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn roots(ca_pems: &[&[u8]]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    roots
}

pub fn tls_config(
    ca_pems: &[&[u8]],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots(ca_pems))
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, cfg).await
}

/// A TLS handshake for `localhost` on a connection already open (after raw bytes, or queued).
pub async fn tls_over(
    tcp: TcpStream,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Like [`tls_connect`], from a chosen loopback source address (127.0.0.2, 127.0.0.3, …).
pub async fn tls_connect_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    tls_over(socket.connect(addr).await?, cfg).await
}

/// A TLS 1.3 HTTP/1.1 connection from `source`; `None` if the proxy refused or closed it.
pub async fn h1_from(
    source: &str,
    addr: SocketAddr,
    ca: &[u8],
) -> Option<hyper::client::conn::http1::SendRequest<BoxBody>> {
    let cfg = tls_config(&[ca], &[b"http/1.1"], &[&rustls::version::TLS13]);
    let tls = tls_connect_from(source.parse().unwrap(), addr, cfg)
        .await
        .ok()?;
    Some(h1_over(tls).await)
}

/// One GET from `source` with extra headers; `None` if the connection was refused or closed.
pub async fn get_from(
    source: &str,
    addr: SocketAddr,
    ca: &[u8],
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut send = h1_from(source, addr, ca).await?;
    let mut req = get(path);
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let res = send.send_request(req).await.ok()?;
    let (status, _, body) = read(res).await;
    Some((status, body))
}

/// A TLS 1.3 HTTP/1.1 connection to the proxy.
pub async fn h1(addr: SocketAddr, ca: &[u8]) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let tls = tls_connect(
        addr,
        tls_config(&[ca], &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    h1_over(tls).await
}

pub async fn h1_over<S>(io: S) -> hyper::client::conn::http1::SendRequest<BoxBody>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

/// A TLS 1.3 h2 connection to the proxy.
pub async fn h2(addr: SocketAddr, ca: &[u8]) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let tls = tls_connect(
        addr,
        tls_config(&[ca], &[b"h2"], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

pub fn empty() -> BoxBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pub fn get(path: &str) -> Request<BoxBody> {
    Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(empty())
        .unwrap()
}

/// Reads a whole response.
pub async fn read(res: http::Response<hyper::body::Incoming>) -> (u16, HeaderMap, String) {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// One request on a fresh HTTP/1.1 TLS connection.
pub async fn https_get(addr: SocketAddr, ca: &[u8], path: &str) -> (u16, HeaderMap, String) {
    let mut send = h1(addr, ca).await;
    read(send.send_request(get(path)).await.unwrap()).await
}

/// One POST with `headers` and `body` on a fresh HTTP/1.1 TLS connection.
pub async fn https_post(
    addr: SocketAddr,
    ca: &[u8],
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HeaderMap, String) {
    let mut send = h1(addr, ca).await;
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = http_body_util::Full::new(Bytes::copy_from_slice(body))
        .map_err(|never| match never {})
        .boxed();
    read(send.send_request(req.body(body).unwrap()).await.unwrap()).await
}

/// One plain-HTTP request (admin listener, redirect listener).
pub async fn plain_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> (u16, HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut send = h1_over(tcp).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    read(send.send_request(req).await.unwrap()).await
}

pub type Ws = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// A WebSocket client through the proxy (wss, HTTP/1.1).
pub async fn ws_connect(
    addr: SocketAddr,
    ca: &[u8],
    path: &str,
    extra: &[(&str, &str)],
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tls = tls_connect(
        addr,
        tls_config(&[ca], &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    let mut req = format!("wss://localhost{path}")
        .into_client_request()
        .unwrap();
    for (k, v) in extra {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::client_async(req, tls).await
}

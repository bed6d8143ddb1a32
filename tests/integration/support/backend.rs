//! A real HTTP/1.1 backend with WebSocket echo, for the proxy to forward to.
//!
//! Paths: `/headers` answers with the request head as text; `/upload` counts the streamed body;
//! `/slow` answers after 1.5 s; `/ws` is a WebSocket echo (text `close-me` makes it close with 4001).
//! Every response carries `Server`, and hop-by-hop headers the proxy must strip.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

/// A backend that runs `serve` on every connection it accepts.
pub async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = super::backend_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// Reads one request head.
pub async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub async fn spawn_backend() -> SocketAddr {
    let listener = super::backend_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// The same backend behind TLS, with a fresh self-signed certificate for 127.0.0.1 (returned as PEM).
pub async fn spawn_tls_backend() -> (SocketAddr, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = super::backend_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls).await;
                }
            });
        }
    });
    (addr, cert.cert.pem().into_bytes())
}

/// One backend connection: HTTP/1.1 with upgrades, over plain TCP or TLS.
async fn serve<I>(io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(handle);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::SERVER,
        "backend/1.0 secret-version".parse().unwrap(),
    );
    h.insert(header::CONNECTION, "x-backend-hop".parse().unwrap());
    h.insert("x-backend-hop", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("x-backend-end", "1".parse().unwrap());
    res
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/ws") {
        return Ok(upgrade(&mut req));
    }
    match path.as_str() {
        "/upload" => {
            let mut total = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len()),
                    Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "broken body".into())),
                }
            }
            Ok(text(StatusCode::OK, format!("received {total}")))
        }
        "/download" => Ok(Response::new(Full::new(download_body()))),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(text(StatusCode::OK, "slow done".into()))
        }
        _ => {
            let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Ok(text(StatusCode::OK, out))
        }
    }
}

/// What `/download` answers: 8 MiB whose bytes depend on their offset, so a byte lost, repeated or
/// reordered on the way shows.
pub fn download_body() -> Bytes {
    (0..8 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn upgrade(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket handshake".into());
    };
    let offered_extensions = req.headers().contains_key(header::SEC_WEBSOCKET_EXTENSIONS);
    let protocol = req.headers().get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if offered_extensions {
            let _ = ws.send(Message::text("extensions-offered")).await;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(&msg, Message::Text(t) if t.as_str() == "close-me") {
                let frame = CloseFrame {
                    code: CloseCode::Library(4001),
                    reason: "bye".into(),
                };
                let _ = ws.close(Some(frame)).await;
            } else if matches!(msg, Message::Text(_) | Message::Binary(_))
                && ws.send(msg).await.is_err()
            {
                return;
            }
        }
    });
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
    h.insert(header::UPGRADE, "websocket".parse().unwrap());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    res
}

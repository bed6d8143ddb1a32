//! The benchmark's backend: `200 ok` for any HTTP request (the body is read and dropped) and a
//! WebSocket echo that returns every data message as it came. Both are as cheap as they can be, so
//! that the figures are the proxy's.

use std::net::SocketAddr;

use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Args)]
pub struct BackendArgs {
    /// The HTTP app's address (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// The WebSocket echo's address (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    ws: SocketAddr,
}

pub async fn run(args: BackendArgs) -> anyhow::Result<()> {
    for addr in [args.http, args.ws] {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the backend listens on loopback only"
        );
    }
    // voxguard's backlog, not tokio's 128: a burst of calls must not lose SYNs at the backend.
    let http = voxguard::net::listener::bind(args.http)?;
    let ws = voxguard::net::listener::bind(args.ws)?;
    // compare.sh reads these two lines to learn the ports.
    println!("http {}", http.local_addr()?);
    println!("ws {}", ws.local_addr()?);
    tokio::spawn(serve_ws(ws));
    loop {
        let (tcp, _) = http.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn serve_ws(listener: TcpListener) {
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            let (sink, stream) = ws.split();
            // `forward` batches: it flushes only when nothing more is ready to read.
            let _ = stream
                .filter(|m| {
                    std::future::ready(matches!(m, Ok(Message::Text(_) | Message::Binary(_))))
                })
                .forward(sink)
                .await;
        });
    }
}

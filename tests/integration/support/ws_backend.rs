//! A WebSocket backend for media tests: records every message it receives, and sends the messages a
//! test pushes (marks, media to the caller) on the same session.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub struct WsBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Message>>>,
    /// Messages to send to the caller (through the proxy) on the first session.
    pub to_caller: mpsc::UnboundedSender<Message>,
}

pub async fn spawn_ws_backend() -> WsBackend {
    let listener = super::backend_listener();
    let addr = listener.local_addr().unwrap();
    let received: Arc<Mutex<Vec<Message>>> = Arc::default();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    let seen = received.clone();
    tokio::spawn(async move {
        // The first session gets the pushed messages; later ones (more calls) only record.
        let mut rx = Some(rx);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(session(tcp, seen.clone(), rx.take()));
        }
    });
    WsBackend {
        addr,
        received,
        to_caller: tx,
    }
}

async fn session(
    tcp: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<Message>>>,
    mut rx: Option<mpsc::UnboundedReceiver<Message>>,
) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(m)) => seen.lock().unwrap().push(m),
            },
            Some(out) = async { rx.as_mut()?.recv().await }, if rx.is_some() => {
                if sink.send(out).await.is_err() {
                    return;
                }
            }
        }
    }
}

//! A backend that records every request exactly as it arrived (method, raw path and query, headers,
//! body bytes), so tests can assert what the proxy forwarded, byte for byte, or that nothing was.
//! A body that breaks off is recorded with `complete: false`.
//! A path containing `/flaky` answers 500 the first time it is seen and 200 after that.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// False when the body broke off (the forwarding side aborted it): not a request a backend
    /// would act on.
    pub complete: bool,
}

#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    flaky_seen: Arc<Mutex<HashSet<String>>>,
}

impl Recorder {
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let (body, complete) = match body.collect().await {
            Ok(b) => (b.to_bytes(), true),
            Err(_) => (Bytes::new(), false),
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        self.seen.lock().unwrap().push(Recorded {
            method: parts.method.to_string(),
            path_and_query: path_and_query.clone(),
            headers: parts.headers,
            body,
            complete,
        });
        let status = if path_and_query.contains("/flaky")
            && self.flaky_seen.lock().unwrap().insert(path_and_query)
        {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        let mut res = Response::new(Full::new(Bytes::from_static(b"recorded\n")));
        *res.status_mut() = status;
        Ok(res)
    }
}

pub async fn spawn_recorder() -> (SocketAddr, Recorder) {
    let listener = super::backend_listener();
    let addr = listener.local_addr().unwrap();
    let recorder = Recorder::default();
    let shared = recorder.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let r = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| r.clone().handle(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, recorder)
}

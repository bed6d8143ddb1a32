//! The admin listener: `/healthz` (alive), `/readyz` (503 while draining), `/metrics` (Prometheus),
//! all token-free, and the token-protected admin API under `/admin/` (`api.rs`). Loopback by default.

pub mod api;

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::proxy::body::{ProxyBody, full};
use crate::shutdown::Drain;

/// Serves until `stop` is cancelled (after the drain, so `/readyz` reports it).
pub async fn run(
    listener: TcpListener,
    metrics: Metrics,
    drain: Drain,
    api: Arc<api::AdminContext>,
    stop: tokio_util::sync::CancellationToken,
) {
    let state = Arc::new((metrics, drain, api));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    if req.uri().path().starts_with("/admin/") {
                        return Ok::<_, Infallible>(
                            api::handle(&state.2, req, peer.ip().to_canonical()).await,
                        );
                    }
                    Ok::<_, Infallible>(route(&req, &state.0, &state.1))
                }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn route(req: &Request<Incoming>, metrics: &Metrics, drain: &Drain) -> Response<ProxyBody> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if drain.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        "/readyz" => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "Not Found\n".into()),
    };
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

//! Forwards one request to its upstream and returns the upstream's response, streamed both ways.
//! A WebSocket handshake on a route that allows it is forwarded first; on the upstream's 101 the
//! client gets the upstream's answer and the session is handed to `ws::session`.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;

use crate::config::RouteConfig;
use crate::net::watchdog::{Activity, ResponseDeadline};
use crate::proxy::body::{BodyFate, BoxError, Limited, ProxyBody, ReadTimeout, empty};
use crate::proxy::headers;
use crate::proxy::pool::SendError;
use crate::proxy::upstream::Upstream;
use crate::respond::Rejection;

/// What `forward` needs from the connection and the request context.
pub struct ForwardCtx<'a> {
    /// The TCP peer: what this hop appends to `X-Forwarded-For`.
    pub peer: IpAddr,
    pub original_host: Option<&'a HeaderValue>,
    pub request_id: &'a str,
    /// The client connection: where the upstream's response timeout is watched.
    pub activity: &'a Arc<Activity>,
}

/// A forwarded response, plus the two upgrade halves when a WebSocket session must start.
pub struct Forwarded {
    pub response: Response<ProxyBody>,
    pub websocket: Option<(hyper::upgrade::OnUpgrade, hyper::upgrade::OnUpgrade)>,
}

/// `B` is the client's streamed body, or the buffered bytes of a verified webhook.
pub async fn forward<B>(
    route: &RouteConfig,
    upstream: &Upstream,
    mut req: Request<B>,
    ctx: ForwardCtx<'_>,
) -> Result<Forwarded, Rejection>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    if content_length(req.headers()).is_some_and(|len| len > route.max_body_bytes) {
        return Err(Rejection::BodyTooLarge);
    }
    let websocket = route.websocket
        && req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && headers::is_websocket_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    let headers = req.headers_mut();
    headers::remove_hop_by_hop(headers);
    headers::set_forwarded(headers, ctx.peer, ctx.original_host, ctx.request_id);
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // No compression: every message must stay inspectable.
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    let host = match (route.preserve_host, ctx.original_host) {
        (true, Some(host)) => host.clone(),
        _ => upstream.host_header.clone(),
    };
    headers.insert(header::HOST, host);
    *req.uri_mut() = Upstream::uri_for(req.uri().path_and_query());
    *req.version_mut() = Version::HTTP_11;

    // A request without a body (most GETs, every WebSocket handshake) needs no limit, and its
    // upstream request no allocation for one.
    let fate = (!req.body().is_end_stream()).then(|| Arc::new(BodyFate::default()));
    let req = req.map(|body| match &fate {
        None => empty(),
        Some(fate) => Limited::new(body, route.max_body_bytes, fate.clone()).boxed(),
    });
    let deadline = ctx.activity.response_deadline(upstream.response_timeout);
    let sent = Within {
        work: upstream.pool.send(req),
        deadline,
    }
    .await;
    let mut res = match sent {
        // The client stopped sending its body: the upstream is still waiting for it.
        Err(_) if fate.as_ref().is_some_and(|f| f.waiting_on_client()) => {
            return Err(Rejection::BodyTimeout);
        }
        Err(_) => return Err(Rejection::UpstreamTimeout),
        Ok(Err(_)) if fate.as_ref().is_some_and(|f| f.too_large()) => {
            return Err(Rejection::BodyTooLarge);
        }
        Ok(Err(_)) if fate.as_ref().is_some_and(|f| f.broken()) => return Err(Rejection::BadBody),
        Ok(Err(e)) => {
            tracing::warn!(route = %route.name, upstream = %upstream.name, error = %e, "upstream request failed");
            return Err(match e {
                SendError::Connect(_) => Rejection::UpstreamConnect,
                SendError::Protocol(_) => Rejection::UpstreamProtocol,
            });
        }
        Ok(Ok(res)) => res,
    };

    if let Some(client_upgrade) = client_upgrade
        && res.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut res);
        let (mut parts, _) = res.into_parts();
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        return Ok(Forwarded {
            response: Response::from_parts(parts, empty()),
            websocket: Some((client_upgrade, upstream_upgrade)),
        });
    }
    headers::remove_hop_by_hop(res.headers_mut());
    Ok(Forwarded {
        response: res.map(|body| ReadTimeout::new(body, upstream.read_timeout).boxed()),
        websocket: None,
    })
}

pin_project_lite::pin_project! {
    /// `work`'s output, or `Err(())` once `deadline` has passed first: `tokio::time::timeout`, with
    /// the deadline the connection watches instead of a timer registered with tokio per request.
    struct Within<F> {
        #[pin]
        work: F,
        #[pin]
        deadline: ResponseDeadline,
    }
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = Result<F::Output, ()>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(out) = this.work.poll(cx) {
            return std::task::Poll::Ready(Ok(out));
        }
        this.deadline.poll(cx).map(Err)
    }
}

/// The declared `Content-Length`, if it is decimal digits (surrounding spaces and tabs allowed)
/// that fit in a `u64`. Read from the bytes: a `str` check, a trim and `parse` cost ~300
/// instructions per request for four digits.
pub fn content_length(h: &http::HeaderMap) -> Option<u64> {
    let digits = h.get(header::CONTENT_LENGTH)?.as_bytes().trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(value: &[u8]) -> Option<u64> {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from_bytes(value).unwrap(),
        );
        content_length(&h)
    }

    #[test]
    fn content_length_reads_decimal_digits_and_nothing_else() {
        assert_eq!(content_length(&http::HeaderMap::new()), None);
        assert_eq!(declared(b"2048"), Some(2048));
        assert_eq!(declared(b"0"), Some(0));
        assert_eq!(declared(b" \t17 "), Some(17));
        assert_eq!(declared(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b"18446744073709551616"[..],
            b"",
            b" ",
            b"+5",
            b"-5",
            b"5 5",
            b"0x10",
            b"1e3",
            b"\xff",
        ] {
            assert_eq!(declared(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // The same answers as the `str` parse it replaces, over every short string of these bytes.
        let alphabet = b"09 +-a\t";
        for len in 0..=4 {
            let mut value = vec![0u8; len];
            for mut n in 0..alphabet.len().pow(len as u32) {
                for byte in value.iter_mut() {
                    *byte = alphabet[n % alphabet.len()];
                    n /= alphabet.len();
                }
                let old = std::str::from_utf8(&value)
                    .ok()
                    .map(str::trim)
                    .filter(|s| !s.starts_with('+'))
                    .and_then(|s| s.parse::<u64>().ok());
                assert_eq!(
                    declared(&value),
                    old,
                    "{:?}",
                    String::from_utf8_lossy(&value)
                );
            }
        }
    }
}

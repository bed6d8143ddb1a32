//! The only place where a rejection or a proxy failure becomes an HTTP response. Bodies are short
//! and generic; the reason goes to the log and metrics, never to the client.

use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy::body::{ProxyBody, full};

/// Why the proxy answered itself instead of relaying the upstream's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no route matches")]
    NoRoute,
    #[error("client address refused by the route's allow/deny list")]
    Forbidden,
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u32 },
    #[error("too many WebSocket sessions from this address on this route")]
    TooManySessions,
    #[error("request body larger than the route allows")]
    BodyTooLarge,
    #[error("request body did not arrive in time")]
    BodyTimeout,
    #[error("request body could not be read")]
    BadBody,
    #[error("request Host is missing, repeated, malformed or differs from the request target")]
    BadHost,
    #[error("webhook signature not verified")]
    BadSignature,
    #[error("webhook delivery already accepted")]
    Replayed,
    #[error("connection limit reached")]
    Overloaded,
    #[error("upstream unreachable")]
    UpstreamConnect,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream failed mid-exchange")]
    UpstreamProtocol,
}

/// Seconds a client should wait before retrying when the proxy is at its connection limit.
pub const OVERLOAD_RETRY_AFTER_SECS: u32 = 1;

impl Rejection {
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::Forbidden => StatusCode::FORBIDDEN,
            Rejection::RateLimited { .. } | Rejection::TooManySessions => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Rejection::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BadBody | Rejection::BadHost => StatusCode::BAD_REQUEST,
            Rejection::BadSignature => StatusCode::FORBIDDEN,
            Rejection::Replayed => StatusCode::CONFLICT,
            Rejection::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::UpstreamConnect | Rejection::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The metric label for upstream failures; `None` for rejections that are not the upstream's fault.
    pub fn upstream_reason(self) -> Option<&'static str> {
        match self {
            Rejection::UpstreamConnect => Some("connect"),
            Rejection::UpstreamTimeout => Some("timeout"),
            Rejection::UpstreamProtocol => Some("protocol"),
            _ => None,
        }
    }

    /// The `voxguard_http_malformed_requests_total` reason for requests refused as malformed.
    pub fn malformed_reason(self) -> Option<&'static str> {
        match self {
            Rejection::BadHost => Some("bad_host"),
            Rejection::BadBody => Some("bad_body"),
            _ => None,
        }
    }

    pub fn response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!("{}\n", status.canonical_reason().unwrap_or("error"));
        let mut res = Response::new(full(body));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Rejection::RateLimited { retry_after_secs } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if self == Rejection::TooManySessions {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(OVERLOAD_RETRY_AFTER_SECS),
            );
        }
        // After a framing or body error the connection's state is not to be trusted.
        if matches!(
            self,
            Rejection::BodyTimeout | Rejection::BadBody | Rejection::BadHost
        ) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self == Rejection::Overloaded {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(OVERLOAD_RETRY_AFTER_SECS),
            );
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rejection_maps_to_its_status() {
        let cases = [
            (Rejection::NoRoute, 404),
            (Rejection::Forbidden, 403),
            (Rejection::TooManySessions, 429),
            (
                Rejection::RateLimited {
                    retry_after_secs: 3,
                },
                429,
            ),
            (Rejection::BodyTooLarge, 413),
            (Rejection::BodyTimeout, 408),
            (Rejection::BadBody, 400),
            (Rejection::BadHost, 400),
            (Rejection::BadSignature, 403),
            (Rejection::Replayed, 409),
            (Rejection::Overloaded, 503),
            (Rejection::UpstreamConnect, 502),
            (Rejection::UpstreamProtocol, 502),
            (Rejection::UpstreamTimeout, 504),
        ];
        for (r, code) in cases {
            assert_eq!(r.response().status().as_u16(), code, "{r:?}");
        }
    }

    #[test]
    fn overload_says_when_to_retry() {
        let res = Rejection::Overloaded.response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let res = Rejection::RateLimited {
            retry_after_secs: 7,
        }
        .response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn bodies_are_generic() {
        let res = Rejection::UpstreamConnect.response();
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}

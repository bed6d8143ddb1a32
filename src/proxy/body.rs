//! Body wrappers on the streaming path: a size limit for request bodies, and a response wrapper that
//! counts bytes, and on completion writes the access-log line and the request metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

use crate::net::conn::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type on both sides of the proxy.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A small in-memory body (error pages, admin responses).
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// No body. Zero-sized, so boxing it allocates nothing.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Reads a whole request body (signed routes verify the exact bytes): over `cap` → 413, not complete
/// within `timeout` → 408, a broken body → 400. A declared `Content-Length` over the cap is refused
/// before anything is read.
pub async fn buffer<B>(
    body: B,
    declared_len: Option<u64>,
    cap: u64,
    timeout: std::time::Duration,
) -> Result<Bytes, crate::respond::Rejection>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    use crate::respond::Rejection;
    if declared_len.is_some_and(|len| len > cap) {
        return Err(Rejection::BodyTooLarge);
    }
    let read = async {
        let mut body = std::pin::pin!(body);
        // A body that comes in one frame (most webhooks) is kept as that frame's bytes: no copy, no
        // list of frames. A second frame starts one buffer, sized from `Content-Length` if declared.
        let mut first: Option<Bytes> = None;
        let mut joined = bytes::BytesMut::new();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Rejection::BadBody)?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers: not part of the signed bytes
            };
            total += data.len() as u64;
            if total > cap {
                return Err(Rejection::BodyTooLarge);
            }
            if first.is_none() && joined.is_empty() {
                first = Some(data);
                continue;
            }
            if let Some(earlier) = first.take() {
                let expected = declared_len.unwrap_or(total).clamp(total, cap);
                joined.reserve(usize::try_from(expected).unwrap_or(usize::MAX));
                joined.extend_from_slice(&earlier);
            }
            joined.extend_from_slice(&data);
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Rejection::BodyTimeout))
}

/// Raised by [`Limited`] when the body passes its cap.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_body_bytes")]
pub struct BodyTooLarge;

/// What went wrong with a streamed request body, if anything: the upstream request fails either
/// way, and this says whether the client (413 or 400) or the upstream (502) is to blame.
#[derive(Default)]
pub struct BodyFate {
    too_large: AtomicBool,
    broken: AtomicBool,
    waiting_on_client: AtomicBool,
}

impl BodyFate {
    /// The body passed the route's cap.
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    /// The client's body was malformed or cut short (bad chunk framing, oversized chunk extensions).
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// The body's last poll found nothing from the client yet: a timeout now is the client's
    /// (408), not the upstream's. While the upstream is slow to read, hyper does not poll the body,
    /// and the last poll was a frame.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// Streams a body and fails it once more than `remaining` bytes went through; records in `fate`
    /// why it failed, so the pipeline can answer 413 or 400 instead of 502, and whether it is
    /// waiting on the client, so a timeout meanwhile is 408 instead of 504.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        remaining: u64,
        fate: Arc<BodyFate>,
    }
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64, fate: Arc<BodyFate>) -> Self {
        Self {
            inner,
            remaining: limit,
            fate,
        }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        this.fate
            .waiting_on_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.remaining {
                        this.fate.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fate.broken.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raised by [`ReadTimeout`]: the upstream went silent mid-body.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing within its read_timeout")]
pub struct UpstreamStalled;

pin_project_lite::pin_project! {
    /// An upstream response body that fails once no frame has come for `limit` (a backend that
    /// trickles or hangs mid-body cannot hold the client's connection forever). The timer is only
    /// armed while the body is waiting on the upstream.
    pub struct ReadTimeout<B> {
        #[pin]
        inner: B,
        limit: std::time::Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        armed: bool,
    }
}

impl<B> ReadTimeout<B> {
    pub fn new(inner: B, limit: std::time::Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }
}

impl<B> Body for ReadTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.armed = false;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !*this.armed {
                    *this.armed = true;
                    let deadline = tokio::time::Instant::now() + *this.limit;
                    match this.timer {
                        Some(t) => t.as_mut().reset(deadline),
                        None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let timer = this.timer.as_mut().expect("armed above");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(UpstreamStalled)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the access log says about one request. No path, query string, body or header value: voice
/// apps put call ids and phone numbers in them. The route name says which endpoint was hit.
pub struct AccessRecord {
    /// The route's metrics, which also carry its name.
    pub route: Arc<crate::metrics::RouteHttpMetrics>,
    pub method: http::Method,
    pub status: u16,
    pub client: std::net::IpAddr,
    pub request_id: crate::proxy::headers::RequestId,
    pub started: Instant,
}

pin_project_lite::pin_project! {
    /// The response body sent to the client. When it ends (or is dropped, e.g. the client left),
    /// it logs the request and records its metrics exactly once, and releases the in-flight guard.
    pub struct Tracked {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        record: Option<AccessRecord>,
        _in_flight: Option<InFlight>,
    }

    impl PinnedDrop for Tracked {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                finish(record, *this.bytes);
            }
        }
    }
}

impl Tracked {
    pub fn new(inner: ProxyBody, record: AccessRecord, in_flight: Option<InFlight>) -> Self {
        Self {
            inner,
            bytes: 0,
            record: Some(record),
            _in_flight: in_flight,
        }
    }
}

fn finish(r: AccessRecord, bytes: u64) {
    let elapsed = r.started.elapsed();
    r.route.observe(r.status, elapsed);
    tracing::info!(
        target: "voxguard::access",
        route = &*r.route.route,
        method = %r.method,
        status = r.status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        bytes,
        client = %r.client,
        request_id = %r.request_id,
        "request"
    );
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            *this.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::respond::Rejection;

    type Chunk = Result<Frame<Bytes>, std::io::Error>;

    fn chunks(
        parts: Vec<Chunk>,
    ) -> http_body_util::StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Chunk>>> {
        http_body_util::StreamBody::new(futures_util::stream::iter(parts))
    }

    fn data(n: usize) -> Chunk {
        Ok(Frame::data(Bytes::from(vec![b'x'; n])))
    }

    #[tokio::test]
    async fn buffers_the_exact_bytes_up_to_the_cap() {
        let body = chunks(vec![data(3), data(4)]);
        let got = buffer(body, None, 7, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, Bytes::from_static(b"xxxxxxx"));
        let parts = || {
            [b"ab".as_slice(), b"", b"cde", b"f"]
                .into_iter()
                .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
                .collect::<Vec<Chunk>>()
        };
        for declared in [None, Some(6), Some(3)] {
            let got = buffer(chunks(parts()), declared, 6, Duration::from_secs(5)).await;
            assert_eq!(got.unwrap(), Bytes::from_static(b"abcdef"), "{declared:?}");
        }
        let trailers = chunks(vec![
            data(2),
            Ok(Frame::trailers(http::HeaderMap::new())),
            data(1),
        ]);
        let got = buffer(trailers, None, 7, Duration::from_secs(5)).await;
        assert_eq!(got.unwrap(), Bytes::from_static(b"xxx"));
    }

    #[tokio::test]
    async fn a_body_in_one_frame_is_returned_without_a_copy() {
        let sent = Bytes::from(vec![b'x'; 2048]);
        let body = chunks(vec![Ok(Frame::data(sent.clone()))]);
        let got = buffer(body, Some(2048), 4096, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, sent);
        assert_eq!(got.as_ptr(), sent.as_ptr(), "the frame's own bytes");
    }

    #[tokio::test]
    async fn a_streamed_body_past_the_cap_is_413_and_a_declared_one_is_refused_unread() {
        let body = chunks(vec![data(5), data(5)]);
        assert_eq!(
            buffer(body, None, 8, Duration::from_secs(5)).await,
            Err(Rejection::BodyTooLarge)
        );
        let never_read = chunks(vec![Err(std::io::Error::other("must not be polled"))]);
        assert_eq!(
            buffer(never_read, Some(9), 8, Duration::from_secs(5)).await,
            Err(Rejection::BodyTooLarge)
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_400_and_a_stalled_one_408() {
        let broken = chunks(vec![data(1), Err(std::io::Error::other("reset"))]);
        assert_eq!(
            buffer(broken, None, 8, Duration::from_secs(5)).await,
            Err(Rejection::BadBody)
        );
        let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<Chunk>());
        assert_eq!(
            buffer(stalled, None, 8, Duration::from_millis(50)).await,
            Err(Rejection::BodyTimeout)
        );
    }

    #[tokio::test]
    async fn limited_says_whether_it_waits_on_the_client() {
        use futures_util::StreamExt;
        // One chunk, then nothing: the client has gone quiet mid-body.
        let quiet =
            futures_util::stream::iter(vec![data(2)]).chain(futures_util::stream::pending());
        let fate = Arc::new(BodyFate::default());
        let mut body = std::pin::pin!(Limited::new(
            http_body_util::StreamBody::new(quiet),
            100,
            fate.clone()
        ));
        assert!(!fate.waiting_on_client(), "not polled yet");
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 2);
        assert!(
            !fate.waiting_on_client(),
            "a frame came: any wait now is on the reader"
        );
        let next = tokio::time::timeout(Duration::from_millis(20), body.frame()).await;
        assert!(next.is_err(), "the client sends nothing more");
        assert!(fate.waiting_on_client());
    }
}

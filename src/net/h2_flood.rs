//! HTTP/2 control-frame flood guard. The h2 crate bounds rapid resets, CONTINUATION floods and
//! header lists, but answers every PING and SETTINGS frame and accepts any number of PRIORITY and
//! empty DATA frames: a client can keep a core busy for free (CVE-2019-9512/9515/9518). This reads
//! the frame headers as the decrypted bytes go by, and fails the connection's reads once a client
//! spends more of these frames than a budget allows.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Control frames a connection may send at once, and how many more it earns per second. Browsers
/// send a handful per connection; gRPC keep-alives one PING per few seconds.
pub const BURST: u32 = 500;
pub const REFILL_PER_SEC: u32 = 50;

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;

/// Follows frame boundaries in a client's byte stream and spends the budget on the frames that
/// cost the server work but carry no request.
pub struct FrameScanner {
    preface_left: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    payload_left: usize,
    tokens: u32,
    refilled: Option<Instant>,
}

impl Default for FrameScanner {
    fn default() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            header: [0; HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            tokens: BURST,
            refilled: None,
        }
    }
}

impl FrameScanner {
    /// Feeds the next bytes read from the client; false once the budget is spent.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == HEADER_LEN {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload_left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    if costs_budget(h[3], h[4], self.payload_left) && !self.spend() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn spend(&mut self) -> bool {
        let now = Instant::now();
        let last = *self.refilled.get_or_insert(now);
        let earned =
            (now.duration_since(last).as_millis() as u64 * u64::from(REFILL_PER_SEC) / 1000) as u32;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(BURST);
            self.refilled = Some(now);
        }
        match self.tokens.checked_sub(1) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

/// PINGs and SETTINGS that ask for an answer, PRIORITY frames, and empty DATA frames that do not
/// end their stream.
fn costs_budget(kind: u8, flags: u8, len: usize) -> bool {
    match kind {
        PING | SETTINGS => flags & FLAG_ACK == 0,
        PRIORITY => true,
        DATA => len == 0 && flags & FLAG_END_STREAM == 0,
        _ => false,
    }
}

pin_project_lite::pin_project! {
    /// The client stream of an h2 connection, with its reads scanned. Once the budget is spent,
    /// reads fail, hyper drops the connection, and `flooded` is raised for the metric.
    pub struct FloodGuard<S> {
        #[pin]
        inner: S,
        scanner: Option<FrameScanner>,
        flooded: Arc<AtomicBool>,
    }
}

impl<S> FloodGuard<S> {
    /// `h2 = false` (HTTP/1.1) passes bytes through unscanned.
    pub fn new(inner: S, h2: bool, flooded: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            scanner: h2.then(FrameScanner::default),
            flooded,
        }
    }
}

impl<S: AsyncRead> AsyncRead for FloodGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(scanner)) = (&polled, this.scanner.as_mut())
            && !scanner.feed(&buf.filled()[before..])
        {
            this.flooded.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::other("HTTP/2 control frame flood")));
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for FloodGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[test]
    fn a_ping_flood_spends_the_budget_and_acks_do_not() {
        let mut s = FrameScanner::default();
        assert!(s.feed(&preface()));
        let ack = frame(PING, FLAG_ACK, &[0; 8]);
        for _ in 0..10_000 {
            assert!(s.feed(&ack));
        }
        let ping = frame(PING, 0, &[0; 8]);
        let allowed = (0..10_000).take_while(|_| s.feed(&ping)).count();
        // The burst, plus whatever the clock refilled while the loop ran.
        assert!(
            (BURST as usize..BURST as usize + 50).contains(&allowed),
            "{allowed}"
        );
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        // A large HEADERS frame whose payload looks like PING headers must not be counted, however
        // the bytes are split.
        let fake_pings: Vec<u8> = (0..2000).flat_map(|_| frame(PING, 0, &[0; 8])).collect();
        let mut stream = preface();
        stream.extend(frame(0x1, 0x4, &fake_pings));
        stream.extend(frame(SETTINGS, 0, &[]));
        for split in [1, 7, 9, 4096] {
            let mut s = FrameScanner::default();
            assert!(stream.chunks(split).all(|c| s.feed(c)), "split {split}");
            assert_eq!(
                s.tokens,
                BURST - 1,
                "split {split}: only the SETTINGS frame counts"
            );
        }
    }

    #[test]
    fn empty_data_frames_count_unless_they_end_the_stream() {
        let mut s = FrameScanner::default();
        s.feed(&preface());
        s.feed(&frame(DATA, 0, b"body"));
        s.feed(&frame(DATA, FLAG_END_STREAM, &[]));
        assert_eq!(s.tokens, BURST);
        s.feed(&frame(DATA, 0, &[]));
        s.feed(&frame(PRIORITY, 0, &[0; 5]));
        assert_eq!(s.tokens, BURST - 2);
    }
}

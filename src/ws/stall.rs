//! A WebSocket peer that stops reading must not hold a call forever: once a write to it has made
//! no progress for the route's `websocket_write_timeout`, the write fails and the session ends
//! (the other side gets 1001). Memory stays bounded meanwhile: tungstenite's write buffer is capped
//! and the pump stops reading while a write is pending. No timer is armed while writes complete.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Wraps one side of a session.
pub struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Armed when a write first returns `Pending`; disarmed when one completes.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// Called when a write is pending: errors once it has been pending for `limit`.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = self.timer.as_mut().expect("armed above");
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(WsError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "peer stopped reading",
        ))))
    }

    fn progress<T>(
        &mut self,
        polled: Poll<Result<T, WsError>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, WsError>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => match self.check(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: Sink<Message, Error = WsError> + Unpin> Sink<Message> for StallGuard<S> {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let polled = Pin::new(&mut self.inner).poll_ready(cx);
        self.progress(polled, cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(polled, cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let polled = Pin::new(&mut self.inner).poll_close(cx);
        self.progress(polled, cx)
    }
}

impl<S: Stream + Unpin> Stream for StallGuard<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;

    /// A sink that accepts `capacity` messages and then never has room again.
    struct Stuck {
        capacity: usize,
    }

    impl Sink<Message> for Stuck {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            if self.capacity > 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn start_send(mut self: Pin<&mut Self>, _: Message) -> Result<(), WsError> {
            self.capacity -= 1;
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_write_pending_past_the_limit_fails() {
        let mut guard = StallGuard::new(Stuck { capacity: 2 }, Duration::from_millis(50));
        guard.send(Message::text("a")).await.unwrap();
        guard.send(Message::text("b")).await.unwrap();
        assert!(!guard.armed, "no timer while writes complete");
        let started = Instant::now();
        let err = guard.send(Message::text("c")).await.unwrap_err();
        assert!(matches!(err, WsError::Io(ref e) if e.kind() == std::io::ErrorKind::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}

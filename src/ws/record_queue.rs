//! A call's recording queue: its session sends, its recorder receives. Bounded, and the sending
//! side never waits (a full queue refuses the entry, which the session counts as dropped).
//!
//! Every recorded call holds one for its whole length, idle or not, so it is kept small: one
//! allocation of ~150 bytes, plus a few slots once entries have passed through. tokio's bounded
//! channel, which this replaces, allocated ~1 KiB a call: its first block of 32 slots and two
//! cache-line-padded ends (docs/PERFORMANCE.md, sixteenth session). A call's queue sees an entry
//! about once a second, so an uncontended lock costs nothing that matters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct Shared<T> {
    entries: Mutex<VecDeque<T>>,
    capacity: usize,
    /// An entry came, or the sender is gone. A notification with no one waiting is kept as a
    /// permit, so one that comes between the receiver's look and its wait is not lost.
    ready: Notify,
    sender_gone: AtomicBool,
    receiver_gone: AtomicBool,
}

impl<T> Shared<T> {
    /// The lock is never held across user code, so a poisoned one still holds a sound queue.
    fn entries(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The session's end.
pub struct Sender<T>(Arc<Shared<T>>);

/// The recorder's end.
pub struct Receiver<T>(Arc<Shared<T>>);

/// `try_recv` found nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

/// A queue of at most `capacity` entries.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        entries: Mutex::new(VecDeque::new()),
        capacity,
        ready: Notify::new(),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `entry`, or gives it back if the queue is full or the recorder is gone.
    pub fn try_send(&self, entry: T) -> Result<(), T> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err(entry);
        }
        {
            let mut entries = self.0.entries();
            if entries.len() >= self.0.capacity {
                return Err(entry);
            }
            entries.push_back(entry);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

impl<T> Receiver<T> {
    /// Waits for entries and moves up to `limit` of them into `into`, oldest first; 0 once the
    /// sender is gone and everything it sent was taken. Cancel-safe: nothing is taken unless it is
    /// returned.
    pub async fn recv_many(&mut self, into: &mut Vec<T>, limit: usize) -> usize {
        loop {
            // Entries sent before the sender went are in the queue before its flag is set.
            let gone = self.0.sender_gone.load(Ordering::Acquire);
            let taken = self.take(into, limit);
            if taken > 0 || gone {
                return taken;
            }
            self.0.ready.notified().await;
        }
    }

    /// The oldest entry, if there is one.
    pub fn try_recv(&mut self) -> Result<T, Empty> {
        self.0.entries().pop_front().ok_or(Empty)
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.0.entries().len()
    }

    /// Whether no entry waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self, into: &mut Vec<T>, limit: usize) -> usize {
        let mut entries = self.0.entries();
        let n = entries.len().min(limit);
        into.extend(entries.drain(..n));
        n
    }
}

impl<T> Drop for Receiver<T> {
    /// What was not taken is dropped now, not when the session ends; later entries are refused.
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Release);
        let left = std::mem::take(&mut *self.0.entries());
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_arrive_in_order_and_a_full_queue_refuses_without_waiting() {
        let (tx, mut rx) = channel(3);
        for i in 0..5 {
            let sent = tx.try_send(i);
            assert_eq!(sent.is_ok(), i < 3, "entry {i}");
        }
        assert_eq!(tx.try_send(9), Err(9), "the refused entry comes back");
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 2).await, 2);
        assert_eq!(rx.recv_many(&mut got, 2).await, 1);
        assert_eq!(got, [0, 1, 2]);
        assert!(tx.try_send(3).is_ok(), "room again");
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.try_recv(), Err(Empty));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_entry_and_ends_when_the_sender_goes() {
        let (tx, mut rx) = channel(8);
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            while rx.recv_many(&mut got, 8).await > 0 {}
            got
        });
        for i in 0..100u32 {
            // Some entries come while it waits, some while it is busy: none is lost.
            while tx.try_send(i).is_err() {
                tokio::task::yield_now().await;
            }
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), receiver)
            .await
            .expect("the receiver ends once the sender is gone")
            .unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_nothing() {
        let (tx, mut rx) = channel(4);
        let mut got = Vec::new();
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            rx.recv_many(&mut got, 4),
        )
        .await;
        assert!(waited.is_err(), "nothing came");
        tx.try_send(7).unwrap();
        assert_eq!(rx.recv_many(&mut got, 4).await, 1);
        assert_eq!(got, [7]);
    }

    #[test]
    fn a_gone_receiver_frees_what_waited_and_refuses_more() {
        let (tx, rx) = channel(4);
        let entry = Arc::new(());
        tx.try_send(entry.clone()).unwrap();
        assert_eq!(Arc::strong_count(&entry), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&entry), 1, "dropped with the receiver");
        assert!(tx.try_send(entry.clone()).is_err());
        assert_eq!(Arc::strong_count(&entry), 1);
    }
}

//! What a call's recording receives: the redacted events, through a bounded queue that never stalls
//! the call (a full queue drops the event and counts it). `RecordingSink` is the seam for the
//! encrypted recorder; this release ships `MemorySink`, which keeps the last few calls in memory for
//! tests and inspection. It writes nothing to disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::protocols::{Audio, Direction, Kind, Track};

/// One redacted event, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Since the call started.
    pub at: Duration,
    pub direction: Direction,
    pub kind: Kind,
    pub track: Track,
    pub audio: Option<Audio>,
    /// Text events (media messages carry only their audio).
    pub json: Option<Value>,
}

/// Events of one call, in order.
pub type CallEvents = Arc<Mutex<Vec<RecordedEvent>>>;

/// Receives recordings. `start_call` returns the sending side of the call's queue.
pub trait RecordingSink: Send + Sync {
    fn start_call(&self, route: &str) -> tokio::sync::mpsc::Sender<RecordedEvent>;
}

/// Events per call queue before the call's events are dropped (and counted).
pub const QUEUE_EVENTS: usize = 1024;

/// Keeps the events of the last `max_calls` calls in memory.
pub struct MemorySink {
    calls: Mutex<VecDeque<(String, CallEvents)>>,
    max_calls: usize,
}

impl MemorySink {
    pub fn new(max_calls: usize) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(VecDeque::new()),
            max_calls,
        })
    }

    /// `(route, events)` of the calls held, oldest first.
    pub fn calls(&self) -> Vec<(String, CallEvents)> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl RecordingSink for MemorySink {
    fn start_call(&self, route: &str) -> tokio::sync::mpsc::Sender<RecordedEvent> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE_EVENTS);
        let events: CallEvents = Arc::default();
        {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.push_back((route.to_string(), events.clone()));
            while calls.len() > self.max_calls {
                calls.pop_front();
            }
        }
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
            }
        });
        tx
    }
}

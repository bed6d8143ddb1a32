//! Which of a session's sources asked to be polled. Each source (the client socket, the upstream
//! socket, the session's timers and tokens) is polled with its own waker, which raises the source's
//! flag and then wakes the task. A wake-up then polls only the flagged sources: a paced call's
//! message costs one poll of the socket it came on, not a poll of every socket, timer and
//! cancellation token the session waits on (each token poll takes two mutexes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A source's flag bit; `ALL` is every source.
pub type Sources = u8;

pub const CLIENT: Sources = 1;
pub const UPSTREAM: Sources = 2;
pub const HOUSEKEEPING: Sources = 4;
pub const ALL: Sources = CLIENT | UPSTREAM | HOUSEKEEPING;

struct Shared {
    flagged: AtomicU8,
    task: AtomicWaker,
}

struct SourceWaker {
    shared: Arc<Shared>,
    bit: Sources,
}

impl Wake for SourceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.flagged.fetch_or(self.bit, Ordering::AcqRel);
        self.shared.task.wake();
    }
}

/// The flags and one waker per source. Every source starts flagged (nothing is registered yet).
pub struct WakeFlags {
    shared: Arc<Shared>,
    client: Waker,
    upstream: Waker,
    housekeeping: Waker,
}

impl Default for WakeFlags {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            flagged: AtomicU8::new(ALL),
            task: AtomicWaker::new(),
        });
        let waker = |bit| {
            Waker::from(Arc::new(SourceWaker {
                shared: shared.clone(),
                bit,
            }))
        };
        Self {
            client: waker(CLIENT),
            upstream: waker(UPSTREAM),
            housekeeping: waker(HOUSEKEEPING),
            shared,
        }
    }
}

impl WakeFlags {
    /// The task to wake when a source is flagged. Called before the task waits on the flags.
    pub fn register(&self, task: &Waker) {
        self.shared.task.register(task);
    }

    /// Takes the flagged sources, clearing them: each must now be polled (and is flagged again by
    /// its waker if it has something later). Take before polling, so a wake during the poll counts.
    pub fn take(&self, sources: Sources) -> Sources {
        self.shared.flagged.fetch_and(!sources, Ordering::AcqRel) & sources
    }

    /// Flags sources that must be polled again: one that was ready (it may have more), one whose
    /// timer was reset, or one taken but not polled.
    pub fn flag(&self, sources: Sources) {
        self.shared.flagged.fetch_or(sources, Ordering::AcqRel);
    }

    /// The context to poll one source with.
    pub fn context(&self, source: Sources) -> Context<'_> {
        Context::from_waker(match source {
            CLIENT => &self.client,
            UPSTREAM => &self.upstream,
            _ => &self.housekeeping,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CountingWake(std::sync::atomic::AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_source_waker_flags_its_source_and_wakes_the_task() {
        let flags = WakeFlags::default();
        assert_eq!(flags.take(ALL), ALL, "everything starts flagged");
        assert_eq!(flags.take(ALL), 0);
        let task = Arc::new(CountingWake(Default::default()));
        flags.register(&Waker::from(task.clone()));
        flags.context(UPSTREAM).waker().wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert_eq!(flags.take(CLIENT), 0, "only what was asked for is taken");
        assert_eq!(flags.take(ALL), UPSTREAM);
        // A second wake with no new registration still flags, and wakes no one twice.
        flags.context(HOUSEKEEPING).waker().wake_by_ref();
        assert_eq!(flags.take(ALL), HOUSEKEEPING);
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        flags.flag(CLIENT | UPSTREAM);
        assert_eq!(flags.take(CLIENT), CLIENT);
        assert_eq!(flags.take(ALL), UPSTREAM);
    }
}

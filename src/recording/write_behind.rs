//! Chunk writes gathered for a moment and written together, in one job on the blocking pool.
//!
//! A busy recorded call seals a chunk about once a second, so 500 calls hand ~600 chunk writes a
//! second to the disk. One blocking job per write woke a pool thread on the proxy's core and
//! switched back to the runtime thread for each: about four context switches per chunk, measured
//! as ~1 µs of the proxy's CPU per media round trip (docs/PERFORMANCE.md, twenty-fourth session).
//! Gathered for [`GATHER`] and written in one job, a whole batch costs one hand-off and one wake
//! back, and the results are handed to the waiting calls on the runtime thread.
//!
//! Only writes that do not sync go this way: an fsync waits on the disk, and would hold up every
//! write gathered with it, so a syncing write still runs alone in the disk lane. So does the write
//! of a call that sends faster than real time (`writer::FASTER_THAN_REAL_TIME`): its writes wait
//! for each other, and gathering each one would hold its queue back.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::lane::{Lane, Panicked};

/// How long the first write of a batch waits for others to join it. A chunk holds ~0.8 s of a
/// call's audio and is already ~1 s old when sealed, so this adds little to what a crash of the
/// process can lose; at 600 chunks a second it gathers ~12 writes per job.
pub const GATHER: Duration = Duration::from_millis(20);

/// A job on the blocking pool that returns what to do with its result back on the runtime thread.
type Job = Box<dyn FnOnce() -> Deliver + Send>;
/// Hands a job's result to the call waiting for it (a local wake, no system call).
type Deliver = Box<dyn FnOnce() + Send>;

/// Gathers blocking jobs and runs each gathered batch as one job in `lane`.
#[derive(Clone)]
pub struct WriteBehind {
    lane: Lane,
    /// Jobs submitted and not yet taken. While any wait here, a task is waiting out [`GATHER`]
    /// and will take them all: the first job of a batch starts that task.
    pending: Arc<Mutex<Vec<Job>>>,
}

impl WriteBehind {
    pub fn new(lane: Lane) -> Self {
        Self {
            lane,
            pending: Arc::default(),
        }
    }

    /// Runs `job` on the blocking pool with whatever else is submitted within [`GATHER`]. Jobs of
    /// one batch run in the order they were submitted; a job that panics is an error for its caller
    /// only. Must be called within the runtime.
    pub async fn run<T, F>(&self, job: F) -> Result<T, Panicked>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = job();
            Box::new(move || {
                // The caller may have stopped waiting (its call was cancelled): nothing to hand.
                let _ = tx.send(result);
            })
        });
        let gather = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.push(job);
            pending.len() == 1
        };
        if gather {
            tokio::spawn(self.clone().write_after_gathering());
        }
        rx.await.map_err(|_| Panicked)
    }

    /// Waits out [`GATHER`], then runs every job submitted meanwhile in one blocking job, and hands
    /// each result to its caller.
    async fn write_after_gathering(self) {
        tokio::time::sleep(GATHER).await;
        let jobs = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let ran = self
            .lane
            .run(move || {
                jobs.into_iter()
                    .filter_map(|job| std::panic::catch_unwind(AssertUnwindSafe(job)).ok())
                    .collect::<Vec<Deliver>>()
            })
            .await;
        // A panic outside the jobs (none is expected) drops every delivery: each caller gets
        // `Panicked`.
        for deliver in ran.into_iter().flatten() {
            deliver();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_submitted_together_run_in_one_blocking_job_in_order() {
        let behind = WriteBehind::new(Lane::new(2));
        let order = Arc::new(Mutex::new(Vec::new()));
        let jobs: Vec<_> = (0..10)
            .map(|i| {
                let (behind, order) = (behind.clone(), order.clone());
                tokio::spawn(async move {
                    behind
                        .run(move || {
                            order.lock().unwrap().push((i, std::thread::current().id()));
                            i * 2
                        })
                        .await
                })
            })
            .collect();
        for (i, job) in jobs.into_iter().enumerate() {
            assert_eq!(
                job.await.unwrap().unwrap(),
                i * 2,
                "each caller gets its own result"
            );
        }
        let order = order.lock().unwrap();
        let ids: Vec<_> = order.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>(), "run in submission order");
        assert!(
            order.iter().all(|(_, thread)| *thread == order[0].1),
            "one blocking job ran them all"
        );
        assert_ne!(
            order[0].1,
            std::thread::current().id(),
            "not on the runtime thread"
        );
    }

    #[tokio::test]
    async fn a_write_submitted_after_a_batch_left_starts_the_next_one() {
        let behind = WriteBehind::new(Lane::new(2));
        assert_eq!(behind.run(|| 1).await.unwrap(), 1);
        assert!(
            behind.pending.lock().unwrap().is_empty(),
            "nothing waits once the batch has run"
        );
        let later = tokio::time::timeout(Duration::from_secs(5), behind.run(|| 2)).await;
        assert_eq!(later.unwrap().unwrap(), 2, "a later write is not stranded");
    }

    #[tokio::test]
    async fn a_panicking_write_fails_only_its_own_caller() {
        let behind = WriteBehind::new(Lane::new(1));
        let (a, b, c) = tokio::join!(
            behind.run(|| 1),
            behind.run(|| -> i32 { panic!("boom") }),
            behind.run(|| 3)
        );
        assert_eq!(a.unwrap(), 1);
        assert!(b.is_err(), "the panicking job is an error");
        assert_eq!(c.unwrap(), 3, "the job after it still ran");
        assert_eq!(
            behind.run(|| 4).await.unwrap(),
            4,
            "and the next batch runs"
        );
    }
}

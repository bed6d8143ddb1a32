//! A bounded way onto tokio's blocking pool for the recordings' disk and SQLite work.
//!
//! Every recorded call hands blocking jobs to the pool: the file and keystore entry at its first
//! event, a chunk write about once a second, the last chunk's sync and the keystore update at its
//! end. The pool starts a thread for each job that finds none idle, up to 512. A burst of calls
//! starting or ending together (a campaign dialling out, a drain) then started hundreds of threads,
//! each with its stack and malloc arena, that mostly waited on the keystore's one SQLite connection
//! or the disk: 515 threads, and 4.4 MiB more RSS, when 1,000 idle calls closed at once. A lane
//! caps how many of its jobs are on the pool at a time; the rest wait as futures, which cost
//! nothing and never hold up the runtime's threads.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Jobs that touch the keystore (creating a recording, marking its end). SQLite's one connection sits
/// behind a mutex, so a second job could only wait there; the second permit lets the next job's
/// file work overlap the first one's commit.
pub const KEYSTORE_JOBS: usize = 2;

/// Chunk writes that sync (the last chunk, and every chunk with `fsync = "chunk"`) or come from a
/// call faster than real time, each to its own file. The kernel can take several at once, and ext4
/// commits concurrent fsyncs together, so a few run side by side.
pub const DISK_JOBS: usize = 8;

/// Batches of gathered chunk writes that do not sync (`recording::write_behind`). A batch is
/// ~12 writes to the page cache at 600 chunks a second; a second one can start while a slow disk
/// holds up the first.
pub const WRITE_BEHIND_JOBS: usize = 2;

/// The proxy runtime's cap on blocking-pool threads (tokio's default is 512): the lanes, and room
/// beside them for the admin API, the retention sweep and start-up. A lane bounds its jobs, not the
/// pool's threads: a thread that has just finished a job is not yet idle when the next job is handed
/// over, so without the cap the pool slowly gathers a few more.
pub const RUNTIME_BLOCKING_THREADS: usize = KEYSTORE_JOBS + DISK_JOBS + WRITE_BEHIND_JOBS + 6;

/// How many jobs of one kind run on the blocking pool at once. Besides the thread count, this keeps
/// one kind from taking every thread: with the keystore locked for seconds (`voxguard keys rewrap`),
/// a burst of call starts waits in its own lane while the calls already recording go on writing.
#[derive(Clone)]
pub struct Lane {
    permits: Arc<Semaphore>,
}

/// The blocking job panicked.
#[derive(Debug)]
pub struct Panicked;

impl Lane {
    pub fn new(jobs: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(jobs)),
        }
    }

    /// Runs `job` on the blocking pool once the lane has room. The permit goes with the job: if the
    /// caller stops waiting, the job still counts against the lane until it has finished.
    pub async fn run<T, F>(&self, job: F) -> Result<T, Panicked>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("a lane's semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let result = job();
            drop(permit);
            result
        })
        .await
        .map_err(|_| Panicked)
    }

    /// Places free in the lane now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_jobs_than_the_lane_allows_run_at_once() {
        let lane = Lane::new(3);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let jobs: Vec<_> = (0..40)
            .map(|_| {
                let (lane, running, most) = (lane.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    lane.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            3,
            "the lane was filled, never overfilled"
        );
        assert_eq!(lane.available(), 3, "every permit came back");
    }

    #[tokio::test]
    async fn a_job_keeps_its_permit_after_its_caller_gives_up() {
        let lane = Lane::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let waiting = tokio::spawn({
            let lane = lane.clone();
            async move { lane.run(move || held.recv().ok()).await }
        });
        while lane.available() == 1 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(
            lane.available(),
            0,
            "the job still runs, so the lane is still full"
        );
        release.send(()).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), lane.run(|| 7)).await;
        assert_eq!(
            next.unwrap().unwrap(),
            7,
            "the lane frees once the job ends"
        );
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_frees_its_permit() {
        let lane = Lane::new(1);
        assert!(lane.run(|| panic!("boom")).await.is_err());
        assert_eq!(lane.run(|| 1).await.unwrap(), 1);
    }
}

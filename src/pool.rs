//! The bounded pool of workers for the work that must block (runc, mounts, opening fifos): at most
//! [`MAX_WORKERS`] threads, whatever the load. One worker is started up front and never ends, so the
//! pool can always make progress even where no thread can be created any more (a `pids.max` reached);
//! the others start when work waits and no worker is idle, and end after [`WORKER_IDLE`] without work.
//! A request that waits for an event is parked instead (Wait, see `server.rs`); what still waits on a
//! worker is bounded: a Kill for a Start in progress, a Delete for its output to drain (10 s each).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crate::lock::lock;

pub const MAX_WORKERS: usize = 4;
const WORKER_IDLE: Duration = Duration::from_secs(5);
/// Handlers decode a message and run runc; only the pages touched become resident.
const WORKER_STACK: usize = 256 << 10;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    workers: usize,
    idle: usize,
}

#[derive(Default)]
pub struct Pool {
    state: Mutex<State>,
    cv: Condvar,
}

/// The daemon's pool.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

impl Pool {
    /// Queues `job`; it runs on a worker as soon as one is free.
    pub fn submit(&'static self, job: Job) {
        let mut st = lock(&self.state);
        st.queue.push_back(job);
        if st.idle > 0 {
            self.cv.notify_one();
        }
        // Each idle worker takes one job: start another only for what they leave.
        if st.queue.len() > st.idle && st.workers < MAX_WORKERS {
            let permanent = st.workers == 0;
            match thread::Builder::new()
                .name("worker".into())
                .stack_size(WORKER_STACK)
                .spawn(move || self.work(permanent))
            {
                Ok(_) => st.workers += 1,
                // The job waits for a worker that exists: there is at least the permanent one,
                // unless this was the very first (then the next submit tries again).
                Err(e) => log::warn!("worker pool: no new thread ({e}); {} queued", st.queue.len()),
            }
        }
    }

    /// (workers, idle, queued), for the state dump.
    pub fn figures(&self) -> (usize, usize, usize) {
        let st = lock(&self.state);
        (st.workers, st.idle, st.queue.len())
    }

    fn work(&self, permanent: bool) {
        let mut st = lock(&self.state);
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                // A panicking job was already answered by its own guard (server.rs); the worker
                // lives on.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                st = lock(&self.state);
                continue;
            }
            st.idle += 1;
            let (g, t) = if permanent {
                (self.cv.wait(st).unwrap_or_else(|e| e.into_inner()), false)
            } else {
                let (g, t) = self.cv.wait_timeout(st, WORKER_IDLE).unwrap_or_else(|e| e.into_inner());
                (g, t.timed_out())
            };
            st = g;
            st.idle -= 1;
            if t && st.queue.is_empty() {
                st.workers -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn jobs_all_run_on_at_most_max_workers() {
        static P: OnceLock<Pool> = OnceLock::new();
        let p = P.get_or_init(Pool::default);
        let (tx, rx) = channel();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..200 {
            let (tx, running, most) = (tx.clone(), running.clone(), most.clone());
            p.submit(Box::new(move || {
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                tx.send(i).unwrap();
            }));
        }
        let mut got: Vec<i32> = (0..200)
            .map(|_| rx.recv_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=MAX_WORKERS).contains(&most), "{most} jobs ran at once");
        assert!(p.figures().0 <= MAX_WORKERS);
    }
}

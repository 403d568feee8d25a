//! The queue the reader threads take their jobs from.
//!
//! One queue for all readers, so that a busy reader takes the next job
//! without sleeping. An idle reader waits on a condition variable: a job
//! wakes exactly one of them, and only when one is waiting: while every
//! reader is busy, queueing a job wakes no thread. (A `Mutex<Receiver>`
//! shared by the readers also woke the second idle reader, blocked on the
//! mutex, every time the first one took a job.)

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

pub(super) struct ReadQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    jobs: VecDeque<T>,
    /// Readers waiting for a job.
    idle: usize,
    closed: bool,
}

impl<T> ReadQueue<T> {
    pub fn new() -> Self {
        ReadQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A job never runs under the lock: a panic cannot leave it half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a job; gives it back once the queue is closed.
    pub fn push(&self, job: T) -> Result<(), T> {
        let mut s = self.lock();
        if s.closed {
            return Err(job);
        }
        s.jobs.push_back(job);
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next job if one is queued, without waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.lock().jobs.pop_front()
    }

    /// The next job, waiting for one; `None` once the queue is closed and
    /// every job queued before was taken.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s.idle += 1;
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.idle -= 1;
        }
    }

    /// Jobs queued and not yet taken.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Refuses new jobs; the readers drain what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn jobs_come_out_in_order_and_a_closed_queue_drains_then_ends() {
        let q = ReadQueue::new();
        for i in 0..5 {
            q.push(i).unwrap();
        }
        q.close();
        assert_eq!(q.push(9), Err(9), "a closed queue refuses jobs");
        let got: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn each_job_wakes_a_waiting_reader_and_close_wakes_them_all() {
        let q = Arc::new(ReadQueue::<u32>::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (q, tx) = (q.clone(), tx.clone());
                std::thread::spawn(move || {
                    while let Some(job) = q.pop() {
                        tx.send(job).unwrap();
                    }
                })
            })
            .collect();
        // Let all three go idle first.
        while q.lock().idle < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..100 {
            q.push(i).unwrap();
        }
        let mut got: Vec<u32> = (0..100)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        q.close();
        for r in readers {
            r.join().unwrap();
        }
    }
}

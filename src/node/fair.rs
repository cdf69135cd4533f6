//! The handler pool's queue: one FIFO per connection, served in turn, so
//! that a connection with many jobs queued does not make the others wait
//! behind all of them (see `docs/robustness.md`). Each connection's jobs
//! are bounded elsewhere (`Config::handler_queue_len`).

use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};

/// Jobs keyed by connection, taken one connection at a time in turn.
pub(crate) struct FairQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    /// Connections with jobs, in the order they are served.
    turn: VecDeque<u64>,
    jobs: HashMap<u64, VecDeque<T>>,
    closed: bool,
}

impl<T> FairQueue<T> {
    /// Connections with jobs queued (for the tests' table sizes).
    #[cfg(feature = "unstable-testing")]
    pub(crate) fn connections(&self) -> usize {
        let g = self.state.lock();
        g.jobs.len().max(g.turn.len())
    }

    pub(crate) fn new() -> FairQueue<T> {
        FairQueue {
            state: Mutex::new(State {
                turn: VecDeque::new(),
                jobs: HashMap::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Queue `job` for connection `key`; gives it back once closed.
    pub(crate) fn push(&self, key: u64, job: T) -> Result<(), T> {
        let mut g = self.state.lock();
        if g.closed {
            return Err(job);
        }
        let q = g.jobs.entry(key).or_default();
        q.push_back(job);
        if q.len() == 1 {
            g.turn.push_back(key);
        }
        drop(g);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, from the connection whose turn it is; waits for one.
    /// After [`FairQueue::close`], the jobs left are still given out, then
    /// `None`.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut g = self.state.lock();
        loop {
            if let Some(key) = g.turn.pop_front() {
                let (job, more) = match g.jobs.get_mut(&key) {
                    Some(q) => (q.pop_front(), !q.is_empty()),
                    None => (None, false),
                };
                if more {
                    g.turn.push_back(key);
                } else {
                    g.jobs.remove(&key);
                }
                if let Some(job) = job {
                    return Some(job);
                }
                continue;
            }
            if g.closed {
                return None;
            }
            self.ready.wait(&mut g);
        }
    }

    /// Refuse new jobs and wake every waiting thread.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_turns() {
        let q = FairQueue::new();
        for i in 0..5 {
            q.push(1, (1, i)).unwrap();
        }
        q.push(2, (2, 0)).unwrap();
        q.push(3, (3, 0)).unwrap();
        q.push(2, (2, 1)).unwrap();
        let got: Vec<(u64, i32)> = (0..8).map(|_| q.pop().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                (1, 0),
                (2, 0),
                (3, 0),
                (1, 1),
                (2, 1),
                (1, 2),
                (1, 3),
                (1, 4)
            ]
        );
        q.push(4, (4, 0)).unwrap();
        q.close();
        assert_eq!(q.push(5, (5, 0)), Err((5, 0)));
        assert_eq!(q.pop(), Some((4, 0)));
        assert_eq!(q.pop(), None);
    }
}

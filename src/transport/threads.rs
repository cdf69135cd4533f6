//! Every thread the node spawns: named, tracked, counted against the
//! process-wide budget (`crate::budget`), and joined on shutdown within a
//! grace period.

use crate::budget;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::DEFAULT_SHUTDOWN_GRACE as DEFAULT_GRACE;

/// The set of a node's threads. A thread that ends on its own moves its
/// handle to `done`, which is joined at the next spawn or at shutdown.
pub(crate) struct Threads {
    inner: Mutex<Inner>,
    /// Signalled whenever a thread ends.
    ended: Condvar,
}

impl Default for Threads {
    fn default() -> Self {
        Threads {
            inner: Mutex::new(Inner {
                grace: DEFAULT_GRACE,
                ..Inner::default()
            }),
            ended: Condvar::new(),
        }
    }
}

#[derive(Default)]
struct Inner {
    next: u64,
    live: HashMap<u64, JoinHandle<()>>,
    done: Vec<JoinHandle<()>>,
    stopping: bool,
    grace: Duration,
}

impl Threads {
    /// Threads running and ended but not yet joined (for the tests' table
    /// sizes).
    #[cfg(feature = "unstable-testing")]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (g.live.len(), g.done.len())
    }

    /// How long [`Threads::join_all`] waits for threads before it leaves
    /// them running (detached).
    pub(crate) fn set_grace(&self, grace: Duration) {
        self.inner.lock().grace = grace;
    }

    /// Spawn a named thread; refused once [`Threads::join_all`] has begun,
    /// and when the process-wide thread budget is spent (an `io::Error`
    /// carrying `budget::Exhausted`, which `Error::io` turns into
    /// `Error::ResourceExhausted`).
    pub(crate) fn spawn(
        self: &Arc<Self>,
        name: String,
        stack: Option<usize>,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let mut g = self.inner.lock();
        if g.stopping {
            return Err(io::Error::other("the node is shutting down"));
        }
        for h in g.done.drain(..) {
            let _ = h.join();
        }
        let slot = budget::reserve().map_err(io::Error::other)?;
        let key = g.next;
        g.next += 1;
        let me = Arc::clone(self);
        let mut b = thread::Builder::new().name(name);
        if let Some(s) = stack {
            b = b.stack_size(s);
        }
        let h = b.spawn(move || {
            // Reported, and the budget's slot given back, even if `f` panics.
            let _exit = Exit {
                threads: me,
                key,
                _slot: slot,
            };
            f();
        })?;
        g.live.insert(key, h);
        Ok(())
    }

    fn exited(&self, key: u64) {
        // Also reached when a thread panicked: its handle moves to `done`.
        let mut g = self.inner.lock();
        if let Some(h) = g.live.remove(&key) {
            g.done.push(h);
        }
        self.ended.notify_all();
    }

    /// Refuse new threads and join every one, except the calling thread
    /// (which ends by itself when it returns), within the grace period (see
    /// [`Threads::set_grace`]). Threads still running then are detached:
    /// named in a warning and left to end by themselves (they still count
    /// against the thread budget until they do).
    pub(crate) fn join_all(&self) {
        let me = thread::current().id();
        let mut g = self.inner.lock();
        g.stopping = true;
        let deadline = Instant::now() + g.grace;
        loop {
            let done: Vec<JoinHandle<()>> = g.done.drain(..).collect();
            if !done.is_empty() {
                drop(g);
                for h in done {
                    if h.join().is_err() {
                        log::error!("a p2prs thread panicked");
                    }
                }
                g = self.inner.lock();
                continue;
            }
            let others = g.live.values().filter(|h| h.thread().id() != me).count();
            if others == 0 {
                return;
            }
            if self.ended.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
        let left: Vec<JoinHandle<()>> = {
            let keys: Vec<u64> = g
                .live
                .iter()
                .filter(|(_, h)| h.thread().id() != me)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| g.live.remove(k)).collect()
        };
        let grace = g.grace;
        drop(g);
        let names: Vec<String> = left
            .iter()
            .map(|h| h.thread().name().unwrap_or("unnamed").to_string())
            .collect();
        log::warn!(
            "{} thread(s) still running {:.1}s into shutdown are left running, detached: {}",
            names.len(),
            grace.as_secs_f64(),
            names.join(", ")
        );
        // Dropping a JoinHandle detaches its thread.
        drop(left);
    }
}

/// Dropped when a thread's function returns or unwinds.
struct Exit {
    threads: Arc<Threads>,
    key: u64,
    _slot: budget::Slot,
}

impl Drop for Exit {
    fn drop(&mut self) {
        self.threads.exited(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn join_all_returns_after_the_grace_and_detaches_what_is_left() {
        let t = Arc::new(Threads::default());
        t.set_grace(Duration::from_millis(100));
        let (release_tx, release_rx) = bounded::<()>(0);
        let (ended_tx, ended_rx) = bounded::<()>(1);
        t.spawn("p2prs-test-stuck".into(), None, move || {
            let _ = release_rx.recv();
            let _ = ended_tx.send(());
        })
        .unwrap();
        let (quick_tx, quick_rx) = bounded::<()>(0);
        t.spawn("p2prs-test-quick".into(), None, move || {
            let _ = quick_rx.recv();
        })
        .unwrap();
        drop(quick_tx);
        let started = Instant::now();
        t.join_all();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // New threads are refused from now on.
        assert!(t.spawn("p2prs-test-late".into(), None, || {}).is_err());
        // The detached thread still runs, and ends when let go.
        release_tx.send(()).unwrap();
        ended_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn join_all_is_quick_when_every_thread_ends() {
        let t = Arc::new(Threads::default());
        for i in 0..4 {
            t.spawn(format!("p2prs-test-{i}"), None, || {}).unwrap();
        }
        let started = Instant::now();
        t.join_all();
        assert!(started.elapsed() < DEFAULT_GRACE);
        assert!(t.inner.lock().live.is_empty());
    }
}

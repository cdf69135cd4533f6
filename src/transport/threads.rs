//! Every thread the node spawns: named, tracked, counted against the
//! process-wide budget (`crate::budget`), and joined on shutdown within a
//! grace period.
//!
//! Spare connection threads. Starting a thread costs about 60 µs on a
//! 2-vCPU virtual machine (the stack's mapping, `clone`, the first wake),
//! and a new connection needs one at each end: on a first contact both
//! are on the request's path. So a node keeps one connection thread
//! parked ([`Threads::spawn_connection`] wakes it, about 10 µs), makes the
//! next one while it waits for the network anyway ([`Threads::refill`]: a
//! dialer while its peer works on handshake message 2), and a connection
//! thread whose connection closed parks as the spare if there is none. A
//! spare unused for [`SPARE_IDLE`] ends, and no spare is made while half
//! the process's thread budget is in use. A parked spare holds its place
//! in the budget like any thread, and is taken only where a new thread
//! could be started: a process whose use jumps to the budget within
//! [`SPARE_IDLE`] refuses, until its spares end, as many connections more
//! than it would without them as it holds spares (one a node at most).

use crate::budget;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::DEFAULT_SHUTDOWN_GRACE as DEFAULT_GRACE;

/// A spare connection thread parked this long without work ends.
const SPARE_IDLE: Duration = Duration::from_secs(2);

/// Most spare connection threads a node keeps parked.
const MOST_SPARES: usize = 1;

/// Work handed to a spare thread.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The set of a node's threads. A thread that ends on its own moves its
/// handle to `done`, which is joined at the next spawn or at shutdown.
pub(crate) struct Threads {
    inner: Mutex<Inner>,
    /// Signalled whenever a thread ends.
    ended: Condvar,
    /// Hands a job to a parked spare: a rendezvous channel, so a send
    /// succeeds only into a spare waiting for it. `None` once stopping,
    /// which wakes every parked spare to end.
    to_spare: Mutex<Option<Sender<Job>>>,
    spare_jobs: Receiver<Job>,
    /// Spare threads starting or parked (not running a job).
    spares: AtomicUsize,
    /// A spare parked this long without work ends ([`SPARE_IDLE`]).
    spare_idle: Mutex<Duration>,
    /// The name and stack size of connection threads, spares included.
    connection: Mutex<(String, Option<usize>)>,
}

impl Default for Threads {
    fn default() -> Self {
        let (tx, rx) = bounded(0);
        Threads {
            inner: Mutex::new(Inner {
                grace: DEFAULT_GRACE,
                ..Inner::default()
            }),
            ended: Condvar::new(),
            to_spare: Mutex::new(Some(tx)),
            spare_jobs: rx,
            spares: AtomicUsize::new(0),
            spare_idle: Mutex::new(SPARE_IDLE),
            connection: Mutex::new(("p2prs-conn".into(), None)),
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

    /// Name connection threads `name`, with `stack` bytes of stack (see
    /// [`Threads::spawn_connection`]).
    pub(crate) fn set_connection_threads(&self, name: String, stack: Option<usize>) {
        *self.connection.lock() = (name, stack);
    }

    /// Run a connection's `f` on a parked spare thread if there is one and
    /// a new thread could be started, else on a new thread (see
    /// [`Threads::spawn`]). Either way the thread may stay on as the spare
    /// once `f` returns.
    pub(crate) fn spawn_connection(
        self: &Arc<Self>,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let job: Job = Box::new(f);
        let job = match self.wake_spare(job) {
            Ok(()) => return Ok(()),
            Err(job) => job,
        };
        let me = Arc::clone(self);
        let (name, stack) = self.connection.lock().clone();
        self.spawn(name, stack, move || {
            job();
            if me.may_stay() {
                me.spare();
            }
        })
    }

    /// Hand `job` to a parked spare, or give it back: no spare waits, or
    /// no new thread could be started now (at the budget a node starts
    /// none, and takes no spare either).
    fn wake_spare(&self, job: Job) -> Result<(), Job> {
        if self.spares.load(Ordering::Acquire) == 0 || budget::check().is_err() {
            return Err(job);
        }
        match self.to_spare.lock().as_ref() {
            Some(tx) => tx.try_send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        }
    }

    /// Start a spare connection thread if the node has none and the
    /// process has used less than half its thread budget. For the moments
    /// a node waits on the network anyway; quiet if refused.
    pub(crate) fn refill(self: &Arc<Self>) {
        if !self.may_stay() {
            return;
        }
        let me = Arc::clone(self);
        let (name, stack) = self.connection.lock().clone();
        if self.spawn(name, stack, move || me.spare()).is_err() {
            self.spares.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Count one more spare, if the node may have it: it has none, is not
    /// stopping, and the process has used less than half its budget.
    fn may_stay(&self) -> bool {
        budget::running_threads() < budget::max_threads() / 2
            && !self.inner.lock().stopping
            && self
                .spares
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MOST_SPARES).then_some(n + 1)
                })
                .is_ok()
    }

    /// A spare thread's life, counted in `spares` when it begins: park
    /// until handed a job, run it, and park again if the node has no other
    /// spare; end when unused for the spare idle time or at shutdown.
    fn spare(&self) {
        let idle = *self.spare_idle.lock();
        loop {
            let got = self.spare_jobs.recv_timeout(idle);
            self.spares.fetch_sub(1, Ordering::AcqRel);
            match got {
                Ok(job) => job(),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
            if !self.may_stay() {
                return;
            }
        }
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
        // Parked spares see the channel closed and end.
        *self.to_spare.lock() = None;
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

    /// A `Threads` whose connection threads are named for the tests, with
    /// spares that end after `idle`.
    fn connection_threads(idle: Duration) -> Arc<Threads> {
        let t = Arc::new(Threads::default());
        t.set_connection_threads("p2prs-test-conn".into(), None);
        *t.spare_idle.lock() = idle;
        t
    }

    /// Hand `job` to the parked spare, retrying until it is in its wait.
    fn hand_to_spare(t: &Threads, mut job: Job) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(back) = t.wake_spare(job) {
            assert!(Instant::now() < deadline, "no spare took the job");
            job = back;
            thread::yield_now();
        }
    }

    #[test]
    fn a_connection_thread_stays_on_as_the_spare_and_serves_the_next() {
        let t = connection_threads(Duration::from_secs(10));
        let (tx, rx) = bounded(2);
        let tx2 = tx.clone();
        t.spawn_connection(move || {
            let me = thread::current();
            let _ = tx.send((me.id(), me.name().map(String::from)));
        })
        .unwrap();
        let (first, name) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(name.as_deref(), Some("p2prs-test-conn"));
        hand_to_spare(
            &t,
            Box::new(move || {
                let _ = tx2.send((thread::current().id(), None));
            }),
        );
        let (second, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, second, "the next connection ran on another thread");
        assert_eq!(t.inner.lock().live.len(), 1);
        t.join_all();
        assert!(t.inner.lock().live.is_empty());
    }

    #[test]
    fn a_spare_unused_for_its_idle_time_ends() {
        // Long enough that the test cannot stall past it between the two
        // refills.
        let t = connection_threads(Duration::from_secs(1));
        t.refill();
        assert_eq!(t.spares.load(Ordering::Acquire), 1);
        // At most one spare.
        t.refill();
        assert_eq!(t.inner.lock().live.len(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut g = t.inner.lock();
        while !g.live.is_empty() {
            assert!(!t.ended.wait_until(&mut g, deadline).timed_out());
        }
        drop(g);
        assert_eq!(t.spares.load(Ordering::Acquire), 0);
        // A job with no spare gets a thread of its own.
        let (tx, rx) = bounded(1);
        t.spawn_connection(move || {
            let _ = tx.send(());
        })
        .unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        t.join_all();
    }

    #[test]
    fn shutdown_wakes_a_parked_spare_at_once() {
        let t = connection_threads(Duration::from_secs(60));
        t.set_grace(Duration::from_secs(30));
        t.refill();
        let started = Instant::now();
        t.join_all();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(t.inner.lock().live.is_empty());
        // Stopping: neither spares nor jobs.
        t.refill();
        assert!(t.inner.lock().live.is_empty());
        assert!(t.spawn_connection(|| {}).is_err());
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

//! The flusher: one thread per node, started with the first message it is
//! needed for, that writes the one-way messages a sender left queued on a
//! connection (see `Conn::send_queued`): a thread sending message after
//! message returns from each as soon as it is queued, and its messages
//! leave together, in one write per batch, instead of one system call (and
//! one loopback delivery, one wake of the peer) per message.
//!
//! The flusher writes what is queued [`FLUSH_AFTER`] after the first
//! message of a batch, unless the sender's own next message or request
//! wrote it first; its writes are bounded (`Conn::flush_deferred`): it
//! never blocks on a peer that does not read.

use super::threads::Threads;
use super::Conn;
use parking_lot::{Condvar, Mutex};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The longest a queued one-way message waits for its batch to be written
/// (the sender's next message writes the batch once its first message has
/// waited this long; the flusher writes it about this long after).
pub(super) const FLUSH_AFTER: Duration = Duration::from_micros(50);

/// The longest the flusher waits between looks at a connection whose
/// writer another thread holds (a long blocking write): the messages it
/// waits for are written by that thread or, at the latest, this long
/// after it lets go.
const RETRY_MAX: Duration = Duration::from_millis(2);

/// The node's flusher.
pub(crate) struct Flusher {
    threads: Arc<Threads>,
    name: String,
    stack: usize,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Connections with queued messages (or corked answers) to write, and
    /// when.
    due: Vec<(Weak<Conn>, Instant)>,
    /// The thread runs.
    started: bool,
    /// The node shuts down: the thread ends, nothing more is armed.
    stop: bool,
}

impl Flusher {
    /// A flusher whose thread, once needed, is one of `threads`.
    pub(crate) fn new(threads: Arc<Threads>, name: String, stack: usize) -> Arc<Flusher> {
        Arc::new(Flusher {
            threads,
            name,
            stack,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    /// Have `conn`'s queued messages written within about [`FLUSH_AFTER`].
    /// False if the flusher cannot (the node shuts down, or its thread
    /// could not be started): the caller writes them itself.
    pub(super) fn arm(self: &Arc<Self>, conn: Weak<Conn>) -> bool {
        self.arm_after(conn, FLUSH_AFTER)
    }

    /// Have what `conn` holds written `after` from now, unless someone
    /// else writes it first (a connection armed already keeps the earlier
    /// time). False as for [`Flusher::arm`].
    pub(super) fn arm_after(self: &Arc<Self>, conn: Weak<Conn>, after: Duration) -> bool {
        let at = Instant::now() + after;
        let mut g = self.state.lock();
        if g.stop {
            return false;
        }
        if !g.started {
            let me = Arc::clone(self);
            if let Err(e) = self
                .threads
                .spawn(self.name.clone(), Some(self.stack), move || me.run())
            {
                log::debug!("starting the flusher: {e}; senders write their own messages");
                return false;
            }
            g.started = true;
        }
        let earliest = g.due.iter().map(|(_, t)| *t).min();
        schedule(&mut g.due, conn, at);
        if earliest.is_none_or(|e| at < e) {
            self.wake.notify_one();
        }
        true
    }

    /// End the thread (at shutdown, after the connections are closed:
    /// closing a connection writes what it has queued).
    pub(crate) fn stop(&self) {
        let mut g = self.state.lock();
        g.stop = true;
        self.wake.notify_all();
    }

    fn run(&self) {
        let mut g = self.state.lock();
        // The pause before a connection whose writer another thread holds
        // is looked at again: FLUSH_AFTER, doubled (up to RETRY_MAX) while
        // a writer stays busy, so that a long blocking write of another
        // thread does not make this one wake 20,000 times a second.
        let mut pause = FLUSH_AFTER;
        loop {
            if g.stop {
                break;
            }
            let Some(next) = g.due.iter().map(|(_, t)| *t).min() else {
                pause = FLUSH_AFTER;
                self.wake.wait(&mut g);
                continue;
            };
            if next > Instant::now() {
                // Meanwhile the batch fills: the sender's further messages
                // join it. An earlier arm or the stop wakes this early.
                self.wake.wait_until(&mut g, next);
                continue;
            }
            let now = Instant::now();
            let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut g.due)
                .into_iter()
                .partition(|(_, t)| *t <= now);
            g.due = later;
            let again: Vec<Weak<Conn>> = parking_lot::MutexGuard::unlocked(&mut g, || {
                ready
                    .into_iter()
                    .map(|(w, _)| w)
                    .filter(|w| w.upgrade().is_some_and(|c| c.flush_deferred()))
                    .collect()
            });
            pause = if again.is_empty() {
                FLUSH_AFTER
            } else {
                (pause * 2).min(RETRY_MAX)
            };
            let at = Instant::now() + pause;
            for w in again {
                schedule(&mut g.due, w, at);
            }
        }
        let due = std::mem::take(&mut g.due);
        drop(g);
        for c in due.iter().filter_map(|(w, _)| w.upgrade()) {
            c.flush_deferred();
        }
    }
}

/// Have `conn` written at `at`, or at the time it has already if earlier.
fn schedule(due: &mut Vec<(Weak<Conn>, Instant)>, conn: Weak<Conn>, at: Instant) {
    match due.iter_mut().find(|(w, _)| w.ptr_eq(&conn)) {
        Some((_, t)) => *t = (*t).min(at),
        None => due.push((conn, at)),
    }
}

//! The process-wide thread budget: a cap on the threads p2prs starts, shared
//! by every node, rendezvous and connection of the process.
//!
//! A thread-per-connection library runs out of threads before it runs out of
//! anything else: past about `vm.max_map_count / 4` threads (16,000 with the
//! Linux default of 65,530 maps) the next thread cannot get its stack guard
//! page and the whole process aborts. The budget keeps p2prs well clear of
//! that: at the cap, an inbound connection is refused (with a logged warning)
//! and an outbound one fails with [`Error::ResourceExhausted`]; the process
//! goes on.
//!
//! [`Error::ResourceExhausted`]: crate::Error::ResourceExhausted

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default of [`max_threads`]: 8,000 threads, half of what a default
/// Linux `vm.max_map_count` allows, and each connection thread holds one
/// descriptor (well under a 20,000 descriptor limit).
pub const DEFAULT_MAX_THREADS: usize = 8_000;

static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_THREADS);
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Set the most threads p2prs may run at once in this process, over every
/// node and rendezvous (default [`DEFAULT_MAX_THREADS`]). Threads running
/// already are not stopped; lowering the cap below them only refuses new
/// ones. 0 refuses every new thread.
///
/// ```
/// p2prs::set_max_threads(2_000);
/// assert_eq!(p2prs::max_threads(), 2_000);
/// # p2prs::set_max_threads(p2prs::DEFAULT_MAX_THREADS);
/// ```
pub fn set_max_threads(n: usize) {
    LIMIT.store(n, Ordering::Release);
}

/// The most threads p2prs may run at once in this process (see
/// [`set_max_threads`]).
pub fn max_threads() -> usize {
    LIMIT.load(Ordering::Acquire)
}

/// How many threads p2prs runs now in this process: every node's, every
/// rendezvous's, and those left running past a shutdown's grace.
pub fn running_threads() -> usize {
    RUNNING.load(Ordering::Acquire)
}

/// The reason a thread was refused: the budget is spent. Carried inside an
/// `io::Error` so that every spawn site reports it as
/// [`Error::ResourceExhausted`](crate::Error::ResourceExhausted) through
/// `Error::io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub(crate) limit: usize,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the process-wide budget of {} p2prs threads is spent",
            self.limit
        )
    }
}

impl std::error::Error for Exhausted {}

/// One thread's place in the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(());

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fail if the budget is spent now, before starting work (a connection)
/// that would need a thread. The caller reports it as
/// [`Error::ResourceExhausted`](crate::Error::ResourceExhausted).
pub(crate) fn check() -> Result<(), Exhausted> {
    let limit = max_threads();
    if running_threads() >= limit {
        return Err(Exhausted { limit });
    }
    Ok(())
}

/// Take a place for one more thread, or say why not.
pub(crate) fn reserve() -> Result<Slot, Exhausted> {
    let limit = max_threads();
    RUNNING
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .map(|_| Slot(()))
        .map_err(|_| Exhausted { limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_given_back_and_the_error_says_the_limit() {
        let e = Exhausted { limit: 7 };
        assert!(e.to_string().contains("budget of 7 p2prs threads"));
        // Other unit tests run nodes concurrently: only check that a slot
        // taken counts while held.
        let s = reserve().expect("a slot under the default budget");
        assert!(running_threads() >= 1);
        drop(s);
    }
}

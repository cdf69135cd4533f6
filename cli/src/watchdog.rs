//! A deadline for phases that cannot be interrupted.

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// Ends the process with a clear message if a phase that cannot be
/// interrupted (a blocking join, say) is still running at its deadline.
pub struct Watchdog {
    disarm: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Start watching: past `limit`, say that `what` hangs and exit with code 1.
    pub fn arm(limit: Duration, what: &'static str) -> Watchdog {
        let (disarm, armed) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("p2prs-watchdog".into())
            .spawn(move || {
                if armed.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                    eprintln!(
                        "p2prs: FAILED: still {what} after {} s; giving up",
                        limit.as_secs()
                    );
                    std::process::exit(1);
                }
            })
            .ok();
        Watchdog {
            disarm: Some(disarm),
            thread,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! Every thread the node spawns: named, tracked, and joined on shutdown.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// The set of a node's threads. A thread that ends on its own moves its
/// handle to `done`, which is joined at the next spawn or at shutdown.
#[derive(Default)]
pub(crate) struct Threads {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    live: HashMap<u64, JoinHandle<()>>,
    done: Vec<JoinHandle<()>>,
    stopping: bool,
}

impl Threads {
    /// Spawn a named thread; refused once [`Threads::join_all`] has begun.
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
        let key = g.next;
        g.next += 1;
        let me = Arc::clone(self);
        let mut b = thread::Builder::new().name(name);
        if let Some(s) = stack {
            b = b.stack_size(s);
        }
        let h = b.spawn(move || {
            f();
            me.exited(key);
        })?;
        g.live.insert(key, h);
        Ok(())
    }

    fn exited(&self, key: u64) {
        let mut g = self.inner.lock();
        if let Some(h) = g.live.remove(&key) {
            g.done.push(h);
        }
    }

    /// Refuse new threads and join every one, except the calling thread
    /// (which ends by itself when it returns).
    pub(crate) fn join_all(&self) {
        let me = thread::current().id();
        loop {
            let handles: Vec<JoinHandle<()>> = {
                let mut g = self.inner.lock();
                g.stopping = true;
                let mut v: Vec<_> = g.live.drain().map(|(_, h)| h).collect();
                v.append(&mut g.done);
                v
            };
            if handles.is_empty() {
                return;
            }
            for h in handles {
                if h.thread().id() == me {
                    continue;
                }
                if h.join().is_err() {
                    log::error!("a p2prs thread panicked");
                }
            }
        }
    }
}

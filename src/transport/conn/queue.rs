//! A sender's stream of one-way messages: left in the send queue and
//! written in batches, by the sender's next write or the node's flusher
//! (`transport/flush.rs`), instead of one system call per message.

use super::*;
use crate::transport::flush::{Flusher, FLUSH_AFTER};
use std::sync::Weak;

/// A user's one-way message queued within this long of the previous one
/// on the same connection, with nothing read from the peer between them,
/// continues a stream: past its first [`STREAM_AFTER`] messages, it may
/// wait for its batch. The first messages after a pause, or after the
/// peer sent something (a message answered by a message, as in a
/// ping-pong), are written at once.
pub(super) const STREAM_GAP: Duration = Duration::from_micros(20);

/// Messages of a stream written one by one before the next ones wait for
/// their batch: a short burst (a few messages, then the sender waits for
/// the peer's answer) is never held.
const STREAM_AFTER: u32 = 8;

/// The most a batch of waiting messages holds: the message that reaches
/// it writes the batch at once (and a sender whose messages are not taken
/// waits, as for any blocking send).
const BATCH_MAX: usize = 16 * 1024;

/// The longest answers already made wait in the writer while the
/// connection's thread runs another quick pooled handler (see
/// [`Conn::uncork_soon`]).
const CORK_HOLD: Duration = Duration::from_millis(1);

/// What a sender does with the message it just queued.
pub(super) enum Defer {
    /// It waits in the queue: the thread writing, or the flusher already
    /// armed, takes it.
    Queued,
    /// It is the first of a batch: arm the flusher (if that fails, write).
    Arm(Arc<Flusher>, Weak<Conn>),
    /// Write it now, as any small blocking send.
    No,
}

impl Conn {
    /// Give the connection the node's flusher: from now on a sender's
    /// stream of messages is written in batches.
    pub(crate) fn set_flusher(self: &Arc<Conn>, flusher: Arc<Flusher>) {
        if matches!(self.link, Link::Tcp { .. }) {
            let _ = self.flush.set((flusher, Arc::downgrade(self)));
        }
    }

    /// Whether the user's one-way message just queued (the last in `q`)
    /// may wait for its batch: it continues a stream (within
    /// [`STREAM_GAP`] of the previous message, with nothing read
    /// meanwhile) past [`STREAM_AFTER`] messages, the batch is under [`BATCH_MAX`], and its first
    /// message has waited under [`FLUSH_AFTER`].
    pub(super) fn defer(&self, q: &mut SendQueue) -> Defer {
        let Some((flusher, me)) = self.flush.get() else {
            return Defer::No;
        };
        let now = micros_now();
        let gap = now.saturating_sub(q.last_msg);
        q.last_msg = now;
        let reads = self.reads.load(Ordering::Relaxed);
        let heard = reads != q.reads_at_msg;
        q.reads_at_msg = reads;
        if heard || gap >= STREAM_GAP.as_micros() as u64 {
            q.run = 0;
            return Defer::No;
        }
        q.run = q.run.saturating_add(1);
        if q.run < STREAM_AFTER || q.buf.len() >= BATCH_MAX {
            return Defer::No;
        }
        if q.writing {
            return Defer::Queued;
        }
        if q.deferred_since == 0 {
            q.deferred_since = now;
            return Defer::Arm(Arc::clone(flusher), me.clone());
        }
        if now.saturating_sub(q.deferred_since) < FLUSH_AFTER.as_micros() as u64 {
            Defer::Queued
        } else {
            Defer::No
        }
    }

    /// The thread writing the queue stops after some rounds: leave what
    /// `q` holds to the flusher, if only a stream's messages are there and
    /// the flusher takes them (else that thread writes on).
    pub(super) fn leave_to_flusher(&self, q: &mut SendQueue) -> bool {
        let Some((flusher, me)) = self.flush.get() else {
            return false;
        };
        if q.others > 0 || q.failed || !flusher.arm(me.clone()) {
            return false;
        }
        q.deferred_since = micros_now();
        true
    }

    /// Take what the send queue holds, for a thread that holds the writer
    /// and writes it before its own frame: the bytes and the number of the
    /// last frame among them (see [`Conn::queue_written`]).
    pub(super) fn take_queued(&self) -> Option<(Vec<u8>, u64)> {
        let mut q = self.queue.lock();
        if q.buf.is_empty() || q.failed {
            return None;
        }
        q.deferred_since = 0;
        q.others = 0;
        q.flushing = true;
        Some((std::mem::take(&mut q.buf), q.queued))
    }

    /// Frames up to `upto`, taken by [`Conn::take_queued`], are written
    /// (`ok`), or their write failed and the connection closes: wake
    /// senders waiting for them, who then report what happened to theirs.
    pub(super) fn queue_written(&self, upto: u64, ok: bool) {
        let mut q = self.queue.lock();
        q.flushing = false;
        if ok {
            q.written = q.written.max(upto);
        } else {
            q.failed = true;
        }
        if q.waiters > 0 {
            self.queue_cv.notify_all();
        }
    }

    /// Write what the send queue holds, as a bounded write (what the
    /// socket does not take waits in the backlog), for the flusher: it
    /// never waits for the writer. Returns true if the writer was busy and
    /// nobody writes the queue: try again later.
    pub(crate) fn flush_deferred(&self) -> bool {
        let busy = self.corked.load(Ordering::Acquire) && !self.uncork_now();
        self.flush_queue(None) || busy
    }

    /// Answers of this read's deliveries wait in the writer (corked) and
    /// the connection's thread runs a pooled handler, which may take long:
    /// have the flusher send them if that thread has not within
    /// [`CORK_HOLD`] (else they would wait for the handler's return). The
    /// connection's thread sends them itself when the read's deliveries
    /// end, which is long before that when the handlers are quick: the
    /// flusher then finds nothing to write, and its one wake per
    /// [`CORK_HOLD`] is all it costs.
    pub(super) fn uncork_soon(&self) {
        if !self.corked.load(Ordering::Acquire) {
            return;
        }
        match self.flush.get() {
            Some((flusher, me)) if flusher.arm_after(me.clone(), CORK_HOLD) => {}
            _ => self.uncork(),
        }
    }

    /// [`Conn::uncork`] without waiting for the writer: false if it is busy.
    fn uncork_now(&self) -> bool {
        let Link::Tcp { writer, .. } = &self.link else {
            return true;
        };
        let Some(mut g) = writer.try_lock() else {
            return false;
        };
        if !self.corked.swap(false, Ordering::AcqRel) {
            return true;
        }
        let Some(w) = g.as_mut() else { return true };
        let _writing = Writing::begin(&self.writing_since);
        let r = w.flush_try();
        let stuck = w.backlog.len() > BACKLOG_MAX;
        drop(g);
        if r.is_err() || stuck {
            self.close_unread(*self.slow_peer.lock());
        }
        true
    }

    /// Before the connection closes: write what the send queue holds, and
    /// let a thread that took queued messages write them before the socket
    /// is shut, waiting for the writer at most [`STUCK_WRITE`] (none if
    /// its holder has made no progress that long).
    pub(super) fn flush_before_close(&self) {
        {
            let q = self.queue.lock();
            if q.failed || (q.buf.is_empty() && !q.flushing) {
                return;
            }
        }
        self.flush_queue(Some(STUCK_WRITE));
    }

    fn flush_queue(&self, wait: Option<Duration>) -> bool {
        let Link::Tcp { writer, .. } = &self.link else {
            return false;
        };
        if wait.is_none() {
            let q = self.queue.lock();
            if q.buf.is_empty() || q.failed || q.writing {
                // Nothing to write, or the thread writing takes it.
                return false;
            }
        }
        let g = match wait {
            None => writer.try_lock(),
            Some(bound) => self.lock_writer_within(writer, bound),
        };
        let Some(mut g) = g else {
            return true;
        };
        let Some(w) = g.as_mut() else {
            return false;
        };
        let Some((bytes, upto)) = self.take_queued() else {
            return false;
        };
        let _writing = Writing::begin(&self.writing_since);
        let r = w.write_all(&bytes).and_then(|_| w.flush_try());
        let stuck = w.backlog.len() > BACKLOG_MAX;
        drop(g);
        self.queue_written(upto, r.is_ok());
        if let Err(e) = r {
            log::debug!("writing to {}: {e}", self.peer_addr());
            self.close();
        } else if stuck {
            self.close_unread(*self.slow_peer.lock());
        } else {
            self.touch();
        }
        false
    }
}

//! The write side of a connection: frames sealed into records, written to
//! the socket the reader shares, and the backlog of bounded writes (see
//! `Conn::send_bounded` and `docs/robustness.md`).

use crate::noise::Sealer;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The write side of a stream whose one descriptor the reader shares.
/// Its second field is when a write to the socket last made progress
/// (see `Conn::writing_since`); the third, when set, a deadline for the
/// frame being written (a bounded write: see `Conn::send_bounded`); the
/// fourth, the socket's write timeout as last set, and the fifth, that of
/// normal writes, so that switching between them costs no system call
/// when nothing changes.
pub(crate) struct Shared(
    pub(super) Arc<TcpStream>,
    pub(super) Arc<AtomicU64>,
    pub(super) Option<Instant>,
    Option<Duration>,
    Option<Duration>,
);

impl Shared {
    /// The write side of `stream`, whose write timeout is that of normal
    /// writes.
    pub(super) fn new(stream: Arc<TcpStream>, progress: Arc<AtomicU64>) -> Shared {
        let normal = stream.write_timeout().ok().flatten();
        Shared(stream, progress, None, normal, normal)
    }

    /// Set the socket's write timeout, unless it is so already.
    pub(super) fn set_timeout(&mut self, t: Option<Duration>) {
        if self.3 != t {
            let _ = self.0.set_write_timeout(t);
            self.3 = t;
        }
    }

    /// Back to the write timeout of normal writes.
    pub(super) fn normal_timeout(&mut self) {
        self.set_timeout(self.4);
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(deadline) = self.2 {
            // A peer that reads a trickle makes each send return a little:
            // the frame as a whole has a deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer takes too long to read",
                ));
            }
            self.set_timeout(Some(left));
        }
        let n = (&*self.0).write(buf)?;
        if n > 0 {
            self.1.store(micros_now(), Ordering::Release);
        }
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.2.is_some() {
            // A bounded write: its deadline is kept by `write`.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.write(first);
        }
        let n = (&*self.0).write_vectored(bufs)?;
        if n > 0 {
            self.1.store(micros_now(), Ordering::Release);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

/// The write side of a connection: frames are buffered as plaintext, then
/// sealed into records (or passed through in plaintext mode) and written.
pub(crate) struct SecureWriter {
    pub(super) stream: Shared,
    sealer: Sealer,
    plain: Vec<u8>,
    out: Vec<u8>,
    /// Sealed bytes a bounded write left unsent because the socket was full
    /// (see `Conn::send_bounded`); sent before anything else.
    pub(super) backlog: Vec<u8>,
    /// Since when the backlog has waited with none of it going out.
    pub(super) stalled: Option<Instant>,
    /// The frame being written may block (not a bounded write that must
    /// not): large pieces skip the plaintext buffer.
    pub(super) direct: bool,
    /// Records sealed straight from a large piece of a blocking write,
    /// [`BULK_RECORDS`] at most at once. Kept at its length while large
    /// frames follow each other (sealed into as it is, with no zero fill
    /// and no fresh pages per frame); freed at the end of the first write
    /// that did not use it, and when the connection goes quiet.
    bulk: Vec<u8>,
    /// `bulk` was used since the last end of a write.
    bulk_used: bool,
}

/// A bounded write of a frame up to this size never blocks: what the
/// socket does not take at once waits in the connection's backlog.
pub(super) const TRY_MAX: u64 = 128 * 1024;
/// The most a connection's backlog may hold before the peer counts as one
/// that does not read.
pub(super) const BACKLOG_MAX: usize = 256 * 1024;

/// The most a quiet connection's writer keeps in each buffer.
const KEEP_QUIET: usize = 4096;

/// Plaintext buffered before it is sealed and written.
const WRITE_CHUNK: usize = crate::noise::MAX_PLAIN;
/// Records a blocking write of a large body seals before each write: the
/// socket takes the body in pieces of about this many records (64 KiB each).
const BULK_RECORDS: usize = 4;
/// The writer's buffers keep their memory after a frame up to this size:
/// one sealed record and some.
const KEEP_MAX: usize = 80 * 1024;

impl SecureWriter {
    pub(super) fn new(stream: Shared, sealer: Sealer) -> SecureWriter {
        SecureWriter {
            stream,
            sealer,
            // Empty until the first frame: they grow to the frames this
            // connection writes (small ones, for most), rather than cost
            // every connection 8 KiB from the start.
            plain: Vec::new(),
            out: Vec::new(),
            backlog: Vec::new(),
            stalled: None,
            direct: false,
            bulk: Vec::new(),
            bulk_used: false,
        }
    }

    /// Write `out`, after the backlog, blocking (within the socket's timeout).
    fn send_out(&mut self) -> io::Result<()> {
        if !self.backlog.is_empty() {
            self.stream.write_all(&self.backlog)?;
            self.backlog = Vec::new();
            self.stalled = None;
        }
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        r
    }

    /// Seal what is buffered and send what the socket takes within about a
    /// millisecond; the rest waits in the backlog. It leaves the socket's
    /// write timeout at 1 ms (see `Shared::normal_timeout`).
    pub(super) fn flush_try(&mut self) -> io::Result<()> {
        self.release_bulk();
        if !self.plain.is_empty() {
            self.seal_plain()?;
        }
        self.backlog.append(&mut self.out);
        self.push_backlog()
    }

    /// Send what the socket takes of the backlog within about a millisecond.
    /// It leaves the socket's write timeout at 1 ms.
    pub(super) fn push_backlog(&mut self) -> io::Result<()> {
        if self.backlog.is_empty() {
            self.stalled = None;
            return Ok(());
        }
        self.stream.set_timeout(Some(Duration::from_millis(1)));
        let mut sent = 0;
        let result = loop {
            if sent == self.backlog.len() {
                break Ok(());
            }
            match self.stream.write(&self.backlog[sent..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.backlog.drain(..sent);
        if self.backlog.is_empty() {
            self.backlog = Vec::new();
            self.stalled = None;
        } else if sent > 0 || self.stalled.is_none() {
            self.stalled = Some(Instant::now());
        }
        result
    }

    /// The connection has gone quiet: buffers grown past [`KEEP_QUIET`]
    /// for larger frames are freed (they grow again as needed).
    pub(super) fn quiet(&mut self) {
        if self.plain.is_empty() && self.plain.capacity() > KEEP_QUIET {
            self.plain = Vec::new();
        }
        if self.out.is_empty() && self.out.capacity() > KEEP_QUIET {
            self.out = Vec::new();
        }
        self.bulk = Vec::new();
    }

    /// The end of a write: the bulk buffer goes unless this write used it
    /// (a connection that sent one large body keeps nothing for it while
    /// small frames follow).
    fn release_bulk(&mut self) {
        if !std::mem::take(&mut self.bulk_used) {
            self.bulk = Vec::new();
        }
    }

    fn seal_plain(&mut self) -> io::Result<()> {
        self.sealer
            .seal(&self.plain, &mut self.out)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.plain.clear();
        Ok(())
    }
}

impl Write for SecureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.direct && buf.len() >= WRITE_CHUNK {
            // A large piece (a body) goes without a copy into the plaintext
            // buffer: in plaintext mode straight to the socket after what
            // is buffered, else sealed from the caller's bytes.
            if self.sealer.is_plain() {
                if !self.plain.is_empty() {
                    self.seal_plain()?;
                }
                if !self.backlog.is_empty() {
                    self.send_out()?;
                }
                // What is buffered (the frame's prefix and header) and the
                // body leave in one system call.
                while !self.out.is_empty() {
                    let n = self
                        .stream
                        .write_vectored(&[io::IoSlice::new(&self.out), io::IoSlice::new(buf)])?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    if n < self.out.len() {
                        self.out.drain(..n);
                        continue;
                    }
                    let body = n - self.out.len();
                    self.out.clear();
                    // None of the body may have gone (a bounded write
                    // writes one slice at a time): never report 0.
                    if body > 0 {
                        return Ok(body);
                    }
                }
                return self.stream.write(buf);
            }
            if self.plain.is_empty() {
                // Whole records sealed from the caller's bytes into the
                // kept bulk buffer, a few at a time, and written at once.
                let take = (buf.len() / WRITE_CHUNK).min(BULK_RECORDS) * WRITE_CHUNK;
                let need = crate::noise::sealed_len(take);
                self.bulk_used = true;
                if self.bulk.len() < need {
                    self.bulk.resize(need, 0);
                }
                let n = self
                    .sealer
                    .seal_into(&buf[..take], &mut self.bulk)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if !self.out.is_empty() || !self.backlog.is_empty() {
                    self.send_out()?;
                }
                self.stream.write_all(&self.bulk[..n])?;
                return Ok(take);
            }
        }
        let room = WRITE_CHUNK - self.plain.len();
        let n = buf.len().min(room);
        self.plain.extend_from_slice(&buf[..n]);
        if self.plain.len() >= WRITE_CHUNK {
            self.seal_plain()?;
            if self.out.len() >= 4 * WRITE_CHUNK {
                self.send_out()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.plain.is_empty() {
            self.seal_plain()?;
        }
        if !self.out.is_empty() || !self.backlog.is_empty() {
            self.send_out()?;
        }
        // Keep big buffers from a large frame from pinning memory (one
        // record's worth stays: a connection sending large bodies would
        // otherwise allocate and fault in a fresh one for every frame; a
        // quiet connection gives it back, see `KEEP_QUIET`).
        if self.plain.capacity() > KEEP_MAX {
            self.plain = Vec::new();
        }
        if self.out.capacity() > KEEP_MAX {
            self.out = Vec::new();
        }
        self.release_bulk();
        Ok(())
    }
}

/// A bounded write finding the writer held by a write that has made no
/// progress for this long gives up at once instead of queueing behind it.
pub(super) const STUCK_WRITE: Duration = Duration::from_millis(100);

/// Microseconds since the first call (never 0).
pub(super) fn micros_now() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// Marks a write under way for as long as it lives.
pub(super) struct Writing<'a>(&'a AtomicU64);

impl<'a> Writing<'a> {
    pub(super) fn begin(at: &'a AtomicU64) -> Writing<'a> {
        at.store(micros_now(), Ordering::Release);
        Writing(at)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

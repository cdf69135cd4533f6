//! One connection: its write half, its pending requests and their answer
//! slots, its lifetime (pinning, idle, close), and the secure handshake. The
//! read side, which runs on the connection's own thread or on a requester
//! that reads its own answer, is in `conn/read.rs`.

use super::limits::{FrameClock, Memory, FREE_PER_CONN};
use super::nowait;
use super::threads::Threads;
use super::writer::{micros_now, SecureWriter, Shared, Writing, BACKLOG_MAX, STUCK_WRITE, TRY_MAX};
use super::Path;
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::id::PublicKey;
use crate::message::Message;
use crate::noise::{Handshaker, Local, Opener, PeerProof, Sealer, Session};
use crate::wire::{self, Decoder, Frame, Hello, Kind};
use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod queue;
mod read;

use queue::Defer;

/// Where the answer to an outstanding request goes.
pub(crate) enum Pending {
    /// A local caller waits on this slot (and may read the socket itself
    /// meanwhile: see [`Conn::request`]).
    Wait(Arc<Slot>),
    /// The request was bounced here on behalf of a requester on another
    /// connection: relay the answer back to it under its request ID.
    Forward {
        back: Arc<Conn>,
        req: u64,
        since: Instant,
    },
}

/// Where a requester waits for its answer: filled by whichever thread reads
/// the answer, nudged when the requester may take over the reading.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
    /// The connection's count of answers not taken yet
    /// ([`Conn::unclaimed`]).
    unclaimed: Option<Arc<AtomicUsize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An answer that came after its requester gave up.
        if self.state.get_mut().counted {
            if let Some(unclaimed) = &self.unclaimed {
                unclaimed.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[derive(Default)]
struct SlotState {
    answer: Option<Result<Message>>,
    /// The answer counts in [`Conn::unclaimed`] until it is taken.
    counted: bool,
    /// The socket has nobody reading it: this requester may read it.
    nudged: bool,
    /// The requester sleeps on `ready`.
    parked: bool,
}

impl Slot {
    /// Give the requester its answer.
    fn fill(&self, answer: Result<Message>) {
        let mut g = self.state.lock();
        g.answer = Some(answer);
        if g.parked {
            self.ready.notify_one();
        }
    }

    /// Tell a requester still waiting that it may read the socket; false
    /// if it has its answer already.
    fn nudge(&self) -> bool {
        let mut g = self.state.lock();
        if g.answer.is_some() {
            return false;
        }
        g.nudged = true;
        if g.parked {
            self.ready.notify_one();
        }
        true
    }

    /// Give the requester its answer, counted in `unclaimed` until it is
    /// taken.
    fn fill_counted(&self, answer: Result<Message>) {
        let mut g = self.state.lock();
        let Some(unclaimed) = &self.unclaimed else {
            drop(g);
            return self.fill(answer);
        };
        unclaimed.fetch_add(1, Ordering::AcqRel);
        g.counted = true;
        g.answer = Some(answer);
        if g.parked {
            self.ready.notify_one();
        }
    }

    fn take(&self) -> Option<Result<Message>> {
        let mut g = self.state.lock();
        let answer = g.answer.take();
        if answer.is_some() && std::mem::take(&mut g.counted) {
            if let Some(unclaimed) = &self.unclaimed {
                unclaimed.fetch_sub(1, Ordering::AcqRel);
            }
        }
        answer
    }

    /// Sleep until the answer comes, a nudge, or `deadline`.
    fn park(&self, deadline: Instant) {
        let mut g = self.state.lock();
        if g.answer.is_none() && !g.nudged {
            g.parked = true;
            let _ = self.ready.wait_until(&mut g, deadline);
            g.parked = false;
        }
        g.nudged = false;
    }
}

/// The read side of a TCP connection: whoever holds it reads the socket
/// (the connection's thread, or a requester waiting for its answer).
struct ReadState {
    stream: Arc<TcpStream>,
    inbound: Inbound,
    buf: Vec<u8>,
    clock: FrameClock,
    /// The connection is charged in the memory budget.
    charged: bool,
    /// The socket's read timeout as last set.
    timeout: Duration,
    /// The read loop's tick (the longest a requester's read blocks).
    tick: Duration,
    /// Frames other than answers, read by a requester: the connection's
    /// thread delivers them.
    deferred: VecDeque<Frame>,
    /// Reading has ended (end of stream, an error, bad input).
    ended: bool,
    /// The minimum rate of a frame under way (for the warning).
    min_frame_rate: u64,
    /// The last read went straight into the record layer: what taking
    /// its bytes gave (see [`ReadState::read`]).
    direct: Option<std::result::Result<(), String>>,
    /// Whether bytes have been coming quickly: polling before a blocking
    /// read pays (see [`ReadState::poll_briefly`]).
    poll: PollScore,
    /// The connection's count of writes at the connection's thread's
    /// last read (`u64::MAX` before its first: that read expects bytes).
    sent_seen: u64,
    /// [`Conn::writing_since`]: non-zero while a write is under way.
    writing: Arc<AtomicU64>,
    /// The connection's thread made sure the memory budget has room for a
    /// whole buffer before this read (see [`read_most`]).
    budget_checked: bool,
}

/// How often bytes came within [`BUSY_GAP`] of a read's start lately: a
/// read polls the socket for up to [`POLL_WINDOW`] before it blocks while
/// the score is above zero.
#[derive(Default, Clone, Copy)]
pub(super) struct PollScore(u8);

impl PollScore {
    /// A new connection's: its first read looks (the request it was
    /// opened for, or its answer, comes soon); one that finds nothing
    /// within [`POLL_WINDOW`] halves it to zero.
    pub(super) const FRESH: PollScore = PollScore(1);
}

/// Bytes that come within this long of a read's start mark a busy
/// connection (see [`PollScore`]).
pub(super) const BUSY_GAP: Duration = Duration::from_micros(50);

/// How long a read polls the socket (yielding the CPU between looks)
/// before it blocks, while bytes have been coming quickly. A thread
/// blocked in `read` on an idle vCPU is woken by an inter-processor
/// interrupt, which costs tens of µs on a virtual machine: a peer
/// answering within this window is read with no such wake on either side.
///
/// Longer than [`BUSY_GAP`]: on Linux 6.18 (EEVDF) a `sched_yield` while
/// other threads are runnable on the CPU forfeits the rest of the
/// yielder's slice, so while requesters share a connection one look may
/// take tens of µs, and a 50 µs window ran out after a few looks (see
/// `docs/performance.md`, "Requesters sharing a connection: longer looks").
pub(super) const POLL_WINDOW: Duration = Duration::from_micros(200);

const POLL_SCORE_MAX: u8 = 8;

impl ReadState {
    /// Whether only the connection's thread may read now: frames to
    /// deliver, the end, or a frame large enough for the memory budget.
    fn needs_conn_thread(&self) -> bool {
        self.ended
            || self.charged
            || !self.deferred.is_empty()
            || self.inbound.held() > FREE_PER_CONN / 2
    }

    /// A read filled the buffer: the peer sends faster than the buffer
    /// takes, so double it (up to [`READ_CHUNK`]). A connection starts with
    /// [`READ_FIRST`] bytes, so the many quiet ones of a large ring cost
    /// little memory and a busy one soon reads in large pieces.
    fn filled(&mut self, n: usize) {
        let len = read_size_after(self.buf.len(), n);
        if len != self.buf.len() {
            self.buf.resize(len, 0);
        }
    }

    /// Nothing came for a tick: a buffer grown for a busy spell goes back
    /// to [`READ_FIRST`] bytes, so that a connection gone quiet holds no
    /// more than a new one.
    fn quiet(&mut self) {
        if self.buf.len() > READ_FIRST {
            self.buf = vec![0u8; READ_FIRST];
        }
    }

    /// Take the `n` bytes a read put in the buffer: into the decoder
    /// (through the record layer), and grow the buffer if they filled it.
    /// Bytes read straight into the record layer ([`ReadState::read`])
    /// are taken already.
    fn take_read(&mut self, n: usize) -> std::result::Result<(), String> {
        if let Some(pushed) = self.direct.take() {
            return pushed;
        }
        let pushed = self.inbound.push(&self.buf[..n]);
        self.filled(n);
        pushed
    }

    /// Read the socket: into the record layer when a large record is under
    /// way (no copy), else into the buffer. Follow a read of `n > 0` bytes
    /// with [`ReadState::take_read`].
    ///
    /// While bytes have been coming quickly and something is likely to
    /// come back soon (`expect`: a requester reads for its answer, or this
    /// end has written since its last read), the socket is polled first
    /// ([`ReadState::poll_briefly`]); a stream that only comes in, or a
    /// quiet connection, blocks at once.
    fn read(&mut self, expect: bool) -> io::Result<usize> {
        let stream = Arc::clone(&self.stream);
        let checked = std::mem::take(&mut self.budget_checked);
        if expect {
            if let Some(r) = self.poll_briefly(&stream, checked) {
                return r;
            }
        }
        let began = Instant::now();
        let r = self.read_now(&stream, true, checked);
        if matches!(r, Ok(n) if n > 0) && began.elapsed() < BUSY_GAP {
            // Bytes came (or were there) soon: next time, look before blocking.
            self.poll.0 = (self.poll.0 + 1).min(POLL_SCORE_MAX);
        }
        r
    }

    /// Read the socket once: a blocking read (`wait`, bounded by the
    /// socket's read timeout), or one that returns `WouldBlock` at once
    /// when no byte is there. `checked`: the memory budget has room for a
    /// whole buffer (else the read takes at most [`read_most`]).
    fn read_now(&mut self, stream: &TcpStream, wait: bool, checked: bool) -> io::Result<usize> {
        let read = |buf: &mut [u8]| {
            if wait {
                (&*stream).read(buf)
            } else {
                nowait::read(stream, buf)
            }
        };
        if let Some(r) = self.inbound.read_direct(read) {
            let (n, pushed) = r?;
            if n > 0 {
                self.direct = Some(pushed);
            }
            return Ok(n);
        }
        // A read the memory budget did not check (see `Conn::read_loop`)
        // keeps the connection within its free allowance.
        let held = self.inbound.held();
        let allowed = |len: usize| if checked { len } else { read_most(held, len) };
        let most = allowed(self.buf.len());
        // A read straight into a body is not bounded by the buffer's size
        // (it does not grow it), only by what the budget allows one read
        // (see `limits::growth`).
        let most_direct = allowed(READ_CHUNK);
        if let Some(r) = self.inbound.read_body(stream, most_direct) {
            let n = r?;
            if n > 0 {
                self.direct = Some(Ok(()));
            }
            return Ok(n);
        }
        read(&mut self.buf[..most])
    }

    /// While bytes have been coming quickly, try reads that do not wait
    /// for up to [`POLL_WINDOW`], yielding the CPU in between: the read's
    /// result if bytes (or the end, or an error) came meanwhile, `None`
    /// when the caller should block.
    ///
    /// A read that finds nothing costs a system call, as a look would; one
    /// that finds bytes takes them in the same call (a look needed a second
    /// call to read them).
    fn poll_briefly(&mut self, stream: &TcpStream, checked: bool) -> Option<io::Result<usize>> {
        if self.poll.0 == 0 || !nowait::SUPPORTED {
            return None;
        }
        let began = Instant::now();
        loop {
            // A read takes the socket's lock, which a write holds for as
            // long as the kernel takes to deliver its bytes (on loopback,
            // to the peer's socket and its reader): a read then would sleep
            // on the lock and be woken by the writer, across vCPUs maybe.
            // Wait for the write to end instead.
            if self.writing.load(Ordering::Acquire) == 0 {
                match self.read_now(stream, false, checked) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    r => {
                        self.poll.0 = (self.poll.0 + 1).min(POLL_SCORE_MAX);
                        return Some(r);
                    }
                }
            }
            if began.elapsed() >= POLL_WINDOW {
                self.poll.0 /= 2;
                return None;
            }
            std::thread::yield_now();
        }
    }

    fn set_timeout(&mut self, t: Duration) {
        let t = t.max(Duration::from_micros(100));
        if t != self.timeout {
            let _ = self.stream.set_read_timeout(Some(t));
            self.timeout = t;
        }
    }
}

/// Who may read a TCP connection's socket (see [`Conn::request`]).
///
/// **Frames before reads.** The read state's decoder may hold complete
/// frames that nobody has taken yet: the connection's thread lends the
/// state between two frames of one read while a quick handler runs
/// ([`Conn::run_lent`]), and a requester that meets a frame it may not
/// deliver stops there, leaving the rest. Whoever takes the state takes
/// those frames (answers at once, others as its rules say) before it reads
/// the socket: a frame already read never waits for the peer's next bytes,
/// which may not come until the peer has what that frame carries (its
/// answer, or ours). A requester that read the socket first could wait
/// there until its deadline for an answer already read.
#[derive(Default)]
struct Lead {
    /// The read state while nobody reads; taken by the thread that does.
    state: Option<Box<ReadState>>,
    /// The read loop runs: requesters may take the state.
    open: bool,
    /// The connection's thread must read next (see
    /// [`ReadState::needs_conn_thread`]).
    urgent: bool,
    /// When a requester or the connection's thread last stopped reading
    /// after an answer: the connection's thread reads again after
    /// [`LAZY_RETURN`] unless a requester has taken over.
    last_exit: Option<Instant>,
    /// The connection's thread sleeps longer than [`LAZY_RETURN`], or
    /// waits for the read state back: a requester that stops reading
    /// wakes it.
    long_sleep: bool,
    /// The connection's thread delivers a frame, the read state parked
    /// here meanwhile: requesters may not take it (unless lent, see
    /// [`Conn::run_lent`]).
    delivering: bool,
    /// The request a handler lent the reading makes on the connection's
    /// thread, parked while another requester reads: that requester wakes
    /// it when it stops, first of all, since it alone may read on when the
    /// frames left need the connection's thread, which is it (see
    /// [`Conn::give_back`]).
    lent_waiter: Option<Arc<Slot>>,
}

thread_local! {
    /// The connection whose thread this is and which lent its reading for
    /// the handler that runs on it now (see [`Conn::run_lent`]); 0 if none.
    static LENT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The connection whose frames this thread delivers now: its small
    /// bounded writes (answers of handlers running here) wait in the
    /// writer's buffer and leave together, in one write, once the frames
    /// read at once are delivered (see `Conn::uncork`); 0 if none.
    static CORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Requests this thread has made (see [`requests_made`]).
    static REQUESTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many requests the calling thread has made over any connection: a
/// handler run that made one waited on a peer, so it does not count as
/// quick (see `Config::quick_handlers_inline`).
pub(crate) fn requests_made() -> u64 {
    REQUESTS.get()
}

/// Ends a lent request's place as [`Lead::lent_waiter`] when it returns.
struct LentWaiter<'a>(&'a Conn);

impl Drop for LentWaiter<'_> {
    fn drop(&mut self) {
        self.0.lead.lock().lent_waiter = None;
    }
}

/// The most frames a handler lent its connection's reading defers while
/// it waits for an answer on that connection (see [`Conn::run_lent`]).
const LENT_DEFER_MAX: usize = 64;

/// How long the connection's thread leaves its socket to requesters after
/// an answer before it reads again itself: a requester that sends its next
/// request within this time reads its answer on its own thread, with no
/// hand-off. While requesters go on reading, the thread looks ever more
/// rarely (see `read::lazy_wait`): frames nobody asked for that come just
/// after the last request wait at most about [`LAZY_RECHECK_MAX`] (one that
/// a requester reads is handed over at once).
const LAZY_RETURN: Duration = Duration::from_micros(500);

/// The longest the connection's thread sleeps, while requesters read its
/// socket, before it looks again whether they still do.
const LAZY_RECHECK_MAX: Duration = Duration::from_millis(4);

/// How long a requester whose answer another thread reads looks for it,
/// yielding the CPU in between, before it sleeps: an answer that comes
/// meanwhile reaches it with no wake from the reader (which costs tens of
/// µs when the requester's vCPU has gone idle), and the reading passes to
/// it with none either. As long as [`POLL_WINDOW`], for the same reason.
const FOLLOW_SPIN: Duration = POLL_WINDOW;

/// Receives what a connection reads. Implemented by the node.
pub(crate) trait FrameSink: Send + Sync {
    /// A frame arrived that is not a response to one of our requests.
    fn on_frame(&self, conn: &Arc<Conn>, frame: Frame);
    /// The connection is gone (after its pending requests were failed).
    fn on_close(&self, conn: &Arc<Conn>);
    /// A connection was registered (before its first frame is read).
    fn on_open(&self, _conn: &Arc<Conn>) {}
}

/// How a connection's frames travel.
enum Link {
    /// Over its own TCP stream.
    Tcp {
        /// Both `None` once an abortive connection is closed.
        writer: Mutex<Option<SecureWriter>>,
        raw: Mutex<Option<Arc<TcpStream>>>,
    },
    /// Through a rendezvous server: each frame is encoded and sent as the
    /// body of a relay frame on `via`, addressed to the peer's session `to`.
    Relay {
        via: Arc<Conn>,
        to: u64,
        /// Dropped on close, which wakes the relay loop.
        stop: Mutex<Option<Sender<()>>>,
        /// End-to-end encryption with the peer, once the handshake through
        /// the relay is done; held while a frame is sent, so records leave
        /// in the order of their nonces.
        sealer: Mutex<Option<Sealer>>,
        /// Signalled when the handshake ends (done or failed).
        ready: Condvar,
    },
}

/// What a handshake yields: who the peer is, the keys, and the bytes it sent
/// after its handshake.
pub(crate) struct Greeted {
    /// The peer's hello and authenticated key.
    pub proof: PeerProof,
    /// The connection's keys.
    pub session: Session,
    /// Bytes read past the handshake (already records).
    pub rest: Vec<u8>,
}

/// The read side's decoding: records to plaintext, plaintext to frames.
pub(crate) struct Inbound {
    opener: Opener,
    decoder: Decoder,
}

impl Inbound {
    /// Decoding for a connection with `session`, frames up to `max_frame`
    /// with headers up to `max_header`.
    pub(crate) fn new(session: &Session, max_frame: usize, max_header: usize) -> Inbound {
        Inbound {
            opener: session.opener(),
            decoder: Decoder::with_header_limit(max_frame, max_header),
        }
    }

    /// Whether a record or a frame is under way.
    fn in_frame(&self) -> bool {
        self.decoder.buffered() > 0 || self.opener.pending() > 0
    }

    /// Whether much of a frame under way is still to come (a large body):
    /// its bytes follow at the sender's pace, and a read that looks for
    /// them briefly before it sleeps spares the sender a wake of this
    /// thread for each piece.
    fn large_frame_under_way(&self) -> bool {
        self.decoder.buffered() > 0 && self.decoder.wanted() >= LARGE_FRAME_LEFT
    }

    /// Bytes held for a partial record and frame.
    fn held(&self) -> usize {
        self.decoder.held() + self.opener.pending()
    }

    /// Read (with `read`) straight into the opener's record buffer, when
    /// that saves a copy (a large record under way, or bulk): the bytes
    /// read, or `None` when the read should go to the connection's buffer.
    fn read_direct(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Option<io::Result<(usize, std::result::Result<(), String>)>> {
        let room = self.opener.room()?;
        let most = room.len();
        let n = match read(room) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if n == 0 {
            return Some(Ok((0, Ok(()))));
        }
        let opener = &mut self.opener;
        let pushed = self
            .decoder
            .push_with(most, |buf| opener.filled(n, buf))
            .map_err(|e| e.to_string());
        Some(Ok((n, pushed)))
    }

    /// In plaintext mode, read at most `most` bytes of a large body under
    /// way straight into the buffer that becomes the body, when at least
    /// [`PLAIN_DIRECT_MIN`] of them wait in the socket: the bytes read, or
    /// `None` when the read should go to the connection's buffer (always,
    /// where the bytes waiting are not known: see [`nowait::waiting`]). The
    /// read never waits (the bytes are there), and goes into memory not
    /// initialised first, through `std`'s `read_to_end`: no copy, and no
    /// zero-filling either.
    fn read_body(&mut self, stream: &TcpStream, most: usize) -> Option<io::Result<usize>> {
        if !self.opener.is_plain() {
            return None;
        }
        let left = self.decoder.body_left()?.min(most);
        if left < PLAIN_DIRECT_MIN {
            return None;
        }
        let n = left.min(nowait::waiting(stream)?);
        if n < PLAIN_DIRECT_MIN {
            return None;
        }
        Some(self.decoder.push_with(n, |buf| {
            let before = buf.len();
            let r = stream.take(n as u64).read_to_end(buf);
            match r {
                Ok(_) => Ok(buf.len() - before),
                // Bytes read before an error are in the buffer: taken.
                Err(_) if buf.len() > before => Ok(buf.len() - before),
                Err(e) => Err(e),
            }
        }))
    }

    /// Feed bytes read from the peer.
    /// Records are decrypted (or, in plaintext mode, copied) straight into
    /// the decoder's buffer.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        // At most what came in and what the opener held of a record.
        let most = bytes.len() + self.opener.pending();
        let opener = &mut self.opener;
        self.decoder
            .push_with(most, |buf| opener.open(bytes, buf))
            .map_err(|e| e.to_string())
    }
}

/// Bytes of a large plaintext body that must wait in the socket for a read
/// to go straight into the body (see [`Inbound::read_body`]): a smaller
/// read costs the look (a system call) more than the copy it saves.
const PLAIN_DIRECT_MIN: usize = 16 * 1024;

/// Bytes of a frame under way still to come for which its reads look
/// before they sleep (see [`Inbound::large_frame_under_way`]).
const LARGE_FRAME_LEFT: usize = 64 * 1024;

/// Bytes read from a socket at once, at most. A stream of large
/// plaintext frames is read in pieces this large (each then copied into
/// its frame): 32 KiB pieces took 0.54-0.66x of plain TCP's throughput of
/// 1 MiB bodies on a machine whose system calls are slow, 128 KiB ones
/// 0.72-1.03x. Only a connection whose reads fill its buffer grows it,
/// and a quiet one shrinks it back to [`READ_FIRST`].
pub(crate) const READ_CHUNK: usize = 128 * 1024;
/// The read buffer a connection starts with; it grows to [`READ_CHUNK`]
/// while reads fill it.
const READ_FIRST: usize = 4 * 1024;

/// The most bytes one read into a buffer of `len` may take, unchecked by
/// the memory budget, while the connection holds `held` bytes of partial
/// frames: up to half the free allowance held, the rest of the allowance
/// (a requester's read, which the budget does not check); past it, only
/// the connection's thread reads, and it checks the budget first.
fn read_most(held: usize, len: usize) -> usize {
    if held > FREE_PER_CONN / 2 {
        len
    } else {
        (FREE_PER_CONN - held).min(len)
    }
}

/// The read buffer's size after a read of `n` bytes into `len`: doubled,
/// up to [`READ_CHUNK`], when the read filled it.
fn read_size_after(len: usize, n: usize) -> usize {
    if n == len && len < READ_CHUNK {
        (len * 2).min(READ_CHUNK)
    } else {
        len
    }
}

/// What bounds a connection's read loop (from the node's `Config`).
pub(crate) struct ReadLimits<'a> {
    /// The idle timeout (inbound connections: twice it).
    pub idle: Duration,
    /// The idle timeout of a connection that has carried only the ring's
    /// own frames (inbound connections: twice it).
    pub ring_idle: Duration,
    /// How long a bounced request's answer is waited for.
    pub forward_timeout: Duration,
    /// The minimum rate of a frame under way, bytes a second (0: none).
    pub min_frame_rate: u64,
    /// The window the rate is measured over, and the longest wait for
    /// memory before the largest holder is closed.
    pub frame_grace: Duration,
    /// The node's budget for partial frames.
    pub memory: &'a Memory,
}

/// The relay frame type (see `crate::rendezvous`).
pub(crate) const RELAY_TYPE: &str = "p2prs.rv.relay";
/// Room kept in a relayed frame for the relay frame's own header.
pub(crate) const RELAY_OVERHEAD: usize = 4096;

/// One open, handshaken connection to a peer.
pub(crate) struct Conn {
    /// Local identifier of this connection.
    pub id: u64,
    /// The peer's socket address as seen by this end.
    pub remote: SocketAddr,
    /// The address the peer listens on, if it said so (corrected for a
    /// wildcard host with the address it connects from).
    pub peer_listen: Option<SocketAddr>,
    /// Whether this end opened the connection.
    pub outbound: bool,
    peer_id: Mutex<Option<NodeId>>,
    /// The peer's authenticated identity (unset only in plaintext mode, and
    /// on a relayed connection until its handshake is done).
    peer_key: std::sync::OnceLock<PublicKey>,
    link: Link,
    path: AtomicU8,
    /// Close with a reset, never leaving the socket in TIME_WAIT (punched
    /// connections and the rendezvous link: see `docs/nat-traversal.md`).
    abortive: AtomicBool,
    /// The peer closed its side first.
    eof: AtomicBool,
    closed: AtomicBool,
    pending: Mutex<HashMap<u64, Pending>>,
    next_req: AtomicU64,
    pins: AtomicUsize,
    /// A user message or request went either way: the connection is kept
    /// for the user's idle timeout, not the ring's shorter one.
    user: AtomicBool,
    last_active: Mutex<Instant>,
    max_frame: usize,
    /// The thread that reads this connection: a request made on it would
    /// wait for an answer only that thread can read.
    reader: Mutex<Option<std::thread::ThreadId>>,
    /// Why the peer refused this node's bytes, when it said so before
    /// closing (`p2prs.refused`): the error pending and later calls get.
    refused: Mutex<Option<(crate::error::ErrorCode, String)>>,
    /// This end sent a refusal notice: linger before closing.
    refusal_sent: AtomicBool,
    /// How long a write by another thread may make no progress (see
    /// [`Conn::send_bounded`]).
    slow_peer: Mutex<Duration>,
    /// While a write is under way, when it began or last made progress
    /// ([`micros_now`]); 0 when none is.
    writing_since: Arc<AtomicU64>,
    /// How often requesters got their answers while they looked for them
    /// lately (up by one each time, halved each time one had to sleep): a
    /// requester looks for [`FOLLOW_SPIN`] only while this is not zero, for
    /// [`BUSY_GAP`] otherwise, so that requests to a slow peer do not spend
    /// 200 µs of CPU each looking.
    follow_score: AtomicU8,
    /// Frames wait in the writer's buffer for [`Conn::uncork`].
    corked: AtomicBool,
    /// Who reads the socket (TCP links).
    lead: Mutex<Lead>,
    /// The connection's thread waits here for the read state.
    lead_cv: Condvar,
    /// Small frames of blocking sends waiting to be written together
    /// (TCP links; see [`Conn::send_queued`]).
    queue: Mutex<SendQueue>,
    /// Senders wait here for their frame to be written.
    queue_cv: Condvar,
    /// Answers given to requesters that have not taken them yet: each is
    /// likely to send its next request soon (see [`Conn::send_queued`]).
    unclaimed: Arc<AtomicUsize>,
    /// Writes made so far (see [`ReadState::read`]).
    sent: AtomicU64,
    /// The node's flusher and this connection (TCP links): a sender's
    /// one-way messages may wait in the send queue for it (see
    /// [`Conn::send_queued`]).
    flush: std::sync::OnceLock<(Arc<super::flush::Flusher>, std::sync::Weak<Conn>)>,
    /// Reads from the socket that brought bytes (a stream of messages is
    /// one with nothing read between them: see `queue.rs`).
    reads: AtomicU64,
}

/// Small frames of blocking sends (requests, one-way messages) waiting to
/// be written: while one thread writes, others append their frames here,
/// and it writes them all with its next write (one record, one system
/// call) before it lets go. See [`Conn::send_queued`].
#[derive(Default)]
struct SendQueue {
    /// Encoded frames, in the order they were queued.
    buf: Vec<u8>,
    /// An empty buffer to swap with `buf`, so that neither is allocated
    /// for every write.
    spare: Vec<u8>,
    /// Frames queued so far (the last one's number).
    queued: u64,
    /// Frames written so far (the last written one's number).
    written: u64,
    /// A thread writes what is queued.
    writing: bool,
    /// Senders waiting on `queue_cv` for their frame to be written.
    waiters: usize,
    /// A write failed or the connection closed: nothing more is written.
    failed: bool,
    /// When the sender last queued a user's one-way message
    /// ([`micros_now`]).
    last_msg: u64,
    /// [`Conn::reads`] then.
    reads_at_msg: u64,
    /// Messages in a row, each within [`queue::STREAM_GAP`] of the one
    /// before with nothing read between (0 after a pause or a read).
    run: u32,
    /// Frames in `buf` that may not wait for the flusher (requests,
    /// messages outside a stream).
    others: usize,
    /// A thread took frames from `buf` to write them before its own
    /// (`Conn::take_queued`) and has not written them yet.
    flushing: bool,
    /// When the oldest message that waits in `buf` with nobody writing was
    /// queued ([`micros_now`]); 0 if none does.
    deferred_since: u64,
}

/// A blocking send of a frame whose body is at most this large is queued
/// behind a write under way instead of waiting for the writer's lock.
const QUEUE_BODY_MAX: usize = 16 * 1024;

/// How many times the thread about to write the send queue yields the CPU
/// while requesters that have their answers have not taken them yet.
const GATHER_YIELDS: usize = 4;

/// Rounds the thread writing the queue writes for others before it hands
/// the writing to a sender that waits.
const QUEUE_ROUNDS: usize = 4;

impl Conn {
    pub(crate) fn new(
        id: u64,
        stream: &Arc<TcpStream>,
        proof: &PeerProof,
        session: &Session,
        outbound: bool,
        max_frame: usize,
    ) -> io::Result<Conn> {
        let hello = &proof.hello;
        let remote = stream.peer_addr()?;
        let peer_listen = hello
            .listen
            .as_deref()
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .map(|mut a| {
                if a.ip().is_unspecified() {
                    a.set_ip(remote.ip());
                }
                a
            })
            // A peer may only claim to listen on the address it connects
            // from: another host cannot take over traffic meant for a third.
            .filter(|a| {
                let same = a.ip() == remote.ip();
                if !same {
                    log::debug!("{remote} claims to listen on {a}; not believed");
                }
                same
            });
        let progress = Arc::new(AtomicU64::new(0));
        let link = Link::Tcp {
            writer: Mutex::new(Some(SecureWriter::new(
                Shared::new(Arc::clone(stream), Arc::clone(&progress)),
                session.sealer(),
            ))),
            raw: Mutex::new(Some(Arc::clone(stream))),
        };
        let peer_id = hello.id.map(NodeId);
        let mut c = Conn::with_link(id, remote, peer_listen, outbound, peer_id, link, max_frame);
        c.writing_since = progress;
        if let Some(k) = proof.key {
            let _ = c.peer_key.set(k);
        }
        Ok(c)
    }

    /// A connection over `link` with nothing sent or pending yet.
    fn with_link(
        id: u64,
        remote: SocketAddr,
        peer_listen: Option<SocketAddr>,
        outbound: bool,
        peer_id: Option<NodeId>,
        link: Link,
        max_frame: usize,
    ) -> Conn {
        let path = match link {
            Link::Tcp { .. } => Path::Direct,
            Link::Relay { .. } => Path::Relayed,
        };
        Conn {
            id,
            remote,
            peer_listen,
            outbound,
            peer_id: Mutex::new(peer_id),
            peer_key: std::sync::OnceLock::new(),
            link,
            path: AtomicU8::new(path as u8),
            abortive: AtomicBool::new(false),
            eof: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            pins: AtomicUsize::new(0),
            user: AtomicBool::new(false),
            last_active: Mutex::new(Instant::now()),
            max_frame,
            reader: Mutex::new(None),
            refused: Mutex::new(None),
            refusal_sent: AtomicBool::new(false),
            slow_peer: Mutex::new(crate::Config::default().slow_peer_timeout),
            writing_since: Arc::new(AtomicU64::new(0)),
            follow_score: AtomicU8::new(1),
            corked: AtomicBool::new(false),
            lead: Mutex::new(Lead::default()),
            lead_cv: Condvar::new(),
            queue: Mutex::new(SendQueue::default()),
            queue_cv: Condvar::new(),
            unclaimed: Arc::new(AtomicUsize::new(0)),
            sent: AtomicU64::new(0),
            flush: std::sync::OnceLock::new(),
            reads: AtomicU64::new(0),
        }
    }

    /// A connection whose frames go through the rendezvous connection `via`
    /// to the peer registered there as session `to`. Returns the receiver
    /// that [`Conn::relay_loop`] waits on for the close signal.
    #[allow(clippy::too_many_arguments)] // reason: one plain constructor, called once
    pub(crate) fn new_relay(
        id: u64,
        via: Arc<Conn>,
        to: u64,
        remote: SocketAddr,
        peer_listen: Option<SocketAddr>,
        outbound: bool,
        max_frame: usize,
    ) -> (Conn, Receiver<()>) {
        let (stop_tx, stop_rx) = bounded(0);
        let link = Link::Relay {
            via,
            to,
            stop: Mutex::new(Some(stop_tx)),
            sealer: Mutex::new(None),
            ready: Condvar::new(),
        };
        // Room for the relay frame's header and the records' overhead
        // (18 bytes per 64 KiB record).
        let inner = max_frame.saturating_sub(RELAY_OVERHEAD);
        let inner = inner - inner / 2048;
        let conn = Conn::with_link(
            id,
            remote,
            peer_listen,
            outbound,
            None,
            link,
            inner.max(1024),
        );
        (conn, stop_rx)
    }

    /// Send raw bytes (handshake messages) to the peer of a relayed connection.
    pub(crate) fn send_relay_bytes(&self, bytes: Vec<u8>) -> Result<()> {
        let Link::Relay { via, to, .. } = &self.link else {
            return Err(Error::InvalidArgument("not a relayed connection".into()));
        };
        let mut outer = Frame::new(Kind::Message, RELAY_TYPE, serde_json::json!({ "to": to }));
        outer.body = Some(bytes);
        via.send_frame(&outer)
    }

    /// The handshake through the relay is done: frames may flow.
    pub(crate) fn secure_relay(&self, proof: &PeerProof, session: &Session) {
        if let Link::Relay { sealer, ready, .. } = &self.link {
            if let Some(k) = proof.key {
                let _ = self.peer_key.set(k);
            }
            *self.peer_id.lock() = proof.hello.id.map(NodeId);
            *sealer.lock() = Some(session.sealer());
            ready.notify_all();
        }
    }

    /// Wait until a relayed connection is secured (true), or closed or out
    /// of time (false). Other connections are always ready.
    pub(crate) fn wait_ready(&self, timeout: Duration) -> bool {
        let Link::Relay { sealer, ready, .. } = &self.link else {
            return !self.is_closed();
        };
        let deadline = Instant::now() + timeout;
        let mut g = sealer.lock();
        while g.is_none() && !self.is_closed() {
            if ready.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
        g.is_some() && !self.is_closed()
    }

    /// The largest frame this connection sends or accepts.
    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// How frames to this peer travel.
    pub(crate) fn path(&self) -> Path {
        Path::from_u8(self.path.load(Ordering::Acquire))
    }

    /// Record that this TCP connection was punched; it then closes
    /// abortively (see [`Conn::set_abortive`]).
    pub(crate) fn set_punched(&self) {
        if matches!(self.link, Link::Tcp { .. }) {
            self.path.store(Path::Punched as u8, Ordering::Release);
            self.set_abortive();
        }
    }

    /// Close this connection with a reset instead of a FIN handshake, so that
    /// neither end keeps its four-tuple in TIME_WAIT: a punched connection
    /// and the rendezvous link must be reopenable from the same port at once.
    pub(crate) fn set_abortive(&self) {
        if let Link::Tcp { raw, .. } = &self.link {
            if let Some(raw) = raw.lock().as_ref() {
                let _ = socket2::SockRef::from(raw).set_linger(Some(Duration::ZERO));
            }
            self.abortive.store(true, Ordering::Release);
        }
    }

    /// The relay session this connection's frames go to, for a relayed one.
    pub(crate) fn relay_target(&self) -> Option<(&Arc<Conn>, u64)> {
        match &self.link {
            Link::Relay { via, to, .. } => Some((via, *to)),
            Link::Tcp { .. } => None,
        }
    }

    /// The peer's authenticated public key (`None` in plaintext mode and on
    /// relayed connections not yet secured).
    pub(crate) fn peer_key(&self) -> Option<PublicKey> {
        self.peer_key.get().copied()
    }

    /// The peer's node ID, when known.
    pub(crate) fn peer_id(&self) -> Option<NodeId> {
        *self.peer_id.lock()
    }

    /// Record the peer's node ID (learned from the ring protocol).
    pub(crate) fn set_peer_id(&self, id: Option<NodeId>) {
        *self.peer_id.lock() = id;
    }

    /// The best address to describe the peer by: where it listens, else its socket.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer_listen.unwrap_or(self.remote)
    }

    /// Whether the connection has been closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Keep the connection open past the idle timeout.
    pub(crate) fn pin(&self) {
        self.pins.fetch_add(1, Ordering::AcqRel);
    }

    /// Undo one [`Conn::pin`]; returns the pins left.
    pub(crate) fn unpin(&self) -> usize {
        let prev = self
            .pins
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(1))
            })
            .unwrap_or(0);
        prev.saturating_sub(1)
    }

    /// A write went out: [`Conn::touch`], and count it (a read polls
    /// only on a connection that has sent since its last read).
    fn sent_now(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        *self.last_active.lock() = Instant::now();
    }

    /// Set how long [`Conn::send_bounded`] may wait for the peer.
    pub(crate) fn set_slow_peer_timeout(&self, t: Duration) {
        *self.slow_peer.lock() = t.max(Duration::from_millis(1));
    }

    /// Write one frame on behalf of another thread or peer (an answer, a
    /// forwarded answer, a failure notice, a relayed frame), holding the
    /// caller at most about `Config::slow_peer_timeout`: if this
    /// connection's writer stays busy that long, the frame is dropped (an
    /// error; the connection stays open, its own writer bounds itself); if
    /// the write makes no progress that long, the peer does not read and
    /// the connection is closed.
    pub(crate) fn send_bounded(&self, frame: &Frame) -> Result<()> {
        let bound = *self.slow_peer.lock();
        self.send_frame_within(frame, Some(bound))
    }

    /// A bounded write of a small frame: never blocks. What the socket does
    /// not take waits in the backlog; a backlog that has not moved for
    /// `bound`, or grown past [`BACKLOG_MAX`], means the peer does not read.
    fn write_try(
        w: &mut SecureWriter,
        frame: &wire::Encoded<'_>,
        max: usize,
        bound: Duration,
    ) -> io::Result<()> {
        let stuck = || io::Error::new(io::ErrorKind::TimedOut, "the peer does not read");
        if w.stalled.is_some_and(|t| t.elapsed() >= bound) {
            return Err(stuck());
        }
        frame.write(&mut *w, max)?;
        w.flush_try()?;
        if w.backlog.len() > BACKLOG_MAX {
            return Err(stuck());
        }
        Ok(())
    }

    /// A small bounded write made while this thread delivers the
    /// connection's frames: buffered, sent by [`Conn::uncork`].
    fn write_corked(
        w: &mut SecureWriter,
        frame: &wire::Encoded<'_>,
        max: usize,
        bound: Duration,
    ) -> io::Result<()> {
        if w.stalled.is_some_and(|t| t.elapsed() >= bound) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer does not read",
            ));
        }
        frame.write(&mut *w, max)
    }

    /// Send the frames buffered by bounded writes while this thread
    /// delivered frames, as a bounded write.
    fn uncork(&self) {
        if !self.corked.swap(false, Ordering::AcqRel) {
            return;
        }
        let Link::Tcp { writer, .. } = &self.link else {
            return;
        };
        let bound = *self.slow_peer.lock();
        let Some(mut g) = self.lock_writer_within(writer, bound) else {
            log::debug!("{}: the writer stays busy; answers wait", self.peer_addr());
            self.corked.store(true, Ordering::Release);
            return;
        };
        let Some(w) = g.as_mut() else { return };
        let _writing = Writing::begin(&self.writing_since);
        let r = w.flush_try();
        let stuck = w.backlog.len() > BACKLOG_MAX;
        drop(g);
        if r.is_err() || stuck {
            self.close_unread(bound);
        }
    }

    /// Send what this connection's backlog holds, if its writer is free,
    /// and close the connection if the backlog has not moved for the
    /// slow-peer bound. Returns whether a backlog is left.
    /// Close a connection whose peer has not read for `bound`.
    fn close_unread(&self, bound: Duration) {
        log::warn!(
            "{}: a write made no progress for {bound:?}: the peer does not read; closing the \
             connection",
            self.peer_addr()
        );
        self.close();
    }

    fn push_backlog(&self) -> bool {
        let Link::Tcp { writer, .. } = &self.link else {
            return false;
        };
        let Some(mut g) = writer.try_lock() else {
            return false;
        };
        let Some(w) = g.as_mut() else { return false };
        if w.backlog.is_empty() {
            return false;
        }
        let bound = *self.slow_peer.lock();
        // Marked as a write under way like every other, so that
        // `writing_since` is 0 again once it is done (a read's poll skips
        // its reads that do not wait while it is not).
        let writing = Writing::begin(&self.writing_since);
        let r = w.push_backlog();
        drop(writing);
        let stuck = w.stalled.is_some_and(|t| t.elapsed() >= bound);
        let left = !w.backlog.is_empty();
        drop(g);
        if r.is_err() || stuck {
            self.close_unread(bound);
            return false;
        }
        left
    }

    /// The connection has gone quiet: the writer frees buffers grown for
    /// larger frames, unless another thread writes now.
    pub(super) fn writer_quiet(&self) {
        if let Link::Tcp { writer, .. } = &self.link {
            if let Some(w) = writer.try_lock().as_mut().and_then(|g| g.as_mut()) {
                w.quiet();
            }
        }
    }

    /// The writer's lock within `bound`; none at once if the thread that
    /// holds it has made no progress for [`STUCK_WRITE`] (the peer is slow:
    /// one thread waiting on it is enough).
    fn lock_writer_within<'a>(
        &self,
        writer: &'a Mutex<Option<SecureWriter>>,
        bound: Duration,
    ) -> Option<parking_lot::MutexGuard<'a, Option<SecureWriter>>> {
        if let Some(g) = writer.try_lock() {
            return Some(g);
        }
        let deadline = Instant::now() + bound;
        loop {
            let step =
                Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now()));
            if let Some(g) = writer.try_lock_for(step) {
                return Some(g);
            }
            let since = self.writing_since.load(Ordering::Acquire);
            let stuck =
                since != 0 && micros_now().saturating_sub(since) >= STUCK_WRITE.as_micros() as u64;
            if stuck || Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Write one frame, flushing it. A failed write closes the connection.
    pub(crate) fn send_frame(&self, frame: &Frame) -> Result<()> {
        self.send_blocking(frame, true)
    }

    /// A blocking send: a small frame on a TCP link through the send queue
    /// (waiting for it to be written if `wait`), any other directly.
    fn send_blocking(&self, frame: &Frame, wait: bool) -> Result<()> {
        let small = frame.body.as_ref().map_or(0, |b| b.len()) <= QUEUE_BODY_MAX;
        if small && matches!(self.link, Link::Tcp { .. }) {
            self.send_queued(frame, wait)
        } else {
            self.send_frame_within(frame, None)
        }
    }

    /// Queue a small frame for writing. If no thread is writing, this one
    /// writes it at once (and what others queue meanwhile); else the thread
    /// writing takes it with what it writes next, so that frames of many
    /// threads leave in one write. With `wait`, returns once the frame is
    /// written (or its write failed); without (a request, whose caller
    /// waits for the answer anyway), at once: a failed write closes the
    /// connection, which fails the request.
    fn send_queued(&self, frame: &Frame, wait: bool) -> Result<()> {
        if matches!(frame.kind, Kind::Message | Kind::Request) && frame.msg_type.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a message needs a type: it cannot be empty or blank".into(),
            ));
        }
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let mut bytes = Vec::with_capacity(256 + frame.body.as_ref().map_or(0, |b| b.len()));
        self.encode(frame, &mut bytes)?;
        self.note_user(frame);
        let stream = wait && frame.kind == Kind::Message && !frame.msg_type.starts_with("p2prs.");
        let mut q = self.queue.lock();
        if q.failed {
            return Err(self.closed_error());
        }
        q.buf.extend_from_slice(&bytes);
        q.queued += 1;
        let seq = q.queued;
        if stream {
            match self.defer(&mut q) {
                Defer::Queued => return Ok(()),
                Defer::Arm(flusher, me) => {
                    drop(q);
                    if flusher.arm(me) {
                        return Ok(());
                    }
                    q = self.queue.lock();
                    q.deferred_since = 0;
                }
                Defer::No => {}
            }
        }
        q.others += 1;
        if !wait && !q.writing && self.writer_held_elsewhere() && self.flush_soon() {
            // A request, whose caller waits for its answer within its own
            // timeout, does not wait for another thread's write (a large
            // frame, a peer that reads slowly): the flusher writes it once
            // the socket is free.
            return Ok(());
        }
        if q.writing {
            if !wait {
                return Ok(());
            }
            q.waiters += 1;
            // A thread that took queued frames to write before its own
            // (`flushing`) says when they are written, as the writer does.
            while q.written < seq && !q.failed && (q.writing || q.flushing) {
                self.queue_cv.wait(&mut q);
            }
            q.waiters -= 1;
            let done = q.written >= seq;
            if q.failed && !done {
                return Err(self.closed_error());
            }
            if !q.writing && !q.buf.is_empty() && !q.failed {
                // The writer handed the writing over (this frame may have
                // been written meanwhile): take it, so that what others
                // queued without waiting is written too.
                q.writing = true;
                drop(q);
                let r = self.write_queue(seq);
                return if done { Ok(()) } else { r };
            }
            drop(q);
            if done {
                self.touch();
                return Ok(());
            }
            // Not written, nobody writing, nothing queued: it cannot be
            // (the frame is queued until written or the queue fails).
            return Err(self.closed_error());
        }
        q.writing = true;
        drop(q);
        // Requesters that were just given their answers usually send their
        // next requests at once: let them queue theirs for this write.
        let mut waits = 0;
        while waits < GATHER_YIELDS && self.unclaimed.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
            waits += 1;
        }
        self.write_queue(seq)
    }

    /// Whether another thread holds the socket's writer now (a write under
    /// way outside the send queue).
    fn writer_held_elsewhere(&self) -> bool {
        matches!(&self.link, Link::Tcp { writer, .. } if writer.is_locked())
    }

    /// Have the flusher write the send queue as soon as the writer is free
    /// (it looks again every few ms while another thread holds it). False
    /// if it cannot: the caller writes it.
    fn flush_soon(&self) -> bool {
        self.flush
            .get()
            .is_some_and(|(flusher, me)| flusher.arm_after(me.clone(), Duration::ZERO))
    }

    /// Write what is queued, and what others queue meanwhile, as the one
    /// thread writing the queue; `seq` is this thread's frame.
    fn write_queue(&self, seq: u64) -> Result<()> {
        let Link::Tcp { writer, .. } = &self.link else {
            return Err(self.closed_error());
        };
        let mut rounds = 0;
        loop {
            let mut g = writer.lock();
            let (mut out, upto) = {
                let mut q = self.queue.lock();
                let mut out = std::mem::take(&mut q.spare);
                std::mem::swap(&mut out, &mut q.buf);
                q.deferred_since = 0;
                q.others = 0;
                (out, q.queued)
            };
            let r = match g.as_mut() {
                None => Err(io::Error::from(io::ErrorKind::NotConnected)),
                Some(w) => {
                    let _writing = Writing::begin(&self.writing_since);
                    w.stream.normal_timeout();
                    w.write_all(&out).and_then(|_| w.flush())
                }
            };
            drop(g);
            rounds += 1;
            out.clear();
            let mut q = self.queue.lock();
            if out.capacity() <= 64 * 1024 {
                q.spare = out;
            }
            if let Err(e) = r {
                q.failed = true;
                q.writing = false;
                q.buf = Vec::new();
                self.queue_cv.notify_all();
                drop(q);
                let e = self.write_failed(e, None);
                return Err(if upto >= seq { e } else { self.closed_error() });
            }
            q.written = q.written.max(upto);
            // After a few rounds, what only a stream's messages wait for is
            // left to the flusher (and that stream's sender): this thread
            // does not write another thread's stream for as long as it lasts.
            if q.buf.is_empty()
                || (rounds >= QUEUE_ROUNDS && (q.waiters > 0 || self.leave_to_flusher(&mut q)))
            {
                q.writing = false;
                if q.waiters > 0 {
                    self.queue_cv.notify_all();
                }
                drop(q);
                self.sent_now();
                return Ok(());
            }
            if q.waiters > 0 {
                self.queue_cv.notify_all();
            }
        }
    }

    /// A write failed: close the connection, and say why.
    fn write_failed(&self, e: io::Error, bound: Option<Duration>) -> Error {
        let after = bound.unwrap_or_else(|| self.write_timeout());
        if bound.is_some() {
            log::warn!(
                "{}: a write made no progress for {after:?}: the peer does not \
                 read; closing the connection",
                self.peer_addr()
            );
        }
        self.close();
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            Error::Timeout {
                kind: crate::error::TimeoutKind::Write,
                what: format!("a write to {}", self.peer_addr()),
                after,
            }
        } else if self.is_closed() {
            self.closed_error()
        } else {
            Error::io(format!("writing to {}", self.peer_addr()), e)
        }
    }

    fn send_frame_within(&self, frame: &Frame, bound: Option<Duration>) -> Result<()> {
        if matches!(frame.kind, Kind::Message | Kind::Request) && frame.msg_type.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a message needs a type: it cannot be empty or blank".into(),
            ));
        }
        if self.is_closed() {
            return Err(self.closed_error());
        }
        self.note_user(frame);
        let result = match &self.link {
            Link::Tcp { writer, .. } => {
                // Encoded once, before the writer is taken.
                let enc = wire::Encoded::new(frame).map_err(|e| {
                    Error::io(format!("encoding a frame for {}", self.peer_addr()), e)
                })?;
                let mut g = match bound {
                    None => writer.lock(),
                    Some(b) => match self.lock_writer_within(writer, b) {
                        Some(g) => g,
                        None => {
                            return Err(Error::Timeout {
                                kind: crate::error::TimeoutKind::Write,
                                what: format!(
                                    "the writer of {} (busy: the frame is dropped)",
                                    self.peer_addr()
                                ),
                                after: b,
                            })
                        }
                    },
                };
                let Some(w) = g.as_mut() else {
                    return Err(self.closed_error());
                };
                let _writing = Writing::begin(&self.writing_since);
                // Messages this or another thread left queued go first.
                let queued = self.take_queued();
                let r = match &queued {
                    Some((bytes, _)) => w.write_all(bytes),
                    None => Ok(()),
                };
                // Each kind of write sets the socket's write timeout it needs
                // (no system call when it is set so already).
                let r = r.and_then(|_| match bound {
                    None => {
                        w.stream.normal_timeout();
                        w.direct = true;
                        let r = enc.write(&mut *w, self.max_frame).and_then(|_| w.flush());
                        w.direct = false;
                        r
                    }
                    Some(b) if enc.size() <= TRY_MAX => {
                        if CORK.get() == self.id {
                            Self::write_corked(w, &enc, self.max_frame, b)
                                .map(|_| self.corked.store(true, Ordering::Release))
                        } else {
                            Self::write_try(w, &enc, self.max_frame, b)
                        }
                    }
                    Some(b) => {
                        // The slow-peer bound, plus the frame's size at 1 MiB/s.
                        let allowed = b + Duration::from_micros(enc.size());
                        w.stream.2 = Some(Instant::now() + allowed);
                        w.direct = true;
                        let r = enc.write(&mut *w, self.max_frame).and_then(|_| w.flush());
                        w.direct = false;
                        w.stream.2 = None;
                        r
                    }
                });
                if let Some((_, upto)) = queued {
                    let mut ok = r.is_ok();
                    if r.as_ref()
                        .is_err_and(|e| e.kind() == io::ErrorKind::InvalidInput)
                    {
                        // The frame was refused, not the queued messages.
                        ok = match bound {
                            None => w.flush(),
                            Some(_) => w.flush_try(),
                        }
                        .is_ok();
                    }
                    drop(g);
                    self.queue_written(upto, ok);
                }
                r
            }
            Link::Relay {
                via, to, sealer, ..
            } => return self.send_relayed(via, *to, sealer, frame),
        };
        match result {
            Ok(()) => {
                self.sent_now();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                // Refused before a byte was written: the connection is intact.
                let size = wire::encoded_size(frame).unwrap_or(0);
                Err(Error::FrameTooLarge {
                    size,
                    max: self.max_frame as u64,
                })
            }
            Err(e) => Err(self.write_failed(e, bound)),
        }
    }

    /// Append `frame`'s encoding to `out`: [`Error::FrameTooLarge`] past
    /// this connection's frame size limit.
    fn encode(&self, frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
        wire::write_frame(out, frame, self.max_frame).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput {
                Error::FrameTooLarge {
                    size: wire::encoded_size(frame).unwrap_or(0),
                    max: self.max_frame as u64,
                }
            } else {
                Error::io(format!("encoding a frame for {}", self.peer_addr()), e)
            }
        })
    }

    /// Encode `frame`, encrypt it for the peer, and send it through the
    /// rendezvous as a relay body.
    fn send_relayed(
        &self,
        via: &Conn,
        to: u64,
        sealer: &Mutex<Option<Sealer>>,
        frame: &Frame,
    ) -> Result<()> {
        let mut plain = Vec::new();
        self.encode(frame, &mut plain)?;
        let mut g = sealer.lock();
        let Some(sealer) = g.as_mut() else {
            return Err(Error::InvalidArgument(format!(
                "the relayed connection to {} is not secured yet",
                self.peer_addr()
            )));
        };
        let mut body = Vec::with_capacity(plain.len() + 64);
        sealer.seal(&plain, &mut body).map_err(|e| {
            Error::io(
                "encrypting a relayed frame",
                io::Error::other(e.to_string()),
            )
        })?;
        let mut outer = Frame::new(Kind::Message, RELAY_TYPE, serde_json::json!({ "to": to }));
        outer.body = Some(body);
        let sent = via.send_frame(&outer);
        drop(g);
        match sent {
            Ok(()) => {
                self.sent_now();
                Ok(())
            }
            Err(e) => {
                if via.is_closed() {
                    self.close();
                    Err(self.closed_error())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The write timeout set on the socket (zero if none or relayed).
    fn write_timeout(&self) -> Duration {
        match &self.link {
            Link::Tcp { raw, .. } => raw
                .lock()
                .as_ref()
                .and_then(|r| r.write_timeout().ok().flatten())
                .unwrap_or_default(),
            Link::Relay { .. } => Duration::ZERO,
        }
    }

    pub(crate) fn closed_error(&self) -> Error {
        if let Some((code, message)) = self.refused.lock().clone() {
            return Error::Remote { code, message };
        }
        Error::ConnectionClosed {
            peer: self.peer_addr().to_string(),
        }
    }

    fn request_frame(&self, msg: Message, pending: Pending) -> Result<u64> {
        self.request_frame_with(msg, pending, 0)
    }

    fn request_frame_with(&self, msg: Message, pending: Pending, bounces: u32) -> Result<u64> {
        let bounded = matches!(pending, Pending::Forward { .. });
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let mut frame = msg.into_frame(Kind::Request, Some(req));
        frame.bounces = bounces;
        self.pending.lock().insert(req, pending);
        if self.is_closed() {
            self.pending.lock().remove(&req);
            return Err(self.closed_error());
        }
        let sent = if bounded {
            self.send_bounded(&frame)
        } else {
            self.send_blocking(&frame, false)
        };
        if let Err(e) = sent {
            self.pending.lock().remove(&req);
            return Err(e);
        }
        Ok(req)
    }

    /// Send a request and wait up to `timeout` for its answer.
    ///
    /// While nobody else reads the socket, the requester reads it itself
    /// (leader/follower): its answer then reaches it with no hand-off from
    /// another thread. It reads answers only; any other frame it meets is
    /// left to the connection's thread, which it wakes. Answers to other
    /// requesters it reads are given to them; when it has its own, it
    /// passes the reading on to another waiting requester, or leaves it to
    /// the connection's thread (see [`LAZY_RETURN`]).
    pub(crate) fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
        REQUESTS.set(REQUESTS.get().wrapping_add(1));
        let lent = LENT.get() == self.id;
        if !lent && *self.reader.lock() == Some(std::thread::current().id()) {
            return Err(Error::InvalidArgument(format!(
                "a request to {} from the thread that reads its connection (an inline \
                 handler) could never get its answer; use a pooled handler",
                self.peer_addr()
            )));
        }
        let slot = Arc::new(Slot {
            state: Mutex::default(),
            ready: Condvar::new(),
            unclaimed: Some(Arc::clone(&self.unclaimed)),
        });
        let _unlist = lent.then_some(LentWaiter(self));
        let deadline = Instant::now() + timeout;
        let kind = msg.kind().to_string();
        let req = self.request_frame(msg, Pending::Wait(Arc::clone(&slot)))?;
        let look = if self.follow_score.load(Ordering::Relaxed) > 0 {
            FOLLOW_SPIN
        } else {
            BUSY_GAP
        };
        let spin_until = Instant::now() + look;
        let mut slept = false;
        loop {
            if let Some(answer) = slot.take() {
                self.followed(!slept);
                return answer;
            }
            if Instant::now() >= deadline {
                if self.pending.lock().remove(&req).is_none() {
                    if let Some(answer) = slot.take() {
                        return answer;
                    }
                }
                return Err(Error::Timeout {
                    kind: crate::error::TimeoutKind::Response,
                    what: format!("a response to {kind:?} from {}", self.peer_addr()),
                    after: timeout,
                });
            }
            if let Some(state) = self.try_lead(lent, &slot) {
                if let Some(e) = self.lead_for(state, &slot, deadline, lent) {
                    // A handler's request on its connection's thread that
                    // can read no further: nobody else will read until the
                    // handler returns, so the answer cannot come.
                    if self.pending.lock().remove(&req).is_none() {
                        if let Some(answer) = slot.take() {
                            return answer;
                        }
                    }
                    return slot.take().unwrap_or(Err(e));
                }
                continue;
            }
            if !lent && Instant::now() < spin_until {
                std::thread::yield_now();
                continue;
            }
            slept = true;
            slot.park(deadline);
        }
    }

    /// A requester got its answer, while it looked (`quick`) or after it
    /// slept: see `follow_score`.
    fn followed(&self, quick: bool) {
        let s = self.follow_score.load(Ordering::Relaxed);
        let next = if quick {
            s.saturating_add(1).min(POLL_SCORE_MAX)
        } else {
            s / 2
        };
        if next != s {
            self.follow_score.store(next, Ordering::Relaxed);
        }
    }

    /// Send a request whose answer is relayed to request `req` on `back`.
    pub(crate) fn forward(
        &self,
        msg: Message,
        back: Arc<Conn>,
        req: u64,
        bounces: u32,
    ) -> Result<()> {
        let since = Instant::now();
        self.request_frame_with(msg, Pending::Forward { back, req, since }, bounces)
            .map(|_| ())
    }

    /// Deliver a response or error frame to whoever waits for it.
    /// Returns false when no request with that ID is outstanding.
    pub(crate) fn complete(&self, frame: Frame) -> bool {
        self.complete_to(frame).is_some()
    }

    /// [`Conn::complete`], saying whether the answer went to a local
    /// requester (`Some(true)`) or was relayed (`Some(false)`).
    fn complete_to(&self, frame: Frame) -> Option<bool> {
        let req = frame.req?;
        let pending = self.pending.lock().remove(&req)?;
        let local = matches!(pending, Pending::Wait(_));
        match pending {
            Pending::Wait(slot) => {
                let result = match frame.error {
                    Some(e) => Err(Error::Remote {
                        code: e.code.into(),
                        message: e.message,
                    }),
                    None => Ok(Message::from_frame(frame)),
                };
                slot.fill_counted(result);
            }
            Pending::Forward { back, req, .. } => {
                let mut relay = frame;
                relay.req = Some(req);
                if let Err(e) = back.send_bounded(&relay) {
                    log::debug!(
                        "could not relay a bounced answer to {}: {e}",
                        back.peer_addr()
                    );
                }
            }
        }
        Some(local)
    }

    /// Close the socket; the read loop ends and fails what is pending.
    pub(crate) fn close(&self) {
        if !self.is_closed() {
            // Messages queued for the flusher leave first (as much as the
            // socket takes at once).
            self.flush_before_close();
        }
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let _g = self.lead.lock();
            self.lead_cv.notify_all();
        }
        {
            let mut q = self.queue.lock();
            q.failed = true;
            q.buf = Vec::new();
            self.queue_cv.notify_all();
        }
        match &self.link {
            Link::Tcp { raw, writer } => {
                // An abortive connection whose peer closed first sends no FIN
                // of its own: the reset at the last close ends it on both sides.
                let abort = self.abortive.load(Ordering::Acquire);
                let how = if abort && self.eof.load(Ordering::Acquire) {
                    Shutdown::Read
                } else {
                    Shutdown::Both
                };
                if let Some(r) = raw.lock().as_ref() {
                    let _ = r.shutdown(how);
                }
                // Let go of the descriptor now, however long others hold this
                // `Conn`: once the reader's handle goes too, the socket is
                // closed (an abortive one with a reset, SO_LINGER 0, which
                // frees its ports at once).
                raw.lock().take();
                writer.lock().take();
            }
            Link::Relay {
                via,
                to,
                stop,
                ready,
                ..
            } => {
                stop.lock().take();
                ready.notify_all();
                // Best effort: tell the peer the relayed connection is gone.
                let bye = Frame::new(
                    Kind::Message,
                    RELAY_TYPE,
                    serde_json::json!({ "to": to, "close": true }),
                );
                if !via.is_closed() {
                    let _ = via.send_bounded(&bye);
                }
            }
        }
    }

    /// Fail every outstanding request: the peer will never answer them now.
    fn fail_pending(&self) {
        let drained: Vec<Pending> = self.pending.lock().drain().map(|(_, p)| p).collect();
        for p in drained {
            match p {
                Pending::Wait(slot) => slot.fill(Err(self.closed_error())),
                Pending::Forward { back, req, .. } => {
                    let msg = format!(
                        "the node the request was bounced to ({}) closed the connection",
                        self.peer_addr()
                    );
                    let _ = back.send_bounded(&Frame::error(req, "bounce_failed", msg));
                }
            }
        }
    }

    /// Whether a user message or request (or the rendezvous protocol's)
    /// has gone either way on this connection.
    pub(crate) fn is_user(&self) -> bool {
        self.user.load(Ordering::Relaxed)
    }

    /// Mark the connection as the user's when `frame` is a user message or
    /// request, or one of the rendezvous protocol (`p2prs.rv.*`, whose link
    /// and relays keep their own pace): anything but the ring's own frames.
    fn note_user(&self, frame: &Frame) {
        let t = frame.msg_type.as_str();
        if matches!(frame.kind, Kind::Message | Kind::Request)
            && (!t.starts_with("p2prs.") || t.starts_with("p2prs.rv."))
            && !self.user.load(Ordering::Relaxed)
        {
            self.user.store(true, Ordering::Relaxed);
        }
    }

    /// When this connection was last used, if the limit on temporary
    /// connections may close it: opened here, not pinned, nothing
    /// outstanding, and quiet for at least `quiet`.
    pub(crate) fn evictable(&self, quiet: Duration) -> Option<Instant> {
        self.unkept_since(true, quiet)
    }

    /// When this connection was last used, if it is open, was opened by
    /// this node (`outbound` true) or by the peer (false), is not pinned,
    /// has no request of ours outstanding, and has been quiet for at least
    /// `quiet`.
    fn unkept_since(&self, outbound: bool, quiet: Duration) -> Option<Instant> {
        let last = *self.last_active.lock();
        (self.outbound == outbound
            && !self.is_closed()
            && self.pins.load(Ordering::Acquire) == 0
            && self.pending.lock().is_empty()
            && last.elapsed() >= quiet)
            .then_some(last)
    }

    /// Answer, with an error, bounced requests whose answer has not come
    /// within `max_age`, so that neither their requester nor this table waits
    /// for ever.
    fn expire_forwards(&self, max_age: Duration) {
        let expired: Vec<(Arc<Conn>, u64)> = {
            let mut g = self.pending.lock();
            let old: Vec<u64> = g
                .iter()
                .filter(|(_, p)| matches!(p, Pending::Forward { since, .. } if since.elapsed() >= max_age))
                .map(|(k, _)| *k)
                .collect();
            old.into_iter()
                .filter_map(|k| match g.remove(&k) {
                    Some(Pending::Forward { back, req, .. }) => Some((back, req)),
                    _ => None,
                })
                .collect()
        };
        for (back, req) in expired {
            let why = format!(
                "the node the request was bounced to ({}) did not answer within {:.1}s",
                self.peer_addr(),
                max_age.as_secs_f64()
            );
            let _ = back.send_bounded(&Frame::error(req, "bounce_timeout", why));
        }
    }

    /// Whether the connection has been unused past its idle timeout and
    /// nothing keeps it: not pinned, no request of ours outstanding. A
    /// connection this node opened closes after `idle`; one the peer opened
    /// (only when `inbound_too`) after twice that, so that a peer with the
    /// same settings closes its end first.
    fn idle_expired(&self, idle: Duration, inbound_too: bool) -> bool {
        self.idle_expired_with(idle, idle, inbound_too)
    }

    /// As [`Conn::idle_expired`], with `ring_idle` for a connection that
    /// has carried only the ring's own frames.
    fn idle_expired_with(&self, idle: Duration, ring_idle: Duration, inbound_too: bool) -> bool {
        let idle = if self.user.load(Ordering::Relaxed) {
            idle
        } else {
            ring_idle.min(idle)
        };
        let limit = if self.outbound {
            idle
        } else if inbound_too {
            idle.saturating_mul(2)
        } else {
            return false;
        };
        self.pins.load(Ordering::Acquire) == 0
            && self.pending.lock().is_empty()
            && self.last_active.lock().elapsed() >= limit
    }

    /// When this connection was last used, if it is an inbound connection
    /// that nothing keeps (not pinned, nothing outstanding) and that has
    /// been quiet for at least `quiet`: one a new inbound connection may
    /// replace when the node is full.
    pub(crate) fn replaceable(&self, quiet: Duration) -> Option<Instant> {
        self.unkept_since(false, quiet)
    }

    /// A connection this node keeps (pinned) and that has been quiet for a
    /// third of the idle timeout says something, so that its peer, which
    /// closes idle inbound connections, keeps it open. The ping is a
    /// one-way message: any version answers nothing.
    fn keepalive(&self, idle: Duration) {
        if self.pins.load(Ordering::Acquire) > 0 && self.last_active.lock().elapsed() >= idle / 3 {
            let ping = Frame::new(Kind::Message, "p2prs.ping", serde_json::Value::Null);
            let _ = self.send_bounded(&ping);
        }
    }
}

/// How long a node reads and discards after a refusal notice before it closes.
const LINGER: Duration = Duration::from_secs(1);

/// The notice a node sends before it closes a connection whose bytes it
/// refused: `{"code": "frame_too_large" | "protocol_error", "message": ...}`.
pub(crate) const REFUSED_TYPE: &str = "p2prs.refused";

/// Run the secure handshake on a fresh connection within `timeout`: send
/// our preamble, prove our identity and say our hello; learn and check the
/// peer's. `dialer`: this side connected (see [`tie_break`]). Neither side
/// leads (for a punched connection, which both sides may dial at once; an
/// ordinary dial leads: `Transport::handshake_dialed`). See
/// `docs/protocol.md`.
pub(crate) fn handshake(
    stream: &mut TcpStream,
    local: &Arc<Local>,
    ours: &Hello,
    timeout: Duration,
    dialer: bool,
) -> Result<Greeted> {
    let hs = Handshaker::new(Arc::clone(local), ours, tie_break(Some(dialer))?);
    drive_handshake(stream, hs, timeout, None)
}

/// Start the handshake of an accepted `stream`: its preamble goes out at
/// once if the socket takes it without waiting (a fresh socket does), so
/// that the dialer can go on while the connection's thread starts. With
/// `work`, what the dialer sent already (a leading dialer's preamble and
/// first message come at once) is read without waiting and answered the
/// same way: the dialer then has message 2 while the connection's thread
/// starts, instead of after. Nothing here waits for the peer.
pub(crate) fn accepted_handshake(
    stream: &TcpStream,
    local: &Arc<Local>,
    ours: &Hello,
    work: bool,
) -> Result<Handshaker> {
    let mut hs = Handshaker::new(Arc::clone(local), ours, tie_break(Some(false))?);
    let n = nowait::write(stream, hs.output());
    hs.sent(n);
    if work && hs.output().is_empty() {
        // A leading dialer's preamble and message 1: 50 bytes.
        let mut buf = [0u8; 256];
        if let Ok(got @ 1..) = nowait::read(stream, &mut buf) {
            let pushed = hs.push(&buf[..got]);
            // Message 2, or a refusal that tells the peer why.
            let n = nowait::write(stream, hs.output());
            hs.sent(n);
            pushed.map_err(|error| Error::Handshake {
                peer: peer_name(stream),
                error,
            })?;
        }
    }
    Ok(hs)
}

/// The random tie-break of a handshake's preamble; where neither side
/// leads (see `Handshaker::lead`), the larger one makes its side the Noise
/// initiator. With `Some(true)` (this side dialled) its top bit is set,
/// with `Some(false)` (it accepted) clear, so that a dialer that does not
/// lead still initiates, and once it writes its last message it can send
/// its first frames. Both sides of a simultaneous open dialled, so the
/// other 63 bits decide there; `None` leaves all 64 random.
pub(crate) fn tie_break(dialer: Option<bool>) -> Result<[u8; 8]> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::io("reading random bytes", io::Error::other(e.to_string())))?;
    match dialer {
        Some(true) => nonce[0] |= 0x80,
        Some(false) => nonce[0] &= 0x7f,
        None => {}
    }
    Ok(nonce)
}

/// How long a handshake tries reads that do not wait (yielding the CPU
/// in between) before it blocks: the peer's next message comes as soon as
/// it has done its part (at most three X25519 operations and a signature
/// check, about 160 µs on a slow CPU), and a thread blocked in `read` on
/// an idle vCPU is woken by an inter-processor interrupt, which costs tens
/// of µs on a virtual machine at each of a handshake's four messages.
const HANDSHAKE_POLL: Duration = Duration::from_micros(300);

/// How errors name the peer of `stream`: its address.
pub(crate) fn peer_name(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "peer".into())
}

/// Run the handshake `hs` over `stream` within `timeout`. With `threads`,
/// the connection's thread is to come from there: while the peer works on
/// its next message, a spare is made for it (see `Threads::refill`).
pub(crate) fn drive_handshake(
    stream: &mut TcpStream,
    mut hs: Handshaker,
    timeout: Duration,
    mut threads: Option<&Arc<Threads>>,
) -> Result<Greeted> {
    let peer = peer_name(stream);
    let deadline = Instant::now() + timeout;
    // On the heap, once per connection: the stack pages a thread touches
    // stay resident for its life, and thousands of connection threads run
    // a handshake.
    let mut buf = vec![0u8; 4096];
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            stream
                .write_all(&out)
                .map_err(|e| Error::io(format!("sending the handshake to {peer}"), e))?;
        }
        hs.settle().map_err(|error| Error::Handshake {
            peer: peer.clone(),
            error,
        })?;
        if hs.is_done() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                kind: crate::error::TimeoutKind::Handshake,
                what: format!("the handshake of {peer}"),
                after: timeout,
            });
        }
        // While the peer works on its next message (not come yet), make a
        // key for a later handshake, and a thread for this connection,
        // once each.
        let mut came = None;
        if hs.may_prepare() || threads.is_some() {
            match nowait::read(stream, &mut buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    if let Some(t) = threads.take() {
                        t.refill();
                    }
                    hs.prepare()
                }
                r => came = Some(r),
            }
        }
        let read = match came {
            Some(r) => r,
            None => match nowait::read_within(stream, &mut buf, left.min(HANDSHAKE_POLL)) {
                Some(r) => r,
                None => {
                    let _ = stream.set_read_timeout(Some(left));
                    stream.read(&mut buf)
                }
            },
        };
        match read {
            Ok(0) => {
                return Err(Error::ConnectionClosed { peer });
            }
            Ok(n) => {
                if let Err(e) = hs.push(&buf[..n]) {
                    // A refusal, if any, tells the peer why.
                    let _ = stream.write_all(&hs.take_output());
                    return Err(Error::Handshake { peer, error: e });
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading the handshake of {peer}"), e)),
        }
    }
    let (proof, session, rest) = hs
        .finish()
        .ok_or_else(|| Error::io("finishing a handshake", io::Error::other("incomplete")))?;
    Ok(Greeted {
        proof,
        session,
        rest,
    })
}

/// Answer `frame` (if it is a request) with `answer`.
pub(crate) fn reply(conn: &Conn, frame: &Frame, answer: Result<Message>) {
    let Some(req) = frame.req.filter(|_| frame.kind == Kind::Request) else {
        if let Err(e) = answer {
            log::debug!("{}: {:?}: {e}", conn.peer_addr(), frame.msg_type);
        }
        return;
    };
    let out = match answer {
        Ok(msg) => msg.into_frame(Kind::Response, Some(req)),
        Err(Error::Remote { code, message }) => Frame::error(req, code.as_str(), message),
        Err(e) => Frame::error(req, e.wire_code(), e.to_string()),
    };
    if let Err(e) = conn.send_bounded(&out) {
        log::debug!("answering {}: {e}", conn.peer_addr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lazy_return_looks_ever_more_rarely_while_requesters_read() {
        let us = Duration::from_micros;
        // At first until the lazy return has passed since the last stop.
        assert_eq!(read::lazy_wait(us(100), 0), us(400));
        assert_eq!(read::lazy_wait(us(490), 0), us(50));
        // Then doubling, up to the longest sleep.
        assert_eq!(read::lazy_wait(us(0), 1), us(1000));
        assert_eq!(read::lazy_wait(us(0), 2), us(2000));
        assert_eq!(read::lazy_wait(us(0), 3), LAZY_RECHECK_MAX);
        assert_eq!(read::lazy_wait(us(0), 40), LAZY_RECHECK_MAX);
        assert_eq!(read::lazy_wait(us(10), 40), LAZY_RECHECK_MAX - us(10));
    }

    #[test]
    fn a_read_keeps_a_connection_within_its_free_allowance_until_the_budget_is_checked() {
        let free = FREE_PER_CONN;
        // Holding nothing or little: at most the rest of the allowance.
        assert_eq!(read_most(0, READ_CHUNK), free.min(READ_CHUNK));
        assert_eq!(read_most(free / 2, READ_CHUNK), free / 2);
        assert!(free / 2 + read_most(free / 2, READ_CHUNK) <= free);
        // A small buffer is never made larger.
        assert_eq!(read_most(100, READ_FIRST), READ_FIRST);
        // Past half of it the budget was checked for a whole buffer.
        assert_eq!(read_most(free / 2 + 1, READ_CHUNK), READ_CHUNK);
    }

    #[test]
    fn the_read_buffer_grows_while_reads_fill_it() {
        let mut len = READ_FIRST;
        // Reads that leave room keep it small.
        assert_eq!(read_size_after(len, 100), READ_FIRST);
        assert_eq!(read_size_after(len, READ_FIRST - 1), READ_FIRST);
        // Full reads double it up to the largest chunk, then it stays.
        let mut sizes = vec![len];
        while len < READ_CHUNK {
            len = read_size_after(len, len);
            sizes.push(len);
        }
        assert_eq!(sizes, vec![4096, 8192, 16384, 32768, 65536, 131072]);
        assert_eq!(read_size_after(READ_CHUNK, READ_CHUNK), READ_CHUNK);
    }
}

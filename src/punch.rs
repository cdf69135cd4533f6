//! TCP hole punching by simultaneous open.
//!
//! Both peers, told by the rendezvous at the same moment, connect from their
//! own listening port (SO_REUSEADDR and SO_REUSEPORT on the listener and on
//! every outbound socket, all bound to the same local address) to each
//! other's public and private endpoints, again and again until a bounded
//! time has passed. Each outbound SYN opens the sender's NAT for the answer;
//! once both have sent one, a SYN gets through and the two connects meet
//! (simultaneous open), or the SYN lands on the listener when no connect is
//! in flight, which counts too. The first connection whose hello carries the
//! *expected* node ID wins; a stranger answering on that port is never taken
//! for the peer. See `docs/nat-traversal.md`.
//!
//! [`RetryPlan`] is the pure schedule of attempts, tested without sockets.

use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::transport::{handshake, Conn, Transport};
use crate::wire::Hello;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an attempt loop should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Start a connect that may take at most this long.
    Connect(Duration),
    /// Nothing to do for this long.
    Wait(Duration),
    /// The punch time is over.
    GiveUp,
}

/// The schedule of connect attempts to one endpoint, over the caller's clock
/// (durations since the punch began): attempts follow one another until the
/// deadline, each bounded by the attempt timeout and by the deadline, and
/// start at least `pause` apart, so an endpoint that refuses at once is not
/// hammered.
#[derive(Debug, Clone)]
pub(crate) struct RetryPlan {
    deadline: Duration,
    attempt: Duration,
    pause: Duration,
    not_before: Duration,
    attempts: u32,
}

/// An attempt shorter than this is not worth starting.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

impl RetryPlan {
    /// A plan that starts at `now` and gives up `total` later.
    pub(crate) fn new(now: Duration, total: Duration, attempt: Duration, pause: Duration) -> Self {
        RetryPlan {
            deadline: now + total,
            attempt: attempt.max(MIN_ATTEMPT),
            pause,
            not_before: now,
            attempts: 0,
        }
    }

    /// What to do at `now`.
    pub(crate) fn next(&mut self, now: Duration) -> Step {
        if now < self.not_before {
            return Step::Wait(self.not_before - now);
        }
        let left = self.deadline.saturating_sub(now);
        if left < MIN_ATTEMPT {
            return Step::GiveUp;
        }
        self.attempts += 1;
        self.not_before = now + self.pause;
        Step::Connect(self.attempt.min(left))
    }

    /// Attempts started so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// Timing of a punch, from the node's [`Config`](crate::Config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PunchTiming {
    /// How long to keep trying.
    pub total: Duration,
    /// Longest single connect.
    pub attempt: Duration,
    /// Least time between two attempts to one endpoint.
    pub pause: Duration,
    /// Hello exchange on a punched stream.
    pub handshake: Duration,
}

/// Who the punch must reach.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    /// The peer's node ID, when it has one: the hello must carry it.
    pub id: Option<NodeId>,
    /// Where the peer is reachable from the internet (its NAT mapping).
    pub public: SocketAddr,
    /// Where it listens on its own network.
    pub private: SocketAddr,
    /// The address it announces (recorded as the connection's peer address).
    pub listen: SocketAddr,
}

impl Expect {
    /// The endpoints to connect to. Without a node ID to check, only the
    /// public endpoint: anyone may listen at a private address. With one, also
    /// the private endpoint and the announced address (the public endpoint
    /// the peer had when it joined, which a port-preserving NAT gives again).
    fn endpoints(&self, own: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut v = vec![self.public];
        if self.id.is_some() {
            v.extend([self.private, self.listen]);
        }
        let mut seen = Vec::new();
        v.retain(|a| {
            let keep = !own.contains(a) && a.port() != 0 && !seen.contains(a);
            seen.push(*a);
            keep
        });
        v
    }

    /// Whether a connection is the peer's. With an ID, the hello must carry
    /// it; without one, the connection must come from the peer's public
    /// endpoint.
    pub(crate) fn matches(&self, conn: &Conn) -> bool {
        if conn.relay_target().is_some() {
            return false;
        }
        match self.id {
            Some(id) => conn.peer_id() == Some(id),
            None => conn.remote == self.public,
        }
    }

    fn accepts(&self, hello: &Hello, endpoint: SocketAddr, me: Option<NodeId>) -> bool {
        match self.id {
            Some(id) => hello.id == Some(id.0),
            // Only the public endpoint is tried without an ID; reject ourselves.
            None => endpoint == self.public && (me.is_none() || hello.id != me.map(|i| i.0)),
        }
    }
}

/// One punch in progress.
pub(crate) struct Session {
    key: u64,
    expect: Expect,
    /// Connections registered from this mark on are new.
    mark: u64,
    tx: Sender<Arc<Conn>>,
    done: AtomicBool,
    wake_tx: Mutex<Option<Sender<()>>>,
    wake_rx: Receiver<()>,
    inflight: Mutex<HashMap<u64, Arc<Socket>>>,
    next_socket: AtomicU64,
}

impl Session {
    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Stop every attempt: wake the pauses and abort connects in flight.
    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.wake_tx.lock().take();
        for (_, s) in self.inflight.lock().drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The punches in progress on one node, told of every new connection.
#[derive(Default)]
pub(crate) struct Sessions {
    list: Mutex<Vec<Arc<Session>>>,
    next: AtomicU64,
}

impl Sessions {
    /// A connection was registered: hand it to the punch waiting for it.
    pub(crate) fn offer(&self, conn: &Arc<Conn>) {
        for s in self.list.lock().iter() {
            if conn.id >= s.mark && s.expect.matches(conn) {
                let _ = s.tx.send(Arc::clone(conn));
            }
        }
    }

    /// Punches in progress.
    pub(crate) fn len(&self) -> usize {
        self.list.lock().len()
    }

    /// Stop every punch (at shutdown).
    pub(crate) fn stop_all(&self) {
        for s in self.list.lock().iter() {
            s.finish();
        }
    }

    fn add(&self, s: &Arc<Session>) {
        self.list.lock().push(Arc::clone(s));
    }

    fn remove(&self, key: u64) {
        self.list.lock().retain(|s| s.key != key);
    }
}

/// A socket bound to the node's listening address with SO_REUSEADDR and
/// SO_REUSEPORT, for a connect from the listening port.
pub(crate) fn bound_socket(local: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    s.bind(&local.into())?;
    Ok(s)
}

/// Punch to `expect` from `t`'s listening port. `initiator` is the side that
/// asked for the introduction: it keeps only the first connection and closes
/// any other that arrives while it decides; the other side keeps them all
/// (the initiator closes what it does not use). `mark` is
/// [`Transport::conn_mark`] from before the rendezvous was asked, so that a
/// peer's connection registered in the meantime is recognised.
pub(crate) fn punch(
    t: &Arc<Transport>,
    sessions: &Sessions,
    expect: Expect,
    initiator: bool,
    mark: u64,
    timing: PunchTiming,
) -> Result<Arc<Conn>> {
    let start = Instant::now();
    let (tx, rx) = unbounded();
    let (wake_tx, wake_rx) = bounded::<()>(0);
    let session = Arc::new(Session {
        key: sessions.next.fetch_add(1, Ordering::Relaxed),
        expect,
        mark,
        tx,
        done: AtomicBool::new(false),
        wake_tx: Mutex::new(Some(wake_tx)),
        wake_rx,
        inflight: Mutex::new(HashMap::new()),
        next_socket: AtomicU64::new(0),
    });
    sessions.add(&session);
    // The peer's connection may have registered before this session did.
    for c in t.all() {
        if c.id >= mark && !c.is_closed() && session.expect.matches(&c) {
            let _ = session.tx.send(c);
        }
    }
    let own = [t.local_addr(), t.advertised_addr()];
    let endpoints = session.expect.endpoints(&own);
    for ep in &endpoints {
        let (t2, s2, ep) = (Arc::clone(t), Arc::clone(&session), *ep);
        let name = format!("p2prs-punch-{}", t.local_addr().port());
        if let Err(e) = t.threads.spawn(name, None, move || {
            attempts(&t2, &s2, ep, initiator, start, timing)
        }) {
            log::warn!("no thread for a punch attempt to {ep}: {e}");
        }
    }
    let won = rx.recv_deadline(start + timing.total);
    session.finish();
    sessions.remove(session.key);
    let winner = match won {
        Ok(c) => c,
        Err(_) => {
            let what = match session.expect.id {
                Some(id) => format!("node {id}"),
                None => session.expect.public.to_string(),
            };
            return Err(Error::Timeout {
                kind: crate::error::TimeoutKind::Punch,
                what: format!("a punched connection to {what} (tried {endpoints:?})"),
                after: timing.total,
            });
        }
    };
    winner.set_punched();
    // Anything else that arrived while deciding.
    for extra in rx.try_iter().filter(|c| c.id != winner.id) {
        if initiator {
            extra.close();
        } else {
            extra.set_punched();
        }
    }
    Ok(winner)
}

/// Connect to one endpoint again and again, per [`RetryPlan`].
fn attempts(
    t: &Arc<Transport>,
    s: &Arc<Session>,
    ep: SocketAddr,
    initiator: bool,
    start: Instant,
    timing: PunchTiming,
) {
    let mut plan = RetryPlan::new(start.elapsed(), timing.total, timing.attempt, timing.pause);
    let local = t.local_addr();
    loop {
        if s.is_done() || t.is_stopping() {
            break;
        }
        match plan.next(start.elapsed()) {
            Step::GiveUp => break,
            Step::Wait(d) => {
                let _ = s.wake_rx.recv_timeout(d);
            }
            Step::Connect(timeout) => match connect_once(s, local, ep, timeout) {
                Ok(stream) => {
                    if adopt(t, s, stream, ep, initiator, timing) {
                        break;
                    }
                }
                Err(e) => log::trace!("punch {local} -> {ep}: {e}"),
            },
        }
    }
    log::debug!("punch {local} -> {ep}: {} attempt(s)", plan.attempts());
}

fn connect_once(
    s: &Session,
    local: SocketAddr,
    ep: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let sock = Arc::new(bound_socket(local)?);
    let key = s.next_socket.fetch_add(1, Ordering::Relaxed);
    s.inflight.lock().insert(key, Arc::clone(&sock));
    if s.is_done() {
        s.inflight.lock().remove(&key);
        return Err(io::Error::other("the punch is over"));
    }
    let result = sock.connect_timeout(&SockAddr::from(ep), timeout);
    s.inflight.lock().remove(&key);
    result?;
    match Arc::try_unwrap(sock) {
        Ok(sock) => Ok(sock.into()),
        Err(_) => Err(io::Error::other("a punch socket is still shared")),
    }
}

/// Check who answered; adopt the stream if it is the peer. Returns whether
/// this endpoint is done.
fn adopt(
    t: &Arc<Transport>,
    s: &Session,
    mut stream: TcpStream,
    ep: SocketAddr,
    initiator: bool,
    timing: PunchTiming,
) -> bool {
    let _ = stream.set_nodelay(true);
    // Both sides may have dialled this stream: neither leads.
    let greeted = handshake(&mut stream, &t.secure, &t.hello(), timing.handshake, true);
    let greeted = match greeted {
        Ok(x) => x,
        Err(e) => {
            log::debug!("punched stream to {ep}: handshake failed: {e}");
            return false;
        }
    };
    if !s.expect.accepts(&greeted.proof.hello, ep, t.my_id()) {
        log::warn!(
            "punch to {ep}: the node that answered (ID {:?}) is not the one expected ({:?}); closed",
            greeted.proof.hello.id,
            s.expect.id
        );
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return false;
    }
    if s.is_done() && initiator {
        // The initiator has its connection already.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return true;
    }
    match t.adopt_greeted(&stream, greeted, s.expect.listen, None) {
        Ok(conn) => {
            conn.set_punched();
            true
        }
        Err(e) => {
            log::debug!("adopting the punched stream to {ep}: {e}");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn attempts_fill_the_time_and_stop_at_the_deadline() {
        let mut p = RetryPlan::new(ms(0), ms(3000), ms(1000), ms(100));
        assert_eq!(p.next(ms(0)), Step::Connect(ms(1000)));
        // The attempt timed out after its full second: the next starts at once.
        assert_eq!(p.next(ms(1000)), Step::Connect(ms(1000)));
        // The last one is cut to what is left.
        assert_eq!(p.next(ms(2500)), Step::Connect(ms(500)));
        assert_eq!(p.next(ms(2995)), Step::GiveUp);
        assert_eq!(p.next(ms(3000)), Step::GiveUp);
        assert_eq!(p.attempts(), 3);
    }

    #[test]
    fn a_quick_refusal_waits_for_the_pause() {
        let mut p = RetryPlan::new(ms(0), ms(1000), ms(500), ms(100));
        assert_eq!(p.next(ms(0)), Step::Connect(ms(500)));
        // Refused after 3 ms: wait until 100 ms after the start of that attempt.
        assert_eq!(p.next(ms(3)), Step::Wait(ms(97)));
        assert_eq!(p.next(ms(100)), Step::Connect(ms(500)));
        assert_eq!(p.next(ms(150)), Step::Wait(ms(50)));
    }

    #[test]
    fn a_plan_started_late_is_relative_to_its_start() {
        let mut p = RetryPlan::new(ms(5000), ms(200), ms(1000), ms(50));
        assert_eq!(p.next(ms(5000)), Step::Connect(ms(200)));
        assert_eq!(p.next(ms(5190)), Step::GiveUp);
    }

    #[test]
    fn a_tiny_attempt_timeout_is_raised() {
        let mut p = RetryPlan::new(ms(0), ms(1000), ms(0), ms(0));
        assert_eq!(p.next(ms(0)), Step::Connect(MIN_ATTEMPT));
    }

    fn expect(id: Option<u64>) -> Expect {
        Expect {
            id: id.map(NodeId),
            public: "10.200.0.11:7000".parse().unwrap(),
            private: "192.168.1.2:7000".parse().unwrap(),
            listen: "10.200.0.11:7000".parse().unwrap(),
        }
    }

    #[test]
    fn endpoints_skip_private_without_id_and_own_addresses() {
        let own: Vec<SocketAddr> = vec!["192.168.1.2:7000".parse().unwrap()];
        assert_eq!(expect(Some(3)).endpoints(&[]).len(), 2);
        assert_eq!(expect(Some(3)).endpoints(&own), vec![expect(None).public]);
        assert_eq!(expect(None).endpoints(&[]), vec![expect(None).public]);
        // A stale public endpoint: the announced address is tried too.
        let mut moved = expect(Some(3));
        moved.public = "10.200.0.11:4868".parse().unwrap();
        assert_eq!(
            moved.endpoints(&[]),
            vec![moved.public, moved.private, moved.listen]
        );
    }

    #[test]
    fn only_the_expected_id_is_accepted() {
        let e = expect(Some(3));
        let hello = |id: Option<u64>| Hello { listen: None, id };
        assert!(e.accepts(&hello(Some(3)), e.private, Some(NodeId(1))));
        assert!(!e.accepts(&hello(Some(4)), e.public, Some(NodeId(1))));
        assert!(!e.accepts(&hello(None), e.public, Some(NodeId(1))));
        let anon = expect(None);
        assert!(anon.accepts(&hello(None), anon.public, Some(NodeId(1))));
        // Without an ID only the public endpoint counts, and never ourselves.
        assert!(!anon.accepts(&hello(None), anon.private, None));
        assert!(!anon.accepts(&hello(Some(1)), anon.public, Some(NodeId(1))));
    }
}

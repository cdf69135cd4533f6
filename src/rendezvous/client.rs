//! The node's side of the rendezvous: the constant link (registration,
//! keepalive, reconnect with backoff), the connect hook that chooses between
//! a direct connection, a punch and the relay, the punches the server asks
//! for, and the relayed connections.

use super::proto::*;
use crate::config::Config;
use crate::config::Traversal;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::punch::{bound_socket, punch, Expect, PunchTiming, Sessions};
use crate::transport::{self, Conn, FrameSink, NatHook, NatStatus, Transport};
use crate::wire::{Frame, Kind};
use crossbeam_channel::{after, bounded, select, unbounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// First pause before reconnecting to the rendezvous; it doubles up to
/// [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest pause between two reconnects.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest single connect to the rendezvous (shutdown may wait for it).
const LINK_CONNECT: Duration = Duration::from_secs(3);
/// Longest single connect of a punch.
const PUNCH_ATTEMPT: Duration = Duration::from_secs(1);
/// Least time between two punch connects to one endpoint.
const PUNCH_PAUSE: Duration = Duration::from_millis(100);
/// Most punches asked for by the rendezvous running at once; more are ignored.
const MAX_PUNCHES: usize = 64;

struct Relay {
    conn: Arc<Conn>,
    inbox: Sender<Vec<u8>>,
}

#[derive(Default)]
struct Link {
    conn: Option<Arc<Conn>>,
    private: Option<SocketAddr>,
    public: Option<SocketAddr>,
}

/// The rendezvous client of one node.
pub(crate) struct Client {
    target: String,
    cfg: Config,
    me: Weak<Client>,
    t: Weak<Transport>,
    link: Mutex<Link>,
    /// Signalled when the link is registered (or the client stops).
    link_up: Condvar,
    /// Addresses the rendezvous said are behind NAT: while the link is down,
    /// connects to them wait for it rather than dial into a NAT.
    natted: Mutex<HashSet<SocketAddr>>,
    sessions: Sessions,
    relays: Mutex<HashMap<u64, Relay>>,
    locks: Mutex<HashMap<SocketAddr, Arc<Mutex<()>>>>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    stopped: AtomicBool,
    registrations: AtomicU64,
    links: AtomicU64,
    punches: AtomicU64,
    punched: AtomicU64,
    relays_opened: AtomicU64,
}

/// Plug a rendezvous client into `t` if its configuration names a
/// rendezvous: register once now (so the node knows its public endpoint
/// before it joins a ring), then keep the link up on a thread.
pub(crate) fn attach(t: &Arc<Transport>) -> Result<()> {
    let Some(target) = t.cfg.rendezvous.clone() else {
        return Ok(());
    };
    let (wake_tx, wake_rx) = unbounded();
    let (stop_tx, stop_rx) = bounded(0);
    let client = Arc::new_cyclic(|me| Client {
        target,
        cfg: t.cfg.clone(),
        me: me.clone(),
        t: Arc::downgrade(t),
        link: Mutex::new(Link::default()),
        link_up: Condvar::new(),
        natted: Mutex::new(HashSet::new()),
        sessions: Sessions::default(),
        relays: Mutex::new(HashMap::new()),
        locks: Mutex::new(HashMap::new()),
        wake_tx,
        wake_rx,
        stop_tx: Mutex::new(Some(stop_tx)),
        stop_rx,
        stopped: AtomicBool::new(false),
        registrations: AtomicU64::new(0),
        links: AtomicU64::new(0),
        punches: AtomicU64::new(0),
        punched: AtomicU64::new(0),
        relays_opened: AtomicU64::new(0),
    });
    t.set_traversal(client.clone());
    let first = client.open(t);
    if let Err(e) = &first {
        log::warn!(
            "rendezvous {}: {e}; retrying in the background",
            client.target
        );
    }
    let (c2, t2) = (Arc::clone(&client), Arc::clone(t));
    t.threads
        .spawn(
            format!("p2prs-rv-{}", t.local_addr().port()),
            None,
            move || c2.run(&t2, first.is_ok()),
        )
        .map_err(|e| Error::io("spawning the rendezvous thread", e))
}

fn who(p: &Endpoints) -> String {
    match p.id {
        Some(id) => format!("node {id} ({})", p.listen),
        None => p.listen.to_string(),
    }
}

fn expect(p: &Endpoints) -> Expect {
    Expect {
        id: p.id,
        public: p.public,
        private: p.private,
        listen: p.listen,
    }
}

/// Whether a failed direct connect may still be punched through.
fn worth_punching(e: &Error) -> bool {
    match e {
        Error::Timeout { .. } => true,
        Error::Io { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
        ),
        _ => false,
    }
}

impl Client {
    fn timing(&self) -> PunchTiming {
        PunchTiming {
            total: self.cfg.punch_timeout,
            attempt: PUNCH_ATTEMPT.min(self.cfg.punch_timeout),
            pause: PUNCH_PAUSE,
            handshake: self.cfg.handshake_timeout,
        }
    }

    /// The link, if it is up.
    fn live(&self) -> Option<Arc<Conn>> {
        self.link.lock().conn.clone().filter(|c| !c.is_closed())
    }

    pub(crate) fn status(&self) -> NatStatus {
        let link = self.link.lock();
        NatStatus {
            rendezvous: self.target.clone(),
            connected: link.conn.as_ref().is_some_and(|c| !c.is_closed()) && link.public.is_some(),
            public_addr: link.public,
            private_addr: link.private,
            registrations: self.registrations.load(Ordering::Relaxed),
            links: self.links.load(Ordering::Relaxed),
            punches: self.punches.load(Ordering::Relaxed),
            punched: self.punched.load(Ordering::Relaxed),
            relays: self.relays_opened.load(Ordering::Relaxed),
        }
    }

    /// Keep the link up until stopped: refresh the registration every
    /// keepalive, reconnect with backoff when it drops.
    fn run(&self, t: &Arc<Transport>, mut up: bool) {
        let mut backoff = RETRY_MIN;
        let mut wait = self.cfg.rendezvous_keepalive;
        loop {
            select! {
                recv(self.stop_rx) -> _ => break,
                recv(self.wake_rx) -> _ => {}
                recv(after(wait)) -> _ => {}
            }
            if self.stopped.load(Ordering::Acquire) || t.is_stopping() {
                break;
            }
            wait = match self.live() {
                // A link busy with relayed bytes (the relay forwards them at
                // its rate limit) may answer a refresh late: give it the
                // keepalive period, not a ring request's timeout, before the
                // link counts as lost and its relayed connections with it.
                Some(conn) => match self.register(t, &conn, self.refresh_timeout()) {
                    Ok(()) => self.cfg.rendezvous_keepalive,
                    Err(e) => {
                        log::info!(
                            "rendezvous {}: refresh failed ({e}); reconnecting",
                            self.target
                        );
                        conn.close();
                        Duration::ZERO
                    }
                },
                None => match self.open(t) {
                    Ok(_) => {
                        backoff = RETRY_MIN;
                        up = true;
                        self.cfg.rendezvous_keepalive
                    }
                    Err(e) => {
                        if up {
                            log::info!("rendezvous {} unreachable ({e}); retrying", self.target);
                        } else {
                            log::debug!("rendezvous {} unreachable ({e}); retrying", self.target);
                        }
                        up = false;
                        let w = backoff;
                        backoff = (backoff * 2).min(RETRY_MAX);
                        w
                    }
                },
            };
        }
    }

    /// Connect to the rendezvous from the listening port and register.
    fn open(&self, t: &Arc<Transport>) -> Result<Arc<Conn>> {
        let rv = *transport::resolve(&self.target)?
            .first()
            .ok_or_else(|| Error::InvalidAddress(self.target.clone()))?;
        let sock = bound_socket(t.local_addr())
            .map_err(|e| Error::io(format!("binding {} for the rendezvous", t.local_addr()), e))?;
        sock.connect_timeout(&rv.into(), self.cfg.connect_timeout.min(LINK_CONNECT))
            .map_err(|e| Error::io(format!("connecting to the rendezvous {rv}"), e))?;
        let mut stream: TcpStream = sock.into();
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.cfg.write_timeout));
        let private = stream
            .local_addr()
            .map_err(|e| Error::io("reading the link's local address", e))?;
        let greeted = t.handshake_dialed(&mut stream)?;
        let me = self.me.upgrade().ok_or(Error::Shutdown)?;
        let sink: Arc<dyn FrameSink> = me;
        let conn = t.adopt_greeted(&stream, greeted, rv, Some(sink))?;
        conn.set_abortive();
        conn.pin();
        {
            let mut link = self.link.lock();
            link.conn = Some(Arc::clone(&conn));
            link.private = Some(private);
            link.public = None;
        }
        if let Err(e) = self.register(t, &conn, self.cfg.ring_timeout) {
            conn.close();
            return Err(e);
        }
        self.links.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// How long a refresh may wait for its answer: the keepalive period, at
    /// least a ring request's timeout.
    fn refresh_timeout(&self) -> Duration {
        self.cfg.rendezvous_keepalive.max(self.cfg.ring_timeout)
    }

    /// Register (or refresh) on `conn`, waiting `timeout` for each answer;
    /// learn the public endpoint and, before the node has joined a ring,
    /// announce it.
    fn register(&self, t: &Arc<Transport>, conn: &Arc<Conn>, timeout: Duration) -> Result<()> {
        let (private, before) = {
            let l = self.link.lock();
            (l.private.ok_or(Error::Shutdown)?, l.public)
        };
        let ask = |listen: SocketAddr| -> Result<Registered> {
            let req = Register {
                id: t.my_id(),
                listen,
                private,
            };
            conn.request(Message::new(REGISTER, serde_json::to_value(&req)?), timeout)?
                .data()
        };
        let mut got = ask(t.advertised_addr())?;
        let natted = got.public != private;
        let local = t.local_addr();
        let announce = if natted {
            got.public
        } else if local.ip().is_unspecified() {
            private
        } else {
            local
        };
        if announce != t.advertised_addr() {
            if t.my_id().is_none() {
                log::info!("announcing {announce} as this node's address (listening on {local})");
                t.set_advertised(announce);
                got = ask(announce)?;
            } else {
                log::warn!(
                    "the rendezvous now sees this node at {}; it joined as {}, and peers reach it by ID through the rendezvous",
                    got.public,
                    t.advertised_addr()
                );
            }
        }
        self.registrations.fetch_add(1, Ordering::Relaxed);
        self.link.lock().public = Some(got.public);
        self.link_up.notify_all();
        if before != Some(got.public) {
            log::info!(
                "registered at the rendezvous {} as session {}: public endpoint {}, private {} ({})",
                self.target,
                got.session,
                got.public,
                private,
                if natted { "behind NAT" } else { "not behind NAT" }
            );
        }
        Ok(())
    }

    fn ask(
        &self,
        t: &Transport,
        link: &Conn,
        addr: SocketAddr,
        want: Want,
    ) -> Result<ConnectReply> {
        let req = ConnectReq {
            addr,
            id: None,
            from_id: t.my_id(),
            want,
        };
        link.request(
            Message::new(CONNECT, serde_json::to_value(&req)?),
            self.cfg.ring_timeout,
        )?
        .data()
    }

    fn lock_for(&self, addr: SocketAddr) -> Arc<Mutex<()>> {
        Arc::clone(self.locks.lock().entry(addr).or_default())
    }

    fn unlock(&self, addr: SocketAddr, lock: Arc<Mutex<()>>) {
        let mut g = self.locks.lock();
        // Ours and the map's: nobody else waits for this target.
        if Arc::strong_count(&lock) <= 2 {
            g.remove(&addr);
        }
    }

    /// Reach `addr`: ask the rendezvous, then connect directly, punch, or relay.
    fn reach(&self, t: &Arc<Transport>, link: &Arc<Conn>, addr: SocketAddr) -> Result<Arc<Conn>> {
        let started = Instant::now();
        let mark = t.conn_mark();
        let want = match self.cfg.traversal {
            Traversal::Punch => Want::Punch,
            Traversal::Relay => Want::Relay,
            _ => Want::Auto,
        };
        let reply = match self.ask(t, link, addr, want) {
            Ok(r) => r,
            // A node known to be behind NAT cannot be dialled directly: a
            // dial would only hang for the connect timeout, holding up every
            // other caller that waits for this address. Fail now; the next
            // try goes through the rendezvous again.
            Err(e) if self.natted.lock().contains(&addr) => {
                log::debug!("asking the rendezvous about {addr} (behind NAT): {e}");
                return Err(e);
            }
            Err(e) => {
                log::debug!("asking the rendezvous about {addr}: {e}; connecting directly");
                return t.dial(addr);
            }
        };
        let Some(peer) = reply.peer.clone().filter(|_| reply.mode != Mode::Unknown) else {
            log::debug!("{addr} is not registered at the rendezvous: connecting directly");
            self.natted.lock().remove(&addr);
            return t.dial(addr);
        };
        if peer.public != peer.private {
            self.natted.lock().insert(addr);
        } else {
            self.natted.lock().remove(&addr);
        }
        if reply.mode != Mode::Direct {
            return self.traverse(t, link, reply.mode, peer, mark, started);
        }
        match t.dial(addr) {
            Ok(c) => {
                log::info!(
                    "reaching {}: direct connection (it registered a public endpoint)",
                    who(&peer)
                );
                Ok(c)
            }
            Err(e) if worth_punching(&e) => {
                log::info!("direct connection to {} failed ({e}); punching", who(&peer));
                let mark = t.conn_mark();
                let again = self.ask(t, link, addr, Want::Punch)?;
                let peer = again.peer.unwrap_or(peer);
                self.traverse(t, link, again.mode, peer, mark, started)
            }
            Err(e) => Err(e),
        }
    }

    fn traverse(
        &self,
        t: &Arc<Transport>,
        link: &Arc<Conn>,
        mode: Mode,
        peer: Endpoints,
        mark: u64,
        started: Instant,
    ) -> Result<Arc<Conn>> {
        // Open already under another address (the peer's link, say)?
        if let Some(id) = peer.id {
            let open = t
                .all()
                .into_iter()
                .find(|c| !c.is_closed() && c.peer_id() == Some(id) && c.id < mark);
            if let Some(c) = open {
                return Ok(c);
            }
        }
        if mode == Mode::Punch {
            self.punches.fetch_add(1, Ordering::Relaxed);
            match self.punch_or_wait(t, &peer, mark) {
                Ok(c) => {
                    self.punched.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "reaching {}: punched connection ready in {} ms (public {}, private {})",
                        who(&peer),
                        started.elapsed().as_millis(),
                        peer.public,
                        peer.private
                    );
                    return Ok(c);
                }
                Err(e) => log::info!(
                    "reaching {}: punching failed ({e}); relaying through the rendezvous",
                    who(&peer)
                ),
            }
        } else {
            log::info!(
                "reaching {}: relayed through the rendezvous (traversal policy {:?})",
                who(&peer),
                self.cfg.traversal
            );
        }
        let conn = self.relay_to(t, link, &peer, true)?.conn;
        // The handshake runs end to end through the relay on the
        // connection's own thread.
        if conn.wait_ready(self.cfg.handshake_timeout) {
            return Ok(conn);
        }
        let failed = if conn.is_closed() {
            conn.closed_error()
        } else {
            conn.close();
            Error::Timeout {
                kind: crate::error::TimeoutKind::Handshake,
                what: format!("the relayed handshake of {}", who(&peer)),
                after: self.cfg.handshake_timeout,
            }
        };
        Err(failed)
    }

    /// Punch to `peer` on a thread of its own, and wait for it at most
    /// `Config::relay_after`: past that the caller relays at once, and a punch
    /// that succeeds later still takes over (its connection is preferred).
    fn punch_or_wait(&self, t: &Arc<Transport>, peer: &Endpoints, mark: u64) -> Result<Arc<Conn>> {
        let wait = self.cfg.relay_after.min(self.cfg.punch_timeout);
        let Some(me) = self.me.upgrade() else {
            return Err(Error::Shutdown);
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (t2, expected, timing) = (Arc::clone(t), expect(peer), self.timing());
        let who_ = who(peer);
        let spawned = t.threads.spawn(
            format!("p2prs-punch-{}", t.local_addr().port()),
            None,
            move || {
                let result = punch(&t2, &me.sessions, expected, true, mark, timing);
                if let Err(Err(e)) = tx.send(result).map_err(|e| e.into_inner()) {
                    log::debug!("late punch to {who_} failed: {e}");
                }
            },
        );
        if let Err(e) = spawned {
            return Err(Error::io("spawning a punch thread", e));
        }
        match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                kind: crate::error::TimeoutKind::Punch,
                what: format!(
                    "a punch to {} (it goes on while the relay carries the traffic)",
                    who(peer)
                ),
                after: wait,
            }),
        }
    }

    /// The relayed connection to `peer`, opened if need be.
    fn relay_to(
        &self,
        t: &Arc<Transport>,
        link: &Arc<Conn>,
        peer: &Endpoints,
        outbound: bool,
    ) -> Result<Relay> {
        let mut relays = self.relays.lock();
        if let Some(r) = relays.get(&peer.session).filter(|r| !r.conn.is_closed()) {
            return Ok(Relay {
                conn: Arc::clone(&r.conn),
                inbox: r.inbox.clone(),
            });
        }
        relays.retain(|_, r| !r.conn.is_closed());
        if relays.len() >= self.cfg.max_connections {
            return Err(Error::InvalidArgument(format!(
                "{} relayed connections open already",
                relays.len()
            )));
        }
        let (conn, inbox) = t.adopt_relay(
            Arc::clone(link),
            peer.session,
            peer.public,
            peer.listen,
            outbound,
        )?;
        if outbound {
            self.relays_opened.fetch_add(1, Ordering::Relaxed);
        } else {
            log::info!("{} reaches this node through the relay", who(peer));
        }
        relays.insert(
            peer.session,
            Relay {
                conn: Arc::clone(&conn),
                inbox: inbox.clone(),
            },
        );
        Ok(Relay { conn, inbox })
    }

    fn on_punch(&self, frame: Frame) {
        let go: PunchGo = match serde_json::from_value(frame.data) {
            Ok(g) => g,
            Err(e) => {
                log::warn!("malformed punch request from the rendezvous: {e}");
                return;
            }
        };
        let (Some(t), Some(me)) = (self.t.upgrade(), self.me.upgrade()) else {
            return;
        };
        if self.sessions.len() >= MAX_PUNCHES {
            log::warn!(
                "introduction {}: {MAX_PUNCHES} punches under way already; ignored",
                go.token
            );
            return;
        }
        let mark = t.conn_mark();
        let t2 = Arc::clone(&t);
        let spawned = t.threads.spawn(
            format!("p2prs-punch-{}", t.local_addr().port()),
            None,
            move || {
                let started = Instant::now();
                match punch(
                    &t2,
                    &me.sessions,
                    expect(&go.peer),
                    false,
                    mark,
                    me.timing(),
                ) {
                    Ok(_) => log::info!(
                        "introduction {}: punched connection with {} ready in {} ms",
                        go.token,
                        who(&go.peer),
                        started.elapsed().as_millis()
                    ),
                    Err(e) => log::info!(
                        "introduction {}: punching to {} failed ({e}); it will relay",
                        go.token,
                        who(&go.peer)
                    ),
                }
            },
        );
        if let Err(e) = spawned {
            log::warn!("no thread for a punch: {e}");
        }
    }

    fn on_relay(&self, link: &Arc<Conn>, frame: Frame) {
        let head: RelayIn = match serde_json::from_value(frame.data) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("malformed relay frame from the rendezvous: {e}");
                return;
            }
        };
        if head.close {
            if let Some(r) = self.relays.lock().remove(&head.from.session) {
                r.conn.close();
            }
            return;
        }
        let Some(t) = self.t.upgrade() else { return };
        let relay = match self.relay_to(&t, link, &head.from, false) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("a relayed connection from {}: {e}", who(&head.from));
                return;
            }
        };
        // The body is ciphertext for the relayed connection's own thread;
        // this link's reader never decodes it nor waits for it.
        let body = frame.body.unwrap_or_default();
        if relay.inbox.try_send(body).is_err() {
            log::warn!(
                "relayed connection from {}: {} bodies queued unread; closing",
                who(&head.from),
                relay.inbox.len()
            );
            relay.conn.close();
            self.relays.lock().remove(&head.from.session);
        }
    }

    fn on_gone(&self, frame: Frame) {
        let gone: Gone = match serde_json::from_value(frame.data) {
            Ok(g) => g,
            Err(e) => {
                log::warn!("malformed notice from the rendezvous: {e}");
                return;
            }
        };
        if let Some(r) = self.relays.lock().remove(&gone.session) {
            log::info!(
                "relayed connection to {} ended: {}",
                r.conn.peer_addr(),
                gone.reason
            );
            r.conn.close();
        }
    }
}

impl FrameSink for Client {
    fn on_frame(&self, conn: &Arc<Conn>, frame: Frame) {
        match frame.msg_type.as_str() {
            PUNCH => self.on_punch(frame),
            RELAY => self.on_relay(conn, frame),
            GONE => self.on_gone(frame),
            other => {
                if frame.kind == Kind::Request {
                    crate::transport::reply(
                        conn,
                        &frame,
                        Err(Error::Remote {
                            code: "no_handler".into(),
                            message: format!("{other:?} is not for a rendezvous client"),
                        }),
                    );
                } else {
                    log::debug!("rendezvous sent {other:?}; ignored");
                }
            }
        }
    }

    fn on_close(&self, conn: &Arc<Conn>) {
        {
            let mut link = self.link.lock();
            if link.conn.as_ref().is_some_and(|c| c.id == conn.id) {
                link.conn = None;
                link.public = None;
            }
        }
        let relays: Vec<Relay> = self.relays.lock().drain().map(|(_, r)| r).collect();
        for r in relays {
            r.conn.close();
        }
        if !self.stopped.load(Ordering::Acquire) {
            log::info!(
                "lost the link to the rendezvous {}; reconnecting",
                self.target
            );
            let _ = self.wake_tx.send(());
        }
    }
}

impl Client {
    /// The link, waiting up to the connect timeout for it to come back when
    /// `addr` is known to be behind NAT (a direct connect would only hang).
    fn link_for(&self, addr: SocketAddr) -> Option<Arc<Conn>> {
        if let Some(l) = self.live() {
            return Some(l);
        }
        if !self.natted.lock().contains(&addr) {
            return None;
        }
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let mut g = self.link.lock();
        loop {
            let up = g
                .conn
                .as_ref()
                .filter(|c| !c.is_closed() && g.public.is_some());
            if let Some(c) = up {
                return Some(Arc::clone(c));
            }
            if self.stopped.load(Ordering::Acquire)
                || self.link_up.wait_until(&mut g, deadline).timed_out()
            {
                return None;
            }
        }
    }

    /// A connection to this node itself, by the address it announces: over
    /// its listening address, since its own NAT would not hairpin it.
    fn dial_self(&self, t: &Arc<Transport>, addr: SocketAddr) -> Result<Arc<Conn>> {
        let mut local = t.local_addr();
        if local.ip().is_unspecified() {
            local.set_ip(match local {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let mut stream = TcpStream::connect_timeout(&local, self.cfg.connect_timeout)
            .map_err(|e| Error::io(format!("connecting to this node at {local}"), e))?;
        t.adopt_outbound(&mut stream, addr)
    }
}

impl NatHook for Client {
    fn connect(&self, t: &Arc<Transport>, addr: SocketAddr) -> Result<Arc<Conn>> {
        if addr != t.local_addr() && addr == t.advertised_addr() {
            return self.dial_self(t, addr);
        }
        let Some(link) = self
            .link_for(addr)
            .filter(|l| l.peer_addr() != addr && l.remote != addr)
        else {
            return t.dial(addr);
        };
        let lock = self.lock_for(addr);
        let result = {
            let _g = lock.lock();
            match t.find(addr) {
                Some(c) => Ok(c),
                None => self.reach(t, &link, addr),
            }
        };
        self.unlock(addr, lock);
        result
    }

    fn on_register(&self, conn: &Arc<Conn>) {
        self.sessions.offer(conn);
    }

    fn id_changed(&self) {
        // Register the new ID now rather than at the next keepalive.
        let _ = self.wake_tx.send(());
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop_tx.lock().take();
        self.link_up.notify_all();
        self.sessions.stop_all();
    }

    fn status(&self) -> NatStatus {
        Client::status(self)
    }
}

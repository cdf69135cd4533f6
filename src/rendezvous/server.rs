//! The rendezvous server: registrations, introductions, and the relay.

use super::limit::Bucket;
use super::proto::*;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::message::Message;
use crate::transport::reply;
use crate::transport::{self, Conn, FrameSink, Transport};
use crate::wire::{Frame, Kind};
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A relayed frame that would have to wait longer than this for the rate
/// limits is refused, and the sender's relayed connection closed.
const MAX_RELAY_WAIT: Duration = Duration::from_secs(2);

/// A rendezvous server: nodes behind NAT register with it, learn their
/// public endpoint, are introduced to each other for hole punching, and
/// relay through it when punching fails.
///
/// It speaks the p2prs wire protocol with the reserved message types
/// `p2prs.rv.*`. The relay is limited by
/// [`Config::relay_rate_limit`] (all traffic) and
/// [`Config::relay_peer_cap`] (each node, sending and receiving).
///
/// ```
/// use p2prs::{Node, Rendezvous};
/// let rv = Rendezvous::start("127.0.0.1", 0)?;
/// let node = Node::builder().rendezvous(rv.local_addr().to_string()).start()?;
/// assert_eq!(node.nat_status().map(|s| s.connected), Some(true));
/// assert_eq!(rv.registered(), 1);
/// node.shutdown();
/// rv.shutdown();
/// # Ok::<(), p2prs::Error>(())
/// ```
pub struct Rendezvous {
    server: Arc<Server>,
}

impl std::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("local_addr", &self.local_addr())
            .field("registered", &self.registered())
            .finish()
    }
}

/// Counters of a [`Rendezvous`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RendezvousStats {
    /// Nodes registered now.
    pub registered: usize,
    /// Registrations and refreshes answered.
    pub registrations: u64,
    /// Introductions made (both sides told to punch).
    pub introductions: u64,
    /// Frames forwarded by the relay.
    pub relayed_frames: u64,
    /// Bytes of relayed frames forwarded.
    pub relayed_bytes: u64,
    /// Relayed frames refused by the rate limits.
    pub refused_frames: u64,
}

impl Rendezvous {
    /// Listen on `host:port` (port 0: any free port) with the default
    /// configuration.
    pub fn start(host: &str, port: u16) -> Result<Rendezvous> {
        Rendezvous::start_with_config(host, port, Config::default())
    }

    /// Listen on `host:port` with `config` (its relay limits, timeouts and
    /// maximum frame size apply).
    pub fn start_with_config(host: &str, port: u16, config: Config) -> Result<Rendezvous> {
        let want = format!("{host}:{port}");
        let addr = *transport::resolve(&want)?
            .first()
            .ok_or_else(|| Error::InvalidAddress(want.clone()))?;
        let listener = transport::bind_listener(addr, false)?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listening address", e))?;
        let started = Instant::now();
        let total = Bucket::new(config.relay_rate_limit, Duration::ZERO);
        let secure = transport::secure_for(crate::identity::Identity::generate()?, &config)?;
        let transport = Transport::new(config, local, secure);
        transport.threads.set_grace(transport.cfg.shutdown_grace);
        let (stop_tx, stop_rx) = bounded(0);
        let server = Arc::new(Server {
            transport: Arc::clone(&transport),
            state: Mutex::new(State {
                regs: HashMap::new(),
                by_id: HashMap::new(),
                total,
                token: 0,
            }),
            started,
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            registrations: AtomicU64::new(0),
            introductions: AtomicU64::new(0),
            relayed_frames: AtomicU64::new(0),
            relayed_bytes: AtomicU64::new(0),
            refused_frames: AtomicU64::new(0),
        });
        let sink: Arc<dyn FrameSink> = server.clone();
        transport.set_sink(Arc::downgrade(&sink));
        transport.start_accept(listener)?;
        log::info!("rendezvous listening on {local}");
        Ok(Rendezvous { server })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.transport.local_addr()
    }

    /// How many nodes are registered now.
    pub fn registered(&self) -> usize {
        self.server.state.lock().regs.len()
    }

    /// Its counters.
    pub fn stats(&self) -> RendezvousStats {
        let s = &self.server;
        RendezvousStats {
            registered: self.registered(),
            registrations: s.registrations.load(Ordering::Relaxed),
            introductions: s.introductions.load(Ordering::Relaxed),
            relayed_frames: s.relayed_frames.load(Ordering::Relaxed),
            relayed_bytes: s.relayed_bytes.load(Ordering::Relaxed),
            refused_frames: s.refused_frames.load(Ordering::Relaxed),
        }
    }

    /// Close every connection and join every thread, waiting at most
    /// `Config::shutdown_grace` for them (see [`Node::shutdown`](crate::Node::shutdown)).
    /// Idempotent; dropping the `Rendezvous` does the same.
    pub fn shutdown(&self) {
        self.server.stop_tx.lock().take();
        self.server.transport.shutdown();
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Reg {
    conn: Arc<Conn>,
    /// The key the node proved on its link: the registration is bound to it.
    key: Option<crate::id::PublicKey>,
    id: Option<NodeId>,
    listen: SocketAddr,
    private: SocketAddr,
    bucket: Bucket,
    /// Sessions this one relayed with, told when it goes.
    partners: HashSet<u64>,
    /// Sessions introduced to this one (either asked for the other): the
    /// only ones it may relay to.
    introduced: HashSet<u64>,
    seen: Instant,
}

impl Reg {
    fn endpoints(&self) -> Endpoints {
        Endpoints {
            session: self.conn.id,
            id: self.id,
            listen: self.listen,
            public: self.conn.remote,
            private: self.private,
        }
    }
}

struct State {
    regs: HashMap<u64, Reg>,
    by_id: HashMap<NodeId, u64>,
    total: Bucket,
    token: u64,
}

impl State {
    /// Another live registration that holds `id` or `listen` under another
    /// key than `sid`'s: it is never replaced by this one.
    fn taken_by_other_key(
        &self,
        sid: u64,
        id: Option<NodeId>,
        listen: Option<SocketAddr>,
    ) -> Option<u64> {
        let key = self.regs.get(&sid).and_then(|r| r.key);
        self.regs
            .values()
            .find(|r| {
                r.conn.id != sid
                    && r.key != key
                    && ((id.is_some() && r.id == id) || listen.is_some_and(|l| r.listen == l))
            })
            .map(|r| r.conn.id)
    }

    fn set_id(&mut self, sid: u64, id: Option<NodeId>) {
        if self.taken_by_other_key(sid, id, None).is_some() {
            return;
        }
        let Some(reg) = self.regs.get_mut(&sid) else {
            return;
        };
        if reg.id == id {
            return;
        }
        if let Some(old) = reg.id {
            if self.by_id.get(&old) == Some(&sid) {
                self.by_id.remove(&old);
            }
        }
        reg.id = id;
        if let Some(new) = id {
            if let Some(prev) = self.by_id.insert(new, sid) {
                if prev != sid {
                    // The newest registration of an ID wins: the old one is
                    // most likely the stale link of a node that reconnected.
                    log::info!("node {new} registered again (session {sid} replaces {prev})");
                    if let Some(r) = self.regs.get_mut(&prev) {
                        r.id = None;
                    }
                }
            }
        }
    }

    fn find(&self, id: Option<NodeId>, addr: SocketAddr) -> Option<u64> {
        id.and_then(|id| self.by_id.get(&id).copied()).or_else(|| {
            self.regs
                .values()
                .find(|r| r.listen == addr || r.conn.remote == addr)
                .map(|r| r.conn.id)
        })
    }
}

struct Server {
    transport: Arc<Transport>,
    state: Mutex<State>,
    started: Instant,
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    registrations: AtomicU64,
    introductions: AtomicU64,
    relayed_frames: AtomicU64,
    relayed_bytes: AtomicU64,
    refused_frames: AtomicU64,
}

/// A node's ID for a log line: `ID 1`, or `no ID yet`.
fn id_text(id: Option<NodeId>) -> String {
    id.map_or_else(|| "no ID yet".to_string(), |id| format!("ID {id}"))
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Remote {
        code: "bad_request".into(),
        message: format!("{what}: {e}"),
    }
}

fn ok(v: &impl Serialize) -> Result<Message> {
    Ok(Message::new(OK, serde_json::to_value(v)?))
}

fn message(kind: &str, v: &impl Serialize) -> Frame {
    Frame::new(
        Kind::Message,
        kind,
        serde_json::to_value(v).unwrap_or_default(),
    )
}

impl Server {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn register(&self, conn: &Arc<Conn>, frame: &Frame) -> Result<Message> {
        let req: Register =
            serde_json::from_value(frame.data.clone()).map_err(|e| bad(REGISTER, e))?;
        conn.set_abortive();
        let sid = conn.id;
        let stale = self.transport.cfg.rendezvous_keepalive * 3;
        let mut st = self.state.lock();
        let fresh = !st.regs.contains_key(&sid);
        // A registration is bound to the key its link proved: an ID or an
        // address registered under another key is refused, and the first
        // registration is never evicted by it.
        let key = conn.peer_key();
        let clash = st.regs.values().find(|r| {
            r.conn.id != sid
                && r.key != key
                && (r.listen == req.listen || (req.id.is_some() && r.id == req.id))
        });
        if let Some(other) = clash {
            let why = format!(
                "{} (ID {}) is registered here under another key",
                other.listen,
                other.id.map_or("none".into(), |i| i.to_string())
            );
            drop(st);
            log::warn!("{}: registration refused: {why}", conn.remote);
            return Err(Error::Remote {
                code: "taken".into(),
                message: why,
            });
        }
        let reg = st.regs.entry(sid).or_insert_with(|| Reg {
            conn: Arc::clone(conn),
            key,
            id: None,
            listen: req.listen,
            private: req.private,
            bucket: Bucket::new(self.transport.cfg.relay_peer_cap, self.now()),
            partners: HashSet::new(),
            introduced: HashSet::new(),
            seen: Instant::now(),
        });
        reg.listen = req.listen;
        reg.private = req.private;
        reg.seen = Instant::now();
        st.set_id(sid, req.id);
        // A node has one link: an older registration of the same node (same
        // key, and same ID or address) is the stale link of a node that
        // reconnected, perhaps through a NAT that forgot it. So are links
        // that stopped refreshing.
        let dead: Vec<Arc<Conn>> = st
            .regs
            .values()
            .filter(|r| {
                let same = r.conn.id != sid
                    && r.key == key
                    && (r.listen == req.listen || (req.id.is_some() && r.id == req.id));
                same || r.seen.elapsed() > stale
            })
            .map(|r| Arc::clone(&r.conn))
            .collect();
        drop(st);
        for c in dead {
            log::info!(
                "dropping the old registration of {} (session {})",
                c.remote,
                c.id
            );
            c.close();
        }
        self.registrations.fetch_add(1, Ordering::Relaxed);
        if fresh {
            let nat = if conn.remote == req.private {
                "not behind NAT"
            } else {
                "behind NAT"
            };
            log::info!(
                "registered {} ({}): public {}, private {} ({nat})",
                req.listen,
                id_text(req.id),
                conn.remote,
                req.private
            );
        }
        ok(&Registered {
            public: conn.remote,
            session: sid,
        })
    }

    fn connect(&self, conn: &Arc<Conn>, frame: &Frame) -> Result<Message> {
        let req: ConnectReq =
            serde_json::from_value(frame.data.clone()).map_err(|e| bad(CONNECT, e))?;
        let sid = conn.id;
        let mut st = self.state.lock();
        if !st.regs.contains_key(&sid) {
            return Err(Error::Remote {
                code: "not_registered".into(),
                message: "register before asking for an introduction".into(),
            });
        }
        if req.from_id.is_some() {
            st.set_id(sid, req.from_id);
        }
        let Some(target) = st.find(req.id, req.addr) else {
            return ok(&ConnectReply {
                mode: Mode::Unknown,
                peer: None,
                token: 0,
            });
        };
        if target == sid {
            return Err(Error::InvalidArgument(format!(
                "{} is the asking node itself",
                req.addr
            )));
        }
        let (me, peer, peer_conn) = match (st.regs.get(&sid), st.regs.get(&target)) {
            (Some(m), Some(p)) => (m.endpoints(), p.endpoints(), Arc::clone(&p.conn)),
            _ => return Err(Error::Shutdown),
        };
        let mode = match req.want {
            Want::Relay => Mode::Relay,
            Want::Punch => Mode::Punch,
            Want::Auto if peer.public == peer.private => Mode::Direct,
            Want::Auto => Mode::Punch,
        };
        st.token += 1;
        let token = st.token;
        // The two may relay to each other from now on.
        for (a, b) in [(sid, target), (target, sid)] {
            if let Some(r) = st.regs.get_mut(&a) {
                r.introduced.insert(b);
            }
        }
        drop(st);
        if mode == Mode::Punch {
            // The target hears first; the asker's answer follows at once.
            let go = message(PUNCH, &PunchGo { peer: me, token });
            if let Err(e) = peer_conn.send_bounded(&go) {
                log::info!(
                    "introduction {token}: the target {} is gone: {e}",
                    peer.public
                );
            }
            self.introductions.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "introduction {token}: {} ({}) <-> {} ({})",
                conn.remote,
                id_text(req.from_id),
                peer.public,
                id_text(peer.id)
            );
        }
        ok(&ConnectReply {
            mode,
            peer: Some(peer),
            token,
        })
    }

    fn relay(&self, conn: &Arc<Conn>, frame: Frame) {
        let out: RelayOut = match serde_json::from_value(frame.data) {
            Ok(o) => o,
            Err(e) => {
                log::warn!("{}: malformed relay frame: {e}", conn.remote);
                return;
            }
        };
        let sid = conn.id;
        let size = frame.body.as_ref().map_or(0, Vec::len);
        let gone = |reason: &str| {
            let g = Gone {
                session: out.to,
                reason: reason.into(),
            };
            let _ = conn.send_bounded(&message(GONE, &g));
        };
        let now = self.now();
        let mut st = self.state.lock();
        let (Some(from), Some(to_conn)) = (
            st.regs.get(&sid).map(Reg::endpoints),
            st.regs.get(&out.to).map(|r| Arc::clone(&r.conn)),
        ) else {
            drop(st);
            gone("the peer is not registered at the rendezvous");
            return;
        };
        if !st
            .regs
            .get(&sid)
            .is_some_and(|r| r.introduced.contains(&out.to))
        {
            drop(st);
            self.refused_frames.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{}: refused a relay frame to session {}: they were never introduced",
                conn.remote,
                out.to
            );
            gone("the two nodes were never introduced");
            return;
        }
        // The sender pays: its own budget and the relay's total.
        let wait = {
            let State { regs, total, .. } = &mut *st;
            let w_total = total.wait_for(size, now);
            let w_from = regs
                .get_mut(&sid)
                .map_or(Duration::ZERO, |r| r.bucket.wait_for(size, now));
            w_total.max(w_from)
        };
        if wait > MAX_RELAY_WAIT {
            drop(st);
            self.refused_frames.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "relay {} -> session {}: refused a frame of {size} bytes (rate limit)",
                conn.remote,
                out.to
            );
            gone("the relay's rate limit was exceeded");
            return;
        }
        st.total.take(size, now);
        if let Some(r) = st.regs.get_mut(&sid) {
            r.bucket.take(size, now);
        }
        for (a, b) in [(sid, out.to), (out.to, sid)] {
            if let Some(r) = st.regs.get_mut(&a) {
                r.partners.insert(b);
            }
        }
        drop(st);
        if !wait.is_zero() && self.stop_rx.recv_timeout(wait).is_ok() {
            return;
        }
        let mut fwd = message(
            RELAY,
            &RelayIn {
                from,
                close: out.close,
            },
        );
        fwd.body = frame.body;
        match to_conn.send_bounded(&fwd) {
            Ok(()) => {
                self.relayed_frames.fetch_add(1, Ordering::Relaxed);
                self.relayed_bytes.fetch_add(size as u64, Ordering::Relaxed);
            }
            Err(e) => {
                log::debug!("relaying to session {}: {e}", out.to);
                gone("the peer's link to the rendezvous failed");
            }
        }
    }
}

impl FrameSink for Server {
    fn on_frame(&self, conn: &Arc<Conn>, frame: Frame) {
        match frame.msg_type.as_str() {
            REGISTER => {
                let answer = self.register(conn, &frame);
                reply(conn, &frame, answer);
            }
            CONNECT => {
                let answer = self.connect(conn, &frame);
                reply(conn, &frame, answer);
            }
            RELAY => self.relay(conn, frame),
            other => {
                let why = format!("a rendezvous does not handle {other:?}");
                reply(
                    conn,
                    &frame,
                    Err(Error::Remote {
                        code: "no_handler".into(),
                        message: why,
                    }),
                );
            }
        }
    }

    fn on_close(&self, conn: &Arc<Conn>) {
        let sid = conn.id;
        let (reg, partners) = {
            let mut st = self.state.lock();
            let Some(reg) = st.regs.remove(&sid) else {
                return;
            };
            if let Some(id) = reg.id {
                if st.by_id.get(&id) == Some(&sid) {
                    st.by_id.remove(&id);
                }
            }
            let partners: Vec<Arc<Conn>> = reg
                .partners
                .iter()
                .filter_map(|p| st.regs.get(p).map(|r| Arc::clone(&r.conn)))
                .collect();
            (reg, partners)
        };
        log::info!("{} ({}) left the rendezvous", reg.listen, id_text(reg.id));
        let g = Gone {
            session: sid,
            reason: "the peer's link to the rendezvous closed".into(),
        };
        for p in partners {
            let _ = p.send_bounded(&message(GONE, &g));
        }
    }
}

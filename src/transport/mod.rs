//! The only place that touches `std::net` and spawns connection threads.

mod conn;
mod dials;
mod flush;
mod limits;
mod nowait;
mod threads;
mod writer;

pub(crate) use conn::drive_handshake;
pub(crate) use conn::{
    accepted_handshake, handshake, reply, requests_made, tie_break, Conn, FrameSink, Greeted,
    Inbound, RELAY_TYPE,
};
#[cfg(feature = "unstable-testing")]
pub(crate) use dials::dials;
pub(crate) use dials::{purpose, Purpose};
pub(crate) use threads::Threads;

use conn::ReadLimits;
use limits::{Admission, Admitted, Memory, Refusal, Throttled};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::id::PublicKey;
use crate::noise::{Handshaker, Local};
use crate::wire::Hello;
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// NAT traversal, plugged in by the rendezvous client (`crate::rendezvous`).
pub(crate) trait NatHook: Send + Sync {
    /// Reach the node listening at `addr`, to which no connection is open:
    /// directly, punched, or relayed.
    fn connect(&self, t: &Arc<Transport>, addr: SocketAddr) -> Result<Arc<Conn>>;
    /// A connection was registered (inbound or outbound).
    fn on_register(&self, conn: &Arc<Conn>);
    /// This node's ID changed (it joined or left a ring).
    fn id_changed(&self);
    /// The transport begins to shut down: stop the traversal's threads.
    fn stop(&self);
    /// What the traversal knows of its rendezvous.
    fn status(&self) -> NatStatus;
}

/// What a node knows of its rendezvous. See [`Node::nat_status`](crate::Node::nat_status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatStatus {
    /// The rendezvous address, as configured.
    pub rendezvous: String,
    /// Whether the link to the rendezvous is up and registered.
    pub connected: bool,
    /// This node's public endpoint, as the rendezvous last saw it.
    pub public_addr: Option<SocketAddr>,
    /// This node's private endpoint (the local address of its link).
    pub private_addr: Option<SocketAddr>,
    /// Registrations and refreshes the rendezvous answered.
    pub registrations: u64,
    /// Times the link was (re)established.
    pub links: u64,
    /// Hole punches this node started (as the asking side).
    pub punches: u64,
    /// Of those, how many succeeded.
    pub punched: u64,
    /// Relayed connections this node opened.
    pub relays: u64,
}

impl NatStatus {
    /// Whether the rendezvous sees this node at another address than its own.
    pub fn behind_nat(&self) -> bool {
        matches!((self.public_addr, self.private_addr), (Some(a), Some(b)) if a != b)
    }
}

/// Open connections and the threads that serve them.
pub(crate) struct Transport {
    pub(crate) cfg: Config,
    /// This node's identity, network key and handshake material.
    pub(crate) secure: Arc<Local>,
    local: SocketAddr,
    pub(crate) threads: Arc<Threads>,
    /// Writes the batches of senders' one-way messages (see `flush.rs`).
    flusher: Arc<flush::Flusher>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_conn: AtomicU64,
    my_id: Mutex<Option<NodeId>>,
    sink: Mutex<Option<Weak<dyn FrameSink>>>,
    stopping: AtomicBool,
    /// Inbound sockets still in their handshake, closed at shutdown.
    greeting: Mutex<HashMap<u64, TcpStream>>,
    /// The address announced in hellos and the ring, when it is not `local`
    /// (a public endpoint learnt from a rendezvous).
    advertised: Mutex<Option<SocketAddr>>,
    traversal: OnceLock<Arc<dyn NatHook>>,
    /// Inbound connections in their handshake, and per IP address.
    admission: Arc<Admission>,
    /// The budget for bytes of partially received frames.
    memory: Memory,
    /// Warnings about refused inbound connections, at most one a second.
    refusals: Throttled,
}

/// How frames to a peer travel. See [`Node::path`](crate::Node::path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Path {
    /// An ordinary TCP connection, opened by one side.
    Direct = 0,
    /// A TCP connection punched through NAT by simultaneous open.
    Punched = 1,
    /// Frames go through the rendezvous server, which forwards them.
    Relayed = 2,
}

impl Path {
    pub(crate) fn from_u8(v: u8) -> Path {
        match v {
            1 => Path::Punched,
            2 => Path::Relayed,
            _ => Path::Direct,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        })
    }
}

/// The accept thread answers a leading dialer's first handshake message
/// itself (see `accepted_handshake`) while at most this many connections
/// are in their handshake, the new one included.
const INLINE_HANDSHAKES: usize = 2;

/// An inbound connection may replace one quiet at least this long, when
/// the node is at `max_connections`.
const REPLACEABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Relay bodies queued for one relayed connection's thread.
const RELAY_INBOX: usize = 256;

/// Which of several connections to one peer to use: a direct or punched one
/// over a relayed one (a punch that succeeds after the relay was opened takes
/// over), then one this node opened (its idle timer is ours).
fn preference(c: &Conn) -> (bool, bool) {
    (c.path() != Path::Relayed, c.outbound)
}

/// Handshake material for a node (or rendezvous) with `identity` and the
/// security settings of `cfg`.
pub(crate) fn secure_for(identity: crate::identity::Identity, cfg: &Config) -> Result<Arc<Local>> {
    if cfg.network_key.as_ref().is_some_and(|k| k.is_empty()) {
        return Err(Error::InvalidArgument(
            "the network key is empty: give a long random key, or none for an open network".into(),
        ));
    }
    Local::new(
        identity,
        cfg.network_key.clone(),
        cfg.insecure_plaintext,
        cfg.cipher,
    )
    .map(Arc::new)
    .map_err(|error| Error::Handshake {
        peer: "(none: setting up this node's keys)".into(),
        error,
    })
}

/// Resolve `host:port` text to socket addresses.
pub(crate) fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let v: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Error::InvalidAddress(format!("{addr}: {e}")))?
        .collect();
    if v.is_empty() {
        return Err(Error::InvalidAddress(format!(
            "{addr}: resolves to nothing"
        )));
    }
    Ok(v)
}

/// A listening socket with SO_REUSEADDR (and SO_REUSEPORT when asked, for
/// hole punching from the same port).
pub(crate) fn bind_listener(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener> {
    let ctx = |what: &str| format!("{what} {addr}");
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Error::io(ctx("creating a socket for"), e))?;
    s.set_reuse_address(true)
        .map_err(|e| Error::io(ctx("SO_REUSEADDR on"), e))?;
    #[cfg(unix)]
    if reuse_port {
        s.set_reuse_port(true)
            .map_err(|e| Error::io(ctx("SO_REUSEPORT on"), e))?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    s.bind(&addr.into())
        .map_err(|e| Error::io(ctx("binding"), e))?;
    s.listen(1024)
        .map_err(|e| Error::io(ctx("listening on"), e))?;
    Ok(s.into())
}

impl Transport {
    /// The sizes of the transport's tables that grow with its peers (for
    /// the tests: none may keep what a gone peer left).
    #[cfg(feature = "unstable-testing")]
    pub(crate) fn table_sizes(&self) -> Vec<(&'static str, usize)> {
        let (live, done) = self.threads.counts();
        vec![
            ("connections", self.conns.lock().len()),
            ("inbound handshakes", self.greeting.lock().len()),
            ("per-IP counts", self.admission.addresses()),
            ("memory holders", self.memory.holders()),
            ("threads", live),
            ("threads to join", done),
        ]
    }

    /// A transport for a node listening on `local`.
    pub(crate) fn new(cfg: Config, local: SocketAddr, secure: Arc<Local>) -> Arc<Transport> {
        let cfg_memory = cfg.memory_budget;
        let threads = Arc::new(Threads::default());
        threads.set_connection_threads(
            format!("p2prs-conn-{}", local.port()),
            Some(cfg.connection_stack_size),
        );
        let flusher = flush::Flusher::new(
            Arc::clone(&threads),
            format!("p2prs-flush-{}", local.port()),
            cfg.connection_stack_size,
        );
        Arc::new(Transport {
            cfg,
            secure,
            local,
            threads,
            flusher,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            my_id: Mutex::new(None),
            sink: Mutex::new(None),
            stopping: AtomicBool::new(false),
            greeting: Mutex::new(HashMap::new()),
            advertised: Mutex::new(None),
            traversal: OnceLock::new(),
            admission: Admission::new(),
            memory: Memory::new(cfg_memory),
            refusals: Throttled::new(),
        })
    }

    /// Plug in NAT traversal (once, before the first connection).
    pub(crate) fn set_traversal(&self, t: Arc<dyn NatHook>) {
        let _ = self.traversal.set(t);
    }

    /// The NAT traversal plugged in, if any.
    pub(crate) fn traversal(&self) -> Option<&Arc<dyn NatHook>> {
        self.traversal.get()
    }

    /// The address others should use to reach this node.
    pub(crate) fn advertised_addr(&self) -> SocketAddr {
        self.advertised.lock().unwrap_or(self.local)
    }

    /// Announce `addr` instead of the listening address.
    pub(crate) fn set_advertised(&self, addr: SocketAddr) {
        *self.advertised.lock() = Some(addr);
    }

    /// The node ID this node announces.
    pub(crate) fn my_id(&self) -> Option<NodeId> {
        *self.my_id.lock()
    }

    /// Every connection registered from now on has an ID at least this.
    pub(crate) fn conn_mark(&self) -> u64 {
        self.next_conn.load(Ordering::Relaxed)
    }

    /// Where frames go. Set once, before the first connection.
    pub(crate) fn set_sink(&self, sink: Weak<dyn FrameSink>) {
        *self.sink.lock() = Some(sink);
    }

    /// The address this node listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Set the node ID this node announces in its hello.
    pub(crate) fn set_my_id(&self, id: Option<NodeId>) {
        *self.my_id.lock() = id;
        if let Some(t) = self.traversal.get() {
            t.id_changed();
        }
    }

    pub(crate) fn hello(&self) -> Hello {
        Hello {
            listen: Some(self.advertised_addr().to_string()),
            id: self.my_id.lock().map(|i| i.0),
        }
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Start the accept thread.
    pub(crate) fn start_accept(self: &Arc<Self>, listener: TcpListener) -> Result<()> {
        let me = Arc::clone(self);
        self.threads
            .spawn(
                format!("p2prs-accept-{}", self.local.port()),
                None,
                move || me.accept_loop(listener),
            )
            .map_err(|e| Error::io("spawning the accept thread", e))
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = listener.accept();
            if self.is_stopping() {
                return;
            }
            match accepted {
                Ok((stream, from)) => {
                    let Some(admitted) = self.admit(from) else {
                        // Dropping the stream closes it.
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    // Answering a leading dialer here is a few Diffie-Hellman
                    // operations; with many handshakes under way, those wait
                    // for the connections' own threads, so that accepting
                    // stays quick.
                    let work = self.admission.handshaking() <= INLINE_HANDSHAKES;
                    let hs = match accepted_handshake(&stream, &self.secure, &self.hello(), work) {
                        Ok(hs) => hs,
                        Err(e) => {
                            // As the connection's thread says it, at most
                            // once a second (hostile peers come in floods).
                            self.refusals
                                .warn(|| format!("{e}; closing the connection from {from}"));
                            continue;
                        }
                    };
                    let me = Arc::clone(&self);
                    // A parked spare if there is one (see `Threads`). No
                    // spare is made here: message 2 is out already, and a
                    // new thread's start overlaps the dialer's work on
                    // message 3 (in A/B runs a refill here did not help).
                    if let Err(e) = self
                        .threads
                        .spawn_connection(move || me.serve_inbound(stream, from, admitted, hs))
                    {
                        self.refusals
                            .warn(|| format!("no thread for the connection from {from}: {e}"));
                    }
                }
                Err(e) => {
                    log::warn!("accept on {}: {e}", self.local);
                    // Out of descriptors or similar: back off a little rather than spin.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }

    /// Whether a connection from `from` may be served: room among the
    /// connections in their handshake, under its address's limit, and
    /// under `max_connections` (replacing the inbound connection quiet the
    /// longest if need be). Refusals are logged at most once a second.
    fn admit(&self, from: SocketAddr) -> Option<Admitted> {
        let cfg = &self.cfg;
        let ip = from.ip();
        let per_ip = (cfg.max_inbound_per_ip > 0 && (cfg.limit_loopback || !ip.is_loopback()))
            .then_some(cfg.max_inbound_per_ip);
        let admitted = match self.admission.admit(ip, cfg.max_handshaking, per_ip) {
            Ok(a) => a,
            Err(Refusal::Handshaking(n)) => {
                self.refusals.warn(|| {
                    format!("refusing {from}: {n} connections are in their handshake already")
                });
                return None;
            }
            Err(Refusal::PerIp(n)) => {
                self.refusals.warn(|| {
                    format!("refusing {from}: {n} connections from {ip} are open already")
                });
                return None;
            }
        };
        // Closed connections whose threads are finishing count too: they
        // still hold a thread and a descriptor (a hard cap, even if it
        // closes one more quiet connection than needed now and then).
        let open = self.conns.lock().len() + self.admission.handshaking() - 1;
        if open >= cfg.max_connections {
            let quietest = self
                .conns
                .lock()
                .values()
                .filter_map(|c| c.replaceable(REPLACEABLE_AFTER).map(|t| (t, Arc::clone(c))))
                .min_by_key(|(t, _)| *t);
            match quietest {
                Some((_, c)) => {
                    self.refusals.warn(|| {
                        format!(
                            "{} connections open: closing the one quiet the longest ({}) \
                             for {from}",
                            cfg.max_connections,
                            c.peer_addr()
                        )
                    });
                    c.close();
                }
                None => {
                    self.refusals.warn(|| {
                        format!(
                            "refusing {from}: {} connections open already, none of them idle",
                            cfg.max_connections
                        )
                    });
                    return None;
                }
            }
        }
        Some(admitted)
    }

    fn serve_inbound(
        self: Arc<Self>,
        mut stream: TcpStream,
        from: SocketAddr,
        mut admitted: Admitted,
        hs: Handshaker,
    ) {
        let _ = stream.set_write_timeout(Some(self.cfg.write_timeout));
        let key = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            self.greeting.lock().insert(key, clone);
        }
        if self.is_stopping() {
            self.greeting.lock().remove(&key);
            return;
        }
        let greeted = drive_handshake(&mut stream, hs, self.cfg.handshake_timeout, None);
        self.greeting.lock().remove(&key);
        let greeted = match greeted {
            Ok(x) => x,
            Err(e) => {
                admitted.greeted();
                log::warn!("{e}; closing the connection from {from}");
                return;
            }
        };
        // Counted as handshaking until it is registered, so that no
        // admission in between misses it (and admits one too many).
        let stream = Arc::new(stream);
        let conn = self.register(&stream, &greeted, false);
        admitted.greeted();
        if let Some(conn) = conn {
            self.read(conn, stream, greeted);
        }
        drop(admitted);
    }

    /// The secure handshake on a stream this node just dialled, leading,
    /// with this node's hello.
    pub(crate) fn handshake_dialed(&self, stream: &mut TcpStream) -> Result<Greeted> {
        let hs = self.leading_handshaker(&conn::peer_name(stream))?;
        drive_handshake(stream, hs, self.cfg.handshake_timeout, Some(&self.threads))
    }

    /// This node's public key.
    pub(crate) fn public_key(&self) -> PublicKey {
        self.secure.identity().public_key()
    }

    fn register(
        &self,
        stream: &Arc<TcpStream>,
        greeted: &Greeted,
        outbound: bool,
    ) -> Option<Arc<Conn>> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = match Conn::new(
            id,
            stream,
            &greeted.proof,
            &greeted.session,
            outbound,
            self.cfg.max_frame_size,
        ) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                log::warn!("setting up a connection: {e}");
                return None;
            }
        };
        conn.set_slow_peer_timeout(self.cfg.slow_peer_timeout);
        conn.set_flusher(Arc::clone(&self.flusher));
        let mut g = self.conns.lock();
        if self.is_stopping() {
            conn.close();
            return None;
        }
        g.insert(id, Arc::clone(&conn));
        let evict = if outbound {
            self.evictable(&g)
        } else {
            Vec::new()
        };
        drop(g);
        for c in evict {
            log::debug!(
                "closing the least recently used connection to {}",
                c.peer_addr()
            );
            c.close();
        }
        if let Some(sink) = self.sink.lock().as_ref().and_then(|w| w.upgrade()) {
            sink.on_open(&conn);
        }
        if let Some(t) = self.traversal.get() {
            t.on_register(&conn);
        }
        Some(conn)
    }

    /// Close the least recently used temporary connections beyond
    /// `max_temporary_connections` (see [`Transport::evictable`]). Opening a
    /// connection does this too; a node that only reuses its open
    /// connections (a periodic walk over many peers, say) needs it done
    /// periodically, else every peer it visits more often than the idle
    /// timeout keeps a connection, and a thread at each end.
    pub(crate) fn trim_temporary(&self) {
        let evict = self.evictable(&self.conns.lock());
        for c in evict {
            log::debug!(
                "closing the least recently used connection to {}",
                c.peer_addr()
            );
            c.close();
        }
    }

    /// The temporary connections to close so that at most
    /// `max_temporary_connections` that have carried user traffic and
    /// `max_ring_connections` that have carried only the ring's stay open:
    /// the least recently used first, never a pinned one or one with
    /// requests outstanding, nor one used in the last moment (200 ms; 20 ms
    /// for the ring's, whose requests are repeated once if the connection
    /// closes under them).
    fn evictable(&self, conns: &HashMap<u64, Arc<Conn>>) -> Vec<Arc<Conn>> {
        let classes = [
            (
                true,
                std::time::Duration::from_millis(200),
                self.cfg.max_temporary_connections,
            ),
            (
                false,
                std::time::Duration::from_millis(20),
                self.cfg.max_ring_connections,
            ),
        ];
        let mut out = Vec::new();
        for (user, quiet, cap) in classes {
            let mut temps: Vec<(std::time::Instant, &Arc<Conn>)> = conns
                .values()
                .filter(|c| c.is_user() == user)
                .filter_map(|c| c.evictable(quiet).map(|t| (t, c)))
                .collect();
            if temps.len() <= cap {
                continue;
            }
            temps.sort_by_key(|(t, _)| *t);
            let excess = temps.len() - cap;
            out.extend(temps.into_iter().take(excess).map(|(_, c)| Arc::clone(c)));
        }
        out
    }

    fn read(&self, conn: Arc<Conn>, stream: Arc<TcpStream>, greeted: Greeted) {
        self.read_with(conn, stream, greeted, None);
    }

    fn read_with(
        &self,
        conn: Arc<Conn>,
        stream: Arc<TcpStream>,
        greeted: Greeted,
        sink: Option<Arc<dyn FrameSink>>,
    ) {
        let sink = sink.or_else(|| self.sink.lock().as_ref().and_then(|w| w.upgrade()));
        let mut inbound = Inbound::new(
            &greeted.session,
            self.cfg.max_frame_size,
            self.cfg.max_header_size,
        );
        if let Err(e) = inbound.push(&greeted.rest) {
            log::warn!("{}: {e}; closing the connection", conn.peer_addr());
            conn.close();
            self.conns.lock().remove(&conn.id);
            return;
        }
        if let Some(sink) = sink {
            let limits = ReadLimits {
                idle: self.cfg.idle_timeout,
                ring_idle: self.cfg.ring_idle_timeout,
                forward_timeout: self.cfg.request_timeout,
                min_frame_rate: self.cfg.min_frame_rate,
                frame_grace: self.cfg.frame_grace,
                memory: &self.memory,
            };
            conn.read_loop(stream, inbound, &*sink, &limits);
        } else {
            conn.close();
        }
        self.conns.lock().remove(&conn.id);
    }

    /// An open connection to the node listening on `addr`, if there is one.
    pub(crate) fn find(&self, addr: SocketAddr) -> Option<Arc<Conn>> {
        let g = self.conns.lock();
        g.values()
            .filter(|c| !c.is_closed() && c.peer_listen == Some(addr))
            .max_by_key(|c| preference(c))
            .cloned()
    }

    /// Every open connection.
    pub(crate) fn all(&self) -> Vec<Arc<Conn>> {
        self.conns.lock().values().cloned().collect()
    }

    /// How many connections are open: registered and not closed (a closed
    /// one stays registered until its thread has finished).
    pub(crate) fn open_count(&self) -> usize {
        self.conns
            .lock()
            .values()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// The open connection to `addr`, or a new one (through the NAT
    /// traversal when one is plugged in).
    pub(crate) fn connect(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<Conn>> {
        if let Some(c) = self.find(addr) {
            return Ok(c);
        }
        if let Some(t) = self.traversal.get() {
            return t.connect(self, addr);
        }
        self.dial(addr)
    }

    /// As [`Transport::connect`], for the node that the ring binds to `key`
    /// at `addr`: a connection whose peer proved another key is refused, and
    /// one opened for the purpose is closed at once.
    pub(crate) fn connect_to(
        self: &Arc<Self>,
        addr: SocketAddr,
        key: Option<PublicKey>,
    ) -> Result<Arc<Conn>> {
        let Some(key) = key.filter(|_| !self.cfg.insecure_plaintext) else {
            return self.connect(addr);
        };
        if let Some(c) = self.find_keyed(addr, key) {
            return Ok(c);
        }
        let mark = self.conn_mark();
        let c = self.connect(addr)?;
        if c.peer_key() == Some(key) {
            return Ok(c);
        }
        if c.id >= mark && c.outbound {
            log::warn!(
                "{addr} proved key {} where the ring expects {}; closing",
                c.peer_key().map(|k| k.short()).unwrap_or_default(),
                key.short()
            );
            c.close();
        }
        Err(Error::WrongPeer {
            addr: addr.to_string(),
            expected: key,
            found: c.peer_key(),
        })
    }

    /// An open connection to `addr` whose peer proved `key`.
    fn find_keyed(&self, addr: SocketAddr, key: PublicKey) -> Option<Arc<Conn>> {
        let g = self.conns.lock();
        g.values()
            .filter(|c| !c.is_closed() && c.peer_listen == Some(addr) && c.peer_key() == Some(key))
            .max_by_key(|c| preference(c))
            .cloned()
    }

    /// Open a new connection to `addr`, handshake, and start its thread.
    pub(crate) fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<Conn>> {
        if self.is_stopping() {
            return Err(Error::Shutdown);
        }
        crate::budget::check()
            .map_err(|e| Error::io(format!("connecting to {addr}"), std::io::Error::other(e)))?;
        // The preamble and the first handshake message are made before the
        // connection, so that they leave as soon as it is open: the peer's
        // accept thread can then answer at once (see `accepted_handshake`).
        let hs = self.leading_handshaker(&addr.to_string())?;
        let mut stream = TcpStream::connect_timeout(&addr, self.cfg.connect_timeout)
            .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
        dials::count_dial();
        self.adopt_outbound_with(&mut stream, addr, hs)
    }

    /// The handshake of a connection this node dials to `peer`, leading
    /// (see `Handshaker::lead`).
    fn leading_handshaker(&self, peer: &str) -> Result<Handshaker> {
        Handshaker::new(
            Arc::clone(&self.secure),
            &self.hello(),
            tie_break(Some(true))?,
        )
        .lead()
        .map_err(|error| Error::Handshake {
            peer: peer.to_string(),
            error,
        })
    }

    /// Handshake on a freshly connected stream and start serving it.
    pub(crate) fn adopt_outbound(
        self: &Arc<Self>,
        stream: &mut TcpStream,
        addr: SocketAddr,
    ) -> Result<Arc<Conn>> {
        let hs = self.leading_handshaker(&addr.to_string())?;
        self.adopt_outbound_with(stream, addr, hs)
    }

    /// [`Transport::adopt_outbound`] with the handshake `hs` begun.
    fn adopt_outbound_with(
        self: &Arc<Self>,
        stream: &mut TcpStream,
        addr: SocketAddr,
        hs: Handshaker,
    ) -> Result<Arc<Conn>> {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.cfg.write_timeout));
        let greeted = drive_handshake(stream, hs, self.cfg.handshake_timeout, Some(&self.threads))?;
        self.adopt_greeted(stream, greeted, addr, None)
    }

    /// Register an outbound stream whose hellos were exchanged already and
    /// start its reader; `sink` overrides where its frames go.
    pub(crate) fn adopt_greeted(
        self: &Arc<Self>,
        stream: &TcpStream,
        mut greeted: Greeted,
        addr: SocketAddr,
        sink: Option<Arc<dyn FrameSink>>,
    ) -> Result<Arc<Conn>> {
        // We reached it at `addr`: that is where it listens, whatever it says.
        greeted.proof.hello.listen = Some(addr.to_string());
        // One descriptor per connection, shared by the reader and the writer;
        // the caller's handle is closed when it returns.
        let reader = Arc::new(
            stream
                .try_clone()
                .map_err(|e| Error::io("cloning a socket", e))?,
        );
        let conn = self
            .register(&reader, &greeted, true)
            .ok_or(Error::Shutdown)?;
        let me = Arc::clone(self);
        let c2 = Arc::clone(&conn);
        let spawned = self
            .threads
            .spawn_connection(move || me.read_with(c2, reader, greeted, sink));
        if let Err(e) = spawned {
            conn.close();
            self.conns.lock().remove(&conn.id);
            return Err(Error::io("spawning a connection thread", e));
        }
        Ok(conn)
    }

    /// A connection relayed through `via` to the peer registered there as
    /// session `to`: its thread runs the secure handshake end to end through
    /// the relay (the rendezvous sees only ciphertext), registers the
    /// connection, then reads it. Bytes from the peer are pushed into the
    /// returned sender (bounded: a peer that floods it is disconnected).
    /// Callers that need the connection at once wait with [`Conn::wait_ready`].
    pub(crate) fn adopt_relay(
        self: &Arc<Self>,
        via: Arc<Conn>,
        to: u64,
        remote: SocketAddr,
        listen: SocketAddr,
        outbound: bool,
    ) -> Result<(Arc<Conn>, Sender<Vec<u8>>)> {
        if self.is_stopping() {
            return Err(Error::Shutdown);
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (conn, stop) = Conn::new_relay(
            id,
            via,
            to,
            remote,
            Some(listen),
            outbound,
            self.cfg.max_frame_size,
        );
        let conn = Arc::new(conn);
        conn.set_slow_peer_timeout(self.cfg.slow_peer_timeout);
        let (tx, rx) = bounded(RELAY_INBOX);
        let me = Arc::clone(self);
        let c2 = Arc::clone(&conn);
        let name = format!("p2prs-relay-{}", self.local.port());
        let spawned = self
            .threads
            .spawn(name, Some(self.cfg.connection_stack_size), move || {
                me.serve_relay(c2, rx, stop)
            });
        if let Err(e) = spawned {
            conn.close();
            return Err(Error::io("spawning a relay thread", e));
        }
        Ok((conn, tx))
    }

    fn serve_relay(self: Arc<Self>, conn: Arc<Conn>, inbox: Receiver<Vec<u8>>, stop: Receiver<()>) {
        let greeted = match self.relay_handshake(&conn, &inbox, &stop) {
            Ok(g) => g,
            Err(e) => {
                log::warn!("relayed connection to {}: {e}; closing", conn.peer_addr());
                conn.close();
                return;
            }
        };
        conn.secure_relay(&greeted.proof, &greeted.session);
        {
            let mut g = self.conns.lock();
            if self.is_stopping() {
                conn.close();
                return;
            }
            g.insert(conn.id, Arc::clone(&conn));
        }
        let sink = self.sink.lock().as_ref().and_then(|w| w.upgrade());
        match sink {
            Some(sink) => {
                sink.on_open(&conn);
                let mut inbound =
                    Inbound::new(&greeted.session, conn.max_frame(), self.cfg.max_header_size);
                if let Err(e) = inbound.push(&greeted.rest) {
                    log::warn!("{} (relayed): {e}; closing", conn.peer_addr());
                    conn.close();
                } else {
                    conn.relay_loop(inbox, stop, inbound, &*sink, self.cfg.idle_timeout);
                }
            }
            None => conn.close(),
        }
        self.conns.lock().remove(&conn.id);
    }

    /// The secure handshake with the peer of a relayed connection, its
    /// messages carried in relay frames.
    fn relay_handshake(
        &self,
        conn: &Conn,
        inbox: &Receiver<Vec<u8>>,
        stop: &Receiver<()>,
    ) -> Result<Greeted> {
        let mut hs = Handshaker::new(Arc::clone(&self.secure), &self.hello(), tie_break(None)?);
        let timeout = self.cfg.handshake_timeout;
        let deadline = crossbeam_channel::at(std::time::Instant::now() + timeout);
        let peer = conn.peer_addr().to_string();
        loop {
            let out = hs.take_output();
            if !out.is_empty() {
                conn.send_relay_bytes(out)?;
            }
            hs.settle().map_err(|error| Error::Handshake {
                peer: peer.clone(),
                error,
            })?;
            if hs.is_done() {
                break;
            }
            // The relay's round trip is long: time for a key of a later
            // handshake.
            hs.prepare();
            crossbeam_channel::select! {
                recv(inbox) -> bytes => match bytes {
                    Ok(bytes) => {
                        if let Err(error) = hs.push(&bytes) {
                            let refusal = hs.take_output();
                            if !refusal.is_empty() {
                                let _ = conn.send_relay_bytes(refusal);
                            }
                            return Err(Error::Handshake { peer, error });
                        }
                    }
                    Err(_) => return Err(Error::ConnectionClosed { peer }),
                },
                recv(stop) -> _ => return Err(Error::ConnectionClosed { peer }),
                recv(deadline) -> _ => {
                    return Err(Error::Timeout {
                        kind: crate::error::TimeoutKind::Handshake,
                        what: format!("the relayed handshake of {peer}"),
                        after: timeout,
                    })
                }
            }
        }
        let (proof, session, rest) = hs.finish().ok_or_else(|| {
            Error::io("finishing a handshake", std::io::Error::other("incomplete"))
        })?;
        Ok(Greeted {
            proof,
            session,
            rest,
        })
    }

    /// Close every connection (their threads end by themselves).
    pub(crate) fn close_all(&self) {
        for c in self.all() {
            c.close();
        }
    }

    fn close_greeting(&self) {
        for (_, s) in self.greeting.lock().drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stop accepting, close everything, and join every thread.
    pub(crate) fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            self.threads.join_all();
            return;
        }
        if let Some(t) = self.traversal.get() {
            t.stop();
        }
        // Connections first: a peer that finds the node no longer
        // listening finds its connections closed too (the accept thread
        // drops the listener once woken).
        self.close_all();
        // Wake the accept thread, blocked in accept(), by connecting to it.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, self.cfg.connect_timeout);
        // Connections registered meanwhile.
        self.close_all();
        self.close_greeting();
        self.flusher.stop();
        self.threads.join_all();
        // Connections registered while we were joining.
        self.close_all();
    }
}

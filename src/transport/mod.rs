//! The only place that touches `std::net` and spawns connection threads.

mod conn;
mod threads;

pub(crate) use conn::{handshake, Conn, FrameSink, RELAY_TYPE};
pub(crate) use threads::Threads;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::wire::{Decoder, Frame, Hello};
use crossbeam_channel::{unbounded, Sender};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
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
    /// For downcasting to the implementation.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Open connections and the threads that serve them.
pub(crate) struct Transport {
    pub(crate) cfg: Config,
    local: SocketAddr,
    pub(crate) threads: Arc<Threads>,
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
    /// A transport for a node listening on `local`.
    pub(crate) fn new(cfg: Config, local: SocketAddr) -> Arc<Transport> {
        Arc::new(Transport {
            cfg,
            local,
            threads: Arc::new(Threads::default()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            my_id: Mutex::new(None),
            sink: Mutex::new(None),
            stopping: AtomicBool::new(false),
            greeting: Mutex::new(HashMap::new()),
            advertised: Mutex::new(None),
            traversal: OnceLock::new(),
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
                    if self.conns.lock().len() >= self.cfg.max_connections {
                        log::warn!(
                            "refusing {from}: {} connections open already",
                            self.cfg.max_connections
                        );
                        continue;
                    }
                    let me = Arc::clone(&self);
                    let name = format!("p2prs-conn-{}", self.local.port());
                    let stack = Some(self.cfg.connection_stack_size);
                    if let Err(e) = self
                        .threads
                        .spawn(name, stack, move || me.serve_inbound(stream, from))
                    {
                        log::warn!("no thread for the connection from {from}: {e}");
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

    fn serve_inbound(self: Arc<Self>, mut stream: TcpStream, from: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.cfg.write_timeout));
        let key = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            self.greeting.lock().insert(key, clone);
        }
        if self.is_stopping() {
            self.greeting.lock().remove(&key);
            return;
        }
        let greeted = handshake(
            &mut stream,
            &self.hello(),
            self.cfg.handshake_timeout,
            self.cfg.max_frame_size,
        );
        self.greeting.lock().remove(&key);
        let (hello, decoder) = match greeted {
            Ok(x) => x,
            Err(e) => {
                log::warn!("handshake with {from} failed: {e}; closing");
                return;
            }
        };
        self.run(stream, hello, decoder, false);
    }

    /// Register a handshaken connection and run its read loop on this thread.
    fn run(&self, stream: TcpStream, hello: Hello, decoder: Decoder, outbound: bool) {
        let stream = Arc::new(stream);
        let Some(conn) = self.register(&stream, &hello, outbound) else {
            return;
        };
        self.read(conn, stream, decoder);
    }

    fn register(
        &self,
        stream: &Arc<TcpStream>,
        hello: &Hello,
        outbound: bool,
    ) -> Option<Arc<Conn>> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = match Conn::new(id, stream, hello, outbound, self.cfg.max_frame_size) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                log::warn!("setting up a connection: {e}");
                return None;
            }
        };
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
        if let Some(t) = self.traversal.get() {
            t.on_register(&conn);
        }
        Some(conn)
    }

    /// The temporary connections to close so that at most
    /// `max_temporary_connections` stay open: the least recently used first,
    /// never a pinned one or one with requests outstanding.
    fn evictable(&self, conns: &HashMap<u64, Arc<Conn>>) -> Vec<Arc<Conn>> {
        let quiet = std::time::Duration::from_millis(200);
        let mut temps: Vec<(std::time::Instant, &Arc<Conn>)> = conns
            .values()
            .filter_map(|c| c.evictable(quiet).map(|t| (t, c)))
            .collect();
        let cap = self.cfg.max_temporary_connections;
        if temps.len() <= cap {
            return Vec::new();
        }
        temps.sort_by_key(|(t, _)| *t);
        let excess = temps.len() - cap;
        temps
            .into_iter()
            .take(excess)
            .map(|(_, c)| Arc::clone(c))
            .collect()
    }

    fn read(&self, conn: Arc<Conn>, stream: Arc<TcpStream>, decoder: Decoder) {
        self.read_with(conn, stream, decoder, None);
    }

    fn read_with(
        &self,
        conn: Arc<Conn>,
        stream: Arc<TcpStream>,
        decoder: Decoder,
        sink: Option<Arc<dyn FrameSink>>,
    ) {
        let sink = sink.or_else(|| self.sink.lock().as_ref().and_then(|w| w.upgrade()));
        if let Some(sink) = sink {
            conn.read_loop(
                stream,
                decoder,
                &*sink,
                self.cfg.idle_timeout,
                self.cfg.request_timeout,
            );
        } else {
            conn.close();
        }
        self.conns.lock().remove(&conn.id);
    }

    /// An open connection to the node listening on `addr`, if there is one.
    pub(crate) fn find(&self, addr: SocketAddr) -> Option<Arc<Conn>> {
        let g = self.conns.lock();
        let mut best: Option<&Arc<Conn>> = None;
        for c in g.values() {
            if c.is_closed() || c.peer_listen != Some(addr) {
                continue;
            }
            // Prefer a connection this node opened: its idle timer is ours.
            if best.is_none_or(|b| !b.outbound && c.outbound) {
                best = Some(c);
            }
        }
        best.cloned()
    }

    /// Every open connection.
    pub(crate) fn all(&self) -> Vec<Arc<Conn>> {
        self.conns.lock().values().cloned().collect()
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

    /// Open a new connection to `addr`, handshake, and start its thread.
    pub(crate) fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<Conn>> {
        if self.is_stopping() {
            return Err(Error::Shutdown);
        }
        crate::budget::check(|| format!("connecting to {addr}"))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.cfg.connect_timeout)
            .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
        self.adopt_outbound(&mut stream, addr)
    }

    /// Handshake on a freshly connected stream and start serving it.
    pub(crate) fn adopt_outbound(
        self: &Arc<Self>,
        stream: &mut TcpStream,
        addr: SocketAddr,
    ) -> Result<Arc<Conn>> {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.cfg.write_timeout));
        let (hello, decoder) = handshake(
            stream,
            &self.hello(),
            self.cfg.handshake_timeout,
            self.cfg.max_frame_size,
        )?;
        self.adopt_greeted(stream, hello, decoder, addr, None)
    }

    /// Register an outbound stream whose hellos were exchanged already and
    /// start its reader; `sink` overrides where its frames go.
    pub(crate) fn adopt_greeted(
        self: &Arc<Self>,
        stream: &TcpStream,
        mut hello: Hello,
        decoder: Decoder,
        addr: SocketAddr,
        sink: Option<Arc<dyn FrameSink>>,
    ) -> Result<Arc<Conn>> {
        // We reached it at `addr`: that is where it listens, whatever it says.
        hello.listen = Some(addr.to_string());
        // One descriptor per connection, shared by the reader and the writer;
        // the caller's handle is closed when it returns.
        let reader = Arc::new(
            stream
                .try_clone()
                .map_err(|e| Error::io("cloning a socket", e))?,
        );
        let conn = self
            .register(&reader, &hello, true)
            .ok_or(Error::Shutdown)?;
        let me = Arc::clone(self);
        let c2 = Arc::clone(&conn);
        let name = format!("p2prs-conn-{}", self.local.port());
        let spawned = self
            .threads
            .spawn(name, Some(self.cfg.connection_stack_size), move || {
                me.read_with(c2, reader, decoder, sink)
            });
        if let Err(e) = spawned {
            conn.close();
            self.conns.lock().remove(&conn.id);
            return Err(Error::io("spawning a connection thread", e));
        }
        Ok(conn)
    }

    /// Register a connection relayed through `via` to the peer registered
    /// there as session `to`, and start its loop. Frames for it are pushed
    /// into the returned sender.
    pub(crate) fn adopt_relay(
        self: &Arc<Self>,
        via: Arc<Conn>,
        to: u64,
        peer: &Hello,
        remote: SocketAddr,
        outbound: bool,
    ) -> Result<(Arc<Conn>, Sender<Frame>)> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let listen = peer.listen.as_deref().and_then(|s| s.parse().ok());
        let (conn, stop) = Conn::new_relay(
            id,
            via,
            to,
            remote,
            listen,
            peer.id.map(NodeId),
            outbound,
            self.cfg.max_frame_size,
        );
        let conn = Arc::new(conn);
        {
            let mut g = self.conns.lock();
            if self.is_stopping() {
                return Err(Error::Shutdown);
            }
            g.insert(id, Arc::clone(&conn));
        }
        let (tx, rx) = unbounded();
        let me = Arc::clone(self);
        let c2 = Arc::clone(&conn);
        let name = format!("p2prs-relay-{}", self.local.port());
        let spawned = self
            .threads
            .spawn(name, Some(self.cfg.connection_stack_size), move || {
                let sink = me.sink.lock().as_ref().and_then(|w| w.upgrade());
                match sink {
                    Some(sink) => c2.relay_loop(rx, stop, &*sink, me.cfg.idle_timeout),
                    None => c2.close(),
                }
                me.conns.lock().remove(&c2.id);
            });
        if let Err(e) = spawned {
            conn.close();
            self.conns.lock().remove(&id);
            return Err(Error::io("spawning a relay thread", e));
        }
        Ok((conn, tx))
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
        // Wake the accept thread, blocked in accept(), by connecting to it.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, self.cfg.connect_timeout);
        self.close_all();
        self.close_greeting();
        self.threads.join_all();
        // Connections registered while we were joining.
        self.close_all();
    }
}

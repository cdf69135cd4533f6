//! The node: the public handle that owns every thread and socket.

mod chord;
mod connection;
mod events;
mod fair;
mod handler;
mod nat;

#[cfg(feature = "unstable-testing")]
pub(crate) use chord::yield_id as chord_yield_id;
pub use chord::{Peer, Route};

pub use connection::{Connection, Target};
pub use events::{Events, RecvError};
pub use handler::{HandlerResult, Incoming, PeerInfo, MAX_BOUNCES};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::id::PublicKey;
use crate::identity::{Identity, NetworkKey};
use crate::message::{Message, TEXT};
pub(crate) use crate::transport::reply;
use crate::transport::{self, Conn, FrameSink, Transport};
use crate::wire::{Frame, Kind};
use crossbeam_channel::{unbounded, Receiver, Sender};
use handler::HandlerFn;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Message types starting with this prefix belong to p2prs itself.
pub const RESERVED_PREFIX: &str = "p2prs.";

/// Something that happened on the node, for programs that want to watch.
/// See [`Node::events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message arrived whose type has no handler (the built-in `TEXT`
    /// messages among them).
    Message {
        /// Who sent it.
        from: PeerInfo,
        /// The message.
        message: Message,
    },
    /// This node joined a ring and holds `id`.
    Joined {
        /// This node's ID.
        id: NodeId,
    },
    /// This node left its ring.
    Left,
    /// A node joined the ring.
    PeerJoined {
        /// Its ID.
        id: NodeId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// A node left the ring or was found dead.
    PeerLeft {
        /// Its ID.
        id: NodeId,
    },
}

/// Builds and starts a [`Node`].
///
/// ```
/// let node = p2prs::Node::builder().host("127.0.0.1").port(0).start()?;
/// assert_ne!(node.local_addr().port(), 0);
/// node.shutdown();
/// # Ok::<(), p2prs::Error>(())
/// ```
#[must_use = "a builder does nothing until start() is called"]
pub struct NodeBuilder {
    host: String,
    port: u16,
    config: Config,
    handlers: Vec<(String, Handler)>,
    id: Option<NodeId>,
    identity: Option<Ident>,
}

/// Where a node's identity comes from.
enum Ident {
    Given(Identity),
    File(std::path::PathBuf),
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let handlers: Vec<&str> = self.handlers.iter().map(|(t, _)| t.as_str()).collect();
        f.debug_struct("NodeBuilder")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("id", &self.id)
            .field("handlers", &handlers)
            .field("config", &self.config)
            .finish()
    }
}

impl NodeBuilder {
    /// Ask for this node ID when creating or joining a network, instead of
    /// the next free number. Joining fails with [`Error::IdTaken`] if a node
    /// holds it.
    pub fn id(mut self, id: impl Into<NodeId>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The host or IP address to listen on (default `127.0.0.1`; `0.0.0.0` for all interfaces).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The port to listen on (default 0: any free port; see [`Node::local_addr`]).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The node's long-term identity (default: a new random one each start).
    /// A node restarted with the same identity is the same peer.
    ///
    /// ```
    /// let id = p2prs::Identity::generate()?;
    /// let node = p2prs::Node::builder().identity(id.clone()).start()?;
    /// assert_eq!(node.public_key(), id.public_key());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(Ident::Given(identity));
        self
    }

    /// Load the node's identity from `path`, or create it there (mode 0600)
    /// on the first start; see [`Identity::load_or_generate`].
    pub fn identity_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.identity = Some(Ident::File(path.into()));
        self
    }

    /// Join only networks whose members have this key, and admit only such
    /// peers: a peer without it fails the handshake, before any frame is
    /// read or any ring state changes. Without a key the network is open
    /// (anyone may join), but still encrypted. See [`NetworkKey`]. An empty
    /// key is refused: [`start`](Self::start) fails with
    /// [`Error::InvalidArgument`].
    ///
    /// ```
    /// let a = p2prs::Node::builder().network_key("k3y").start()?;
    /// let b = p2prs::Node::builder().network_key("other").start()?;
    /// let err = b.join_network(&[a.local_addr()]).unwrap_err();
    /// assert!(err.is_network_key_mismatch(), "{err}");
    /// assert!(p2prs::Node::builder().network_key("").start().is_err());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn network_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.config.network_key = Some(NetworkKey::new(key));
        self
    }

    /// Turn encryption and authentication off, for benchmarks. Such a node
    /// talks only to other plaintext nodes, and cannot prove or check who
    /// anyone is. Never use it on a network you do not control.
    pub fn insecure_plaintext(mut self) -> Self {
        self.config.insecure_plaintext = true;
        self
    }

    /// Replace the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Change the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Register a handler before the node starts (see [`Node::add_handler`]).
    pub fn handler(
        mut self,
        kind: impl Into<String>,
        handler: impl Fn(&mut Incoming) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.handlers
            .push((kind.into(), Handler::new(handler, Runs::Pool)));
        self
    }

    /// Register an inline handler before the node starts: it runs on the
    /// connection's own thread. It must be quick and must never block nor
    /// make a request; see [`Node::add_inline_handler`] for the contract.
    pub fn inline_handler(
        mut self,
        kind: impl Into<String>,
        handler: impl Fn(&mut Incoming) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.handlers
            .push((kind.into(), Handler::new(handler, Runs::Inline)));
        self
    }

    /// Bind the listening socket and start the node's threads.
    pub fn start(self) -> Result<Node> {
        let cfg = self.config;
        if cfg.max_frame_size < 1024 {
            return Err(Error::InvalidArgument(
                "max_frame_size must be at least 1024 bytes".into(),
            ));
        }
        for (kind, _) in &self.handlers {
            check_kind(kind)?;
        }
        let want = format!("{}:{}", self.host, self.port);
        let addr = *transport::resolve(&want)?
            .first()
            .ok_or_else(|| Error::InvalidAddress(want.clone()))?;
        // With a rendezvous, punches connect from the listening port too.
        let listener = transport::bind_listener(addr, cfg.rendezvous.is_some())?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listening address", e))?;
        let identity = match self.identity {
            Some(Ident::Given(id)) => id,
            Some(Ident::File(path)) => Identity::load_or_generate(path)?,
            None => Identity::generate()?,
        };
        let secure = transport::secure_for(identity, &cfg)?;
        let transport = Transport::new(cfg, local, secure);
        transport.threads.set_grace(transport.cfg.shutdown_grace);
        // A list that allocates as events come, bounded by `emit`: a
        // preallocated queue of `events_capacity` slots would cost every
        // node about 130 KB that most never use.
        let (events_tx, events_rx) = unbounded();
        // Bounded by `handler_queue_len` per connection (see `PeerGate`).
        let jobs = Arc::new(fair::FairQueue::<Job>::new());
        let inner = Arc::new_cyclic(|me| NodeInner {
            transport: Arc::clone(&transport),
            handlers: RwLock::new(self.handlers.into_iter().collect()),
            me: me.clone(),
            events_tx: Mutex::new(Some(events_tx)),
            events_rx,
            events_bytes: Mutex::new(events::QueuedBytes::default()),
            events_dropped: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            jobs: Arc::clone(&jobs),
            pool_started: std::sync::atomic::AtomicUsize::new(0),
            pool_load: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            peers: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            chord: chord::Chord::new(self.id),
        });
        let sink: Arc<dyn FrameSink> = inner.clone();
        transport.set_sink(Arc::downgrade(&sink));
        let node = Node {
            inner: Arc::clone(&inner),
            owner: Some(Arc::new(NodeHandle {
                inner: Arc::clone(&inner),
            })),
        };
        // The handler pool's threads start with the first pooled jobs
        // (`NodeInner::queue_job`): a node that runs no pooled handler has none.
        drop(jobs);
        chord::spawn_stabilizer(&inner, &transport.threads)?;
        transport.start_accept(listener)?;
        crate::rendezvous::attach(&transport)?;
        log::info!("listening on {local}");
        Ok(node)
    }
}

fn check_kind(kind: &str) -> Result<()> {
    if kind.is_empty() {
        return Err(Error::InvalidArgument(
            "a message type cannot be empty".into(),
        ));
    }
    if kind.starts_with(RESERVED_PREFIX) {
        return Err(Error::InvalidArgument(format!(
            "message types starting with {RESERVED_PREFIX:?} are reserved for p2prs"
        )));
    }
    Ok(())
}

/// A program's message may leave: it has a type, and not one of the
/// library's own (checked before any lookup or connection).
pub(crate) fn check_outgoing(msg: &Message) -> Result<()> {
    let kind = msg.kind();
    if kind.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "a message needs a type: it cannot be empty or blank".into(),
        ));
    }
    if kind.starts_with(RESERVED_PREFIX) {
        return Err(Error::InvalidArgument(format!(
            "{kind:?} is a reserved type: message types starting with {RESERVED_PREFIX:?} \
             belong to p2prs"
        )));
    }
    Ok(())
}

struct Job {
    handler: Arc<HandlerFn>,
    /// The handler's count of quick runs.
    quick: Arc<AtomicU32>,
    incoming: Incoming,
    /// The job's place in its connection's queue, given back when the job
    /// is done or dropped.
    _ticket: Ticket,
}

/// What the node keeps per connection against a peer that floods it: the
/// pooled-handler jobs it has queued (at most `Config::handler_queue_len`
/// jobs and `Config::handler_queue_bytes`) and a token bucket for ring control frames (`Config::ring_control_rate`).
pub(crate) struct PeerGate {
    queued: Mutex<Queued>,
    room: Condvar,
    bucket: Mutex<Bucket>,
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A connection's pooled-handler jobs, queued or running, and their bytes.
#[derive(Default)]
struct Queued {
    jobs: usize,
    bytes: usize,
}

/// One queued job of a connection, of so many bytes; dropping it makes
/// room for the next.
struct Ticket(Arc<PeerGate>, usize);

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.0.queued.lock();
        q.jobs = q.jobs.saturating_sub(1);
        q.bytes = q.bytes.saturating_sub(self.1);
        self.0.room.notify_one();
    }
}

/// How often a reader blocked by a full queue or an empty bucket checks
/// whether its connection or the node has closed.
const GATE_TICK: Duration = Duration::from_millis(100);

/// Where a handler runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runs {
    /// On the node's handler threads (the default).
    Pool,
    /// On the thread of the connection the message arrived on.
    Inline,
}

/// A registered handler.
#[derive(Clone)]
struct Handler {
    f: Arc<HandlerFn>,
    runs: Runs,
    /// Its runs in a row that each took under [`QUICK`].
    quick: Arc<AtomicU32>,
}

/// A pooled handler whose last this many runs each took under [`QUICK`]
/// and made no request may run on the connection's thread
/// (`Config::quick_handlers_inline`).
pub(crate) const QUICK_RUNS: u32 = 8;
/// A run of a handler this short counts as quick.
const QUICK: Duration = Duration::from_micros(50);

/// Run `f`, a pooled handler, and count the run: quick if it took under
/// [`QUICK`] and made no request. A run that made one waited on a peer,
/// however fast it was: on the connection's thread, two such handlers
/// asking each other back over one connection would each wait for an
/// answer that only the other's thread could let through.
fn timed_run(quick: &AtomicU32, f: impl FnOnce()) {
    let began = Instant::now();
    let asked = transport::requests_made();
    f();
    let asked = transport::requests_made() != asked;
    note_run(quick, if asked { QUICK } else { began.elapsed() });
}

/// Count a run of a handler that took `took`.
fn note_run(quick: &AtomicU32, took: Duration) {
    if took < QUICK {
        if quick.load(Ordering::Relaxed) < QUICK_RUNS {
            quick.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        quick.store(0, Ordering::Relaxed);
    }
}

impl Handler {
    fn new(
        f: impl Fn(&mut Incoming) -> HandlerResult + Send + Sync + 'static,
        runs: Runs,
    ) -> Handler {
        Handler {
            f: Arc::new(f),
            runs,
            quick: Arc::new(AtomicU32::new(0)),
        }
    }
}

/// Shared state of a node, owned by its threads.
pub(crate) struct NodeInner {
    pub(crate) transport: Arc<Transport>,
    handlers: RwLock<HashMap<String, Handler>>,
    /// This very node, for the non-owning [`Node`]s handed to handlers.
    me: Weak<NodeInner>,
    /// Dropped at shutdown, which ends every `events()` iterator. Bounded
    /// by `Config::events_capacity`; the oldest event makes room.
    events_tx: Mutex<Option<Sender<Event>>>,
    events_rx: Receiver<Event>,
    /// The sizes of the events queued, oldest first, bounded by
    /// `Config::events_max_bytes` (taken under `events_tx`'s lock).
    events_bytes: Mutex<events::QueuedBytes>,
    events_dropped: AtomicU64,
    watching: AtomicBool,
    /// Pooled-handler jobs, served one connection at a time in turn.
    jobs: Arc<fair::FairQueue<Job>>,
    /// Handler pool threads started so far (at most `Config::handler_threads`).
    pool_started: std::sync::atomic::AtomicUsize,
    /// Pooled-handler jobs queued or running.
    pool_load: Arc<std::sync::atomic::AtomicUsize>,
    /// Per open connection: its queue of handler jobs and its bucket of ring
    /// control frames. Removed when the connection closes.
    peers: Mutex<HashMap<u64, Arc<PeerGate>>>,
    stopped: AtomicBool,
    chord: chord::Chord,
}

/// The user-facing owner: when the last one is dropped, the node shuts down.
/// Only user handles hold it; the node's own threads (and the handles they
/// give handlers) hold `NodeInner` alone.
struct NodeHandle {
    inner: Arc<NodeInner>,
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

/// A p2prs node: listens for peers, sends messages and requests, runs handlers.
///
/// `Node` is a cheap handle (`Clone + Send + Sync`): clone it into threads.
/// The node shuts down on [`Node::shutdown`] or when the last owning handle
/// is dropped; either way every socket is closed and every thread joined
/// within [`Config::shutdown_grace`].
///
/// **Owning and non-owning handles.** The handle [`NodeBuilder::start`]
/// returns, and its clones, own the node: while one of them lives, the node
/// runs. The handle a handler gets from [`Incoming::node`], and
/// [`Node::non_owning`] handles, work the same but do not keep the node
/// running: once the last owning handle is dropped, the node stops and they
/// answer [`Error::Shutdown`]. A handler is owned by the node, so a handler
/// that needs the node uses `req.node()`, or captures
/// [`node.non_owning()`](Node::non_owning), never an owning clone: an owning
/// clone inside a handler would keep its own node running until
/// [`Node::shutdown`] is called (a reference cycle).
///
/// ```
/// use p2prs::{Message, Node};
/// let a = Node::builder().start()?;
/// a.add_handler("ADD", |req| {
///     let n: i64 = req.message().data()?;
///     req.respond(Message::new("ADD RESP", n + 1))?;
///     Ok(())
/// })?;
/// let b = Node::builder().start()?;
/// let resp = b.request(a.local_addr(), Message::new("ADD", 17))?;
/// assert_eq!(resp.data::<i64>()?, 18);
/// # Ok::<(), p2prs::Error>(())
/// ```
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
    /// `None` for a non-owning handle.
    owner: Option<Arc<NodeHandle>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("local_addr", &self.local_addr())
            .finish()
    }
}

pub(crate) fn send_message(conn: &Conn, msg: Message) -> Result<()> {
    conn.send_frame(&msg.into_frame(Kind::Message, None))
}

impl Node {
    /// A builder for a node on 127.0.0.1 and any free port.
    ///
    /// ```
    /// let node = p2prs::Node::builder().port(0).start()?;
    /// println!("listening on {}", node.local_addr());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            host: "127.0.0.1".into(),
            port: 0,
            config: Config::default(),
            handlers: Vec::new(),
            id: None,
            identity: None,
        }
    }

    pub(crate) fn inner(&self) -> &Arc<NodeInner> {
        &self.inner
    }

    /// A handle to the same node that does not keep it running: for
    /// handlers and other code the node itself owns (see [`Node`]).
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// let me = a.non_owning();
    /// a.add_handler("WHO", move |req| {
    ///     req.respond(Message::new("WHO", me.local_addr().to_string()))?;
    ///     Ok(())
    /// })?;
    /// let addr = a.local_addr();
    /// drop(a); // the handler's handle does not keep A running
    /// assert!(std::net::TcpStream::connect(addr).is_err());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn non_owning(&self) -> Node {
        Node {
            inner: Arc::clone(&self.inner),
            owner: None,
        }
    }

    /// Whether this handle keeps the node running (see [`Node`]).
    pub fn is_owning(&self) -> bool {
        self.owner.is_some()
    }

    /// This node's public key: its identity, which the ring binds to its ID.
    pub fn public_key(&self) -> PublicKey {
        self.inner().transport.public_key()
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner().transport.local_addr()
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner().transport.cfg
    }

    /// Handle messages of type `kind` with `handler`, replacing any handler
    /// it had (the built-in `TEXT` handler included). Handlers run on the
    /// node's handler threads ([`Config::handler_threads`]), so they may
    /// block, send and make requests themselves.
    ///
    /// A handler that has proved quick (its last 8 runs under 50 µs each,
    /// none of them making a request) runs on the connection's own thread
    /// instead, which saves two thread hand-offs per request; the first
    /// slow run sends it back to the handler threads, and only that
    /// connection waits meanwhile. That thread's stack is
    /// [`Config::connection_stack_size`] (256 KiB); set
    /// [`Config::quick_handlers_inline`] false to keep every pooled handler
    /// on the handler threads.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// a.add_handler("ADD", |req| {
    ///     let n: i64 = req.message().data()?;
    ///     req.respond(Message::new("ADD RESP", n + 1))?;
    ///     Ok(())
    /// })?;
    /// let b = Node::builder().start()?;
    /// assert_eq!(b.request(a.local_addr(), Message::new("ADD", 1))?.data::<i64>()?, 2);
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn add_handler(
        &self,
        kind: impl Into<String>,
        handler: impl Fn(&mut Incoming) -> HandlerResult + Send + Sync + 'static,
    ) -> Result<()> {
        self.insert_handler(kind.into(), Handler::new(handler, Runs::Pool))
    }

    /// Like [`add_handler`](Self::add_handler), but `handler` runs on the
    /// thread of the connection the message arrived on, not on a handler
    /// thread: the hand-off to the pool is saved (about half of a request's
    /// round trip on loopback; see `docs/performance.md`).
    ///
    /// **The contract**: an inline handler must be quick and must never
    /// block. While it runs, its connection reads nothing else: no other
    /// message, request or response from that peer. So it
    /// - must not make a request: one over its own connection could never
    ///   get its answer (its own thread would have to read it) and fails at
    ///   once with [`Error::InvalidArgument`]; one over another connection
    ///   stalls this one until it is answered. Sending or bouncing to a node
    ///   ID makes requests too (a ring lookup), and to an address with no
    ///   open connection first connects: leave those to pooled handlers;
    /// - must not wait on locks, channels, files or sleeps that may take long;
    /// - should only compute, [`respond`](Incoming::respond), and at most
    ///   send a few one-way messages over connections that are open.
    ///
    /// It runs on a connection thread, whose stack is
    /// [`Config::connection_stack_size`] (256 KiB by default). Everything else
    /// is as for [`add_handler`](Self::add_handler): an error or a panic is
    /// caught and answered (`handler_failed`, `handler_panicked`), a request
    /// it does not answer gets `no_response`, and the connection keeps
    /// working. Anything that may block belongs in a pooled handler.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// a.add_inline_handler("ADD", |req| {
    ///     let n: i64 = req.message().data()?;
    ///     req.respond(Message::new("ADD RESP", n + 1))?;
    ///     Ok(())
    /// })?;
    /// let b = Node::builder().start()?;
    /// let resp = b.request(a.local_addr(), Message::new("ADD", 17))?;
    /// assert_eq!(resp.data::<i64>()?, 18);
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn add_inline_handler(
        &self,
        kind: impl Into<String>,
        handler: impl Fn(&mut Incoming) -> HandlerResult + Send + Sync + 'static,
    ) -> Result<()> {
        self.insert_handler(kind.into(), Handler::new(handler, Runs::Inline))
    }

    fn insert_handler(&self, kind: String, handler: Handler) -> Result<()> {
        if self.is_shut_down() {
            return Err(Error::Shutdown);
        }
        check_kind(&kind)?;
        self.inner().handlers.write().insert(kind, handler);
        Ok(())
    }

    /// Remove the handler for `kind`; returns whether there was one.
    ///
    /// ```
    /// let node = p2prs::Node::builder().start()?;
    /// node.add_handler("PING", |_req| Ok(()))?;
    /// assert!(node.remove_handler("PING"));
    /// assert!(!node.remove_handler("PING"));
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn remove_handler(&self, kind: &str) -> bool {
        self.inner().handlers.write().remove(kind).is_some()
    }

    /// Events: messages without a handler (such as `TEXT`), ring changes.
    /// The node keeps them from its start; every [`Events`] handle shares one
    /// queue. Iterating ends when the node shuts down.
    ///
    /// The queue holds at most [`Config::events_capacity`] events and
    /// [`Config::events_max_bytes`] of their messages' data and bodies: when
    /// it is full, the oldest is dropped to make room, and counted in
    /// [`Node::events_dropped`]. A program that reads events slowly, or not at
    /// all, loses the oldest, and the node's memory stays bounded.
    ///
    /// ```
    /// let node = p2prs::Node::builder().start()?;
    /// let events = node.events();
    /// node.shutdown();
    /// assert_eq!(events.iter().count(), 0);
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn events(&self) -> Events {
        self.inner().watching.store(true, Ordering::Release);
        Events::new(self.inner().events_rx.clone())
    }

    /// How many events were dropped, oldest first, because the events queue
    /// was full (see [`Node::events`]).
    pub fn events_dropped(&self) -> u64 {
        self.inner().events_dropped.load(Ordering::Acquire)
    }

    /// Send a one-way message to `target` (an address, a node ID, or a connection).
    ///
    /// ```
    /// use p2prs::{Event, Message, Node};
    /// use std::time::Duration;
    ///
    /// let a = Node::builder().start()?;
    /// let events = a.events();
    /// let b = Node::builder().start()?;
    /// b.send(a.local_addr(), Message::text("Hi!"))?;          // or a NodeId, or a Connection
    /// match events.recv_timeout(Duration::from_secs(10)) {
    ///     Ok(Event::Message { message, .. }) => assert_eq!(message.as_text(), Some("Hi!")),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn send(&self, target: impl Into<Target>, msg: Message) -> Result<()> {
        check_outgoing(&msg)?;
        self.inner().send(target.into(), msg)
    }

    /// Send a one-way message to the node listening at `addr`, over the open
    /// connection to it if there is one, else over a temporary one.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// b.send_to_address(("127.0.0.1", a.local_addr().port()), Message::text("Hi!"))?;
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn send_to_address(&self, addr: impl ToSocketAddrs, msg: Message) -> Result<()> {
        self.send(first_addr(addr)?, msg)
    }

    /// Send a one-way message over `conn`.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// let conn = b.connect(a.local_addr())?;
    /// b.send_to_connection(&conn, Message::text("Hi!"))?;
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn send_to_connection(&self, conn: &Connection, msg: Message) -> Result<()> {
        conn.send(msg)
    }

    /// Send a request and wait for its answer, up to
    /// [`Config::request_timeout`]. A remote failure is
    /// [`Error::Remote`]; a lost connection is [`Error::ConnectionClosed`] at once.
    ///
    /// ```
    /// use p2prs::{Error, Message, Node};
    /// let a = Node::builder()
    ///     .handler("ECHO", |req| {
    ///         let m = req.message().clone();
    ///         req.respond(m)?;
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// let b = Node::builder().start()?;
    /// let answer = b.request(a.local_addr(), Message::new("ECHO", "ping"))?;
    /// assert_eq!(answer.data::<String>()?, "ping");
    /// // A type the other node has no handler for fails at once, saying why.
    /// let err = b.request(a.local_addr(), Message::new("NOPE", ())).unwrap_err();
    /// assert!(matches!(err, Error::Remote { .. }), "{err}");
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn request(&self, target: impl Into<Target>, msg: Message) -> Result<Message> {
        let t = self.inner().transport.cfg.request_timeout;
        self.request_timeout(target, msg, t)
    }

    /// [`request`](Self::request) with its own timeout.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// use std::time::Duration;
    /// let a = Node::builder()
    ///     .handler("ECHO", |req| {
    ///         let m = req.message().clone();
    ///         req.respond(m)?;
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// let b = Node::builder().start()?;
    /// let answer = b.request_timeout(a.local_addr(), Message::new("ECHO", 7), Duration::from_secs(2))?;
    /// assert_eq!(answer.data::<i32>()?, 7);
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn request_timeout(
        &self,
        target: impl Into<Target>,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message> {
        check_outgoing(&msg)?;
        let conn = self.inner().conn_for(target.into())?;
        conn.request(msg, timeout)
    }

    /// Open (or reuse) a constant connection to `target`.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder()
    ///     .handler("ECHO", |req| {
    ///         let m = req.message().clone();
    ///         req.respond(m)?;
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// let b = Node::builder().start()?;
    /// let conn = b.connect(a.local_addr())?;                  // stays open until closed
    /// assert_eq!(conn.peer_addr(), a.local_addr());
    /// for i in 0..3 {
    ///     assert_eq!(conn.request(Message::new("ECHO", i))?.data::<i32>()?, i);
    /// }
    /// conn.close();
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn connect(&self, target: impl Into<Target>) -> Result<Connection> {
        let conn = self.inner().conn_for(target.into())?;
        Ok(Connection::pinned(conn, Arc::downgrade(self.inner())))
    }

    /// Open connections, inbound and outbound (one closed a moment ago,
    /// whose thread is still finishing, is not counted).
    pub fn connection_count(&self) -> usize {
        self.inner().transport.open_count()
    }

    /// Close every connection of this node. Requests in flight fail at once.
    pub fn close_all_connections(&self) {
        self.inner().transport.close_all();
    }

    /// Stop the node: close every socket and join every thread. Idempotent;
    /// dropping the last owning handle does the same.
    ///
    /// It does not leave the network first: to the others the node has
    /// crashed, and for a few seconds (until its neighbours drop it)
    /// requests to its ID fail with a retriable error rather than
    /// [`Error::NoSuchNode`]. Call [`leave`](Self::leave) first for a clean
    /// exit.
    ///
    /// It returns within [`Config::shutdown_grace`] (plus the moments it
    /// takes to close the sockets) even if a handler never returns: threads
    /// still running when the grace is over are left running, detached, and
    /// named in a logged warning. Such a thread finds the node shut down
    /// when it goes on (every operation answers [`Error::Shutdown`]), and
    /// counts against [`max_threads`](crate::max_threads) until it ends.
    /// Called from a handler, it does not wait for that handler itself.
    ///
    /// ```
    /// use p2prs::{Error, Message, Node};
    /// let node = Node::builder().start()?;
    /// node.shutdown();
    /// node.shutdown();                                          // idempotent
    /// assert!(node.is_shut_down());
    /// let err = node.send("127.0.0.1:9", Message::text("too late")).unwrap_err();
    /// assert!(matches!(err, Error::Shutdown));
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn shutdown(&self) {
        self.inner().shutdown();
    }

    /// Whether the node has been shut down.
    pub fn is_shut_down(&self) -> bool {
        self.inner().stopped.load(Ordering::Acquire)
    }

    // ---- The ring -------------------------------------------------------

    /// Start a new network of one, holding the builder's ID (default 0).
    /// A node that has not joined does this by itself when another node
    /// joins through it, so the first node of a network need not call it.
    ///
    /// ```
    /// use p2prs::{Node, NodeId};
    /// let node = Node::builder().id(100).start()?;
    /// assert_eq!(node.create_network()?, NodeId(100));
    /// assert_eq!(node.id(), Some(NodeId(100)));
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn create_network(&self) -> Result<NodeId> {
        chord::create(self.inner())
    }

    /// Join the network of the first reachable address in `addrs`; returns
    /// this node's new ID. Each address is tried in turn; the error says
    /// why each failed.
    ///
    /// ```
    /// let a = p2prs::Node::builder().start()?;
    /// let b = p2prs::Node::builder().start()?;
    /// let id = b.join_network(&[a.local_addr()])?;
    /// assert_eq!(a.id(), Some(p2prs::NodeId(0)));
    /// assert_eq!(id, p2prs::NodeId(1));
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn join_network<A: ToSocketAddrs>(&self, addrs: &[A]) -> Result<NodeId> {
        let mut resolved = Vec::new();
        let mut bad = Vec::new();
        for a in addrs {
            match a.to_socket_addrs() {
                Ok(it) => resolved.extend(it),
                Err(e) => bad.push(e.to_string()),
            }
        }
        if resolved.is_empty() {
            return Err(Error::JoinFailed(if bad.is_empty() {
                "no address given".into()
            } else {
                bad.join("; ")
            }));
        }
        chord::join(self.inner(), &resolved)
    }

    /// This node's ID, once it is part of a network.
    pub fn id(&self) -> Option<NodeId> {
        chord::my_id(self.inner())
    }

    /// Whether this node is part of a network.
    pub fn joined(&self) -> bool {
        self.id().is_some()
    }

    /// Leave the network gracefully: the neighbours are linked to each other
    /// before this node goes, and its ID becomes free.
    ///
    /// ```
    /// use p2prs::{Node, NodeId};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// assert_eq!(b.join_network(&[a.local_addr()])?, NodeId(1));
    /// b.leave()?;
    /// assert_eq!(b.id(), None);                                 // ID 1 is free again
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn leave(&self) -> Result<()> {
        chord::leave(self.inner())
    }

    /// Find the node responsible for `id` (the first node at or after it)
    /// through the ring, in O(log N) hops. `route.owner.id == id` tells
    /// whether a node holds `id` itself.
    ///
    /// ```
    /// use p2prs::{Node, NodeId};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// b.join_network(&[a.local_addr()])?;
    /// let route = b.lookup(NodeId(0))?;
    /// assert_eq!(route.owner.id, NodeId(0));
    /// assert_eq!(route.owner.addr, a.local_addr());
    /// println!("found in {} hops", route.hops);
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn lookup(&self, id: NodeId) -> Result<Route> {
        chord::lookup(self.inner(), id)
    }

    /// Send a one-way message to the node holding `id`.
    /// [`Error::NoSuchNode`] if no node holds it.
    ///
    /// ```
    /// use p2prs::{Error, Event, Message, Node, NodeId};
    /// use std::time::Duration;
    ///
    /// let a = Node::builder().start()?;
    /// let events = a.events();
    /// let b = Node::builder().start()?;
    /// b.join_network(&[a.local_addr()])?;                      // a holds ID 0, b ID 1
    /// b.send_to_id(NodeId(0), Message::text("Hi!"))?;
    /// let (from, message) = loop {
    ///     match events.recv_timeout(Duration::from_secs(10)) {
    ///         Ok(Event::Message { from, message }) => break (from, message),
    ///         Ok(_) => continue, // Joined, PeerJoined, ...
    ///         Err(e) => panic!("no message: {e}"),
    ///     }
    /// };
    /// assert_eq!(message.as_text(), Some("Hi!"));
    /// assert_eq!(from.addr, b.local_addr());
    /// let err = b.send_to_id(NodeId(9), Message::text("anyone?")).unwrap_err();
    /// assert!(matches!(err, Error::NoSuchNode(NodeId(9))), "{err}");
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn send_to_id(&self, id: NodeId, msg: Message) -> Result<()> {
        self.send(id, msg)
    }

    /// Open (or reuse) a constant connection to the node holding `id`.
    ///
    /// ```
    /// use p2prs::{Node, NodeId};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// b.join_network(&[a.local_addr()])?;
    /// let conn = b.connect_to_id(NodeId(0))?;
    /// assert_eq!(conn.peer_addr(), a.local_addr());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn connect_to_id(&self, id: NodeId) -> Result<Connection> {
        self.connect(id)
    }

    /// The routing neighbours: predecessor, successors and fingers.
    ///
    /// ```no_run
    /// let node = p2prs::Node::builder().port(4445).start()?;
    /// node.join_network(&["127.0.0.1:4444"])?;
    /// for peer in node.peer_book() {
    ///     println!("{} at {}", peer.id, peer.addr);
    /// }
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn peer_book(&self) -> Vec<Peer> {
        chord::peer_book(self.inner())
    }

    /// Send `msg` to every peer in the peer book except those in `exclude`;
    /// returns how many it reached.
    ///
    /// ```no_run
    /// use p2prs::{Message, Node, NodeId};
    /// let node = Node::builder().port(4445).start()?;
    /// node.join_network(&["127.0.0.1:4444"])?;
    /// let reached = node.send_to_peer_book(Message::text("hello, neighbours"), &[NodeId(0)])?;
    /// println!("{reached} neighbours reached");
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn send_to_peer_book(&self, msg: Message, exclude: &[NodeId]) -> Result<usize> {
        check_outgoing(&msg)?;
        let mut sent = 0;
        for p in self.peer_book() {
            if exclude.contains(&p.id) {
                continue;
            }
            match self.send(p.addr, msg.clone()) {
                Ok(()) => sent += 1,
                Err(e) => log::warn!("peer book: sending to {} ({}): {e}", p.id, p.addr),
            }
        }
        Ok(sent)
    }

    /// How many nodes the network has, this one included (0 before joining).
    ///
    /// ```no_run
    /// let node = p2prs::Node::builder().port(4445).start()?;
    /// assert_eq!(node.network_size(), 0);                       // not in a network yet
    /// node.join_network(&["127.0.0.1:4444"])?;
    /// println!("{} nodes", node.network_size());                // counted by the ring, soon exact
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn network_size(&self) -> usize {
        chord::network_size(self.inner())
    }

    /// How many stabilizer rounds this node has run in its current ring,
    /// periodic ones and those peers asked for (0 before joining). A
    /// diagnostic: a peer cannot make it grow faster than about five rounds
    /// per [`Config::stabilize_interval`] (see `docs/robustness.md`).
    pub fn stabilizer_rounds(&self) -> u64 {
        chord::stabilizer_rounds(self.inner())
    }

    /// Deliver `msg` to every other node of the network once, over a
    /// spanning tree of the finger tables; returns how many nodes this node
    /// sent it to directly.
    ///
    /// ```no_run
    /// use p2prs::{Message, Node};
    /// let node = Node::builder().port(4445).start()?;
    /// node.join_network(&["127.0.0.1:4444"])?;
    /// let direct = node.broadcast(Message::text("hello, everyone"))?;
    /// println!("sent to {direct} nodes myself; they pass it on to the rest");
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn broadcast(&self, msg: Message) -> Result<usize> {
        chord::broadcast(self.inner(), msg)
    }
}

fn first_addr(addr: impl ToSocketAddrs) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| Error::InvalidAddress(e.to_string()))?
        .next()
        .ok_or_else(|| Error::InvalidAddress("the address resolves to nothing".into()))
}

impl NodeInner {
    /// The sizes of the node's tables that grow with its peers: the
    /// transport's, the ring's, the handler gates and queues (for the
    /// tests: none may keep what a gone peer left).
    #[cfg(feature = "unstable-testing")]
    pub(crate) fn table_sizes(&self) -> Vec<(&'static str, usize)> {
        let mut t = self.transport.table_sizes();
        t.extend(self.chord.table_sizes());
        t.push(("handler gates", self.peers.lock().len()));
        t.push(("connections with handler jobs", self.jobs.connections()));
        t.push(("events", self.events_rx.len()));
        t
    }

    /// A non-owning handle to this node, for a handler.
    fn node(&self) -> Option<Node> {
        self.me.upgrade().map(|inner| Node { inner, owner: None })
    }

    /// This node's key as the ring binds it (none in plaintext mode).
    pub(crate) fn key(&self) -> Option<PublicKey> {
        (!self.transport.cfg.insecure_plaintext).then(|| self.transport.public_key())
    }

    pub(crate) fn emit(&self, e: Event) {
        // Held throughout, so that emitters take turns making room.
        let g = self.events_tx.lock();
        let Some(tx) = g.as_ref() else { return };
        let capacity = self.transport.cfg.events_capacity.max(1);
        let max_bytes = self.transport.cfg.events_max_bytes;
        let mut bytes = self.events_bytes.lock();
        let size = events::size_of(&e);
        loop {
            // Readers took the oldest events since: forget their sizes.
            bytes.taken_down_to(tx.len());
            let full = tx.len() >= capacity || bytes.total() + size > max_bytes;
            if tx.is_empty() || !full {
                break;
            }
            if self.events_rx.try_recv().is_ok() {
                bytes.pop_oldest();
                let dropped = self.events_dropped.fetch_add(1, Ordering::AcqRel);
                // A program that never asked for events is not
                // told that it loses them.
                let watching = self.watching.load(Ordering::Acquire);
                if watching && (dropped.is_power_of_two() || dropped == 0) {
                    log::warn!(
                        "the events queue of {} is full (at most {capacity} events, {} KiB): \
                         dropping the oldest ({} so far)",
                        self.transport.local_addr(),
                        max_bytes / 1024,
                        dropped + 1
                    );
                }
            }
        }
        // Fails only once every receiver is gone: nobody is told then.
        if tx.send(e).is_ok() {
            bytes.push(size);
        }
    }

    /// The gate of `conn`, made on first use.
    fn gate(&self, conn: &Conn) -> Arc<PeerGate> {
        let rate = f64::from(self.transport.cfg.ring_control_rate);
        Arc::clone(self.peers.lock().entry(conn.id).or_insert_with(|| {
            Arc::new(PeerGate {
                queued: Mutex::new(Queued::default()),
                room: Condvar::new(),
                bucket: Mutex::new(Bucket {
                    tokens: rate,
                    last: Instant::now(),
                }),
            })
        }))
    }

    /// Whether reading `conn` should stop waiting: it or the node closed.
    fn gave_up(&self, conn: &Conn) -> bool {
        conn.is_closed() || self.stopped.load(Ordering::Acquire)
    }

    /// Take a place in `conn`'s handler queue for a job of `size` bytes,
    /// waiting (on `conn`'s reader thread: that is the backpressure) while
    /// it is full. `None` if the connection or the node closed meanwhile.
    fn queue_ticket(&self, conn: &Conn, size: usize) -> Option<Ticket> {
        let gate = self.gate(conn);
        let limit = self.transport.cfg.handler_queue_len.max(1);
        let max_bytes = self.transport.cfg.handler_queue_bytes;
        let mut q = gate.queued.lock();
        let mut warned = false;
        while q.jobs >= limit || (q.jobs > 0 && q.bytes.saturating_add(size) > max_bytes) {
            if self.gave_up(conn) {
                return None;
            }
            if !warned {
                log::debug!(
                    "{} has {} messages ({} KiB) waiting for handlers: reading it no \
                     further for now",
                    conn.peer_addr(),
                    q.jobs,
                    q.bytes / 1024
                );
                warned = true;
            }
            gate.room.wait_for(&mut q, GATE_TICK);
        }
        q.jobs += 1;
        q.bytes = q.bytes.saturating_add(size);
        drop(q);
        Some(Ticket(gate, size))
    }

    /// Take a token for one ring control frame from `conn`, waiting (on its
    /// reader thread) for one if the peer has spent them. Returns false if
    /// the connection or the node closed meanwhile.
    pub(crate) fn throttle(&self, conn: &Conn) -> bool {
        let rate = f64::from(self.transport.cfg.ring_control_rate);
        if rate <= 0.0 {
            return true;
        }
        let gate = self.gate(conn);
        loop {
            let wait = {
                let mut b = gate.bucket.lock();
                let now = Instant::now();
                let earned = now.saturating_duration_since(b.last).as_secs_f64() * rate;
                b.tokens = (b.tokens + earned).min(rate);
                b.last = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    return true;
                }
                Duration::from_secs_f64((1.0 - b.tokens) / rate)
            };
            if self.gave_up(conn) {
                return false;
            }
            // A rate limit, not a synchronisation: the reader rests until
            // the peer has earned its next frame.
            std::thread::sleep(wait.min(GATE_TICK));
        }
    }

    /// The connection a target resolves to, opening one if needed.
    pub(crate) fn conn_for(&self, target: Target) -> Result<Arc<Conn>> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        match target {
            Target::Conn(c) => {
                let conn = c.inner();
                if !c.is_open() {
                    Err(conn.closed_error())
                } else {
                    Ok(Arc::clone(conn))
                }
            }
            Target::Socket(a) => self.transport.connect(a),
            Target::Addr(s) => {
                let addrs = transport::resolve(&s)?;
                let mut last = None;
                for a in addrs {
                    match self.transport.connect(a) {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or(Error::InvalidAddress(s)))
            }
            Target::Id(id) => chord::conn_for_id(self, id),
        }
    }

    fn send(&self, target: Target, msg: Message) -> Result<()> {
        let reusable = !matches!(target, Target::Conn(_));
        let conn = self.conn_for(target)?;
        match send_message(&conn, msg.clone()) {
            // An idle connection the peer was closing: one fresh try.
            Err(Error::ConnectionClosed { .. }) if reusable => {
                let fresh = self.transport.dial(conn.peer_addr())?;
                send_message(&fresh, msg)
            }
            other => other,
        }
    }

    fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        log::debug!("shutting down {}", self.transport.local_addr());
        // Handler threads end when the job queue closes.
        self.jobs.close();
        // Readers waiting for room in a handler queue give up.
        for gate in self.peers.lock().values() {
            gate.room.notify_all();
        }
        self.chord.stop();
        self.transport.shutdown();
        self.events_tx.lock().take();
    }

    fn deliver_default(&self, conn: &Arc<Conn>, frame: Frame, from: Option<PeerInfo>) {
        let from = from.unwrap_or_else(|| PeerInfo::of(conn));
        let message = Message::from_frame(frame);
        if message.kind() == TEXT {
            log::info!("({from}) -> {:?}", message.as_text().unwrap_or_default());
        } else if !self.watching.load(Ordering::Acquire) {
            log::warn!(
                "no handler for message type {:?} from {from}; dropped",
                message.kind()
            );
        }
        self.emit(Event::Message { from, message });
    }
}

impl NodeInner {
    /// Queue a pooled-handler job of connection `key`. The pool grows with
    /// its jobs: a thread is started when every running one has a job
    /// (queued or running), up to `Config::handler_threads`, so a node that
    /// runs no pooled handler spends no thread on it. If the node has no
    /// handler thread at all and none can be started (the thread budget is
    /// spent), the job runs here, on the connection's thread, rather than
    /// wait for a thread that may never come. Refused (and dropped) once the
    /// node shuts down.
    fn queue_job(&self, key: u64, job: Job) {
        let max = self.transport.cfg.handler_threads.max(1);
        let load = self.pool_load.fetch_add(1, Ordering::AcqRel);
        let grow = self
            .pool_started
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max && load >= n).then_some(n + 1)
            });
        if let Ok(i) = grow {
            if let Err(e) = self.start_handler_thread(i) {
                let left = self.pool_started.fetch_sub(1, Ordering::AcqRel) - 1;
                log::warn!("no handler thread: {e}");
                if left == 0 && !self.stopped.load(Ordering::Acquire) {
                    job.incoming.run(&*job.handler);
                    self.pool_load.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
        if self.jobs.push(key, job).is_err() {
            // Refused (and dropped): the node shuts down.
            self.pool_load.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Start handler pool thread number `i`.
    fn start_handler_thread(&self, i: usize) -> std::io::Result<()> {
        let queue = Arc::clone(&self.jobs);
        let load = Arc::clone(&self.pool_load);
        let name = format!("p2prs-handler-{}-{i}", self.transport.local_addr().port());
        self.transport.threads.spawn(name, None, move || {
            while let Some(job) = queue.pop() {
                timed_run(&job.quick, || job.incoming.run(&*job.handler));
                load.fetch_sub(1, Ordering::AcqRel);
            }
        })
    }

    /// Whether a pooled handler may run on `conn`'s thread now: it has
    /// proved quick, and `conn` has no job waiting for or running on the
    /// handler threads (its messages stay in order).
    fn may_run_here(&self, handler: &Handler, conn: &Conn) -> bool {
        self.transport.cfg.quick_handlers_inline
            && handler.quick.load(Ordering::Relaxed) >= QUICK_RUNS
            && self
                .peers
                .lock()
                .get(&conn.id)
                .is_none_or(|gate| gate.queued.lock().jobs == 0)
    }

    /// Hand a user message or request to its handler, or to the default
    /// delivery. `from` overrides the sender (for broadcasts: the origin).
    pub(crate) fn dispatch_user(&self, conn: &Arc<Conn>, frame: Frame, from: Option<PeerInfo>) {
        let handler = self.handlers.read().get(&frame.msg_type).cloned();
        match handler {
            Some(handler) => {
                let Some(node) = self.node() else { return };
                let incoming = Incoming::new(node, Arc::clone(conn), frame, from);
                match handler.runs {
                    Runs::Inline => incoming.run(&*handler.f),
                    Runs::Pool if self.may_run_here(&handler, conn) => {
                        timed_run(&handler.quick, || {
                            conn.run_lent(|| incoming.run(&*handler.f))
                        });
                    }
                    Runs::Pool => {
                        // Waits while this connection's queue is full.
                        let size = events::message_size(incoming.message());
                        let Some(ticket) = self.queue_ticket(conn, size) else {
                            return;
                        };
                        let job = Job {
                            handler: handler.f,
                            quick: handler.quick,
                            incoming,
                            _ticket: ticket,
                        };
                        self.queue_job(conn.id, job);
                    }
                }
            }
            None if frame.kind == Kind::Request => {
                let why = format!(
                    "no handler for message type {:?} on {}",
                    frame.msg_type,
                    self.transport.local_addr()
                );
                log::warn!("request from {}: {why}", conn.peer_addr());
                reply(
                    conn,
                    &frame,
                    Err(Error::Remote {
                        code: "no_handler".into(),
                        message: why,
                    }),
                );
            }
            None => self.deliver_default(conn, frame, from),
        }
    }
}

impl FrameSink for NodeInner {
    fn on_frame(&self, conn: &Arc<Conn>, frame: Frame) {
        if frame.msg_type.starts_with(RESERVED_PREFIX) {
            chord::handle(self, conn, frame);
        } else {
            self.dispatch_user(conn, frame, None);
        }
    }

    fn on_close(&self, conn: &Arc<Conn>) {
        self.peers.lock().remove(&conn.id);
        log::debug!("connection to {} closed", conn.peer_addr());
    }

    fn on_open(&self, conn: &Arc<Conn>) {
        chord::vet_hello_id(self, conn);
    }
}

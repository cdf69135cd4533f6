//! Tunable settings: intervals, timeouts, sizes.

use crate::identity::NetworkKey;
use std::time::Duration;

/// The default of [`Config::shutdown_grace`].
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Settings of a node. Every field has a sensible default; change what you need.
///
/// ```
/// use std::time::Duration;
/// let cfg = p2prs::Config {
///     request_timeout: Duration::from_secs(5),
///     ..Default::default()
/// };
/// assert_eq!(cfg.max_frame_size, 16 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest frame accepted or sent, header and body together (default 16 MiB).
    pub max_frame_size: usize,
    /// Largest JSON header of a frame accepted (default 64 KiB). Large data
    /// belongs in the byte body; a frame announcing a larger header is
    /// refused from its 8-byte prefix, before its header is read, and the
    /// connection closed. Parsing a header costs many times its size, so
    /// this keeps one frame from costing many times `max_frame_size`.
    pub max_header_size: usize,
    /// How long a new connection may take for its whole handshake (default
    /// 3 s). An inbound connection still in its handshake then is closed.
    pub handshake_timeout: Duration,
    /// Most inbound connections in their handshake at once (default 64).
    /// Each holds a thread; past the limit, new connections are accepted
    /// and closed at once (a warning, at most one a second, counts them).
    /// 0 counts as 1. See `docs/robustness.md`.
    pub max_handshaking: usize,
    /// Most inbound connections from one IP address, in their handshake
    /// or open (default 32; 0: unlimited). Further ones from that address
    /// are closed at once. Loopback addresses are exempt unless
    /// [`limit_loopback`](Config::limit_loopback) is set (a ring of many
    /// nodes in one process connects from 127.0.0.1 only).
    pub max_inbound_per_ip: usize,
    /// Apply [`max_inbound_per_ip`](Config::max_inbound_per_ip) to loopback
    /// addresses too (default false).
    pub limit_loopback: bool,
    /// Once a frame has begun, at least this many bytes a second of it must
    /// keep arriving, measured over every [`frame_grace`](Config::frame_grace)
    /// (default 4 KiB/s; 0: no deadline). A connection whose frame is
    /// slower is closed with a warning. Time the node itself spends not
    /// reading (its handler queue or memory budget is full) does not count.
    pub min_frame_rate: u64,
    /// The window over which [`min_frame_rate`](Config::min_frame_rate) is
    /// measured (default 5 s): a frame under way must bring
    /// `min_frame_rate × frame_grace` bytes in each such window.
    pub frame_grace: Duration,
    /// Bytes of partially received frames the node may hold over all its
    /// connections (default 256 MiB). Each connection may hold its first
    /// 64 KiB outside the budget, so that small frames never wait for it.
    /// When the budget is spent, a connection whose frame needs more is not
    /// read (its sender is slowed through its TCP window) until bytes are
    /// freed; after [`frame_grace`](Config::frame_grace) of that, the
    /// connection holding the most is closed with a warning. See
    /// `docs/robustness.md`.
    pub memory_budget: usize,
    /// How long a write made on a connection's behalf by another thread (an
    /// answer from a handler, an answer forwarded from another peer, a
    /// failure notice, a relayed frame) may make no progress before that
    /// connection is closed as a peer that does not read (default 500 ms).
    /// Such writes of frames up to 128 KiB never block: what the socket does
    /// not take waits in the connection's backlog (at most 256 KiB), which
    /// must move within this time. Larger frames are written in place and
    /// must be done within this plus their size at 1 MiB/s. See
    /// `docs/robustness.md`. A node's own sends and requests use
    /// [`write_timeout`](Config::write_timeout).
    pub slow_peer_timeout: Duration,
    /// How long a TCP connect may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long one write may block before the connection is given up (default 10 s).
    pub write_timeout: Duration,
    /// How long [`Node::request`](crate::Node::request) waits for an answer (default 10 s).
    pub request_timeout: Duration,
    /// A temporary connection this node opened is closed after this long
    /// unused (default 30 s). An inbound connection is closed after twice
    /// this long unused, unless the ring uses it (pinned) or a request on it
    /// is outstanding; connections this node keeps (ring neighbours,
    /// [`Connection`](crate::Connection)s) send a keepalive when they have
    /// been quiet for a third of it, so that their peer keeps them open.
    pub idle_timeout: Duration,
    /// A connection that has carried only the ring's own frames (lookups,
    /// finger refreshes, the ring count, broadcasts of the size) is closed
    /// after this long unused (default 2 s; inbound: twice it), unless the
    /// ring keeps it (its successor and predecessor). One that has carried
    /// a user message or request either way keeps
    /// [`idle_timeout`](Config::idle_timeout). Taken as at most
    /// `idle_timeout`. In a large ring this is what keeps a node's
    /// connections (a thread at each end) few: see `docs/performance.md`.
    pub ring_idle_timeout: Duration,
    /// Most threads that run user handlers (default 2). They start with
    /// the pooled jobs, one more whenever every running one has a job: a node
    /// that never runs a pooled handler has none. When a node has none and
    /// the thread budget allows none, a pooled handler runs on its
    /// connection's thread. Handlers run off the connection threads (except
    /// quick ones: see `quick_handlers_inline`), so a handler may itself
    /// make requests. Inline
    /// handlers ([`Node::add_inline_handler`](crate::Node::add_inline_handler))
    /// do not use these threads.
    pub handler_threads: usize,
    /// Stack size of each connection thread (default 256 KiB). Connection
    /// threads decode frames, do the ring's bookkeeping and run inline
    /// handlers ([`Node::add_inline_handler`](crate::Node::add_inline_handler)).
    pub connection_stack_size: usize,
    /// Let a pooled handler that has proved quick run on the thread of the
    /// connection its message arrived on (default true), which saves the
    /// hand-off to a handler thread and back: a handler whose last 8 runs
    /// each took under 50 µs and made no request, for a connection with no
    /// job waiting for the handler threads. The first run that takes
    /// longer, or makes a request, sends its next calls back to the
    /// handler threads. Meanwhile requesters on that connection read their
    /// own answers, and the handler may make requests over it (one that
    /// cannot be answered while the handler holds the connection's thread,
    /// because 64 other frames or a large one wait for that thread, fails
    /// at once with [`Error::ResourceExhausted`](crate::Error::ResourceExhausted)).
    /// Set false for handlers that need more stack than
    /// `connection_stack_size`, or that must never run on a connection
    /// thread.
    pub quick_handlers_inline: bool,
    /// Period of the ring stabilizer (default 1 s).
    pub stabilize_interval: Duration,
    /// How long one request of the ring's own protocol (a lookup hop, a
    /// stabilize exchange) may take before the peer counts as failed (default 3 s).
    pub ring_timeout: Duration,
    /// Finger lookups per stabilizer round (default 2; fingers whose owner is
    /// known from the successor list are refreshed for free).
    pub fingers_per_round: usize,
    /// Most stabilizer rounds between finger refreshes in a settled ring
    /// (default 32; 1: every round). While the node's predecessor,
    /// successors and fingers change, fingers are refreshed every round
    /// ([`fingers_per_round`](Config::fingers_per_round) lookups); the
    /// longer they stay the same, the rarer the refresh, up to one round in
    /// this many, so that an idle ring spends few lookups and connections on
    /// fingers that do not move. News of a join or a leave, or any change
    /// seen, refreshes every round again.
    pub max_finger_period: u64,
    /// Length of the successor list, about log2 of the expected ring size (default 8).
    pub successor_list_len: usize,
    /// Most connections open at once (default 1024). At the limit, a new
    /// inbound connection replaces the inbound connection quiet the longest
    /// (not pinned, nothing outstanding, quiet for at least a second), or is
    /// refused if there is none: silent peers cannot lock others out.
    pub max_connections: usize,
    /// Most temporary connections this node keeps open that have carried
    /// user messages or requests (default 16): when it opens one more, and
    /// at every stabilizer round, it closes the least recently used ones
    /// that are quiet. Connections to ring neighbours and constant
    /// connections do not count.
    pub max_temporary_connections: usize,
    /// Most temporary connections this node keeps open that have carried
    /// only the ring's own requests (lookup hops, finger refreshes, the
    /// count; default 4), closed least recently used first as for
    /// [`max_temporary_connections`](Config::max_temporary_connections).
    /// Each costs a thread at both ends: in a ring of many nodes in one
    /// process this bounds the threads the ring's own traffic holds.
    pub max_ring_connections: usize,
    /// The rendezvous server to keep a link to, as `host:port` (default none;
    /// set it with [`NodeBuilder::rendezvous`](crate::NodeBuilder::rendezvous)).
    /// See `docs/nat-traversal.md`.
    pub rendezvous: Option<String>,
    /// How peers registered at the rendezvous are reached (default
    /// [`Traversal::Auto`]: direct, else punched, else relayed).
    pub traversal: Traversal,
    /// How long a hole punch keeps trying before the relay is used (default 10 s).
    pub punch_timeout: Duration,
    /// How long a connection waits for a hole punch before it uses the
    /// rendezvous's relay (default 1 s). The punch goes on meanwhile, up to
    /// `punch_timeout`, and a punched connection replaces the relayed one
    /// for new traffic as soon as it opens.
    pub relay_after: Duration,
    /// How often a node refreshes its registration at the rendezvous (default
    /// 10 s); a rendezvous forgets a node silent for three times this.
    pub rendezvous_keepalive: Duration,
    /// For a rendezvous: bytes per second its relay forwards in all (default
    /// 8 MiB/s; 0: unlimited).
    pub relay_rate_limit: u64,
    /// For a rendezvous: bytes per second one node may send through its
    /// relay (default 1 MiB/s; 0: unlimited). The sender pays.
    pub relay_peer_cap: u64,
    /// The secret of a closed network (default none: an open network, still
    /// encrypted). Peers without the same key fail the handshake before any
    /// frame is read. Set it with
    /// [`NodeBuilder::network_key`](crate::NodeBuilder::network_key).
    pub network_key: Option<NetworkKey>,
    /// The cipher of every connection (default [`Cipher::AesGcm`]); all
    /// nodes of a network must use the same.
    pub cipher: Cipher,
    /// Turn encryption and authentication off (default false). For
    /// benchmarks only: a plaintext node cannot talk to an encrypted one, and
    /// its peers' identities are not proven. See
    /// [`NodeBuilder::insecure_plaintext`](crate::NodeBuilder::insecure_plaintext).
    pub insecure_plaintext: bool,
    /// How long [`Node::shutdown`](crate::Node::shutdown) waits for the
    /// node's threads to end (default 2 s). A thread still running then (a
    /// handler that never returns, say) is left running, detached, and named
    /// in a warning; `shutdown()` returns anyway. See `docs/robustness.md`.
    /// The process-wide cap on threads is not a `Config` field: see
    /// [`set_max_threads`](crate::set_max_threads).
    pub shutdown_grace: Duration,
    /// Most messages of one connection queued for, or running in, a pooled
    /// handler (default 64). When a connection has this many, the node stops
    /// reading it until one is done: a peer that floods is slowed through
    /// its own TCP window, and other peers are not held up behind it.
    /// 0 counts as 1. See `docs/robustness.md`.
    pub handler_queue_len: usize,
    /// Most bytes of message data and bodies one connection may have queued
    /// for, or running in, pooled handlers (default 16 MiB). Past it the
    /// node stops reading that connection until a job is done, as past
    /// [`handler_queue_len`](Config::handler_queue_len); a connection with
    /// nothing queued may always queue one message, whatever its size. So a
    /// peer's large messages held up by slow handlers cost at most this much
    /// per connection, not `handler_queue_len` × `max_frame_size`.
    pub handler_queue_bytes: usize,
    /// Most [`Event`](crate::Event)s kept for [`Node::events`](crate::Node::events)
    /// (default 1024). When the queue is full, the oldest event is dropped
    /// and counted in [`Node::events_dropped`](crate::Node::events_dropped):
    /// a program that never reads its events does not grow the node's memory.
    /// 0 counts as 1.
    pub events_capacity: usize,
    /// Most bytes of message data and bodies kept in the events queue
    /// (default 64 MiB). When one more event would exceed it, the oldest
    /// events are dropped and counted as past
    /// [`events_capacity`](Config::events_capacity) (the newest is always
    /// kept), so peers sending large messages that no handler takes cannot
    /// make the node hold `events_capacity` × `max_frame_size`.
    pub events_max_bytes: usize,
    /// Ring control frames (`p2prs.stabilize_now`, `p2prs.recount` and
    /// broadcasts) one connection may deliver per second (default 200, with
    /// bursts of as many; 0: unlimited). Past it, the node reads that
    /// connection no faster: the sender is slowed through its TCP window.
    pub ring_control_rate: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 16 * 1024 * 1024,
            max_header_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(3),
            max_handshaking: 64,
            max_inbound_per_ip: 32,
            limit_loopback: false,
            min_frame_rate: 4 * 1024,
            frame_grace: Duration::from_secs(5),
            memory_budget: 256 * 1024 * 1024,
            slow_peer_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            ring_idle_timeout: Duration::from_secs(2),
            handler_threads: 2,
            connection_stack_size: 256 * 1024,
            quick_handlers_inline: true,
            stabilize_interval: Duration::from_secs(1),
            ring_timeout: Duration::from_secs(3),
            fingers_per_round: 2,
            max_finger_period: 32,
            successor_list_len: 8,
            max_connections: 1024,
            max_temporary_connections: 16,
            max_ring_connections: 4,
            rendezvous: None,
            traversal: Traversal::Auto,
            punch_timeout: Duration::from_secs(10),
            relay_after: Duration::from_secs(1),
            rendezvous_keepalive: Duration::from_secs(10),
            relay_rate_limit: 8 * 1024 * 1024,
            relay_peer_cap: 1024 * 1024,
            network_key: None,
            cipher: Cipher::default(),
            insecure_plaintext: false,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            handler_queue_len: 64,
            handler_queue_bytes: 16 * 1024 * 1024,
            events_capacity: 1024,
            events_max_bytes: 64 * 1024 * 1024,
            ring_control_rate: 200,
        }
    }
}

/// How a node with a rendezvous reaches peers that registered there too.
/// Set in [`Config::traversal`](crate::Config::traversal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Traversal {
    /// Connect directly to a peer that registered a public endpoint equal to
    /// its private one; punch to a peer behind NAT; relay when punching
    /// fails. The default.
    #[default]
    Auto,
    /// Punch to every registered peer, even one that looks public; relay
    /// when punching fails.
    Punch,
    /// Relay every connection to a registered peer (for networks known to
    /// defeat punching, and for tests).
    Relay,
}

/// The AEAD cipher of the Noise handshake and records. Both ends must use
/// the same one; a mismatch fails the handshake with a clear error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Cipher {
    /// ChaCha20-Poly1305 (`Noise_XX_25519_ChaChaPoly_BLAKE2s`).
    ChaChaPoly,
    /// AES-256-GCM (`Noise_XX_25519_AESGCM_BLAKE2s`), the default: faster
    /// on processors with AES instructions (see `docs/performance.md`).
    #[default]
    AesGcm,
}

impl Cipher {
    /// The cipher's name in a Noise protocol name.
    pub(crate) fn noise_name(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "ChaChaPoly",
            Cipher::AesGcm => "AESGCM",
        }
    }
}

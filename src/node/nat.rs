//! The node's side of NAT traversal: its builder setting, and what it tells
//! of its paths and its rendezvous. The traversal itself lives in
//! `crate::rendezvous` and `crate::punch`; the node reaches it only through
//! the transport's `NatHook`.

use super::{Connection, Node, NodeBuilder, Target};
use crate::transport::{self, NatStatus, Path};

impl NodeBuilder {
    /// Keep a constant link to the rendezvous server at `addr` (`host:port`):
    /// register there, learn this node's public endpoint, and reach peers
    /// behind NAT by hole punching, or through the rendezvous's relay when
    /// punching fails. The node's listening socket then uses SO_REUSEPORT.
    ///
    /// ```
    /// let rv = p2prs::Rendezvous::start("127.0.0.1", 0)?;
    /// let node = p2prs::Node::builder()
    ///     .rendezvous(rv.local_addr().to_string())
    ///     .start()?;
    /// assert!(node.nat_status().is_some());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn rendezvous(self, addr: impl Into<String>) -> Self {
        let addr = addr.into();
        self.configure(move |c| c.rendezvous = Some(addr))
    }
}

impl Node {
    /// How frames to `target` travel now, if a connection to it is open:
    /// [`Path::Direct`], [`Path::Punched`] or [`Path::Relayed`]. Opens
    /// nothing. With several connections to one node, the best path counts.
    ///
    /// ```
    /// use p2prs::{Node, Path};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// assert_eq!(b.path(a.local_addr()), None);                 // nothing open yet
    /// let _conn = b.connect(a.local_addr())?;
    /// assert_eq!(b.path(a.local_addr()), Some(Path::Direct));
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn path(&self, target: impl Into<Target>) -> Option<Path> {
        let t = &self.inner().transport;
        let rank = |p: Path| match p {
            Path::Relayed => 0,
            _ => 1,
        };
        match target.into() {
            Target::Id(id) => t
                .all()
                .into_iter()
                .filter(|c| !c.is_closed() && c.peer_id() == Some(id))
                .map(|c| c.path())
                .max_by_key(|p| rank(*p)),
            Target::Socket(a) => t.find(a).map(|c| c.path()),
            Target::Addr(s) => transport::resolve(&s)
                .ok()?
                .into_iter()
                .find_map(|a| t.find(a))
                .map(|c| c.path()),
            Target::Conn(c) => Some(c.path()).filter(|_| c.is_open()),
        }
    }

    /// Close every open connection to `target` (a node ID, an address, or a
    /// connection's peer), even those held constant by [`Node::connect`] or
    /// by the ring; returns how many were closed. Requests in flight on them
    /// fail at once. The next send to the peer opens a new connection (a new
    /// punch, for a peer behind NAT).
    ///
    /// ```
    /// use p2prs::Node;
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// let conn = b.connect(a.local_addr())?;
    /// assert_eq!(b.disconnect(a.local_addr()), 1);
    /// assert!(!conn.is_open());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn disconnect(&self, target: impl Into<Target>) -> usize {
        let t = &self.inner().transport;
        let target = target.into();
        let addrs: Vec<std::net::SocketAddr> = match &target {
            Target::Socket(a) => vec![*a],
            Target::Addr(s) => transport::resolve(s).unwrap_or_default(),
            Target::Conn(c) => vec![c.peer_addr()],
            Target::Id(_) => Vec::new(),
        };
        let id = match &target {
            Target::Id(id) => Some(*id),
            Target::Conn(c) => c.peer_id(),
            _ => None,
        };
        let mut closed = 0;
        for c in t.all() {
            let hit = id.is_some_and(|id| c.peer_id() == Some(id))
                || c.peer_listen.is_some_and(|a| addrs.contains(&a));
            if hit && !c.is_closed() {
                c.close();
                closed += 1;
            }
        }
        closed
    }

    /// What this node knows of its rendezvous: whether the link is up, its
    /// public and private endpoints, punch and relay counters. `None` for a
    /// node without a rendezvous.
    ///
    /// ```
    /// let node = p2prs::Node::builder().start()?;
    /// assert_eq!(node.nat_status(), None);                      // no rendezvous configured
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn nat_status(&self) -> Option<NatStatus> {
        self.inner().transport.traversal().map(|t| t.status())
    }
}

impl Connection {
    /// How this connection's frames travel.
    pub fn path(&self) -> Path {
        self.inner().path()
    }
}

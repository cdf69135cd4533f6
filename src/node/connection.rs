//! Constant connections a user holds, and the targets of sends and requests.

use super::NodeInner;
use crate::error::Result;
use crate::id::NodeId;
use crate::message::Message;
use crate::transport::Conn;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Where a message or request goes: an address, a node ID, or a connection.
///
/// ```
/// use p2prs::{NodeId, Target};
/// use std::net::{IpAddr, Ipv4Addr};
/// let by_addr: Target = "127.0.0.1:4444".into();
/// let from_config = String::from("localhost:4444");
/// let by_string: Target = (&from_config).into();
/// let by_ip: Target = (IpAddr::V4(Ipv4Addr::LOCALHOST), 4444).into();
/// let by_id: Target = NodeId(7).into();
/// assert!(matches!(by_id, Target::Id(NodeId(7))));
/// assert!(matches!(by_string, Target::Addr(ref a) if a == "localhost:4444"));
/// assert!(matches!(by_ip, Target::Socket(a) if a.port() == 4444));
/// # let _ = by_addr;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Target {
    /// A `host:port` address, resolved when used.
    Addr(String),
    /// A socket address.
    Socket(SocketAddr),
    /// A node ID, found through the ring.
    Id(NodeId),
    /// An open connection.
    Conn(Connection),
}

impl From<&str> for Target {
    fn from(s: &str) -> Self {
        Target::Addr(s.to_string())
    }
}
impl From<String> for Target {
    fn from(s: String) -> Self {
        Target::Addr(s)
    }
}
impl From<&String> for Target {
    fn from(s: &String) -> Self {
        Target::Addr(s.clone())
    }
}
impl From<(&str, u16)> for Target {
    fn from((h, p): (&str, u16)) -> Self {
        Target::Addr(format!("{h}:{p}"))
    }
}
impl From<(String, u16)> for Target {
    fn from((h, p): (String, u16)) -> Self {
        Target::Addr(format!("{h}:{p}"))
    }
}
impl From<(IpAddr, u16)> for Target {
    fn from(a: (IpAddr, u16)) -> Self {
        Target::Socket(a.into())
    }
}
impl From<SocketAddr> for Target {
    fn from(a: SocketAddr) -> Self {
        Target::Socket(a)
    }
}
impl From<&SocketAddr> for Target {
    fn from(a: &SocketAddr) -> Self {
        Target::Socket(*a)
    }
}
impl From<NodeId> for Target {
    fn from(id: NodeId) -> Self {
        Target::Id(id)
    }
}
impl From<&NodeId> for Target {
    fn from(id: &NodeId) -> Self {
        Target::Id(*id)
    }
}
impl From<Connection> for Target {
    fn from(c: Connection) -> Self {
        Target::Conn(c)
    }
}
impl From<&Connection> for Target {
    fn from(c: &Connection) -> Self {
        Target::Conn(c.clone())
    }
}

struct Pin {
    conn: Arc<Conn>,
    released: AtomicBool,
}

impl Pin {
    fn release(&self) -> Option<usize> {
        (!self.released.swap(true, Ordering::AcqRel)).then(|| self.conn.unpin())
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.release();
    }
}

/// A connection to a peer. One opened with [`Node::connect`](crate::Node::connect)
/// is *constant*: it stays open until [`close`](Connection::close)d (or every
/// clone is dropped, after which it closes when idle). Several requests can be
/// in flight on it at once.
#[derive(Clone)]
pub struct Connection {
    conn: Arc<Conn>,
    pin: Option<Arc<Pin>>,
    node: Weak<NodeInner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.conn.peer_addr())
            .field("peer_id", &self.conn.peer_id())
            .field("open", &!self.conn.is_closed())
            .finish()
    }
}

impl Connection {
    pub(crate) fn pinned(conn: Arc<Conn>, node: Weak<NodeInner>) -> Connection {
        conn.pin();
        Connection {
            pin: Some(Arc::new(Pin {
                conn: Arc::clone(&conn),
                released: AtomicBool::new(false),
            })),
            conn,
            node,
        }
    }

    /// A handle that does not keep the connection open (a handler's view of
    /// the connection a message came on). It still knows its node, for the
    /// node's request timeout.
    pub(crate) fn unpinned(conn: Arc<Conn>, node: Weak<NodeInner>) -> Connection {
        Connection {
            conn,
            pin: None,
            node,
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// The address the peer listens on (or its socket address if it did not say).
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer_addr()
    }

    /// The peer's node ID, when known.
    pub fn peer_id(&self) -> Option<NodeId> {
        self.conn.peer_id()
    }

    /// The peer's public key, proven in the handshake (`None` only for a
    /// node in insecure plaintext mode).
    pub fn peer_key(&self) -> Option<crate::id::PublicKey> {
        self.conn.peer_key()
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        !self.conn.is_closed() && !self.released()
    }

    /// Whether [`close`](Self::close) was called on this handle (or a clone).
    fn released(&self) -> bool {
        self.pin
            .as_ref()
            .is_some_and(|p| p.released.load(Ordering::Acquire))
    }

    /// The connection, unless this handle was closed.
    fn open(&self) -> Result<&Arc<Conn>> {
        if self.released() {
            Err(self.conn.closed_error())
        } else {
            Ok(&self.conn)
        }
    }

    /// Send a one-way message. It returns once the message is written to
    /// the socket, or, for a message that follows the previous one on this
    /// connection within a few microseconds (a stream), once it is queued:
    /// a stream's messages leave in batches, each within about 50 µs, in
    /// the order sent and before anything this connection sends after
    /// them. A write that fails later closes the connection, and the next
    /// call reports it.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// let conn = b.connect(a.local_addr())?;
    /// conn.send(Message::text("one"))?;
    /// conn.send(Message::bytes("BLOB", vec![1, 2, 3]))?;
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn send(&self, msg: Message) -> Result<()> {
        super::check_outgoing(&msg)?;
        super::send_message(self.open()?, msg)
    }

    /// Send a request and wait for its answer, up to the node's request timeout.
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
    /// let conn = b.connect(a.local_addr())?;
    /// assert_eq!(conn.request(Message::new("ADD", 41))?.data::<i64>()?, 42);
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn request(&self, msg: Message) -> Result<Message> {
        let timeout = self
            .node
            .upgrade()
            .map(|n| n.transport.cfg.request_timeout)
            .unwrap_or(Duration::from_secs(10));
        self.request_timeout(msg, timeout)
    }

    /// Send a request and wait up to `timeout` for its answer.
    pub fn request_timeout(&self, msg: Message, timeout: Duration) -> Result<Message> {
        super::check_outgoing(&msg)?;
        self.open()?.request(msg, timeout)
    }

    /// Close the connection (requests still in flight on it fail at once
    /// with [`Error::ConnectionClosed`](crate::Error::ConnectionClosed)).
    /// If something else still holds the connection open (another
    /// `Connection` from [`Node::connect`](crate::Node::connect), or the ring,
    /// for a connection to a ring neighbour), only this handle is closed: it
    /// then reports closed and refuses to send, while the others go on.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// let b = Node::builder().start()?;
    /// let conn = b.connect(a.local_addr())?;
    /// conn.close();
    /// assert!(!conn.is_open());
    /// assert!(conn.send(Message::text("too late")).is_err());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn close(&self) {
        match &self.pin {
            Some(pin) => {
                if pin.release() == Some(0) {
                    self.conn.close();
                }
            }
            None => self.conn.close(),
        }
    }
}

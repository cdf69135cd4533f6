//! What a handler receives, and the pool of threads that run handlers.

use super::{Connection, Node, Target};
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::message::Message;
use crate::transport::Conn;
use crate::wire::{Frame, Kind};
use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// What a handler returns: `Ok(())`, or any error, which a requester then
/// receives as [`Error::Remote`] with code `handler_failed`.
pub type HandlerResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A handler for one message type.
pub(crate) type HandlerFn = dyn Fn(&mut Incoming) -> HandlerResult + Send + Sync;

/// Who sent a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The address the sender listens on (or, if it did not say, its socket address).
    pub addr: SocketAddr,
    /// The sender's node ID, when it has joined a ring.
    pub id: Option<NodeId>,
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "{} (ID {id})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl PeerInfo {
    pub(crate) fn of(conn: &Conn) -> PeerInfo {
        PeerInfo {
            addr: conn.peer_addr(),
            id: conn.peer_id(),
        }
    }
}

/// A message or request as a handler sees it.
///
/// For a request, the handler answers with [`Incoming::respond`], or passes it
/// on with [`Incoming::bounce`]; if it does neither, or returns an error, or
/// panics, the requester gets an error response at once.
///
/// ```no_run
/// use p2prs::{Message, Node};
/// let node = Node::builder().port(4444).start()?;
/// node.add_handler("ADD", |req| {
///     let n: i64 = req.message().data()?;
///     req.respond(Message::new("ADD RESP", n + 1))?;
///     Ok(())
/// })?;
/// # Ok::<(), p2prs::Error>(())
/// ```
pub struct Incoming {
    msg: Message,
    from: PeerInfo,
    node: Node,
    conn: Arc<Conn>,
    req: Option<u64>,
    bounces: u32,
    answered: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("message", &self.msg)
            .field("from", &self.from)
            .field("request", &self.req)
            .field("bounces", &self.bounces)
            .field("answered", &self.answered)
            .finish_non_exhaustive()
    }
}

/// A request bounced this many times is not bounced again: it is answered
/// with an error (a cycle of bounces would otherwise go round for ever).
pub const MAX_BOUNCES: u32 = 16;

impl Incoming {
    pub(crate) fn new(
        node: Node,
        conn: Arc<Conn>,
        frame: Frame,
        from: Option<PeerInfo>,
    ) -> Incoming {
        let req = (frame.kind == Kind::Request).then_some(frame.req).flatten();
        let frame_bounces = frame.bounces;
        Incoming {
            msg: Message::from_frame(frame),
            from: from.unwrap_or_else(|| PeerInfo::of(&conn)),
            node,
            conn,
            req,
            bounces: frame_bounces,
            answered: false,
        }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// Take the message out (for its body, say).
    pub fn take_message(&mut self) -> Message {
        let kind = self.msg.kind().to_string();
        std::mem::replace(&mut self.msg, Message::new(kind, ()))
    }

    /// Who sent it.
    pub fn from(&self) -> &PeerInfo {
        &self.from
    }

    /// The local node, to send or request from inside a handler. This
    /// handle (and its clones) does not keep the node running: if the last
    /// owning handle is dropped while the handler runs, the node stops and
    /// its operations answer [`Error::Shutdown`] (see [`Node`]).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The connection it arrived on (not pinned: it may close when idle).
    pub fn connection(&self) -> Connection {
        Connection::unpinned(Arc::clone(&self.conn), Arc::downgrade(self.node.inner()))
    }

    /// Whether the sender waits for an answer.
    pub fn is_request(&self) -> bool {
        self.req.is_some()
    }

    /// Whether [`respond`](Self::respond) or [`bounce`](Self::bounce) has succeeded.
    pub fn is_answered(&self) -> bool {
        self.answered
    }

    fn open_request(&self) -> Result<u64> {
        let req = self
            .req
            .ok_or_else(|| Error::InvalidArgument("this message is not a request".into()))?;
        if self.answered {
            return Err(Error::InvalidArgument(
                "this request has been answered already".into(),
            ));
        }
        Ok(req)
    }

    /// Answer the request with `response`.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// let a = Node::builder().start()?;
    /// a.add_handler("WHO", |req| {
    ///     let who = req.from().addr.to_string();
    ///     req.respond(Message::new("WHO RESP", who))?;
    ///     Ok(())
    /// })?;
    /// let b = Node::builder().start()?;
    /// let answer = b.request(a.local_addr(), Message::new("WHO", ()))?;
    /// assert_eq!(answer.data::<String>()?, b.local_addr().to_string());
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn respond(&mut self, response: Message) -> Result<()> {
        let req = self.open_request()?;
        self.conn
            .send_bounded(&response.into_frame(Kind::Response, Some(req)))?;
        self.answered = true;
        Ok(())
    }

    /// Pass the request on to another node; its answer goes back to the
    /// original requester as if this node had given it. A request that has
    /// been bounced [`MAX_BOUNCES`] times already is refused.
    ///
    /// ```
    /// use p2prs::{Message, Node};
    /// // c answers; a does not, and passes each request on to c.
    /// let c = Node::builder().start()?;
    /// c.add_handler("ADD", |req| {
    ///     let n: i64 = req.message().data()?;
    ///     req.respond(Message::new("ADD RESP", n + 1))?;
    ///     Ok(())
    /// })?;
    /// let a = Node::builder().start()?;
    /// let c_addr = c.local_addr();
    /// a.add_handler("ADD", move |req| {
    ///     req.bounce(c_addr)?;
    ///     Ok(())
    /// })?;
    /// let b = Node::builder().start()?;
    /// assert_eq!(b.request(a.local_addr(), Message::new("ADD", 1))?.data::<i64>()?, 2);
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn bounce(&mut self, target: impl Into<Target>) -> Result<()> {
        let req = self.open_request()?;
        if self.bounces >= MAX_BOUNCES {
            return Err(Error::InvalidArgument(format!(
                "this request has been bounced {} times already (a cycle?)",
                self.bounces
            )));
        }
        let to = self.node.inner().conn_for(target.into())?;
        if to.id == self.conn.id {
            return Err(Error::InvalidArgument(
                "cannot bounce a request back to its sender".into(),
            ));
        }
        to.forward(
            self.msg.clone(),
            Arc::clone(&self.conn),
            req,
            self.bounces + 1,
        )?;
        self.answered = true;
        Ok(())
    }

    /// Run `handler` on this message and answer for it if it did not.
    pub(crate) fn run(mut self, handler: &HandlerFn) {
        let kind = self.msg.kind().to_string();
        let outcome = catch_unwind(AssertUnwindSafe(|| handler(&mut self)));
        let (code, why) = match outcome {
            Ok(Ok(())) if self.answered || self.req.is_none() => return,
            Ok(Ok(())) => (
                "no_response",
                format!("the handler for {kind:?} returned without responding"),
            ),
            Ok(Err(e)) => (
                "handler_failed",
                format!("the handler for {kind:?} failed: {e}"),
            ),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                log::error!("the handler for {kind:?} panicked: {what}");
                (
                    "handler_panicked",
                    format!("the handler for {kind:?} panicked: {what}"),
                )
            }
        };
        match self.req {
            Some(req) if !self.answered => {
                if code != "handler_panicked" {
                    log::warn!("request {kind:?} from {}: {why}", self.from);
                }
                let _ = self.conn.send_bounded(&Frame::error(req, code, why));
            }
            _ => log::warn!("message {kind:?} from {}: {why}", self.from),
        }
    }
}

//! The crate's error type.

use crate::id::NodeId;
use std::fmt;
use std::io;
use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in p2prs.
///
/// Variants carry enough context for a message a user can act on; match on
/// them to handle specific cases.
///
/// ```
/// use p2prs::Error;
/// let e = Error::NoSuchNode(p2prs::NodeId(7));
/// assert_eq!(e.to_string(), "no node holds ID 7");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error, with what was being done.
    Io {
        /// What the node was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Waiting for something took longer than allowed.
    Timeout {
        /// Which phase ran out of time.
        kind: TimeoutKind,
        /// What was being waited for.
        what: String,
        /// How long was waited.
        after: Duration,
    },
    /// The connection closed before the operation completed.
    ConnectionClosed {
        /// The remote address.
        peer: String,
    },
    /// The remote node answered a request with an error.
    Remote {
        /// What kind of error: [`ErrorCode::NoHandler`], [`ErrorCode::HandlerFailed`]...
        /// (codes from newer peers are kept as [`ErrorCode::Other`]).
        code: ErrorCode,
        /// The remote node's explanation.
        message: String,
    },
    /// The peer broke the wire protocol (bad magic, bad frame, wrong version...).
    Protocol(crate::wire::WireError),
    /// A frame would exceed the configured maximum size.
    FrameTooLarge {
        /// Size of the frame in bytes.
        size: u64,
        /// Configured maximum.
        max: u64,
    },
    /// An address could not be parsed or resolved.
    InvalidAddress(String),
    /// An argument given to the API is not acceptable.
    InvalidArgument(String),
    /// Message data could not be encoded or decoded as the requested type.
    Json(serde_json::Error),
    /// No node of the ring holds this ID.
    NoSuchNode(NodeId),
    /// The node is not (yet) part of a ring, so it cannot route by ID.
    NotJoined,
    /// The ID asked for is held or reserved by another node.
    IdTaken(NodeId),
    /// Joining the network failed; each address tried and why.
    JoinFailed(String),
    /// Routing through the ring failed (no route, too many hops, unreachable hops).
    Routing(String),
    /// The node has been shut down.
    Shutdown,
    /// The secure handshake with a peer failed: a different network key, a
    /// peer that is not p2prs, an invalid identity proof...
    Handshake {
        /// The peer's address.
        peer: String,
        /// What went wrong.
        error: HandshakeError,
    },
    /// The node reached at an address proved another identity than the one
    /// the ring binds to the node wanted there.
    WrongPeer {
        /// The address dialled.
        addr: String,
        /// The key expected there.
        expected: crate::id::PublicKey,
        /// The key the peer proved (none in plaintext mode).
        found: Option<crate::id::PublicKey>,
    },
    /// A process-wide limit of p2prs is reached (such as the thread budget,
    /// [`set_max_threads`](crate::set_max_threads)): nothing was started.
    /// Retry later, or raise the limit.
    ResourceExhausted {
        /// What ran out, such as `"threads"`.
        what: String,
        /// The limit in force.
        limit: usize,
        /// What the node was doing.
        context: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Timeout { what, after, .. } => {
                write!(
                    f,
                    "timed out after {:.1}s waiting for {what}",
                    after.as_secs_f64()
                )
            }
            Error::ConnectionClosed { peer } => write!(f, "connection to {peer} closed"),
            Error::Remote { code, message } => write!(f, "remote error ({code}): {message}"),
            Error::Protocol(e) => write!(f, "protocol violation: {e}"),
            Error::FrameTooLarge { size, max } => {
                write!(
                    f,
                    "frame of {size} bytes exceeds the maximum of {max} bytes"
                )
            }
            Error::InvalidAddress(a) => write!(f, "invalid address: {a}"),
            Error::InvalidArgument(a) => write!(f, "invalid argument: {a}"),
            Error::Json(e) => write!(f, "message data: {e}"),
            Error::NoSuchNode(id) => write!(f, "no node holds ID {id}"),
            Error::NotJoined => write!(f, "this node has not joined a network"),
            Error::IdTaken(id) => write!(f, "ID {id} is already taken"),
            Error::JoinFailed(why) => write!(f, "could not join the network: {why}"),
            Error::Routing(why) => write!(f, "routing failed: {why}"),
            Error::Shutdown => write!(f, "the node has been shut down"),
            Error::Handshake { peer, error } => write!(f, "handshake with {peer}: {error}"),
            Error::WrongPeer {
                addr,
                expected,
                found,
            } => match found {
                Some(k) => write!(
                    f,
                    "the node at {addr} proved key {} instead of {}",
                    k.short(),
                    expected.short()
                ),
                None => write!(
                    f,
                    "the node at {addr} proved no key (expected {})",
                    expected.short()
                ),
            },
            Error::ResourceExhausted {
                what,
                limit,
                context,
            } => write!(
                f,
                "{context}: the process-wide limit of {limit} {what} is reached"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Protocol(e) => Some(e),
            Error::Json(e) => Some(e),
            Error::Handshake { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

impl From<crate::wire::WireError> for Error {
    fn from(e: crate::wire::WireError) -> Self {
        match e {
            crate::wire::WireError::FrameTooLarge { size, max } => {
                Error::FrameTooLarge { size, max }
            }
            other => Error::Protocol(other),
        }
    }
}

impl Error {
    /// Whether this error says that a peer's network key differs from this
    /// node's (or that one of the two has none).
    ///
    /// ```
    /// let e = p2prs::Error::NotJoined;
    /// assert!(!e.is_network_key_mismatch());
    /// ```
    pub fn is_network_key_mismatch(&self) -> bool {
        use HandshakeError as H;
        match self {
            Error::Handshake { error, .. } => matches!(
                error,
                H::NetworkKeyMismatch | H::NetworkKeyPresence { .. } | H::Refused
            ),
            Error::JoinFailed(why) => why.contains("network key mismatch"),
            _ => false,
        }
    }

    /// Whether the same call may succeed if made again a little later: the
    /// error says something about the moment (a peer that did not answer,
    /// a connection refused or closed, a ring that is settling after nodes
    /// joined or failed, a resource in short supply), not about the call.
    ///
    /// Under churn, a request to the ID of a live node either succeeds or
    /// fails with a retriable error; [`Error::NoSuchNode`] is not retriable:
    /// it is returned only when the owner of the ID and the node before it
    /// agree that no node holds it (see `docs/chord.md`).
    ///
    /// | retriable | not retriable |
    /// | --- | --- |
    /// | `Io`, `Timeout`, `ConnectionClosed`, `Routing`, `JoinFailed`, `WrongPeer`, `ResourceExhausted`; `Remote` with the codes `timeout`, `shutting_down`, `resource_exhausted`, `unsettled`, `wrong_owner`, `bounce_failed`, `bounce_timeout` | `NoSuchNode`, `NotJoined`, `IdTaken`, `Shutdown`, `InvalidArgument`, `InvalidAddress`, `Json`, `Protocol`, `FrameTooLarge`, `Handshake`, other `Remote` codes |
    ///
    /// ```
    /// use p2prs::{Error, NodeId};
    /// assert!(Error::Routing("the ring is settling".into()).is_retriable());
    /// assert!(!Error::NoSuchNode(NodeId(3)).is_retriable());
    /// ```
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io { .. }
            | Error::Timeout { .. }
            | Error::ConnectionClosed { .. }
            | Error::Routing(_)
            | Error::JoinFailed(_)
            | Error::WrongPeer { .. }
            | Error::ResourceExhausted { .. } => true,
            Error::Remote { code, .. } => matches!(
                code,
                ErrorCode::Timeout
                    | ErrorCode::ShuttingDown
                    | ErrorCode::ResourceExhausted
                    | ErrorCode::Unsettled
                    | ErrorCode::WrongOwner
                    | ErrorCode::BounceFailed
                    | ErrorCode::BounceTimeout
            ),
            _ => false,
        }
    }

    /// Wrap an I/O error with what was being done. A thread refused by the
    /// thread budget becomes [`Error::ResourceExhausted`].
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        let exhausted = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<crate::budget::Exhausted>())
            .copied();
        match exhausted {
            Some(e) => Error::ResourceExhausted {
                what: "threads".into(),
                limit: e.limit,
                context: context.into(),
            },
            None => Error::Io {
                context: context.into(),
                source,
            },
        }
    }

    /// The `code` this error travels under in an error response.
    pub(crate) fn wire_code(&self) -> &str {
        match self {
            Error::Remote { code, .. } => code.as_str(),
            Error::NoSuchNode(_) => "no_such_node",
            Error::NotJoined => "not_joined",
            Error::IdTaken(_) => "id_taken",
            Error::Timeout { .. } => "timeout",
            Error::Shutdown => "shutting_down",
            Error::ResourceExhausted { .. } => "resource_exhausted",
            _ => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_refused_by_the_budget_is_resource_exhausted() {
        let refused = io::Error::other(crate::budget::Exhausted { limit: 12 });
        let e = Error::io("spawning a connection thread", refused);
        assert!(matches!(
            &e,
            Error::ResourceExhausted { what, limit: 12, .. } if what == "threads"
        ));
        assert_eq!(
            e.to_string(),
            "spawning a connection thread: the process-wide limit of 12 threads is reached"
        );
        assert_eq!(e.wire_code(), "resource_exhausted");
        let other = Error::io("x", io::Error::other("boom"));
        assert!(matches!(other, Error::Io { .. }));
    }
}

/// Why a handshake failed. Holds no I/O error, so it compares.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's first bytes are not `P2PR`.
    NotP2prs(Vec<u8>),
    /// The peer speaks another protocol version.
    Version {
        /// Its version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// One side has a network key and the other has none.
    NetworkKeyPresence {
        /// Whether this node has one.
        ours: bool,
    },
    /// The handshake did not verify: the network keys differ (or the bytes
    /// were altered in transit).
    NetworkKeyMismatch,
    /// One side is in insecure plaintext mode and the other is not.
    PlaintextMismatch {
        /// Whether this node is in plaintext mode.
        ours: bool,
    },
    /// The two sides use different ciphers.
    CipherMismatch {
        /// Ours, as named in the Noise protocol name (`AESGCM`, `ChaChaPoly`).
        ours: String,
    },
    /// The peer's identity proof is invalid.
    BadIdentity(String),
    /// The peer's hello is not valid.
    BadHello(String),
    /// A handshake message was malformed or did not decrypt.
    Noise(String),
    /// The peer's handshake did not verify on its side: it refused ours.
    Refused,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::NotP2prs(b) => {
                write!(f, "not a p2prs peer: it began with {}", shown(b))
            }
            HandshakeError::Version { theirs, ours } => write!(
                f,
                "peer speaks protocol version {theirs}, this node speaks {ours}"
            ),
            HandshakeError::NetworkKeyPresence { ours: true } => write!(
                f,
                "network key mismatch: this node has a network key and the peer has none"
            ),
            HandshakeError::NetworkKeyPresence { ours: false } => write!(
                f,
                "network key mismatch: the peer requires a network key and this node has none"
            ),
            HandshakeError::NetworkKeyMismatch => write!(
                f,
                "network key mismatch: the peer's handshake does not verify with this node's \
                 network key (or it was altered in transit)"
            ),
            HandshakeError::PlaintextMismatch { ours } => write!(
                f,
                "{} is in insecure plaintext mode and the other side is not",
                if *ours { "this node" } else { "the peer" }
            ),
            HandshakeError::CipherMismatch { ours } => {
                write!(f, "the peer uses another cipher than this node's {ours}")
            }
            HandshakeError::BadIdentity(e) => write!(f, "invalid identity proof: {e}"),
            HandshakeError::BadHello(e) => write!(f, "invalid hello: {e}"),
            HandshakeError::Noise(e) => write!(f, "handshake failed: {e}"),
            HandshakeError::Refused => write!(
                f,
                "network key mismatch: the peer could not verify this node's handshake"
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The first bytes of a peer, as text when they are printable, else hex.
fn shown(b: &[u8]) -> String {
    if !b.is_empty() && b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        let hex: Vec<String> = b.iter().map(|c| format!("{c:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

/// Which phase of an operation ran out of time (in [`Error::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The secure handshake of a new connection (direct, punched or relayed):
    /// `Config::handshake_timeout`.
    Handshake,
    /// The answer to a request: `Config::request_timeout`, or the timeout
    /// given to the call.
    Response,
    /// A write that the peer did not read: `Config::write_timeout`.
    Write,
    /// A hole punch: `Config::punch_timeout` or `Config::relay_after`.
    Punch,
}

/// The kind of an error a remote node answered (in [`Error::Remote`]), as
/// it travels on the wire (`docs/protocol.md`). A code this version does not
/// know, from a newer peer, is kept as [`ErrorCode::Other`].
///
/// ```
/// use p2prs::ErrorCode;
/// assert_eq!(ErrorCode::from("no_handler"), ErrorCode::NoHandler);
/// assert_eq!(ErrorCode::NoHandler.as_str(), "no_handler");
/// assert_eq!(ErrorCode::from("from_the_future"), ErrorCode::Other("from_the_future".into()));
/// assert!(ErrorCode::IdTaken == "id_taken");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No handler for the message type.
    NoHandler,
    /// The handler returned an error.
    HandlerFailed,
    /// The handler panicked. The node caught the panic and goes on, but
    /// Rust's panic hook has printed it to stderr first, as for any panic
    /// (`std::panic::set_hook` changes that for the whole program).
    HandlerPanicked,
    /// The handler returned without responding or bouncing.
    NoResponse,
    /// The node the request was bounced to went away.
    BounceFailed,
    /// The node the request was bounced to did not answer in time.
    BounceTimeout,
    /// No node holds the ID.
    NoSuchNode,
    /// The node is not part of a ring.
    NotJoined,
    /// The ID asked for is held, reserved, or bound to another key.
    IdTaken,
    /// The claim reached a node that does not own the ID.
    WrongOwner,
    /// The allocating node does not know its range yet.
    Unsettled,
    /// No free ID is left in the allocator's range.
    RangeFull,
    /// A ring or rendezvous request whose data does not have the documented shape.
    BadRequest,
    /// A ring request that speaks for another node (see `docs/security.md`).
    Forbidden,
    /// The remote node timed out on our behalf.
    Timeout,
    /// The remote node is shutting down.
    ShuttingDown,
    /// The remote node is out of a resource (threads).
    ResourceExhausted,
    /// A rendezvous registration for an ID or address held under another key.
    Taken,
    /// An introduction asked of a rendezvous before registering.
    NotRegistered,
    /// The remote node refused a frame larger than its maximum frame size
    /// (or header limit), and closed the connection.
    FrameTooLarge,
    /// The remote node refused bytes that break the protocol, and closed the
    /// connection.
    ProtocolError,
    /// Another failure of the remote node.
    Failed,
    /// A code this version does not know.
    Other(String),
}

const CODES: &[(ErrorCode, &str)] = &[
    (ErrorCode::NoHandler, "no_handler"),
    (ErrorCode::HandlerFailed, "handler_failed"),
    (ErrorCode::HandlerPanicked, "handler_panicked"),
    (ErrorCode::NoResponse, "no_response"),
    (ErrorCode::BounceFailed, "bounce_failed"),
    (ErrorCode::BounceTimeout, "bounce_timeout"),
    (ErrorCode::NoSuchNode, "no_such_node"),
    (ErrorCode::NotJoined, "not_joined"),
    (ErrorCode::IdTaken, "id_taken"),
    (ErrorCode::WrongOwner, "wrong_owner"),
    (ErrorCode::Unsettled, "unsettled"),
    (ErrorCode::RangeFull, "range_full"),
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::Timeout, "timeout"),
    (ErrorCode::ShuttingDown, "shutting_down"),
    (ErrorCode::ResourceExhausted, "resource_exhausted"),
    (ErrorCode::Taken, "taken"),
    (ErrorCode::NotRegistered, "not_registered"),
    (ErrorCode::FrameTooLarge, "frame_too_large"),
    (ErrorCode::ProtocolError, "protocol_error"),
    (ErrorCode::Failed, "failed"),
];

impl ErrorCode {
    /// The code as it travels on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(s) => s,
            known => CODES
                .iter()
                .find(|(c, _)| c == known)
                .map_or("failed", |(_, s)| s),
        }
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> ErrorCode {
        CODES
            .iter()
            .find(|(_, name)| *name == s)
            .map_or_else(|| ErrorCode::Other(s.to_string()), |(c, _)| c.clone())
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> ErrorCode {
        ErrorCode::from(s.as_str())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

//! Unstable helpers for this crate's own tests and fuzzing: a raw secure
//! session to a node, through which a test can send any bytes (malformed
//! frames, forged ring messages) as a misbehaving member would. Enabled by
//! the `unstable-testing` feature; not covered by semver.

use crate::error::{Error, Result};
use crate::id::PublicKey;
use crate::identity::{Identity, NetworkKey};
use crate::noise::{Cipher, Handshaker, Local, Opener, Sealer};
use crate::transport::{drive_handshake, tie_break};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A handshaken connection to a node that sends and receives the plaintext
/// frame stream, encrypted on the wire like a node's.
pub struct SecureStream {
    stream: TcpStream,
    sealer: Sealer,
    opener: Opener,
    plain: Vec<u8>,
    /// The node's hello, as JSON.
    pub peer_hello: serde_json::Value,
    /// The node's authenticated key (none in plaintext mode).
    pub peer_key: Option<PublicKey>,
}

impl std::fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("peer", &self.stream.peer_addr().ok())
            .field("peer_key", &self.peer_key)
            .field("buffered", &self.plain.len())
            .finish_non_exhaustive()
    }
}

impl SecureStream {
    /// Connect to `addr` as `identity`, with an optional network key, saying
    /// `hello` (raw JSON bytes, which may be malformed on purpose).
    pub fn connect(
        addr: SocketAddr,
        identity: Identity,
        network_key: Option<&str>,
        hello: &[u8],
    ) -> Result<SecureStream> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
        SecureStream::handshake(stream, identity, network_key, hello)
    }

    /// Run the handshake on a connected stream.
    pub fn handshake(
        mut stream: TcpStream,
        identity: Identity,
        network_key: Option<&str>,
        hello: &[u8],
    ) -> Result<SecureStream> {
        let local = Local::new(
            identity,
            network_key.map(NetworkKey::new),
            false,
            Cipher::default(),
        )
        .map_err(|error| Error::Handshake {
            peer: "local".into(),
            error,
        })?;
        let hs =
            Handshaker::with_raw_hello(Arc::new(local), hello.to_vec(), tie_break(Some(true))?);
        let greeted = drive_handshake(&mut stream, hs, Duration::from_secs(5), None)?;
        let (proof, session, rest) = (greeted.proof, greeted.session, greeted.rest);
        let mut opener = session.opener();
        let mut plain = Vec::new();
        opener
            .open(&rest, &mut plain)
            .map_err(|e| Error::io("decrypting", io::Error::other(e.to_string())))?;
        Ok(SecureStream {
            stream,
            sealer: session.sealer(),
            opener,
            plain,
            peer_hello: serde_json::to_value(&proof.hello).unwrap_or_default(),
            peer_key: proof.key,
        })
    }

    /// The underlying socket (to set timeouts, read its addresses, or write
    /// raw ciphertext).
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }

    /// Encrypt and send `bytes` of the frame stream.
    pub fn write_plain(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        self.sealer
            .seal(bytes, &mut out)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.stream.write_all(&out)
    }

    /// Read decrypted bytes of the frame stream into `buf`: `Ok(0)` at end
    /// of stream; an `InvalidData` error when a record fails to decrypt.
    pub fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        while self.plain.is_empty() {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(0);
            }
            self.opener
                .open(&chunk[..n], &mut self.plain)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        }
        let n = buf.len().min(self.plain.len());
        buf[..n].copy_from_slice(&self.plain[..n]);
        self.plain.drain(..n);
        Ok(n)
    }
}

/// What is left of a node's memory: weak references to its parts, taken
/// while it runs. Once the node has shut down and its last handle is
/// dropped, every part is freed unless something still holds it (a
/// reference cycle, a map that keeps it, a thread left running): then
/// [`Remains::left`] names it.
pub struct Remains {
    parts: Vec<(String, std::sync::Weak<dyn std::any::Any + Send + Sync>)>,
}

impl std::fmt::Debug for Remains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remains")
            .field("parts", &self.parts.len())
            .field("left", &self.left())
            .finish()
    }
}

impl Remains {
    /// The node's state, its transport, and each connection it has open now.
    pub fn of(node: &crate::Node) -> Remains {
        let inner = node.inner();
        let mut parts: Vec<(String, std::sync::Weak<dyn std::any::Any + Send + Sync>)> = vec![
            (
                "the node's state".to_string(),
                Arc::downgrade(inner) as std::sync::Weak<dyn std::any::Any + Send + Sync>,
            ),
            (
                "the node's transport".to_string(),
                Arc::downgrade(&inner.transport)
                    as std::sync::Weak<dyn std::any::Any + Send + Sync>,
            ),
        ];
        parts.extend(Self::conns(node, |_| true).parts);
        Remains { parts }
    }

    /// The connections `node` has open now to the node with ID `peer`.
    pub fn conns_to(node: &crate::Node, peer: crate::NodeId) -> Remains {
        Self::conns(node, |c| c.peer_id() == Some(peer))
    }

    fn conns(node: &crate::Node, pick: impl Fn(&crate::transport::Conn) -> bool) -> Remains {
        let parts = node
            .inner()
            .transport
            .all()
            .into_iter()
            .filter(|c| pick(c))
            .map(|c| {
                (
                    format!("connection {} to {}", c.id, c.peer_addr()),
                    Arc::downgrade(&c) as std::sync::Weak<dyn std::any::Any + Send + Sync>,
                )
            })
            .collect();
        Remains { parts }
    }

    /// How many parts were taken.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether no part was taken.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The parts still in memory.
    pub fn left(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// The sizes of `node`'s tables that grow with its peers, by name: its
/// connections, threads, per-IP counts, memory holders, ring pins, queued
/// pokes and jobs, handler gates and queues, events. A table that keeps an
/// entry for every peer that ever came, and never shrinks as peers go,
/// shows here as growing with churn.
pub fn table_sizes(node: &crate::Node) -> std::collections::BTreeMap<&'static str, usize> {
    node.inner().table_sizes().into_iter().collect()
}

/// Outbound connections opened so far in this process (each a handshake at
/// both ends), by what they were opened for: `route`, `join`, `stabilize`,
/// `finger (no list)`, `finger (list behind)`, `finger (list current)`,
/// `poke`, `recount`, `census`, `members`, `broadcast`, `other`.
pub fn dials() -> Vec<(&'static str, u64)> {
    crate::transport::dials()
}

/// Have `node` give its ID up and join the ring again under a new one,
/// through its successor, as it does when its successor names another live
/// node on its ID (two nodes on one ID, which only a root dying at the
/// wrong moment leaves; see `docs/chord.md`). Returns once it has joined
/// again or failed to (then it is out of the network, as the log says).
pub fn yield_id(node: &crate::Node) -> Result<()> {
    crate::node::chord_yield_id(node.inner())
}

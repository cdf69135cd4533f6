//! # p2prs
//!
//! The simplest peer-to-peer networking library for Rust programs that do not
//! use async. Start a node, join a network by the address of any member, get a
//! small numeric ID, and reach any other node by its ID.
//!
//! Everything is blocking and thread-per-connection: no async runtime.
//!
//! ```
//! use p2prs::{Message, Node};
//!
//! // Node A answers ADD requests.
//! let a = Node::builder().port(0).start()?;
//! a.add_handler("ADD", |req| {
//!     let n: i64 = req.message().data()?;
//!     req.respond(Message::new("ADD RESP", n + 1))?;
//!     Ok(())
//! })?;
//!
//! // Node B asks it.
//! let b = Node::builder().port(0).start()?;
//! let resp = b.request(a.local_addr(), Message::new("ADD", 17))?;
//! println!("17 + 1 = {}", resp.data::<i64>()?);
//! # assert_eq!(resp.data::<i64>()?, 18);
//! # Ok::<(), p2prs::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

/// Unstable hooks for the fuzz targets in `fuzz/`; not part of the API.
#[cfg(feature = "unstable-testing")]
#[doc(hidden)]
pub mod __fuzz;
mod budget;
mod config;
mod error;
mod id;
mod identity;
mod message;
mod node;
mod noise;
mod punch;
mod rendezvous;
#[allow(
    dead_code,
    reason = "the pure Chord core's API is used in full by its unit tests and the \
              simulator; the node needs a subset"
)]
mod ring;
#[cfg(feature = "unstable-testing")]
#[doc(hidden)]
pub mod testing;
mod transport;
/// The frame codec, public only for this crate's fuzz targets and tests
/// (feature `unstable-testing`): not part of the API.
#[cfg(feature = "unstable-testing")]
#[doc(hidden)]
pub mod wire;
#[cfg(not(feature = "unstable-testing"))]
mod wire;

pub use budget::{max_threads, running_threads, set_max_threads, DEFAULT_MAX_THREADS};
pub use config::Config;
pub use error::{Error, ErrorCode, HandshakeError, Result, TimeoutKind};
pub use id::{NodeId, ParseKeyError, PublicKey};
pub use identity::{Identity, NetworkKey};
pub use message::{Message, TEXT};
pub use node::{
    Connection, Event, Events, HandlerResult, Incoming, Node, NodeBuilder, Peer, PeerInfo,
    RecvError, Route, Target, MAX_BOUNCES, RESERVED_PREFIX,
};

pub use config::{Cipher, Traversal};
pub use rendezvous::{Rendezvous, RendezvousStats};
pub use transport::{NatStatus, Path};

// The handles a program shares between threads are Send + Sync + 'static;
// this fails to compile if a change takes that away.
const _: () = {
    const fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Node>();
    shareable::<NodeBuilder>();
    shareable::<Connection>();
    shareable::<Rendezvous>();
    shareable::<Error>();
    shareable::<Message>();
    shareable::<Event>();
    shareable::<Config>();
    shareable::<Target>();
    shareable::<NodeId>();
    shareable::<PeerInfo>();
    shareable::<Incoming>();
};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

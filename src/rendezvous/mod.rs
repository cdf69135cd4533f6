//! NAT traversal: the rendezvous server, the node's client of it, hole
//! punching (in [`crate::punch`]) and the relay fallback.
//!
//! A node built with [`NodeBuilder::rendezvous`](crate::NodeBuilder::rendezvous) keeps a link to the
//! rendezvous from its own listening port, registers its node ID and private
//! endpoint, and learns its public endpoint. When it needs a connection to a
//! node registered there too, it asks the rendezvous, which answers "direct"
//! for a node with a public address, or introduces the two for a hole punch,
//! or relays. See `docs/nat-traversal.md`.

mod client;
mod limit;
pub(crate) mod proto;
mod server;

pub(crate) use client::attach;
pub use server::{Rendezvous, RendezvousStats};

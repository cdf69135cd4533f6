//! The rendezvous protocol: reserved message types `p2prs.rv.*` over the
//! ordinary p2prs wire format (hello, then frames). See
//! `docs/nat-traversal.md` for the exchange step by step.

use crate::id::NodeId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Request: register (or refresh) this node; the answer is [`Registered`].
pub(crate) const REGISTER: &str = "p2prs.rv.register";
/// Request: how to reach a node; the answer is [`ConnectReply`].
pub(crate) const CONNECT: &str = "p2prs.rv.connect";
/// Message from the server: punch to this peer now ([`PunchGo`]).
pub(crate) const PUNCH: &str = "p2prs.rv.punch";
/// Message both ways: a relayed frame in the body ([`RelayOut`] / [`RelayIn`]).
pub(crate) const RELAY: &str = crate::transport::RELAY_TYPE;
/// Message from the server: a relay session ended ([`Gone`]).
pub(crate) const GONE: &str = "p2prs.rv.gone";
/// Type of the server's answers.
pub(crate) const OK: &str = "p2prs.rv.ok";

/// What a node registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Register {
    /// Its node ID, once it has one.
    #[serde(default)]
    pub id: Option<NodeId>,
    /// The address it announces in hellos and in the ring.
    pub listen: SocketAddr,
    /// Its private endpoint: the local address of its link to the server.
    pub private: SocketAddr,
}

/// The server's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Registered {
    /// The node's public endpoint: the source address the server sees.
    pub public: SocketAddr,
    /// The node's session number at this server.
    pub session: u64,
}

/// How the asking node would like to reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Want {
    /// Direct to a public node, punch to a NATed one.
    Auto,
    /// Punch, whatever the target looks like.
    Punch,
    /// Relay.
    Relay,
}

/// Request to reach a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectReq {
    /// The target's announced address or public endpoint.
    pub addr: SocketAddr,
    /// The target's node ID, when the asker knows it (preferred to `addr`).
    #[serde(default)]
    pub id: Option<NodeId>,
    /// The asker's node ID, to refresh its registration.
    #[serde(default)]
    pub from_id: Option<NodeId>,
    /// What the asker wants.
    pub want: Want,
}

/// What the server decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// The target is not registered here.
    Unknown,
    /// The target registered a public endpoint equal to its private one.
    Direct,
    /// Both sides were told to punch (the target by a [`PunchGo`] now).
    Punch,
    /// Use the relay.
    Relay,
}

/// A registered node as told to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Endpoints {
    /// Its session number (the relay address).
    pub session: u64,
    /// Its node ID, if it registered one.
    #[serde(default)]
    pub id: Option<NodeId>,
    /// The address it announces.
    pub listen: SocketAddr,
    /// Its public endpoint.
    pub public: SocketAddr,
    /// Its private endpoint.
    pub private: SocketAddr,
}

/// The answer to [`ConnectReq`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectReply {
    /// What to do.
    pub mode: Mode,
    /// The target, unless unknown.
    #[serde(default)]
    pub peer: Option<Endpoints>,
    /// The introduction's number, shared with the target's [`PunchGo`].
    #[serde(default)]
    pub token: u64,
}

/// Sent to the target of an introduction: punch to `peer` now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PunchGo {
    /// The node that asked.
    pub peer: Endpoints,
    /// The introduction's number.
    pub token: u64,
}

/// Header data of a relay frame from a node to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RelayOut {
    /// The session to forward to.
    pub to: u64,
    /// The sender closed its relayed connection (no body).
    #[serde(default)]
    pub close: bool,
}

/// Header data of a relay frame from the server to a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RelayIn {
    /// The sender.
    pub from: Endpoints,
    /// The sender closed its relayed connection.
    #[serde(default)]
    pub close: bool,
}

/// A relay session ended: the peer left, or the relay refused a frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Gone {
    /// The peer's session.
    pub session: u64,
    /// Why.
    pub reason: String,
}

//! The node's side of the Chord ring: joins, lookups, the stabilizer thread,
//! the ring's own message types, and the network size.
//!
//! The decisions live in [`crate::ring`]; this module does their I/O. The
//! routing lock is never held across a socket call: take the lock, compute
//! the actions, release it, then talk to peers and feed the answers back.

use super::{reply, NodeInner, PeerInfo};
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::id::PublicKey;
use crate::message::Message;
use crate::ring::alloc::{self, ClaimError, Reservations};
use crate::ring::broadcast::broadcast_targets;
use crate::ring::census::{Census, Encode, News, Pace, Walk, WalkStep, WALK_EVERY};
use crate::ring::lookup::{Lookup, LookupStep};
use crate::ring::resolve::{unsure, vouch_owner, vouch_pred, Lost, Verdict};
use crate::ring::stabilize::{
    displaced_by, on_predecessor_reply, on_stabilize_reply, Action, Stabilizer,
};
use crate::ring::{self, RoutingState};
use crate::transport::Conn;
use crate::wire::{Frame, Kind};
use crossbeam_channel::{after, bounded, select, unbounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ask a node for its next hop towards `target`.
pub(crate) const NEXT_HOP: &str = "p2prs.next_hop";
/// Ask a node for its predecessor and successor list.
pub(crate) const NEIGHBOURS: &str = "p2prs.neighbours";
/// Tell a node we may be its predecessor.
pub(crate) const NOTIFY: &str = "p2prs.notify";
/// Liveness check.
pub(crate) const PING: &str = "p2prs.ping";
/// Ask the owner of a range for a node ID.
pub(crate) const CLAIM: &str = "p2prs.claim";
/// A neighbour leaves and hands over its links.
pub(crate) const LEAVING: &str = "p2prs.leaving";
/// A message travelling down the broadcast tree.
pub(crate) const BROADCAST: &str = "p2prs.broadcast";
/// The network size and membership changes, broadcast by the root.
pub(crate) const SIZE: &str = "p2prs.size";
/// Run a stabilizer round now (the ring changed next to you).
pub(crate) const STABILIZE_NOW: &str = "p2prs.stabilize_now";
/// Ask the root to count the ring again.
pub(crate) const RECOUNT: &str = "p2prs.recount";
/// This node's ID changed (it joined or left): sent on every open
/// connection, so peers that connected earlier know who is on the other end.
pub(crate) const ANNOUNCE: &str = "p2prs.announce";
/// Ask a node for its member list (the root's last count, if it holds it).
pub(crate) const MEMBERS: &str = "p2prs.members";

/// A node of the ring as the peer book knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// Its ID.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its public key, which the ring binds to its ID (`None` only in
    /// insecure plaintext mode).
    pub key: Option<PublicKey>,
}

/// Where a ring member listens and the key it proved: the ring core's
/// address type in a node. On the wire: `{"at": "host:port", "key": "hex"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Ep {
    /// Its listening address.
    pub at: SocketAddr,
    /// Its identity (absent in plaintext mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PublicKey>,
}

/// The bytes of an address in the digest of a member list.
impl Encode for Ep {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.at.to_string().as_bytes());
        out.push(0);
        if let Some(k) = &self.key {
            out.extend_from_slice(k.as_bytes());
        }
    }
}

impl std::fmt::Display for Ep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.at)
    }
}

/// Where a lookup through the ring led.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The node responsible for the ID looked up: the first node at or
    /// after it on the ring. Its `id` equals the ID looked up only when a
    /// node holds that ID.
    pub owner: Peer,
    /// Nodes asked on the way (0 when this node knew the answer).
    pub hops: u32,
}

type RPeer = ring::Peer<Ep>;

fn to_pub(p: &RPeer) -> Peer {
    Peer {
        id: p.id,
        addr: p.addr.at,
        key: p.addr.key,
    }
}

#[derive(Serialize, Deserialize)]
struct NextHopReply {
    #[serde(with = "msg::peer")]
    from: RPeer,
    #[serde(with = "msg::route")]
    route: ring::Route<Ep>,
}

#[derive(Serialize, Deserialize)]
struct NeighboursReply {
    #[serde(with = "msg::peer")]
    me: RPeer,
    #[serde(with = "msg::opt_peer")]
    pred: Option<RPeer>,
    #[serde(with = "msg::peers")]
    successors: Vec<RPeer>,
    /// Neighbours it dropped lately because they did not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lost: Vec<NodeId>,
}

#[derive(Serialize, Deserialize)]
struct ClaimRequest {
    id: Option<NodeId>,
    addr: SocketAddr,
}

/// The granter's signature binding an ID to a key: a joiner shows it in
/// its notifies, so that nodes that did not grant the ID can check it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Grant {
    /// The node that granted the ID (itself, for the first node of a network).
    #[serde(with = "msg::peer")]
    by: RPeer,
    /// Its signature (hex) of [`grant_bytes`].
    sig: String,
}

fn grant_bytes(id: NodeId, key: &PublicKey) -> Vec<u8> {
    let mut v = b"p2prs-grant-v1\0".to_vec();
    v.extend_from_slice(&id.0.to_be_bytes());
    v.extend_from_slice(key.as_bytes());
    v
}

/// This node's grant of `id` to `key` (none in plaintext mode).
fn make_grant(n: &NodeInner, by: &RPeer, id: NodeId, key: Option<PublicKey>) -> Option<Grant> {
    let key = key?;
    by.addr.key?;
    let sig = n.transport.secure.identity().sign(&grant_bytes(id, &key));
    Some(Grant {
        by: by.clone(),
        sig: crate::identity::hex(&sig),
    })
}

/// The notify this node sends about itself.
fn notify_data(n: &NodeInner, me: &RPeer) -> Value {
    json!({ "peer": msg::WirePeer::from(me), "grant": *n.chord.grant.lock() })
}

#[derive(Serialize, Deserialize)]
struct ClaimReply {
    id: NodeId,
    #[serde(with = "msg::peer")]
    owner: RPeer,
    #[serde(with = "msg::peers")]
    successors: Vec<RPeer>,
    /// The owner's grant of the ID to the claimant's key.
    #[serde(default)]
    grant: Option<Grant>,
    /// The network size the owner knows, before this join.
    #[serde(default)]
    size: usize,
}

#[derive(Serialize, Deserialize)]
struct Leaving {
    #[serde(with = "msg::peer")]
    peer: RPeer,
    #[serde(with = "msg::opt_peer")]
    pred: Option<RPeer>,
    #[serde(with = "msg::peers")]
    successors: Vec<RPeer>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    limit: NodeId,
    #[serde(with = "msg::peer")]
    origin: RPeer,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
    /// The origin's signature (hex) of [`signed_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
}

/// What the origin of a broadcast signs: everything but the tree's `limit`,
/// which each forwarder sets for its children.
fn signed_bytes(origin: &RPeer, kind: &str, data: &Value, body: Option<&[u8]>) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut v = b"p2prs-broadcast-v1\0".to_vec();
    v.extend_from_slice(&origin.id.0.to_be_bytes());
    v.extend_from_slice(origin.addr.at.to_string().as_bytes());
    v.push(0);
    if let Some(k) = &origin.addr.key {
        v.extend_from_slice(k.as_bytes());
    }
    v.extend_from_slice(kind.as_bytes());
    v.push(0);
    v.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
    v.push(0);
    match body {
        Some(b) => {
            v.push(1);
            v.extend_from_slice(&Sha256::digest(b));
        }
        None => v.push(0),
    }
    v
}

#[derive(Serialize, Deserialize)]
struct SizeNews {
    size: usize,
    epoch: u64,
    #[serde(default)]
    #[serde(with = "msg::peers")]
    joined: Vec<RPeer>,
    #[serde(default)]
    left: Vec<NodeId>,
    /// The digest of the whole member list after the count (hex), which
    /// the root's signature of the news covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
}

impl From<News<Ep>> for SizeNews {
    fn from(n: News<Ep>) -> SizeNews {
        SizeNews {
            size: n.size,
            epoch: n.epoch,
            joined: n.joined,
            left: n.left,
            digest: n.digest.map(|d| crate::identity::hex(&d)),
        }
    }
}

impl From<SizeNews> for News<Ep> {
    fn from(n: SizeNews) -> News<Ep> {
        News {
            size: n.size,
            epoch: n.epoch,
            joined: n.joined,
            left: n.left,
            digest: n.digest.as_deref().and_then(unhex_digest),
        }
    }
}

/// A member list's digest from hex; anything else is no digest.
fn unhex_digest(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(d)
}

/// A node's member list (the answer to `p2prs.members`, in the body).
#[derive(Serialize, Deserialize)]
struct MembersReply {
    /// The count it is.
    epoch: u64,
    #[serde(with = "msg::peers")]
    members: Vec<RPeer>,
}

/// This node's place in a ring.
struct Ring {
    routing: RoutingState<Ep>,
    stabilizer: Stabilizer,
    reservations: Reservations<Ep>,
    /// The size and members last counted by the root (or here, at the root).
    census: Census<Ep>,
    /// Neighbours dropped lately because they did not answer.
    lost: Lost,
}

impl Ring {
    fn new(routing: RoutingState<Ep>, cfg: &crate::config::Config, lost_ms: u64) -> Ring {
        let census = Census::new(routing.me());
        Ring {
            routing,
            stabilizer: Stabilizer::new(cfg.fingers_per_round)
                .with_max_finger_period(cfg.max_finger_period),
            reservations: Reservations::new(),
            census,
            lost: Lost::new(lost_ms),
        }
    }

    fn is_root(&self) -> bool {
        self.routing.owns(alloc::FIRST_ID)
    }

    /// The key that `id` is bound to here, if this node knows one: its own,
    /// a neighbour's, a finger's, a counted member's or a reservation's.
    fn bound_key(&self, id: NodeId) -> Option<PublicKey> {
        let r = &self.routing;
        let reserved = || {
            self.reservations
                .iter()
                .find(|res| res.id == id)
                .and_then(|res| res.claimant.key)
        };
        // No ring member holds an ID strictly between our predecessor and
        // us (it would be our predecessor): a successor list that still
        // names one is stale (the node left), and only a grant this node
        // has pending binds it.
        if r.predecessor().is_some_and(|p| id.in_open(p.id, r.me().id)) {
            return reserved();
        }
        std::iter::once(r.me())
            .chain(r.predecessor())
            .chain(r.successors())
            .chain(r.fingers().iter().flatten())
            .find(|p| p.id == id)
            .and_then(|p| p.addr.key)
            .or_else(|| self.census.members().get(&id).and_then(|e| e.key))
            .or_else(reserved)
    }

    /// Whether `grant` proves that `id` was given to `key` by a node this
    /// node knows (or, for the root's own ID, by the root itself).
    fn grant_holds(&self, id: NodeId, key: PublicKey, grant: &Grant) -> bool {
        let Some(by_key) = grant.by.addr.key else {
            return false;
        };
        let Some(sig) = unhex_sig(&grant.sig) else {
            return false;
        };
        if !by_key.verify(&grant_bytes(id, &key), &sig) {
            return false;
        }
        let self_granted = grant.by.id == id && by_key == key;
        if self_granted {
            id <= self.lowest_known() && self.may_hold(id, Some(key))
        } else {
            self.bound_key(grant.by.id) == Some(by_key)
        }
    }

    /// Whether `key` may speak for `id`: no other key is bound to it here.
    fn may_hold(&self, id: NodeId, key: Option<PublicKey>) -> bool {
        match (self.bound_key(id), key) {
            (Some(bound), Some(k)) => bound == k,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// The lowest ID this node knows in the ring (the root's, as far as it can tell).
    fn lowest_known(&self) -> NodeId {
        let r = &self.routing;
        std::iter::once(r.me())
            .chain(r.predecessor())
            .chain(r.successors())
            .chain(r.fingers().iter().flatten())
            .map(|p| p.id)
            .chain(self.census.members().keys().next().copied())
            .min()
            .unwrap_or(alloc::FIRST_ID)
    }
}

/// Most jobs waiting for the stabilizer thread. Stabilize and recount jobs
/// are coalesced (one of each at most) and pokes too (one per address), so
/// only broadcasts to forward can fill it; past it, they are dropped and
/// counted (see `docs/robustness.md`).
pub(crate) const RING_JOBS: usize = 256;

enum Job {
    /// Forward a broadcast down the tree below `limit`.
    Forward {
        limit: NodeId,
        origin: RPeer,
        kind: String,
        data: Value,
        body: Option<Vec<u8>>,
        sig: Option<String>,
    },
    /// Run a stabilizer round now.
    StabilizeNow,
    /// Tell the root to count again (or count, if this node is the root).
    Recount,
    /// At the root: its census has work due at this time (the node's
    /// milliseconds): publish joins, or count again.
    CensusAt(u64),
    /// Ask this peer to stabilize now.
    Poke(RPeer),
    /// A node joined right after this peer: ask it to stabilize at once
    /// (a step that no spacing holds back), so that it points at the
    /// joiner before news goes round.
    Link(RPeer),
    /// A node joined right after this one (a `Link` from the successor):
    /// a stabilize step at once.
    StepNow,
    /// This node notified us from before our predecessor: check the
    /// predecessor now, and take this one if it is gone.
    CheckPredecessor(RPeer),
    /// Another live node holds this node's ID and the ring reaches it (see
    /// `ring::stabilize::displaced_by`): give the ID up and join again
    /// through `via`, the successor that names the other.
    Rejoin { via: RPeer, other: RPeer },
    /// Size news from `origin`, which is above the lowest ID known here:
    /// applied and forwarded if a lookup of ID 0 finds `origin` (the root
    /// died and the next node took over), dropped otherwise.
    VetRoot {
        limit: NodeId,
        origin: RPeer,
        data: Value,
        body: Option<Vec<u8>>,
        sig: Option<String>,
    },
}

/// The ring side of a node.
pub(crate) struct Chord {
    ring: RwLock<Option<Ring>>,
    preferred: Option<NodeId>,
    /// Left on purpose: no ring is created implicitly any more.
    left: AtomicBool,
    /// Held by `join`, `leave` and a rejoin for their whole run, so that a
    /// program's join or leave and the node's own rejoin (see [`rejoin`])
    /// never interleave.
    membership: Mutex<()>,
    /// When this node last gave its ID up to a node on the same ID (or
    /// declined to, holding an ID it asked for): at most one such step in
    /// [`REJOIN_SPACING`].
    displaced_at: Mutex<Option<Instant>>,
    changed: Condvar,
    changed_lock: Mutex<()>,
    /// The stabilizer's jobs: a list that allocates as jobs come (a
    /// preallocated queue of [`RING_JOBS`] would cost every node about
    /// 50 KB), bounded by [`Chord::queue`], which holds `jobs_tx`'s lock
    /// to check the length and send.
    jobs_tx: Mutex<Sender<Job>>,
    jobs_rx: Receiver<Job>,
    /// A `StabilizeNow` is queued or deferred: another is not queued.
    stabilize_pending: AtomicBool,
    /// A `StepNow` is queued: another is not queued.
    step_pending: AtomicBool,
    /// A `Recount` is queued or deferred: another is not queued.
    recount_pending: AtomicBool,
    /// A `CheckPredecessor` is queued: another is not queued.
    check_pending: AtomicBool,
    /// Addresses with a `Poke` queued.
    pokes_pending: Mutex<HashSet<SocketAddr>>,
    /// Jobs dropped because the queue was full.
    jobs_dropped: AtomicU64,
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    started: Instant,
    /// Connections to ring neighbours, pinned so that neither the idle
    /// timeout nor the limit on temporary connections closes them.
    pinned: Mutex<HashMap<NodeId, Arc<Conn>>>,
    /// The grant of this node's ID, shown in its notifies.
    grant: Mutex<Option<Grant>>,
    /// Member lists served lately: a token bucket of [`MEMBER_LISTS_PER_SEC`].
    lists: Mutex<(f64, Instant)>,
}

/// Most member lists (`p2prs.members`) a node serves a second, over all its
/// connections (with bursts of as many): each is a large answer (about 150
/// bytes a member), so a peer that asks over and over gets `busy`.
pub(crate) const MEMBER_LISTS_PER_SEC: f64 = 32.0;

impl Chord {
    /// The sizes of the ring side's tables that grow with peers (for the
    /// tests' table sizes).
    #[cfg(feature = "unstable-testing")]
    pub(crate) fn table_sizes(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("ring pins", self.pinned.lock().len()),
            ("pokes queued", self.pokes_pending.lock().len()),
            ("ring jobs", self.jobs_rx.len()),
        ]
    }

    pub(crate) fn new(preferred: Option<NodeId>) -> Chord {
        let (jobs_tx, jobs_rx) = unbounded();
        let (stop_tx, stop_rx) = bounded(0);
        Chord {
            ring: RwLock::new(None),
            preferred,
            left: AtomicBool::new(false),
            membership: Mutex::new(()),
            displaced_at: Mutex::new(None),
            changed: Condvar::new(),
            changed_lock: Mutex::new(()),
            jobs_tx: Mutex::new(jobs_tx),
            jobs_rx,
            stabilize_pending: AtomicBool::new(false),
            step_pending: AtomicBool::new(false),
            recount_pending: AtomicBool::new(false),
            check_pending: AtomicBool::new(false),
            pokes_pending: Mutex::new(HashSet::new()),
            jobs_dropped: AtomicU64::new(0),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            started: Instant::now(),
            pinned: Mutex::new(HashMap::new()),
            grant: Mutex::new(None),
            lists: Mutex::new((MEMBER_LISTS_PER_SEC, Instant::now())),
        }
    }

    /// Whether a member list may be served now (takes a token).
    fn may_serve_list(&self) -> bool {
        let mut b = self.lists.lock();
        let now = Instant::now();
        let earned = now.saturating_duration_since(b.1).as_secs_f64() * MEMBER_LISTS_PER_SEC;
        b.0 = (b.0 + earned).min(MEMBER_LISTS_PER_SEC);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Stop the stabilizer thread (it is joined with the node's other
    /// threads) and forget the ring: a node that is shut down has no ID.
    pub(crate) fn stop(&self) {
        self.stop_tx.lock().take();
        self.pin_neighbours(&[], |_| None);
        self.ring.write().take();
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn bump(&self) {
        let _g = self.changed_lock.lock();
        self.changed.notify_all();
    }

    /// Pin the connections to `neighbours` and unpin the others.
    fn pin_neighbours(&self, neighbours: &[RPeer], find: impl Fn(&Ep) -> Option<Arc<Conn>>) {
        let mut pinned = self.pinned.lock();
        pinned.retain(|id, c| {
            let keep = !c.is_closed() && neighbours.iter().any(|p| p.id == *id);
            if !keep {
                c.unpin();
            }
            keep
        });
        for p in neighbours {
            if pinned.contains_key(&p.id) {
                continue;
            }
            if let Some(c) = find(&p.addr) {
                c.pin();
                pinned.insert(p.id, c);
            }
        }
    }

    /// Queue `job` for the stabilizer thread, unless the same job waits
    /// already; never blocks (a full queue drops the job, with a count).
    fn queue(&self, job: Job) {
        let fresh = match &job {
            Job::StabilizeNow => !self.stabilize_pending.swap(true, Ordering::AcqRel),
            Job::StepNow => !self.step_pending.swap(true, Ordering::AcqRel),
            Job::Recount => !self.recount_pending.swap(true, Ordering::AcqRel),
            Job::CheckPredecessor(_) => !self.check_pending.swap(true, Ordering::AcqRel),
            Job::Poke(p) => self.pokes_pending.lock().insert(p.addr.at),
            // A second `Rejoin` finds the ID given up already (see `rejoin`).
            Job::Forward { .. }
            | Job::VetRoot { .. }
            | Job::CensusAt(_)
            | Job::Link(_)
            | Job::Rejoin { .. } => true,
        };
        if !fresh {
            return;
        }
        let tx = self.jobs_tx.lock();
        if tx.len() >= RING_JOBS {
            drop(tx);
            self.taken(&job);
            let dropped = self.jobs_dropped.fetch_add(1, Ordering::AcqRel) + 1;
            if dropped.is_power_of_two() {
                log::warn!(
                    "the ring's job queue is full ({RING_JOBS} jobs): dropped {dropped} so far"
                );
            }
            return;
        }
        // The receiver lives as long as `self`: this does not fail.
        let _ = tx.send(job);
    }

    /// `job` has left the queue: the same job may be queued again.
    fn taken(&self, job: &Job) {
        match job {
            Job::StabilizeNow => self.stabilize_pending.store(false, Ordering::Release),
            Job::StepNow => self.step_pending.store(false, Ordering::Release),
            Job::Recount => self.recount_pending.store(false, Ordering::Release),
            Job::CheckPredecessor(_) => self.check_pending.store(false, Ordering::Release),
            Job::Poke(addr) => {
                self.pokes_pending.lock().remove(&addr.addr.at);
            }
            Job::Forward { .. }
            | Job::VetRoot { .. }
            | Job::CensusAt(_)
            | Job::Link(_)
            | Job::Rejoin { .. } => {}
        }
    }
}

// ---- public operations ------------------------------------------------------

/// Tell every open connection this node's new ID (or that it has none).
fn announce(n: &NodeInner, id: Option<NodeId>) {
    let msg = Message::new(ANNOUNCE, json!({ "id": id }));
    for c in n.transport.all() {
        let _ = super::send_message(&c, msg.clone());
    }
}

fn me_peer(n: &NodeInner, id: NodeId) -> RPeer {
    // Behind NAT: the public endpoint learnt from the rendezvous.
    ring::Peer::new(id, me_ep(n))
}

fn me_ep(n: &NodeInner) -> Ep {
    Ep {
        at: n.transport.advertised_addr(),
        key: n.key(),
    }
}

fn install(n: &NodeInner, routing: RoutingState<Ep>) -> NodeId {
    let id = routing.me().id;
    let cfg = &n.transport.cfg;
    // Long enough for a live node that its neighbours timed out once to
    // link itself back in (see `ring::resolve`).
    let lost_ms = (cfg.stabilize_interval * 2 + cfg.ring_timeout).as_millis() as u64;
    *n.chord.ring.write() = Some(Ring::new(routing, cfg, lost_ms));
    n.chord.left.store(false, Ordering::Release);
    n.transport.set_my_id(Some(id));
    announce(n, Some(id));
    n.emit(super::Event::Joined { id });
    n.chord.bump();
    id
}

fn check_running(n: &NodeInner) -> Result<()> {
    if n.stopped.load(Ordering::Acquire) {
        Err(Error::Shutdown)
    } else {
        Ok(())
    }
}

pub(crate) fn create(n: &NodeInner) -> Result<NodeId> {
    check_running(n)?;
    let mut g = n.chord.ring.write();
    if let Some(r) = g.as_ref() {
        return Err(Error::InvalidArgument(format!(
            "this node is in a network already, with ID {}",
            r.routing.me().id
        )));
    }
    let id = n.chord.preferred.unwrap_or(alloc::FIRST_ID);
    let me = me_peer(n, id);
    *n.chord.grant.lock() = make_grant(n, &me, id, me.addr.key);
    let routing = RoutingState::new(me, n.transport.cfg.successor_list_len);
    drop(g.take());
    drop(g);
    log::info!("started a new network; this node's ID is {id}");
    let id = install(n, routing);
    // The ring of one is counted: joins are counted at once from the first.
    if let Some(r) = n.chord.ring.write().as_mut() {
        r.census.founded(id);
    }
    Ok(id)
}

pub(crate) fn my_id(n: &NodeInner) -> Option<NodeId> {
    n.chord.ring.read().as_ref().map(|r| r.routing.me().id)
}

pub(crate) fn peer_book(n: &NodeInner) -> Vec<Peer> {
    n.chord
        .ring
        .read()
        .as_ref()
        .map(|r| r.routing.neighbours().iter().map(to_pub).collect())
        .unwrap_or_default()
}

pub(crate) fn network_size(n: &NodeInner) -> usize {
    n.chord.ring.read().as_ref().map_or(0, |r| r.census.size())
}

pub(crate) fn stabilizer_rounds(n: &NodeInner) -> u64 {
    n.chord
        .ring
        .read()
        .as_ref()
        .map_or(0, |r| r.stabilizer.rounds())
}

/// One request of the ring protocol, with the ring timeout, to the node at
/// `to.at`, which must prove `to.key` when one is given.
fn rpc(n: &NodeInner, to: Ep, kind: &str, mut data: Value) -> Result<Message> {
    if let (Some(id), Value::Object(map)) = (my_id(n), &mut data) {
        map.insert("from_id".into(), json!(id));
    }
    let msg = Message::new(kind, data);
    let timeout = n.transport.cfg.ring_timeout;
    match n
        .transport
        .connect_to(to.at, to.key)?
        .request(msg.clone(), timeout)
    {
        // The connection was closed under us (idle or over the limit of
        // temporary connections); the ring's requests may be repeated.
        Err(Error::ConnectionClosed { .. }) if !n.transport.is_stopping() => {
            n.transport.connect_to(to.at, to.key)?.request(msg, timeout)
        }
        other => other,
    }
}

/// An address the user gave, whose key is not known yet.
fn unkeyed(at: SocketAddr) -> Ep {
    Ep { at, key: None }
}

fn rpc_peer(n: &NodeInner, p: &RPeer, kind: &str, data: Value) -> Result<Message> {
    // The peer must prove the key the ring binds to it.
    rpc(n, p.addr, kind, data)
}

/// Ask the node at `to` for its predecessor and successor list.
fn neighbours_of(n: &NodeInner, to: Ep) -> Result<NeighboursReply> {
    rpc(n, to, NEIGHBOURS, json!({}))?.data()
}

/// Run a lookup to the end, querying peers over the network.
fn drive(n: &NodeInner, mut lookup: Lookup<Ep>) -> Result<(RPeer, u32, Vec<NodeId>)> {
    drive_lookup(n, &mut lookup)
}

/// [`drive`], leaving the lookup to the caller (to ask who decided it).
fn drive_lookup(n: &NodeInner, lookup: &mut Lookup<Ep>) -> Result<(RPeer, u32, Vec<NodeId>)> {
    let target = lookup.target();
    loop {
        match lookup.next() {
            LookupStep::Query(p) => {
                match rpc_peer(n, &p, NEXT_HOP, json!({ "target": target }))
                    .and_then(|m| m.data::<NextHopReply>())
                {
                    Ok(r) => lookup.on_reply(p.id, r.route),
                    Err(e) => {
                        log::debug!("lookup of {target}: {} ({}) failed: {e}", p.id, p.addr);
                        lookup.on_failure(p.id);
                    }
                }
            }
            LookupStep::Done { owner, hops } => {
                return Ok((owner, hops, lookup.failed_peers().to_vec()));
            }
            LookupStep::Failed(e) => {
                return Err(Error::Routing(format!("looking up {target}: {e}")));
            }
        }
    }
}

fn forget(n: &NodeInner, failed: &[NodeId]) {
    if failed.is_empty() {
        return;
    }
    let now = n.chord.now_ms();
    if let Some(r) = n.chord.ring.write().as_mut() {
        for id in failed {
            let rt = &r.routing;
            if rt.predecessor().is_some_and(|p| p.id == *id)
                || rt.successors().iter().any(|p| p.id == *id)
            {
                r.lost.add(*id, now);
            }
            r.routing.peer_failed(*id);
            r.census.suspect(*id);
        }
    }
}

pub(crate) fn lookup(n: &NodeInner, id: NodeId) -> Result<Route> {
    let start = {
        let g = n.chord.ring.read();
        let r = g.as_ref().ok_or(Error::NotJoined)?;
        Lookup::new(id, &r.routing)
    };
    let (owner, hops, failed) = drive(n, start)?;
    forget(n, &failed);
    Ok(Route {
        owner: to_pub(&owner),
        hops,
    })
}

/// How many times [`conn_for_id`] looks an ID up before it gives up with
/// a retriable error (the ring is settling around the ID).
const RESOLVE_TRIES: u32 = 3;

/// The connection to the node holding exactly `id`.
///
/// [`Error::NoSuchNode`] only when two nodes agree that none holds it (see
/// [`vouch`]); while the ring settles around `id` (a stale route, a dead
/// owner, an owner that lost its predecessor), the lookup is repeated a few
/// times, and then the error is a retriable one ([`Error::is_retriable`]).
pub(crate) fn conn_for_id(n: &NodeInner, id: NodeId) -> Result<Arc<Conn>> {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Route);
    let known = {
        let g = n.chord.ring.read();
        let r = g.as_ref().ok_or(Error::NotJoined)?;
        if r.routing.me().id == id {
            Some(r.routing.me().clone())
        } else {
            // A neighbour, or else a member of the root's last count (the
            // census every node keeps from the signed size news): a first
            // contact then needs no lookup. The node dialled must prove the
            // key the entry names and still say it holds the ID; a stale
            // entry falls back to the lookup below.
            r.routing.neighbour(id).cloned().or_else(|| {
                r.census
                    .members()
                    .get(&id)
                    .filter(|_| !r.census.suspected(id))
                    .map(|addr| RPeer { id, addr: *addr })
            })
        }
    };
    if let Some(p) = known {
        match n.transport.connect_to(p.addr.at, p.addr.key) {
            // The peer must still say it holds the ID: one that left the
            // ring announced so on its connections.
            Ok(c) if c.peer_id() == Some(id) => return Ok(c),
            Ok(_) => {
                log::debug!("peer book entry {id} ({}) no longer holds it", p.addr);
                forget(n, &[id]);
            }
            Err(e) => {
                log::debug!("peer book entry {id} ({}) unreachable: {e}", p.addr);
                forget(n, &[id]);
            }
        }
    }
    let pause = n.transport.cfg.stabilize_interval / 4;
    let mut last = None;
    for attempt in 0..RESOLVE_TRIES {
        if attempt > 0 {
            check_running(n)?;
            std::thread::sleep(pause.min(Duration::from_millis(25 << attempt)));
        }
        match resolve(n, id) {
            Ok(c) => return Ok(c),
            Err(e) if !e.is_retriable() => return Err(e),
            Err(e) => {
                log::debug!("resolving ID {id} (try {}): {e}", attempt + 1);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Routing(format!("ID {id}: no route"))))
}

/// One try of [`conn_for_id`]: look `id` up, check the owner, connect.
fn resolve(n: &NodeInner, id: NodeId) -> Result<Arc<Conn>> {
    let route = lookup(n, id)?;
    let mut owner = route.owner;
    if owner.id != id {
        owner = match vouch(n, id, &owner)? {
            Some(p) => p,
            None => return Err(Error::NoSuchNode(id)),
        };
    }
    let c = match n.transport.connect_to(owner.addr, owner.key) {
        Ok(c) => c,
        Err(e) => {
            // A dead node still named by a stale successor list: route
            // around it next time.
            forget(n, &[owner.id]);
            return Err(e);
        }
    };
    match c.peer_id() {
        Some(other) if other != id => {
            forget(n, &[id]);
            Err(Error::Routing(format!(
                "the node at {} holds ID {other}, not {id}: the ring is settling",
                owner.addr
            )))
        }
        _ => Ok(c),
    }
}

/// The lookup of `id` ended at `owner`, the first node after it: does a
/// node hold `id`? `Some` if the owner's predecessor does (it may have
/// joined a moment ago). `None` (no node holds it) only if two nodes agree:
/// the owner knows its predecessor `p`, `id` lies strictly between them, and
/// `p` names the owner as its successor. Anything else is the ring settling:
/// a retriable error.
fn vouch(n: &NodeInner, id: NodeId, owner: &Peer) -> Result<Option<Peer>> {
    let settling = |why: &str| {
        Err(Error::Routing(format!(
            "ID {id}: {why}; the ring is settling"
        )))
    };
    let reply = neighbours_of(n, owner_ep(owner))?;
    let p = match vouch_owner(id, owner.id, reply.me.id, reply.pred, &reply.lost) {
        Verdict::Holds(p) => return Ok(Some(to_pub(&p))),
        Verdict::AskPred(p) => p,
        Verdict::Absent => return Ok(None),
        Verdict::Settling(why) => return settling(why),
    };
    let back = neighbours_of(n, p.addr)?;
    match vouch_pred(id, owner.id, p.id, back.me.id, &back.successors, &back.lost) {
        Verdict::Holds(s) => Ok(Some(to_pub(&s))),
        Verdict::Absent => Ok(None),
        Verdict::AskPred(_) => settling("the answers went round"),
        Verdict::Settling(why) => settling(why),
    }
}

fn owner_ep(p: &Peer) -> Ep {
    Ep {
        at: p.addr,
        key: p.key,
    }
}

pub(crate) fn join(n: &NodeInner, addrs: &[SocketAddr]) -> Result<NodeId> {
    let _one = n.chord.membership.lock();
    join_locked(n, addrs, true)
}

/// [`join`], with the membership lock held; `wait`: wait (bounded) until
/// the ring links this node in from behind before returning.
fn join_locked(n: &NodeInner, addrs: &[SocketAddr], wait: bool) -> Result<NodeId> {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Join);
    check_running(n)?;
    if let Some(id) = my_id(n) {
        return Err(Error::InvalidArgument(format!(
            "this node is in a network already, with ID {id}"
        )));
    }
    let mut why = Vec::new();
    for &addr in addrs {
        if addr == n.transport.local_addr() {
            why.push(format!("{addr}: that is this node's own address"));
            continue;
        }
        match join_via(n, addr, wait) {
            Ok(id) => return Ok(id),
            Err(e @ Error::IdTaken(_)) | Err(e @ Error::Shutdown) => return Err(e),
            // With one address, a failed handshake (a network key that
            // does not match, say) is the answer itself, typed.
            Err(e @ Error::Handshake { .. }) if addrs.len() == 1 => return Err(e),
            Err(e) => why.push(format!("{addr}: {e}")),
        }
    }
    Err(Error::JoinFailed(why.join("; ")))
}

fn join_via(n: &NodeInner, addr: SocketAddr, wait: bool) -> Result<NodeId> {
    let cfg = &n.transport.cfg;
    let target = alloc::claim_target(n.chord.preferred);
    let mut last = Error::JoinFailed("no attempt".into());
    for attempt in 0..8u32 {
        if attempt > 0 {
            // The ring is settling (a claim reached a node whose range just
            // changed): give the stabilizer a round.
            // Back off from 25 ms, doubling, at most a stabilizer period.
            let pause = Duration::from_millis(25 << attempt.min(6));
            std::thread::sleep(pause.min(cfg.stabilize_interval));
        }
        let first: NextHopReply =
            rpc(n, unkeyed(addr), NEXT_HOP, json!({ "target": target }))?.data()?;
        let mut lookup = Lookup::via(target, first.from.clone());
        let _ = lookup.next();
        lookup.on_reply(first.from.id, first.route);
        let (owner, decided_by) = match drive_lookup(n, &mut lookup) {
            Ok((owner, _, _)) => (owner, lookup.decided_by().cloned()),
            Err(e) => {
                last = e;
                continue;
            }
        };
        let claim = ClaimRequest {
            id: n.chord.preferred,
            addr: n.transport.advertised_addr(),
        };
        let answer = rpc(n, owner.addr, CLAIM, serde_json::to_value(&claim)?);
        let granted: ClaimReply = match answer {
            Ok(m) => m.data()?,
            Err(Error::Remote { code, message }) => {
                if code == "id_taken" {
                    return Err(Error::IdTaken(claim.id.unwrap_or(target)));
                }
                last = Error::Remote { code, message };
                continue;
            }
            Err(e) if e.is_retriable() => {
                // The owner of the claim target is dead (the root, say) and
                // the node that named it has not noticed yet: ask that node
                // to stabilize now, so that the next node takes the range
                // over, and try again.
                log::debug!("claiming an ID at {} ({}): {e}", owner.id, owner.addr);
                if let Some(p) = decided_by.filter(|p| p.id != owner.id) {
                    let _ = rpc_peer(n, &p, STABILIZE_NOW, json!({}));
                }
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let id = granted.id;
        // Not after shutdown has begun: the ring would outlive the stop.
        check_running(n)?;
        *n.chord.grant.lock() = granted.grant.clone();
        let mut routing = RoutingState::new(me_peer(n, id), cfg.successor_list_len);
        routing.adopt_successors(granted.owner.clone(), granted.successors);
        install(n, routing);
        if let Some(r) = n.chord.ring.write().as_mut() {
            r.census.set_size(granted.size.max(1) + 1);
        }
        let me = me_peer(n, id);
        match rpc_peer(n, &granted.owner, NOTIFY, notify_data(n, &me)) {
            // The owner took this node as its predecessor and names the
            // node before it: this node is linked in. (The owner has asked
            // that node to stabilize, so it points here within a round trip.)
            Ok(answer) => {
                if let Ok(Some(pred)) = answer.data_value().get("pred").map_or(Ok(None), |v| {
                    serde_json::from_value::<Option<msg::WirePeer>>(v.clone())
                        .map(|p| p.map(RPeer::from))
                }) {
                    if let Some(r) = n.chord.ring.write().as_mut() {
                        r.routing.notify(pred);
                    }
                }
            }
            // The granter died after the grant (the root, say): stabilize
            // at once with the next node of its list, which links this node
            // in before the new owner of the range can give the ID again.
            Err(e) => {
                log::warn!("notifying {} after joining: {e}", granted.owner.id);
                n.chord.queue(Job::StabilizeNow);
            }
        }
        // The root counts the ring when it links a joiner in itself; a
        // joiner that took its ID elsewhere tells the root.
        if n.chord.preferred.is_some() || granted.owner.id != alloc::FIRST_ID {
            n.chord.queue(Job::Recount);
        }
        // Only an owner that could not name this node's predecessor (it
        // has lost its own) leaves it to the predecessor's next round.
        if wait {
            wait_for_predecessor(n, cfg.stabilize_interval * 4);
        }
        log::info!("joined the network through {addr}; this node's ID is {id}");
        return Ok(id);
    }
    Err(last)
}

/// Wait (bounded) until the ring links this node in from behind.
fn wait_for_predecessor(n: &NodeInner, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut g = n.chord.changed_lock.lock();
    loop {
        let linked = n
            .chord
            .ring
            .read()
            .as_ref()
            .is_none_or(|r| r.routing.predecessor().is_some());
        if linked || n.chord.changed.wait_until(&mut g, deadline).timed_out() {
            return;
        }
    }
}

pub(crate) fn leave(n: &NodeInner) -> Result<()> {
    let _one = n.chord.membership.lock();
    check_running(n)?;
    let Some(r) = n.chord.ring.write().take() else {
        return Err(Error::NotJoined);
    };
    n.chord.left.store(true, Ordering::Release);
    n.chord.pin_neighbours(&[], |_| None);
    announce(n, None);
    n.transport.set_my_id(None);
    let me = r.routing.me().clone();
    let news = Leaving {
        peer: me.clone(),
        pred: r.routing.predecessor().cloned(),
        successors: r.routing.successors().to_vec(),
    };
    let data = serde_json::to_value(&news)?;
    let mut told = Vec::new();
    for p in news.pred.iter().chain(news.successors.first()) {
        if told.contains(&p.id) {
            continue;
        }
        told.push(p.id);
        if let Err(e) = rpc_peer(n, p, LEAVING, data.clone()) {
            log::warn!("telling {} that this node leaves: {e}", p.id);
        }
    }
    log::info!("left the network (ID {} is free again)", me.id);
    n.emit(super::Event::Left);
    Ok(())
}

/// At most one rejoin (or one warning that the node keeps an ID it asked
/// for) in this time: a successor that keeps naming another node on this
/// node's ID (a hostile one, say) cannot move it from ID to ID.
const REJOIN_SPACING: Duration = Duration::from_secs(30);

/// Give this node's ID up to `other`, which holds it too and which the
/// ring reaches (its successor `via` names `other` as its predecessor), and
/// join again under a new ID. No `LEAVING` is sent: it would name the ID,
/// which `other` keeps; the neighbours find this node gone (it answers
/// with another ID, or `NotJoined`) as they would a dead one. The node
/// emits `Left`, then `Joined` with its new ID; if the join fails, it
/// stays out and says so, and `join_network` may be called again. A node
/// that asked for its ID (`NodeBuilder::id`) keeps it and warns instead.
/// A program's `join_network` or `leave` under way wins: the rejoin is
/// dropped (the next stabilize finds the other node again if it matters).
fn rejoin(n: &NodeInner, via: RPeer, other: RPeer) {
    let Some(_one) = n.chord.membership.try_lock() else {
        return;
    };
    {
        let mut last = n.chord.displaced_at.lock();
        if last.is_some_and(|t| t.elapsed() < REJOIN_SPACING) {
            return;
        }
        *last = Some(Instant::now());
    }
    if n.chord.preferred == Some(other.id) {
        log::warn!(
            "node ID {} is held by another node too ({}), which the ring reaches; this node \
             asked for that ID and keeps it: it is out of reach until the other leaves",
            other.id,
            other.addr
        );
        return;
    }
    let boot: Vec<SocketAddr> = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_ref() else { return };
        if r.routing.me().id != other.id {
            return;
        }
        let me = r.routing.me().id;
        // The successor that named the other goes last.
        let mut boot = Vec::new();
        for p in r.routing.successors() {
            if p.id != me && p.addr.at != via.addr.at && !boot.contains(&p.addr.at) {
                boot.push(p.addr.at);
            }
        }
        boot.push(via.addr.at);
        n.chord.left.store(true, Ordering::Release);
        *g = None;
        boot
    };
    n.chord.pin_neighbours(&[], |_| None);
    announce(n, None);
    n.transport.set_my_id(None);
    log::warn!(
        "node ID {} is held by another node too ({}), which the ring reaches: this node \
         gives the ID up and joins again",
        other.id,
        other.addr
    );
    n.emit(super::Event::Left);
    // No wait for the predecessor's link: this runs on the stabilizer
    // thread, whose jobs the join may have queued.
    match join_locked(n, &boot, false) {
        Ok(id) => log::warn!("joined again under node ID {id} (was {})", other.id),
        Err(e) => log::warn!(
            "joining again after giving node ID {} up: {e}; this node is out of the network \
             until join_network is called",
            other.id
        ),
    }
}

/// As if another live node held this node's ID and its successor named
/// that node: give the ID up and join again through the successor (the
/// tests' way to run [`rejoin`], whose cause, two nodes on one ID, the
/// claim rules only let happen when a root dies at the wrong moment).
#[cfg(feature = "unstable-testing")]
pub(crate) fn yield_id(n: &NodeInner) -> Result<()> {
    let (via, me) = {
        let g = n.chord.ring.read();
        let r = g.as_ref().ok_or(Error::NotJoined)?;
        (r.routing.successor().clone(), r.routing.me().clone())
    };
    // Each call is a fresh case: not held back by the last one.
    *n.chord.displaced_at.lock() = None;
    rejoin(n, via, me);
    Ok(())
}

pub(crate) fn broadcast(n: &NodeInner, msg: Message) -> Result<usize> {
    let (kind, data, body) = msg.into_parts();
    if kind.starts_with(super::RESERVED_PREFIX) {
        return Err(Error::InvalidArgument(format!(
            "{kind:?} is a reserved type"
        )));
    }
    let me = {
        let g = n.chord.ring.read();
        g.as_ref().ok_or(Error::NotJoined)?.routing.me().clone()
    };
    let sig = sign_broadcast(n, &me, &kind, &data, body.as_deref());
    Ok(spread(n, &me, me.id, &kind, data, body, sig))
}

/// This node's signature of a broadcast it originates (none in plaintext mode).
/// The size news a `p2prs.size` broadcast carries: in its body (JSON), or
/// in its data from a node that sends it there. The body has room for the
/// joiners of a large ring, which can exceed the header's size limit.
fn size_news(data: &Value, body: Option<&[u8]>) -> serde_json::Result<SizeNews> {
    match body {
        Some(b) => serde_json::from_slice(b),
        None => serde_json::from_value(data.clone()),
    }
}

fn sign_broadcast(
    n: &NodeInner,
    me: &RPeer,
    kind: &str,
    data: &Value,
    body: Option<&[u8]>,
) -> Option<String> {
    me.addr.key?;
    let sig = n
        .transport
        .secure
        .identity()
        .sign(&signed_bytes(me, kind, data, body));
    Some(crate::identity::hex(&sig))
}

/// Whether a broadcast's signature is its origin's, and the origin may hold its ID here.
fn verify_broadcast(
    r: &Ring,
    env: &Envelope,
    body: Option<&[u8]>,
) -> std::result::Result<(), String> {
    let Some(key) = env.origin.addr.key else {
        return if r.routing.me().addr.key.is_none() {
            Ok(())
        } else {
            Err("it is not signed".into())
        };
    };
    let sig = env
        .sig
        .as_deref()
        .and_then(unhex_sig)
        .ok_or("it is not signed")?;
    if !key.verify(&signed_bytes(&env.origin, &env.kind, &env.data, body), &sig) {
        return Err("its signature does not verify".into());
    }
    if !r.may_hold(env.origin.id, Some(key)) {
        return Err(format!(
            "its origin claims ID {}, bound to another key",
            env.origin.id
        ));
    }
    Ok(())
}

fn unhex_sig(s: &str) -> Option<Vec<u8>> {
    if s.len() != 128 || !s.is_ascii() {
        return None;
    }
    (0..64)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Send an envelope to this node's children in the broadcast tree below `limit`.
fn spread(
    n: &NodeInner,
    origin: &RPeer,
    limit: NodeId,
    kind: &str,
    data: Value,
    body: Option<Vec<u8>>,
    sig: Option<String>,
) -> usize {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Broadcast);
    let targets = match n.chord.ring.read().as_ref() {
        Some(r) => broadcast_targets(&r.routing, limit),
        None => return 0,
    };
    let mut sent = 0;
    for (child, child_limit) in targets {
        let env = Envelope {
            limit: child_limit,
            origin: origin.clone(),
            kind: kind.to_string(),
            data: data.clone(),
            sig: sig.clone(),
        };
        let mut frame = Frame::new(
            Kind::Message,
            BROADCAST,
            serde_json::to_value(&env).unwrap_or_default(),
        );
        frame.body = body.clone();
        let send = |to: &RPeer| {
            n.transport
                .connect_to(to.addr.at, to.addr.key)
                .and_then(|c| c.send_bounded(&frame))
        };
        match send(&child) {
            Ok(()) => sent += 1,
            Err(e) => {
                // A dead child would take its whole subtree with it: hand its
                // part to the first live node after it instead.
                log::info!("broadcast to {} ({}): {e}", child.id, child.addr);
                forget(n, &[child.id]);
                let next = NodeId(child.id.0.wrapping_add(1));
                let heir = lookup(n, next)
                    .ok()
                    .map(|r| r.owner)
                    .filter(|o| o.id != child.id && o.id.in_open(child.id, child_limit));
                if let Some(h) = heir {
                    let h = ring::Peer::new(h.id, owner_ep(&h));
                    match send(&h) {
                        Ok(()) => sent += 1,
                        Err(e) => log::warn!("broadcast to {} ({}): {e}", h.id, h.addr),
                    }
                }
            }
        }
    }
    sent
}

mod driver;
mod msg;
mod serve;

pub(crate) use driver::spawn_stabilizer;
pub(crate) use serve::{handle, vet_hello_id};

#[cfg(test)]
mod tests {
    use super::*;

    fn forward() -> Job {
        Job::Forward {
            limit: NodeId(0),
            origin: peer(1, 1),
            kind: "B".into(),
            data: Value::Null,
            body: None,
            sig: None,
        }
    }

    fn peer(id: u64, port: u16) -> RPeer {
        ring::Peer::new(
            NodeId(id),
            Ep {
                at: SocketAddr::from(([127, 0, 0, 1], port)),
                key: None,
            },
        )
    }

    #[test]
    fn asks_to_stabilize_recount_or_poke_are_queued_once() {
        let c = Chord::new(None);
        let (a, b) = (peer(1, 1), peer(2, 2));
        for _ in 0..1000 {
            c.queue(Job::StabilizeNow);
            c.queue(Job::Recount);
            c.queue(Job::Poke(a.clone()));
            c.queue(Job::Poke(b.clone()));
        }
        assert_eq!(c.jobs_rx.len(), 4);
        // Once the stabilizer has taken one, the same ask is queued again.
        let job = c.jobs_rx.recv().unwrap();
        assert!(matches!(job, Job::StabilizeNow));
        c.taken(&job);
        c.queue(Job::StabilizeNow);
        c.queue(Job::StabilizeNow);
        assert_eq!(c.jobs_rx.len(), 4);
    }

    #[test]
    fn a_full_queue_drops_without_blocking_and_counts() {
        let c = Chord::new(None);
        for _ in 0..RING_JOBS + 44 {
            c.queue(forward());
        }
        assert_eq!(c.jobs_rx.len(), RING_JOBS);
        assert_eq!(c.jobs_dropped.load(Ordering::Acquire), 44);
        // A stabilize ask dropped for want of room may be asked again.
        c.queue(Job::StabilizeNow);
        assert_eq!(c.jobs_dropped.load(Ordering::Acquire), 45);
        let _ = c.jobs_rx.recv().unwrap();
        c.queue(Job::StabilizeNow);
        assert_eq!(c.jobs_rx.len(), RING_JOBS);
        assert_eq!(c.jobs_dropped.load(Ordering::Acquire), 45);
    }

    #[test]
    fn member_lists_are_served_at_a_bounded_rate() {
        let c = Chord::new(None);
        let served = (0..1000).filter(|_| c.may_serve_list()).count();
        assert!(
            served >= MEMBER_LISTS_PER_SEC as usize && served <= MEMBER_LISTS_PER_SEC as usize + 2,
            "{served}"
        );
    }
}

//! A seeded, deterministic in-memory network of many [`RoutingState`]s.
//!
//! Node `i` lives at address `i`. Messages are synchronous calls into the
//! other node's state; a dead node simply does not answer. The simulator
//! drives the same API the real node does: [`Stabilizer::round`] actions,
//! [`Lookup`] steps, [`alloc::claim`], `notify`, `peer_failed`. The clock is
//! a counter advanced by each round.
//!
//! Run with `cargo test --lib ring::sim -- --nocapture` to see the figures.

use super::alloc::{self, claim_target, ClaimError, Reservations};
use super::broadcast::broadcast_targets;
use super::census::{Census, News, Pace, Walk, WalkStep, WALK_EVERY};
use super::finger::finger_start;
use super::lookup::{Lookup, LookupError, LookupStep};
use super::resolve::{unsure, vouch_owner, vouch_pred, Lost, Verdict};
use super::stabilize::{
    displaced_by, on_predecessor_reply, on_stabilize_reply, Action, Stabilizer,
};
use super::{Peer, RoutingState, FINGER_COUNT};
use crate::id::NodeId;
use p2prs_rng::Rng;

/// Fake milliseconds per stabilizer round.
const ROUND_MS: u64 = 100;
/// How long an ID grant lasts.
const CLAIM_TTL_MS: u64 = 30 * ROUND_MS;

struct SimNode {
    state: RoutingState<usize>,
    stabilizer: Stabilizer,
    reservations: Reservations<usize>,
    census: Census<usize>,
    lost: Lost,
    alive: bool,
}

#[derive(Debug)]
enum JoinError {
    Lookup(LookupError),
    Claim(ClaimError),
    /// The owner found did not answer the claim.
    DeadOwner(Peer<usize>),
}

/// The whole network.
struct Net {
    nodes: Vec<SimNode>,
    rng: Rng,
    now_ms: u64,
    r: usize,
    fingers_per_round: usize,
    /// Queries sent by lookups (including failed ones).
    lookup_messages: u64,
    /// Per mille of requests that get no answer (a lost message, a peer
    /// too slow for the ring timeout).
    loss: usize,
    /// Per mille of notifies that arrive late: at the end of the round, in
    /// a random order (from senders that may have died since).
    late: usize,
    delayed: Vec<(usize, Peer<usize>, Peer<usize>)>,
    /// Nodes asked to stabilize now (their successor's list changed).
    pokes: Vec<Peer<usize>>,
    /// Pokes are dropped: successor lists behind a change lag by rounds
    /// (as when a node's extra rounds are spaced out).
    no_pokes: bool,
    rounds: u64,
    /// Requests the root's counts made.
    walk_requests: u64,
    /// A node asked the root to count again this round.
    recount_asked: bool,
    /// Nodes fill fingers from a current member list (as the node does).
    census_fingers: bool,
    /// Finger lookups run (`FixFinger` actions).
    finger_lookups: u64,
    /// Member lists asked of a neighbour, and taken.
    snapshots: (u64, u64),
    /// `SIM_TRACE=<id>`: print what happens around this ID.
    trace: Option<NodeId>,
    /// Nodes that found another live node on their ID (see
    /// `displaced_by`), with the successor that told them: at the end of
    /// the round each gives its ID up and joins again through it.
    displaced: Vec<(usize, Peer<usize>)>,
    /// Nodes that joined again under a new ID after being displaced.
    rejoins: usize,
}

/// The true ring: live IDs in order, to check the routing states against.
struct Oracle {
    ring: Vec<(NodeId, usize)>,
}

impl Oracle {
    fn index_of_owner(&self, key: NodeId) -> usize {
        let i = self.ring.partition_point(|x| x.0 < key);
        if i == self.ring.len() {
            0
        } else {
            i
        }
    }

    fn owner(&self, key: NodeId) -> (NodeId, usize) {
        self.ring[self.index_of_owner(key)]
    }
}

/// How far the routing states are from the truth.
#[derive(Debug, Default, PartialEq)]
struct Wrong {
    successors: usize,
    successor_lists: usize,
    predecessors: usize,
    fingers: usize,
}

impl Wrong {
    fn pointers_ok(&self) -> bool {
        self.successors == 0 && self.predecessors == 0
    }
    fn all_ok(&self) -> bool {
        *self == Wrong::default()
    }
}

impl Net {
    fn new(seed: u64, r: usize, fingers_per_round: usize) -> Self {
        Net {
            nodes: Vec::new(),
            rng: Rng::new(seed),
            now_ms: 0,
            r,
            fingers_per_round,
            lookup_messages: 0,
            loss: 0,
            late: 0,
            delayed: Vec::new(),
            pokes: Vec::new(),
            no_pokes: false,
            rounds: 0,
            walk_requests: 0,
            recount_asked: false,
            census_fingers: true,
            finger_lookups: 0,
            snapshots: (0, 0),
            trace: std::env::var("SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(NodeId),
            displaced: Vec::new(),
            rejoins: 0,
        }
    }

    /// Whether `ids` touch the traced ID.
    fn traced(&self, ids: &[NodeId]) -> bool {
        self.trace.is_some_and(|t| ids.contains(&t))
    }

    fn tr(&self, what: std::fmt::Arguments<'_>) {
        eprintln!("[r{} t{}] {what}", self.rounds, self.now_ms);
    }

    /// The traced node's links and its true neighbours' links to it.
    fn trace_state(&self, when: &str) {
        let Some(t) = self.trace else { return };
        let o = self.oracle();
        let Ok(pos) = o.ring.binary_search_by_key(&t, |x| x.0) else {
            return;
        };
        let n = o.ring.len();
        let show = |i: usize| {
            let nd = &self.nodes[i];
            format!(
                "{:?}: pred {:?} succ {:?} lost {:?}",
                nd.state.me().id,
                nd.state.predecessor().map(|p| p.id),
                nd.state
                    .successors()
                    .iter()
                    .take(3)
                    .map(|p| p.id)
                    .collect::<Vec<_>>(),
                nd.lost.ids(self.now_ms)
            )
        };
        self.tr(format_args!(
            "{when}: [{}] [{}] [{}]",
            show(o.ring[(pos + n - 1) % n].1),
            show(o.ring[pos].1),
            show(o.ring[(pos + 1) % n].1)
        ));
    }

    /// Whether `p` answers a request: alive, and the message not lost.
    fn answers(&mut self, p: &Peer<usize>) -> bool {
        self.reachable(p) && (self.loss == 0 || self.rng.below(1000) >= self.loss)
    }

    /// Node `i` drops `id`, which did not answer (remembered as lost if it
    /// was a neighbour), and asks the root to count again.
    fn fail(&mut self, i: usize, id: NodeId) {
        let now = self.now_ms;
        if self.traced(&[id, self.nodes[i].state.me().id]) {
            self.tr(format_args!(
                "{:?} drops {id:?}",
                self.nodes[i].state.me().id
            ));
        }
        let node = &mut self.nodes[i];
        let s = &node.state;
        if s.predecessor().is_some_and(|p| p.id == id) || s.successors().iter().any(|p| p.id == id)
        {
            node.lost.add(id, now);
        }
        node.state.peer_failed(id);
        node.census.suspect(id);
        self.tell_root();
    }

    /// Ask the root (the live node owning ID 0) to count again: delivered
    /// at the end of the round (a `p2prs.recount` message).
    fn tell_root(&mut self) {
        self.recount_asked = true;
    }

    fn true_root(&self) -> Option<usize> {
        self.live()
            .into_iter()
            .min_by_key(|&i| self.nodes[i].state.me().id)
    }

    fn peer(&self, i: usize) -> Peer<usize> {
        self.nodes[i].state.me().clone()
    }

    fn add_node(&mut self, id: NodeId) -> usize {
        let addr = self.nodes.len();
        self.nodes.push(SimNode {
            state: RoutingState::new(Peer::new(id, addr), self.r),
            stabilizer: Stabilizer::new(self.fingers_per_round),
            reservations: Reservations::new(),
            census: Census::new(&Peer::new(id, addr)),
            lost: Lost::new(3 * ROUND_MS),
            alive: true,
        });
        addr
    }

    fn reachable(&self, p: &Peer<usize>) -> bool {
        self.nodes
            .get(p.addr)
            .is_some_and(|n| n.alive && n.state.me().id == p.id)
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect()
    }

    fn random_live(&mut self) -> usize {
        loop {
            let i = self.rng.below(self.nodes.len());
            if self.nodes[i].alive {
                return i;
            }
        }
    }

    fn oracle(&self) -> Oracle {
        let mut ring: Vec<(NodeId, usize)> = self
            .live()
            .into_iter()
            .map(|i| (self.nodes[i].state.me().id, i))
            .collect();
        ring.sort_unstable();
        Oracle { ring }
    }

    /// Drive a lookup to its end; `origin` learns of the peers that failed.
    fn run_lookup(
        &mut self,
        origin: Option<usize>,
        mut lookup: Lookup<usize>,
    ) -> Result<(Peer<usize>, u32), LookupError> {
        loop {
            match lookup.next() {
                LookupStep::Query(p) => {
                    self.lookup_messages += 1;
                    if self.answers(&p) {
                        let route = self.nodes[p.addr].state.next_hop(lookup.target());
                        lookup.on_reply(p.id, route);
                    } else {
                        lookup.on_failure(p.id);
                        if let Some(o) = origin {
                            self.fail(o, p.id);
                        }
                    }
                }
                LookupStep::Done { owner, hops } => return Ok((owner, hops)),
                LookupStep::Failed(e) => return Err(e),
            }
        }
    }

    fn lookup(&mut self, origin: usize, target: NodeId) -> Result<(Peer<usize>, u32), LookupError> {
        let lookup = Lookup::new(target, &self.nodes[origin].state);
        self.run_lookup(Some(origin), lookup)
    }

    /// The stabilize exchange of node `i` with `succ`, as the node's driver
    /// does it: a successor that does not answer is dropped and the next one
    /// asked at once; a dead predecessor it still names is not taken back;
    /// a successor that moved closer is asked too (up to 8 steps).
    fn ask_predecessor(&mut self, i: usize, first: Peer<usize>) {
        let mut s = first;
        let mut dead: Vec<NodeId> = Vec::new();
        for step in 1..=8 {
            if !self.answers(&s) {
                self.fail(i, s.id);
                dead.push(s.id);
                let next = self.nodes[i].state.successor().clone();
                if step < 8 && next.id != self.nodes[i].state.me().id && !dead.contains(&next.id) {
                    s = next;
                    continue;
                }
                return;
            }
            let st = &self.nodes[s.addr].state;
            let pred = st.predecessor().cloned().filter(|p| !dead.contains(&p.id));
            let list = st.successors().to_vec();
            let me = self.nodes[i].state.me().clone();
            if let Some(x) = displaced_by(&me, pred.as_ref()).cloned() {
                // As the node: only a holder that answers displaces it.
                if self.answers(&x) {
                    if self.traced(&[me.id]) {
                        self.tr(format_args!(
                            "{:?} (node {i}) displaced by node {}",
                            me.id, x.addr
                        ));
                    }
                    self.displaced.push((i, s.clone()));
                    return;
                }
            }
            let before: Vec<NodeId> = self.nodes[i]
                .state
                .successors()
                .iter()
                .map(|p| p.id)
                .collect();
            let traced = self.traced(&[self.nodes[i].state.me().id, s.id])
                || self.traced(&[pred.as_ref().map_or(s.id, |p| p.id)]);
            if traced {
                self.tr(format_args!(
                    "{:?} stabilizes with {:?}: pred {:?} list {:?}",
                    self.nodes[i].state.me().id,
                    s.id,
                    pred.as_ref().map(|p| p.id),
                    list.iter().take(3).map(|p| p.id).collect::<Vec<_>>()
                ));
            }
            let notify = on_stabilize_reply(&mut self.nodes[i].state, &s, pred, list);
            let after = self.nodes[i].state.successors().iter().map(|p| p.id);
            if !before.iter().copied().eq(after) {
                // As the node: a changed list pokes the predecessor.
                if let Some(p) = self.nodes[i].state.predecessor().cloned() {
                    self.pokes.push(p);
                }
            }
            let next = self.nodes[i].state.successor().clone();
            if next.id != s.id && next.id != self.nodes[i].state.me().id && step < 8 {
                s = next;
                continue;
            }
            if let Some(Action::Notify { to, me }) = notify {
                self.deliver_notify(i, to, me);
            }
            return;
        }
    }

    fn deliver_notify(&mut self, from: usize, to: Peer<usize>, me: Peer<usize>) {
        if self.late > 0 && self.rng.below(1000) < self.late {
            if self.traced(&[to.id, me.id]) {
                self.tr(format_args!("notify {:?} -> {:?} late", me.id, to.id));
            }
            self.delayed.push((from, to, me));
            return;
        }
        if !self.answers(&to) {
            if self.traced(&[to.id, me.id]) {
                self.tr(format_args!("notify {:?} -> {:?} lost", me.id, to.id));
            }
            if self.nodes[from].alive {
                self.fail(from, to.id);
            }
            return;
        }
        self.receive_notify(to, me);
    }

    /// `to` takes the notify of `me`; one from before its predecessor makes
    /// it check the predecessor at once, and take `me` if it is gone.
    fn receive_notify(&mut self, to: Peer<usize>, me: Peer<usize>) {
        let now = self.now_ms;
        if self.traced(&[to.id, me.id]) {
            let st = &self.nodes[to.addr].state;
            self.tr(format_args!(
                "notify {:?} -> {:?} arrives (its pred {:?})",
                me.id,
                to.id,
                st.predecessor().map(|p| p.id)
            ));
        }
        let node = &mut self.nodes[to.addr];
        node.lost.found(me.id);
        let was_root = node.state.owns(alloc::FIRST_ID);
        let old = node.state.predecessor().cloned();
        // As the node: a joiner this node granted its ID is counted at once
        // at the root.
        let granted_here = node
            .reservations
            .iter()
            .any(|r| r.id == me.id && r.claimant == me.addr);
        if node.state.notify(me.clone()) {
            node.reservations.prune(&node.state, now);
            if node.state.owns(alloc::FIRST_ID) {
                node.census.ask_recount();
                if granted_here {
                    node.census.linked(to.id, me.clone(), now);
                }
            }
            // As the node: the old predecessor is asked to stabilize now,
            // which points it at the new one.
            if let Some(o) = old.filter(|o| o.id != me.id && o.id != to.id) {
                self.pokes.push(o);
            }
            return;
        }
        let Some(pred) = node.state.predecessor().cloned().filter(|p| p.id != me.id) else {
            return;
        };
        if !self.answers(&pred) {
            self.fail(to.addr, pred.id);
            let node = &mut self.nodes[to.addr];
            if node.state.notify(me) {
                node.reservations.prune(&node.state, now);
            }
            if !was_root && node.state.owns(alloc::FIRST_ID) {
                node.census.ask_recount();
            }
        }
    }

    fn execute(&mut self, i: usize, action: Action<usize>) {
        match action {
            Action::AskPredecessor(s) => self.ask_predecessor(i, s),
            Action::Notify { to, me } => self.deliver_notify(i, to, me),
            Action::FixFinger { index, start } => {
                self.finger_lookups += 1;
                if let Ok((owner, _)) = self.lookup(i, start) {
                    self.nodes[i].state.set_finger(index, Some(owner));
                }
            }
            Action::CheckPredecessor(p) => {
                if !self.answers(&p) {
                    self.fail(i, p.id);
                    return;
                }
                let list = self.nodes[p.addr].state.successors().to_vec();
                if let Some(a) = on_predecessor_reply(&mut self.nodes[i].state, &p, &list) {
                    if self.traced(&[self.nodes[i].state.me().id]) {
                        self.tr(format_args!(
                            "{:?}: skipped by {:?}: {a:?}",
                            self.nodes[i].state.me().id,
                            p.id
                        ));
                    }
                    self.execute(i, a);
                }
            }
        }
    }

    fn node_round(&mut self, i: usize) {
        let use_census = self.census_fingers;
        let node = &mut self.nodes[i];
        let members = if use_census {
            node.census.finger_source()
        } else {
            None
        };
        let actions = node.stabilizer.round(&mut node.state, members);
        for a in actions {
            self.execute(i, a);
        }
        self.run_pokes();
        if use_census {
            self.pull_members(i);
        }
    }

    /// As the node: a member list behind the root's count asks the
    /// successor for its list, and if the successor's is behind too, the
    /// root (found by a lookup of ID 0); a list is taken once it matches a
    /// digest the root sent.
    fn pull_members(&mut self, i: usize) {
        if !self.nodes[i].census.snapshot_due() {
            return;
        }
        let succ = self.nodes[i].state.successor().clone();
        if succ.addr == i {
            return;
        }
        if self.ask_members(i, &succ) {
            return;
        }
        // As the node: a best-effort ask, whose lost messages drop no peer.
        let lookup = Lookup::new(alloc::FIRST_ID, &self.nodes[i].state);
        if let Ok((root, _)) = self.run_lookup(None, lookup) {
            if root.id != succ.id && root.addr != i {
                self.ask_members(i, &root);
            }
        }
    }

    /// Node `i` asks `from` for its member list: whether it had one to give.
    fn ask_members(&mut self, i: usize, from: &Peer<usize>) -> bool {
        if !self.answers(from) {
            return false;
        }
        self.snapshots.0 += 1;
        let Some((epoch, list)) = self.nodes[from.addr].census.snapshot() else {
            return false;
        };
        let census = &mut self.nodes[i].census;
        census.offer_snapshot(epoch, list);
        self.snapshots.1 += u64::from(census.current());
        true
    }

    /// The stabilize exchanges asked for by pokes (bounded: a change goes
    /// back at most a successor list's length).
    fn run_pokes(&mut self) {
        if self.no_pokes {
            self.pokes.clear();
            return;
        }
        let mut budget = 4 * self.r;
        while let Some(p) = self.pokes.pop() {
            if budget == 0 {
                self.pokes.clear();
                return;
            }
            budget -= 1;
            if self.answers(&p) {
                let succ = self.nodes[p.addr].state.successor().clone();
                if succ.id != p.id {
                    self.ask_predecessor(p.addr, succ);
                }
            }
        }
    }

    /// One stabilizer round of every live node, in a random order; late
    /// notifies arrive at its end, shuffled; then the root counts if due.
    fn round(&mut self) {
        self.now_ms += ROUND_MS;
        self.rounds += 1;
        let mut order = self.live();
        self.rng.shuffle(&mut order);
        for i in order {
            self.node_round(i);
        }
        let mut late = std::mem::take(&mut self.delayed);
        self.rng.shuffle(&mut late);
        for (_, to, me) in late {
            if self.answers(&to) {
                self.receive_notify(to, me);
            } else if self.traced(&[to.id, me.id]) {
                self.tr(format_args!("late notify {:?} -> {:?} lost", me.id, to.id));
            }
        }
        self.run_pokes();
        for (i, via) in std::mem::take(&mut self.displaced) {
            if self.nodes[i].alive {
                self.rejoin(i, via);
            }
        }
        self.census_round();
        self.trace_state("end of round");
    }

    /// Node `i`, displaced from its ID, leaves the ring without a word (its
    /// neighbours find it gone, as the node's answer `NotJoined` tells
    /// them) and joins again through `via`, as a new node: up to 8 tries.
    fn rejoin(&mut self, i: usize, via: Peer<usize>) {
        self.nodes[i].alive = false;
        self.rejoins += 1;
        let boot = if self.reachable(&via) {
            via.addr
        } else {
            self.random_live()
        };
        for _ in 0..8 {
            match self.join(boot, None) {
                Ok(j) => {
                    if self.traced(&[self.nodes[i].state.me().id]) {
                        let id = self.nodes[j].state.me().id;
                        self.tr(format_args!("node {i} joined again as {id:?} (node {j})"));
                    }
                    return;
                }
                Err(JoinError::DeadOwner(d)) => self.poke_before(boot, &d),
                Err(_) => {}
            }
        }
    }

    /// Every live node that owns ID 0 counts the ring when its census says
    /// so, and broadcasts the news down the tree (messages may be lost).
    fn census_round(&mut self) {
        if std::mem::take(&mut self.recount_asked) {
            if let Some(r) = self.true_root() {
                self.nodes[r].census.ask_recount();
            }
        }
        let periodic = self.rounds % WALK_EVERY == 0;
        let now = self.now_ms;
        let roots: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| self.nodes[i].state.owns(alloc::FIRST_ID))
            .collect();
        let pace = Pace::spaced(ROUND_MS / 4);
        for root in roots {
            let node = &mut self.nodes[root];
            // As the node: joins it linked in are published first, and a
            // walk comes a spacing after such news.
            let me = node.state.me().id;
            if let Some(news) = node.census.publish_tally(me, now, pace) {
                self.spread_news(root, news);
                continue;
            }
            if node.census.walk_due(true, periodic, now, pace) {
                self.walk(root);
            }
        }
    }

    fn walk(&mut self, root: usize) {
        let st = &self.nodes[root].state;
        let mut w = Walk::new(
            st.me().clone(),
            st.predecessor().cloned(),
            st.successors(),
            st.successor_list_len(),
        );
        loop {
            match w.next() {
                WalkStep::Ask(p) => {
                    self.walk_requests += 1;
                    if self.answers(&p) {
                        let s = &self.nodes[p.addr].state;
                        let (pred, list) = (s.predecessor().cloned(), s.successors().to_vec());
                        w.on_reply(&p, pred, &list);
                    } else {
                        w.on_failure();
                    }
                }
                WalkStep::Done(members) => {
                    let me = self.nodes[root].state.me().id;
                    let (news, send) = self.nodes[root].census.publish(me, &members);
                    if send {
                        self.spread_news(root, news);
                    }
                    return;
                }
                WalkStep::Settling(why) => {
                    if std::env::var("SIM_DEBUG").is_ok() {
                        eprintln!("walk at {root}: {why}");
                    }
                    self.nodes[root].census.settling();
                    return;
                }
            }
        }
    }

    /// The lowest ID node `i` knows (as the node's `Ring::lowest_known`).
    fn lowest_known(&self, i: usize) -> NodeId {
        let n = &self.nodes[i];
        let s = &n.state;
        std::iter::once(s.me())
            .chain(s.predecessor())
            .chain(s.successors())
            .chain(s.fingers().iter().flatten())
            .map(|p| p.id)
            .chain(n.census.members().keys().next().copied())
            .min()
            .unwrap_or(alloc::FIRST_ID)
    }

    /// The root's news down the broadcast tree; a node that knows a lower
    /// ID than the root's checks with a lookup of ID 0 (as the node's
    /// `vet_root`) before it applies and forwards it.
    fn spread_news(&mut self, root: usize, news: News<usize>) {
        let origin = self.peer(root);
        let mut level = vec![(root, origin.id)];
        while !level.is_empty() {
            let mut next = Vec::new();
            for (i, limit) in level {
                for (child, child_limit) in broadcast_targets(&self.nodes[i].state, limit) {
                    let child = if self.answers(&child) {
                        child
                    } else {
                        // As the node: the first live node after a dead
                        // child takes its part of the tree.
                        self.fail(i, child.id);
                        let next = NodeId(child.id.0.wrapping_add(1));
                        match self.lookup(i, next) {
                            Ok((h, _))
                                if h.id.in_open(child.id, child_limit) && self.answers(&h) =>
                            {
                                h
                            }
                            _ => continue,
                        }
                    };
                    let c = child.addr;
                    if origin.id > self.lowest_known(c) {
                        match self.lookup(c, alloc::FIRST_ID) {
                            Ok((o, _)) if o.id == origin.id => {
                                let lower: Vec<NodeId> = self.nodes[c]
                                    .census
                                    .members()
                                    .keys()
                                    .copied()
                                    .chain(self.nodes[c].state.neighbours().iter().map(|p| p.id))
                                    .filter(|id| *id < origin.id)
                                    .collect();
                                for id in &lower {
                                    self.nodes[c].state.peer_failed(*id);
                                }
                                self.nodes[c].census.forget(&lower);
                            }
                            _ => continue,
                        }
                    }
                    if !self.nodes[c].state.owns(alloc::FIRST_ID) {
                        self.nodes[c].census.apply(origin.id, news.clone());
                    }
                    next.push((c, child_limit));
                }
            }
            level = next;
        }
    }

    /// A request from `origin` to the node holding `id`, as the node's
    /// `conn_for_id`: a lookup, then (if the owner found is another node)
    /// the owner and its predecessor vouch; up to three tries.
    fn resolve(&mut self, origin: usize, id: NodeId) -> Resolved {
        for _ in 0..3 {
            let Ok((owner, _)) = self.lookup(origin, id) else {
                continue;
            };
            let now = self.now_ms;
            let target = if owner.id == id {
                owner
            } else {
                if !self.answers(&owner) {
                    self.fail(origin, owner.id);
                    continue;
                }
                let o = &self.nodes[owner.addr];
                let lost = unsure(&o.lost, &o.reservations, now);
                match vouch_owner(
                    id,
                    owner.id,
                    o.state.me().id,
                    o.state.predecessor().cloned(),
                    &lost,
                ) {
                    Verdict::Holds(p) => p,
                    Verdict::Absent => return Resolved::NoSuchNode,
                    Verdict::Settling(why) => {
                        if self.traced(&[id]) {
                            self.tr(format_args!(
                                "resolve {id:?} at owner {:?}: {why}",
                                owner.id
                            ));
                        }
                        continue;
                    }
                    Verdict::AskPred(p) => {
                        if !self.answers(&p) {
                            continue;
                        }
                        let b = &self.nodes[p.addr];
                        let lost = unsure(&b.lost, &b.reservations, now);
                        let succs = b.state.successors().to_vec();
                        let v = vouch_pred(id, owner.id, p.id, b.state.me().id, &succs, &lost);
                        if self.traced(&[id]) {
                            self.tr(format_args!(
                                "resolve {id:?}: owner {:?} pred {:?} says {v:?}",
                                owner.id, p.id
                            ));
                        }
                        match v {
                            Verdict::Holds(s) => s,
                            Verdict::Absent => return Resolved::NoSuchNode,
                            _ => continue,
                        }
                    }
                }
            };
            if self.answers(&target) {
                return Resolved::Found;
            }
            self.fail(origin, target.id);
        }
        Resolved::Retry
    }

    /// Ask, via `boot`, for the owner of the claim target; claim an ID there.
    /// Returns the grant and the granting node (the joiner's successor).
    fn claim_id(
        &mut self,
        boot: usize,
        requested: Option<NodeId>,
        claimant: usize,
    ) -> Result<(NodeId, Peer<usize>), JoinError> {
        let first = self.peer(boot);
        let lookup = Lookup::via(claim_target(requested), first);
        let (owner, _) = self.run_lookup(None, lookup).map_err(JoinError::Lookup)?;
        if !self.answers(&owner) {
            // A dead owner grants nothing: the node asks the node before it
            // to stabilize now (see `poke_before`) and tries again.
            return Err(JoinError::DeadOwner(owner));
        }
        let now = self.now_ms;
        let s = &mut self.nodes[owner.addr];
        let lost = s.lost.ids(now);
        let id = alloc::claim_avoiding(
            &s.state,
            &mut s.reservations,
            requested,
            claimant,
            now,
            CLAIM_TTL_MS,
            &lost,
        )
        .map_err(JoinError::Claim)?;
        Ok((id, owner))
    }

    /// A joiner's claim found `dead` as the owner: look up the ID before it
    /// through `boot`; the node that decides that lookup believes `dead` is
    /// its successor, and is asked to stabilize at once (as the node's
    /// `join_via` does with `STABILIZE_NOW`).
    fn poke_before(&mut self, boot: usize, dead: &Peer<usize>) {
        let before = NodeId(dead.id.0.wrapping_sub(1));
        let mut lookup = Lookup::via(before, self.peer(boot));
        while let LookupStep::Query(p) = lookup.next() {
            if self.answers(&p) {
                let route = self.nodes[p.addr].state.next_hop(before);
                lookup.on_reply(p.id, route);
            } else {
                lookup.on_failure(p.id);
            }
        }
        if let Some(p) = lookup.decided_by().cloned() {
            if self.answers(&p) {
                let succ = self.nodes[p.addr].state.successor().clone();
                if succ.id != p.id {
                    self.ask_predecessor(p.addr, succ);
                }
            }
        }
        self.run_pokes();
    }

    /// Second half of a join: the granting node is the joiner's successor;
    /// take its list and notify it.
    fn enter(&mut self, id: NodeId, succ: Peer<usize>) -> usize {
        let i = self.add_node(id);
        if self.traced(&[id]) {
            self.tr(format_args!("{id:?} enters before {:?}", succ.id));
        }
        let list = self.nodes[succ.addr].state.successors().to_vec();
        self.nodes[i].state.adopt_successors(succ.clone(), list);
        // As the node: the granter's size (its count, and at the root the
        // joins it linked in since), plus the joiner.
        let size = self.nodes[succ.addr].census.size() + 1;
        self.nodes[i].census.set_size(size);
        let me = self.peer(i);
        self.deliver_notify(i, succ, me);
        i
    }

    /// A whole join through `boot`; the old predecessor of the new node's
    /// successor then stabilizes at once (as if its timer fired), so that
    /// successor pointers stay exact during a long join sequence.
    fn join(&mut self, boot: usize, requested: Option<NodeId>) -> Result<usize, JoinError> {
        let claimant = self.nodes.len();
        let (id, succ) = self.claim_id(boot, requested, claimant)?;
        let old_pred = self.nodes[succ.addr].state.predecessor().cloned();
        let i = self.enter(id, succ.clone());
        if let Some(p) = old_pred.filter(|p| self.reachable(p)) {
            self.ask_predecessor(p.addr, succ);
        }
        Ok(i)
    }

    /// Graceful leave: the leaver tells its neighbours, then goes.
    fn leave(&mut self, i: usize) {
        let (me, pred, succs) = {
            let s = &self.nodes[i].state;
            (s.me().id, s.predecessor().cloned(), s.successors().to_vec())
        };
        if let Some(p) = pred.as_ref().filter(|p| self.reachable(p)) {
            self.nodes[p.addr]
                .state
                .peer_left(me, pred.clone(), succs.clone());
        }
        if let Some(s) = succs.first().filter(|s| self.reachable(s)) {
            self.nodes[s.addr]
                .state
                .peer_left(me, pred.clone(), succs.clone());
        }
        self.nodes[i].alive = false;
        // As the node: the predecessor, whose list changed, asks its own
        // predecessor to stabilize now; the neighbours ask the root to count.
        if let Some(p) = pred.as_ref().filter(|p| self.reachable(p)) {
            if let Some(pp) = self.nodes[p.addr].state.predecessor().cloned() {
                self.pokes.push(pp);
            }
        }
        self.run_pokes();
        self.tell_root();
    }

    fn check(&self, oracle: &Oracle) -> Wrong {
        let mut w = Wrong::default();
        let n = oracle.ring.len();
        for (pos, &(id, i)) in oracle.ring.iter().enumerate() {
            let s = &self.nodes[i].state;
            let want: Vec<NodeId> = (1..n.min(self.r + 1))
                .map(|k| oracle.ring[(pos + k) % n].0)
                .collect();
            let got: Vec<NodeId> = s.successors().iter().map(|p| p.id).collect();
            w.successors += usize::from(got.first() != want.first());
            w.successor_lists += usize::from(got != want);
            let want_pred = (n > 1).then(|| oracle.ring[(pos + n - 1) % n].0);
            w.predecessors += usize::from(s.predecessor().map(|p| p.id) != want_pred);
            for (k, f) in s.fingers().iter().enumerate().take(FINGER_COUNT) {
                let o = oracle.owner(finger_start(id, k)).0;
                let want = (o != id).then_some(o);
                w.fingers += usize::from(f.as_ref().map(|p| p.id) != want);
            }
        }
        w
    }

    /// Print the nodes whose successor or predecessor is wrong.
    fn dump_wrong_links(&self, oracle: &Oracle) {
        let n = oracle.ring.len();
        for (pos, &(id, i)) in oracle.ring.iter().enumerate() {
            let s = &self.nodes[i].state;
            let want_s = oracle.ring[(pos + 1) % n].0;
            let want_p = oracle.ring[(pos + n - 1) % n].0;
            let got_s = s.successor().id;
            let got_p = s.predecessor().map(|p| p.id);
            if got_s != want_s || got_p != Some(want_p) {
                eprintln!(
                    "node {id:?}: succ {got_s:?} (want {want_s:?}) pred {got_p:?} (want \
                     {want_p:?}) list {:?}",
                    s.successors().iter().map(|p| p.id.0).collect::<Vec<_>>()
                );
            }
        }
    }

    /// Print a few wrong fingers, to debug a ring that does not converge.
    fn dump_wrong_fingers(&self, oracle: &Oracle) {
        let wrong = oracle.ring.iter().flat_map(|&(id, i)| {
            let s = &self.nodes[i].state;
            s.fingers().iter().enumerate().filter_map(move |(k, f)| {
                let start = finger_start(id, k);
                let o = oracle.owner(start).0;
                let want = (o != id).then_some(o);
                let got = f.as_ref().map(|p| p.id);
                (got != want).then_some((id, k, start, got, want))
            })
        });
        for (id, k, start, got, want) in wrong.take(10) {
            eprintln!("node {id:?} finger {k} (start {start:?}): {got:?}, want {want:?}");
        }
    }

    /// Run rounds until `done(wrong)` or `max` rounds; the rounds taken.
    fn rounds_until(&mut self, max: usize, done: impl Fn(&Wrong) -> bool) -> usize {
        let oracle = self.oracle();
        for k in 0..=max {
            let w = self.check(&oracle);
            if done(&w) {
                return k;
            }
            if k == max {
                self.dump_wrong_fingers(&oracle);
            }
            assert!(k < max, "not converged after {max} rounds: {w:?}");
            self.round();
        }
        max
    }
}

/// How a request by ID ended in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    Found,
    NoSuchNode,
    /// A retriable error: the ring is settling around the ID.
    Retry,
}

#[derive(Clone, Copy, Debug)]
enum Ids {
    /// 0, 1, 2, ... allocated by the owner of 0.
    Sequential,
    /// Random u64 IDs, claimed at their owner.
    Random,
}

fn log2(n: usize) -> f64 {
    (n as f64).log2()
}

/// A ring of `n` nodes built by real joins through random members, with
/// stabilizer rounds each time the size doubles, then stabilized until every
/// successor list, predecessor and finger is exact. Returns the rounds of the
/// final stabilization.
fn build(n: usize, ids: Ids, seed: u64) -> (Net, usize) {
    build_with(n, ids, seed, true)
}

/// [`build`], with fingers filled from current member lists or not.
fn build_with(n: usize, ids: Ids, seed: u64, census_fingers: bool) -> (Net, usize) {
    let r = log2(n).ceil() as usize + 2;
    let mut net = Net::new(seed, r, 4);
    net.census_fingers = census_fingers;
    let first = match ids {
        Ids::Sequential => alloc::FIRST_ID,
        Ids::Random => NodeId(net.rng.next_u64()),
    };
    let root = net.add_node(first);
    net.nodes[root].census.founded(first);
    let mut checkpoint = 4;
    while net.nodes.len() < n {
        let boot = net.random_live();
        let requested = match ids {
            Ids::Sequential => None,
            Ids::Random => Some(NodeId(net.rng.next_u64())),
        };
        let mut tries = 0;
        loop {
            match net.join(boot, requested) {
                Ok(_) => break,
                Err(JoinError::Lookup(e)) => panic!("join #{}: {e}", net.nodes.len()),
                Err(JoinError::DeadOwner(p)) => panic!("join #{}: {p:?} is dead", net.nodes.len()),
                // The claim reached a node that does not know its range yet (or
                // a stale owner): a real joiner retries a little later.
                Err(JoinError::Claim(e)) => {
                    tries += 1;
                    assert!(tries < 10, "join #{}: {e}", net.nodes.len());
                    net.round();
                }
            }
        }
        if net.nodes.len() == checkpoint {
            for _ in 0..3 {
                net.round();
            }
            checkpoint *= 2;
        }
    }
    let rounds = net.rounds_until(60, Wrong::all_ok);
    (net, rounds)
}

struct Stats {
    mean: f64,
    p99: u32,
    max: u32,
}

fn stats(mut hops: Vec<u32>) -> Stats {
    hops.sort_unstable();
    let mean = hops.iter().map(|&h| f64::from(h)).sum::<f64>() / hops.len() as f64;
    let p99 = hops[(hops.len() * 99 / 100).min(hops.len() - 1)];
    let max = hops.last().copied().unwrap_or(0);
    Stats { mean, p99, max }
}

/// Lookups from random live nodes for random live node IDs (`keys == false`)
/// or random keys; every one must find the true owner.
fn sample_lookups(net: &mut Net, count: usize, keys: bool) -> Vec<u32> {
    let oracle = net.oracle();
    let mut hops = Vec::with_capacity(count);
    for _ in 0..count {
        let origin = net.random_live();
        let target = if keys {
            NodeId(net.rng.next_u64())
        } else {
            oracle.ring[net.rng.below(oracle.ring.len())].0
        };
        match net.lookup(origin, target) {
            Ok((owner, h)) => {
                assert_eq!(owner.id, oracle.owner(target).0, "lookup of {target:?}");
                hops.push(h);
            }
            Err(e) => panic!("lookup of {target:?} from {origin}: {e}"),
        }
    }
    hops
}

/// Broadcast from a random node: every other node exactly once, N-1 messages.
/// Returns the depth of the tree.
fn check_broadcast(net: &mut Net) -> usize {
    let origin = net.random_live();
    let mut received = vec![0u32; net.nodes.len()];
    let mut messages = 0;
    let mut depth = 0;
    let mut level = vec![(origin, net.peer(origin).id)];
    while !level.is_empty() {
        let mut next = Vec::new();
        for (i, limit) in level {
            for (child, child_limit) in broadcast_targets(&net.nodes[i].state, limit) {
                assert!(net.reachable(&child));
                messages += 1;
                received[child.addr] += 1;
                next.push((child.addr, child_limit));
            }
        }
        depth += usize::from(!next.is_empty());
        level = next;
    }
    let live = net.live();
    assert_eq!(messages, live.len() - 1);
    for i in live {
        assert_eq!(received[i], u32::from(i != origin), "node {i}");
    }
    depth
}

/// The acceptance scenario of the issue at size `n`.
fn scenario(n: usize, ids: Ids, seed: u64) {
    let (mut net, build_rounds) = build(n, ids, seed);
    let samples = 2 * n.min(5000);
    let node_hops = stats(sample_lookups(&mut net, samples, false));
    let key_hops = stats(sample_lookups(&mut net, samples, true));
    let depth = check_broadcast(&mut net);
    eprintln!(
        "sim n={n} ids={ids:?} r={}: stabilized {build_rounds} rounds after the joins; \
         hops to node IDs mean {:.2} p99 {} max {}; to random keys mean {:.2} p99 {} max {}; \
         broadcast depth {depth}, {} messages",
        net.r,
        node_hops.mean,
        node_hops.p99,
        node_hops.max,
        key_hops.mean,
        key_hops.p99,
        key_hops.max,
        n - 1,
    );
    let (mean_cap, max_cap) = (0.5 * log2(n) + 1.0, log2(n) + 2.0);
    for s in [&node_hops, &key_hops] {
        assert!(s.mean <= mean_cap, "mean {} > {mean_cap}", s.mean);
        assert!(f64::from(s.max) <= max_cap, "max {} > {max_cap}", s.max);
    }

    // Fail a quarter of the nodes at once, then let the stabilizer heal.
    let mut order = net.live();
    net.rng.shuffle(&mut order);
    for &i in &order[..n / 4] {
        net.nodes[i].alive = false;
    }
    let heal = net.rounds_until(30, Wrong::pointers_ok);
    // Now every live node looks up live IDs (a large sample at 10k); fingers
    // may still point at dead nodes, which the lookups route around.
    let oracle = net.oracle();
    let mut hops = Vec::new();
    let per_node = if n <= 1000 { 8 } else { 2 };
    for origin in net.live() {
        for _ in 0..per_node {
            let target = oracle.ring[net.rng.below(oracle.ring.len())].0;
            let got = net.lookup(origin, target);
            assert!(
                matches!(&got, Ok((o, _)) if o.id == target),
                "{origin} -> {target:?}: {got:?}"
            );
            hops.push(got.map_or(0, |x| x.1));
        }
    }
    let after = stats(hops);
    eprintln!(
        "sim n={n} ids={ids:?}: failed {} nodes at once; successors and predecessors exact \
         after {heal} rounds; then {} lookups of live IDs all right (hops incl. dead tries \
         mean {:.2} p99 {} max {})",
        n / 4,
        oracle.ring.len() * per_node,
        after.mean,
        after.p99,
        after.max,
    );
    if n <= 1000 {
        let lists = heal + net.rounds_until(30, |w| w.pointers_ok() && w.successor_lists == 0);
        let all = lists + net.rounds_until(30, Wrong::all_ok);
        eprintln!(
            "sim n={n} ids={ids:?}: successor lists exact after {lists} rounds, every finger \
             after {all}"
        );
        check_broadcast(&mut net);
    }
}

#[test]
fn sim_1k_sequential_ids() {
    scenario(1_000, Ids::Sequential, 1);
}

#[test]
fn sim_1k_random_ids() {
    scenario(1_000, Ids::Random, 2);
}

#[test]
fn sim_10k_sequential_ids() {
    scenario(10_000, Ids::Sequential, 3);
}

#[test]
fn sim_10k_random_ids() {
    scenario(10_000, Ids::Random, 4);
}

/// What a ring of `n` costs in finger lookups, with fingers from current
/// member lists (`census`) or from lookups alone: while it is built, and
/// over `steps` rounds that each join one node.
fn finger_cost(n: usize, seed: u64, census: bool, steps: usize) -> (u64, u64, Net) {
    let (mut net, _) = build_with(n, Ids::Sequential, seed, census);
    let built = net.finger_lookups;
    for _ in 0..steps {
        let boot = net.random_live();
        net.join(boot, None).expect("join");
        net.round();
    }
    let joins = net.finger_lookups - built;
    (built, joins, net)
}

/// Fingers from the member list: a 1,000-node ring needs a small fraction
/// of the finger lookups, while it is built and while nodes join; every
/// node's list ends up the root's count (joiners' by a neighbour's list
/// that matched the root's digest); lookups stay O(log N) and right. (The
/// churn runs, with loss and late messages, use it too.)
#[test]
fn sim_census_fingers_cut_finger_lookups() {
    let n = 1_000;
    let (bare_built, bare_joins, _) = finger_cost(n, 31, false, 40);
    let (built, joins, mut net) = finger_cost(n, 31, true, 40);
    for _ in 0..2 * WALK_EVERY {
        net.round();
    }
    let live = net.live();
    let current = live
        .iter()
        .filter(|&&i| net.nodes[i].census.current())
        .count();
    let hops = stats(sample_lookups(&mut net, 2_000, false));
    eprintln!(
        "sim n={n}: finger lookups while building {built} (from lookups alone {bare_built}), \
         over 40 rounds with a join each {joins} (alone {bare_joins}); member lists asked \
         of a neighbour {}, taken {}; {current} of {} lists current; hops mean {:.2} p99 {} \
         max {}",
        net.snapshots.0,
        net.snapshots.1,
        live.len(),
        hops.mean,
        hops.p99,
        hops.max
    );
    assert!(built * 4 <= bare_built, "{built} vs {bare_built}");
    assert!(joins * 10 <= bare_joins, "{joins} vs {bare_joins}");
    assert_eq!(current, live.len());
    assert!(hops.mean <= 0.5 * log2(n) + 1.0 && f64::from(hops.max) <= log2(n) + 2.0);
    assert!(net.check(&net.oracle()).all_ok());
}

/// The sizes every live node reports that are not `want`.
fn wrong_sizes(net: &Net, want: usize) -> Vec<(NodeId, usize)> {
    net.live()
        .into_iter()
        .map(|i| (net.nodes[i].state.me().id, net.nodes[i].census.size()))
        .filter(|(_, s)| *s != want)
        .collect()
}

#[test]
fn sizes_are_right_one_round_after_joins_and_leaves() {
    // 64 joins one after the other through the root, with no round in
    // between (as `join_network` in a loop does): the root counts each
    // join as it links it in, so the last joiner takes the right size
    // from its grant, and the news of all of them reaches every node in
    // the next round, before any walk could pass.
    let mut net = Net::new(41, 8, 4);
    let root = net.add_node(alloc::FIRST_ID);
    net.nodes[root].census.founded(alloc::FIRST_ID);
    for k in 1..64 {
        let i = net.join(root, None).expect("join");
        assert_eq!(net.nodes[i].census.size(), k + 1, "the joiner's own size");
        assert_eq!(net.nodes[root].census.size(), k + 1, "the root's");
    }
    net.round();
    assert_eq!(wrong_sizes(&net, 64), vec![], "one round after the joins");
    // The walks that follow confirm the count; no size moves. (Joiners
    // hold only the joins of the news: they take a neighbour's list.)
    for _ in 0..2 * WALK_EVERY {
        net.round();
        assert_eq!(wrong_sizes(&net, 64), vec![]);
    }
    let behind: Vec<usize> = net
        .live()
        .into_iter()
        .filter(|&i| !net.nodes[i].census.current())
        .collect();
    assert_eq!(behind, Vec::<usize>::new(), "member lists behind the count");
    // A stream of joins through random members, one a round, in a ring
    // that grows under it: right one round after each.
    for k in 65..=96 {
        let boot = net.random_live();
        net.join(boot, None).expect("join");
        net.round();
        assert_eq!(wrong_sizes(&net, k), vec![], "after join {k}");
    }
    // A node leaves: right one round later (the neighbours tell the root).
    let gone = net.live()[40];
    net.leave(gone);
    net.round();
    assert_eq!(wrong_sizes(&net, 95), vec![], "after a leave");
    let rounds = net.rounds_until(40, Wrong::all_ok);
    eprintln!("sim: sizes right one round after 64 and 32 joins and a leave; exact in {rounds}");

    // The same burst where successor lists lag behind the joins by rounds
    // (no pokes): no walk passes for a while, the news of the joins
    // still reaches every node in the next round (successors are linked at
    // each join).
    let mut net = Net::new(42, 8, 4);
    net.no_pokes = true;
    let root = net.add_node(alloc::FIRST_ID);
    net.nodes[root].census.founded(alloc::FIRST_ID);
    for _ in 1..64 {
        net.join(root, None).expect("join");
    }
    net.round();
    assert_eq!(
        wrong_sizes(&net, 64),
        vec![],
        "one round after, lists lagging"
    );
    let oracle = net.oracle();
    let lagging = net.check(&oracle).successor_lists;
    eprintln!("sim: with lagging lists ({lagging} wrong one round after the joins) sizes right");
}

#[test]
fn eight_simultaneous_joins_get_distinct_ids() {
    let (mut net, _) = build(32, Ids::Sequential, 5);
    // All eight claim first, each through a different member, then all enter.
    let mut grants = Vec::new();
    for k in 0..8 {
        let claimant = net.nodes.len() + k;
        let got = net.claim_id(3 * k + 1, None, claimant);
        grants.push(got.expect("claim"));
    }
    let mut ids: Vec<u64> = grants.iter().map(|g| g.0 .0).collect();
    ids.sort_unstable();
    assert_eq!(ids, (32..40).collect::<Vec<u64>>());
    assert_eq!(net.nodes[0].reservations.len(), 8);
    for (id, succ) in grants {
        net.enter(id, succ);
    }
    let rounds = net.rounds_until(40, Wrong::all_ok);
    eprintln!("sim: 8 simultaneous joins stabilized in {rounds} rounds");
    assert!(
        net.nodes[0].reservations.is_empty(),
        "released once they joined"
    );
    // Explicit IDs: two joiners want the same one through different members.
    let a = net.claim_id(2, Some(NodeId(100)), 90);
    let b = net.claim_id(20, Some(NodeId(100)), 91);
    assert!(a.is_ok());
    assert!(matches!(
        b,
        Err(JoinError::Claim(ClaimError::IdTaken(NodeId(100))))
    ));
    let c = net.claim_id(7, Some(NodeId(12)), 92);
    assert!(matches!(
        c,
        Err(JoinError::Claim(ClaimError::IdTaken(NodeId(12))))
    ));
}

#[test]
fn leave_frees_the_top_id_and_rings_stay_exact() {
    let (mut net, _) = build(64, Ids::Sequential, 6);
    // The highest node leaves gracefully: its ID is handed out again.
    net.leave(63);
    assert_eq!(
        net.nodes[0].state.predecessor().map(|p| p.id),
        Some(NodeId(62))
    );
    assert_eq!(net.nodes[62].state.successor().id, NodeId(0));
    let boot = net.random_live();
    let i = net.join(boot, None).expect("join");
    assert_eq!(net.nodes[i].state.me().id, NodeId(63));
    // A middle node leaves: its neighbours link at once.
    net.leave(30);
    assert_eq!(net.nodes[29].state.successor().id, NodeId(31));
    assert_eq!(
        net.nodes[31].state.predecessor().map(|p| p.id),
        Some(NodeId(29))
    );
    let rounds = net.rounds_until(40, Wrong::all_ok);
    eprintln!("sim: after two leaves and a join, exact in {rounds} rounds");
    check_broadcast(&mut net);
    let hops = sample_lookups(&mut net, 500, false);
    assert!(hops.iter().all(|&h| h <= 8));
}

/// Two live nodes on one ID, as a root dying at the wrong moment leaves
/// them: the root took a second node on the top ID as its predecessor
/// after dropping the first. The first finds the other on its ID when it
/// stabilizes, gives the ID up and joins again; the ring is exact, with
/// distinct IDs and the right sizes, and every ID is found.
#[test]
fn a_node_displaced_from_its_id_joins_again() {
    let (mut net, _) = build(16, Ids::Sequential, 13);
    let (top, root) = (15, 0);
    assert_eq!(net.nodes[top].state.me().id, NodeId(15));
    net.fail(root, NodeId(15));
    let twin = net.add_node(NodeId(15));
    let list = net.nodes[root].state.successors().to_vec();
    let root_peer = net.peer(root);
    net.nodes[twin].state.adopt_successors(root_peer, list);
    let me = net.peer(twin);
    assert!(net.nodes[root].state.notify(me));
    net.pokes.clear();
    // The true ring changes as the first joins again: a fresh oracle each
    // round.
    let rounds = (0..=40)
        .find(|_| {
            let exact = net.check(&net.oracle()).all_ok();
            if !exact {
                net.round();
            }
            exact
        })
        .expect("exact within 40 rounds");
    assert_eq!(net.rejoins, 1);
    assert!(!net.nodes[top].alive, "the first gave ID 15 up");
    let oracle = net.oracle();
    let ids: std::collections::BTreeSet<NodeId> = oracle.ring.iter().map(|x| x.0).collect();
    assert_eq!(ids.len(), 17, "distinct IDs: {ids:?}");
    assert!(ids.contains(&NodeId(16)), "it joined again as 16: {ids:?}");
    for _ in 0..2 * WALK_EVERY {
        net.round();
    }
    assert!(
        wrong_sizes(&net, 17).is_empty(),
        "{:?}",
        wrong_sizes(&net, 17)
    );
    for &(id, _) in &oracle.ring {
        let origin = net.random_live();
        assert_eq!(net.resolve(origin, id), Resolved::Found, "{id:?}");
    }
    eprintln!("sim: a displaced node joined again; exact in {rounds} rounds");
}

#[test]
fn small_rings_from_scratch_converge() {
    for (n, seed) in [(2, 7), (3, 8), (5, 9), (16, 10), (100, 11)] {
        let (mut net, rounds) = build(n, Ids::Random, seed);
        assert!(rounds <= 60);
        check_broadcast(&mut net);
        sample_lookups(&mut net, 200, true);
    }
}

/// What a churn run of the simulator saw.
#[derive(Debug, Default)]
struct ChurnReport {
    requests: usize,
    found: usize,
    retriable: usize,
    false_no_such_node: usize,
    joins: usize,
    join_failures: usize,
    /// Rounds from the root's death until a join got an ID.
    takeover_rounds: usize,
    /// Rounds from the end of churn until every node has the exact size.
    exact_sizes_rounds: usize,
    /// Nodes that found another on their ID and joined again.
    rejoins: usize,
}

/// Churn at size `n`: `steps` rounds, each killing one random node
/// abruptly (the root at step `steps / 3`), joining one through a random
/// live member, and sending `per_step` requests from random live nodes to
/// random live IDs; `loss` and `late` per mille of the messages are lost or
/// arrive late. Then churn (and loss) stops and the sizes must converge.
fn churn(
    n: usize,
    steps: usize,
    per_step: usize,
    loss: usize,
    late: usize,
    seed: u64,
) -> ChurnReport {
    churn_with(n, steps, per_step, loss, late, seed, true)
}

/// [`churn`], with fingers filled from current member lists or not.
fn churn_with(
    n: usize,
    steps: usize,
    per_step: usize,
    loss: usize,
    late: usize,
    seed: u64,
    census: bool,
) -> ChurnReport {
    let (mut net, _) = build_with(n, Ids::Sequential, seed, census);
    // Start from exact sizes.
    for _ in 0..2 * WALK_EVERY {
        net.round();
    }
    net.loss = loss;
    net.late = late;
    let mut rep = ChurnReport::default();
    let mut root_died_at = None;
    for step in 0..steps {
        let victim = if step == steps / 3 {
            net.true_root().expect("a root")
        } else {
            net.random_live()
        };
        if step == steps / 3 {
            root_died_at = Some(net.rounds);
        }
        net.nodes[victim].alive = false;
        // A join as the node does it: up to 8 tries, a pause between.
        let boot = net.random_live();
        rep.joins += 1;
        let mut joined = false;
        for attempt in 0..8 {
            match net.join(boot, None) {
                Ok(_) => {
                    joined = true;
                    break;
                }
                Err(JoinError::DeadOwner(d)) => net.poke_before(boot, &d),
                Err(e) => {
                    if std::env::var("SIM_DEBUG").is_ok() {
                        eprintln!("join attempt {attempt}: {e:?}");
                    }
                }
            }
            // The node pauses 50 ms, doubling, at most a period: the first
            // three tries within 350 ms, then a period each.
            if attempt >= 2 {
                net.round();
            }
        }
        if !joined {
            rep.join_failures += 1;
        } else if let Some(t) = root_died_at.take() {
            rep.takeover_rounds = (net.rounds - t) as usize;
        }
        net.round();
        let oracle = net.oracle();
        for _ in 0..per_step {
            let origin = net.random_live();
            let target = oracle.ring[net.rng.below(oracle.ring.len())].0;
            rep.requests += 1;
            match net.resolve(origin, target) {
                Resolved::Found => rep.found += 1,
                Resolved::Retry => rep.retriable += 1,
                Resolved::NoSuchNode => {
                    eprintln!("false NoSuchNode: {target:?} at round {}", net.rounds);
                    rep.false_no_such_node += 1
                }
            }
        }
    }
    net.loss = 0;
    net.late = 0;
    let live = net.live();
    let want = live.len();
    let mut rounds = 0;
    while !live.iter().all(|&i| net.nodes[i].census.size() == want) {
        rounds += 1;
        if std::env::var("SIM_DEBUG").is_ok() {
            let r = net.true_root().unwrap();
            let st = &net.nodes[r].state;
            eprintln!(
                "round {rounds}: root {r} id {:?} owns0 {} size {} pred {:?} succ {:?}",
                st.me().id,
                st.owns(alloc::FIRST_ID),
                net.nodes[r].census.size(),
                st.predecessor().map(|p| p.id),
                st.successors().iter().map(|p| p.id).collect::<Vec<_>>()
            );
        }
        if rounds == 40 {
            let o = net.oracle();
            let mut ids: Vec<NodeId> = o.ring.iter().map(|x| x.0).collect();
            ids.dedup();
            eprintln!("distinct live ids {} of {}", ids.len(), o.ring.len());
            eprintln!("check: {:?}", net.check(&o));
            net.dump_wrong_links(&o);
        }
        assert!(
            rounds <= 40,
            "sizes not exact 40 rounds after churn: {:?} want {want}",
            live.iter()
                .map(|&i| net.nodes[i].census.size())
                .filter(|s| *s != want)
                .take(10)
                .collect::<Vec<_>>()
        );
        net.round();
    }
    rep.exact_sizes_rounds = rounds;
    rep.rejoins = net.rejoins;
    // A live ID is found from every sampled node once the ring is still.
    let oracle = net.oracle();
    for _ in 0..per_step * 4 {
        let origin = net.random_live();
        let target = oracle.ring[net.rng.below(oracle.ring.len())].0;
        assert_eq!(net.resolve(origin, target), Resolved::Found);
    }
    eprintln!(
        "sim churn n={n} steps={steps} loss={loss}/1000 late={late}/1000: {rep:?}; \
         {} count requests in {} rounds",
        net.walk_requests, net.rounds
    );
    rep
}

fn check_churn(rep: &ChurnReport) {
    assert_eq!(
        rep.false_no_such_node, 0,
        "NoSuchNode for a live ID: {rep:?}"
    );
    assert_eq!(rep.join_failures, 0, "{rep:?}");
    assert!(
        rep.takeover_rounds <= 2,
        "IDs handed out again after the root died: {rep:?}"
    );
    assert!(rep.found * 100 >= rep.requests * 95, "{rep:?}");
}

#[test]
fn sim_churn_1k_no_false_absence_and_sizes_converge() {
    let rep = churn(1_000, 60, 50, 0, 0, 21);
    check_churn(&rep);
    assert!(rep.exact_sizes_rounds <= 2, "{rep:?}");
}

#[test]
fn sim_churn_1k_with_loss_and_late_messages() {
    let rep = churn(1_000, 60, 50, 10, 50, 100);
    check_churn(&rep);
}

/// Seed 22 of the run above (its seed until fingers came from the member
/// list) showed a false `NoSuchNode` before predecessors were checked for
/// skipping a node: node 1017 (the top of the ring) joined and was linked
/// in behind 1016; a lost lookup query made 1016 drop it; the next joiner
/// 1018 took its place as the root's predecessor, then 1019 took 1018's,
/// and 1017, stabilizing with the root, took 1019 as successor. So 1016
/// pointed at 1018 and 1018 back at 1016, 1017 at 1019 and 1019 back at
/// 1017, each pair consistent; 1017 found nothing wrong, and 4 rounds
/// after the drop (past 1016's 3-round `lost` memory) the owner 1018 and
/// its predecessor 1016 agreed that 1017 was absent. Now 1017's check of
/// its predecessor sees 1016 name 1018, which lies before 1017's
/// successor, and stabilizes with it (`stabilize::on_predecessor_reply`).
#[test]
fn sim_churn_1k_with_loss_seed_22() {
    let rep = churn(1_000, 60, 50, 10, 50, 22);
    check_churn(&rep);
}

/// The state behind the false `NoSuchNode` of seed 22, built by hand in a
/// 16-node ring: the top node 15 is dropped by its predecessor 14 (a lost
/// message); joiner 16 becomes the root's predecessor and 14's successor;
/// joiner 17 (whose notifies reach the root, not 16's) becomes the root's
/// predecessor, and 15, stabilizing with the root, takes 17. Then 14 ⇄ 16
/// and 15 ⇄ 17 are both consistent: once 14's memory of dropping 15 has
/// passed, the owner 16 and its predecessor 14 agree that 15 is absent.
/// 15's check of its predecessor finds 14 naming 16, before 15's
/// successor, and links 15 back in within a few round trips.
#[test]
fn a_node_its_predecessor_skipped_is_linked_back_in() {
    let (mut net, _) = build(16, Ids::Sequential, 12);
    let at = |net: &Net, id: u64| {
        (0..net.nodes.len())
            .find(|&i| net.nodes[i].state.me().id == NodeId(id))
            .expect("node")
    };
    let (p, x, root) = (at(&net, 14), at(&net, 15), at(&net, 0));
    net.fail(p, NodeId(15));
    for id in [16, 17] {
        let j = net.add_node(NodeId(id));
        let list = net.nodes[root].state.successors().to_vec();
        let root_peer = net.peer(root);
        net.nodes[j].state.adopt_successors(root_peer, list);
        let me = net.peer(j);
        net.nodes[root].state.notify(me);
        // The node before the joiner stabilizes: 14 learns of 16 (and
        // notifies it); then 15 learns of 17.
        let (before, succ) = if id == 16 { (p, root) } else { (x, root) };
        let succ = net.peer(succ);
        net.ask_predecessor(before, succ);
    }
    net.pokes.clear();
    let succ_of = |net: &Net, i: usize| net.nodes[i].state.successor().id.0;
    let pred_of = |net: &Net, id: u64| {
        let i = at(net, id);
        net.nodes[i].state.predecessor().map(|q| q.id.0)
    };
    assert_eq!((succ_of(&net, p), pred_of(&net, 16)), (16, Some(14)));
    assert_eq!((succ_of(&net, x), pred_of(&net, 17)), (17, Some(15)));
    assert_eq!(pred_of(&net, 15), Some(14));
    // 14's memory of the drop passes: the two nodes agree, wrongly.
    net.now_ms += 10 * ROUND_MS;
    assert_eq!(net.resolve(p, NodeId(15)), Resolved::NoSuchNode);
    // 15 checks its predecessor.
    let pred = net.peer(p);
    net.execute(x, Action::CheckPredecessor(pred));
    net.run_pokes();
    assert_eq!(succ_of(&net, x), 16);
    assert_eq!(pred_of(&net, 16), Some(15));
    assert_eq!(succ_of(&net, p), 15, "14 asked to stabilize by 16");
    for i in net.live() {
        assert_eq!(net.resolve(i, NodeId(15)), Resolved::Found, "from {i}");
    }
}

#[test]
#[ignore = "30 s in a release build: cargo test --release --lib sim_churn_10k -- --ignored"]
fn sim_churn_10k() {
    let rep = churn(10_000, 100, 50, 10, 50, 23);
    check_churn(&rep);
}

/// The lossy churn run over many seeds: `SIM_SEEDS=1-50 cargo test
/// --release --lib sim_churn_seed_sweep -- --ignored --nocapture` (1,000
/// nodes; `SIM_NODES` to change). Prints the false `NoSuchNode` count of
/// every seed and fails if any seed has one.
#[test]
#[ignore = "a sweep over seeds, about a second per seed in a release build"]
fn sim_churn_seed_sweep() {
    let spec = std::env::var("SIM_SEEDS").unwrap_or_else(|_| "1-20".into());
    let (a, b) = spec.split_once('-').unwrap_or((&spec, &spec));
    let (a, b): (u64, u64) = (a.parse().expect("seed"), b.parse().expect("seed"));
    let n = std::env::var("SIM_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut bad = Vec::new();
    let mut panicked = Vec::new();
    let (mut requests, mut retriable, mut joins_failed) = (0, 0, 0);
    let mut rejoined = Vec::new();
    for seed in a..=b {
        let Ok(rep) = std::panic::catch_unwind(|| churn(n, 60, 50, 10, 50, seed)) else {
            panicked.push(seed);
            continue;
        };
        requests += rep.requests;
        retriable += rep.retriable;
        joins_failed += rep.join_failures;
        if rep.rejoins > 0 {
            rejoined.push((seed, rep.rejoins));
        }
        if rep.false_no_such_node > 0 {
            bad.push((seed, rep.false_no_such_node));
        }
    }
    eprintln!(
        "sweep seeds {a}-{b} at {n} nodes: {requests} requests, {retriable} retriable, \
         false NoSuchNode {bad:?}, joins failed {joins_failed}, displaced and joined again \
         (seed, nodes) {rejoined:?}, runs that failed a check {panicked:?}"
    );
    assert!(bad.is_empty(), "false NoSuchNode (seed, count): {bad:?}");
    assert!(
        panicked.is_empty(),
        "seeds that failed a check: {panicked:?}"
    );
}

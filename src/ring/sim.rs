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
use super::finger::finger_start;
use super::lookup::{Lookup, LookupError, LookupStep};
use super::stabilize::{on_stabilize_reply, Action, Stabilizer};
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
    alive: bool,
}

#[derive(Debug)]
enum JoinError {
    Lookup(LookupError),
    Claim(ClaimError),
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
        }
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
                    if self.reachable(&p) {
                        let route = self.nodes[p.addr].state.next_hop(lookup.target());
                        lookup.on_reply(p.id, route);
                    } else {
                        lookup.on_failure(p.id);
                        if let Some(o) = origin {
                            self.nodes[o].state.peer_failed(p.id);
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

    /// The stabilize exchange of node `i` with `succ`.
    fn ask_predecessor(&mut self, i: usize, succ: Peer<usize>) {
        if !self.reachable(&succ) {
            self.nodes[i].state.peer_failed(succ.id);
            return;
        }
        let s = &self.nodes[succ.addr].state;
        let (pred, list) = (s.predecessor().cloned(), s.successors().to_vec());
        if let Some(Action::Notify { to, me }) =
            on_stabilize_reply(&mut self.nodes[i].state, &succ, pred, list)
        {
            self.deliver_notify(i, to, me);
        }
    }

    fn deliver_notify(&mut self, from: usize, to: Peer<usize>, me: Peer<usize>) {
        if !self.reachable(&to) {
            self.nodes[from].state.peer_failed(to.id);
            return;
        }
        let now = self.now_ms;
        let node = &mut self.nodes[to.addr];
        if node.state.notify(me) {
            node.reservations.prune(&node.state, now);
        }
    }

    fn execute(&mut self, i: usize, action: Action<usize>) {
        match action {
            Action::AskPredecessor(s) => self.ask_predecessor(i, s),
            Action::Notify { to, me } => self.deliver_notify(i, to, me),
            Action::FixFinger { index, start } => {
                if let Ok((owner, _)) = self.lookup(i, start) {
                    self.nodes[i].state.set_finger(index, Some(owner));
                }
            }
            Action::CheckPredecessor(p) => {
                if !self.reachable(&p) {
                    self.nodes[i].state.peer_failed(p.id);
                }
            }
        }
    }

    fn node_round(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let actions = node.stabilizer.round(&mut node.state);
        for a in actions {
            self.execute(i, a);
        }
    }

    /// One stabilizer round of every live node, in a random order.
    fn round(&mut self) {
        self.now_ms += ROUND_MS;
        let mut order = self.live();
        self.rng.shuffle(&mut order);
        for i in order {
            self.node_round(i);
        }
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
        let now = self.now_ms;
        let s = &mut self.nodes[owner.addr];
        let id = alloc::claim(
            &s.state,
            &mut s.reservations,
            requested,
            claimant,
            now,
            CLAIM_TTL_MS,
        )
        .map_err(JoinError::Claim)?;
        Ok((id, owner))
    }

    /// Second half of a join: the granting node is the joiner's successor;
    /// take its list and notify it.
    fn enter(&mut self, id: NodeId, succ: Peer<usize>) -> usize {
        let i = self.add_node(id);
        let list = self.nodes[succ.addr].state.successors().to_vec();
        self.nodes[i].state.adopt_successors(succ.clone(), list);
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
    let r = log2(n).ceil() as usize + 2;
    let mut net = Net::new(seed, r, 4);
    let first = match ids {
        Ids::Sequential => alloc::FIRST_ID,
        Ids::Random => NodeId(net.rng.next_u64()),
    };
    net.add_node(first);
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

#[test]
fn small_rings_from_scratch_converge() {
    for (n, seed) in [(2, 7), (3, 8), (5, 9), (16, 10), (100, 11)] {
        let (mut net, rounds) = build(n, Ids::Random, seed);
        assert!(rounds <= 60);
        check_broadcast(&mut net);
        sample_lookups(&mut net, 200, true);
    }
}

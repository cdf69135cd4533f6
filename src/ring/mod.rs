//! The Chord core: routing state and every routing decision, as pure code.
//!
//! Nothing in this module touches a socket, a thread or a clock. The node asks
//! it what to do (a [`Route`], a list of [`stabilize::Action`]s, a
//! [`lookup::Lookup`] step), performs the I/O itself, and feeds the replies
//! back. Time, where it matters (ID reservations), is a parameter in
//! milliseconds.
//!
//! Everything is generic over the address type `A`, so the simulator in
//! `sim.rs` uses `usize` indices while the node uses socket addresses.
//!
//! Conventions:
//! - The successor list never contains this node. An empty list means the
//!   node believes it is alone, and then [`RoutingState::successor`] is the
//!   node itself.
//! - The predecessor of a ring of one is `None` ("unknown"), never the node
//!   itself.
//! - A finger never points at this node; `None` means "unknown" or "this
//!   node owns that start".

pub mod alloc;
pub mod broadcast;
pub mod census;
pub mod finger;
pub mod lookup;
pub mod resolve;
#[cfg(test)]
mod sim;
pub mod stabilize;

use crate::id::NodeId;

use std::fmt::Debug;

pub use finger::FINGER_COUNT;

/// How many alternative next hops [`RoutingState::next_hop`] offers besides
/// its best one, so that a lookup can route around a dead peer.
pub const NEXT_HOP_FALLBACKS: usize = 3;

/// A node of the ring: its identifier and the address to reach it at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer<A> {
    /// The node's position on the ring.
    pub id: NodeId,
    /// Where to reach it (a socket address for the node, an index in the simulator).
    pub addr: A,
}

impl<A> Peer<A> {
    /// A peer with this ID and address.
    pub fn new(id: NodeId, addr: A) -> Self {
        Peer { id, addr }
    }
}

/// The answer of one node to "who is next towards `target`?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<A> {
    /// The answering node knows the owner of the target (the first node at or
    /// clockwise after it): the lookup is over.
    Done(Peer<A>),
    /// Ask `peer` next: the closest node preceding the target that the
    /// answering node knows. `fallbacks` are the next-best such nodes, best
    /// first, to try if `peer` does not answer. Never contains the answering node.
    Next {
        /// The best next hop.
        peer: Peer<A>,
        /// Next-best hops, best first (at most [`NEXT_HOP_FALLBACKS`] + 1).
        fallbacks: Vec<Peer<A>>,
    },
}

/// What [`RoutingState::stabilize_reply`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StabilizeOutcome<A> {
    /// Send a notify (carrying this node) to this peer, the current successor.
    pub notify: Option<Peer<A>>,
    /// Whether the immediate successor changed.
    pub successor_changed: bool,
}

impl<A> Default for StabilizeOutcome<A> {
    fn default() -> Self {
        StabilizeOutcome {
            notify: None,
            successor_changed: false,
        }
    }
}

/// A node's view of the ring: itself, its predecessor, its successor list and
/// its finger table.
///
/// The node keeps one behind a lock; every method is a quick, I/O-free update
/// or query.
#[derive(Clone, Debug)]
pub struct RoutingState<A> {
    me: Peer<A>,
    predecessor: Option<Peer<A>>,
    successors: Vec<Peer<A>>,
    fingers: Vec<Option<Peer<A>>>,
    r: usize,
}

impl<A: Clone + Eq + Debug> RoutingState<A> {
    /// A ring of one: no predecessor (`None`), no other successor (the
    /// successor is `me`), no fingers. `r` is the successor-list length (at
    /// least 1; about log2 of the expected network size).
    pub fn new(me: Peer<A>, r: usize) -> Self {
        RoutingState {
            me,
            predecessor: None,
            successors: Vec::new(),
            fingers: vec![None; FINGER_COUNT],
            r: r.max(1),
        }
    }

    /// This node.
    pub fn me(&self) -> &Peer<A> {
        &self.me
    }

    /// The configured successor-list length.
    pub fn successor_list_len(&self) -> usize {
        self.r
    }

    /// The immediate successor; this node itself when it knows no other.
    pub fn successor(&self) -> &Peer<A> {
        self.successors.first().unwrap_or(&self.me)
    }

    /// The successor list, nearest first, at most `r` entries, never this
    /// node; empty when the node believes it is alone.
    pub fn successors(&self) -> &[Peer<A>] {
        &self.successors
    }

    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<&Peer<A>> {
        self.predecessor.as_ref()
    }

    /// The finger table: entry `i` is the first node at or after
    /// `me + 2^i`, or `None` when unknown or when this node owns that start.
    pub fn fingers(&self) -> &[Option<Peer<A>>] {
        &self.fingers
    }

    /// Whether this node knows no successor other than itself (then it
    /// answers every lookup itself).
    pub fn is_alone(&self) -> bool {
        self.successors.is_empty()
    }

    /// Whether this node owns `id`, i.e. `id` is in `(predecessor, me]`.
    ///
    /// With no known predecessor the node owns everything when it is alone,
    /// and only its own ID otherwise (it cannot tell where its range starts).
    pub fn owns(&self, id: NodeId) -> bool {
        match &self.predecessor {
            Some(p) => id.in_half_open(p.id, self.me.id),
            None => self.successors.is_empty() || id == self.me.id,
        }
    }

    /// One routing step towards `target`.
    ///
    /// `Done(me)` when `target` is this node's ID, when this node owns it, or
    /// when it knows no other node; `Done(p)` when the predecessor or a
    /// successor `p` has exactly the ID `target` (a node owns its own ID);
    /// `Done(successor)` when
    /// `target` is in `(me, successor]`; otherwise `Next` with the closest
    /// preceding node among fingers and successors (never this node), and up
    /// to [`NEXT_HOP_FALLBACKS`] next-best ones plus the successor as fallbacks.
    pub fn next_hop(&self, target: NodeId) -> Route<A> {
        if target == self.me.id || self.successors.is_empty() {
            return Route::Done(self.me.clone());
        }
        if let Some(p) = &self.predecessor {
            if target.in_half_open(p.id, self.me.id) {
                return Route::Done(self.me.clone());
            }
        }
        // Only the predecessor and successor list, which the stabilizer checks
        // every round: a stale finger must not be repeated as an owner.
        if let Some(exact) = self
            .predecessor
            .iter()
            .chain(&self.successors)
            .find(|p| p.id == target)
        {
            return Route::Done(exact.clone());
        }
        let succ = self.successor();
        if target.in_half_open(self.me.id, succ.id) {
            return Route::Done(succ.clone());
        }
        let mut top = finger::TopPreceding::new(self.me.id, target, NEXT_HOP_FALLBACKS + 1);
        for p in &self.successors {
            top.offer(p);
        }
        for p in self.fingers.iter().flatten() {
            top.offer(p);
        }
        let mut best = top.into_vec();
        // The successor is the most recently verified peer: keep it as the last
        // resort so a lookup can always make (slow) progress.
        if !best.iter().any(|p| p.id == succ.id) {
            best.push(succ.clone());
        }
        // `succ` lies in (me, target) here, so `best` is never empty.
        let peer = best.remove(0);
        Route::Next {
            peer,
            fallbacks: best,
        }
    }

    /// The closest node strictly between this node and `target` among fingers
    /// and successors, if any.
    pub fn closest_preceding_node(&self, target: NodeId) -> Option<&Peer<A>> {
        finger::closest_preceding(self.me.id, target, self.known_peers())
    }

    /// Replace the successor list by `first` followed by `its_successors`
    /// (normally `first`'s own successor list), keeping only entries in
    /// clockwise order from this node: duplicates, this node, and anything
    /// after the list wraps around are dropped; at most `r` are kept.
    pub fn adopt_successors(&mut self, first: Peer<A>, its_successors: Vec<Peer<A>>) {
        let mut list: Vec<Peer<A>> = Vec::with_capacity(self.r);
        let mut last = 0u64;
        for p in std::iter::once(first).chain(its_successors) {
            if list.len() >= self.r {
                break;
            }
            let d = self.me.id.distance_to(p.id);
            if d > last {
                last = d;
                list.push(p);
            }
        }
        self.successors = list;
    }

    /// Handle the successor's answer to "who is your predecessor, and what is
    /// your successor list?" (the stabilize exchange). `from` is the peer that
    /// was asked; an answer from anyone but the current successor is stale
    /// and ignored.
    ///
    /// If the successor's predecessor lies in `(me, successor)` it becomes the
    /// new successor. Returns whom to notify: the successor, unless it already
    /// names this node as its predecessor.
    pub fn stabilize_reply(
        &mut self,
        from: &Peer<A>,
        succ_pred: Option<Peer<A>>,
        succ_list: Vec<Peer<A>>,
    ) -> StabilizeOutcome<A> {
        if self.successors.is_empty() || from.id != self.successor().id {
            return StabilizeOutcome::default();
        }
        let old = self.successor().id;
        let succ = self.successor().clone();
        let mut already_pred = false;
        match succ_pred {
            Some(x) if x.id.in_open(self.me.id, succ.id) => {
                let mut rest = Vec::with_capacity(succ_list.len() + 1);
                rest.push(succ);
                rest.extend(succ_list);
                self.adopt_successors(x, rest);
            }
            other => {
                already_pred = other.is_some_and(|x| x.id == self.me.id);
                self.adopt_successors(succ, succ_list);
            }
        }
        let successor_changed = self.successor().id != old;
        if successor_changed {
            log::debug!(
                "node {}: successor {} -> {}",
                self.me.id,
                old,
                self.successor().id
            );
        }
        let notify = if already_pred && !successor_changed {
            None
        } else {
            self.successors.first().cloned()
        };
        StabilizeOutcome {
            notify,
            successor_changed,
        }
    }

    /// `candidate` thinks it might be our predecessor. Adopt it when the
    /// predecessor is unknown or `candidate` lies in `(predecessor, me)`.
    /// A node that knows no successor also takes `candidate` as its successor
    /// (this closes a ring of two). Returns whether the predecessor changed.
    pub fn notify(&mut self, candidate: Peer<A>) -> bool {
        if candidate.id == self.me.id {
            return false;
        }
        if self.successors.is_empty() {
            self.successors.push(candidate.clone());
        }
        let take = match &self.predecessor {
            None => true,
            Some(p) => candidate.id.in_open(p.id, self.me.id),
        };
        let changed = take && self.predecessor.as_ref() != Some(&candidate);
        if changed {
            log::debug!("node {}: predecessor is now {}", self.me.id, candidate.id);
        }
        if take {
            self.predecessor = Some(candidate);
        }
        changed
    }

    /// Forget a peer that did not answer: drop it as predecessor, from the
    /// successor list and from the fingers. If the successor list empties,
    /// fall back to the nearest finger, else the predecessor, else being alone.
    pub fn peer_failed(&mut self, id: NodeId) {
        if id == self.me.id {
            return;
        }
        if self.predecessor.as_ref().is_some_and(|p| p.id == id) {
            self.predecessor = None;
        }
        self.successors.retain(|p| p.id != id);
        for f in self.fingers.iter_mut() {
            if f.as_ref().is_some_and(|p| p.id == id) {
                *f = None;
            }
        }
        if self.successors.is_empty() {
            let me = self.me.id;
            let fallback = self
                .fingers
                .iter()
                .flatten()
                .min_by_key(|p| me.distance_to(p.id))
                .or(self.predecessor.as_ref())
                .cloned();
            if let Some(p) = fallback {
                self.successors.push(p);
            }
        }
    }

    /// A neighbour leaves gracefully and tells us its predecessor and
    /// successor list: unlink it and splice its neighbours in.
    pub fn peer_left(
        &mut self,
        leaving: NodeId,
        its_predecessor: Option<Peer<A>>,
        its_successors: Vec<Peer<A>>,
    ) {
        let was_successor = self.successors.first().is_some_and(|p| p.id == leaving);
        let was_predecessor = self.predecessor.as_ref().is_some_and(|p| p.id == leaving);
        let mut mine: Vec<Peer<A>> = self.successors.clone();
        self.peer_failed(leaving);
        if was_successor {
            mine.retain(|p| p.id != leaving);
            let mut offered = its_successors.into_iter().filter(|p| p.id != leaving);
            if let Some(first) = offered.next() {
                let mut rest: Vec<Peer<A>> = offered.collect();
                rest.append(&mut mine);
                rest.sort_by_key(|p| self.me.id.distance_to(p.id));
                self.adopt_successors(first, rest);
            }
        }
        if was_predecessor {
            if let Some(p) = its_predecessor.filter(|p| p.id != leaving) {
                self.notify(p);
            }
        }
    }

    /// Set finger `index` (0..64) to `peer`; a peer equal to this node is
    /// stored as `None`. Out-of-range indices are ignored.
    pub fn set_finger(&mut self, index: usize, peer: Option<Peer<A>>) {
        let me = self.me.id;
        if let Some(slot) = self.fingers.get_mut(index) {
            *slot = peer.filter(|p| p.id != me);
        }
    }

    /// The peer of the peer book ([`RoutingState::neighbours`]) with ID
    /// `id`, if any: the same answer without building the book (no
    /// allocation, no sort; a request by ID asks this first).
    pub fn neighbour(&self, id: NodeId) -> Option<&Peer<A>> {
        if id == self.me.id {
            return None;
        }
        self.predecessor
            .iter()
            .chain(self.known_peers())
            .find(|p| p.id == id)
    }

    /// The peer book: distinct peers among the predecessor, the successor
    /// list and the fingers (never this node), in clockwise order from it.
    pub fn neighbours(&self) -> Vec<Peer<A>> {
        let me = self.me.id;
        let mut all: Vec<Peer<A>> = self
            .predecessor
            .iter()
            .chain(self.known_peers())
            .filter(|p| p.id != me)
            .cloned()
            .collect();
        all.sort_by_key(|p| me.distance_to(p.id));
        all.dedup_by_key(|p| p.id);
        all
    }

    /// The links a node keeps open: its successor and its predecessor
    /// (distinct, never this node), the successor first.
    pub fn ring_links(&self) -> Vec<Peer<A>> {
        let me = self.me.id;
        let mut v: Vec<Peer<A>> = Vec::with_capacity(2);
        for p in std::iter::once(self.successor()).chain(self.predecessor()) {
            if p.id != me && !v.iter().any(|q| q.id == p.id) {
                v.push(p.clone());
            }
        }
        v
    }

    /// Successors then fingers (may repeat).
    fn known_peers(&self) -> impl Iterator<Item = &Peer<A>> {
        self.successors.iter().chain(self.fingers.iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    fn ids(v: &[Peer<usize>]) -> Vec<u64> {
        v.iter().map(|p| p.id.0).collect()
    }

    #[test]
    fn ring_of_one() {
        let s = RoutingState::new(p(7), 4);
        assert!(s.is_alone());
        assert_eq!(s.successor(), &p(7));
        assert!(s.predecessor().is_none());
        assert!(s.owns(NodeId(0)) && s.owns(NodeId(u64::MAX)));
        assert_eq!(s.next_hop(NodeId(99)), Route::Done(p(7)));
        assert!(s.neighbours().is_empty());
    }

    #[test]
    fn splice_orders_dedups_and_truncates() {
        let mut s = RoutingState::new(p(10), 3);
        s.adopt_successors(p(20), vec![p(30), p(30), p(10), p(40), p(50)]);
        assert_eq!(ids(s.successors()), vec![20, 30, 40]);
        // Wrap-around: entries after the list passes this node are dropped.
        let mut s = RoutingState::new(p(u64::MAX - 1), 8);
        s.adopt_successors(p(u64::MAX), vec![p(3), p(u64::MAX - 1), p(u64::MAX), p(5)]);
        assert_eq!(ids(s.successors()), vec![u64::MAX, 3, 5]);
        // Out-of-order (malicious) entries are dropped, not sorted in.
        let mut s = RoutingState::new(p(0), 8);
        s.adopt_successors(p(50), vec![p(20), p(60)]);
        assert_eq!(ids(s.successors()), vec![50, 60]);
    }

    #[test]
    fn next_hop_done_cases_and_wrap() {
        let mut s = RoutingState::new(p(u64::MAX - 10), 4);
        s.adopt_successors(p(5), vec![p(100)]);
        assert_eq!(s.next_hop(NodeId(0)), Route::Done(p(5)));
        assert_eq!(s.next_hop(NodeId(5)), Route::Done(p(5)));
        assert_eq!(
            s.next_hop(NodeId(u64::MAX - 10)),
            Route::Done(p(u64::MAX - 10))
        );
        assert_eq!(
            s.next_hop(NodeId(50)),
            Route::Next {
                peer: p(5),
                fallbacks: vec![]
            }
        );
        s.notify(p(1000));
        assert_eq!(s.next_hop(NodeId(2000)), Route::Done(p(u64::MAX - 10)));
        // Only `me` is ever Done without a successor; never Next(me).
        for t in [1u64, 6, 99, 100, 101, 999, 1000] {
            match s.next_hop(NodeId(t)) {
                Route::Next { peer, fallbacks } => {
                    assert_ne!(peer.id, s.me().id);
                    assert!(peer.id.in_open(s.me().id, NodeId(t)));
                    assert!(fallbacks.iter().all(|f| f.id.in_open(s.me().id, NodeId(t))));
                }
                Route::Done(o) => assert!(NodeId(t).in_half_open(s.me().id, o.id)),
            }
        }
    }

    #[test]
    fn exact_ids_only_from_checked_neighbours() {
        let mut s = RoutingState::new(p(0), 3);
        s.adopt_successors(p(10), vec![p(20), p(30)]);
        s.notify(p(900));
        s.set_finger(6, Some(p(64)));
        assert_eq!(s.next_hop(NodeId(20)), Route::Done(p(20)));
        assert_eq!(s.next_hop(NodeId(900)), Route::Done(p(900)));
        // A finger may be stale: it is only a next hop, never an answer.
        assert!(matches!(s.next_hop(NodeId(64)), Route::Next { peer, .. } if peer == p(30)));
    }

    #[test]
    fn closest_preceding_uses_fingers_and_successors() {
        let mut s = RoutingState::new(p(0), 2);
        s.adopt_successors(p(1), vec![p(2), p(3)]);
        s.set_finger(4, Some(p(16)));
        s.set_finger(6, Some(p(64)));
        assert_eq!(s.closest_preceding_node(NodeId(40)), Some(&p(16)));
        assert_eq!(s.closest_preceding_node(NodeId(64)), Some(&p(16)));
        assert_eq!(s.closest_preceding_node(NodeId(65)), Some(&p(64)));
        assert_eq!(s.closest_preceding_node(NodeId(3)), Some(&p(2)));
        assert_eq!(s.closest_preceding_node(NodeId(1)), None);
        match s.next_hop(NodeId(100)) {
            Route::Next { peer, fallbacks } => {
                assert_eq!(peer, p(64));
                assert_eq!(ids(&fallbacks), vec![16, 2, 1]);
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn notify_rules() {
        let mut s = RoutingState::new(p(100), 4);
        assert!(s.notify(p(50)));
        assert_eq!(
            s.successor(),
            &p(50),
            "a lonely node takes its notifier as successor"
        );
        assert!(!s.notify(p(40)), "40 is not in (50, 100)");
        assert!(s.notify(p(60)));
        assert!(!s.notify(p(100)), "never itself");
        assert!(!s.notify(p(60)), "same again: no change");
        // Wrap-around interval (pred, me) = (u64::MAX - 5, 100).
        let mut s = RoutingState::new(p(100), 4);
        s.notify(p(u64::MAX - 5));
        assert!(s.notify(p(3)));
        assert!(!s.notify(p(u64::MAX - 6)));
        assert!(s.owns(NodeId(50)) && !s.owns(NodeId(2)) && !s.owns(NodeId(101)));
    }

    #[test]
    fn stabilize_adopts_closer_successor() {
        let mut s = RoutingState::new(p(10), 4);
        s.adopt_successors(p(30), vec![p(40)]);
        let out = s.stabilize_reply(&p(30), Some(p(20)), vec![p(40), p(50)]);
        assert!(out.successor_changed);
        assert_eq!(out.notify, Some(p(20)));
        assert_eq!(ids(s.successors()), vec![20, 30, 40, 50]);
        // Successor already knows us: splice only, no notify.
        let out = s.stabilize_reply(&p(20), Some(p(10)), vec![p(30), p(45)]);
        assert_eq!(out, StabilizeOutcome::default());
        assert_eq!(ids(s.successors()), vec![20, 30, 45]);
        // Stale answer from a former successor is ignored.
        let out = s.stabilize_reply(&p(30), Some(p(15)), vec![]);
        assert_eq!(out, StabilizeOutcome::default());
        assert_eq!(s.successor(), &p(20));
        // Unknown predecessor at the successor: notify it.
        let out = s.stabilize_reply(&p(20), None, vec![p(30)]);
        assert_eq!(out.notify, Some(p(20)));
    }

    #[test]
    fn failure_fallbacks() {
        let mut s = RoutingState::new(p(10), 3);
        s.adopt_successors(p(20), vec![p(30)]);
        s.notify(p(5));
        s.set_finger(5, Some(p(50)));
        s.set_finger(6, Some(p(80)));
        s.peer_failed(NodeId(20));
        assert_eq!(ids(s.successors()), vec![30]);
        s.peer_failed(NodeId(30));
        assert_eq!(s.successor(), &p(50), "nearest finger");
        s.peer_failed(NodeId(50));
        s.peer_failed(NodeId(80));
        assert_eq!(s.successor(), &p(5), "then the predecessor");
        s.peer_failed(NodeId(5));
        assert!(s.is_alone());
        assert_eq!(s.next_hop(NodeId(7)), Route::Done(p(10)));
    }

    #[test]
    fn graceful_leave_splices() {
        let mut a = RoutingState::new(p(10), 3);
        a.adopt_successors(p(20), vec![p(30), p(40)]);
        a.peer_left(NodeId(20), Some(p(10)), vec![p(30), p(40), p(50)]);
        assert_eq!(ids(a.successors()), vec![30, 40, 50]);
        let mut c = RoutingState::new(p(30), 3);
        c.notify(p(20));
        c.peer_left(NodeId(20), Some(p(10)), vec![p(30)]);
        assert_eq!(c.predecessor(), Some(&p(10)));
    }

    #[test]
    fn neighbours_are_distinct_and_ordered() {
        let mut s = RoutingState::new(p(10), 3);
        s.adopt_successors(p(20), vec![p(30)]);
        s.notify(p(5));
        s.set_finger(0, Some(p(20)));
        s.set_finger(3, Some(p(20)));
        s.set_finger(5, Some(p(50)));
        s.set_finger(6, Some(p(10)));
        assert_eq!(s.fingers()[6], None);
        assert_eq!(ids(&s.neighbours()), vec![20, 30, 50, 5]);
        for p in s.neighbours() {
            assert_eq!(s.neighbour(p.id), Some(&p));
        }
        assert_eq!(s.neighbour(NodeId(40)), None);
        assert_eq!(s.neighbour(s.me().id), None);
        s.set_finger(64, Some(p(70)));
        assert_eq!(s.neighbours().len(), 4);
        assert_eq!(ids(&s.ring_links()), vec![20, 5]);
        let alone = RoutingState::new(p(10), 3);
        assert!(alone.ring_links().is_empty());
    }
}

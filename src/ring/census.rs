//! The ring's census, as pure code: when the root counts the ring, the count
//! itself (a walk along successor lists, in jumps), what changed since the
//! last count, and how every node takes the root's size news.
//!
//! Time is a parameter in the caller's milliseconds; nothing here does I/O.
//!
//! The walk. The root (the owner of ID 0) asks a node for its predecessor
//! and successor list, appends the list to the members it has, and jumps
//! [`Walk::step`] nodes ahead (half the successor-list length) to ask the
//! next one, until the lists come back round to the root. So a count costs
//! about `2 n / r` requests instead of one per node (at 1,024 nodes and
//! `r = 8`, 256 instead of 1,024). Successor lists are second-hand, so the
//! walk checks them against each other: every node asked must name, as its
//! predecessor, the member before it in the list that named it, and its
//! successor list must agree with the rest of that list where they overlap
//! (the jump is half a list, so every stretch of the ring is named by two
//! nodes). Any disagreement means the ring is settling (a node joined or
//! left and the news has not gone round the successor lists yet): the count
//! is dropped and taken again soon ([`Census::settling`]).
//!
//! The news. The root numbers its counts (epochs) and broadcasts the size
//! with the members that joined and left. A node applies news from the
//! root it last heard only when it is newer (messages that arrive late or
//! twice change nothing), and news from another root (the old one died and
//! the next node owns ID 0 now) at once, numbering on from it; a new root
//! numbers its counts on from the newest epoch it heard.

use super::Peer;
use crate::id::NodeId;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// The root counts the ring every this many stabilizer rounds, and at once
/// (spaced) when it learns of a change.
pub const WALK_EVERY: u64 = 4;
/// The root repeats an unchanged size broadcast every this many counts, for
/// nodes that missed it.
pub const REPEAT_SIZE_EVERY: u64 = 4;
/// A walk gives up past this many members.
pub const MAX_WALK: usize = 1 << 20;

/// The root's size news: the count, its number, and what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct News<A> {
    /// The number of nodes counted.
    pub size: usize,
    /// The number of the count (counts are numbered on across roots).
    pub epoch: u64,
    /// Members new since the last count (or now held by another address).
    pub joined: Vec<Peer<A>>,
    /// Members gone since the last count.
    pub left: Vec<NodeId>,
}

/// One node's view of the ring's size and membership.
#[derive(Clone, Debug)]
pub struct Census<A> {
    size: usize,
    members: BTreeMap<NodeId, A>,
    epoch: u64,
    /// The root whose news this node applied last (itself at the root).
    source: Option<NodeId>,
    recount: bool,
    last_walk_ms: Option<u64>,
    /// Counts to take (and broadcast) soon, at most one per spacing: a
    /// change is counted and sent again twice (successor lists lag a little
    /// behind the ring, and a broadcast may miss nodes while it settles).
    moving: u8,
}

impl<A: Clone + Eq + Debug> Census<A> {
    /// A ring of one: this node.
    pub fn new(me: &Peer<A>) -> Self {
        Census {
            size: 1,
            members: BTreeMap::from([(me.id, me.addr.clone())]),
            epoch: 0,
            source: None,
            recount: true,
            last_walk_ms: None,
            moving: 0,
        }
    }

    /// The size last counted (by the root, or here at the root).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Set the size this node believes before any news (a joiner takes its
    /// granter's count plus itself).
    pub fn set_size(&mut self, size: usize) {
        self.size = size.max(1);
    }

    /// The members of the last count heard.
    pub fn members(&self) -> &BTreeMap<NodeId, A> {
        &self.members
    }

    /// Drop these members (the ring showed they are gone).
    pub fn forget(&mut self, ids: &[NodeId]) {
        for id in ids {
            self.members.remove(id);
        }
    }

    /// The number of the last count heard (or made).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Something changed: at the root, count again at the next chance.
    pub fn ask_recount(&mut self) {
        self.recount = true;
    }

    /// Whether a recount is asked for.
    pub fn recount_asked(&self) -> bool {
        self.recount
    }

    /// Whether the root should count now, at `now_ms`: at every periodic
    /// chance (`periodic`), and when a change was reported or the last
    /// count moved, at most once per `spacing_ms`. Marks the walk as begun.
    pub fn walk_due(
        &mut self,
        is_root: bool,
        periodic: bool,
        now_ms: u64,
        spacing_ms: u64,
    ) -> bool {
        let rested = self
            .last_walk_ms
            .is_none_or(|t| now_ms >= t.saturating_add(spacing_ms));
        let due = is_root && (periodic || ((self.recount || self.moving > 0) && rested));
        if due {
            self.recount = false;
            self.last_walk_ms = Some(now_ms);
        }
        due
    }

    /// The walk found the ring settling: count again soon.
    pub fn settling(&mut self) {
        self.recount = true;
    }

    /// At the root: take the count `members` (this node first, then in ring
    /// order). Returns the news and whether to broadcast it (something
    /// changed, or it is time to repeat it).
    pub fn publish(&mut self, me: NodeId, members: &[Peer<A>]) -> (News<A>, bool) {
        let now: BTreeMap<NodeId, A> = members.iter().map(|p| (p.id, p.addr.clone())).collect();
        let joined: Vec<Peer<A>> = members
            .iter()
            .filter(|p| self.members.get(&p.id) != Some(&p.addr))
            .cloned()
            .collect();
        let left: Vec<NodeId> = self
            .members
            .keys()
            .filter(|id| !now.contains_key(id))
            .copied()
            .collect();
        let changed = !joined.is_empty() || !left.is_empty() || self.size != now.len();
        // A count that moved is taken (and sent) again twice, soon: while
        // the ring settles, successor lists lag a little behind it.
        let again = self.moving > 0;
        self.moving = if changed {
            2
        } else {
            self.moving.saturating_sub(1)
        };
        self.epoch += 1;
        self.size = now.len();
        self.members = now;
        self.source = Some(me);
        let news = News {
            size: self.size,
            epoch: self.epoch,
            joined,
            left,
        };
        let send = changed || again || self.epoch % REPEAT_SIZE_EVERY == 1;
        (news, send)
    }

    /// News from the root `origin`: applied (and returned, for the events)
    /// unless it is older than news already applied from the same root.
    pub fn apply(&mut self, origin: NodeId, news: News<A>) -> Option<News<A>> {
        if self.source == Some(origin) && news.epoch <= self.epoch {
            return None;
        }
        // A new root's numbers may lag the old root's: its own count on.
        self.source = Some(origin);
        self.size = news.size.max(1);
        self.epoch = news.epoch;
        for p in &news.joined {
            self.members.insert(p.id, p.addr.clone());
        }
        for id in &news.left {
            self.members.remove(id);
        }
        Some(news)
    }
}

/// What a [`Walk`] asks for next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkStep<A> {
    /// Ask this node for its predecessor and successor list.
    Ask(Peer<A>),
    /// The ring is counted: every member, the root first, in ring order.
    Done(Vec<Peer<A>>),
    /// The ring is settling (or a node did not answer): count again soon.
    Settling(&'static str),
}

/// One count of the ring by the root, along successor lists in jumps.
///
/// The members come from successor lists; the nodes asked are every
/// [`Walk::step`]-th member and finally the root's predecessor, which must
/// name the root as its successor. Each node asked must name the member
/// before it as its predecessor, and its list must agree with the members
/// after it.
#[derive(Clone, Debug)]
pub struct Walk<A> {
    /// Members so far, the root first, in ring order.
    members: Vec<Peer<A>>,
    /// The root's predecessor, which closes the ring.
    pred: Option<Peer<A>>,
    /// The lists reached the root's predecessor: the members are complete.
    reached: bool,
    /// Index in `members` of the node asked last.
    asked: Option<usize>,
    step: usize,
    requests: usize,
    outcome: Option<WalkStep<A>>,
}

impl<A: Clone + Eq + Debug> Walk<A> {
    /// Start a count at the root `me`, with its predecessor and successor
    /// list (`r` long at most).
    pub fn new(me: Peer<A>, pred: Option<Peer<A>>, successors: &[Peer<A>], r: usize) -> Self {
        let mut w = Walk {
            members: vec![me],
            pred,
            reached: false,
            asked: None,
            step: (r / 2).max(1),
            requests: 0,
            outcome: None,
        };
        match (&w.pred, successors.is_empty()) {
            (None, true) => w.outcome = Some(WalkStep::Done(w.members.clone())),
            (None, false) => w.outcome = Some(WalkStep::Settling("the root has no predecessor")),
            (Some(_), true) => w.outcome = Some(WalkStep::Settling("the root has no successor")),
            (Some(_), false) => {
                if let Err(why) = w.extend(successors) {
                    w.outcome = Some(WalkStep::Settling(why));
                }
            }
        }
        w
    }

    /// How many nodes the walk jumps between two requests.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Requests made so far.
    pub fn requests(&self) -> usize {
        self.requests
    }

    fn me(&self) -> NodeId {
        self.members[0].id
    }

    /// Append `list` (successors in order) to the members, up to the root's
    /// predecessor. An out-of-order entry, or the root before its
    /// predecessor, is a settling ring.
    fn extend(&mut self, list: &[Peer<A>]) -> Result<(), &'static str> {
        let me = self.me();
        for p in list {
            if self.reached {
                return Ok(());
            }
            if p.id == me {
                return Err("the successor lists skip the root's predecessor");
            }
            let last = self.members.last().map_or(me, |l| l.id);
            if me.distance_to(p.id) <= me.distance_to(last) {
                return Err("a successor list is out of order");
            }
            if self.members.len() >= MAX_WALK {
                return Err("the ring is larger than a walk counts");
            }
            self.members.push(p.clone());
            self.reached = self.pred.as_ref().is_some_and(|q| q.id == p.id);
        }
        Ok(())
    }

    /// What to do next.
    pub fn next(&mut self) -> WalkStep<A> {
        if let Some(o) = &self.outcome {
            return o.clone();
        }
        // Jump `step` ahead from the node asked last (from the root at
        // first), but never past the last member known.
        let last = self.members.len() - 1;
        let from = self.asked.unwrap_or(0);
        if from == last {
            let o = if self.reached {
                WalkStep::Done(self.members.clone())
            } else {
                WalkStep::Settling("the successor lists end early")
            };
            self.outcome = Some(o.clone());
            return o;
        }
        let at = (from + self.step).min(last);
        self.asked = Some(at);
        self.requests += 1;
        WalkStep::Ask(self.members[at].clone())
    }

    /// The asked node's answer: who answered (`who`), its predecessor and its
    /// successor list.
    pub fn on_reply(&mut self, who: &Peer<A>, pred: Option<Peer<A>>, successors: &[Peer<A>]) {
        let Some(at) = self.asked else { return };
        if self.outcome.is_some() {
            return;
        }
        let settle = |w: &mut Self, why| w.outcome = Some(WalkStep::Settling(why));
        if who.id != self.members[at].id {
            return settle(self, "a node answered for another ID");
        }
        if pred.as_ref().map(|p| p.id) != Some(self.members[at - 1].id) {
            return settle(self, "a node names another predecessor");
        }
        if successors.is_empty() {
            return settle(self, "a node has no successor");
        }
        // Where its list overlaps what is known (the members after it, and
        // the root after the root's predecessor), they must agree.
        let mut known: Vec<NodeId> = self.members[at + 1..].iter().map(|p| p.id).collect();
        if self.reached {
            known.push(self.me());
        }
        let overlap = known.len().min(successors.len());
        if known[..overlap]
            .iter()
            .zip(&successors[..overlap])
            .any(|(a, b)| *a != b.id)
        {
            return settle(self, "two successor lists disagree");
        }
        if let Err(why) = self.extend(&successors[overlap..]) {
            settle(self, why);
        }
    }

    /// The asked node did not answer.
    pub fn on_failure(&mut self) {
        if self.outcome.is_none() {
            self.outcome = Some(WalkStep::Settling("a node did not answer"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    /// Drive a walk over a true ring `ids` (sorted), successor lists `r` long.
    fn walk_ring(ids: &[u64], r: usize) -> (WalkStep<usize>, usize) {
        let n = ids.len();
        let pos = |id: NodeId| ids.iter().position(|x| *x == id.0).unwrap();
        let succs = |i: usize| -> Vec<Peer<usize>> {
            (1..=r.min(n - 1)).map(|k| p(ids[(i + k) % n])).collect()
        };
        let pred = |i: usize| (n > 1).then(|| p(ids[(i + n - 1) % n]));
        let mut w = Walk::new(p(ids[0]), pred(0), &succs(0), r);
        loop {
            match w.next() {
                WalkStep::Ask(q) => {
                    let i = pos(q.id);
                    w.on_reply(&q, pred(i), &succs(i));
                }
                other => return (other, w.requests()),
            }
        }
    }

    #[test]
    fn a_walk_counts_a_stable_ring_in_jumps() {
        for (n, r) in [
            (1, 8),
            (2, 8),
            (3, 1),
            (9, 8),
            (100, 8),
            (1024, 8),
            (1000, 5),
        ] {
            let ids: Vec<u64> = (0..n).map(|i| i * 3).collect();
            let (step, requests) = walk_ring(&ids, r);
            match step {
                WalkStep::Done(m) => {
                    let got: Vec<u64> = m.iter().map(|p| p.id.0).collect();
                    assert_eq!(got, ids, "n={n} r={r}");
                }
                other => panic!("n={n}: {other:?}"),
            }
            let jump = (r / 2).max(1) as u64;
            assert!(requests as u64 <= n.div_ceil(jump) + 1, "n={n}: {requests}");
        }
        // 1,024 nodes with lists of 8: 256 requests, not 1,024.
        let ids: Vec<u64> = (0..1024).collect();
        assert_eq!(walk_ring(&ids, 8).1, 256);
    }

    #[test]
    fn a_walk_that_meets_disagreement_reports_a_settling_ring() {
        // The root's list skips node 2 (it joined a moment ago), node 3 knows it.
        let mut w = Walk::new(p(0), Some(p(5)), &[p(1), p(3), p(4), p(5)], 4);
        assert_eq!(w.next(), WalkStep::Ask(p(3)));
        w.on_reply(&p(3), Some(p(2)), &[p(4), p(5), p(0)]);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
        // A list that disagrees with the one before.
        let mut w = Walk::new(p(0), Some(p(9)), &[p(1), p(2), p(3), p(4)], 4);
        assert_eq!(w.next(), WalkStep::Ask(p(2)));
        w.on_reply(&p(2), Some(p(1)), &[p(3), p(5), p(6), p(7)]);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
        // A node that does not answer, or answers for another ID.
        let mut w = Walk::new(p(0), Some(p(9)), &[p(1), p(2), p(3), p(4)], 4);
        let WalkStep::Ask(q) = w.next() else { panic!() };
        w.on_failure();
        assert!(matches!(w.next(), WalkStep::Settling(_)), "{q:?}");
        let mut w = Walk::new(p(0), Some(p(9)), &[p(1), p(2), p(3), p(4)], 4);
        let _ = w.next();
        w.on_reply(&p(7), Some(p(1)), &[p(3)]);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
        // A root without a predecessor but with successors is settling.
        let mut w = Walk::new(p(0), None, &[p(1)], 4);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
        // The lists come round to the root without passing its predecessor.
        let mut w = Walk::new(p(0), Some(p(4)), &[p(1), p(2), p(0)], 4);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
        // The root's predecessor names another successor than the root.
        let mut w = Walk::new(p(0), Some(p(2)), &[p(1), p(2)], 4);
        assert_eq!(w.next(), WalkStep::Ask(p(2)));
        w.on_reply(&p(2), Some(p(1)), &[p(3), p(0)]);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
    }

    #[test]
    fn the_root_counts_when_due_and_spaced() {
        let mut c = Census::new(&p(0));
        assert!(!c.walk_due(false, true, 0, 250), "only the root counts");
        assert!(c.walk_due(true, false, 0, 250), "a new root counts at once");
        assert!(!c.walk_due(true, false, 10, 250), "nothing asked");
        c.ask_recount();
        assert!(!c.walk_due(true, false, 100, 250), "spaced");
        assert!(c.walk_due(true, false, 250, 250));
        assert!(
            c.walk_due(true, true, 260, 250),
            "periodic counts are not spaced"
        );
        // A count that moved is taken again after the spacing.
        let (news, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(send);
        assert_eq!(news.joined, vec![p(1)]);
        assert!(c.walk_due(true, false, 510, 250));
        let (news, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(news.joined.is_empty() && news.left.is_empty());
        assert!(send, "a change is sent again twice");
        assert!(c.walk_due(true, false, 760, 250));
        let (_, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(send, "a change is sent again twice");
        assert!(!c.walk_due(true, false, 1100, 250), "settled");
        assert!(c.walk_due(true, true, 1100, 250));
        let (news, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(
            !send,
            "unchanged, not due for a repeat (epoch {})",
            news.epoch
        );
        assert!(!c.walk_due(true, false, 1400, 250), "settled");
        c.settling();
        assert!(c.walk_due(true, false, 1400, 250));
    }

    #[test]
    fn news_is_applied_in_order_and_a_new_root_takes_over() {
        let mut c = Census::new(&p(5));
        let news = |size, epoch, joined: Vec<u64>, left: Vec<u64>| News {
            size,
            epoch,
            joined: joined.into_iter().map(p).collect(),
            left: left.into_iter().map(NodeId).collect(),
        };
        assert!(c.apply(NodeId(0), news(3, 7, vec![0, 1], vec![])).is_some());
        assert_eq!(c.size(), 3);
        // Late or repeated news from the same root changes nothing.
        assert!(c.apply(NodeId(0), news(2, 6, vec![], vec![1])).is_none());
        assert!(c.apply(NodeId(0), news(2, 7, vec![], vec![1])).is_none());
        assert_eq!(c.size(), 3);
        assert!(c.members().contains_key(&NodeId(1)));
        // The root died; node 1 owns ID 0 now and counts from its own epoch.
        assert!(c.apply(NodeId(1), news(2, 2, vec![], vec![0])).is_some());
        assert_eq!(c.size(), 2);
        assert!(!c.members().contains_key(&NodeId(0)));
        assert!(c.apply(NodeId(1), news(4, 3, vec![2, 3], vec![])).is_some());
        assert_eq!(c.size(), 4);
        assert!(c.apply(NodeId(1), news(3, 2, vec![], vec![2])).is_none());
        // A new root numbers its counts on from the newest it heard.
        let (n, _) = c.publish(NodeId(5), &[p(5), p(1)]);
        assert_eq!(n.epoch, 4);
        assert_eq!(n.left, vec![NodeId(2), NodeId(3)]);
    }
}

//! Whether a node holds an ID, decided so that a live node is never
//! reported absent while the ring settles around it.
//!
//! A lookup of an ID ends at its owner, the first node at or after it. When
//! the owner's ID is not the one looked up, two nodes are asked: the owner
//! and its predecessor `p`. The ID is absent only if they agree (the owner
//! names `p` as its predecessor, `p` names the owner as its successor, the
//! ID lies strictly between them) and neither dropped the ID as
//! unresponsive a moment ago ([`Lost`]): a node whose neighbours both timed
//! it out once (a slow moment, a lost message) is still alive until its
//! next round links it back in. Nor is an ID absent while either holds a
//! live grant of it ([`unsure`]): a joiner whose first notify was lost
//! holds its ID before any node links it in. Anything else is the ring
//! settling: the caller retries, and at last returns a retriable error.

use super::alloc::Reservations;
use super::Peer;
use crate::id::NodeId;
use std::collections::VecDeque;
use std::fmt::Debug;

/// At most this many IDs are remembered as lost.
pub const LOST_CAP: usize = 32;

/// The neighbours (predecessor, successors) this node dropped because they
/// did not answer, with when, for `window_ms`: told to the nodes that ask
/// whether an ID is held (see the module docs). Neighbours that left
/// gracefully are not in it: their ID is absent at once.
#[derive(Clone, Debug)]
pub struct Lost {
    list: VecDeque<(NodeId, u64)>,
    window_ms: u64,
}

impl Lost {
    /// Remember for `window_ms` (two stabilizer periods and a ring timeout
    /// is enough for a live node to link itself back in).
    pub fn new(window_ms: u64) -> Self {
        Lost {
            list: VecDeque::new(),
            window_ms,
        }
    }

    /// `id` did not answer at `now_ms`.
    pub fn add(&mut self, id: NodeId, now_ms: u64) {
        let window = self.window_ms;
        self.list
            .retain(|(x, t)| *x != id && now_ms.saturating_sub(*t) < window);
        if self.list.len() >= LOST_CAP {
            self.list.pop_front();
        }
        self.list.push_back((id, now_ms));
    }

    /// `id` answered (it notified this node, say): it is not lost.
    pub fn found(&mut self, id: NodeId) {
        self.list.retain(|(x, _)| *x != id);
    }

    /// The IDs lost within the window before `now_ms`.
    pub fn ids(&self, now_ms: u64) -> Vec<NodeId> {
        self.list
            .iter()
            .filter(|(_, t)| now_ms.saturating_sub(*t) < self.window_ms)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The IDs a node cannot vouch absent, told with its neighbours (the
/// `lost` argument of [`vouch_owner`] and [`vouch_pred`]): the neighbours
/// it dropped lately ([`Lost`]) and the IDs it granted to joiners that have
/// not become its predecessor yet (a live reservation: the joiner holds
/// the ID, and is alive, before any node links it in).
pub fn unsure<A: Clone + Eq + Debug>(
    lost: &Lost,
    reservations: &Reservations<A>,
    now_ms: u64,
) -> Vec<NodeId> {
    let mut ids = lost.ids(now_ms);
    for r in reservations.iter().filter(|r| r.expires_ms > now_ms) {
        if !ids.contains(&r.id) {
            ids.push(r.id);
        }
    }
    ids
}

/// What the answers so far say about `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<A> {
    /// This node holds it.
    Holds(Peer<A>),
    /// No node holds it: two nodes agree.
    Absent,
    /// Ask the owner's predecessor for its successor list next.
    AskPred(Peer<A>),
    /// The ring is settling around the ID: try again a little later.
    Settling(&'static str),
}

/// The owner found for `id` (`owner`, whose ID is not `id`) answered that it
/// is `who`, with predecessor `pred`, having lost `lost` lately.
pub fn vouch_owner<A: Clone + Eq + Debug>(
    id: NodeId,
    owner: NodeId,
    who: NodeId,
    pred: Option<Peer<A>>,
    lost: &[NodeId],
) -> Verdict<A> {
    if who != owner {
        return Verdict::Settling("the owner found holds another ID now");
    }
    let Some(p) = pred else {
        return Verdict::Settling("its owner does not know its predecessor");
    };
    if p.id == id {
        return Verdict::Holds(p);
    }
    if !id.in_open(p.id, owner) {
        return Verdict::Settling("its owner is not the first node after it");
    }
    if lost.contains(&id) {
        return Verdict::Settling("its owner lost it lately (it may have stopped)");
    }
    Verdict::AskPred(p)
}

/// The owner's predecessor `p` answered that it is `who`, with successor
/// list `successors`, having lost `lost` lately.
pub fn vouch_pred<A: Clone + Eq + Debug>(
    id: NodeId,
    owner: NodeId,
    p: NodeId,
    who: NodeId,
    successors: &[Peer<A>],
    lost: &[NodeId],
) -> Verdict<A> {
    if who != p {
        return Verdict::Settling("the owner's predecessor holds another ID now");
    }
    if let Some(s) = successors.iter().find(|s| s.id == id) {
        return Verdict::Holds(s.clone());
    }
    if lost.contains(&id) {
        return Verdict::Settling("the node before it lost it lately (it may have stopped)");
    }
    match successors.first() {
        Some(s) if s.id == owner => Verdict::Absent,
        _ => Verdict::Settling("the owner and its predecessor disagree"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    #[test]
    fn absent_only_when_two_nodes_agree_and_lost_nothing() {
        let id = NodeId(5);
        let o = NodeId(7);
        assert_eq!(vouch_owner(id, o, o, Some(p(5)), &[]), Verdict::Holds(p(5)));
        assert_eq!(
            vouch_owner(id, o, o, Some(p(3)), &[]),
            Verdict::AskPred(p(3))
        );
        assert!(matches!(
            vouch_owner::<usize>(id, o, o, None, &[]),
            Verdict::Settling(_)
        ));
        assert!(matches!(
            vouch_owner(id, o, NodeId(8), Some(p(3)), &[]),
            Verdict::Settling(_)
        ));
        assert!(matches!(
            vouch_owner(id, o, o, Some(p(6)), &[]),
            Verdict::Settling(_)
        ));
        assert!(matches!(
            vouch_owner(id, o, o, Some(p(3)), &[id]),
            Verdict::Settling(_)
        ));
        let three = NodeId(3);
        assert_eq!(
            vouch_pred(id, o, three, three, &[p(7), p(9)], &[]),
            Verdict::Absent
        );
        assert_eq!(
            vouch_pred(id, o, three, three, &[p(5), p(7)], &[]),
            Verdict::Holds(p(5))
        );
        assert!(matches!(
            vouch_pred(id, o, three, three, &[p(7)], &[id]),
            Verdict::Settling(_)
        ));
        assert!(matches!(
            vouch_pred(id, o, three, three, &[p(6)], &[]),
            Verdict::Settling(_)
        ));
        assert!(matches!(
            vouch_pred::<usize>(id, o, three, three, &[], &[]),
            Verdict::Settling(_)
        ));
        assert!(matches!(
            vouch_pred(id, o, three, NodeId(4), &[p(7)], &[]),
            Verdict::Settling(_)
        ));
    }

    /// A granted ID is not vouched absent until the grant lapses.
    #[test]
    fn granted_ids_are_unsure() {
        use crate::ring::alloc::claim;
        use crate::ring::RoutingState;
        let mut root = RoutingState::new(p(0), 4);
        root.adopt_successors(p(1), vec![]);
        root.notify(p(3));
        let mut res = Reservations::new();
        assert_eq!(claim(&root, &mut res, None, 99usize, 0, 100), Ok(NodeId(4)));
        let mut lost = Lost::new(50);
        lost.add(NodeId(2), 10);
        assert_eq!(unsure(&lost, &res, 20), vec![NodeId(2), NodeId(4)]);
        assert_eq!(unsure(&lost, &res, 70), vec![NodeId(4)]);
        assert!(unsure(&lost, &res, 100).is_empty());
        let v = vouch_owner(
            NodeId(4),
            NodeId(0),
            NodeId(0),
            Some(p(3)),
            &unsure(&lost, &res, 20),
        );
        assert!(matches!(v, Verdict::Settling(_)));
    }

    #[test]
    fn lost_ids_are_forgotten_after_the_window_or_when_found() {
        let mut l = Lost::new(100);
        l.add(NodeId(1), 0);
        l.add(NodeId(2), 50);
        assert_eq!(l.ids(60), vec![NodeId(1), NodeId(2)]);
        assert_eq!(l.ids(120), vec![NodeId(2)]);
        l.found(NodeId(2));
        assert!(l.ids(120).is_empty());
        for i in 0..100 {
            l.add(NodeId(i), 200);
        }
        assert_eq!(l.ids(200).len(), LOST_CAP);
    }
}

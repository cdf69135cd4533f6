//! Broadcast over the fingers (El-Ansary, Alima, Brand, Haridi: "Efficient
//! broadcast in structured P2P networks", IPTPS 2003).
//!
//! A node responsible for the interval `(me, limit)` hands each distinct
//! finger `f_i` in that interval the sub-interval `(f_i, f_{i+1})`, the last
//! one `(f_last, limit)`. The originator uses `limit = me`, i.e. the whole
//! ring. The intervals are disjoint and cover `(me, limit)`, so in a stable
//! ring every node receives the message exactly once: N - 1 messages, in
//! O(log N) rounds.

use super::{Peer, RoutingState};
use crate::id::NodeId;
use std::fmt::Debug;

/// Where to forward a broadcast this node received with `limit` (or
/// originates, with `limit = me`): each child with the limit it must pass
/// on, in clockwise order.
///
/// The children are the distinct fingers (and the immediate successor, which
/// is finger 0 even when the table is not filled yet) strictly inside
/// `(me, limit)`.
pub fn broadcast_targets<A: Clone + Eq + Debug>(
    state: &RoutingState<A>,
    limit: NodeId,
) -> Vec<(Peer<A>, NodeId)> {
    let me = state.me().id;
    let mut children: Vec<&Peer<A>> = state
        .successors()
        .first()
        .into_iter()
        .chain(state.fingers().iter().flatten())
        .filter(|p| p.id.in_open(me, limit))
        .collect();
    children.sort_unstable_by_key(|p| me.distance_to(p.id));
    children.dedup_by_key(|p| p.id);
    let mut out = Vec::with_capacity(children.len());
    for (i, child) in children.iter().enumerate() {
        let child_limit = children.get(i + 1).map_or(limit, |next| next.id);
        out.push(((*child).clone(), child_limit));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    #[test]
    fn splits_the_interval_between_fingers() {
        let mut s = RoutingState::new(p(10), 2);
        s.adopt_successors(p(11), vec![p(12)]);
        s.set_finger(0, Some(p(11)));
        s.set_finger(1, Some(p(12)));
        s.set_finger(2, Some(p(14)));
        s.set_finger(3, Some(p(18)));
        s.set_finger(4, Some(p(26)));
        s.set_finger(5, Some(p(26)));
        let t = broadcast_targets(&s, NodeId(10));
        let got: Vec<(u64, u64)> = t.iter().map(|(p, l)| (p.id.0, l.0)).collect();
        assert_eq!(got, vec![(11, 12), (12, 14), (14, 18), (18, 26), (26, 10)]);
        let t = broadcast_targets(&s, NodeId(18));
        let got: Vec<(u64, u64)> = t.iter().map(|(p, l)| (p.id.0, l.0)).collect();
        assert_eq!(got, vec![(11, 12), (12, 14), (14, 18)]);
        assert!(broadcast_targets(&s, NodeId(11)).is_empty());
        assert!(broadcast_targets(&RoutingState::new(p(1), 2), NodeId(1)).is_empty());
    }

    #[test]
    fn wraps_around_zero() {
        let mut s = RoutingState::new(p(u64::MAX - 1), 2);
        s.adopt_successors(p(u64::MAX), vec![]);
        s.set_finger(1, Some(p(0)));
        s.set_finger(3, Some(p(6)));
        let t = broadcast_targets(&s, NodeId(5));
        let got: Vec<(u64, u64)> = t.iter().map(|(p, l)| (p.id.0, l.0)).collect();
        assert_eq!(got, vec![(u64::MAX, 0), (0, 5)]);
    }
}

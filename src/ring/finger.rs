//! Finger starts, the closest preceding node, and which finger to fix next.
//!
//! Finger `i` of node `n` is the first node at or after `n + 2^i`. Most of
//! the 64 fingers need no lookup: a start that falls in a range whose owner is
//! already known (the successor list, the node's own range after its
//! predecessor, or the range of the previous finger) is filled in locally. With
//! densely allocated IDs (0, 1, 2, ...) or random IDs, a full round of the
//! table then costs about log2(N) lookups instead of 64. A node whose
//! member list is the root's last count ([`Members`]) needs none: every
//! finger is the first member at or after its start.

use super::census::Members;
use super::{Peer, RoutingState};
use crate::id::NodeId;
use std::fmt::Debug;

/// Number of fingers: one per bit of the identifier.
pub const FINGER_COUNT: usize = 64;

/// The start of finger `index`: `me + 2^index` (wrapping); `index` is taken
/// modulo 64.
pub fn finger_start(me: NodeId, index: usize) -> NodeId {
    me.plus_pow2((index % FINGER_COUNT) as u32)
}

/// The candidate closest to `target` that lies strictly between `me` and
/// `target` (clockwise), if any.
pub fn closest_preceding<'a, A: 'a>(
    me: NodeId,
    target: NodeId,
    candidates: impl IntoIterator<Item = &'a Peer<A>>,
) -> Option<&'a Peer<A>> {
    candidates
        .into_iter()
        .filter(|p| p.id.in_open(me, target))
        .max_by_key(|p| me.distance_to(p.id))
}

/// Up to `k` distinct candidates strictly between `me` and `target`, closest
/// to `target` first.
pub fn preceding_candidates<'a, A: Clone + 'a>(
    me: NodeId,
    target: NodeId,
    candidates: impl IntoIterator<Item = &'a Peer<A>>,
    k: usize,
) -> Vec<Peer<A>> {
    let mut top = TopPreceding::new(me, target, k);
    for p in candidates {
        top.offer(p);
    }
    top.into_vec()
}

/// Keeps the best `k` distinct peers strictly between `me` and `target` (the
/// largest distance from `me` first) in one pass without sorting.
pub(crate) struct TopPreceding<'a, A> {
    me: NodeId,
    /// Distance from `me` to the target; 0 means the whole ring but `me`.
    limit: u64,
    k: usize,
    top: Vec<(u64, &'a Peer<A>)>,
}

impl<'a, A: Clone> TopPreceding<'a, A> {
    pub(crate) fn new(me: NodeId, target: NodeId, k: usize) -> Self {
        TopPreceding {
            me,
            limit: me.distance_to(target),
            k,
            top: Vec::with_capacity(k + 1),
        }
    }

    pub(crate) fn offer(&mut self, p: &'a Peer<A>) {
        let d = self.me.distance_to(p.id);
        if d == 0 || (d >= self.limit && self.limit != 0) {
            return;
        }
        let len = self.top.len();
        if len == self.k && (len == 0 || d <= self.top[len - 1].0) {
            return;
        }
        if self.top.iter().any(|&(e, _)| e == d) {
            return;
        }
        let at = self.top.iter().position(|&(e, _)| d > e).unwrap_or(len);
        self.top.insert(at, (d, p));
        self.top.truncate(self.k);
    }

    pub(crate) fn into_vec(self) -> Vec<Peer<A>> {
        self.top.into_iter().map(|(_, p)| p.clone()).collect()
    }
}

/// One step of fixing the finger table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FingerFix<A> {
    /// The owner of the start is already known: set finger `index` to `owner`
    /// (`None`: this node owns the start).
    Known {
        /// Finger index, 0..64.
        index: usize,
        /// The owner, or `None` for this node.
        owner: Option<Peer<A>>,
    },
    /// Look up the owner of `start` and set finger `index` to the result.
    Lookup {
        /// Finger index, 0..64.
        index: usize,
        /// `me + 2^index`.
        start: NodeId,
    },
}

/// A round-robin cursor over the finger table that skips the fingers whose
/// owner is already known.
#[derive(Clone, Debug, Default)]
pub struct FingerCursor {
    next: usize,
}

impl FingerCursor {
    /// A cursor at finger 0.
    pub fn new() -> Self {
        FingerCursor { next: 0 }
    }

    /// The index the next call to [`FingerCursor::plan`] starts at.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Plan the next fingers to fix: walk the table from where the last call
    /// stopped, filling in known owners locally, until a finger needs a
    /// lookup beyond the `max_lookups` planned or the whole table has been
    /// visited once.
    ///
    /// A start's owner is known when it lies in `(s_{j-1}, s_j]` for a
    /// successor-list entry `s_j` (then it is `s_j`), in `(predecessor, me]`
    /// (then it is this node), when `members` (a current member list) names
    /// it, or when it lies in `(me, f]` where `f` is the value of the
    /// previous finger (then it is `f`: no node lies between that finger's
    /// start and `f`). Only the remaining starts need a lookup.
    pub fn plan<A: Clone + Eq + Debug>(
        &mut self,
        state: &RoutingState<A>,
        members: Option<&Members<'_, A>>,
        max_lookups: usize,
    ) -> Vec<FingerFix<A>> {
        let mut out = Vec::new();
        let mut lookups = 0;
        let mut prev: Option<Peer<A>> = match self.next {
            0 => None,
            i => state.fingers()[i - 1].clone(),
        };
        for _ in 0..FINGER_COUNT {
            let index = self.next;
            let start = finger_start(state.me().id, index);
            match known_owner(state, start, members, prev.as_ref()) {
                Some(owner) => {
                    prev.clone_from(&owner);
                    out.push(FingerFix::Known { index, owner });
                }
                None if lookups >= max_lookups => break,
                None => {
                    lookups += 1;
                    prev.clone_from(&state.fingers()[index]);
                    out.push(FingerFix::Lookup { index, start });
                }
            }
            self.next = (index + 1) % FINGER_COUNT;
            if self.next == 0 {
                prev = None;
            }
        }
        out
    }
}

/// The owner of `start` if it can be told without a lookup: `Some(None)`
/// means this node, `Some(Some(p))` the peer `p`.
fn known_owner<A: Clone + Eq + Debug>(
    state: &RoutingState<A>,
    start: NodeId,
    members: Option<&Members<'_, A>>,
    previous_finger: Option<&Peer<A>>,
) -> Option<Option<Peer<A>>> {
    let me = state.me().id;
    if state.is_alone() || start == me {
        return Some(None);
    }
    let mut lo = me;
    for s in state.successors() {
        if start.in_half_open(lo, s.id) {
            return Some(Some(s.clone()));
        }
        lo = s.id;
    }
    if let Some(p) = state.predecessor() {
        if start.in_half_open(p.id, me) {
            return Some(None);
        }
    }
    if let Some(owner) = members.and_then(|m| m.owner(start)) {
        return Some((owner.id != me).then_some(owner));
    }
    match previous_finger {
        Some(f) if start.in_half_open(me, f.id) => Some(Some(f.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    /// The finger indices a plan looks up (not filled in from what is known).
    fn lookup_indices<A>(plan: &[FingerFix<A>]) -> Vec<usize> {
        plan.iter()
            .filter_map(|f| match f {
                FingerFix::Lookup { index, .. } => Some(*index),
                FingerFix::Known { .. } => None,
            })
            .collect()
    }

    #[test]
    fn starts_wrap() {
        assert_eq!(finger_start(NodeId(3), 0), NodeId(4));
        assert_eq!(finger_start(NodeId(u64::MAX), 1), NodeId(1));
        assert_eq!(finger_start(NodeId(1), 63), NodeId((1 << 63) + 1));
    }

    #[test]
    fn closest_preceding_wraps_and_excludes_ends() {
        let me = NodeId(u64::MAX - 2);
        let c = [p(u64::MAX), p(1), p(5), p(9), p(u64::MAX - 2)];
        assert_eq!(closest_preceding(me, NodeId(9), &c), Some(&p(5)));
        assert_eq!(closest_preceding(me, NodeId(1), &c), Some(&p(u64::MAX)));
        assert_eq!(closest_preceding(me, NodeId(u64::MAX), &c), None);
        let top = preceding_candidates(me, NodeId(10), &c, 3);
        assert_eq!(top, vec![p(9), p(5), p(1)]);
        // target == me: the whole ring but me.
        let all = preceding_candidates(me, me, &c, 8);
        assert_eq!(all, vec![p(9), p(5), p(1), p(u64::MAX)]);
        assert!(preceding_candidates(me, me, &c, 0).is_empty());
    }

    /// A node of the dense ring 0..n with exact successors and predecessor.
    fn dense(me: u64, n: u64, r: u64) -> RoutingState<usize> {
        let mut s = RoutingState::new(p(me), r as usize);
        let list: Vec<_> = (1..=r).map(|k| p((me + k) % n)).collect();
        s.adopt_successors(list[0].clone(), list[1..].to_vec());
        s.notify(p((me + n - 1) % n));
        s
    }

    fn owner(n: u64, start: NodeId) -> u64 {
        if start.0 < n {
            start.0
        } else {
            0
        }
    }

    /// Run full cursor cycles answering lookups from the oracle; return the
    /// number of lookups of the last cycle.
    fn cycles(s: &mut RoutingState<usize>, n: u64, count: usize) -> usize {
        let mut c = FingerCursor::new();
        let mut last = 0;
        for _ in 0..count {
            let plan = c.plan(s, None, usize::MAX);
            assert_eq!(c.position(), 0);
            last = 0;
            for fix in plan {
                match fix {
                    FingerFix::Known { index, owner } => s.set_finger(index, owner),
                    FingerFix::Lookup { index, start } => {
                        last += 1;
                        s.set_finger(index, Some(p(owner(n, start))));
                    }
                }
            }
        }
        last
    }

    #[test]
    fn dense_ids_need_about_log_n_lookups() {
        let n = 1000;
        let mut s = dense(5, n, 10);
        let lookups = cycles(&mut s, n, 2);
        assert!(lookups <= 10, "{lookups} lookups per cycle");
        for (i, f) in s.fingers().iter().enumerate() {
            let want = owner(n, finger_start(NodeId(5), i));
            assert_eq!(f.as_ref().map(|f| f.id.0), Some(want), "finger {i}");
        }
        // The highest node: every start lies in (me, 0], owned by its successor.
        let mut top = dense(n - 1, n, 10);
        assert_eq!(cycles(&mut top, n, 2), 0);
    }

    #[test]
    fn plan_respects_budget_and_resumes() {
        let n = 1000;
        let s = dense(5, n, 4);
        let mut c = FingerCursor::new();
        let plan = c.plan(&s, None, 2);
        let lookups = lookup_indices(&plan);
        assert_eq!(
            lookups,
            vec![3, 4],
            "starts 6, 7, 9 are in the successor list"
        );
        assert_eq!(c.position(), 5);
        let alone = RoutingState::new(p(1), 4);
        let plan = FingerCursor::new().plan(&alone, None, 8);
        assert_eq!(plan.len(), FINGER_COUNT);
        assert!(plan
            .iter()
            .all(|f| matches!(f, FingerFix::Known { owner: None, .. })));
    }

    /// With a current member list no finger needs a lookup, and every
    /// finger is the true owner of its start, the highest node's included
    /// (whose starts past the top all belong to the root); a member found
    /// dead is looked up instead.
    #[test]
    fn a_current_member_list_fills_every_finger() {
        use std::collections::BTreeMap;
        let n = 1000;
        let map: BTreeMap<NodeId, usize> = (0..n).map(|i| (NodeId(i), i as usize)).collect();
        for me in [5, 500, n - 1] {
            let mut s = dense(me, n, 8);
            let members = Members::new(&map, &[]);
            let plan = FingerCursor::new().plan(&s, Some(&members), 0);
            assert_eq!(plan.len(), FINGER_COUNT, "the whole table in one round");
            for fix in plan {
                match fix {
                    FingerFix::Known { index, owner } => s.set_finger(index, owner),
                    FingerFix::Lookup { index, .. } => {
                        panic!("node {me}: finger {index} looked up")
                    }
                }
            }
            for (i, f) in s.fingers().iter().enumerate() {
                let want = owner(n, finger_start(NodeId(me), i));
                let want = (want != me).then_some(want);
                assert_eq!(f.as_ref().map(|f| f.id.0), want, "node {me} finger {i}");
            }
        }
        // Node 5's finger 9 (start 517) belongs to 517, which it found dead.
        let s = dense(5, n, 8);
        let suspects = [NodeId(517)];
        let members = Members::new(&map, &suspects);
        let plan = FingerCursor::new().plan(&s, Some(&members), 4);
        let lookups = lookup_indices(&plan);
        assert_eq!(lookups, vec![9]);
        // Random IDs: the first member at or after each start, wrapping.
        let ids = [3u64, 1 << 20, 1 << 40, (1 << 63) + 7, u64::MAX - 1];
        let map: BTreeMap<NodeId, usize> = ids.iter().map(|&i| (NodeId(i), 0)).collect();
        let members = Members::new(&map, &[]);
        let mut s = RoutingState::new(Peer::new(NodeId(1 << 40), 0), 1);
        s.adopt_successors(Peer::new(NodeId((1 << 63) + 7), 0), vec![]);
        s.notify(Peer::new(NodeId(1 << 20), 0));
        for fix in FingerCursor::new().plan(&s, Some(&members), 0) {
            if let FingerFix::Known { index, owner } = fix {
                s.set_finger(index, owner);
            }
        }
        let got: Vec<Option<u64>> = s
            .fingers()
            .iter()
            .map(|f| f.as_ref().map(|p| p.id.0))
            .collect();
        assert_eq!(got[62], Some((1 << 63) + 7));
        assert_eq!(got[63], Some(u64::MAX - 1), "start 2^63 + 2^40");
        assert!(got[..62].iter().all(|f| *f == Some((1 << 63) + 7)));
    }
}

//! The stabilizer's decisions as data.
//!
//! Each stabilizer tick the node calls [`Stabilizer::round`] under its write
//! lock, releases the lock, performs the returned [`Action`]s, and feeds the
//! answers back into the [`RoutingState`]:
//!
//! | action | I/O | on answer | on no answer |
//! | --- | --- | --- | --- |
//! | `AskPredecessor(s)` | ask `s` for its predecessor and successor list | [`on_stabilize_reply`], then perform the returned `Notify` | `peer_failed(s.id)` |
//! | `Notify { to, me }` | tell `to` that `me` may be its predecessor; `to` calls [`RoutingState::notify`] | - | `peer_failed(to.id)` |
//! | `FixFinger { index, start }` | run a [`Lookup`](super::lookup::Lookup) for `start` | `set_finger(index, Some(owner))` | nothing (retried next cycle) |
//! | `CheckPredecessor(p)` | ask `p` for its successor list | [`on_predecessor_reply`], then perform the returned `AskPredecessor` | `peer_failed(p.id)` |
//!
//! The predecessor check also tells a node that its predecessor skipped
//! it (it dropped this node after a lost message, and a node that joined
//! after this one took its place): a node that only asked its successor
//! would find nothing wrong, and would stay out of the lookups' way (see
//! [`on_predecessor_reply`]).

use super::census::Members;
use super::finger::{FingerCursor, FingerFix};
use super::{Peer, RoutingState};
use crate::id::NodeId;
use std::fmt::Debug;

/// Default number of finger lookups per stabilizer round.
pub const DEFAULT_FINGERS_PER_ROUND: usize = 4;

/// One piece of I/O the stabilizer wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<A> {
    /// Stabilize: ask this peer (the successor) for its predecessor and its
    /// successor list, and pass them to [`on_stabilize_reply`].
    AskPredecessor(Peer<A>),
    /// Tell `to` that `me` may be its predecessor.
    Notify {
        /// The peer to notify (our successor).
        to: Peer<A>,
        /// This node.
        me: Peer<A>,
    },
    /// Look up the owner of `start` and store it as finger `index`.
    FixFinger {
        /// Finger index, 0..64.
        index: usize,
        /// `me + 2^index`.
        start: NodeId,
    },
    /// Check that the predecessor is still alive, and ask it for its
    /// successor list, to pass to [`on_predecessor_reply`].
    CheckPredecessor(Peer<A>),
}

/// Rounds a routing view must stay the same before each doubling of the
/// period between finger refreshes (see [`finger_period`]).
pub const SETTLE_ROUNDS: u64 = 2;

/// Default of the longest period between finger refreshes, in rounds.
pub const DEFAULT_MAX_FINGER_PERIOD: u64 = 32;

/// How many rounds apart finger lookups run when the routing view has not
/// changed for `quiet` rounds: every round while it changes, then a period
/// that doubles every [`SETTLE_ROUNDS`] quiet rounds, up to `max_period`
/// (0 counts as 1: no backoff). A settled ring thus stops spending lookups
/// (and the connections they open) on fingers that do not move, and any
/// change brings the period back to 1.
pub fn finger_period(quiet: u64, max_period: u64) -> u64 {
    let doublings = (quiet / SETTLE_ROUNDS).min(62);
    (1u64 << doublings).min(max_period.max(1))
}

/// Whether round number `round` runs finger lookups, `quiet` rounds after the
/// last change to the routing view.
pub fn fingers_due(round: u64, quiet: u64, max_period: u64) -> bool {
    round % finger_period(quiet, max_period) == 0
}

/// The stabilizer's memory between rounds: where the finger cursor is, how
/// many finger lookups a round may plan, and how long the routing view has
/// stayed the same (the finger refresh backs off in a settled ring).
#[derive(Clone, Debug)]
pub struct Stabilizer {
    cursor: FingerCursor,
    fingers_per_round: usize,
    rounds: u64,
    max_period: u64,
    /// The predecessor, successors and fingers seen at the last round.
    view: Vec<Option<NodeId>>,
    /// Rounds since the view last changed.
    quiet: u64,
}

impl Default for Stabilizer {
    fn default() -> Self {
        Stabilizer::new(DEFAULT_FINGERS_PER_ROUND)
    }
}

impl Stabilizer {
    /// A stabilizer that plans at most `fingers_per_round` finger lookups per
    /// round (fingers whose owner is already known are filled in for free).
    pub fn new(fingers_per_round: usize) -> Self {
        Stabilizer {
            cursor: FingerCursor::new(),
            fingers_per_round,
            rounds: 0,
            max_period: 1,
            view: Vec::new(),
            quiet: 0,
        }
    }

    /// Back the finger refresh off in a settled ring, to at most one round
    /// in `max_period` (see [`finger_period`]); 1 refreshes every round.
    pub fn with_max_finger_period(mut self, max_period: u64) -> Self {
        self.max_period = max_period.max(1);
        self
    }

    /// Rounds since the routing view (predecessor, successors, fingers) last
    /// changed, as seen at the start of the last round.
    pub fn quiet_rounds(&self) -> u64 {
        self.quiet
    }

    /// The ring's membership changed (news of a join or a leave): refresh
    /// fingers every round again until the view settles anew.
    pub fn membership_changed(&mut self) {
        self.quiet = 0;
    }

    /// How many rounds have been planned.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Plan one round: stabilize with the successor (unless alone), check the
    /// predecessor, and fix some fingers. Fingers whose owner is known are set
    /// in `state` directly; the rest come back as `FixFinger` actions.
    ///
    /// With `members`, a member list that is the root's last count (see
    /// [`Census::finger_source`](super::census::Census::finger_source)),
    /// every finger is set from it in every round, without a lookup (the
    /// successor list and the predecessor still come first): news of a join
    /// or a leave moves just the fingers whose start it touches. Only a
    /// member this node found dead since the count is looked up, when due.
    pub fn round<A: Clone + Eq + Debug>(
        &mut self,
        state: &mut RoutingState<A>,
        members: Option<Members<'_, A>>,
    ) -> Vec<Action<A>> {
        self.rounds += 1;
        let view: Vec<Option<NodeId>> = std::iter::once(state.predecessor().map(|p| p.id))
            .chain(state.successors().iter().map(|p| Some(p.id)))
            .chain(state.fingers().iter().map(|f| f.as_ref().map(|p| p.id)))
            .collect();
        if view == self.view {
            self.quiet += 1;
        } else {
            self.view = view;
            self.quiet = 0;
        }
        let lookups = if fingers_due(self.rounds, self.quiet, self.max_period) {
            self.fingers_per_round
        } else {
            0
        };
        let mut actions = Vec::new();
        if !state.is_alone() {
            actions.push(Action::AskPredecessor(state.successor().clone()));
        }
        if let Some(p) = state.predecessor() {
            actions.push(Action::CheckPredecessor(p.clone()));
        }
        for fix in self.cursor.plan(state, members.as_ref(), lookups) {
            match fix {
                FingerFix::Known { index, owner } => state.set_finger(index, owner),
                FingerFix::Lookup { index, start } => {
                    actions.push(Action::FixFinger { index, start })
                }
            }
        }
        actions
    }
}

/// Feed the successor's answer to an `AskPredecessor(from)` into `state`;
/// returns the `Notify` to perform, if any.
pub fn on_stabilize_reply<A: Clone + Eq + Debug>(
    state: &mut RoutingState<A>,
    from: &Peer<A>,
    succ_pred: Option<Peer<A>>,
    succ_list: Vec<Peer<A>>,
) -> Option<Action<A>> {
    let outcome = state.stabilize_reply(from, succ_pred, succ_list);
    outcome.notify.map(|to| Action::Notify {
        to,
        me: state.me().clone(),
    })
}

/// The node that holds this node's ID in its place, if the successor's
/// answer names one: its predecessor has this node's ID at another address.
///
/// Two live nodes can end up on one ID: a root that dies just as its
/// predecessor times out the top node (a lost message) leaves a new root
/// that never knew that node, and it gives the ID again. Chord's rules
/// cannot undo that (neither node lies strictly between the other and the
/// successor), so the ring routes the ID to one of them and the other is
/// out of reach for good. The node the successor does *not* name yields:
/// once it has checked that the other answers (a dead holder is replaced
/// by the successor's own check of its predecessor), it gives its ID up
/// and joins again under a new one. Only one of the two can see this,
/// since the successor names one predecessor.
pub fn displaced_by<'a, A: Eq>(
    me: &Peer<A>,
    succ_pred: Option<&'a Peer<A>>,
) -> Option<&'a Peer<A>> {
    succ_pred.filter(|x| x.id == me.id && x.addr != me.addr)
}

/// Feed the predecessor's answer to a `CheckPredecessor(from)` (its
/// successor list) into `state`. Returns an `AskPredecessor` to perform
/// when the predecessor skipped this node.
///
/// A node is linked in when its successor names it as predecessor (the
/// stabilize exchange checks that) *and* its predecessor names it as
/// successor. The second can fail with nothing wrong in the first: the
/// predecessor `p` dropped this node `x` (a lost message), and a node `s`
/// that joined between `x` and its successor, but that `x` never heard of,
/// became `p`'s successor. Then `p → s` and `x → x's successor` are both
/// consistent, lookups from `p`'s side pass `x` by, and the owner and
/// predecessor of `x`'s ID agree it is absent (`ring::resolve`). So when
/// `p`'s first successor `s` lies between `x` and `x`'s successor, `x` takes
/// `s` as its successor and stabilizes with it at once: that notifies `s`,
/// which takes `x` as predecessor (`x` lies in `(p, s)`) and, as the node
/// does for every new predecessor, asks `p` to stabilize, which links `x`
/// back in behind `p`.
///
/// When `s` lies at or after `x`'s successor nothing is done: `p` then
/// learns of `x` (or of the nodes in between) from its own stabilize
/// exchanges with `s`, as in Chord. A stale answer (`from` is no longer
/// the predecessor) is ignored.
pub fn on_predecessor_reply<A: Clone + Eq + Debug>(
    state: &mut RoutingState<A>,
    from: &Peer<A>,
    its_successors: &[Peer<A>],
) -> Option<Action<A>> {
    if state.predecessor().map(|p| &p.id) != Some(&from.id) {
        return None;
    }
    let me = state.me().id;
    let s = its_successors.first()?;
    if s.id == me || s.id == from.id || s.id.in_open(from.id, me) {
        return None;
    }
    let succ = state.successor().clone();
    if succ.id != me && !s.id.in_open(me, succ.id) {
        return None;
    }
    // `p` skipped this node, and `s` comes before our successor.
    let rest = state.successors().to_vec();
    state.adopt_successors(s.clone(), rest);
    log::debug!(
        "node {me}: predecessor {} skipped it for {}; taking {} as successor",
        from.id,
        s.id,
        s.id
    );
    Some(Action::AskPredecessor(s.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    /// Only a successor's predecessor with this node's ID at another
    /// address displaces it: not itself, not another ID, not no answer.
    #[test]
    fn a_node_on_its_own_id_elsewhere_is_displaced() {
        let me = Peer::new(NodeId(19), 1usize);
        let twin = Peer::new(NodeId(19), 2usize);
        assert_eq!(displaced_by(&me, Some(&twin)), Some(&twin));
        assert_eq!(displaced_by(&me, Some(&me.clone())), None);
        assert_eq!(displaced_by(&me, Some(&p(18))), None);
        assert_eq!(displaced_by(&me, None), None);
    }

    #[test]
    fn lonely_node_does_nothing() {
        let mut s = RoutingState::new(p(0), 4);
        let mut st = Stabilizer::new(4);
        assert!(st.round(&mut s, None).is_empty());
        assert_eq!(st.rounds(), 1);
    }

    #[test]
    fn two_nodes_link_up() {
        // b joins a: b's successor is a, b notifies a.
        let mut a = RoutingState::new(p(0), 4);
        let mut b = RoutingState::new(p(1 << 40), 4);
        b.adopt_successors(p(0), vec![]);
        assert!(a.notify(p(1 << 40)));
        assert_eq!(a.successor(), &p(1 << 40));
        let mut sa = Stabilizer::new(4);
        let acts = sa.round(&mut a, None);
        assert_eq!(
            acts,
            vec![
                Action::AskPredecessor(p(1 << 40)),
                Action::CheckPredecessor(p(1 << 40))
            ],
            "every finger start is owned by b or a: no lookup"
        );
        // b's predecessor is unknown: a must notify it.
        let n = on_stabilize_reply(&mut a, &p(1 << 40), None, vec![p(0)]);
        assert_eq!(
            n,
            Some(Action::Notify {
                to: p(1 << 40),
                me: p(0)
            })
        );
        assert!(b.notify(p(0)));
        assert!(a.fingers()[..=40].iter().all(|f| f == &Some(p(1 << 40))));
        assert!(
            a.fingers()[41..].iter().all(|f| f.is_none()),
            "a owns (b, a]"
        );
        let mut sb = Stabilizer::new(4);
        sb.round(&mut b, None);
        assert!(
            b.fingers().iter().all(|f| f == &Some(p(0))),
            "a owns (b, a]"
        );
    }

    /// `x` (20) was dropped by its predecessor 10, whose successor is now
    /// 25, a node that joined between `x` and `x`'s successor 30: `x` takes
    /// 25 and stabilizes with it. Nothing is done when the predecessor
    /// names `x`, knows a node before `x`, skipped `x`'s successor too, or
    /// is no longer the predecessor.
    #[test]
    fn a_node_its_predecessor_skipped_relinks() {
        let fresh = || {
            let mut x = RoutingState::new(p(20), 4);
            x.adopt_successors(p(30), vec![p(40)]);
            x.notify(p(10));
            x
        };
        let mut x = fresh();
        assert_eq!(
            on_predecessor_reply(&mut x, &p(10), &[p(25), p(30)]),
            Some(Action::AskPredecessor(p(25)))
        );
        let ids: Vec<u64> = x.successors().iter().map(|q| q.id.0).collect();
        assert_eq!(ids, vec![25, 30, 40]);
        // It stabilizes with 25, which names 10: it notifies 25.
        assert_eq!(
            on_stabilize_reply(&mut x, &p(25), Some(p(10)), vec![p(30)]),
            Some(Action::Notify {
                to: p(25),
                me: p(20)
            })
        );
        for list in [
            &[p(20), p(30)][..],
            &[p(15), p(20)],
            &[p(30)],
            &[p(35)],
            &[],
        ] {
            let mut x = fresh();
            assert_eq!(on_predecessor_reply(&mut x, &p(10), list), None);
            assert_eq!(x.successor(), &p(30), "{list:?}");
        }
        let mut x = fresh();
        assert_eq!(on_predecessor_reply(&mut x, &p(5), &[p(25)]), None);
        // Wrapping round 0.
        let mut x = RoutingState::new(p(u64::MAX - 1), 4);
        x.adopt_successors(p(5), vec![]);
        x.notify(p(u64::MAX - 9));
        assert_eq!(
            on_predecessor_reply(&mut x, &p(u64::MAX - 9), &[p(u64::MAX)]),
            Some(Action::AskPredecessor(p(u64::MAX)))
        );
    }

    #[test]
    fn finger_period_backs_off_and_caps() {
        assert_eq!(finger_period(0, 32), 1);
        assert_eq!(finger_period(SETTLE_ROUNDS - 1, 32), 1);
        assert_eq!(finger_period(SETTLE_ROUNDS, 32), 2);
        assert_eq!(finger_period(3 * SETTLE_ROUNDS, 32), 8);
        assert_eq!(finger_period(100 * SETTLE_ROUNDS, 32), 32);
        assert_eq!(finger_period(u64::MAX, 32), 32);
        assert_eq!(finger_period(100 * SETTLE_ROUNDS, 0), 1, "0: no backoff");
        assert_eq!(finger_period(100 * SETTLE_ROUNDS, 1), 1);
        assert!(fingers_due(7, 0, 32));
        assert!(fingers_due(64, 1000, 32));
        assert!(!fingers_due(65, 1000, 32));
    }

    /// A ring whose view does not change refreshes its fingers ever more
    /// rarely; a change (in the view, or news of membership) resets it.
    #[test]
    fn settled_ring_refreshes_fingers_rarely() {
        let lookups = |st: &mut Stabilizer, s: &mut RoutingState<usize>| {
            st.round(s, None)
                .into_iter()
                .filter(|a| matches!(a, Action::FixFinger { .. }))
                .count()
        };
        let mut s = RoutingState::new(p(0), 2);
        s.adopt_successors(p(1), vec![p(2)]);
        s.notify(p(u64::MAX - 10));
        let mut st = Stabilizer::new(2).with_max_finger_period(16);
        // Lookups never answered: the view stays the same.
        let first: usize = (0..SETTLE_ROUNDS).map(|_| lookups(&mut st, &mut s)).sum();
        assert_eq!(first, 2 * SETTLE_ROUNDS as usize, "every round at first");
        let later: usize = (0..160).map(|_| lookups(&mut st, &mut s)).sum();
        assert!(
            later <= 2 * 160 / 4,
            "backed off: {later} lookups in 160 rounds"
        );
        assert!(st.quiet_rounds() >= 160);
        st.membership_changed();
        assert_eq!(lookups(&mut st, &mut s), 2, "news of a change: at once");
        let mut st2 = st.clone();
        for _ in 0..100 {
            st2.round(&mut s, None);
        }
        assert!(s.notify(p(u64::MAX - 1)));
        assert_eq!(lookups(&mut st2, &mut s), 2, "a new predecessor: at once");
        assert_eq!(st2.quiet_rounds(), 0);
    }

    #[test]
    fn fix_finger_actions_respect_budget() {
        let mut s = RoutingState::new(p(0), 2);
        s.adopt_successors(p(1), vec![p(2)]);
        s.notify(p(u64::MAX));
        let mut st = Stabilizer::new(3);
        let fixes = st
            .round(&mut s, None)
            .into_iter()
            .filter(|a| matches!(a, Action::FixFinger { .. }))
            .count();
        assert_eq!(fixes, 3);
    }

    /// A node whose member list is current looks up no finger, however
    /// often news of joins resets the refresh, and follows a join at once.
    #[test]
    fn a_current_member_list_needs_no_finger_lookups() {
        use std::collections::BTreeMap;
        let mut map: BTreeMap<NodeId, usize> = (0..100).map(|i| (NodeId(i), i as usize)).collect();
        let mut s = RoutingState::new(p(5), 4);
        s.adopt_successors(p(6), vec![p(7), p(8), p(9)]);
        s.notify(p(4));
        let mut st = Stabilizer::new(4).with_max_finger_period(32);
        for _ in 0..5 {
            st.membership_changed();
            let acts = st.round(&mut s, Some(Members::new(&map, &[])));
            assert!(!acts.iter().any(|a| matches!(a, Action::FixFinger { .. })));
        }
        assert_eq!(s.fingers()[6].as_ref().map(|f| f.id), Some(NodeId(69)));
        assert_eq!(s.fingers()[7].as_ref().map(|f| f.id), Some(NodeId(0)));
        // Node 133 joins: the fingers whose start it now owns move to it.
        map.insert(NodeId(133), 133);
        st.round(&mut s, Some(Members::new(&map, &[])));
        assert_eq!(s.fingers()[7].as_ref().map(|f| f.id), Some(NodeId(133)));
        assert_eq!(s.fingers()[6].as_ref().map(|f| f.id), Some(NodeId(69)));
        // Without the list, the same ring needs lookups.
        let mut bare = RoutingState::new(p(5), 4);
        bare.adopt_successors(p(6), vec![p(7), p(8), p(9)]);
        bare.notify(p(4));
        let acts = Stabilizer::new(4).round(&mut bare, None);
        assert!(acts.iter().any(|a| matches!(a, Action::FixFinger { .. })));
    }
}

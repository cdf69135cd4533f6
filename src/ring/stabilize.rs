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
//! | `CheckPredecessor(p)` | ping `p` | - | `peer_failed(p.id)` |

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
    /// Check that the predecessor is still alive.
    CheckPredecessor(Peer<A>),
}

/// The stabilizer's memory between rounds: where the finger cursor is and
/// how many finger lookups a round may plan.
#[derive(Clone, Debug)]
pub struct Stabilizer {
    cursor: FingerCursor,
    fingers_per_round: usize,
    rounds: u64,
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
        }
    }

    /// How many rounds have been planned.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Plan one round: stabilize with the successor (unless alone), check the
    /// predecessor, and fix some fingers. Fingers whose owner is known are set
    /// in `state` directly; the rest come back as `FixFinger` actions.
    pub fn round<A: Clone + Eq + Debug>(&mut self, state: &mut RoutingState<A>) -> Vec<Action<A>> {
        self.rounds += 1;
        let mut actions = Vec::new();
        if !state.is_alone() {
            actions.push(Action::AskPredecessor(state.successor().clone()));
        }
        if let Some(p) = state.predecessor() {
            actions.push(Action::CheckPredecessor(p.clone()));
        }
        for fix in self.cursor.plan(state, self.fingers_per_round) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    #[test]
    fn lonely_node_does_nothing() {
        let mut s = RoutingState::new(p(0), 4);
        let mut st = Stabilizer::new(4);
        assert!(st.round(&mut s).is_empty());
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
        let acts = sa.round(&mut a);
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
        sb.round(&mut b);
        assert!(
            b.fingers().iter().all(|f| f == &Some(p(0))),
            "a owns (b, a]"
        );
    }

    #[test]
    fn fix_finger_actions_respect_budget() {
        let mut s = RoutingState::new(p(0), 2);
        s.adopt_successors(p(1), vec![p(2)]);
        s.notify(p(u64::MAX));
        let mut st = Stabilizer::new(3);
        let fixes = st
            .round(&mut s)
            .into_iter()
            .filter(|a| matches!(a, Action::FixFinger { .. }))
            .count();
        assert_eq!(fixes, 3);
    }
}

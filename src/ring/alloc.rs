//! Node-ID allocation, decided by the node responsible for the range.
//!
//! The scheme:
//! - The first node of a network takes [`FIRST_ID`] (0) unless told otherwise.
//! - A joiner sends its claim to the owner of [`claim_target`]: the owner of
//!   its preferred ID, or, without one, the owner `S` of ID 0 (the lowest node;
//!   its predecessor is the highest ID in use).
//! - Without a preferred ID, `S` grants the number after the highest of its
//!   predecessor and its live reservations, provided it still lies in
//!   `(predecessor, S)`; so IDs go 0, 1, 2, ... and an ID freed at the top is
//!   reused.
//! - With a preferred ID, its owner grants it if it lies in
//!   `(predecessor, owner)` and no other pending joiner holds it. The owner's
//!   own ID and its predecessor's are [`ClaimError::IdTaken`]; an ID outside
//!   the owner's range means the claim went to the wrong node
//!   ([`ClaimError::WrongOwner`], retry after looking the owner up again).
//! - A grant is a reservation with an expiry (`now_ms + ttl_ms`, the caller's
//!   clock). It is released when the joiner becomes the owner's predecessor
//!   (or anything at or after it does), or when it expires.
//!
//! The node calls [`claim`] under its routing write lock, so concurrent claims
//! serialise: the second claim of the same ID is refused, and the second
//! claim without a preference gets the next number.

use super::RoutingState;
use crate::id::NodeId;
use std::fmt::{self, Debug};

/// The ID the first node of a network takes.
pub const FIRST_ID: NodeId = NodeId(0);

/// The ID whose owner must receive a claim for `requested`.
pub fn claim_target(requested: Option<NodeId>) -> NodeId {
    requested.unwrap_or(FIRST_ID)
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimError {
    /// The ID belongs to a node in the ring or to another pending joiner.
    IdTaken(NodeId),
    /// The claim reached a node that is not responsible for the ID: look the
    /// owner up again and retry.
    WrongOwner,
    /// The allocator's range has no free ID left.
    RangeFull,
    /// The node does not know its predecessor yet, so it cannot tell its
    /// range: retry shortly.
    Unsettled,
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::IdTaken(id) => write!(f, "node ID {id} is already taken"),
            ClaimError::WrongOwner => {
                write!(f, "the claim reached a node that does not own the ID")
            }
            ClaimError::RangeFull => write!(f, "no free node ID left in the allocator's range"),
            ClaimError::Unsettled => write!(f, "the allocating node does not know its range yet"),
        }
    }
}

impl std::error::Error for ClaimError {}

/// One ID granted to a joiner that has not yet become our predecessor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation<A> {
    /// The granted ID.
    pub id: NodeId,
    /// Who asked (the joiner's address); a retry by the same claimant gets the
    /// same ID back.
    pub claimant: A,
    /// When the grant lapses, in the caller's milliseconds.
    pub expires_ms: u64,
}

/// The pending grants of one node.
#[derive(Clone, Debug)]
pub struct Reservations<A> {
    list: Vec<Reservation<A>>,
}

impl<A> Default for Reservations<A> {
    fn default() -> Self {
        Reservations { list: Vec::new() }
    }
}

impl<A: Clone + Eq + Debug> Reservations<A> {
    /// No reservations.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live reservations.
    pub fn iter(&self) -> impl Iterator<Item = &Reservation<A>> {
        self.list.iter()
    }

    /// Number of live reservations.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Drop the reservations that expired at `now_ms` or that no longer lie
    /// in `(predecessor, me)` (the joiner, or a node after it, became our
    /// predecessor). Call it after the predecessor changes.
    pub fn prune<B: Clone + Eq + Debug>(&mut self, state: &RoutingState<B>, now_ms: u64) {
        let me = state.me().id;
        let pred = state.predecessor().map(|p| p.id);
        self.list.retain(|r| {
            let in_range = match pred {
                Some(p) => r.id.in_open(p, me),
                None => true,
            };
            r.expires_ms > now_ms && in_range
        });
    }

    /// Cancel the reservation of `id` (the joiner gave up).
    pub fn release(&mut self, id: NodeId) {
        self.list.retain(|r| r.id != id);
    }

    fn grant(&mut self, id: NodeId, claimant: A, expires_ms: u64) -> NodeId {
        self.list.retain(|r| r.claimant != claimant);
        self.list.push(Reservation {
            id,
            claimant,
            expires_ms,
        });
        id
    }
}

/// Decide a claim for a node ID at this node (under the routing write lock).
///
/// `requested` is the joiner's preferred ID, if any; `claimant` identifies the
/// joiner (its address). A claimant that already holds a live reservation
/// and asks again the same way gets the same ID with a fresh expiry.
pub fn claim<A: Clone + Eq + Debug, B: Clone + Eq + Debug>(
    state: &RoutingState<B>,
    reservations: &mut Reservations<A>,
    requested: Option<NodeId>,
    claimant: A,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<NodeId, ClaimError> {
    claim_avoiding(
        state,
        reservations,
        requested,
        claimant,
        now_ms,
        ttl_ms,
        &[],
    )
}

/// [`claim`], never handing out (without a preferred ID) an ID in `lost`:
/// the neighbours this node dropped lately because they did not answer
/// ([`Lost`](super::resolve::Lost)). Such a node may be alive and about to
/// link itself back in (a lost message, not a death), so its ID is
/// skipped: the next number after it is given instead. Without this, the
/// root that timed out its predecessor, the top node, once, and took the
/// node before it instead, would give the top node's ID to the next
/// joiner while the top node lives: two nodes with one ID.
pub fn claim_avoiding<A: Clone + Eq + Debug, B: Clone + Eq + Debug>(
    state: &RoutingState<B>,
    reservations: &mut Reservations<A>,
    requested: Option<NodeId>,
    claimant: A,
    now_ms: u64,
    ttl_ms: u64,
    lost: &[NodeId],
) -> Result<NodeId, ClaimError> {
    reservations.prune(state, now_ms);
    let me = state.me().id;
    let expires = now_ms.saturating_add(ttl_ms);
    let held = reservations
        .iter()
        .find(|r| r.claimant == claimant)
        .map(|r| r.id);
    // The open range (lo, me) this node may hand out; lo == me when alone.
    let lo = match (state.predecessor(), state.is_alone()) {
        (Some(p), _) => p.id,
        (None, true) => me,
        (None, false) => return Err(ClaimError::Unsettled),
    };
    match requested {
        Some(id) => {
            if id == me || (id == lo && lo != me) {
                return Err(ClaimError::IdTaken(id));
            }
            if !id.in_open(lo, me) {
                return Err(ClaimError::WrongOwner);
            }
            if reservations
                .iter()
                .any(|r| r.id == id && r.claimant != claimant)
            {
                return Err(ClaimError::IdTaken(id));
            }
            Ok(reservations.grant(id, claimant, expires))
        }
        None => {
            if !state.owns(FIRST_ID) {
                return Err(ClaimError::WrongOwner);
            }
            if let Some(id) = held {
                return Ok(reservations.grant(id, claimant, expires));
            }
            let highest = reservations
                .iter()
                .map(|r| r.id)
                .filter(|id| id.in_open(lo, me))
                .max_by_key(|id| lo.distance_to(*id))
                .unwrap_or(lo);
            let mut id = NodeId(highest.0.wrapping_add(1));
            while lost.contains(&id) && id != me {
                id = NodeId(id.0.wrapping_add(1));
            }
            if id == me {
                return Err(ClaimError::RangeFull);
            }
            Ok(reservations.grant(id, claimant, expires))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Peer;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    /// Node 0 of the ring 0..=top.
    fn lowest(top: u64) -> RoutingState<usize> {
        let mut s = RoutingState::new(p(0), 4);
        s.adopt_successors(p(1), vec![]);
        s.notify(p(top));
        s
    }

    /// The root timed its top node 41 out, then took 40 as predecessor:
    /// 41 may be alive, so the next joiner gets 42.
    #[test]
    fn an_id_lost_lately_is_skipped() {
        let s = lowest(40);
        let mut r = Reservations::new();
        let lost = [NodeId(41), NodeId(7)];
        let got = claim_avoiding(&s, &mut r, None, 100, 0, 1000, &lost);
        assert_eq!(got, Ok(NodeId(42)));
        let got = claim_avoiding(&s, &mut r, None, 101, 0, 1000, &lost);
        assert_eq!(got, Ok(NodeId(43)));
        let mut r = Reservations::new();
        assert_eq!(claim(&s, &mut r, None, 100, 0, 1000), Ok(NodeId(41)));
        // Near the end of the range: nothing left but lost IDs.
        let mut s = RoutingState::new(p(2), 4);
        s.adopt_successors(p(5), vec![]);
        s.notify(p(u64::MAX));
        let mut r = Reservations::new();
        let lost = [NodeId(0), NodeId(1)];
        let got = claim_avoiding(&s, &mut r, None, 100, 0, 1000, &lost);
        assert_eq!(got, Err(ClaimError::RangeFull));
    }

    #[test]
    fn first_node_hands_out_1_2_3() {
        let s = RoutingState::new(p(0), 4);
        let mut r = Reservations::new();
        assert_eq!(claim(&s, &mut r, None, 100, 0, 1000), Ok(NodeId(1)));
        assert_eq!(claim(&s, &mut r, None, 101, 0, 1000), Ok(NodeId(2)));
        assert_eq!(
            claim(&s, &mut r, None, 100, 5, 1000),
            Ok(NodeId(1)),
            "retry"
        );
        assert_eq!(
            claim(&s, &mut r, Some(NodeId(0)), 102, 0, 1000),
            Err(ClaimError::IdTaken(NodeId(0)))
        );
        assert_eq!(
            claim(&s, &mut r, Some(NodeId(2)), 102, 0, 1000),
            Err(ClaimError::IdTaken(NodeId(2)))
        );
        assert_eq!(
            claim(&s, &mut r, Some(NodeId(77)), 102, 0, 1000),
            Ok(NodeId(77))
        );
        assert_eq!(claim(&s, &mut r, None, 103, 0, 1000), Ok(NodeId(78)));
    }

    #[test]
    fn eight_concurrent_claims_never_collide() {
        // The node serialises claims under its write lock: interleave 8
        // claimants, some with a preference, some retrying, in every rotation.
        for rot in 0..8 {
            let s = lowest(41);
            let mut r = Reservations::new();
            let mut got: Vec<(usize, NodeId)> = Vec::new();
            for k in 0..16usize {
                let who = (k + rot) % 8;
                let want = match who {
                    2 | 5 => Some(NodeId(44)),
                    6 => Some(NodeId(43)),
                    _ => None,
                };
                match claim(&s, &mut r, want, who, k as u64, 10_000) {
                    Ok(id) => got.push((who, id)),
                    Err(ClaimError::IdTaken(id)) => assert_eq!(Some(id), want),
                    Err(e) => panic!("{e}"),
                }
            }
            for &(who, id) in &got {
                assert!(id.in_open(NodeId(41), NodeId(0)));
                assert!(
                    got.iter().all(|&(w, i)| (w == who) == (i == id)),
                    "each claimant keeps one ID and no ID is granted twice: {got:?}"
                );
            }
            for auto in [0, 1, 3, 4, 7] {
                assert!(
                    got.iter().any(|&(w, _)| w == auto),
                    "auto claims always succeed"
                );
            }
            assert!(got
                .iter()
                .all(|&(w, id)| !(w == 2 || w == 5) || id == NodeId(44)));
        }
    }

    #[test]
    fn range_and_ownership_checks() {
        let s = lowest(41);
        let mut r = Reservations::new();
        assert_eq!(
            claim(&s, &mut r, Some(NodeId(41)), 1, 0, 10),
            Err(ClaimError::IdTaken(NodeId(41)))
        );
        assert_eq!(
            claim(&s, &mut r, Some(NodeId(7)), 1, 0, 10),
            Err(ClaimError::WrongOwner)
        );
        assert_eq!(claim(&s, &mut r, None, 1, 0, 10), Ok(NodeId(42)));
        // A node that does not own 0 refuses auto claims.
        let mut mid = RoutingState::new(p(20), 4);
        mid.adopt_successors(p(30), vec![]);
        mid.notify(p(10));
        assert_eq!(
            claim(&mid, &mut Reservations::new(), None, 1, 0, 10),
            Err(ClaimError::WrongOwner)
        );
        assert_eq!(
            claim(&mid, &mut Reservations::new(), Some(NodeId(15)), 1, 0, 10),
            Ok(NodeId(15))
        );
        // Unknown predecessor: cannot decide.
        let mut lost = RoutingState::new(p(0), 4);
        lost.adopt_successors(p(5), vec![]);
        lost.peer_failed(NodeId(99));
        assert!(lost.predecessor().is_none());
        assert_eq!(
            claim(&lost, &mut Reservations::<usize>::new(), None, 1, 0, 10),
            Err(ClaimError::Unsettled)
        );
        // Full range.
        let mut full = RoutingState::new(p(0), 4);
        full.adopt_successors(p(1), vec![]);
        full.notify(p(u64::MAX));
        assert_eq!(
            claim(&full, &mut Reservations::new(), None, 1, 0, 10),
            Err(ClaimError::RangeFull)
        );
    }

    #[test]
    fn reservations_expire_and_release() {
        let mut s = lowest(41);
        let mut r = Reservations::new();
        assert_eq!(claim(&s, &mut r, None, 1, 0, 100), Ok(NodeId(42)));
        assert_eq!(claim(&s, &mut r, None, 2, 0, 100), Ok(NodeId(43)));
        // Claimant 1 never shows up; 2 joins and becomes our predecessor.
        assert!(s.notify(p(43)));
        r.prune(&s, 50);
        assert!(
            r.is_empty(),
            "42 and 43 lie at or before the new predecessor"
        );
        assert_eq!(claim(&s, &mut r, None, 3, 60, 100), Ok(NodeId(44)));
        assert_eq!(
            claim(&s, &mut r, Some(NodeId(44)), 4, 120, 100),
            Err(ClaimError::IdTaken(NodeId(44)))
        );
        assert_eq!(
            claim(&s, &mut r, Some(NodeId(44)), 4, 160, 100),
            Ok(NodeId(44)),
            "expired"
        );
        r.release(NodeId(44));
        assert_eq!(r.len(), 0);
        assert_eq!(claim_target(None), FIRST_ID);
        assert_eq!(claim_target(Some(NodeId(9))), NodeId(9));
        assert_eq!(
            ClaimError::IdTaken(NodeId(3)).to_string(),
            "node ID 3 is already taken"
        );
    }
}

//! An iterative lookup as a state machine (the shape of rust-libp2p kad's
//! query): the caller asks [`Lookup::next`] what to do, sends the query, and
//! reports the answer with [`Lookup::on_reply`] or the silence with
//! [`Lookup::on_failure`]. No I/O, no clock: timeouts are the caller's.
//!
//! The lookup is a depth-first search along the routing answers: each answer
//! offers a best next hop and a few fallbacks; when a hop does not answer the
//! lookup tries that answer's next fallback, then backs up to earlier answers.
//! Every hop must lie strictly between the peer that named it and the target,
//! so a lying peer can only push the lookup forward, a visited set rules out
//! loops, and the number of queries is capped.

use super::{Peer, Route, RoutingState, NEXT_HOP_FALLBACKS};
use crate::id::NodeId;
use std::fmt::{self, Debug};

/// The default cap on queries per lookup: twice the ID bits plus some slack.
pub const MAX_HOPS: u32 = 2 * 64 + 16;

/// At most this many candidates are taken from one answer.
const MAX_CANDIDATES_PER_ANSWER: usize = NEXT_HOP_FALLBACKS + 2;

/// Why a lookup gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupError {
    /// The query cap was reached.
    TooManyHops,
    /// Every candidate failed or led nowhere.
    NoRoute,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::TooManyHops => write!(f, "lookup gave up after too many hops"),
            LookupError::NoRoute => write!(f, "lookup found no live route to the target"),
        }
    }
}

impl std::error::Error for LookupError {}

/// What the caller should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupStep<A> {
    /// Ask this peer for its `next_hop(target)` and report the answer.
    Query(Peer<A>),
    /// The owner of the target is found after `hops` queries.
    Done {
        /// The first node at or after the target.
        owner: Peer<A>,
        /// Number of queries sent to other nodes (failed ones included).
        hops: u32,
    },
    /// The lookup gave up.
    Failed(LookupError),
}

/// One lookup of the owner of a target ID.
#[derive(Clone, Debug)]
pub struct Lookup<A> {
    target: NodeId,
    /// Per answered hop, the candidates not yet tried, best last.
    stack: Vec<Vec<Peer<A>>>,
    in_flight: Option<Peer<A>>,
    visited: Vec<NodeId>,
    failed: Vec<NodeId>,
    hops: u32,
    max_hops: u32,
    result: Option<Result<Peer<A>, LookupError>>,
    decided_by: Option<Peer<A>>,
}

impl<A: Clone + Eq + Debug> Lookup<A> {
    /// Start a lookup of `target` from this node's routing state. If the
    /// state already knows the owner the lookup is done with 0 hops.
    pub fn new(target: NodeId, state: &RoutingState<A>) -> Self {
        let me = state.me().id;
        let mut lookup = Lookup::empty(target);
        lookup.visited.push(me);
        match state.next_hop(target) {
            Route::Done(owner) => lookup.result = Some(Ok(owner)),
            Route::Next { peer, fallbacks } => lookup.push_candidates(me, peer, fallbacks),
        }
        lookup
    }

    /// Start a lookup of `target` at `first`, for a node with no routing
    /// state of its own yet (a joiner asking a bootstrap member).
    pub fn via(target: NodeId, first: Peer<A>) -> Self {
        let mut lookup = Lookup::empty(target);
        lookup.stack.push(vec![first]);
        lookup
    }

    /// Change the query cap (default [`MAX_HOPS`]).
    pub fn with_max_hops(mut self, max_hops: u32) -> Self {
        self.max_hops = max_hops;
        self
    }

    fn empty(target: NodeId) -> Self {
        Lookup {
            target,
            stack: Vec::new(),
            in_flight: None,
            visited: Vec::new(),
            failed: Vec::new(),
            hops: 0,
            max_hops: MAX_HOPS,
            result: None,
            decided_by: None,
        }
    }

    /// The ID being looked up.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Queries sent so far.
    pub fn hops(&self) -> u32 {
        self.hops
    }

    /// The peer whose answer ended the lookup (`None` when this node knew
    /// the owner itself): if the owner turns out dead, that peer's
    /// successor list is stale, and it is the one to ask to stabilize.
    pub fn decided_by(&self) -> Option<&Peer<A>> {
        self.decided_by.as_ref()
    }

    /// Peers that failed to answer during this lookup; the node should also
    /// report them to its own routing state with `peer_failed`.
    pub fn failed_peers(&self) -> &[NodeId] {
        &self.failed
    }

    /// What to do next. While a query is outstanding this returns the same
    /// `Query` again (and does not count it twice).
    // A state-machine step, not an iterator: it never runs out (it repeats
    // `Done`/`Failed`), so `Iterator` would be the wrong contract.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> LookupStep<A> {
        match &self.result {
            Some(Ok(owner)) => {
                return LookupStep::Done {
                    owner: owner.clone(),
                    hops: self.hops,
                }
            }
            Some(Err(e)) => return LookupStep::Failed(*e),
            None => {}
        }
        if let Some(p) = &self.in_flight {
            return LookupStep::Query(p.clone());
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                self.result = Some(Err(LookupError::NoRoute));
                return LookupStep::Failed(LookupError::NoRoute);
            };
            let Some(candidate) = top.pop() else {
                self.stack.pop();
                continue;
            };
            if self.visited.contains(&candidate.id) || self.failed.contains(&candidate.id) {
                continue;
            }
            if self.hops >= self.max_hops {
                self.result = Some(Err(LookupError::TooManyHops));
                return LookupStep::Failed(LookupError::TooManyHops);
            }
            self.hops += 1;
            self.in_flight = Some(candidate.clone());
            return LookupStep::Query(candidate);
        }
    }

    /// The answer of peer `from` to the outstanding query. Answers from
    /// anyone else are ignored. A `Done` whose owner does not follow the
    /// target, or that names a peer known to have failed, is a dead end; `Next`
    /// candidates that do not lie strictly between `from` and the target are
    /// dropped.
    pub fn on_reply(&mut self, from: NodeId, route: Route<A>) {
        let asked = match self.in_flight.take() {
            Some(p) if p.id == from => p,
            other => {
                self.in_flight = other;
                return;
            }
        };
        self.visited.push(from);
        match route {
            Route::Done(owner) => {
                if self.target.in_half_open(from, owner.id) && !self.failed.contains(&owner.id) {
                    self.result = Some(Ok(owner));
                    self.decided_by = Some(asked);
                }
            }
            Route::Next { peer, fallbacks } => self.push_candidates(from, peer, fallbacks),
        }
    }

    /// The outstanding query to `peer` got no answer (timeout, refused, bad
    /// frame). The lookup will try the next-best candidate.
    pub fn on_failure(&mut self, peer: NodeId) {
        if self.in_flight.as_ref().is_some_and(|p| p.id == peer) {
            self.in_flight = None;
        }
        if !self.failed.contains(&peer) {
            self.failed.push(peer);
        }
    }

    fn push_candidates(&mut self, from: NodeId, peer: Peer<A>, fallbacks: Vec<Peer<A>>) {
        let target = self.target;
        let mut list: Vec<Peer<A>> = Vec::with_capacity(MAX_CANDIDATES_PER_ANSWER);
        for c in std::iter::once(peer)
            .chain(fallbacks)
            .take(MAX_CANDIDATES_PER_ANSWER)
        {
            if c.id.in_open(from, target)
                && !self.visited.contains(&c.id)
                && !self.failed.contains(&c.id)
                && !list.iter().any(|x| x.id == c.id)
            {
                list.push(c);
            }
        }
        if !list.is_empty() {
            list.reverse();
            self.stack.push(list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64) -> Peer<usize> {
        Peer::new(NodeId(id), id as usize)
    }

    fn next(peer: u64, fallbacks: &[u64]) -> Route<usize> {
        Route::Next {
            peer: p(peer),
            fallbacks: fallbacks.iter().map(|&f| p(f)).collect(),
        }
    }

    fn origin() -> RoutingState<usize> {
        let mut s = RoutingState::new(p(0), 2);
        s.adopt_successors(p(10), vec![p(20)]);
        s.set_finger(6, Some(p(64)));
        s.set_finger(7, Some(p(128)));
        s
    }

    #[test]
    fn local_answer_is_zero_hops() {
        let mut l = Lookup::new(NodeId(5), &origin());
        assert_eq!(
            l.next(),
            LookupStep::Done {
                owner: p(10),
                hops: 0
            }
        );
    }

    #[test]
    fn follows_answers_and_counts_hops() {
        let mut l = Lookup::new(NodeId(1000), &origin());
        assert_eq!(l.next(), LookupStep::Query(p(128)));
        assert_eq!(
            l.next(),
            LookupStep::Query(p(128)),
            "idempotent while in flight"
        );
        l.on_reply(NodeId(128), next(900, &[500]));
        assert_eq!(l.next(), LookupStep::Query(p(900)));
        l.on_reply(NodeId(900), Route::Done(p(1000)));
        assert_eq!(
            l.next(),
            LookupStep::Done {
                owner: p(1000),
                hops: 2
            }
        );
    }

    #[test]
    fn falls_back_then_backtracks() {
        let mut l = Lookup::new(NodeId(1000), &origin());
        assert_eq!(l.next(), LookupStep::Query(p(128)));
        l.on_reply(NodeId(128), next(900, &[500]));
        assert_eq!(l.next(), LookupStep::Query(p(900)));
        l.on_failure(NodeId(900));
        assert_eq!(l.next(), LookupStep::Query(p(500)), "the answer's fallback");
        l.on_failure(NodeId(500));
        assert_eq!(
            l.next(),
            LookupStep::Query(p(64)),
            "back to the origin's next best"
        );
        l.on_reply(NodeId(64), next(900, &[128, 700]));
        assert_eq!(
            l.next(),
            LookupStep::Query(p(700)),
            "failed and visited are skipped"
        );
        l.on_reply(NodeId(700), Route::Done(p(1001)));
        assert_eq!(
            l.next(),
            LookupStep::Done {
                owner: p(1001),
                hops: 5
            }
        );
        assert_eq!(l.failed_peers(), &[NodeId(900), NodeId(500)]);
    }

    #[test]
    fn bad_answers_are_dead_ends() {
        let mut l = Lookup::new(NodeId(1000), &origin());
        assert_eq!(l.next(), LookupStep::Query(p(128)));
        // Stale answer from someone else: ignored.
        l.on_reply(NodeId(64), Route::Done(p(5)));
        // Backwards (a loop) and past-the-target candidates are dropped.
        l.on_reply(NodeId(128), next(64, &[0, 1000, 5000]));
        assert_eq!(l.next(), LookupStep::Query(p(64)), "origin's fallback");
        // An owner that does not follow the target is refused.
        l.on_reply(NodeId(64), Route::Done(p(999)));
        assert_eq!(l.next(), LookupStep::Query(p(20)));
        l.on_failure(NodeId(20));
        assert_eq!(l.next(), LookupStep::Query(p(10)));
        l.on_reply(NodeId(10), next(128, &[]));
        assert_eq!(l.next(), LookupStep::Failed(LookupError::NoRoute));
        assert_eq!(l.next(), LookupStep::Failed(LookupError::NoRoute));
    }

    #[test]
    fn endless_forward_chain_hits_the_cap() {
        let mut l = Lookup::via(NodeId(u64::MAX), p(1));
        let mut steps = 0;
        loop {
            match l.next() {
                LookupStep::Query(q) => {
                    steps += 1;
                    let huge: Vec<u64> = (2..1000).map(|k| q.id.0 + k).collect();
                    l.on_reply(q.id, next(q.id.0 + 1, &huge));
                }
                LookupStep::Failed(e) => {
                    assert_eq!(e, LookupError::TooManyHops);
                    break;
                }
                s => panic!("{s:?}"),
            }
        }
        assert_eq!(steps, MAX_HOPS);
        assert!(l.stack.iter().all(|h| h.len() <= MAX_CANDIDATES_PER_ANSWER));
    }

    #[test]
    fn via_bootstrap() {
        let mut l = Lookup::via(NodeId(0), p(77));
        assert_eq!(l.next(), LookupStep::Query(p(77)));
        l.on_reply(NodeId(77), Route::Done(p(3)));
        assert_eq!(
            l.next(),
            LookupStep::Done {
                owner: p(3),
                hops: 1
            }
        );
        let mut l = Lookup::via(NodeId(0), p(77));
        l.next();
        l.on_failure(NodeId(77));
        assert_eq!(l.next(), LookupStep::Failed(LookupError::NoRoute));
        assert_eq!(
            LookupError::NoRoute.to_string(),
            "lookup found no live route to the target"
        );
    }
}

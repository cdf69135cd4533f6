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
//!
//! The joins at the root. Joiners without a preferred ID take their IDs
//! from the root and link in as its predecessor, so the root knows each of
//! them the moment it links it in, long before the successor lists behind
//! it settle enough for a walk to pass. It counts them at once
//! ([`Census::linked`]: its own size, which a joiner's grant carries, is
//! right at every join) and publishes them as news of their own, spaced
//! ([`Census::publish_tally`]): the last count plus these joiners, with the
//! digest of that list. The walk that follows confirms the count and sends
//! it again once it passes (the ring has settled then, so the broadcast
//! reaches every node); a joiner linked while a walk runs, which the walk
//! may not have reached, is kept in its count.
//!
//! The member list. News carries the changes since the last count, so a node
//! that joined late or missed a message holds only part of the ring. The
//! root's news also carries a [`digest`] of the whole member list after the
//! count, which its signature covers: a node whose own list hashes to it
//! holds exactly the root's count ([`Census::current`]), and then fills its
//! fingers from it without lookups ([`Members::owner`]). A node whose list
//! does not match asks a neighbour for its list ([`Census::snapshot_due`]),
//! holds the answer aside ([`Census::offer_snapshot`]), brings it up to date
//! with the news that follows, and takes it only once it hashes to a digest
//! the root signed: a neighbour's list is never believed on its word.

use super::Peer;
use crate::id::NodeId;
use sha2::{Digest as _, Sha256};
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
/// Most joins the root holds to publish at once; past it, later joins are
/// left to the next walk.
pub const MAX_TALLY: usize = 4096;

/// How the root paces its work, in the caller's milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// At most one walk asked for (not periodic) per this, and one news
    /// of joins ([`Census::publish_tally`]).
    pub spacing_ms: u64,
    /// Joins are published once they pause this long.
    pub quiet_ms: u64,
    /// A walk for a reported change waits this long after the report, so
    /// that the successor lists around the change settle first.
    pub settle_ms: u64,
}

impl Pace {
    /// Walks and news spaced by `spacing_ms`, joins published as soon as
    /// they come, walks at once.
    pub fn spaced(spacing_ms: u64) -> Pace {
        Pace {
            spacing_ms,
            quiet_ms: 0,
            settle_ms: 0,
        }
    }
}

/// A digest of a member list (SHA-256; see [`digest`]).
pub type Digest = [u8; 32];

/// An address as bytes, for the [`digest`] of a member list: the same
/// address must give the same bytes on every node.
pub trait Encode {
    /// Append this address's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

impl Encode for usize {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(*self as u64).to_be_bytes());
    }
}

/// The digest of a member list: SHA-256 over a tag and every member in ID
/// order, its ID and its address (length-prefixed).
pub fn digest<A: Encode>(members: &BTreeMap<NodeId, A>) -> Digest {
    let mut h = Sha256::new();
    h.update(b"p2prs-census-v1\0");
    let mut buf = Vec::with_capacity(128);
    for (id, a) in members {
        buf.clear();
        a.encode(&mut buf);
        h.update(id.0.to_be_bytes());
        h.update((buf.len() as u32).to_be_bytes());
        h.update(&buf);
    }
    h.finalize().into()
}

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
    /// The [`digest`] of the whole member list after this count (absent
    /// from a root that does not send one).
    pub digest: Option<Digest>,
}

/// A current member list as a source of fingers: the owner of any ID
/// without a lookup, except for members this node found dead since the
/// list was counted.
#[derive(Clone, Copy, Debug)]
pub struct Members<'a, A> {
    map: &'a BTreeMap<NodeId, A>,
    suspects: &'a [NodeId],
}

impl<'a, A: Clone> Members<'a, A> {
    /// A list (`suspects`: members not to name).
    pub fn new(map: &'a BTreeMap<NodeId, A>, suspects: &'a [NodeId]) -> Self {
        Members { map, suspects }
    }

    /// The first member at or after `start` (wrapping), unless this node
    /// found it dead since the count (then `None`: the caller looks it up).
    pub fn owner(&self, start: NodeId) -> Option<Peer<A>> {
        let (id, a) = self
            .map
            .range(start..)
            .next()
            .or_else(|| self.map.iter().next())?;
        (!self.suspects.contains(id)).then(|| Peer::new(*id, a.clone()))
    }
}

/// Most suspects a census remembers between two counts.
const MAX_SUSPECTS: usize = 64;

/// One node's view of the ring's size and membership.
#[derive(Clone, Debug)]
pub struct Census<A> {
    size: usize,
    members: BTreeMap<NodeId, A>,
    epoch: u64,
    /// The root whose news this node applied last (itself at the root).
    source: Option<NodeId>,
    recount: bool,
    /// When the root first saw the recount asked for (see [`Pace::settle_ms`]).
    recount_seen: Option<u64>,
    last_walk_ms: Option<u64>,
    /// Counts to take (and broadcast) soon, at most one per spacing: a
    /// change is counted and sent again twice (successor lists lag a little
    /// behind the ring, and a broadcast may miss nodes while it settles).
    moving: u8,
    /// The epoch and digest of the last news applied (or count made here).
    heard: Option<(u64, Digest)>,
    /// The epoch at which `members` matched the digest heard.
    verified: Option<u64>,
    /// The epoch at which `members` was hashed and did not match.
    checked: Option<u64>,
    /// A neighbour's member list at an epoch, not yet matched to a digest.
    pending: Option<(u64, BTreeMap<NodeId, A>)>,
    /// The epoch for which a neighbour's list was asked last.
    snapshot_asked: Option<u64>,
    /// Members this node found dead since the last news.
    suspects: Vec<NodeId>,
    /// At the root: joiners it linked in since its last news, to publish.
    tally: Vec<Peer<A>>,
    /// At the root: joiners linked in since the walk under way began.
    linked_in_walk: Vec<Peer<A>>,
    /// When the root last published its tally.
    last_tally_ms: Option<u64>,
    /// When the first and the last joiner of the tally were linked in.
    tally_ms: Option<(u64, u64)>,
}

impl<A: Clone + Eq + Debug + Encode> Census<A> {
    /// A ring of one: this node.
    pub fn new(me: &Peer<A>) -> Self {
        Census {
            size: 1,
            members: BTreeMap::from([(me.id, me.addr.clone())]),
            epoch: 0,
            source: None,
            recount: true,
            recount_seen: None,
            last_walk_ms: None,
            moving: 0,
            heard: None,
            verified: None,
            checked: None,
            pending: None,
            snapshot_asked: None,
            suspects: Vec::new(),
            tally: Vec::new(),
            linked_in_walk: Vec::new(),
            last_tally_ms: None,
            tally_ms: None,
        }
    }

    /// This node `me` started the ring: its list (itself alone) is its
    /// own count, so it counts joins at once ([`linked`](Self::linked))
    /// before its first walk.
    pub fn founded(&mut self, me: NodeId) {
        if self.epoch == 0 && self.source.is_none() && self.members.keys().eq([&me]) {
            self.source = Some(me);
        }
    }

    /// Whether the member list is the root's last count exactly: it hashes
    /// to the digest of the last news (checked once per epoch; a pending
    /// neighbour's list of that epoch that matches is taken instead).
    pub fn current(&mut self) -> bool {
        let Some((e, d)) = self.heard else {
            return false;
        };
        if self.verified == Some(e) {
            return true;
        }
        if self.checked != Some(e) {
            self.checked = Some(e);
            if self.members.len() == self.size && digest(&self.members) == d {
                self.verified = Some(e);
                return true;
            }
        }
        match self.pending.take() {
            Some((p, m)) if p == e && m.len() == self.size && digest(&m) == d => {
                self.members = m;
                self.verified = Some(e);
                true
            }
            Some((p, m)) if p > e => {
                self.pending = Some((p, m));
                false
            }
            _ => false,
        }
    }

    /// The member list as a source of fingers, when it is [`current`](Self::current).
    pub fn finger_source(&mut self) -> Option<Members<'_, A>> {
        if !self.current() {
            return None;
        }
        Some(Members::new(&self.members, &self.suspects))
    }

    /// The member list and its epoch, to hand to a neighbour, when it is
    /// [`current`](Self::current).
    pub fn snapshot(&mut self) -> Option<(u64, Vec<Peer<A>>)> {
        if !self.current() {
            return None;
        }
        let list = self
            .members
            .iter()
            .map(|(id, a)| Peer::new(*id, a.clone()))
            .collect();
        Some((self.epoch, list))
    }

    /// Whether to ask a neighbour for its member list now: news came with
    /// a digest this list does not match, and none was asked for at this
    /// epoch (at most one ask per count heard).
    pub fn snapshot_due(&mut self) -> bool {
        if self.heard.is_none() || self.current() {
            return false;
        }
        if self.pending.is_some() || self.snapshot_asked == Some(self.epoch) {
            return false;
        }
        self.snapshot_asked = Some(self.epoch);
        true
    }

    /// A neighbour's member list at `epoch`: held aside until it matches
    /// the digest of that epoch (news after it is applied to it meanwhile).
    /// Older than the news applied here: dropped.
    pub fn offer_snapshot(&mut self, epoch: u64, members: Vec<Peer<A>>) {
        if epoch < self.epoch || self.heard.is_none() {
            return;
        }
        let map: BTreeMap<NodeId, A> = members.into_iter().map(|p| (p.id, p.addr)).collect();
        self.pending = Some((epoch, map));
        // Check again at this epoch, with the list offered.
        if epoch == self.epoch {
            self.checked = Some(epoch);
        }
    }

    /// This node found `id` dead: its fingers do not name it from the list
    /// until the next news.
    pub fn suspect(&mut self, id: NodeId) {
        if self.members.contains_key(&id)
            && !self.suspects.contains(&id)
            && self.suspects.len() < MAX_SUSPECTS
        {
            self.suspects.push(id);
        }
    }

    /// Whether this node found `id` dead since the last news.
    pub fn suspected(&self, id: NodeId) -> bool {
        self.suspects.contains(&id)
    }

    /// The size last counted (by the root, or here at the root, with the
    /// joiners it linked in since).
    pub fn size(&self) -> usize {
        // An ID given again (its holder left) is counted once.
        let new = self.tally.iter();
        self.size + new.filter(|p| !self.members.contains_key(&p.id)).count()
    }

    /// At the root `me`, at `now_ms`: it granted `p` its ID and has just
    /// linked it in as its predecessor. Counted at once (in
    /// [`size`](Self::size)) and published with the next
    /// [`publish_tally`](Self::publish_tally); whether it was (a root that
    /// has not counted the ring itself yet leaves joins to its first walk).
    pub fn linked(&mut self, me: NodeId, p: Peer<A>, now_ms: u64) -> bool {
        if self.source != Some(me)
            || self.members.get(&p.id) == Some(&p.addr)
            || self.tally.len() >= MAX_TALLY
        {
            return false;
        }
        self.recount = true;
        self.linked_in_walk.retain(|q| q.id != p.id);
        if self.linked_in_walk.len() < MAX_TALLY {
            self.linked_in_walk.push(p.clone());
        }
        self.tally.retain(|q| q.id != p.id);
        self.tally.push(p);
        self.tally_ms = Some(match self.tally_ms {
            Some((first, _)) => (first, now_ms),
            None => (now_ms, now_ms),
        });
        true
    }

    /// When the tally is due: once joins pause for [`Pace::quiet_ms`], or
    /// [`Pace::spacing_ms`] after the first joiner waiting (a stream of
    /// joins), and never within the spacing of the last such news.
    fn tally_due_ms(&self, pace: Pace) -> Option<u64> {
        let (first, last) = self.tally_ms.filter(|_| !self.tally.is_empty())?;
        let settled = last
            .saturating_add(pace.quiet_ms)
            .min(first.saturating_add(pace.spacing_ms));
        let rested = self
            .last_tally_ms
            .map_or(0, |t| t.saturating_add(pace.spacing_ms));
        Some(settled.max(rested))
    }

    /// At the root `me`, at `now_ms`: the news of the joiners linked in
    /// since the last news (the last count plus them), when it is due:
    /// once joins pause for [`Pace::quiet_ms`], or [`Pace::spacing_ms`]
    /// after the first joiner waiting, and at most once per spacing. A walk
    /// is asked to confirm it, and the walks that pass next send the count
    /// again.
    pub fn publish_tally(&mut self, me: NodeId, now_ms: u64, pace: Pace) -> Option<News<A>> {
        if self.source != Some(me) {
            return None;
        }
        if self.tally_due_ms(pace)? > now_ms {
            return None;
        }
        self.last_tally_ms = Some(now_ms);
        self.tally_ms = None;
        let joined = std::mem::take(&mut self.tally);
        let mut now = self.members.clone();
        for p in &joined {
            now.insert(p.id, p.addr.clone());
        }
        self.recount = true;
        self.moving = 2;
        Some(self.take_count(me, now, joined, Vec::new()))
    }

    /// Make `now` the count of the next epoch: its news, with `joined` and
    /// `left`.
    fn take_count(
        &mut self,
        me: NodeId,
        now: BTreeMap<NodeId, A>,
        joined: Vec<Peer<A>>,
        left: Vec<NodeId>,
    ) -> News<A> {
        self.epoch += 1;
        self.size = now.len();
        let d = digest(&now);
        self.members = now;
        self.source = Some(me);
        self.heard = Some((self.epoch, d));
        self.verified = Some(self.epoch);
        self.pending = None;
        self.suspects.clear();
        News {
            size: self.size,
            epoch: self.epoch,
            joined,
            left,
            digest: Some(d),
        }
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

    /// Drop these members (the ring showed they are gone). The list no
    /// longer matches the last count.
    pub fn forget(&mut self, ids: &[NodeId]) {
        for id in ids {
            if self.members.remove(id).is_some() {
                self.verified = None;
                self.checked = None;
            }
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
    /// chance (`periodic`); when the last count moved, at most once per
    /// [`Pace::spacing_ms`]; when a change was reported, so too and
    /// [`Pace::settle_ms`] after the report. Marks the walk as begun.
    pub fn walk_due(&mut self, is_root: bool, periodic: bool, now_ms: u64, pace: Pace) -> bool {
        if self.recount && self.recount_seen.is_none() {
            self.recount_seen = Some(now_ms);
        }
        let due =
            is_root && (periodic || self.walk_due_ms(now_ms, pace).is_some_and(|t| t <= now_ms));
        if due {
            self.recount = false;
            self.recount_seen = None;
            self.last_walk_ms = Some(now_ms);
            self.linked_in_walk.clear();
        }
        due
    }

    /// When a walk asked for is due (none asked: `None`).
    fn walk_due_ms(&self, now_ms: u64, pace: Pace) -> Option<u64> {
        let rested = self
            .last_walk_ms
            .map_or(0, |t| t.saturating_add(pace.spacing_ms));
        if self.moving > 0 {
            return Some(rested);
        }
        let seen = self.recount_seen.unwrap_or(now_ms);
        self.recount
            .then(|| rested.max(seen.saturating_add(pace.settle_ms)))
    }

    /// At the root, at `now_ms`: when it next has work to do (joins to
    /// publish, a recount asked for, a count to send again) that the
    /// pace holds back, so that the caller wakes then; `None` if none.
    pub fn next_work_ms(&self, is_root: bool, now_ms: u64, pace: Pace) -> Option<u64> {
        if !is_root {
            return None;
        }
        let walk = self.walk_due_ms(now_ms, pace);
        let tally = self.tally_due_ms(pace);
        [walk, tally]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.max(now_ms))
    }

    /// The walk found the ring settling: count again soon.
    pub fn settling(&mut self) {
        self.recount = true;
    }

    /// At the root: take the count `members` (this node first, then in ring
    /// order). Returns the news and whether to broadcast it (something
    /// changed, or it is time to repeat it).
    pub fn publish(&mut self, me: NodeId, members: &[Peer<A>]) -> (News<A>, bool) {
        let mut now: BTreeMap<NodeId, A> = members.iter().map(|p| (p.id, p.addr.clone())).collect();
        // Joiners linked in here while the walk ran: it may have passed
        // the end of the ring before they came.
        for p in std::mem::take(&mut self.linked_in_walk) {
            now.entry(p.id).or_insert(p.addr);
        }
        self.tally.clear();
        self.tally_ms = None;
        let joined: Vec<Peer<A>> = now
            .iter()
            .filter(|(id, a)| self.members.get(id) != Some(a))
            .map(|(id, a)| Peer::new(*id, a.clone()))
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
        let news = self.take_count(me, now, joined, left);
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
        // Joins this node linked in as the root and had not published are
        // the other root's to count now: kept, they would be counted on
        // top of its news, and be due at this node for good (it publishes
        // only its own count), which wakes its stabilizer in a loop.
        self.tally.clear();
        self.tally_ms = None;
        self.linked_in_walk.clear();
        self.size = news.size.max(1);
        self.epoch = news.epoch;
        for p in &news.joined {
            self.members.insert(p.id, p.addr.clone());
        }
        for id in &news.left {
            self.members.remove(id);
        }
        // A neighbour's list from before this news takes its changes too.
        if let Some((e, m)) = self.pending.as_mut().filter(|(e, _)| *e < news.epoch) {
            for p in &news.joined {
                m.insert(p.id, p.addr.clone());
            }
            for id in &news.left {
                m.remove(id);
            }
            *e = news.epoch;
        }
        self.heard = news.digest.map(|d| (news.epoch, d));
        self.suspects.clear();
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
///
/// Nodes that join while the walk runs take IDs in the root's range, after
/// the root's predecessor: a list that names such nodes where the root was
/// expected (after the last member) extends the walk to them, and the walk
/// goes on until a list comes round to the root. So a count completes
/// during a stream of joins at the end of the ring, counting the nodes
/// that joined meanwhile, instead of starting over at each join.
#[derive(Clone, Debug)]
pub struct Walk<A> {
    /// Members so far, the root first, in ring order.
    members: Vec<Peer<A>>,
    /// The root's predecessor, which closes the ring.
    pred: Option<Peer<A>>,
    /// The lists reached the root's predecessor: the members are complete.
    reached: bool,
    /// Nodes joined after the root's predecessor: the members end where a
    /// list comes round to the root.
    open_end: bool,
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
            open_end: false,
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
                if !self.open_end {
                    return Err("the successor lists skip the root's predecessor");
                }
                // The ring closes after the nodes that joined meanwhile.
                self.open_end = false;
                self.reached = true;
                self.pred = self.members.last().cloned();
                return Ok(());
            }
            let last = self.members.last().map_or(me, |l| l.id);
            if me.distance_to(p.id) <= me.distance_to(last) {
                return Err("a successor list is out of order");
            }
            if self.members.len() >= MAX_WALK {
                return Err("the ring is larger than a walk counts");
            }
            self.members.push(p.clone());
            self.reached = !self.open_end && self.pred.as_ref().is_some_and(|q| q.id == p.id);
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
        // Nodes that joined after the last member, where the root was
        // expected: count them too, up to where a list names the root.
        let after = known.len().saturating_sub(1);
        let last = self.members.last().map_or(self.me(), |l| l.id);
        if self.reached
            && successors.len() > after
            && known[..after]
                .iter()
                .zip(successors)
                .all(|(a, b)| *a == b.id)
            && successors[after].id.in_open(last, self.me())
        {
            self.reached = false;
            self.open_end = true;
            if let Err(why) = self.extend(&successors[after..]) {
                settle(self, why);
            }
            return;
        }
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
        // The root's predecessor names another successor than the root,
        // before its predecessor: the lists disagree.
        let mut w = Walk::new(p(0), Some(p(5)), &[p(1), p(5)], 4);
        assert_eq!(w.next(), WalkStep::Ask(p(5)));
        w.on_reply(&p(5), Some(p(1)), &[p(3), p(0)]);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
    }

    #[test]
    fn a_walk_counts_nodes_that_joined_after_the_root_s_predecessor() {
        // Node 3 joined after the walk began: the root's predecessor (2)
        // names it, and it names the root.
        let mut w = Walk::new(p(0), Some(p(2)), &[p(1), p(2)], 4);
        assert_eq!(w.next(), WalkStep::Ask(p(2)));
        w.on_reply(&p(2), Some(p(1)), &[p(3), p(0)]);
        assert_eq!(w.next(), WalkStep::Ask(p(3)));
        w.on_reply(&p(3), Some(p(2)), &[p(0), p(1)]);
        let got = match w.next() {
            WalkStep::Done(m) => m.iter().map(|p| p.id.0).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(got, vec![0, 1, 2, 3]);
        // More joined while the walk chased the end: it follows them.
        let mut w = Walk::new(p(0), Some(p(2)), &[p(1), p(2)], 2);
        assert_eq!(w.next(), WalkStep::Ask(p(1)));
        w.on_reply(&p(1), Some(p(0)), &[p(2), p(3)]);
        assert_eq!(w.next(), WalkStep::Ask(p(2)));
        w.on_reply(&p(2), Some(p(1)), &[p(3), p(4)]);
        assert_eq!(w.next(), WalkStep::Ask(p(3)));
        w.on_reply(&p(3), Some(p(2)), &[p(4), p(5)]);
        assert_eq!(w.next(), WalkStep::Ask(p(4)));
        w.on_reply(&p(4), Some(p(3)), &[p(5), p(0)]);
        assert_eq!(w.next(), WalkStep::Ask(p(5)));
        w.on_reply(&p(5), Some(p(4)), &[p(0), p(1)]);
        assert!(matches!(w.next(), WalkStep::Done(m) if m.len() == 6));
        // A newcomer that names another predecessor than the last member:
        // settling.
        let mut w = Walk::new(p(0), Some(p(2)), &[p(1), p(2)], 4);
        let _ = w.next();
        w.on_reply(&p(2), Some(p(1)), &[p(3), p(0)]);
        assert_eq!(w.next(), WalkStep::Ask(p(3)));
        w.on_reply(&p(3), Some(p(1)), &[p(0)]);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
        // A list that names the root again without a newcomer closing it:
        // still the old rule (no list may skip the root's predecessor).
        let mut w = Walk::new(p(0), Some(p(9)), &[p(1), p(2), p(0)], 4);
        assert!(matches!(w.next(), WalkStep::Settling(_)));
    }

    #[test]
    fn the_root_counts_when_due_and_spaced() {
        let mut c = Census::new(&p(0));
        assert!(
            !c.walk_due(false, true, 0, Pace::spaced(250)),
            "only the root counts"
        );
        assert!(
            c.walk_due(true, false, 0, Pace::spaced(250)),
            "a new root counts at once"
        );
        assert!(
            !c.walk_due(true, false, 10, Pace::spaced(250)),
            "nothing asked"
        );
        c.ask_recount();
        assert!(!c.walk_due(true, false, 100, Pace::spaced(250)), "spaced");
        assert!(c.walk_due(true, false, 250, Pace::spaced(250)));
        assert!(
            c.walk_due(true, true, 260, Pace::spaced(250)),
            "periodic counts are not spaced"
        );
        // A count that moved is taken again after the spacing.
        let (news, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(send);
        assert_eq!(news.joined, vec![p(1)]);
        assert!(c.walk_due(true, false, 510, Pace::spaced(250)));
        let (news, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(news.joined.is_empty() && news.left.is_empty());
        assert!(send, "a change is sent again twice");
        assert!(c.walk_due(true, false, 760, Pace::spaced(250)));
        let (_, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(send, "a change is sent again twice");
        assert!(!c.walk_due(true, false, 1100, Pace::spaced(250)), "settled");
        assert!(c.walk_due(true, true, 1100, Pace::spaced(250)));
        let (news, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert!(
            !send,
            "unchanged, not due for a repeat (epoch {})",
            news.epoch
        );
        assert!(!c.walk_due(true, false, 1400, Pace::spaced(250)), "settled");
        c.settling();
        assert!(c.walk_due(true, false, 1400, Pace::spaced(250)));
    }

    /// The pace of a node with the default timings.
    const NODE_PACE: Pace = Pace {
        spacing_ms: 250,
        quiet_ms: 20,
        settle_ms: 40,
    };

    #[test]
    fn the_root_counts_joins_it_links_in_and_publishes_them_paced() {
        let pace = NODE_PACE;
        // A root that has not counted the ring itself leaves joins to its
        // first walk; a founding root counts them at once.
        let mut c = Census::new(&p(0));
        assert!(!c.linked(NodeId(0), p(1), 0));
        c.founded(NodeId(0));
        assert!(c.linked(NodeId(0), p(1), 0));
        assert!(c.linked(NodeId(0), p(2), 5));
        assert_eq!(c.size(), 3, "counted at once");
        // Published once the joins pause.
        assert_eq!(c.publish_tally(NodeId(0), 10, pace), None);
        assert_eq!(c.next_work_ms(true, 10, pace), Some(25));
        let news = c.publish_tally(NodeId(0), 25, pace).expect("due");
        assert_eq!((news.size, news.epoch), (3, 1));
        assert_eq!(news.joined, vec![p(1), p(2)]);
        assert!(c.current());
        // A node that held the count before takes the news and is current.
        let mut old = Census::new(&p(1));
        old.apply(NodeId(0), news.clone());
        assert_eq!(old.size(), 3);
        let mut base = Census::new(&p(1));
        base.apply(
            NodeId(0),
            News {
                joined: vec![p(0), p(1), p(2)],
                ..news.clone()
            },
        );
        assert!(base.current());
        // A stream of joins: published every spacing, not at each pause.
        for (k, t) in [(3, 30), (4, 60)] {
            assert!(c.linked(NodeId(0), p(k), t));
        }
        assert_eq!(c.size(), 5);
        assert_eq!(c.publish_tally(NodeId(0), 100, pace), None, "spaced");
        assert_eq!(c.tally_due_ms(pace), Some(275));
        let news = c.publish_tally(NodeId(0), 275, pace).expect("due");
        assert_eq!((news.size, news.epoch), (5, 2));
        base.apply(NodeId(0), news);
        assert!(
            base.current(),
            "the digest covers the last count plus the joins"
        );
        // Joins already counted, or from another address under a known ID
        // (the ID was given again), count once.
        assert!(!c.linked(NodeId(0), p(4), 300));
        assert!(c.linked(NodeId(0), Peer::new(NodeId(4), 40), 300));
        assert_eq!(c.size(), 5);
        // The walks that confirm the news; one for a reported change
        // waits for the ring to settle.
        let news = c.publish_tally(NodeId(0), 525, pace).expect("due");
        assert_eq!(news.joined, vec![Peer::new(NodeId(4), 40)]);
        let all = [p(0), p(1), p(2), p(3), Peer::new(NodeId(4), 40)];
        assert!(c.walk_due(true, false, 530, pace), "a count to confirm");
        let (news, send) = c.publish(NodeId(0), &all);
        assert!(send && news.joined.is_empty(), "sent again: {news:?}");
        assert!(!c.walk_due(true, false, 700, pace), "spaced");
        assert!(c.walk_due(true, false, 780, pace), "and once more");
        assert!(c.publish(NodeId(0), &all).1);
        c.ask_recount();
        assert!(!c.walk_due(true, false, 800, pace), "spaced");
        assert_eq!(c.next_work_ms(true, 800, pace), Some(1030));
        assert!(!c.walk_due(true, false, 1029, pace));
        assert!(c.walk_due(true, false, 1030, pace));
        c.ask_recount();
        assert!(!c.walk_due(true, false, 1300, pace), "settling");
        assert_eq!(c.next_work_ms(true, 1300, pace), Some(1340));
        assert!(c.walk_due(true, false, 1340, pace));
        // Only the root works.
        assert_eq!(c.next_work_ms(false, 900, pace), None);
    }

    #[test]
    fn a_walk_keeps_the_joiners_linked_in_while_it_ran() {
        let pace = Pace::spaced(250);
        let mut c = Census::new(&p(0));
        c.founded(NodeId(0));
        assert!(c.linked(NodeId(0), p(1), 0));
        let news = c.publish_tally(NodeId(0), 0, pace).expect("due");
        assert_eq!(news.size, 2);
        assert!(c.walk_due(true, false, 250, pace));
        // Node 2 joins while the walk runs, after it passed the end.
        assert!(c.linked(NodeId(0), p(2), 260));
        let (news, send) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert_eq!(news.size, 3, "kept");
        assert_eq!(news.joined, vec![p(2)]);
        assert!(news.left.is_empty());
        assert!(send);
        assert_eq!(c.publish_tally(NodeId(0), 600, pace), None, "published");
        // The next walk decides: a joiner that is gone is counted out.
        assert!(c.walk_due(true, true, 600, pace));
        let (news, _) = c.publish(NodeId(0), &[p(0), p(1)]);
        assert_eq!((news.size, news.left.clone()), (2, vec![NodeId(2)]));
    }

    #[test]
    fn joins_tallied_before_another_root_s_news_are_not_left_due_forever() {
        // Node 5 roots the ring and links node 7 in; before it publishes,
        // a node with a lower ID (0) is its predecessor again and its news
        // is applied here. Later node 5 is the root again.
        let pace = NODE_PACE;
        let mut c = Census::new(&p(5));
        c.founded(NodeId(5));
        assert!(c.linked(NodeId(5), p(7), 0));
        let news = News {
            size: 2,
            epoch: 1,
            joined: vec![p(0), p(5)],
            left: vec![],
            digest: None,
        };
        assert!(c.apply(NodeId(0), news).is_some());
        // Node 7 is not in the root's count (it left): counted once.
        assert_eq!(c.size(), 2, "a stale tally counts a node nobody counted");
        // As the root again: the work it says is due must be work it does,
        // or the stabilizer wakes for it in a loop (`walk_if_due` queues
        // `CensusAt(now)` again at once).
        let now = 1_000;
        let wake = c.next_work_ms(true, now, pace);
        let published = c.publish_tally(NodeId(5), now, pace).is_some();
        let walked = c.walk_due(true, false, now, pace);
        assert!(
            wake.is_none_or(|t| t > now) || published || walked,
            "due at {wake:?} but nothing is done at {now}"
        );
    }

    #[test]
    fn news_is_applied_in_order_and_a_new_root_takes_over() {
        let mut c = Census::new(&p(5));
        let news = |size, epoch, joined: Vec<u64>, left: Vec<u64>| News {
            size,
            epoch,
            joined: joined.into_iter().map(p).collect(),
            left: left.into_iter().map(NodeId).collect(),
            digest: None,
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

    /// The root's news for the count `ids`, from a root whose last count
    /// was `before`.
    fn counted(root: &mut Census<usize>, ids: &[u64]) -> News<usize> {
        let members: Vec<Peer<usize>> = ids.iter().map(|&i| p(i)).collect();
        root.publish(NodeId(ids[0]), &members).0
    }

    #[test]
    fn a_list_that_matches_the_digest_is_current() {
        let mut root = Census::new(&p(0));
        assert!(!root.current(), "nothing counted yet");
        let n1 = counted(&mut root, &[0, 1, 2]);
        assert!(root.current(), "the root's own count");
        assert!(n1.digest.is_some());
        // A node that was there from the start takes every change.
        let mut old = Census::new(&p(1));
        old.apply(
            NodeId(0),
            News {
                joined: vec![p(0), p(2)],
                ..n1.clone()
            },
        );
        assert!(old.current());
        let src = old.finger_source().expect("current");
        assert_eq!(src.owner(NodeId(2)), Some(p(2)));
        assert_eq!(src.owner(NodeId(3)), Some(p(0)), "wraps to the lowest");
        // A joiner holds only what changed since it came: not current.
        let n2 = counted(&mut root, &[0, 1, 2, 3]);
        let mut new = Census::new(&p(3));
        new.apply(NodeId(0), n2.clone());
        assert!(!new.current());
        assert!(new.finger_source().is_none());
        assert!(new.snapshot_due(), "asks a neighbour");
        assert!(!new.snapshot_due(), "once per count");
        old.apply(NodeId(0), n2.clone());
        assert!(old.current());
        // A neighbour's list of the same count is checked and taken.
        let (e, list) = old.snapshot().expect("current");
        assert_eq!(e, n2.epoch);
        new.offer_snapshot(e, list);
        assert!(new.current());
        assert_eq!(new.members().len(), 4);
        // A forged list does not match the digest and is not taken.
        let n3 = counted(&mut root, &[0, 1, 2, 3, 4]);
        let mut late = Census::new(&p(4));
        late.apply(NodeId(0), n3.clone());
        assert!(late.snapshot_due());
        late.offer_snapshot(n3.epoch, vec![p(0), p(1), p(2), p(3), p(5)]);
        assert!(!late.current());
        assert!(!late.members().contains_key(&NodeId(5)));
        // A list from a count not heard yet waits for its news; one from
        // before the news takes the news's changes.
        let mut ahead = Census::new(&p(4));
        ahead.apply(NodeId(0), n3.clone());
        let before = old.snapshot().expect("current");
        assert_eq!(before.0 + 1, n3.epoch);
        ahead.offer_snapshot(before.0, before.1.clone());
        assert!(
            ahead.pending.is_none(),
            "older than the news applied: dropped"
        );
        let mut slow = Census::new(&p(9));
        slow.apply(NodeId(0), n2.clone());
        slow.offer_snapshot(before.0, before.1);
        slow.apply(NodeId(0), n3.clone());
        assert!(slow.current(), "the list from before plus the news");
        // Missing a change leaves the list behind until a neighbour's list.
        let n4 = counted(&mut root, &[0, 1, 2, 3, 4, 6]);
        let n5 = counted(&mut root, &[0, 1, 2, 3, 6]);
        slow.apply(NodeId(0), n5.clone());
        assert!(!slow.current(), "missed the join of 6: {n4:?}");
        // A member found dead is not named until the next news.
        old.apply(NodeId(0), n3.clone());
        old.suspect(NodeId(4));
        let src = old.finger_source().expect("current");
        assert_eq!(src.owner(NodeId(4)), None);
        assert_eq!(src.owner(NodeId(3)), Some(p(3)));
        old.apply(NodeId(0), n4);
        assert_eq!(old.finger_source().unwrap().owner(NodeId(4)), Some(p(4)));
        // Forgetting members leaves the list behind the count.
        old.forget(&[NodeId(1)]);
        assert!(!old.current());
    }
}

//! The stabilizer thread: one driver loop per node that runs the Chord
//! maintenance rounds, forwards broadcasts, and (at the root) counts the ring.

use super::*;
use crate::transport::Threads;

/// Start the node's stabilizer thread.
pub(crate) fn spawn_stabilizer(n: &Arc<NodeInner>, threads: &Arc<Threads>) -> Result<()> {
    let node = Arc::clone(n);
    let name = format!("p2prs-ring-{}", n.transport.local_addr().port());
    threads
        .spawn(name, None, move || run(&node))
        .map_err(|e| Error::io("spawning the stabilizer thread", e))
}

/// The extra work peers can ask for, spaced out: a round (`stabilize_now`)
/// or a recount (`recount`) asked for runs at once if the last one was at
/// least `spacing` ago, else when it will be (one deferred at most). So
/// however many peers ask however often, the stabilizer does at most one
/// extra round and one extra recount per `spacing`.
struct Extra {
    spacing: Duration,
    last_round: Option<Instant>,
    round_at: Option<Instant>,
    last_recount: Option<Instant>,
    recount_at: Option<Instant>,
    /// A stabilize step asked for (see [`STEP_SPACING`]).
    last_step: Option<Instant>,
    step_at: Option<Instant>,
}

impl Extra {
    /// When a job asked for at `now`, last run at `last`, may run.
    fn when(&self, last: Option<Instant>, now: Instant) -> Instant {
        last.map_or(now, |t| (t + self.spacing).max(now))
    }
}

/// How far apart the stabilize steps that peers ask for are (`StabilizeNow`:
/// the successor's list changed). A step is the stabilize exchange alone
/// (ask the successor for its predecessor and list, notify it): one or two
/// requests over the pinned successor link. It carries a join or a leave
/// back along the successor lists in round trips, so that the root's count
/// passes soon after; the whole extra round (predecessor check, fingers)
/// stays spaced as above. A node that a joiner has just become the
/// successor of (`Job::StepNow`) steps at once (see
/// [`URGENT_STEP_SPACING`]): the news of the join goes down the broadcast
/// tree along successors.
const STEP_SPACING: Duration = Duration::from_millis(50);

/// How far apart the steps asked for at once (`{"joined": true}`) are at
/// least: a node receives one per node that joins right after it, so this
/// only bounds what a peer that sends them over and over can cause.
const URGENT_STEP_SPACING: Duration = Duration::from_millis(5);

/// How far apart the extra rounds and recounts peers ask for are: a quarter
/// of the stabilizer period, and at most [`MAX_EXTRA_SPACING`] (a ring with a
/// long period still links joins and carries changes along the successor
/// lists within round trips).
fn extra_spacing(interval: Duration) -> Duration {
    (interval / 4).min(MAX_EXTRA_SPACING)
}

/// The longest spacing of extra rounds and recounts.
const MAX_EXTRA_SPACING: Duration = Duration::from_millis(250);

fn run(n: &NodeInner) {
    let interval = n.transport.cfg.stabilize_interval;
    let mut next = Instant::now() + interval;
    let mut extra = Extra {
        spacing: extra_spacing(interval),
        last_round: None,
        round_at: None,
        last_recount: None,
        recount_at: None,
        last_step: None,
        step_at: None,
    };
    loop {
        let due = [Some(next), extra.round_at, extra.recount_at, extra.step_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next);
        let wait = due.saturating_duration_since(Instant::now());
        select! {
            recv(n.chord.stop_rx) -> _ => return,
            recv(n.chord.jobs_rx) -> job => match job {
                Ok(job) => {
                    n.chord.taken(&job);
                    let now = Instant::now();
                    match job {
                        Job::StabilizeNow => {
                            let at = extra.when(extra.last_round, now);
                            extra.round_at = Some(extra.round_at.map_or(at, |t| t.min(at)));
                            let step = extra
                                .last_step
                                .map_or(now, |t| (t + STEP_SPACING).max(now));
                            extra.step_at = Some(extra.step_at.map_or(step, |t| t.min(step)));
                        }
                        Job::Recount => {
                            let at = extra.when(extra.last_recount, now);
                            extra.recount_at = Some(extra.recount_at.map_or(at, |t| t.min(at)));
                        }
                        Job::StepNow => {
                            let step = extra
                                .last_step
                                .map_or(now, |t| (t + URGENT_STEP_SPACING).max(now));
                            extra.step_at = Some(extra.step_at.map_or(step, |t| t.min(step)));
                        }
                        Job::CensusAt(ms) => {
                            // The root's own census asks: not spaced again.
                            let at = n.chord.started + Duration::from_millis(ms);
                            extra.recount_at = Some(extra.recount_at.map_or(at, |t| t.min(at)));
                        }
                        other => do_job(n, other),
                    }
                }
                Err(_) => return,
            },
            recv(after(wait)) -> _ => {}
        }
        if n.transport.is_stopping() {
            return;
        }
        let now = Instant::now();
        if extra.recount_at.is_some_and(|t| t <= now) {
            extra.recount_at = None;
            extra.last_recount = Some(now);
            tell_root(n);
        }
        let now = Instant::now();
        let periodic = next <= now;
        let asked = extra.round_at.is_some_and(|t| t <= now);
        if extra.step_at.is_some_and(|t| t <= now) && !(periodic || asked) {
            extra.step_at = None;
            extra.last_step = Some(now);
            step(n);
        }
        if periodic || asked {
            extra.round_at = None;
            // The round stabilizes too.
            extra.step_at = None;
            extra.last_step = Some(now);
            // Only rounds asked for are spaced: a periodic round just before
            // does not delay the one a joining neighbour asks for.
            if asked {
                extra.last_round = Some(now);
            }
            round(n);
            next = Instant::now() + interval;
        }
    }
}

fn do_job(n: &NodeInner, job: Job) {
    match job {
        Job::Forward {
            limit,
            origin,
            kind,
            data,
            body,
            sig,
        } => {
            spread(n, &origin, limit, &kind, data, body, sig);
        }
        Job::CheckPredecessor(candidate) => {
            let _purpose = crate::transport::purpose(crate::transport::Purpose::Stabilize);
            check_predecessor(n, candidate)
        }
        Job::VetRoot {
            limit,
            origin,
            data,
            body,
            sig,
        } => vet_root(n, limit, origin, data, body, sig),
        // Its join counts its dials as `join`.
        Job::Rejoin { via, other } => rejoin(n, via, other),
        // Spaced out by `run`.
        Job::StabilizeNow | Job::Recount | Job::CensusAt(_) | Job::StepNow => {}
        Job::Poke(p) => ask_to_stabilize(n, &p, json!({})),
        Job::Link(p) => ask_to_stabilize(n, &p, json!({ "joined": true })),
    }
}

/// Send `p` a `STABILIZE_NOW` with `data` (a failure is only logged: its
/// next round does the same).
fn ask_to_stabilize(n: &NodeInner, p: &RPeer, data: Value) {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Poke);
    if let Err(e) = rpc_peer(n, p, STABILIZE_NOW, data) {
        log::debug!("asking {} to stabilize: {e}", p.addr);
    }
}

/// `candidate` notified this node but lies before its predecessor: it
/// believes the predecessor gone. Ping the predecessor now; if it does not
/// answer, take `candidate` (which the notify already checked may hold its
/// ID here) in its place. So the node after a dead root takes over ID 0,
/// and with it handing out IDs and counting the ring, as soon as the node
/// before the dead one notices, not a round later.
fn check_predecessor(n: &NodeInner, candidate: RPeer) {
    let pred = n
        .chord
        .ring
        .read()
        .as_ref()
        .and_then(|r| r.routing.predecessor().cloned());
    let Some(pred) = pred.filter(|p| p.id != candidate.id) else {
        return;
    };
    // Not a ping: a node there that holds another ID now is as gone.
    let Err(e) = neighbours_held(n, &pred) else {
        return;
    };
    failed(n, &pred, &e);
    let root = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        if r.routing.notify(candidate.clone()) {
            let now = n.chord.now_ms();
            r.reservations.prune(&r.routing, now);
        }
        let root = r.is_root();
        if root {
            r.census.ask_recount();
        }
        root
    };
    n.chord.bump();
    if root {
        n.chord.queue(Job::Recount);
    }
}

/// Size news from `origin`, above the lowest ID this node knows: if the
/// ring says `origin` owns ID 0 now (a lookup, which routes around dead
/// nodes), every lower ID this node knows is gone; apply and forward the news.
/// Otherwise drop it: only the root counts the ring.
fn vet_root(
    n: &NodeInner,
    limit: NodeId,
    origin: RPeer,
    data: Value,
    body: Option<Vec<u8>>,
    sig: Option<String>,
) {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Broadcast);
    match lookup(n, alloc::FIRST_ID) {
        Ok(route) if route.owner.id == origin.id => {}
        Ok(route) => {
            log::warn!(
                "dropped size news from {}: ID 0 is owned by {}",
                origin.id,
                route.owner.id
            );
            return;
        }
        Err(e) => {
            log::debug!("dropped size news from {}: looking up ID 0: {e}", origin.id);
            return;
        }
    }
    let lower: Vec<NodeId> = {
        let g = n.chord.ring.read();
        let Some(r) = g.as_ref() else { return };
        let rt = &r.routing;
        rt.predecessor()
            .into_iter()
            .chain(rt.successors())
            .chain(rt.fingers().iter().flatten())
            .map(|p| p.id)
            .chain(r.census.members().keys().copied())
            .filter(|id| *id < origin.id && *id != rt.me().id)
            .collect()
    };
    forget(n, &lower);
    if let Some(r) = n.chord.ring.write().as_mut() {
        r.census.forget(&lower);
    }
    match size_news(&data, body.as_deref()) {
        Ok(news) => super::serve::apply_size(n, origin.id, news),
        Err(e) => {
            log::warn!("malformed size news from {}: {e}", origin.id);
            return;
        }
    }
    spread(n, &origin, limit, SIZE, data, body, sig);
}

/// One stabilizer round: stabilize, check the predecessor, fix fingers, and
/// at the root count the ring when due.
pub(super) fn round(n: &NodeInner) {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Stabilize);
    let actions = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        // A member list that is the root's last count fills the fingers
        // without lookups (`ring::census`).
        let members = r.census.finger_source();
        r.stabilizer.round(&mut r.routing, members)
    };
    for a in actions {
        execute(n, a);
    }
    pull_members(n);
    // Only the links the ring needs every round stay pinned: the successor
    // (stabilize) and the predecessor (checked). Fingers and the rest of the
    // successor list are reached on demand and close when idle.
    let neighbours = n
        .chord
        .ring
        .read()
        .as_ref()
        .map(|r| r.routing.ring_links())
        .unwrap_or_default();
    n.chord
        .pin_neighbours(&neighbours, |ep| n.transport.find(ep.at));
    n.transport.trim_temporary();
    n.chord.bump();
    let periodic = n
        .chord
        .ring
        .read()
        .as_ref()
        .is_some_and(|r| r.stabilizer.rounds() % WALK_EVERY == 0);
    walk_if_due(n, periodic);
}

/// A stabilize step asked for by a peer: the stabilize exchange with the
/// successor alone (see [`STEP_SPACING`]).
fn step(n: &NodeInner) {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Stabilize);
    let succ = n
        .chord
        .ring
        .read()
        .as_ref()
        .filter(|r| !r.routing.is_alone())
        .map(|r| r.routing.successor().clone());
    if let Some(s) = succ {
        execute(n, Action::AskPredecessor(s));
        n.chord.bump();
    }
}

/// A member list behind the root's count (this node joined after the
/// counts it heard began, or missed one): ask the successor for its list,
/// and if the successor's is behind too, the root (which counts: its list
/// is always current), at most once per count heard. The list is held
/// aside and taken only once it matches a digest the root signed
/// (`Census::offer_snapshot`).
fn pull_members(n: &NodeInner) {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Members);
    let succ = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        if r.routing.is_alone() || !r.census.snapshot_due() {
            return;
        }
        r.routing.successor().clone()
    };
    let e = match members_of(n, &succ) {
        Ok(()) => return,
        Err(e) => e,
    };
    log::debug!("asking {} for its member list: {e}", succ.id);
    // A best-effort ask: a hop that does not answer this lookup is not
    // dropped from the routing state (other requests will tell).
    let start = {
        let g = n.chord.ring.read();
        let Some(r) = g.as_ref() else { return };
        Lookup::new(alloc::FIRST_ID, &r.routing)
    };
    let root = match drive(n, start) {
        Ok((root, _, _)) if root.id != succ.id && Some(root.id) != my_id(n) => root,
        _ => return,
    };
    if let Err(e) = members_of(n, &root) {
        log::debug!("asking the root {} for its member list: {e}", root.id);
    }
}

/// Ask `p` for its member list and offer it to the census.
fn members_of(n: &NodeInner, p: &RPeer) -> Result<()> {
    let m = rpc_peer(n, p, MEMBERS, json!({}))?;
    let body = m
        .body()
        .ok_or_else(|| Error::Routing("a member list without a body".into()))?;
    let list: MembersReply = serde_json::from_slice(body)?;
    if let Some(r) = n.chord.ring.write().as_mut() {
        r.census.offer_snapshot(list.epoch, list.members);
    }
    Ok(())
}

/// Joins the root links in are published once they pause this long (or
/// after the spacing of extra work, in a stream of joins): see
/// [`Census::publish_tally`].
const TALLY_QUIET: Duration = Duration::from_millis(20);

/// A walk for a reported change waits this long after the report, so
/// that the successor lists around the change settle first (stabilize
/// steps, see [`STEP_SPACING`], carry it back in round trips).
const WALK_SETTLE: Duration = Duration::from_millis(40);

/// The pace of the root's census at this stabilizer interval.
fn pace(interval: Duration) -> Pace {
    let spacing = extra_spacing(interval);
    Pace {
        spacing_ms: spacing.as_millis() as u64,
        quiet_ms: TALLY_QUIET.min(spacing).as_millis() as u64,
        settle_ms: WALK_SETTLE.min(spacing).as_millis() as u64,
    }
}

/// At the root: publish the joins it linked in since its last news, when
/// due ([`Census::publish_tally`]); count the ring now if it is time
/// (`periodic`) or a change was reported, but not more often than four
/// times a stabilizer period (the decision is [`Census::walk_due`]). Work
/// that the pace holds back wakes the stabilizer when it is due
/// ([`Census::next_work_ms`], a `CensusAt` job).
fn walk_if_due(n: &NodeInner, periodic: bool) {
    let pace = pace(n.transport.cfg.stabilize_interval);
    let now = n.chord.now_ms();
    let (tally, due, me) = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        let root = r.is_root();
        let me = r.routing.me().clone();
        let tally = if root {
            r.census.publish_tally(me.id, now, pace)
        } else {
            None
        };
        // A walk right after the news of joins would find the successor
        // lists behind them still settling: it comes a spacing later.
        let due = tally.is_none() && r.census.walk_due(root, periodic, now, pace);
        (tally, due, me)
    };
    if let Some(news) = tally {
        log::debug!(
            "published {} joins linked in here: {} nodes (epoch {})",
            news.joined.len(),
            news.size,
            news.epoch
        );
        announce_news(n, &me, news, true);
    }
    if due {
        walk(n);
    }
    let now = n.chord.now_ms();
    let wake = n
        .chord
        .ring
        .read()
        .as_ref()
        .and_then(|r| r.census.next_work_ms(r.is_root(), now, pace));
    if let Some(at) = wake {
        n.chord.queue(Job::CensusAt(at));
    }
}

/// At most this many successors asked in one stabilize step (see
/// `execute`): enough to catch up with a burst of joins, few enough that a
/// successor naming ever closer predecessors cannot make this node dial
/// more than a handful of addresses per round.
const STABILIZE_STEPS: usize = 8;

fn execute(n: &NodeInner, action: Action<Ep>) {
    match action {
        Action::AskPredecessor(first) => {
            // When the answer moves our successor closer (nodes joined
            // between us and it), stabilize with the new one at once too:
            // joins faster than rounds would otherwise leave this node
            // pointing past a joiner until its next round.
            //
            // A successor that does not answer is dropped and the next one
            // in the list asked at once (so a dead successor is replaced in
            // this round, not the next); a dead node that the new successor
            // still names as its predecessor is not taken back.
            let mut s = first;
            let mut dead: Vec<NodeId> = Vec::new();
            for step in 1..=STABILIZE_STEPS {
                let reply = match neighbours_held(n, &s) {
                    Ok(reply) => reply,
                    Err(e) => {
                        failed(n, &s, &e);
                        dead.push(s.id);
                        let next = n
                            .chord
                            .ring
                            .read()
                            .as_ref()
                            .map(|r| r.routing.successor().clone());
                        match next {
                            Some(next)
                                if step < STABILIZE_STEPS
                                    && Some(next.id) != my_id(n)
                                    && !dead.contains(&next.id) =>
                            {
                                s = next;
                                continue;
                            }
                            _ => return,
                        }
                    }
                };
                let pred = reply.pred.filter(|p| !dead.contains(&p.id));
                if let Some(other) = displaced(n, pred.as_ref()) {
                    n.chord.queue(Job::Rejoin { via: s, other });
                    return;
                }
                let (notify, next, tell) = {
                    let mut g = n.chord.ring.write();
                    let Some(r) = g.as_mut() else { return };
                    let before = ids(r.routing.successors());
                    let a = on_stabilize_reply(&mut r.routing, &s, pred, reply.successors);
                    // The list changed: the predecessor's list (which is
                    // ours, shifted) is stale too. Asking it to stabilize
                    // now carries a join or a failure back along the
                    // successor lists in round trips, not rounds, so that
                    // the root's count settles soon after the ring does.
                    let tell = (before != ids(r.routing.successors()))
                        .then(|| r.routing.predecessor().cloned())
                        .flatten();
                    (a, r.routing.successor().clone(), tell)
                };
                if let Some(p) = tell {
                    n.chord.queue(Job::Poke(p));
                }
                if next.id != s.id && next.id != my_id(n).unwrap_or(s.id) && step < STABILIZE_STEPS
                {
                    s = next;
                    continue;
                }
                if let Some(a) = notify {
                    execute(n, a);
                }
                return;
            }
        }
        Action::Notify { to, me } => match rpc_peer(n, &to, NOTIFY, notify_data(n, &me)) {
            Ok(_) => {}
            // It answered: alive, only not taking this node (it cannot
            // check the grant yet, or this node skipped one between them,
            // which the next stabilize finds).
            Err(e @ Error::Remote { .. }) => log::debug!("{} refused a notify: {e}", to.id),
            Err(e) => failed(n, &to, &e),
        },
        Action::CheckPredecessor(p) => {
            // Its successor list too: a predecessor that skipped this node
            // (see `on_predecessor_reply`) is caught here.
            let reply = match neighbours_held(n, &p) {
                Ok(reply) => reply,
                Err(e) => return failed(n, &p, &e),
            };
            let relink = n
                .chord
                .ring
                .write()
                .as_mut()
                .and_then(|r| on_predecessor_reply(&mut r.routing, &p, &reply.successors));
            if let Some(a) = relink {
                n.chord.bump();
                execute(n, a);
            }
        }
        Action::FixFinger { index, start } => {
            let (start_lookup, list) = {
                let mut g = n.chord.ring.write();
                let Some(r) = g.as_mut() else { return };
                let list = if r.census.current() {
                    crate::transport::Purpose::FingerCurrent
                } else if r.census.epoch() > 0 {
                    crate::transport::Purpose::FingerStale
                } else {
                    crate::transport::Purpose::Finger
                };
                (Lookup::new(start, &r.routing), list)
            };
            let _purpose = crate::transport::purpose(list);
            match drive(n, start_lookup) {
                Ok((owner, _, dead)) => {
                    forget(n, &dead);
                    if let Some(r) = n.chord.ring.write().as_mut() {
                        r.routing.set_finger(index, Some(owner));
                    }
                }
                Err(e) => log::debug!("fixing finger {index}: {e}"),
            }
        }
    }
}

fn ids(peers: &[RPeer]) -> Vec<NodeId> {
    peers.iter().map(|p| p.id).collect()
}

/// The neighbours of `p`, asked at its address, if the node there still
/// holds `p`'s ID: one that holds another ID now (it gave this one up, or
/// another node took the address) is as gone.
fn neighbours_held(n: &NodeInner, p: &RPeer) -> Result<NeighboursReply> {
    let reply = neighbours_of(n, p.addr)?;
    if reply.me.id == p.id {
        Ok(reply)
    } else {
        Err(Error::Routing(format!(
            "the node at {} holds ID {}, not {}",
            p.addr, reply.me.id, p.id
        )))
    }
}

/// The node that holds this node's ID in its place, if the successor names
/// one as its predecessor (`ring::stabilize::displaced_by`) and it answers
/// that it does: a holder that is gone is not yielded to (the successor
/// replaces it when it checks its predecessor).
fn displaced(n: &NodeInner, succ_pred: Option<&RPeer>) -> Option<RPeer> {
    let me = n.chord.ring.read().as_ref()?.routing.me().clone();
    let other = displaced_by(&me, succ_pred)?.clone();
    match neighbours_of(n, other.addr) {
        Ok(reply) if reply.me == other => Some(other),
        Ok(_) => None,
        Err(e) => {
            log::debug!("node {} at {} on this node's ID: {e}", other.id, other.addr);
            None
        }
    }
}

fn failed(n: &NodeInner, p: &RPeer, e: &Error) {
    log::info!(
        "node {} ({}) does not answer ({e}); routing around it",
        p.id,
        p.addr
    );
    forget(n, &[p.id]);
    tell_root(n);
}

/// Have the root count the ring again soon.
fn tell_root(n: &NodeInner) {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Recount);
    let root_is_me = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        let me = r.is_root();
        if me {
            r.census.ask_recount();
        }
        me
    };
    if root_is_me {
        walk_if_due(n, false);
        return;
    }
    let result = lookup(n, alloc::FIRST_ID).and_then(|route| {
        n.transport
            .connect_to(route.owner.addr, route.owner.key)
            .and_then(|c| super::super::send_message(&c, Message::new(RECOUNT, json!({}))))
    });
    if let Err(e) = result {
        log::debug!("asking the root to recount: {e}");
    }
}

/// At the root: count the ring (a [`Walk`] along successor lists, in
/// jumps: see `ring::census`), then broadcast the size and what changed
/// since the last count.
fn walk(n: &NodeInner) {
    let _purpose = crate::transport::purpose(crate::transport::Purpose::Census);
    let mut w = {
        let g = n.chord.ring.read();
        let Some(r) = g.as_ref() else { return };
        let rt = &r.routing;
        Walk::new(
            rt.me().clone(),
            rt.predecessor().cloned(),
            rt.successors(),
            rt.successor_list_len(),
        )
    };
    loop {
        match w.next() {
            WalkStep::Ask(p) => match neighbours_of(n, p.addr) {
                Ok(reply) => w.on_reply(&reply.me, reply.pred, &reply.successors),
                Err(e) => {
                    log::debug!("counting the ring: {} did not answer: {e}", p.id);
                    w.on_failure();
                }
            },
            WalkStep::Done(members) => {
                log::debug!(
                    "counted {} nodes with {} requests",
                    members.len(),
                    w.requests()
                );
                return publish(n, &members);
            }
            WalkStep::Settling(why) => {
                // A node has just joined or left and the ring is settling:
                // count again soon.
                log::debug!("counting the ring: {why}; again soon");
                if let Some(r) = n.chord.ring.write().as_mut() {
                    r.census.settling();
                }
                n.chord.queue(Job::Recount);
                return;
            }
        }
    }
}

fn publish(n: &NodeInner, members: &[RPeer]) {
    let Some(me) = members.first().cloned() else {
        return;
    };
    let (news, changed) = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        // The root's own list is its count: its fingers follow it, with
        // no lookups to reset.
        let (news, changed) = r.census.publish(me.id, members);
        (news, changed)
    };
    log::debug!(
        "counted {} nodes (epoch {}){}",
        news.size,
        news.epoch,
        if changed { ", broadcasting" } else { "" }
    );
    announce_news(n, &me, news, changed);
}

/// At the root `me`: tell the user what the news `news` changed, and
/// broadcast it if `send`.
fn announce_news(n: &NodeInner, me: &RPeer, news: News<Ep>, send: bool) {
    for p in news.joined.iter().filter(|p| p.id != me.id) {
        n.emit(crate::node::Event::PeerJoined {
            id: p.id,
            addr: p.addr.at,
        });
    }
    for id in news.left.iter().filter(|id| **id != me.id) {
        n.emit(crate::node::Event::PeerLeft { id: *id });
    }
    if send {
        // In the body: the joiners of a large ring (a key and an address
        // each) can exceed the frame header's size limit.
        if let Ok(body) = serde_json::to_vec(&SizeNews::from(news)) {
            let data = Value::Null;
            let sig = sign_broadcast(n, me, SIZE, &data, Some(&body));
            spread(n, me, me.id, SIZE, data, Some(body), sig);
        }
    }
}

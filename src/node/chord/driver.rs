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
}

impl Extra {
    /// When a job asked for at `now`, last run at `last`, may run.
    fn when(&self, last: Option<Instant>, now: Instant) -> Instant {
        last.map_or(now, |t| (t + self.spacing).max(now))
    }
}

fn run(n: &NodeInner) {
    let interval = n.transport.cfg.stabilize_interval;
    let mut next = Instant::now() + interval;
    let mut extra = Extra {
        spacing: interval / 4,
        last_round: None,
        round_at: None,
        last_recount: None,
        recount_at: None,
    };
    loop {
        let due = [Some(next), extra.round_at, extra.recount_at]
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
                        }
                        Job::Recount => {
                            let at = extra.when(extra.last_recount, now);
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
        if periodic || asked {
            extra.round_at = None;
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
        // Spaced out by `run`.
        Job::StabilizeNow | Job::Recount => {}
        Job::Poke(p) => {
            if let Err(e) = rpc_peer(n, &p, STABILIZE_NOW, json!({})) {
                log::debug!("asking {} to stabilize: {e}", p.addr);
            }
        }
    }
}

/// One stabilizer round: stabilize, check the predecessor, fix fingers, and
/// at the root count the ring when due.
pub(super) fn round(n: &NodeInner) {
    let actions = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        r.stabilizer.round(&mut r.routing)
    };
    for a in actions {
        execute(n, a);
    }
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

/// At the root: count the ring now if it is time (`periodic`) or a change
/// was reported, but not more often than four times a stabilizer period.
fn walk_if_due(n: &NodeInner, periodic: bool) {
    let spacing = n.transport.cfg.stabilize_interval / 4;
    let due = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        let rested = r.last_walk.is_none_or(|t| t.elapsed() >= spacing);
        let due = r.is_root() && (periodic || (r.recount && rested));
        if due {
            r.recount = false;
            r.last_walk = Some(Instant::now());
        }
        due
    };
    if due {
        walk(n);
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
            let mut s = first;
            for step in 1..=STABILIZE_STEPS {
                let reply = match neighbours_of(n, s.addr) {
                    Ok(reply) => reply,
                    Err(e) => return failed(n, &s, &e),
                };
                let (notify, next) = {
                    let mut g = n.chord.ring.write();
                    let Some(r) = g.as_mut() else { return };
                    let a = on_stabilize_reply(&mut r.routing, &s, reply.pred, reply.successors);
                    (a, r.routing.successor().clone())
                };
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
        Action::Notify { to, me } => {
            if let Err(e) = rpc_peer(n, &to, NOTIFY, notify_data(n, &me)) {
                failed(n, &to, &e);
            }
        }
        Action::CheckPredecessor(p) => {
            if let Err(e) = rpc_peer(n, &p, PING, json!({})) {
                failed(n, &p, &e);
            }
        }
        Action::FixFinger { index, start } => {
            let start_lookup = {
                let g = n.chord.ring.read();
                let Some(r) = g.as_ref() else { return };
                Lookup::new(start, &r.routing)
            };
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
    let root_is_me = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        let me = r.is_root();
        r.recount |= me;
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

/// At the root: walk the ring back along predecessors, count it, and
/// broadcast the size and what changed since the last count.
///
/// Predecessors, not successor lists: a joiner is its successor's
/// predecessor the moment it is linked in, and each node on the way answers
/// for its own predecessor, while successor lists are hearsay that catches up
/// with a join (or a leave) one stabilizer round per hop, with gaps while a
/// burst of joins settles. The price is one request per node, not one per
/// `successor_list_len` nodes, at most once per quarter stabilize interval.
fn walk(n: &NodeInner) {
    let (me, pred, alone) = {
        let g = n.chord.ring.read();
        let Some(r) = g.as_ref() else { return };
        let rt = &r.routing;
        (rt.me().clone(), rt.predecessor().cloned(), rt.is_alone())
    };
    let Some(behind) = walk_back(n, &me, pred, alone) else {
        // A node has just joined or left and the ring is settling: count
        // again soon.
        log::debug!("counting the ring: it is settling; again soon");
        if let Some(r) = n.chord.ring.write().as_mut() {
            r.recount = true;
        }
        n.chord.queue(Job::Recount);
        return;
    };
    let mut members = vec![me.clone()];
    members.extend(behind.into_iter().rev());
    publish(n, &me, members);
}

/// The nodes from `pred` back to (not including) `me`, following
/// predecessors, each asked for its own; `None` if the chain breaks (a node
/// does not answer, or answers for another ID, or has no predecessor) or
/// does not come back to `me` in order.
fn walk_back(n: &NodeInner, me: &RPeer, pred: Option<RPeer>, alone: bool) -> Option<Vec<RPeer>> {
    let Some(mut cursor) = pred else {
        // Alone: nothing behind. Else the predecessor is being replaced.
        return alone.then(Vec::new);
    };
    let mut behind: Vec<RPeer> = Vec::new();
    while behind.len() < MAX_WALK {
        if cursor.id == me.id {
            return Some(behind);
        }
        let d = me.id.distance_to(cursor.id);
        if behind.last().is_some_and(|b| me.id.distance_to(b.id) <= d) {
            return None;
        }
        let reply = match neighbours_of(n, cursor.addr) {
            Ok(reply) if reply.me.id == cursor.id => reply,
            Ok(reply) => {
                log::debug!("counting the ring: {} is now {}", cursor.id, reply.me.id);
                return None;
            }
            Err(e) => {
                log::debug!("counting the ring: {} did not answer: {e}", cursor.id);
                return None;
            }
        };
        behind.push(cursor);
        cursor = reply.pred?;
    }
    None
}

fn publish(n: &NodeInner, me: &RPeer, members: Vec<RPeer>) {
    let now: BTreeMap<NodeId, Ep> = members.iter().map(|p| (p.id, p.addr)).collect();
    let (news, changed) = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        // New IDs, and IDs now held by another key (a freed ID given out again).
        let joined: Vec<RPeer> = members
            .iter()
            .filter(|p| r.members.get(&p.id) != Some(&p.addr))
            .cloned()
            .collect();
        let left: Vec<NodeId> = r
            .members
            .keys()
            .filter(|id| !now.contains_key(id))
            .copied()
            .collect();
        let changed = !joined.is_empty() || !left.is_empty() || r.size != now.len();
        r.epoch += 1;
        r.size = now.len();
        r.members = now;
        let news = SizeNews {
            size: r.size,
            epoch: r.epoch,
            joined,
            left,
        };
        (news, changed || r.epoch % REPEAT_SIZE_EVERY == 1)
    };
    log::debug!(
        "counted {} nodes (epoch {}){}",
        news.size,
        news.epoch,
        if changed { ", broadcasting" } else { "" }
    );
    for p in news.joined.iter().filter(|p| p.id != me.id) {
        n.emit(crate::node::Event::PeerJoined {
            id: p.id,
            addr: p.addr.at,
        });
    }
    for id in news.left.iter().filter(|id| **id != me.id) {
        n.emit(crate::node::Event::PeerLeft { id: *id });
    }
    if changed {
        if let Ok(data) = serde_json::to_value(&news) {
            let sig = sign_broadcast(n, me, SIZE, &data, None);
            spread(n, me, me.id, SIZE, data, None, sig);
        }
    }
}

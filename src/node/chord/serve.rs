//! Answering the ring's own requests. These run on connection threads, so
//! they only take the routing lock briefly and never wait on the network:
//! anything that needs I/O is queued for the stabilizer thread.

use super::*;

/// The ring of this node, created on the spot when another node joins
/// through a node that has not joined anything (the p2py way: the first node
/// of a network just starts, and takes ID 0 when the second one arrives).
fn ensure_ring(n: &NodeInner) -> Result<()> {
    if n.chord.ring.read().is_some() {
        return Ok(());
    }
    if n.chord.left.load(Ordering::Acquire) {
        return Err(Error::NotJoined);
    }
    match create(n) {
        Ok(_) | Err(Error::InvalidArgument(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn with_ring<T>(n: &NodeInner, f: impl FnOnce(&mut Ring) -> Result<T>) -> Result<T> {
    let mut g = n.chord.ring.write();
    let r = g.as_mut().ok_or(Error::NotJoined)?;
    f(r)
}

fn remote(code: &str, message: impl Into<String>) -> Error {
    Error::Remote {
        code: code.into(),
        message: message.into(),
    }
}

fn field<T: serde::de::DeserializeOwned>(frame: &Frame, name: &str) -> Result<T> {
    let v = frame.data.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| remote("bad_request", format!("field {name:?}: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(frame: &Frame) -> Result<T> {
    serde_json::from_value(frame.data.clone())
        .map_err(|e| remote("bad_request", format!("{}: {e}", frame.msg_type)))
}

fn reply_json(v: &impl Serialize) -> Result<Message> {
    Ok(Message::new("p2prs.ok", serde_json::to_value(v)?))
}

/// Handle a frame of one of the ring's reserved types.
pub(crate) fn handle(n: &NodeInner, conn: &Arc<Conn>, frame: Frame) {
    // Frames that make the node do work beyond answering are rate-limited
    // per connection: past the rate, this reader waits (backpressure).
    if matches!(
        frame.msg_type.as_str(),
        STABILIZE_NOW | RECOUNT | BROADCAST | MEMBERS
    ) && !n.throttle(conn)
    {
        return;
    }
    if let Some(id) = frame.data.get("from_id").and_then(Value::as_u64) {
        set_peer_id(n, conn, Some(NodeId(id)));
    }
    let answer = match frame.msg_type.as_str() {
        PING => Ok(Message::new("p2prs.pong", Value::Null)),
        ANNOUNCE => {
            let id = frame.data.get("id").and_then(Value::as_u64).map(NodeId);
            set_peer_id(n, conn, id);
            return;
        }
        NEXT_HOP => next_hop(n, &frame),
        NEIGHBOURS => neighbours(n),
        MEMBERS => members(n),
        NOTIFY => notify(n, conn, &frame),
        CLAIM => claim(n, conn, &frame),
        LEAVING => leaving(n, conn, &frame),
        STABILIZE_NOW => {
            // A node joined right after this one: step at once.
            if frame.data.get("joined").and_then(Value::as_bool) == Some(true) {
                n.chord.queue(Job::StepNow);
            }
            n.chord.queue(Job::StabilizeNow);
            Ok(Message::new("p2prs.ok", Value::Null))
        }
        RECOUNT => {
            let _ = with_ring(n, |r| {
                r.census.ask_recount();
                Ok(())
            });
            n.chord.queue(Job::Recount);
            Ok(Message::new("p2prs.ok", Value::Null))
        }
        BROADCAST => {
            on_broadcast(n, conn, frame);
            return;
        }
        other => Err(remote(
            "no_handler",
            format!("unknown p2prs message type {other:?}"),
        )),
    };
    reply(conn, &frame, answer);
}

/// Whether the peer on `conn` may hold `id`: no other key is bound to it
/// here. A connection's peer ID is only ever one its key may hold.
pub(crate) fn may_hold(n: &NodeInner, conn: &Conn, id: NodeId) -> bool {
    match n.chord.ring.read().as_ref() {
        Some(r) => r.may_hold(id, conn.peer_key()) || n.key().is_none(),
        None => true,
    }
}

/// The ID a new connection's hello claims stands only if the peer's key may
/// hold it here.
pub(crate) fn vet_hello_id(n: &NodeInner, conn: &Conn) {
    if let Some(id) = conn.peer_id() {
        set_peer_id(n, conn, Some(id));
    }
}

/// Record the ID the peer on `conn` says it holds, unless the ring binds
/// that ID to another key.
fn set_peer_id(n: &NodeInner, conn: &Conn, id: Option<NodeId>) {
    match id {
        Some(id) if !may_hold(n, conn, id) => {
            log::warn!(
                "{} claims ID {id}, which is bound to another key; not believed",
                conn.peer_addr()
            );
            conn.set_peer_id(None);
        }
        _ => conn.set_peer_id(id),
    }
}

/// A node speaks only for itself: `p` must carry the key the connection
/// proved, the address it listens on, and an ID no other key holds here.
fn speaks_for_itself(n: &NodeInner, conn: &Conn, p: &RPeer, what: &str) -> Result<()> {
    if n.key().is_none() {
        return Ok(());
    }
    let refuse = |why: String| {
        log::warn!("{}: refused {what}: {why}", conn.peer_addr());
        Err(remote("forbidden", format!("{what} refused: {why}")))
    };
    if p.addr.key.is_none() || p.addr.key != conn.peer_key() {
        return refuse("it names another key than the connection's".into());
    }
    if conn.peer_listen.is_some_and(|l| l != p.addr.at) {
        return refuse(format!(
            "it names the address {}, not the peer's own",
            p.addr.at
        ));
    }
    if !may_hold(n, conn, p.id) {
        return refuse(format!("ID {} is bound to another key", p.id));
    }
    Ok(())
}

fn next_hop(n: &NodeInner, frame: &Frame) -> Result<Message> {
    let target: NodeId = field(frame, "target")?;
    ensure_ring(n)?;
    let reply = {
        let g = n.chord.ring.read();
        let r = g.as_ref().ok_or(Error::NotJoined)?;
        NextHopReply {
            from: r.routing.me().clone(),
            route: r.routing.next_hop(target),
        }
    };
    reply_json(&reply)
}

fn neighbours(n: &NodeInner) -> Result<Message> {
    let now = n.chord.now_ms();
    let reply = {
        let g = n.chord.ring.read();
        let r = g.as_ref().ok_or(Error::NotJoined)?;
        NeighboursReply {
            me: r.routing.me().clone(),
            pred: r.routing.predecessor().cloned(),
            successors: r.routing.successors().to_vec(),
            lost: unsure(&r.lost, &r.reservations, now),
        }
    };
    reply_json(&reply)
}

/// This node's member list, if it is the root's last count (the body
/// holds it: a large ring's list exceeds the header's size limit).
fn members(n: &NodeInner) -> Result<Message> {
    if !n.chord.may_serve_list() {
        return Err(remote(
            "busy",
            "member lists are served at a bounded rate; ask again later",
        ));
    }
    let snapshot = with_ring(n, |r| Ok(r.census.snapshot()))?;
    let Some((epoch, members)) = snapshot else {
        return Err(remote(
            "not_current",
            "this node's member list is behind the root's count",
        ));
    };
    let body = serde_json::to_vec(&MembersReply { epoch, members })?;
    Ok(Message::new("p2prs.ok", Value::Null).with_body(body))
}

fn notify(n: &NodeInner, conn: &Conn, frame: &Frame) -> Result<Message> {
    let candidate: RPeer = field::<msg::WirePeer>(frame, "peer")?.into();
    let grant: Option<Grant> = field(frame, "grant")?;
    speaks_for_itself(n, conn, &candidate, "a notify")?;
    let now = n.chord.now_ms();
    let poke = with_ring(n, |r| {
        // A new predecessor must hold an ID that was given to its key: one
        // this node granted it, one the ring already binds to it, or one a
        // known node's signed grant gave it. Only a node without a
        // predecessor (it just joined, or its predecessor failed) takes a
        // node it cannot check.
        let granted = match (&grant, candidate.addr.key) {
            (Some(g), Some(k)) => r.grant_holds(candidate.id, k, g),
            _ => false,
        };
        let known = r.bound_key(candidate.id).is_some() || granted;
        let is_pred = r
            .routing
            .predecessor()
            .is_some_and(|p| p.id == candidate.id);
        if n.key().is_some() && !known && !is_pred && r.routing.predecessor().is_some() {
            log::warn!(
                "{}: node {} refused a notify for ID {} (its predecessor {:?}): no grant or \
                 membership binds it to that key",
                conn.peer_addr(),
                r.routing.me().id,
                candidate.id,
                r.routing.predecessor().map(|p| p.id)
            );
            return Err(remote(
                "forbidden",
                format!("ID {} was not given to this key", candidate.id),
            ));
        }
        r.lost.found(candidate.id);
        let was_alone = r.routing.is_alone();
        let old = r.routing.predecessor().cloned();
        // A joiner this node gave its ID to (before the notify prunes the
        // grant): at the root, counted at once (`Census::linked`).
        let granted_here = r
            .reservations
            .iter()
            .any(|res| res.id == candidate.id && res.claimant == candidate.addr);
        let changed = r.routing.notify(candidate.clone());
        r.reservations.prune(&r.routing, now);
        r.reservations.release(candidate.id);
        // The newcomer's predecessor is ours from before (or this node, if
        // it was alone: the ring of two is linked both ways now). Telling
        // it in the answer links it in without waiting for any round.
        let me = r.routing.me().clone();
        let its_pred = match &old {
            _ if !changed => None,
            Some(o) if o.id != candidate.id && o.id != me.id => Some(o.clone()),
            None if was_alone => Some(me.clone()),
            _ => None,
        };
        let recount = changed && r.is_root();
        if recount {
            r.census.ask_recount();
            if granted_here {
                r.census.linked(me.id, candidate.clone(), now);
            }
        }
        // Not taken, from before our predecessor: the candidate believes
        // our predecessor gone (its successor list skipped it).
        let check = !changed
            && r.routing
                .predecessor()
                .is_some_and(|p| p.id != candidate.id);
        Ok((its_pred, recount, check))
    })?;
    let (its_pred, recount, check) = poke;
    if check {
        n.chord.queue(Job::CheckPredecessor(candidate));
    }
    // Our old predecessor should now point at the newcomer: tell it to
    // stabilize at once rather than at its next round (before the recount,
    // which walks the ring on the same thread).
    if let Some(old) = its_pred.as_ref().filter(|p| Some(p.id) != my_id(n)) {
        n.chord.queue(Job::Link(old.clone()));
    }
    if recount {
        n.chord.queue(Job::Recount);
    }
    n.chord.bump();
    let its_pred = its_pred.as_ref().map(msg::WirePeer::from);
    Ok(Message::new("p2prs.ok", json!({ "pred": its_pred })))
}

fn claim(n: &NodeInner, conn: &Conn, frame: &Frame) -> Result<Message> {
    let req: ClaimRequest = parse(frame)?;
    // A node that has neither created nor joined a network grants nothing
    // (the implicit creation happens on a joiner's lookup, `next_hop`).
    // The ID is bound to the key the claimant proved, at the address it
    // listens on: a claim never makes this node dial a third party.
    if n.key().is_some() && conn.peer_listen != Some(req.addr) {
        return Err(remote(
            "forbidden",
            format!(
                "a claim for {} must come from the node listening there",
                req.addr
            ),
        ));
    }
    let claimant = Ep {
        at: req.addr,
        key: conn.peer_key(),
    };
    let now = n.chord.now_ms();
    let ttl = (n.transport.cfg.ring_timeout * 4).as_millis() as u64;
    let reply = with_ring(n, |r| {
        if let Some(id) = req.id {
            if !r.may_hold(id, claimant.key) {
                return Err(remote(
                    "id_taken",
                    format!("ID {id} is bound to another key"),
                ));
            }
        }
        // Never the ID of a neighbour dropped lately: it may be alive.
        let lost = r.lost.ids(now);
        let granted = alloc::claim_avoiding(
            &r.routing,
            &mut r.reservations,
            req.id,
            claimant,
            now,
            ttl,
            &lost,
        );
        let id = granted.map_err(|e| match e {
            ClaimError::IdTaken(id) => remote("id_taken", format!("ID {id} is already taken")),
            ClaimError::WrongOwner => remote("wrong_owner", e.to_string()),
            ClaimError::RangeFull => remote("range_full", e.to_string()),
            _ => remote("unsettled", e.to_string()),
        })?;
        if r.is_root() {
            r.census.ask_recount();
        }
        let owner = r.routing.me().clone();
        Ok(ClaimReply {
            id,
            grant: make_grant(n, &owner, id, claimant.key),
            owner,
            successors: r.routing.successors().to_vec(),
            size: r.census.size(),
        })
    })?;
    log::debug!("granted ID {} to {}", reply.id, req.addr);
    reply_json(&reply)
}

fn leaving(n: &NodeInner, conn: &Conn, frame: &Frame) -> Result<Message> {
    let news: Leaving = parse(frame)?;
    speaks_for_itself(n, conn, &news.peer, "a leaving notice")?;
    let poke = with_ring(n, |r| {
        let before: Vec<NodeId> = r.routing.successors().iter().map(|p| p.id).collect();
        r.routing
            .peer_left(news.peer.id, news.pred.clone(), news.successors.clone());
        // The list changed: the predecessor's (ours, shifted) is stale too,
        // and so on back; it stabilizes now (as after a join).
        let after = r.routing.successors().iter().map(|p| p.id);
        Ok((!before.iter().copied().eq(after))
            .then(|| r.routing.predecessor().cloned())
            .flatten())
    })?;
    if let Some(p) = poke.filter(|p| Some(p.id) != my_id(n)) {
        n.chord.queue(Job::Poke(p));
    }
    log::info!(
        "node {} ({}) left the network",
        news.peer.id,
        news.peer.addr
    );
    n.chord.queue(Job::Recount);
    n.chord.bump();
    Ok(Message::new("p2prs.ok", Value::Null))
}

fn on_broadcast(n: &NodeInner, conn: &Arc<Conn>, frame: Frame) {
    let env: Envelope = match serde_json::from_value(frame.data) {
        Ok(e) => e,
        Err(e) => {
            log::warn!("{}: malformed broadcast: {e}", conn.peer_addr());
            return;
        }
    };
    // Size news from a node above the lowest ID known here is checked first
    // (see `vet_root`): the root may have died and the next node taken over.
    let checked = match n.chord.ring.read().as_ref() {
        Some(r) => verify_broadcast(r, &env, frame.body.as_deref()).and_then(|()| {
            let above = env.kind == SIZE && env.origin.id > r.lowest_known();
            // The predecessor and successors are checked every round: one
            // below the origin means the origin is not the root.
            let rt = &r.routing;
            let below = |p: &RPeer| p.id < env.origin.id;
            if above && (rt.predecessor().is_some_and(below) || rt.successors().iter().any(below)) {
                Err(format!(
                    "size news from {}, which is not the root",
                    env.origin.id
                ))
            } else {
                Ok(above)
            }
        }),
        None => Err("this node is not in a ring".into()),
    };
    match checked {
        Err(why) => {
            log::warn!(
                "{}: dropped a broadcast from {}: {why}",
                conn.peer_addr(),
                env.origin.id
            );
            return;
        }
        Ok(true) => {
            n.chord.queue(Job::VetRoot {
                limit: env.limit,
                origin: env.origin,
                data: env.data,
                body: frame.body,
                sig: env.sig,
            });
            return;
        }
        Ok(false) => {}
    }
    if env.kind == SIZE {
        match size_news(&env.data, frame.body.as_deref()) {
            Ok(news) => apply_size(n, env.origin.id, news),
            Err(e) => log::warn!("{}: malformed size news: {e}", conn.peer_addr()),
        }
    } else if env.kind.starts_with(crate::node::RESERVED_PREFIX) {
        log::warn!(
            "{}: broadcast of reserved type {:?}",
            conn.peer_addr(),
            env.kind
        );
        return;
    } else {
        let mut local = Frame::new(Kind::Message, env.kind.clone(), env.data.clone());
        local.body = frame.body.clone();
        let from = PeerInfo {
            addr: env.origin.addr.at,
            id: Some(env.origin.id),
        };
        n.dispatch_user(conn, local, Some(from));
    }
    n.chord.queue(Job::Forward {
        limit: env.limit,
        origin: env.origin,
        kind: env.kind,
        data: env.data,
        body: frame.body,
        sig: env.sig,
    });
}

/// Apply the root `origin`'s size news (unless it is older than news
/// applied already) and tell the user what changed.
pub(super) fn apply_size(n: &NodeInner, origin: NodeId, news: SizeNews) {
    let (me, applied) = {
        let mut g = n.chord.ring.write();
        let Some(r) = g.as_mut() else { return };
        if r.is_root() {
            return;
        }
        let applied = r.census.apply(origin, news.into());
        // A current member list moves the fingers the change touches by
        // itself (`ring::census`); only a node whose list is behind the
        // count needs its lookups every round again.
        if applied
            .as_ref()
            .is_some_and(|a| !a.joined.is_empty() || !a.left.is_empty())
            && !r.census.current()
        {
            r.stabilizer.membership_changed();
        }
        (r.routing.me().id, applied)
    };
    let Some(news) = applied else { return };
    for p in news.joined.into_iter().filter(|p| p.id != me) {
        n.emit(crate::node::Event::PeerJoined {
            id: p.id,
            addr: p.addr.at,
        });
    }
    for id in news.left.into_iter().filter(|id| *id != me) {
        n.emit(crate::node::Event::PeerLeft { id });
    }
}

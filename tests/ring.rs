//! Real Chord rings of threads in one process, over loopback.

mod support;

use p2prs::{Error, Event, Message, Node, NodeId};
use p2prs_rng::Rng;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{echo_requests, node_with, wait_until};

const INTERVAL: Duration = Duration::from_millis(40);
const PATIENCE: Duration = Duration::from_secs(30);

fn ring_node() -> Node {
    let n = node_with(|c| {
        c.stabilize_interval = INTERVAL;
        c.ring_timeout = Duration::from_secs(2);
        c.successor_list_len = 6;
        c.handler_threads = 1;
    });
    echo_requests(&n);
    n
}

/// `n` nodes; node 0 creates the network, each other joins through a random
/// earlier member.
fn spawn_ring(n: usize, rng: &mut Rng) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n).map(|_| ring_node()).collect();
    nodes[0].create_network().expect("create");
    for i in 1..n {
        let via = nodes[rng.below(i)].local_addr();
        nodes[i].join_network(&[via]).expect("join");
    }
    nodes
}

/// [`spawn_ring`], once every node reports the ring's size.
fn settled_ring(n: usize, rng: &mut Rng) -> Vec<Node> {
    let nodes = spawn_ring(n, rng);
    let all: Vec<&Node> = nodes.iter().collect();
    assert!(
        wait_until(PATIENCE, || sizes_are(&all, n)),
        "a new ring of {n} agrees on its size"
    );
    nodes
}

fn sizes_are(nodes: &[&Node], n: usize) -> bool {
    nodes.iter().all(|x| x.network_size() == n)
}

fn all_reach_all(nodes: &[&Node]) -> bool {
    let ids: Vec<NodeId> = nodes.iter().filter_map(|n| n.id()).collect();
    nodes.iter().all(|a| {
        ids.iter()
            .all(|id| a.lookup(*id).map(|r| r.owner.id == *id).unwrap_or(false))
    })
}

#[test]
fn ring_of_32_routes_by_id() {
    let mut rng = Rng::new(32);
    let nodes = spawn_ring(32, &mut rng);
    let ids: BTreeSet<NodeId> = nodes.iter().filter_map(|n| n.id()).collect();
    assert_eq!(ids, (0..32).map(NodeId).collect(), "IDs are 0..32");
    let all: Vec<&Node> = nodes.iter().collect();
    assert!(
        wait_until(PATIENCE, || sizes_are(&all, 32)),
        "sizes: {:?}",
        nodes.iter().map(|n| n.network_size()).collect::<Vec<_>>()
    );

    // 200 random (sender, receiver) pairs, by send_to_id and by request.
    let got: Vec<Arc<AtomicUsize>> = nodes
        .iter()
        .map(|n| {
            let c = Arc::new(AtomicUsize::new(0));
            let c2 = Arc::clone(&c);
            n.add_handler("COUNT", move |_| {
                c2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
            c
        })
        .collect();
    let mut expected = vec![0usize; 32];
    let mut hops = Vec::new();
    for _ in 0..200 {
        let a = rng.below(32);
        let b = rng.below(32);
        let target = nodes[b].id().unwrap();
        nodes[a]
            .send_to_id(target, Message::new("COUNT", a as u64))
            .unwrap();
        expected[b] += 1;
        let resp = nodes[a]
            .request(target, Message::new("ECHO", format!("{a}->{b}")))
            .unwrap();
        assert_eq!(resp.as_text(), Some(format!("{a}->{b}").as_str()));
        hops.push(nodes[a].lookup(target).unwrap().hops);
    }
    assert!(
        wait_until(PATIENCE, || got
            .iter()
            .zip(&expected)
            .all(|(g, e)| g.load(Ordering::SeqCst) == *e)),
        "every send_to_id arrived exactly at its target"
    );
    hops.sort_unstable();
    let mean = hops.iter().sum::<u32>() as f64 / hops.len() as f64;
    println!(
        "32-node ring: lookup hops mean {mean:.2}, p99 {}, max {}",
        hops[hops.len() * 99 / 100],
        hops[hops.len() - 1]
    );
    assert!(
        f64::from(hops[hops.len() - 1]) <= 5.0 + 2.0,
        "hops within log2(N)+2"
    );

    // An ID nobody holds is refused at once.
    match nodes[3].request(NodeId(1000), Message::new("ECHO", 1)) {
        Err(Error::NoSuchNode(NodeId(1000))) => {}
        other => panic!("expected NoSuchNode, got {other:?}"),
    }
}

#[test]
fn ring_heals_after_losing_a_quarter() {
    let mut rng = Rng::new(7);
    let nodes = settled_ring(32, &mut rng);
    let all: Vec<&Node> = nodes.iter().collect();
    assert!(wait_until(PATIENCE, || all_reach_all(&all)));

    // Kill 8 at random (node 0 among the candidates), abruptly: no leave.
    let mut dead = BTreeSet::new();
    while dead.len() < 8 {
        dead.insert(rng.below(32));
    }
    for &i in &dead {
        nodes[i].shutdown();
    }
    let live: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !dead.contains(i))
        .map(|(_, n)| n)
        .collect();
    let t = Instant::now();
    assert!(
        wait_until(PATIENCE, || sizes_are(&live, 24) && all_reach_all(&live)),
        "sizes: {:?}",
        live.iter().map(|n| n.network_size()).collect::<Vec<_>>()
    );
    println!(
        "healed after losing 8 of 32 in {:?} (~{} stabilizer rounds of {:?})",
        t.elapsed(),
        t.elapsed().as_millis() / INTERVAL.as_millis(),
        INTERVAL
    );
    for a in &live {
        for b in &live {
            let id = b.id().unwrap();
            let r = a.request(id, Message::new("ECHO", id.0)).unwrap();
            assert_eq!(r.data::<u64>().unwrap(), id.0);
        }
    }
}

#[test]
fn graceful_leave_links_neighbours_and_frees_the_id() {
    let mut rng = Rng::new(3);
    let nodes = settled_ring(8, &mut rng);
    let events = nodes[0].events();
    let middle = &nodes[4];
    let gone = middle.id().unwrap();
    middle.leave().unwrap();
    assert_eq!(middle.id(), None);
    assert!(!middle.joined());
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id().is_some()).collect();
    assert_eq!(rest.len(), 7);
    assert!(wait_until(PATIENCE, || sizes_are(&rest, 7)));
    // The neighbours point at each other.
    let before = rest
        .iter()
        .find(|n| n.id() == Some(NodeId(gone.0 - 1)))
        .unwrap();
    assert!(
        wait_until(PATIENCE, || before.peer_book().iter().all(|p| p.id != gone)),
        "the left node is out of its predecessor's peer book"
    );
    // No node reaches it by ID any more, stale peer books included (the
    // node that left still runs and answers requests by address). Sizes
    // can be right before every neighbour has forgotten the ID: until
    // then a request says the ring is settling (a retriable error, never
    // an answer from the node that left), then that no node holds it.
    for n in &rest {
        let mut last = None;
        let settled = wait_until(PATIENCE, || {
            match n.request(gone, Message::new("ECHO", 1)) {
                Err(Error::NoSuchNode(id)) => {
                    assert_eq!(id, gone);
                    true
                }
                Err(e) if e.is_retriable() => {
                    last = Some(e.to_string());
                    false
                }
                other => panic!("{:?} reached the node that left: {other:?}", n.id()),
            }
        });
        assert!(
            settled,
            "{:?} never said that no node holds {gone:?}; last: {last:?}",
            n.id()
        );
    }
    assert!(middle
        .request(nodes[0].local_addr(), Message::new("ECHO", 1))
        .is_ok());
    assert!(
        wait_until(PATIENCE, || events
            .try_iter()
            .any(|e| matches!(e, Event::PeerLeft { id } if id == gone))),
        "a PeerLeft event for the node that left"
    );
    // Its ID is free: a new node can claim it.
    let newcomer = Node::builder()
        .id(gone)
        .configure(|c| c.stabilize_interval = INTERVAL)
        .start()
        .unwrap();
    assert_eq!(
        newcomer.join_network(&[nodes[0].local_addr()]).unwrap(),
        gone
    );
    let mut rest = rest;
    rest.push(&newcomer);
    assert!(wait_until(PATIENCE, || sizes_are(&rest, 8)));
}

/// A node that finds another live node on its ID (its successor names
/// that node as predecessor) gives the ID up and joins again: it says
/// `Left`, then `Joined` with a new ID, and the ring takes it in under the
/// new ID, with every node reaching it there.
#[test]
fn a_node_that_yields_its_id_joins_again_under_a_new_one() {
    let mut rng = Rng::new(5);
    let nodes = settled_ring(5, &mut rng);
    let all: Vec<&Node> = nodes.iter().collect();
    let x = &nodes[2];
    let old = x.id().unwrap();
    let events = x.events();
    p2prs::testing::yield_id(x).unwrap();
    let new = x.id().expect("joined again");
    assert_ne!(new, old);
    let seen: Vec<Event> = events.try_iter().collect();
    let left = seen.iter().position(|e| *e == Event::Left);
    let joined = seen.iter().position(|e| *e == Event::Joined { id: new });
    assert!(
        matches!((left, joined), (Some(l), Some(j)) if l < j),
        "Left, then Joined with the new ID: {seen:?}"
    );
    assert!(wait_until(PATIENCE, || sizes_are(&all, 5)));
    for n in &nodes {
        assert!(
            wait_until(PATIENCE, || n
                .request(new, Message::new("ECHO", 7))
                .is_ok_and(|m| m.data::<i64>().ok() == Some(7))),
            "{:?} reaches the node under its new ID {new:?}",
            n.id()
        );
    }
}

#[test]
fn concurrent_joins_get_distinct_ids() {
    let mut rng = Rng::new(11);
    let nodes = spawn_ring(8, &mut rng);
    let joiners: Vec<Node> = (0..8).map(|_| ring_node()).collect();
    let ids: Vec<NodeId> = std::thread::scope(|s| {
        let handles: Vec<_> = joiners
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let via = nodes[i % nodes.len()].local_addr();
                s.spawn(move || j.join_network(&[via]).expect("join"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<NodeId> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 8, "IDs {ids:?}");
    assert_eq!(
        distinct,
        (8..16).map(NodeId).collect(),
        "the next free numbers"
    );
    let all: Vec<&Node> = nodes.iter().chain(&joiners).collect();
    assert!(wait_until(PATIENCE, || sizes_are(&all, 16)));
    assert!(wait_until(PATIENCE, || all_reach_all(&all)));
}

#[test]
fn explicit_ids_and_refusals() {
    let a = Node::builder().id(NodeId(100)).start().unwrap();
    assert_eq!(a.create_network().unwrap(), NodeId(100));
    let b = Node::builder().id(NodeId(5000)).start().unwrap();
    assert_eq!(b.join_network(&[a.local_addr()]).unwrap(), NodeId(5000));
    let c = Node::builder().id(NodeId(5000)).start().unwrap();
    match c.join_network(&[a.local_addr()]) {
        Err(Error::IdTaken(NodeId(5000))) => {}
        other => panic!("expected IdTaken, got {other:?}"),
    }
    assert_eq!(c.id(), None);
    // Joining twice is refused; so is an unreachable address, with the reason.
    assert!(matches!(
        b.join_network(&[a.local_addr()]),
        Err(Error::InvalidArgument(_))
    ));
    let closed = {
        let x = Node::builder().start().unwrap();
        x.local_addr()
    };
    let d = Node::builder().start().unwrap();
    match d.join_network(&[closed]) {
        Err(Error::JoinFailed(why)) => assert!(why.contains(&closed.to_string()), "{why}"),
        other => panic!("expected JoinFailed, got {other:?}"),
    }
    // Not joined: routing by ID says so.
    assert!(matches!(
        d.send_to_id(NodeId(100), Message::text("hi")),
        Err(Error::NotJoined)
    ));
}

#[test]
fn broadcast_reaches_every_node_once() {
    let mut rng = Rng::new(5);
    let nodes = settled_ring(16, &mut rng);
    let all: Vec<&Node> = nodes.iter().collect();
    assert!(wait_until(PATIENCE, || all_reach_all(&all)));
    // Let the finger tables fill: every node's peer book holds its fingers.
    let counts: HashMap<usize, Arc<AtomicUsize>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let c = Arc::new(AtomicUsize::new(0));
            let c2 = Arc::clone(&c);
            n.add_handler("NEWS", move |m| {
                assert_eq!(m.message().as_text(), Some("extra!"));
                c2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
            (i, c)
        })
        .collect();
    nodes[9].broadcast(Message::new("NEWS", "extra!")).unwrap();
    assert!(wait_until(PATIENCE, || counts
        .iter()
        .all(|(i, c)| c.load(Ordering::SeqCst) == usize::from(*i != 9))));
    // Nothing more arrives: wait for a second broadcast, then check the
    // first was delivered once.
    nodes[2].broadcast(Message::new("NEWS", "extra!")).unwrap();
    assert!(wait_until(PATIENCE, || counts.iter().all(|(i, c)| {
        c.load(Ordering::SeqCst) == usize::from(*i != 9) + usize::from(*i != 2)
    })));
}

#[test]
fn every_node_sees_ring_events() {
    let a = ring_node();
    let a_events = a.events();
    let b = ring_node();
    let b_events = b.events();
    assert_eq!(b.join_network(&[a.local_addr()]).unwrap(), NodeId(1));
    let c = ring_node();
    assert_eq!(c.join_network(&[b.local_addr()]).unwrap(), NodeId(2));
    let all = [&a, &b, &c];
    assert!(wait_until(PATIENCE, || sizes_are(&all, 3)));
    let mut seen_by_a = BTreeSet::new();
    let mut a_joined = None;
    assert!(
        wait_until(PATIENCE, || {
            for e in a_events.try_iter() {
                match e {
                    Event::PeerJoined { id, .. } => {
                        seen_by_a.insert(id);
                    }
                    Event::Joined { id } => a_joined = Some(id),
                    _ => {}
                }
            }
            seen_by_a.contains(&NodeId(1)) && seen_by_a.contains(&NodeId(2))
        }),
        "the first node hears of both joiners: {seen_by_a:?}"
    );
    assert_eq!(
        a_joined,
        Some(NodeId(0)),
        "the first node hears it took ID 0"
    );
    assert!(
        wait_until(PATIENCE, || b_events.try_iter().any(
            |e| matches!(e, Event::PeerJoined { id, .. } if id == NodeId(2))
        )),
        "a node that joined earlier hears of a later one"
    );
    c.leave().unwrap();
    assert!(
        wait_until(PATIENCE, || a_events
            .try_iter()
            .any(|e| matches!(e, Event::PeerLeft { id } if id == NodeId(2)))),
        "and of a node that left"
    );
}

#[test]
fn a_node_that_is_shut_down_has_no_id_and_refuses_ring_calls() {
    let a = ring_node();
    let b = ring_node();
    b.join_network(&[a.local_addr()]).unwrap();
    let events = b.events();
    b.shutdown();
    assert_eq!(b.id(), None);
    assert!(!b.joined());
    assert!(matches!(
        b.join_network(&[a.local_addr()]),
        Err(Error::Shutdown)
    ));
    assert!(matches!(b.create_network(), Err(Error::Shutdown)));
    assert!(matches!(b.leave(), Err(Error::Shutdown)));
    assert!(matches!(
        b.add_handler("X", |_| Ok(())),
        Err(Error::Shutdown)
    ));
    // The events iterator ends instead of blocking for ever.
    assert!(events.iter().all(|e| !matches!(e, Event::Message { .. })));
}

/// A join links the joiner in by itself: with stabilizer rounds an hour
/// apart, no periodic round can do it, yet every `join_network` returns with
/// the joiner between its neighbours, and the node before it points at it.
#[test]
fn joins_link_in_without_a_stabilizer_round() {
    let hour = Duration::from_secs(3600);
    let nodes: Vec<Node> = (0..6)
        .map(|_| {
            node_with(|c| {
                c.stabilize_interval = hour;
                c.handler_threads = 1;
            })
        })
        .collect();
    // The first node of a network needs no call: the first joiner makes it
    // the root (ID 0), and is linked to it both ways.
    for i in 1..nodes.len() {
        let id = nodes[i].join_network(&[nodes[0].local_addr()]).unwrap();
        assert_eq!(id, NodeId(i as u64));
        let book = |n: &Node| -> Vec<NodeId> { n.peer_book().iter().map(|p| p.id).collect() };
        let before = NodeId(i as u64 - 1);
        assert!(
            book(&nodes[i]).contains(&before),
            "joiner {i} knows its predecessor: {:?}",
            book(&nodes[i])
        );
        assert!(book(&nodes[0]).contains(&id), "the root knows joiner {i}");
        assert!(
            wait_until(PATIENCE, || book(&nodes[i - 1]).contains(&id)),
            "node {before} points at joiner {i}"
        );
    }
    // No periodic round ran (the period is an hour): only the rounds the
    // joins asked for, and those that carry a change back along the
    // successor lists, at most one per join and neighbour.
    let rounds = nodes[0].stabilizer_rounds();
    assert!(rounds <= 2 * nodes.len() as u64, "{rounds} rounds ran");
    let all: Vec<&Node> = nodes.iter().collect();
    assert!(all_reach_all(&all));
}

/// A program that calls `join_network` as soon as it sees `Left` during a
/// rejoin does not make the node join twice: the rejoin holds the node's
/// membership until it has joined, and the program's join then finds the
/// node in the network (or, if it came first, the rejoin is dropped).
#[test]
fn a_join_on_left_during_a_rejoin_leaves_the_node_one_id() {
    let mut rng = Rng::new(7);
    let nodes = spawn_ring(5, &mut rng);
    let all: Vec<&Node> = nodes.iter().collect();
    let x = &nodes[2];
    let boot = nodes[0].local_addr();
    for round in 0..5 {
        assert!(wait_until(PATIENCE, || sizes_are(&all, 5)));
        let events = x.events();
        let user = std::thread::scope(|s| {
            let h = s.spawn(|| loop {
                match events.recv_timeout(PATIENCE) {
                    Ok(Event::Left) => return x.join_network(&[boot]),
                    Ok(_) => {}
                    Err(e) => panic!("no Left: {e}"),
                }
            });
            p2prs::testing::yield_id(x).unwrap();
            h.join().unwrap()
        });
        let now = x.id();
        let later: Vec<Event> = events.try_iter().collect();
        let joins = later
            .iter()
            .filter(|e| matches!(e, Event::Joined { .. }))
            .count();
        assert_eq!(
            joins, 1,
            "round {round}: the node joined {joins} times (the program's join {user:?}, ID now \
             {now:?}): {later:?}"
        );
        match user {
            Ok(id) => assert_eq!(Some(id), now, "round {round}"),
            Err(Error::InvalidArgument(_)) => assert!(now.is_some(), "round {round}"),
            Err(e) => panic!("round {round}: the program's join failed: {e}"),
        }
    }
    assert!(wait_until(PATIENCE, || sizes_are(&all, 5)));
}

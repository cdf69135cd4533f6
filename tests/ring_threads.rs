//! What keeps a large ring in one process: few threads per node. A ring of
//! 24 nodes, with its intervals scaled down so that it settles in seconds,
//! holds at most a handful of threads per node once settled (only the
//! successor and predecessor links stay open; the handler pool starts with
//! its first job), stays bounded while it answers requests, and closes its
//! ring-only and idle connections again afterwards. One connection serves a
//! pair of nodes both ways.
//!
//! This binary counts the threads of its process (/proc/self/task): it
//! holds these tests alone, and they run one after the other.

mod support;

use p2prs::{Message, Node, NodeId};
use std::time::Duration;
use support::*;

/// Nodes in the ring.
const N: usize = 24;

/// Threads a settled, idle node may hold: its accept and stabilizer
/// threads, and its share of both ends of its connections (successor and
/// predecessor, shared, plus the ring's own traffic in flight).
const IDLE_PER_NODE: usize = 8;

/// Threads a node may hold while the ring answers requests.
const BUSY_PER_NODE: usize = 24;

/// One test at a time: they count the same process's threads.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn ring_node() -> Node {
    let n = node_with(|c| {
        c.stabilize_interval = Duration::from_millis(100);
        c.ring_idle_timeout = Duration::from_millis(600);
        c.idle_timeout = Duration::from_secs(2);
        c.max_finger_period = 8;
        c.handler_threads = 1;
    });
    n.add_handler("ECHO", |r| {
        let m = r.message().clone();
        r.respond(m)?;
        Ok(())
    })
    .unwrap();
    n
}

fn threads_at_most(bound: usize) -> bool {
    thread_count() <= bound
}

#[test]
fn a_settled_ring_holds_few_threads_per_node() {
    let _serial = SERIAL.lock();
    let base = settled_thread_count();
    let nodes: Vec<Node> = (0..N).map(|_| ring_node()).collect();
    nodes[0].create_network().unwrap();
    for i in 1..N {
        nodes[i]
            .join_network(&[nodes[(i * 7) % i].local_addr()])
            .unwrap();
    }
    assert!(
        wait_until(PATIENCE * 3, || nodes.iter().all(|x| x.network_size() == N)),
        "every node sees {N}"
    );
    let idle = base + N * IDLE_PER_NODE;
    assert!(
        wait_until(PATIENCE * 2, || threads_at_most(idle)),
        "settled: {} threads for {N} nodes, more than {IDLE_PER_NODE} a node",
        thread_count() - base
    );

    // Requests by ID between pairs: bounded while busy, every one answered.
    let mut most = 0;
    for i in 0..200 {
        let a = (i * 7) % N;
        let b = (i * 11 + 3) % N;
        let r = nodes[a]
            .request(NodeId(b as u64), Message::new("ECHO", i as u64))
            .unwrap_or_else(|e| panic!("request {i} from {a} to ID {b}: {e}"));
        assert_eq!(r.data::<u64>().unwrap(), i as u64);
        most = most.max(thread_count() - base);
    }
    assert!(
        most <= N * BUSY_PER_NODE,
        "busy: {most} threads for {N} nodes, more than {BUSY_PER_NODE} a node"
    );
    // Ring-only connections close after the ring's idle timeout, user ones
    // after the idle timeout; the pool threads stay.
    assert!(
        wait_until(PATIENCE * 2, || threads_at_most(idle + N)),
        "idle again: {} threads for {N} nodes",
        thread_count() - base
    );
    for x in &nodes {
        x.shutdown();
    }
    assert!(wait_until(PATIENCE, || thread_count() <= base));
}

#[test]
fn one_connection_serves_a_pair_both_ways() {
    let _serial = SERIAL.lock();
    let a = adder();
    let b = adder();
    let r = a.request(b.local_addr(), Message::new("ADD", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 2);
    // b answers a over the connection a opened, rather than dialling back.
    let r = b.request(a.local_addr(), Message::new("ADD", 2)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 3);
    assert_eq!(a.connection_count(), 1);
    assert_eq!(b.connection_count(), 1);
}

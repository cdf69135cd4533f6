//! A node shut down without leaving gives all of its memory back: its
//! state, its transport and its connections, and the connections the other
//! nodes had to it; and the other nodes' tables keep nothing of it. A
//! reference cycle, a map that keeps a dead peer's connection, or a table
//! that grows with every peer that ever came fails this test (checked with
//! weak references and table sizes, not RSS).

mod support;

use p2prs::testing::{table_sizes, Remains};
use p2prs::{Message, Node, NodeId};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{echo_requests, node_with, wait_until};

fn ring_node() -> Node {
    let n = node_with(|c| {
        c.stabilize_interval = Duration::from_millis(100);
        c.ring_timeout = Duration::from_millis(600);
        c.successor_list_len = 4;
        c.handler_threads = 1;
    });
    echo_requests(&n);
    n
}

fn echo(from: &Node, to: NodeId) -> bool {
    from.request(to, Message::new("ECHO", 1)).is_ok()
}

#[test]
fn a_node_shut_down_without_leaving_leaves_nothing_behind() {
    let ring: Vec<Node> = (0..4).map(|_| ring_node()).collect();
    ring[0].create_network().unwrap();
    for n in &ring[1..] {
        n.join_network(&[ring[0].local_addr()]).unwrap();
    }
    for round in 0..5 {
        let x = ring_node();
        let x_id = x
            .join_network(&[ring[round % ring.len()].local_addr()])
            .unwrap();
        let ids: Vec<NodeId> = ring.iter().filter_map(|n| n.id()).collect();
        // Requests both ways, through the ring and over the connections
        // they open, and a pooled handler on each side.
        let reached = wait_until(Duration::from_secs(10), || {
            ids.iter().all(|&id| echo(&x, id)) && ring.iter().all(|n| echo(n, x_id))
        });
        assert!(
            reached,
            "round {round}: the ring and {x_id} reach each other"
        );
        let mine = Remains::of(&x);
        assert!(mine.len() > 2, "round {round}: {x_id} has connections");
        let theirs: Vec<Remains> = ring.iter().map(|n| Remains::conns_to(n, x_id)).collect();
        assert!(theirs.iter().any(|r| !r.is_empty()));
        x.shutdown();
        drop(x);
        let gone = wait_until(Duration::from_secs(10), || {
            mine.left().is_empty() && theirs.iter().all(|r| r.left().is_empty())
        });
        assert!(
            gone,
            "round {round}: still in memory after {x_id} shut down: {:?}; the other nodes' \
             connections to it: {:?}",
            mine.left(),
            theirs.iter().map(Remains::left).collect::<Vec<_>>()
        );
    }
    // The ring still serves every member.
    let ids: Vec<NodeId> = ring.iter().filter_map(|n| n.id()).collect();
    assert!(wait_until(Duration::from_secs(10), || ring
        .iter()
        .all(|n| ids.iter().all(|&id| echo(n, id)))));
    // No table keeps what the five gone nodes left: each is bounded by the
    // connections to the live members.
    let bounded = |t: &BTreeMap<&'static str, usize>| {
        let conns = t["connections"];
        conns <= 2 * (ring.len() - 1)
            && t["handler gates"] <= conns
            && t["memory holders"] <= conns
            && t["connections with handler jobs"] <= conns
            && t["per-IP counts"] <= 1
            && t["inbound handshakes"] <= 1
            && t["threads"] <= conns + 4
            && t["ring pins"] <= 2
            && t["pokes queued"] <= ring.len()
    };
    let settled = wait_until(Duration::from_secs(10), || {
        ring.iter().all(|n| bounded(&table_sizes(n)))
    });
    assert!(
        settled,
        "tables after the churn: {:?}",
        ring.iter().map(table_sizes).collect::<Vec<_>>()
    );
}

//! Build a ring of many nodes in one process and report what it costs:
//! join time, time until every node sees the right size, threads and file
//! descriptors, lookup hops, request latency.
//!
//! ```sh
//! cargo run --release --example scale -- 256
//! cargo run --release --example scale -- 512 2000   # thread budget of 2,000
//! ```
//!
//! A ring too large for the process's thread budget
//! ([`p2prs::max_threads`], default 8,000; the optional second argument sets
//! it) stops growing at about 40 threads a node of the budget (a busy
//! ring's connections, which grow after the joins), or at the first node
//! that cannot start or join, and the example goes on with the smaller ring;
//! requests refused at the budget are counted as failed.

use p2prs::{Error, Message, Node, NodeId};
use std::time::{Duration, Instant};

/// Threads a node of a busy ring takes in this one process: three of its
/// own, and both ends of its pinned and temporary connections (see
/// `docs/performance.md`: 9,500 threads for 256 nodes after the requests).
const THREADS_PER_NODE: usize = 40;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn resources() -> String {
    format!(
        "threads {}, open files {}",
        count("/proc/self/task"),
        count("/proc/self/fd")
    )
}

fn main() -> Result<(), p2prs::Error> {
    let wanted: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    if let Some(budget) = std::env::args().nth(2).and_then(|s| s.parse().ok()) {
        p2prs::set_max_threads(budget);
    }
    let t = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(wanted);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    // Start and join one node at a time, so that a ring too large for the
    // thread budget stops at the first node that cannot start or join.
    for i in 0..wanted {
        // A settled ring takes about THREADS_PER_NODE threads a node (its
        // connections grow after the joins): grow no further than the
        // budget allows.
        if i > 0 && (i + 1) * THREADS_PER_NODE > p2prs::max_threads() {
            println!(
                "stopping at {i} nodes: at about {THREADS_PER_NODE} threads a node, \
                 a larger ring would not fit the budget of {} threads",
                p2prs::max_threads()
            );
            break;
        }
        let started = Node::builder()
            .configure(|c| {
                c.stabilize_interval = Duration::from_millis(250);
                c.handler_threads = 1;
            })
            .start();
        let node = match started {
            Ok(node) => node,
            Err(e @ Error::ResourceExhausted { .. }) if i > 0 => {
                println!("node {i} could not start ({e}); the ring stays at {i} nodes");
                break;
            }
            Err(e) => return Err(e),
        };
        node.add_handler("ECHO", |r| {
            let m = r.message().clone();
            r.respond(m)?;
            Ok(())
        })?;
        if i == 0 {
            node.create_network()?;
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let via = nodes[(seed % i as u64) as usize].local_addr();
            if let Err(e) = node.join_network(&[via]) {
                // Out of threads (or anything else): go on with the ring so far.
                println!("node {i} could not join ({e}); the ring stays at {i} nodes");
                break;
            }
        }
        nodes.push(node);
    }
    let n = nodes.len();
    if n < wanted {
        println!(
            "a ring of {n} instead of {wanted} nodes; {} (budget {})",
            resources(),
            p2prs::max_threads()
        );
    }
    println!("{n} nodes joined in {:.2?}; {}", t.elapsed(), resources());

    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    while !nodes.iter().all(|x| x.network_size() == n) {
        if Instant::now() > deadline {
            let bad = nodes.iter().filter(|x| x.network_size() != n).count();
            println!("after 120 s, {bad} nodes still see the wrong size");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "every node sees {n} after {:.2?}; {}",
        t.elapsed(),
        resources()
    );

    let mut hops = Vec::new();
    let mut wrong = 0;
    let t = Instant::now();
    for i in 0..1000 {
        let a = (i * 7919) % n;
        let b = (i * 104_729 + 3) % n;
        match nodes[a].lookup(NodeId(b as u64)) {
            Ok(r) if r.owner.id == NodeId(b as u64) => hops.push(r.hops),
            _ => wrong += 1,
        }
    }
    hops.sort_unstable();
    let mean = hops.iter().sum::<u32>() as f64 / hops.len().max(1) as f64;
    println!(
        "1000 lookups in {:.2?}: hops mean {mean:.2}, p99 {}, max {}, failed {wrong}",
        t.elapsed(),
        hops.get(hops.len() * 99 / 100).copied().unwrap_or(0),
        hops.last().copied().unwrap_or(0)
    );

    let mut lat = Vec::new();
    let mut failed = Vec::new();
    for i in 0..1000 {
        let a = (i * 31) % n;
        let b = (i * 17 + 5) % n;
        let t = Instant::now();
        match nodes[a].request(NodeId(b as u64), Message::new("ECHO", i as u64)) {
            Ok(_) => lat.push(t.elapsed()),
            // At the thread budget, say: counted, and the first one shown.
            Err(e) => failed.push(e),
        }
    }
    lat.sort_unstable();
    let at = |q: usize| lat.get(lat.len() * q / 100).copied().unwrap_or_default();
    println!(
        "1000 requests by ID: median {:.2?}, p99 {:.2?}, failed {}; {}",
        at(50),
        at(99),
        failed.len(),
        resources()
    );
    if let Some(e) = failed.first() {
        println!("first failure: {e}");
    }
    let t = Instant::now();
    for x in &nodes {
        x.shutdown();
    }
    println!("shut down in {:.2?}; {}", t.elapsed(), resources());
    Ok(())
}

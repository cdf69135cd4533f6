//! Build a ring of many nodes in one process and report what it costs:
//! join time, time until every node sees the right size, threads and file
//! descriptors, lookup hops, request latency.
//!
//! ```sh
//! cargo run --release --example scale -- 256
//! ```

use p2prs::{Message, Node, NodeId};
use std::time::{Duration, Instant};

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
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let t = Instant::now();
    let nodes: Vec<Node> = (0..n)
        .map(|_| {
            Node::builder()
                .configure(|c| {
                    c.stabilize_interval = Duration::from_millis(250);
                    c.handler_threads = 1;
                })
                .start()
        })
        .collect::<Result<_, _>>()?;
    for x in &nodes {
        x.add_handler("ECHO", |r| {
            let m = r.message().clone();
            r.respond(m)?;
            Ok(())
        })?;
    }
    nodes[0].create_network()?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 1..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let via = nodes[(seed % i as u64) as usize].local_addr();
        nodes[i].join_network(&[via])?;
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
    for i in 0..1000 {
        let a = (i * 31) % n;
        let b = (i * 17 + 5) % n;
        let t = Instant::now();
        nodes[a].request(NodeId(b as u64), Message::new("ECHO", i as u64))?;
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    println!(
        "1000 requests by ID: median {:.2?}, p99 {:.2?}; {}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        resources()
    );
    let t = Instant::now();
    for x in &nodes {
        x.shutdown();
    }
    println!("shut down in {:.2?}; {}", t.elapsed(), resources());
    Ok(())
}

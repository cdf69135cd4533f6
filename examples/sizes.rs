//! How soon every node of a ring reports the right `network_size()` after
//! joins and leaves, and which nodes are late.
//!
//! ```sh
//! cargo run --release --example sizes -- 64            # AES-GCM, default config
//! cargo run --release --example sizes -- 64 --plain    # plaintext
//! cargo run --release --example sizes -- 64 --runs 3
//! ```
//!
//! Builds a ring of `N` nodes (default 64) in one process by sequential
//! joins through the first node, as `BENCH_ONLY=ring cargo bench` does, and
//! samples every node's size each millisecond: it prints when each node's
//! size last changed to the right one (and what it reported before), the
//! share of nodes right over time, and the same after one node leaves and
//! after one is shut down without leaving.

use p2prs::Node;
use std::time::{Duration, Instant};

/// Most nodes this example starts.
const MAX_NODES: usize = 256;

fn build(plain: bool) -> Node {
    let b = Node::builder();
    let b = if plain { b.insecure_plaintext() } else { b };
    b.start().expect("start a node")
}

/// Sample the sizes until all are `want` (or `limit` passes); print when
/// each became right. Returns the time until all were right.
fn watch(nodes: &[Node], want: usize, since: Instant, limit: Duration, what: &str) -> Option<f64> {
    let n = nodes.len();
    // For each node: when its size last became `want`, and the sizes seen.
    let mut right_at: Vec<Option<Duration>> = vec![None; n];
    let mut seen: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut timeline: Vec<(Duration, usize)> = Vec::new();
    let deadline = since + limit;
    let all = loop {
        let t = since.elapsed();
        let mut ok = 0;
        for (i, x) in nodes.iter().enumerate() {
            let s = x.network_size();
            if seen[i].last() != Some(&s) {
                seen[i].push(s);
            }
            if s == want {
                ok += 1;
                if right_at[i].is_none() {
                    right_at[i] = Some(t);
                }
            } else {
                right_at[i] = None;
            }
        }
        if timeline.last().map(|x| x.1) != Some(ok) {
            timeline.push((t, ok));
        }
        if ok == n {
            break Some(t);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match all {
        Some(t) => println!("{what}: every node reports {want} after {:.1} ms", ms(t)),
        None => println!("{what}: NOT every node reports {want} within {limit:?}"),
    }
    let tl: Vec<String> = timeline
        .iter()
        .map(|(t, k)| format!("{:.0}ms:{k}", ms(*t)))
        .collect();
    println!("  right over time: {}", tl.join(" "));
    let mut late: Vec<(usize, Option<Duration>)> = right_at.iter().copied().enumerate().collect();
    late.sort_by_key(|(_, t)| std::cmp::Reverse(t.unwrap_or(Duration::MAX)));
    for (i, t) in late.iter().take(8) {
        let id = nodes[*i].id().map_or(-1, |x| x.0 as i64);
        println!(
            "  node #{i} (ID {id}): right at {} ms; sizes seen {:?}",
            t.map_or("never".into(), |t| format!("{:.1}", ms(t))),
            seen[*i]
        );
    }
    all.map(ms)
}

fn run(n: usize, plain: bool) -> (Option<f64>, Option<f64>, Option<f64>) {
    let mut nodes = vec![build(plain)];
    let started = Instant::now();
    for _ in 1..n {
        let x = build(plain);
        x.join_network(&[nodes[0].local_addr()]).expect("join");
        nodes.push(x);
    }
    let joined = Instant::now();
    println!(
        "{n} nodes joined in {:.1} ms",
        (joined - started).as_secs_f64() * 1e3
    );
    let j = watch(
        &nodes,
        n,
        joined,
        Duration::from_secs(30),
        "after the joins",
    );
    std::thread::sleep(Duration::from_millis(1500));
    // One node leaves (not the root, not the first joiner).
    let gone = nodes.remove(n / 2);
    let t = Instant::now();
    gone.leave().expect("leave");
    gone.shutdown();
    let l = watch(&nodes, n - 1, t, Duration::from_secs(30), "after a leave");
    std::thread::sleep(Duration::from_millis(1500));
    // One node is shut down without leaving.
    let gone = nodes.remove(n / 3);
    let t = Instant::now();
    gone.shutdown();
    let k = watch(
        &nodes,
        n - 2,
        t,
        Duration::from_secs(30),
        "after a node died",
    );
    for x in nodes {
        x.shutdown();
    }
    (j, l, k)
}

fn main() {
    env_logger::Builder::from_default_env()
        .format_timestamp_millis()
        .init();
    let mut n = 64;
    let mut plain = false;
    let mut runs = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--plain" => plain = true,
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(1),
            v => n = v.parse().expect("a node count"),
        }
    }
    let n = n.clamp(2, MAX_NODES);
    let mut all = Vec::new();
    for r in 0..runs {
        println!(
            "## run {} of {runs}: {n} nodes, {}",
            r + 1,
            if plain { "plaintext" } else { "AES-GCM" }
        );
        all.push(run(n, plain));
    }
    let f = |x: Option<f64>| x.map_or("never".into(), |v| format!("{v:.0}"));
    for (j, l, k) in all {
        println!("summary ms: joins {} leave {} death {}", f(j), f(l), f(k));
    }
}

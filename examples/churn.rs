//! Churn soak and mass failure of a ring in one process, over loopback, with
//! default settings, and what holds: request outcomes by kind, wrong answers,
//! joins, time to exact sizes, threads, open files and RSS over time.
//!
//! ```sh
//! cargo run --release --example churn               # 64 nodes, 300 s of churn
//! cargo run --release --example churn -- 90         # 90 s
//! cargo run --release --example churn -- 90 32      # 32 nodes
//! cargo run --release --example churn -- mass       # 25%, 50%, 50% with the root
//! ```
//!
//! Churn: every second one random node is shut down without leaving (its
//! sockets close, no `leave`), the root (the lowest ID) at a third of the
//! run, and a
//! new node joins through a random live member; a client requests random
//! live IDs from random live nodes throughout. A *wrong answer* is
//! `NoSuchNode` for an ID whose node stayed alive during the request; every
//! other error is counted by kind (all of them are retriable, see
//! `Error::is_retriable`). When the churn stops, the time until every node
//! reports the exact size is measured.
//!
//! The RSS it prints includes glibc's per-thread caches of freed memory,
//! which with thousands of connection threads are tens of MB and creep;
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0` turns them off (see
//! "Where the memory goes under churn" in `docs/performance.md`).

use p2prs::{Error, Message, Node, NodeId};
use p2prs_rng::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn resources() -> String {
    format!(
        "threads {}, open files {}, RSS {:.1} MB",
        count("/proc/self/task"),
        count("/proc/self/fd"),
        rss_mb()
    )
}

fn ring_node() -> Result<Node, Error> {
    let n = Node::builder().host("127.0.0.1").port(0).start()?;
    n.add_handler("ECHO", |req| {
        let m = req.message().clone();
        req.respond(m)?;
        Ok(())
    })?;
    Ok(n)
}

fn kind(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => format!("Io({:?})", source.kind()),
        Error::Remote { code, .. } => format!("Remote({code})"),
        Error::Timeout { kind, .. } => format!("Timeout({kind:?})"),
        other => format!("{other:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("?")
            .to_string(),
    }
}

/// The live nodes; `kills` moves whenever one is shut down.
struct Live {
    nodes: parking_lot::Mutex<Vec<Arc<Node>>>,
    kills: AtomicUsize,
}

impl Live {
    fn pick(&self, rng: &mut Rng) -> Option<Arc<Node>> {
        let g = self.nodes.lock();
        (!g.is_empty()).then(|| Arc::clone(&g[rng.below(g.len())]))
    }
    fn len(&self) -> usize {
        self.nodes.lock().len()
    }
    fn exact(&self) -> usize {
        let g = self.nodes.lock();
        g.iter().filter(|n| n.network_size() == g.len()).count()
    }
    /// Shut a node down without leaving.
    fn kill(&self, i: usize) -> Option<NodeId> {
        let victim = {
            let mut g = self.nodes.lock();
            (i < g.len()).then(|| g.remove(i))?
        };
        self.kills.fetch_add(1, Ordering::AcqRel);
        let id = victim.id();
        victim.shutdown();
        id
    }
    /// The root: the node with the lowest ID (ID 0, unless it died before).
    fn root_index(&self) -> Option<usize> {
        let g = self.nodes.lock();
        (0..g.len())
            .filter(|&i| g[i].id().is_some())
            .min_by_key(|&i| g[i].id())
    }
}

#[derive(Default)]
struct Tally {
    attempted: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    wrong: Vec<String>,
    latencies_us: Vec<u64>,
}

fn build(n: usize, rng: &mut Rng) -> Result<Arc<Live>, Error> {
    let t = Instant::now();
    let mut nodes: Vec<Arc<Node>> = Vec::with_capacity(n);
    for i in 0..n {
        let node = ring_node()?;
        if i == 0 {
            node.create_network()?;
        } else {
            node.join_network(&[nodes[rng.below(i)].local_addr()])?;
        }
        nodes.push(Arc::new(node));
    }
    let live = Arc::new(Live {
        nodes: parking_lot::Mutex::new(nodes),
        kills: AtomicUsize::new(0),
    });
    let ok = wait(Duration::from_secs(60), || live.exact() == n);
    println!(
        "{n} nodes joined in {:.2} s, sizes exact: {ok}, after {:.2} s; {}",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64(),
        resources()
    );
    Ok(live)
}

/// Poll `cond` every 10 ms for at most `limit`; whether it held.
fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn client(live: Arc<Live>, done: Arc<AtomicBool>) -> Tally {
    let mut rng = Rng::new(p2prs_rng::clock_seed());
    let mut t = Tally::default();
    while !done.load(Ordering::Acquire) {
        let (Some(from), Some(to)) = (live.pick(&mut rng), live.pick(&mut rng)) else {
            continue;
        };
        let Some(id) = to.id() else { continue };
        let before = live.kills.load(Ordering::Acquire);
        let start = Instant::now();
        let got = from.request(id, Message::new("ECHO", 1));
        t.attempted += 1;
        t.latencies_us.push(start.elapsed().as_micros() as u64);
        let steady = live.kills.load(Ordering::Acquire) == before
            || (!to.is_shut_down() && !from.is_shut_down());
        match got {
            Ok(_) => t.ok += 1,
            Err(e) => {
                if steady && !e.is_retriable() {
                    t.wrong.push(format!("{id}: {e}"));
                }
                *t.errors.entry(kind(&e)).or_default() += 1;
            }
        }
    }
    t
}

fn percentile(sorted: &[u64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)] as f64 / 1000.0
}

fn soak(seconds: u64, n: usize) -> Result<(), Error> {
    println!("churn soak: {n} nodes, {seconds} s, one node killed and one joined a second");
    let mut rng = Rng::new(p2prs_rng::clock_seed());
    let live = build(n, &mut rng)?;
    let done = Arc::new(AtomicBool::new(false));
    let c = {
        let (live, done) = (Arc::clone(&live), Arc::clone(&done));
        std::thread::Builder::new()
            .name("churn-client".into())
            .spawn(move || client(live, done))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?
    };
    let start = Instant::now();
    let mut joins = 0;
    let mut join_failures: Vec<String> = Vec::new();
    let mut root_takeover = None;
    let mut exact_samples = (0usize, 0usize);
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick += 1;
        let root_now = tick == (seconds / 3).max(1);
        let victim = if root_now {
            live.root_index()
        } else {
            Some(rng.below(live.len()))
        };
        let killed = victim.and_then(|i| live.kill(i));
        let joiner = Arc::new(ring_node()?);
        let t = Instant::now();
        let via = live.pick(&mut rng).map(|x| x.local_addr());
        joins += 1;
        match via.map(|a| joiner.join_network(&[a])) {
            Some(Ok(_)) => {
                if root_now {
                    root_takeover = Some((killed, t.elapsed()));
                }
                live.nodes.lock().push(joiner);
            }
            Some(Err(e)) => {
                join_failures.push(format!("{:.0} s: {e}", start.elapsed().as_secs_f64()))
            }
            None => join_failures.push("no live member".into()),
        }
        exact_samples.0 += live.exact();
        exact_samples.1 += live.len();
        if tick % 10 == 0 {
            println!(
                "{:>4} s: {} live, {} with the exact size; {}",
                start.elapsed().as_secs(),
                live.len(),
                live.exact(),
                resources()
            );
        }
        let next = start + Duration::from_secs(tick);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let stopped = Instant::now();
    let exact = wait(Duration::from_secs(30), || live.exact() == live.len());
    let to_exact = stopped.elapsed();
    done.store(true, Ordering::Release);
    let mut t = c.join().unwrap_or_default();
    t.latencies_us.sort_unstable();
    println!("--- churn soak, {n} nodes, {seconds} s ---");
    println!(
        "requests: {} attempted, {} succeeded ({:.3}%); latency median {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        t.attempted,
        t.ok,
        100.0 * t.ok as f64 / t.attempted.max(1) as f64,
        percentile(&t.latencies_us, 50),
        percentile(&t.latencies_us, 99),
        t.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!("errors by kind: {:?}", t.errors);
    println!(
        "wrong answers (NoSuchNode or a non-retriable error for a live ID): {} {:?}",
        t.wrong.len(),
        t.wrong.iter().take(5).collect::<Vec<_>>()
    );
    println!(
        "joins: {joins}, failed {}: {:?}",
        join_failures.len(),
        join_failures.iter().take(5).collect::<Vec<_>>()
    );
    if let Some((id, took)) = root_takeover {
        println!(
            "root {id:?} killed; the join right after it took {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
    }
    println!(
        "during churn: {:.1}% of node samples had the exact size",
        100.0 * exact_samples.0 as f64 / exact_samples.1.max(1) as f64
    );
    println!(
        "after churn stopped: every node exact: {exact}, after {:.0} ms; {}",
        to_exact.as_secs_f64() * 1000.0,
        resources()
    );
    let all: Vec<Arc<Node>> = live.nodes.lock().drain(..).collect();
    for x in all {
        x.shutdown();
    }
    Ok(())
}

/// Every live node reaches every live ID (all pairs).
fn all_reach_all(live: &Live) -> bool {
    let nodes: Vec<Arc<Node>> = live.nodes.lock().clone();
    let ids: Vec<NodeId> = nodes.iter().filter_map(|n| n.id()).collect();
    nodes.iter().all(|a| {
        ids.iter()
            .all(|id| a.request(*id, Message::new("ECHO", 1)).is_ok())
    })
}

fn mass(n: usize) -> Result<(), Error> {
    for (pct, with_root) in [(25, false), (50, false), (50, true)] {
        let mut rng = Rng::new(p2prs_rng::clock_seed());
        let live = build(n, &mut rng)?;
        let k = n * pct / 100;
        let mut killed = 0;
        if with_root {
            if let Some(i) = live.root_index() {
                live.kill(i);
                killed += 1;
            }
        }
        while killed < k {
            let i = rng.below(live.len());
            if Some(i) == live.root_index() {
                continue;
            }
            live.kill(i);
            killed += 1;
        }
        let t = Instant::now();
        let reach = wait(Duration::from_secs(60), || all_reach_all(&live));
        let reach_t = t.elapsed();
        let exact = wait(Duration::from_secs(60), || live.exact() == live.len());
        let exact_t = t.elapsed();
        let joiner = ring_node()?;
        let via = live.pick(&mut rng).map(|x| x.local_addr());
        let joined = via.map(|a| joiner.join_network(&[a]));
        println!(
            "mass failure of {pct}%{} of {n}: every live ID reachable from every live node: {reach} \
             after {:.2} s; sizes exact: {exact} after {:.2} s; a join then: {:?}",
            if with_root { " with the root" } else { "" },
            reach_t.as_secs_f64(),
            exact_t.as_secs_f64(),
            joined.map(|r| r.map(|id| id.0))
        );
        joiner.shutdown();
        let all: Vec<Arc<Node>> = live.nodes.lock().drain(..).collect();
        for x in all {
            x.shutdown();
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("mass") {
        let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
        mass(n)
    } else {
        let seconds = args.first().and_then(|s| s.parse().ok()).unwrap_or(300);
        let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
        soak(seconds, n)
    };
    if let Err(e) = outcome {
        eprintln!("churn: {e}");
        std::process::exit(1);
    }
}

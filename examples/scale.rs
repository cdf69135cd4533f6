//! Build a ring of many nodes, in one process or across several, and report
//! what it costs: join time, time until every node sees the right size,
//! threads, file descriptors and memory per node (settled, idle, and after
//! requests), lookup hops, and requests by ID between random pairs with
//! their failures by kind.
//!
//! ```sh
//! cargo run --release --example scale -- 256
//! cargo run --release --example scale -- 512 2000        # thread budget of 2,000
//! cargo run --release --example scale -- 1024 --procs 8 # 8 processes × 128 nodes
//! cargo run --release --example scale -- 1024 --idle 20 --pairs 2000
//! ```
//!
//! Options: `--procs P` splits the ring over `P` processes of this same
//! example (the first creates the ring, the others join through its first
//! node; the figures are summed); `--idle S` waits `S` seconds (default 10)
//! after the sizes are right before the idle figures are taken (and the CPU
//! of a second such wait after them); `--pairs K`
//! requests (default 2,000) by ID between random pairs of nodes;
//! `--interval MS` sets the stabilizer interval (default 250 ms up to 256
//! nodes, else the default 1 s).
//!
//! A ring too large for the process's thread budget
//! ([`p2prs::max_threads`]; the optional second argument sets it, else it is
//! raised to fit the ring, up to 15,000, below the ~16,300 threads a process
//! can map) stops growing at about [`THREADS_PER_NODE`] threads a node of
//! the budget, or at the first node that cannot start or join, and the
//! example goes on with the smaller ring; requests refused at the budget are
//! counted as failed, by kind. No more than [`MAX_NODES`] nodes are started
//! in all.

use p2prs::{Error, Message, Node, NodeId};
use p2prs_rng::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Threads a node of a busy ring takes at most in this one process: its own
/// (accept, stabilizer, handler pool) and both ends of its connections
/// (see `docs/performance.md`).
const THREADS_PER_NODE: usize = 14;

/// The most nodes this example starts, in all processes together.
const MAX_NODES: usize = 1024;

/// The highest thread budget the example sets on its own: below the
/// ~16,300 threads one process can map (`vm.max_map_count`).
const MAX_BUDGET: usize = 15_000;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Threads, open descriptors and resident KiB of this process.
#[derive(Clone, Copy, Default)]
struct Res {
    threads: usize,
    fds: usize,
    rss_kib: usize,
}

impl Res {
    fn now() -> Res {
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        Res {
            threads: count("/proc/self/task"),
            fds: count("/proc/self/fd"),
            rss_kib,
        }
    }

    fn add(self, o: Res) -> Res {
        Res {
            threads: self.threads + o.threads,
            fds: self.fds + o.fds,
            rss_kib: self.rss_kib + o.rss_kib,
        }
    }

    fn line(&self) -> String {
        format!("{} {} {}", self.threads, self.fds, self.rss_kib)
    }

    fn parse(s: &str) -> Option<Res> {
        let mut it = s.split_whitespace().map(|x| x.parse::<usize>().ok());
        Some(Res {
            threads: it.next()??,
            fds: it.next()??,
            rss_kib: it.next()??,
        })
    }

    fn per_node(&self, n: usize) -> String {
        let n = n.max(1) as f64;
        format!(
            "threads {} ({:.1}/node), fds {} ({:.1}/node), RSS {:.1} MiB ({:.2} MiB/node)",
            self.threads,
            self.threads as f64 / n,
            self.fds,
            self.fds as f64 / n,
            self.rss_kib as f64 / 1024.0,
            self.rss_kib as f64 / 1024.0 / n
        )
    }
}

/// CPU seconds this process has used (user and system).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, in ticks of 1/100 s.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// This process's threads by name, without the port: `p2prs-conn` 3000, ...
fn thread_names() -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    if let Ok(d) = std::fs::read_dir("/proc/self/task") {
        for t in d.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let kind: String = name
                .trim()
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                .to_string();
            *by.entry(kind).or_insert(0) += 1;
        }
    }
    let v: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
    v.join(", ")
}

/// Connections per node (each end counted at its node): median and most.
fn conns(nodes: &[Node]) -> String {
    let mut c: Vec<usize> = nodes.iter().map(|x| x.connection_count()).collect();
    c.sort_unstable();
    format!(
        "connections per node: median {}, max {} (node {})",
        c.get(c.len() / 2).copied().unwrap_or(0),
        c.last().copied().unwrap_or(0),
        nodes
            .iter()
            .position(|x| Some(&x.connection_count()) == c.last())
            .unwrap_or(0)
    )
}

/// The error's kind: its variant's name.
fn kind(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_string()
}

struct Opts {
    nodes: usize,
    budget: Option<usize>,
    procs: usize,
    idle: u64,
    pairs: usize,
    /// In a child process: its index, and the root's address (not for 0).
    child: Option<(usize, Option<String>)>,
    total: usize,
    /// The stabilizer interval, ms (0: 250 ms up to 256 nodes in all, else 1 s).
    interval_ms: usize,
}

impl Opts {
    fn interval(&self) -> Duration {
        match self.interval_ms {
            0 if self.total <= 256 => Duration::from_millis(250),
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(ms as u64),
        }
    }
}

fn opts() -> Opts {
    let mut o = Opts {
        nodes: 256,
        budget: None,
        procs: 1,
        idle: 10,
        pairs: 2000,
        child: None,
        total: 0,
        interval_ms: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = 0;
    let mut i = 0;
    let num = |s: Option<&String>| s.and_then(|s| s.parse::<usize>().ok());
    while i < args.len() {
        match args[i].as_str() {
            "--procs" => o.procs = num(args.get(i + 1)).unwrap_or(1).max(1),
            "--idle" => o.idle = num(args.get(i + 1)).unwrap_or(10) as u64,
            "--pairs" => o.pairs = num(args.get(i + 1)).unwrap_or(2000),
            "--child" => o.child = Some((num(args.get(i + 1)).unwrap_or(0), None)),
            "--join" => {
                if let Some((_, j)) = o.child.as_mut() {
                    *j = args.get(i + 1).cloned();
                }
            }
            "--interval" => o.interval_ms = num(args.get(i + 1)).unwrap_or(0),
            "--total" => o.total = num(args.get(i + 1)).unwrap_or(0),
            a => {
                match (positional, a.parse::<usize>()) {
                    (0, Ok(n)) => o.nodes = n,
                    (1, Ok(b)) => o.budget = Some(b),
                    _ => eprintln!("ignoring argument {a:?}"),
                }
                positional += 1;
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    if o.nodes > MAX_NODES {
        println!("at most {MAX_NODES} nodes: starting {MAX_NODES}");
        o.nodes = MAX_NODES;
    }
    if o.total == 0 {
        o.total = o.nodes;
    }
    o
}

fn main() -> Result<(), Error> {
    // `RUST_LOG=p2prs=info` (or debug) shows what the nodes do.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let o = opts();
    match (&o.child, o.procs) {
        (Some(_), _) => child(&o),
        (None, 1) => single(&o),
        (None, _) => parent(&o),
    }
}

/// Start `count` nodes, the first creating the ring (`via` none) or joining
/// through `via`, the others through a random node before them. Stops early
/// (with a message) at the thread budget or at a node that cannot join.
fn grow(
    count: usize,
    via: Option<std::net::SocketAddr>,
    interval: Duration,
    rng: &mut Rng,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::with_capacity(count);
    let t = Instant::now();
    let mut dials = p2prs::testing::dials();
    let mut last = Duration::ZERO;
    for i in 0..count {
        if i > 0 && i % 128 == 0 {
            let (line, now) = dials_since(&dials);
            dials = now;
            let at = t.elapsed();
            println!("  {i} joined at {at:.2?} (+{:.2?}): {line}", at - last);
            last = at;
        }
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
                c.stabilize_interval = interval;
                c.handler_threads = 1;
            })
            .start();
        let node = match started {
            Ok(node) => node,
            Err(e) => {
                println!("node {i} could not start ({e}); the ring stays at {i} nodes");
                break;
            }
        };
        let echo = node.add_handler("ECHO", |r| {
            let m = r.message().clone();
            r.respond(m)?;
            Ok(())
        });
        let joined = echo.and_then(|()| match (i, via) {
            (0, None) => node.create_network().map(|_| ()),
            (0, Some(v)) => node.join_network(&[v]).map(|_| ()),
            _ => {
                let v = nodes[rng.below(i)].local_addr();
                node.join_network(&[v]).map(|_| ())
            }
        });
        if let Err(e) = joined {
            println!("node {i} could not join ({e}); the ring stays at {i} nodes");
            break;
        }
        nodes.push(node);
    }
    nodes
}

/// Wait until every node sees `n`; the time it took, or `None` after 180 s.
fn sizes_right(nodes: &[Node], n: usize) -> Option<Duration> {
    let t = Instant::now();
    while !nodes.iter().all(|x| x.network_size() == n) {
        if t.elapsed() > Duration::from_secs(180) {
            let bad = nodes.iter().filter(|x| x.network_size() != n).count();
            println!("after 180 s, {bad} nodes still see another size than {n}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(t.elapsed())
}

/// `pairs` requests by ID from a random node of `nodes` to a random ID below
/// `total`: latencies of those answered, and failures by kind.
fn requests(
    nodes: &[Node],
    total: usize,
    pairs: usize,
    rng: &mut Rng,
) -> (Vec<Duration>, BTreeMap<String, usize>, Option<String>) {
    let mut lat = Vec::with_capacity(pairs);
    let mut failed = BTreeMap::new();
    let mut first = None;
    for i in 0..pairs {
        let a = rng.below(nodes.len());
        let b = rng.below(total);
        let t = Instant::now();
        match nodes[a].request(NodeId(b as u64), Message::new("ECHO", i as u64)) {
            Ok(_) => lat.push(t.elapsed()),
            Err(e) => {
                *failed.entry(kind(&e)).or_insert(0) += 1;
                first.get_or_insert_with(|| format!("{} -> {b}: {e}", nodes[a].local_addr()));
            }
        }
    }
    lat.sort_unstable();
    (lat, failed, first)
}

fn budget_for(o: &Opts, nodes: usize) {
    let budget = o.budget.unwrap_or_else(|| {
        (nodes * THREADS_PER_NODE + 100)
            .max(p2prs::max_threads())
            .min(MAX_BUDGET)
    });
    p2prs::set_max_threads(budget);
}

/// Connections dialled since `since` (a snapshot of `p2prs::testing::dials`),
/// by purpose, largest first; returns the line and the new snapshot.
fn dials_since(since: &[(&'static str, u64)]) -> (String, Vec<(&'static str, u64)>) {
    let now = p2prs::testing::dials();
    let mut d: Vec<(&str, u64)> = now
        .iter()
        .map(|(k, v)| {
            let was = since.iter().find(|(j, _)| j == k).map_or(0, |x| x.1);
            (*k, v - was)
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    d.sort_by_key(|x| std::cmp::Reverse(x.1));
    let total: u64 = d.iter().map(|x| x.1).sum();
    let parts: Vec<String> = d.iter().map(|(k, v)| format!("{k} {v}")).collect();
    (format!("{total} dials ({})", parts.join(", ")), now)
}

fn single(o: &Opts) -> Result<(), Error> {
    budget_for(o, o.nodes);
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let t = Instant::now();
    let dials = p2prs::testing::dials();
    let nodes = grow(o.nodes, None, o.interval(), &mut rng);
    let n = nodes.len();
    println!(
        "{n} nodes joined in {:.2?} (budget {} threads); {}",
        t.elapsed(),
        p2prs::max_threads(),
        Res::now().per_node(n)
    );
    let (line, dials) = dials_since(&dials);
    println!("  while joining: {line}");
    if let Some(took) = sizes_right(&nodes, n) {
        println!(
            "every node sees {n} after {took:.2?}; {}",
            Res::now().per_node(n)
        );
    }
    let (line, dials) = dials_since(&dials);
    println!("  until the sizes were right: {line}");
    let cpu = cpu_secs();
    std::thread::sleep(Duration::from_secs(o.idle));
    let idle = Res::now();
    let cpu = (cpu_secs() - cpu) / o.idle.max(1) as f64;
    println!(
        "idle CPU: {:.2} s a second in all, {:.2} ms a second per node",
        cpu,
        cpu * 1000.0 / n.max(1) as f64
    );
    let right = nodes.iter().filter(|x| x.network_size() == n).count();
    println!(
        "idle {} s later: {}; {right} of {n} nodes see {n}; {}",
        o.idle,
        idle.per_node(n),
        conns(&nodes)
    );
    println!("threads by name: {}", thread_names());
    let (line, dials) = dials_since(&dials);
    println!("  idle: {line}");
    let cpu = cpu_secs();
    std::thread::sleep(Duration::from_secs(o.idle));
    let cpu = (cpu_secs() - cpu) / o.idle.max(1) as f64;
    println!(
        "idle CPU {} s after that: {:.2} s a second in all, {:.2} ms a second per node; {}; {}",
        o.idle,
        cpu,
        cpu * 1000.0 / n.max(1) as f64,
        Res::now().per_node(n),
        conns(&nodes)
    );

    let mut hops = Vec::new();
    let mut wrong = 0;
    let t = Instant::now();
    for _ in 0..1000 {
        let a = rng.below(n);
        let b = rng.below(n);
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

    let t = Instant::now();
    let (lat, failed, first) = requests(&nodes, n, o.pairs, &mut rng);
    report_requests(o.pairs, t.elapsed(), &lat, &failed, first.as_deref());
    let (line, _) = dials_since(&dials);
    println!("  the second idle wait, lookups and requests: {line}");
    println!("after the requests: {}", Res::now().per_node(n));
    std::thread::sleep(Duration::from_secs(o.idle));
    println!("idle {} s later: {}", o.idle, Res::now().per_node(n));
    let t = Instant::now();
    for x in &nodes {
        x.shutdown();
    }
    let end = Res::now();
    println!(
        "shut down in {:.2?}; threads {}, fds {}",
        t.elapsed(),
        end.threads,
        end.fds
    );
    Ok(())
}

fn report_requests(
    pairs: usize,
    took: Duration,
    lat: &[Duration],
    failed: &BTreeMap<String, usize>,
    first: Option<&str>,
) {
    let at = |q: usize| lat.get(lat.len() * q / 100).copied().unwrap_or_default();
    let kinds: Vec<String> = failed.iter().map(|(k, v)| format!("{v} × {k}")).collect();
    println!(
        "{pairs} requests by ID between random pairs in {took:.2?}: {} answered, median {:.2?}, \
         p99 {:.2?}; failed {}{}",
        lat.len(),
        at(50),
        at(99),
        failed.values().sum::<usize>(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    );
    if let Some(f) = first {
        println!("first failure: {f}");
    }
}

// ---- several processes -------------------------------------------------------
//
// The parent starts the children one at a time (each joins all its nodes
// before the next starts), then steps them all through the phases with one
// line on their stdin each: `idle`, `requests`, `stop`. Children answer with
// one line per phase on their stdout.

struct Kid {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Kid {
    /// The next line starting with `tag`, its rest; other lines are shown.
    fn expect(&mut self, tag: &str) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.output.read_line(&mut line).ok()? == 0 {
                return None;
            }
            match line.trim_end().strip_prefix(tag) {
                Some(rest) => return Some(rest.trim().to_string()),
                None => print!("  | {line}"),
            }
        }
    }

    fn tell(&mut self, what: &str) {
        let _ = writeln!(self.input, "{what}");
        let _ = self.input.flush();
    }
}

fn parent(o: &Opts) -> Result<(), Error> {
    let per = o.nodes / o.procs;
    let total = per * o.procs;
    let exe = std::env::current_exe()
        .map_err(|e| Error::InvalidArgument(format!("finding this example: {e}")))?;
    let mut kids: Vec<Kid> = Vec::new();
    let mut root: Option<String> = None;
    let t = Instant::now();
    for k in 0..o.procs {
        let mut cmd = Command::new(&exe);
        cmd.arg(per.to_string())
            .args(["--child", &k.to_string(), "--total", &total.to_string()])
            .args(["--idle", &o.idle.to_string()])
            .args(["--interval", &o.interval_ms.to_string()])
            .args(["--pairs", &(o.pairs / o.procs).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(b) = o.budget {
            cmd.arg(b.to_string());
        }
        if let Some(r) = &root {
            cmd.args(["--join", r]);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                println!("process {k} could not start ({e}); going on with {k}");
                break;
            }
        };
        let (Some(input), Some(out)) = (child.stdin.take(), child.stdout.take()) else {
            break;
        };
        let mut kid = Kid {
            child,
            input,
            output: BufReader::new(out),
        };
        let joined = kid.expect("JOINED");
        println!("process {k}: {}", joined.as_deref().unwrap_or("(ended)"));
        if k == 0 {
            root = kid.expect("ROOT");
        }
        kids.push(kid);
        if joined.is_none() || root.is_none() {
            break;
        }
    }
    println!(
        "{} processes started, {total} nodes wanted, joined in {:.2?}",
        kids.len(),
        t.elapsed()
    );
    let sized: Vec<String> = kids.iter_mut().filter_map(|k| k.expect("SIZED")).collect();
    println!("sizes right (each process: seconds after its own joins): {sized:?}");
    let sum = |kids: &mut Vec<Kid>, tag: &str| {
        let mut r = Res::default();
        let mut extra = Vec::new();
        for k in kids.iter_mut() {
            let line = k.expect(tag).unwrap_or_default();
            let (res, rest) = line.split_at(line.find('|').unwrap_or(line.len()));
            r = r.add(Res::parse(res).unwrap_or_default());
            extra.push(rest.trim_start_matches('|').trim().to_string());
        }
        (r, extra)
    };
    for k in kids.iter_mut() {
        k.tell("idle");
    }
    let (idle, right) = sum(&mut kids, "IDLE");
    println!(
        "idle {} s later, all processes: {}; nodes seeing {total}: {right:?}",
        o.idle,
        idle.per_node(total)
    );
    let t = Instant::now();
    for k in kids.iter_mut() {
        k.tell("requests");
    }
    let (busy, outcomes) = sum(&mut kids, "REQUESTS");
    let took = t.elapsed();
    let mut answered = 0;
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for line in &outcomes {
        for part in line.split_whitespace() {
            if let Some((k, v)) = part.split_once('=') {
                let v: usize = v.parse().unwrap_or(0);
                if k == "ok" {
                    answered += v;
                } else {
                    *failed.entry(k.to_string()).or_insert(0) += v;
                }
            }
        }
    }
    let kinds: Vec<String> = failed.iter().map(|(k, v)| format!("{v} × {k}")).collect();
    println!(
        "{} requests by ID between random pairs (across processes) in {took:.2?}: \
         {answered} answered, failed {} {kinds:?}",
        (o.pairs / o.procs) * kids.len(),
        failed.values().sum::<usize>()
    );
    println!("after the requests: {}", busy.per_node(total));
    for k in kids.iter_mut() {
        k.tell("stop");
    }
    for mut k in kids {
        let _ = k.expect("STOPPED");
        let _ = k.child.wait();
    }
    Ok(())
}

fn child(o: &Opts) -> Result<(), Error> {
    let Some((k, via)) = &o.child else {
        return Ok(());
    };
    budget_for(o, o.nodes);
    let via = match via {
        Some(v) => Some(
            v.parse()
                .map_err(|_| Error::InvalidAddress(v.to_string()))?,
        ),
        None => None,
    };
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d ^ (*k as u64 + 1).wrapping_mul(0x9e37_79b9));
    let t = Instant::now();
    let nodes = grow(o.nodes, via, o.interval(), &mut rng);
    let n = nodes.len();
    println!(
        "JOINED {n} nodes in {:.2?}; {}",
        t.elapsed(),
        Res::now().per_node(n)
    );
    if let (0, Some(first)) = (k, nodes.first()) {
        println!("ROOT {}", first.local_addr());
    }
    let _ = std::io::stdout().flush();
    let took = sizes_right(&nodes, o.total);
    println!(
        "SIZED {}",
        took.map_or("never".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
    );
    let _ = std::io::stdout().flush();
    let mut lines = std::io::stdin().lock().lines();
    while let Some(Ok(cmd)) = lines.next() {
        match cmd.trim() {
            "idle" => {
                std::thread::sleep(Duration::from_secs(o.idle));
                let right = nodes.iter().filter(|x| x.network_size() == o.total).count();
                println!("IDLE {} | {right}", Res::now().line());
            }
            "requests" => {
                let (lat, failed, first) = requests(&nodes, o.total, o.pairs, &mut rng);
                if let Some(f) = first {
                    println!("first failure: {f}");
                }
                let kinds: Vec<String> = failed.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "REQUESTS {} | ok={} {}",
                    Res::now().line(),
                    lat.len(),
                    kinds.join(" ")
                );
            }
            _ => break,
        }
        let _ = std::io::stdout().flush();
    }
    for x in &nodes {
        x.shutdown();
    }
    println!("STOPPED");
    Ok(())
}

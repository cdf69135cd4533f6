//! `p2prs demo`: a Chord ring in one process on loopback, exercised and measured.

use crate::args::DemoOpts;
use crate::handlers;
use crate::stats::Summary;
use crate::svg::{self, RingNode};
use crate::watchdog::Watchdog;

use p2prs::{Event, Events, Message, Node, NodeId, PeerInfo};
use p2prs_rng::{clock_seed, Rng};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Stabilizer period of the demo's nodes: short, so the ring settles fast.
const STABILIZE: Duration = Duration::from_millis(100);
/// How long delivered messages may take to show up.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// How many examples of each kind of exchange to print.
const EXAMPLES: usize = 3;
/// After this many problems the demo stops trying and reports.
const MAX_PROBLEMS: usize = 10;
/// How long the exchanges may take before the demo gives up.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(120);
/// How long shutting every node down may take.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);
/// Request timeout of the demo's nodes: a broken ring fails fast.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the demo; exit 0 when everything got through.
pub fn run(opts: &DemoOpts) -> ExitCode {
    let seed = opts.seed.unwrap_or_else(clock_seed);
    say!(
        "p2prs demo: {} nodes on 127.0.0.1 (seed {seed}; repeat with --seed {seed})",
        opts.nodes
    );
    let mut rng = Rng::new(seed);
    let built = {
        let _watchdog = Watchdog::arm(build_deadline(opts.nodes), "building the ring");
        Ring::build(opts.nodes, &mut rng)
    };
    let ring = match built {
        Ok(ring) => ring,
        Err(e) => {
            eprintln!("p2prs demo: FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = {
        let _watchdog = Watchdog::arm(EXCHANGE_DEADLINE, "exchanging messages");
        exercise(&ring, opts, &mut rng)
    };
    if let Some(path) = &opts.svg {
        write_svg(&ring, path, &mut report.problems);
    }
    {
        let _watchdog = Watchdog::arm(SHUTDOWN_DEADLINE, "shutting the nodes down");
        ring.shutdown();
    }
    finish(&report.problems.0)
}

/// How long building a ring of `n` may take before the demo gives up.
fn build_deadline(n: usize) -> Duration {
    Duration::from_secs(20) + Duration::from_millis(200) * n as u32
}

/// The nodes of the ring, each with its events and its ID.
struct Member {
    node: Node,
    events: Events,
    id: NodeId,
}

struct Ring {
    members: Vec<Member>,
    /// Milliseconds each join took.
    join_ms: Vec<f64>,
    /// How long the ring took to agree on its size, if it did.
    stable_after: Option<Duration>,
}

impl Ring {
    /// Start `n` nodes and join them into one ring through random members.
    fn build(n: usize, rng: &mut Rng) -> Result<Ring, String> {
        let started = Instant::now();
        let nodes = start_nodes(n)?;
        say!("started {n} nodes in {} ms", started.elapsed().as_millis());
        let events: Vec<Events> = nodes.iter().map(Node::events).collect();
        let join_ms = form_ring(&nodes, rng)?;
        let members = nodes
            .into_iter()
            .zip(events)
            .enumerate()
            .map(|(i, (node, events))| {
                let id = node
                    .id()
                    .ok_or(format!("node #{i} has no ID after joining"))?;
                Ok(Member { node, events, id })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let stable_after = wait_stable(&members);
        Ok(Ring {
            members,
            join_ms,
            stable_after,
        })
    }

    fn shutdown(self) {
        let started = Instant::now();
        let n = self.members.len();
        for m in &self.members {
            m.node.shutdown();
        }
        say!(
            "shut down all {n} nodes in {} ms",
            started.elapsed().as_millis()
        );
    }
}

fn start_nodes(n: usize) -> Result<Vec<Node>, String> {
    (0..n)
        .map(|i| {
            Node::builder()
                .port(0)
                .configure(|c| {
                    c.stabilize_interval = STABILIZE;
                    c.request_timeout = REQUEST_TIMEOUT;
                })
                .handler("ADD", handlers::add)
                .start()
                .map_err(|e| format!("starting node #{i}: {e}"))
        })
        .collect()
}

/// The first node creates the network; each other joins through a random
/// node already in it. Returns how long each join took, in milliseconds.
fn form_ring(nodes: &[Node], rng: &mut Rng) -> Result<Vec<f64>, String> {
    let first = nodes[0]
        .create_network()
        .map_err(|e| format!("the first node could not create the network: {e}"))?;
    say!(
        "node {first} created the network at {}",
        nodes[0].local_addr()
    );
    let started = Instant::now();
    let mut join_ms = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let via = nodes[rng.below(i)].local_addr();
        let t = Instant::now();
        node.join_network(&[via])
            .map_err(|e| format!("node #{i} could not join through {via}: {e}"))?;
        join_ms.push(ms(t.elapsed()));
    }
    say!(
        "{} nodes joined through randomly chosen members in {} ms",
        nodes.len() - 1,
        started.elapsed().as_millis()
    );
    Ok(join_ms)
}

/// Wait until every node sees the whole ring, with a deadline that grows with it.
fn wait_stable(members: &[Member]) -> Option<Duration> {
    let n = members.len();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10) + STABILIZE * n as u32;
    loop {
        if members.iter().all(|m| m.node.network_size() == n) {
            let took = started.elapsed();
            say!(
                "ring stable after {} ms: every node sees {n} nodes",
                took.as_millis()
            );
            return Some(took);
        }
        if Instant::now() >= deadline {
            say!("ring NOT stable after {} s", started.elapsed().as_secs());
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What went wrong; past [`MAX_PROBLEMS`] the demo stops trying.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, problem: String) {
        self.0.push(problem);
    }

    fn too_many(&self) -> bool {
        self.0.len() >= MAX_PROBLEMS
    }
}

/// What the exchanges measured, and what went wrong.
#[derive(Default)]
struct Report {
    hops: Vec<f64>,
    latency_ms: Vec<f64>,
    problems: Problems,
}

fn exercise(ring: &Ring, opts: &DemoOpts, rng: &mut Rng) -> Report {
    let mut report = Report::default();
    if ring.stable_after.is_none() {
        report
            .problems
            .add("the nodes never agreed on the network size; no exchanges tried".into());
    } else {
        send_texts(ring, opts.messages, rng, &mut report.problems);
        report.latency_ms = send_requests(ring, opts.requests, rng, &mut report.problems);
        report.hops = lookups(ring, opts.requests, rng, &mut report.problems);
        broadcast(ring, rng, &mut report.problems);
    }
    print_table(ring, &report);
    report
}

/// TEXT messages between random node IDs, each checked on arrival.
fn send_texts(ring: &Ring, count: usize, rng: &mut Rng, problems: &mut Problems) {
    if count == 0 {
        return;
    }
    say!("\nTEXT messages, sent with send_to_id:");
    let m = &ring.members;
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); m.len()];
    let mut sent = Vec::new();
    for k in 0..count {
        if problems.too_many() {
            break;
        }
        let (s, r) = rng.pair(m.len());
        let text = format!("hello #{k} from node {}", m[s].id);
        match m[s].node.send_to_id(m[r].id, Message::text(text.clone())) {
            Ok(()) => {
                expected[r].push(text.clone());
                sent.push((s, r, text));
            }
            Err(e) => problems.add(format!("TEXT node {} -> node {}: {e}", m[s].id, m[r].id)),
        }
    }
    let deadline = Instant::now() + DELIVERY_WAIT;
    let arrived: HashMap<String, PeerInfo> = m
        .iter()
        .zip(&expected)
        .flat_map(|(member, want)| receive_texts(member, want, deadline))
        .map(|(from, text)| (text, from))
        .collect();
    for (s, r, text) in sent.iter().take(EXAMPLES) {
        let seen = arrived
            .get(text)
            .map_or("LOST".into(), |from| format!("arrived from {from}"));
        say!("  node {} -> node {}: {text:?} {seen}", m[*s].id, m[*r].id);
    }
    say!("  {}/{count} delivered", arrived.len());
    if arrived.len() < count {
        problems.add(format!(
            "only {} of {count} TEXT messages arrived",
            arrived.len()
        ));
    }
}

/// Wait until the texts `want` arrive at `member`, or the deadline passes;
/// returns those that arrived and who sent them.
fn receive_texts(member: &Member, want: &[String], deadline: Instant) -> Vec<(PeerInfo, String)> {
    let mut missing: Vec<&String> = want.iter().collect();
    let mut arrived = Vec::with_capacity(want.len());
    while !missing.is_empty() {
        let Ok(ev) = member.events.recv_deadline(deadline) else {
            break;
        };
        let Event::Message { from, message } = ev else {
            continue;
        };
        if let Some(pos) = missing
            .iter()
            .position(|t| Some(t.as_str()) == message.as_text())
        {
            arrived.push((from, missing.swap_remove(pos).clone()));
        }
    }
    arrived
}

/// ADD requests by node ID; returns the latencies of the correct answers.
fn send_requests(ring: &Ring, count: usize, rng: &mut Rng, problems: &mut Problems) -> Vec<f64> {
    if count == 0 {
        return Vec::new();
    }
    say!("\nADD requests, sent with request(NodeId, ..):");
    let m = &ring.members;
    let mut latency = Vec::with_capacity(count);
    for k in 0..count {
        if problems.too_many() {
            break;
        }
        let (s, r) = rng.pair(m.len());
        let n = rng.below(1000) as i64;
        let started = Instant::now();
        let answer = m[s].node.request(m[r].id, Message::new("ADD", n));
        let took = ms(started.elapsed());
        match answer.and_then(|resp| resp.data::<i64>()) {
            Ok(sum) if sum == n + 1 => {
                latency.push(took);
                if k < EXAMPLES {
                    say!(
                        "  node {} asks node {}: {n} + 1 = {sum} ({took:.2} ms)",
                        m[s].id,
                        m[r].id
                    );
                }
            }
            Ok(sum) => problems.add(format!("ADD {n} at node {} answered {sum}", m[r].id)),
            Err(e) => problems.add(format!("ADD node {} -> node {}: {e}", m[s].id, m[r].id)),
        }
    }
    say!("  {}/{count} answered correctly", latency.len());
    latency
}

/// Lookups of random IDs from random nodes; returns the hop counts.
fn lookups(ring: &Ring, count: usize, rng: &mut Rng, problems: &mut Problems) -> Vec<f64> {
    let m = &ring.members;
    let mut hops = Vec::with_capacity(count);
    for _ in 0..count {
        if problems.too_many() {
            break;
        }
        let (s, r) = rng.pair(m.len());
        match m[s].node.lookup(m[r].id) {
            Ok(route) if route.owner.id == m[r].id => hops.push(f64::from(route.hops)),
            Ok(route) => problems.add(format!(
                "lookup of {} from node {} ended at node {}",
                m[r].id, m[s].id, route.owner.id
            )),
            Err(e) => problems.add(format!("lookup of {} from node {}: {e}", m[r].id, m[s].id)),
        }
    }
    hops
}

/// One broadcast from a random node: every other node must get it once.
fn broadcast(ring: &Ring, rng: &mut Rng, problems: &mut Problems) {
    let m = &ring.members;
    let s = rng.below(m.len());
    let text = format!("broadcast from node {}", m[s].id);
    if let Err(e) = m[s].node.broadcast(Message::text(text.clone())) {
        problems.add(format!("broadcast from node {}: {e}", m[s].id));
        return;
    }
    let deadline = Instant::now() + DELIVERY_WAIT;
    let want = [text];
    let reached = m
        .iter()
        .enumerate()
        .filter(|&(i, member)| i != s && receive_texts(member, &want, deadline).len() == 1)
        .count();
    say!(
        "\nbroadcast from node {}: {reached}/{} other nodes got it",
        m[s].id,
        m.len() - 1
    );
    if reached < m.len() - 1 {
        problems.add(format!(
            "the broadcast reached {reached} of {} nodes",
            m.len() - 1
        ));
    }
}

fn print_table(ring: &Ring, report: &Report) {
    let sizes: Vec<usize> = ring.members.iter().map(|m| m.node.network_size()).collect();
    let n = ring.members.len();
    let rows = [
        ("nodes", n.to_string()),
        (
            "join time",
            summary(&ring.join_ms, |s| {
                format!("mean {:.2} ms, p99 {:.2} ms", s.mean, s.p99)
            }),
        ),
        (
            "ring stable after",
            ring.stable_after
                .map_or("never".into(), |d| format!("{} ms", d.as_millis())),
        ),
        (
            "hops per lookup",
            summary(&report.hops, |s| {
                format!(
                    "mean {:.2}, p99 {}, max {} ({} lookups; log2 N = {:.1})",
                    s.mean,
                    s.p99,
                    s.max,
                    s.count,
                    (n as f64).log2()
                )
            }),
        ),
        (
            "request latency",
            summary(&report.latency_ms, |s| {
                format!(
                    "median {:.2} ms, p99 {:.2} ms ({} requests)",
                    s.median, s.p99, s.count
                )
            }),
        ),
        (
            "network size seen",
            format!(
                "min {}, max {} (expected {n})",
                min_or_zero(&sizes),
                sizes.iter().max().copied().unwrap_or(0)
            ),
        ),
    ];
    say!();
    print_rows(&rows);
}

fn min_or_zero(xs: &[usize]) -> usize {
    xs.iter().min().copied().unwrap_or(0)
}

fn summary(samples: &[f64], show: impl Fn(Summary) -> String) -> String {
    Summary::of(samples).map_or_else(|| "-".into(), show)
}

fn print_rows(rows: &[(&str, String)]) {
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let rule = format!("+-{}-+-{}-+", "-".repeat(w0), "-".repeat(w1));
    say!("{rule}");
    for (name, value) in rows {
        say!("| {name:<w0$} | {value:<w1$} |");
    }
    say!("{rule}");
}

fn write_svg(ring: &Ring, path: &std::path::Path, problems: &mut Problems) {
    let nodes: Vec<RingNode> = ring
        .members
        .iter()
        .map(|m| RingNode {
            id: m.id.0,
            addr: m.node.local_addr().to_string(),
            neighbours: m.node.peer_book().iter().map(|p| p.id.0).collect(),
        })
        .collect();
    match std::fs::write(path, svg::render(&nodes)) {
        Ok(()) => say!("picture of the ring written to {}", path.display()),
        Err(e) => problems.add(format!("writing {}: {e}", path.display())),
    }
}

fn finish(problems: &[String]) -> ExitCode {
    if problems.is_empty() {
        say!("demo OK");
        return ExitCode::SUCCESS;
    }
    eprintln!("p2prs demo: FAILED ({} problems):", problems.len());
    for p in problems.iter().take(10) {
        eprintln!("  {p}");
    }
    if problems.len() > 10 {
        eprintln!("  ... and {} more", problems.len() - 10);
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_demo_succeeds_and_draws_the_ring() {
        let svg = std::env::temp_dir().join(format!("p2prs-demo-test-{}.svg", std::process::id()));
        let opts = DemoOpts {
            nodes: 4,
            messages: 12,
            requests: 12,
            seed: Some(1),
            svg: Some(svg.clone()),
            verbose: false,
        };
        assert_eq!(run(&opts), ExitCode::SUCCESS);
        let picture = std::fs::read_to_string(&svg).expect("the picture was written");
        assert_eq!(picture.matches("<circle").count(), 4);
        let _ = std::fs::remove_file(svg);
    }
}

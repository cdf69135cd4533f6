//! p2prs against plain `std::net` TCP on loopback, in one run.
//!
//! ```text
//! cargo bench --bench bench
//! BENCH_ITERS=20000 BENCH_SECS=2 cargo bench --bench bench
//! ```
//!
//! Every row runs interleaved with its baseline (a plain length-prefixed
//! ping-pong or stream of exactly the same bytes, `TCP_NODELAY` on), in
//! rounds, so that drift in CPU frequency or load hits them alike. Each p2prs
//! row runs with encryption on (the default, Noise with AES-GCM) and with
//! `NodeBuilder::insecure_plaintext()`; the throughput rows also against a
//! bare TCP + Noise stream (`snow` directly, `Noise_XX_25519_*_BLAKE2s`,
//! 64 KiB records) and with both ciphers. Then: connect + handshake time,
//! requests by ID in a 64-node ring, and join times; and the chart of
//! request latency and lookup hops against ring size.
//!
//! Sizes are set by environment variables (defaults in brackets):
//! `BENCH_ITERS` round trips per latency row [10000], `BENCH_WARMUP` [1000],
//! `BENCH_ROUNDS` interleaved rounds [5], `BENCH_SECS_MS` milliseconds per
//! requests/s row [1000], `BENCH_BULK_MIB` MiB per 1 MiB-body row [256],
//! `BENCH_BULK_ROWS` keeps only the 1 MiB rows whose names contain it
//! (plain TCP stays) [all], `BENCH_SMALL` messages per 64 B row [200000], `BENCH_CONNECTS` [300],
//! `BENCH_RING` nodes [64], `BENCH_RING_REQUESTS` [1000], `BENCH_RING_AGAIN`
//! requests to the same pair, the last one timed [1]; for the chart,
//! `BENCH_CHART_SIZES` ring sizes [16,64,256] (at most 1,024 nodes each),
//! `BENCH_CHART_LOOKUPS` per size [1000], `BENCH_CHART_REQUESTS` pairs per
//! size [500], `BENCH_CHART_SETTLE_MS` idle time after every node reports
//! the right size, before measuring [3000], and `BENCH_CHART_SVG` where the
//! chart goes [target/perf-chart.svg] (its figures go next to it, `.tsv`);
//! and `BENCH_ONLY`, a comma-separated list of the sections to run
//! (`latency`, `rps`, `bulk`, `small`, `connect`, `ring`, `chart`; all by
//! default; `chart` adds about 30 s). See `docs/performance.md`.

use p2prs::wire::{encoded_size, Frame, Kind, FRAME_PREFIX};
use p2prs::{Cipher, Connection, Incoming, Message, Node, NodeBuilder, NodeId};
use p2prs_rng::Rng;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/svg.rs"]
mod svg;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sizes {
    iters: usize,
    warmup: usize,
    rounds: usize,
    secs: f64,
    bulk_mib: usize,
    small: usize,
    connects: usize,
    ring: usize,
    ring_requests: usize,
    chart_sizes: Vec<usize>,
    chart_lookups: usize,
    chart_requests: usize,
    chart_svg: String,
    chart_settle: Duration,
}

/// The encryption modes of a p2prs row.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Secure(Cipher),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plaintext",
            Mode::Secure(Cipher::AesGcm) => "AES-GCM",
            Mode::Secure(_) => "ChaCha20",
        }
    }

    fn builder(self) -> NodeBuilder {
        let b = Node::builder();
        match self {
            Mode::Plain => b.insecure_plaintext(),
            Mode::Secure(c) => b.configure(move |cfg| cfg.cipher = c),
        }
    }
}

const AES: Mode = Mode::Secure(Cipher::AesGcm);
const CHACHA: Mode = Mode::Secure(Cipher::ChaChaPoly);

fn main() -> Res<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass
    // nothing else: run only when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with: cargo bench --bench bench");
        return Ok(());
    }
    // RUST_LOG=p2prs=debug shows what the nodes do (off by default).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let s = Sizes {
        iters: env("BENCH_ITERS", 10_000),
        warmup: env("BENCH_WARMUP", 1_000),
        rounds: env("BENCH_ROUNDS", 5).max(1),
        secs: env("BENCH_SECS_MS", 1000) as f64 / 1000.0,
        bulk_mib: env("BENCH_BULK_MIB", 256),
        small: env("BENCH_SMALL", 200_000),
        connects: env("BENCH_CONNECTS", 300),
        ring: env("BENCH_RING", 64),
        ring_requests: env("BENCH_RING_REQUESTS", 1000),
        chart_sizes: std::env::var("BENCH_CHART_SIZES")
            .unwrap_or_else(|_| "16,64,256".into())
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .map(|n: usize| n.clamp(2, CHART_MAX_NODES))
            .collect(),
        chart_lookups: env("BENCH_CHART_LOOKUPS", 1000),
        chart_requests: env("BENCH_CHART_REQUESTS", 500),
        chart_settle: Duration::from_millis(env("BENCH_CHART_SETTLE_MS", 3000) as u64),
        chart_svg: std::env::var("BENCH_CHART_SVG")
            .unwrap_or_else(|_| "target/perf-chart.svg".into()),
    };
    let started = Instant::now();
    println!(
        "p2prs bench: {} cores, load average {} (before)",
        thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let on = |section: &str| {
        (only.is_empty() && section != "probe") || only.split(',').any(|o| o.trim() == section)
    };
    type Section = fn(&Sizes) -> Res<()>;
    let sections: [(&str, Section); 8] = [
        ("latency", latency),
        ("probe", probe),
        ("rps", requests_per_second),
        ("bulk", bulk),
        ("small", small),
        ("connect", connects),
        ("ring", ring),
        ("chart", chart),
    ];
    for (name, f) in sections {
        if on(name) {
            f(&s)?;
        }
    }
    println!();
    println!(
        "done in {:.1} s; load average {} (after)",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---- statistics -------------------------------------------------------------

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    p99: f64,
}

impl Stats {
    /// Figures in microseconds; sorts `v`.
    fn of(v: &mut [Duration]) -> Stats {
        v.sort_unstable();
        Stats {
            median: quantile(v, 0.5),
            p99: quantile(v, 0.99),
        }
    }
}

/// The `q` quantile of the sorted `v`, in microseconds.
fn quantile(v: &[Duration], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

/// A latency row: its name and one timed operation.
type TimedRow = (String, Box<dyn FnMut() -> Res<Duration>>);

fn header(title: &str) {
    println!("## {title}");
    println!(
        "{:<44} {:>11} {:>11} {:>10} {:>10}",
        "", "median µs", "p99 µs", "med/TCP", "p99/TCP"
    );
}

fn row(name: &str, s: Stats, tcp: Stats) {
    println!(
        "{name:<44} {:>11.1} {:>11.1} {:>9.2}x {:>9.2}x",
        s.median,
        s.p99,
        s.median / tcp.median,
        s.p99 / tcp.p99
    );
}

// ---- plain TCP baselines ----------------------------------------------------

/// A TCP echo server answering each `req_len`-byte message with `resp_len`
/// bytes, one thread per connection; ends when the client closes.
fn tcp_echo_server(
    conns: usize,
    req_len: usize,
    resp_len: usize,
) -> Res<(SocketAddr, Vec<thread::JoinHandle<()>>)> {
    let (addr, handles, _) = tcp_echo_server_tids(conns, req_len, resp_len)?;
    Ok((addr, handles))
}

/// [`tcp_echo_server`], and the kernel's thread IDs of its echo threads (see
/// [`Pin`]).
fn tcp_echo_server_tids(
    conns: usize,
    req_len: usize,
    resp_len: usize,
) -> Res<(
    SocketAddr,
    Vec<thread::JoinHandle<()>>,
    mpsc::Receiver<String>,
)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (tid_tx, tid_rx) = mpsc::channel();
    let accept = thread::Builder::new()
        .name("bench-tcp-accept".into())
        .spawn(move || {
            let mut handles = Vec::new();
            for _ in 0..conns {
                let Ok((mut s, _)) = listener.accept() else {
                    break;
                };
                let _ = s.set_nodelay(true);
                let tid_tx = tid_tx.clone();
                let h = thread::Builder::new()
                    .name("bench-tcp-echo".into())
                    .spawn(move || {
                        if let Some((tid, _)) = this_thread() {
                            let _ = tid_tx.send(tid);
                        }
                        let mut inb = vec![0u8; req_len];
                        let out = vec![b'r'; resp_len];
                        while s.read_exact(&mut inb).is_ok() {
                            if s.write_all(&out).is_err() {
                                return;
                            }
                        }
                    });
                if let Ok(h) = h {
                    handles.push(h);
                }
            }
            for h in handles {
                let _ = h.join();
            }
        })?;
    Ok((addr, vec![accept], tid_rx))
}

/// The calling thread's ID as the kernel numbers it, and the CPU it last
/// ran on (Linux; `None` elsewhere).
fn this_thread() -> Option<(String, String)> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    let tid = link.file_name()?.to_str()?.to_string();
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let cpu = stat.rsplit(')').next()?.split_whitespace().nth(36)?;
    Some((tid, cpu.to_string()))
}

/// The CPUs thread `tid` may run on, as `taskset` lists them.
fn cpus_of(tid: &str) -> Option<String> {
    let out = std::process::Command::new("taskset")
        .args(["-c", "-p", tid])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.rsplit(':').next()?.trim().to_string()).filter(|c| !c.is_empty())
}

/// Let thread `tid` run on `cpus` only (a `taskset` list); false if it
/// could not be done.
fn set_cpus(tid: &str, cpus: &str) -> bool {
    std::process::Command::new("taskset")
        .args(["-c", "-p", cpus, tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The round-trip baseline with both of its threads on one CPU: the
/// client (the calling thread) and the echo thread `echo`.
///
/// On a 2-vCPU guest a plain TCP ping-pong has two stable states: both
/// threads on one vCPU, each wake a context switch there (about 4 µs a
/// round trip), or one on each, every wake an idle vCPU's (60-70 µs);
/// it falls into either by chance, also when nothing else runs, and
/// stays there for thousands of round trips. Pinned, it is always in the
/// fast state: the ratios are against TCP at its best. The p2prs rows are
/// never pinned.
struct Pin {
    echo: String,
    /// The CPUs the client and the echo thread may use when not pinned.
    all: String,
}

impl Pin {
    /// `None` where threads cannot be pinned (no `/proc`, no `taskset`).
    fn new(echo_tids: &mpsc::Receiver<String>) -> Option<Pin> {
        let echo = echo_tids.recv_timeout(Duration::from_secs(5)).ok()?;
        let all = cpus_of(&echo)?;
        Some(Pin { echo, all })
    }

    /// Run `f` with both threads on the CPU the client is on now; and
    /// whether both could be pinned.
    fn run<T>(&self, f: impl FnOnce() -> T) -> (T, bool) {
        let Some((tid, cpu)) = this_thread() else {
            return (f(), false);
        };
        let mine = set_cpus(&tid, &cpu);
        let echo = set_cpus(&self.echo, &cpu);
        let r = f();
        if mine {
            set_cpus(&tid, &self.all);
        }
        if echo {
            set_cpus(&self.echo, &self.all);
        }
        (r, mine && echo)
    }
}

struct TcpClient {
    s: TcpStream,
    out: Vec<u8>,
    inb: Vec<u8>,
}

impl TcpClient {
    fn connect(addr: SocketAddr, req_len: usize, resp_len: usize) -> Res<TcpClient> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(TcpClient {
            s,
            out: vec![b'q'; req_len],
            inb: vec![0; resp_len],
        })
    }

    fn once(&mut self) -> Res<Duration> {
        let t = Instant::now();
        self.s.write_all(&self.out)?;
        self.s.read_exact(&mut self.inb)?;
        Ok(t.elapsed())
    }
}

/// Bytes on the wire (plaintext) of a p2prs frame of `kind` with `body`.
fn frame_len(kind: Kind, msg_type: &str, body: usize, req: bool) -> Res<usize> {
    let mut f = Frame::new(kind, msg_type, Value::Null);
    if req {
        f.req = Some(12_345);
    }
    f.body = Some(vec![0; body]);
    Ok(FRAME_PREFIX + encoded_size(&f)? as usize)
}

// ---- p2prs servers ----------------------------------------------------------

fn echo(req: &mut Incoming) -> p2prs::HandlerResult {
    let body = req.take_message().into_body().unwrap_or_default();
    req.respond(Message::bytes("ECHO", body))?;
    Ok(())
}

fn echo_server(mode: Mode) -> Res<Node> {
    let server = mode.builder().start()?;
    server.add_inline_handler("ECHO", echo)?;
    server.add_handler("ECHOP", echo)?;
    Ok(server)
}

fn p2prs_once(conn: &Connection, kind: &str, body: &[u8]) -> Res<Duration> {
    let msg = Message::bytes(kind, body.to_vec());
    let t = Instant::now();
    conn.request(msg)?;
    Ok(t.elapsed())
}

// ---- latency ----------------------------------------------------------------

fn latency(s: &Sizes) -> Res<()> {
    for size in [64usize, 4096] {
        let req_len = frame_len(Kind::Request, "ECHO", size, true)?;
        let resp_len = frame_len(Kind::Response, "ECHO", size, true)?;
        let (addr, _h, tids) = tcp_echo_server_tids(1, req_len, resp_len)?;
        let mut tcp = TcpClient::connect(addr, req_len, resp_len)?;
        let pin = Pin::new(&tids);
        let body = vec![7u8; size];
        let mut servers = Vec::new();
        let mut rows: Vec<TimedRow> = Vec::new();
        for mode in [AES, Mode::Plain] {
            let server = echo_server(mode)?;
            let client = mode.builder().start()?;
            let conn = client.connect(server.local_addr())?;
            for (kind, label) in [("ECHOP", "pool handler"), ("ECHO", "inline handler")] {
                let c = conn.clone();
                let b = body.clone();
                rows.push((
                    format!("p2prs {label}, {}", mode.name()),
                    Box::new(move || p2prs_once(&c, kind, &b)),
                ));
            }
            if size == 64 {
                // The normal user path: a request by node ID to a neighbour.
                let ring_server = echo_server(mode)?;
                let rs_id = ring_server.create_network()?;
                let ring_client = mode.builder().start()?;
                ring_client.join_network(&[ring_server.local_addr()])?;
                let rc = ring_client.clone();
                let b = body.clone();
                rows.push((
                    format!("p2prs request by ID, 2-node ring, {}", mode.name()),
                    Box::new(move || {
                        let msg = Message::bytes("ECHO", b.clone());
                        let t = Instant::now();
                        rc.request(rs_id, msg)?;
                        Ok(t.elapsed())
                    }),
                ));
                servers.push(ring_server);
                servers.push(ring_client);
            }
            servers.push(server);
            servers.push(client);
        }
        for _ in 0..s.warmup {
            tcp.once()?;
            for (_, f) in rows.iter_mut() {
                f()?;
            }
        }
        let per_round = s.iters.div_ceil(s.rounds).max(1);
        let mut t_tcp = Vec::new();
        let mut t_free = Vec::new();
        let mut all_pinned = true;
        let mut t_rows: Vec<Vec<Duration>> = vec![Vec::new(); rows.len()];
        for _ in 0..s.rounds {
            // Every row, TCP's too, starts each round with untimed round
            // trips (a tenth of a round): its connection sat idle while the
            // other rows ran, and its first round trips after that (a
            // sleeping reader's wake, a thread moved to another CPU) are
            // not its pace.
            let settle = per_round / 10;
            // TCP as it falls, after the p2prs rows as before pinning.
            for _ in 0..settle {
                tcp.once()?;
            }
            for _ in 0..per_round {
                t_free.push(tcp.once()?);
            }
            if let Some(pin) = &pin {
                let (r, pinned) = pin.run(|| -> Res<()> {
                    for _ in 0..settle {
                        tcp.once()?;
                    }
                    for _ in 0..per_round {
                        t_tcp.push(tcp.once()?);
                    }
                    Ok(())
                });
                r?;
                all_pinned &= pinned;
            }
            for (i, (_, f)) in rows.iter_mut().enumerate() {
                for _ in 0..settle {
                    f()?;
                }
                for _ in 0..per_round {
                    t_rows[i].push(f()?);
                }
            }
        }
        let free_s = Stats::of(&mut t_free);
        let tcp_s = if t_tcp.is_empty() {
            free_s
        } else {
            Stats::of(&mut t_tcp)
        };
        header(&format!(
            "request round trip, {size} B body, one connection ({} each, {} interleaved rounds; frames {req_len}/{resp_len} B)",
            t_free.len(),
            s.rounds
        ));
        if !t_tcp.is_empty() {
            row("plain TCP ping-pong, threads on one CPU", tcp_s, tcp_s);
            if !all_pinned {
                println!("(taskset failed in some rounds: that row is partly unpinned)");
            }
        }
        row("plain TCP ping-pong, threads unpinned", free_s, tcp_s);
        for ((name, _), t) in rows.iter().zip(t_rows.iter_mut()) {
            row(name, Stats::of(t), tcp_s);
        }
        println!();
        drop(rows);
        for n in servers {
            n.shutdown();
        }
    }
    Ok(())
}

/// One latency row alone, for a profiler (`BENCH_ONLY=probe`, never part of
/// the default run): `BENCH_PROBE` is `pool`, `inline`, `id` (request by ID
/// in a 2-node ring) or `tcp` [pool], `BENCH_PROBE_PLAIN=1` for plaintext;
/// `BENCH_WARMUP` round trips, then `BENCH_ITERS`, 64 B bodies. Prints the
/// median and p99 and the round trips timed, to divide a profile's counts by.
fn probe(s: &Sizes) -> Res<()> {
    let which = std::env::var("BENCH_PROBE").unwrap_or_else(|_| "pool".into());
    let mode = if env("BENCH_PROBE_PLAIN", 0) == 1 {
        Mode::Plain
    } else {
        AES
    };
    let body = vec![7u8; 64];
    let mut nodes = Vec::new();
    let mut once: Box<dyn FnMut() -> Res<Duration>> = match which.as_str() {
        "tcp" => {
            let req_len = frame_len(Kind::Request, "ECHO", 64, true)?;
            let resp_len = frame_len(Kind::Response, "ECHO", 64, true)?;
            let (addr, _h) = tcp_echo_server(1, req_len, resp_len)?;
            let mut tcp = TcpClient::connect(addr, req_len, resp_len)?;
            Box::new(move || tcp.once())
        }
        "id" => {
            let server = echo_server(mode)?;
            let id = server.create_network()?;
            let client = mode.builder().start()?;
            client.join_network(&[server.local_addr()])?;
            let c = client.clone();
            nodes.push(server);
            nodes.push(client);
            Box::new(move || {
                let msg = Message::bytes("ECHO", body.clone());
                let t = Instant::now();
                c.request(id, msg)?;
                Ok(t.elapsed())
            })
        }
        other => {
            let kind = if other == "inline" { "ECHO" } else { "ECHOP" };
            let server = echo_server(mode)?;
            let client = mode.builder().start()?;
            let conn = client.connect(server.local_addr())?;
            nodes.push(server);
            nodes.push(client);
            Box::new(move || p2prs_once(&conn, kind, &body))
        }
    };
    for _ in 0..s.warmup {
        once()?;
    }
    println!("probe: {} round trips start", s.iters);
    let mut t = Vec::with_capacity(s.iters);
    for _ in 0..s.iters {
        t.push(once()?);
    }
    if env("BENCH_PROBE_SLOW", 0) > 0 {
        // When the slow round trips come: their index and the gap since the last.
        let cut = Duration::from_micros(env("BENCH_PROBE_SLOW", 0) as u64);
        let mut last = 0;
        let mut at = Duration::ZERO;
        let mut line = String::new();
        for (i, d) in t.iter().enumerate() {
            at += *d;
            if *d >= cut {
                line += &format!(
                    " {i}(+{},{:.0}µs@{:.0}ms)",
                    i - last,
                    d.as_secs_f64() * 1e6,
                    at.as_secs_f64() * 1e3
                );
                last = i;
            }
        }
        println!("slow:{line}");
    }
    let mut sorted = t.clone();
    sorted.sort_unstable();
    let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e6;
    println!(
        "p50 {:.1} p90 {:.1} p95 {:.1} p98 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
        q(0.5),
        q(0.9),
        q(0.95),
        q(0.98),
        q(0.99),
        q(0.999),
        q(1.0)
    );
    let st = Stats::of(&mut t);
    println!(
        "probe {which} ({}): {} round trips, median {:.1} µs, p99 {:.1} µs",
        mode.name(),
        s.iters,
        st.median,
        st.p99
    );
    drop(once);
    for n in nodes {
        n.shutdown();
    }
    Ok(())
}

// ---- requests per second -----------------------------------------------------

fn requests_per_second(s: &Sizes) -> Res<()> {
    let body = vec![7u8; 64];
    let req_len = frame_len(Kind::Request, "ECHO", 64, true)?;
    let resp_len = frame_len(Kind::Response, "ECHO", 64, true)?;
    println!(
        "## requests/s, 64 B body, {:.1} s per row and round, {} rounds (median of rounds)",
        s.secs / s.rounds as f64,
        s.rounds
    );
    println!("{:<44} {:>11} {:>11}", "", "requests/s", "vs TCP");
    for threads in [4usize, 16] {
        let (addr, _h) = tcp_echo_server(threads, req_len, resp_len)?;
        let mut tcps: Vec<TcpClient> = (0..threads)
            .map(|_| TcpClient::connect(addr, req_len, resp_len))
            .collect::<Res<_>>()?;
        let mut nodes = Vec::new();
        let mut conns = Vec::new();
        for mode in [AES, Mode::Plain] {
            let server = echo_server(mode)?;
            let client = mode.builder().start()?;
            let conn = client.connect(server.local_addr())?;
            conns.push((mode, "ECHOP", conn.clone()));
            conns.push((mode, "ECHO", conn));
            nodes.push(server);
            nodes.push(client);
        }
        let secs = s.secs / s.rounds as f64;
        let mut r_tcp = Vec::new();
        let mut r_p: Vec<Vec<f64>> = vec![Vec::new(); conns.len()];
        for _ in 0..s.rounds {
            // TCP: one connection per thread.
            let stop = AtomicBool::new(false);
            let count = AtomicU64::new(0);
            let t = Instant::now();
            thread::scope(|sc| {
                for c in tcps.iter_mut() {
                    let (stop, count) = (&stop, &count);
                    sc.spawn(move || {
                        let mut n = 0;
                        while !stop.load(Ordering::Relaxed) {
                            if c.once().is_err() {
                                break;
                            }
                            n += 1;
                        }
                        count.fetch_add(n, Ordering::Relaxed);
                    });
                }
                thread::sleep(Duration::from_secs_f64(secs));
                stop.store(true, Ordering::Relaxed);
            });
            r_tcp.push(count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64());
            for (i, (_, kind, conn)) in conns.iter().enumerate() {
                let stop = AtomicBool::new(false);
                let count = AtomicU64::new(0);
                let t = Instant::now();
                thread::scope(|sc| {
                    for _ in 0..threads {
                        let (stop, count, body) = (&stop, &count, &body);
                        sc.spawn(move || {
                            let mut n = 0;
                            while !stop.load(Ordering::Relaxed) {
                                if conn.request(Message::bytes(*kind, body.clone())).is_err() {
                                    break;
                                }
                                n += 1;
                            }
                            count.fetch_add(n, Ordering::Relaxed);
                        });
                    }
                    thread::sleep(Duration::from_secs_f64(secs));
                    stop.store(true, Ordering::Relaxed);
                });
                r_p[i].push(count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64());
            }
        }
        let tcp = median(&mut r_tcp);
        println!(
            "{:<44} {:>11.0} {:>10.2}x",
            format!("plain TCP, {threads} threads, a connection each"),
            tcp,
            1.0
        );
        for ((mode, kind, _), r) in conns.iter().zip(r_p.iter_mut()) {
            let m = median(r);
            let how = if *kind == "ECHO" { "inline" } else { "pool" };
            println!(
                "{:<44} {:>11.0} {:>10.2}x",
                format!("p2prs {how}, {threads} thr, one conn, {}", mode.name()),
                m,
                m / tcp
            );
        }
        drop(tcps);
        drop(conns);
        for n in nodes {
            n.shutdown();
        }
    }
    println!();
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

// ---- one-way streams ----------------------------------------------------------

/// A p2prs receiver that counts `SINK` messages (inline or pooled) and
/// signals when `expect` have arrived.
struct Sink {
    node: Node,
    count: Arc<AtomicU64>,
    done: mpsc::Receiver<()>,
    expect: Arc<AtomicU64>,
}

fn sink(mode: Mode, inline: bool) -> Res<Sink> {
    let node = mode.builder().start()?;
    let count = Arc::new(AtomicU64::new(0));
    let expect = Arc::new(AtomicU64::new(u64::MAX));
    let (tx, done) = mpsc::sync_channel(1);
    let (c, e) = (Arc::clone(&count), Arc::clone(&expect));
    let tx = std::sync::Mutex::new(tx);
    let h = move |req: &mut Incoming| -> p2prs::HandlerResult {
        let n = c.fetch_add(1, Ordering::AcqRel) + 1;
        std::hint::black_box(req.message().body());
        if n == e.load(Ordering::Acquire) {
            if let Ok(tx) = tx.lock() {
                let _ = tx.try_send(());
            }
        }
        Ok(())
    };
    if inline {
        node.add_inline_handler("SINK", h)?;
    } else {
        node.add_handler("SINK", h)?;
    }
    Ok(Sink {
        node,
        count,
        done,
        expect,
    })
}

/// Send `n` messages of `body` bytes from a fresh client; seconds taken
/// until the sink has them all.
fn p2prs_stream(sink: &Sink, mode: Mode, n: usize, body: usize) -> Res<f64> {
    let client = mode.builder().start()?;
    let conn = client.connect(sink.node.local_addr())?;
    // Warm the connection up.
    sink.count.store(0, Ordering::Release);
    sink.expect.store(1, Ordering::Release);
    conn.send(Message::bytes("SINK", vec![1; body]))?;
    sink.done.recv_timeout(Duration::from_secs(10))?;
    sink.count.store(0, Ordering::Release);
    sink.expect.store(n as u64, Ordering::Release);
    // The bodies exist before the clock starts: the row times p2prs, not
    // the allocation of the caller's buffers.
    let bodies: Vec<Vec<u8>> = (0..n).map(|_| vec![1u8; body]).collect();
    let t = Instant::now();
    for b in bodies {
        conn.send(Message::bytes("SINK", b))?;
    }
    sink.done.recv_timeout(Duration::from_secs(120))?;
    let secs = t.elapsed().as_secs_f64();
    conn.close();
    client.shutdown();
    Ok(secs)
}

/// Plain TCP: `n` length-prefixed frames of `len` bytes, read into one
/// buffer; `distinct`: each frame from its own buffer, filled before the
/// clock starts, as the p2prs row sends each body from its own (so both
/// read the same amount of memory; one buffer sent again and again stays
/// in the cache).
fn tcp_stream(n: usize, len: usize, distinct: bool) -> Res<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = thread::Builder::new().name("bench-tcp-sink".into()).spawn(
        move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; len];
            let mut pre = [0u8; 4];
            for _ in 0..n {
                s.read_exact(&mut pre)?;
                let l = u32::from_be_bytes(pre) as usize;
                s.read_exact(&mut buf[..l])?;
            }
            s.write_all(b"k")
        },
    )?;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut frame = (len as u32).to_be_bytes().to_vec();
    frame.resize(4 + len, 1);
    let frames: Vec<Vec<u8>> = if distinct {
        (0..n).map(|_| frame.clone()).collect()
    } else {
        vec![frame]
    };
    let t = Instant::now();
    if distinct {
        // Each frame is freed once written, as p2prs frees each body it
        // sent (with every buffer made before the clock, each was mapped
        // on its own, and each free unmaps it).
        for f in frames {
            s.write_all(&f)?;
        }
    } else {
        for f in frames.iter().cycle().take(n) {
            s.write_all(f)?;
        }
    }
    s.read_exact(&mut [0u8; 1])?;
    let secs = t.elapsed().as_secs_f64();
    reader.join().map_err(|_| "TCP sink panicked")??;
    Ok(secs)
}

/// Bare TCP + Noise (`snow`, XX handshake, then 64 KiB records): `n`
/// messages of `len` bytes, each sealed as its own records and written with
/// one `write`, decrypted by the reader into one buffer; `distinct` as for
/// [`tcp_stream`].
fn noise_stream(cipher: Cipher, n: usize, len: usize, distinct: bool) -> Res<f64> {
    const REC: usize = 65_535;
    const TAG: usize = 16;
    let name = match cipher {
        Cipher::AesGcm => "Noise_XX_25519_AESGCM_BLAKE2s",
        _ => "Noise_XX_25519_ChaChaPoly_BLAKE2s",
    };
    let params: snow::params::NoiseParams = name.parse()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let p2 = params.clone();
    let reader = thread::Builder::new()
        .name("bench-noise-sink".into())
        .spawn(move || -> Res<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let key = snow::Builder::new(p2.clone()).generate_keypair()?;
            let mut hs = snow::Builder::new(p2)
                .local_private_key(&key.private)?
                .build_responder()?;
            let mut msg = vec![0u8; REC];
            let mut out = vec![0u8; REC];
            let l = read_rec(&mut s, &mut msg)?;
            hs.read_message(&msg[..l], &mut out)?;
            let l = hs.write_message(&[], &mut out)?;
            write_rec(&mut s, &out[..l])?;
            let l = read_rec(&mut s, &mut msg)?;
            hs.read_message(&msg[..l], &mut out)?;
            let mut tr = hs.into_transport_mode()?;
            let mut plain = vec![0u8; len.max(1) + REC];
            for _ in 0..n {
                let mut got = 0;
                while got < len {
                    let l = read_rec(&mut s, &mut msg)?;
                    got += tr.read_message(&msg[..l], &mut plain[got..])?;
                }
            }
            s.write_all(b"k")?;
            Ok(())
        })?;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let key = snow::Builder::new(params.clone()).generate_keypair()?;
    let mut hs = snow::Builder::new(params)
        .local_private_key(&key.private)?
        .build_initiator()?;
    let mut msg = vec![0u8; REC];
    let mut out = vec![0u8; REC];
    let l = hs.write_message(&[], &mut out)?;
    write_rec(&mut s, &out[..l])?;
    let l = read_rec(&mut s, &mut msg)?;
    hs.read_message(&msg[..l], &mut out)?;
    let l = hs.write_message(&[], &mut out)?;
    write_rec(&mut s, &out[..l])?;
    let mut tr = hs.into_transport_mode()?;
    let payloads: Vec<Vec<u8>> = (0..if distinct { n } else { 1 })
        .map(|_| vec![1u8; len])
        .collect();
    let mut wire = Vec::with_capacity(len + len / (REC - TAG) * 18 + 18);
    let t = Instant::now();
    let mut send = |payload: &[u8]| -> Res<()> {
        wire.clear();
        for chunk in payload.chunks(REC - 2 - TAG) {
            let start = wire.len();
            wire.resize(start + 2 + chunk.len() + TAG, 0);
            let l = tr.write_message(chunk, &mut wire[start + 2..])?;
            wire[start..start + 2].copy_from_slice(&(l as u16).to_be_bytes());
        }
        s.write_all(&wire)?;
        Ok(())
    };
    if distinct {
        // As in `tcp_stream`, each payload is freed once written.
        for payload in payloads {
            send(&payload)?;
        }
    } else {
        for payload in payloads.iter().cycle().take(n) {
            send(payload)?;
        }
    }
    s.read_exact(&mut [0u8; 1])?;
    let secs = t.elapsed().as_secs_f64();
    reader.join().map_err(|_| "Noise sink panicked")??;
    Ok(secs)
}

fn read_rec(s: &mut TcpStream, buf: &mut [u8]) -> Res<usize> {
    let mut pre = [0u8; 2];
    s.read_exact(&mut pre)?;
    let l = u16::from_be_bytes(pre) as usize;
    s.read_exact(&mut buf[..l])?;
    Ok(l)
}

fn write_rec(s: &mut TcpStream, b: &[u8]) -> Res<()> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    s.write_all(&v)?;
    Ok(())
}

/// Rows of a one-way stream: name and a run returning seconds.
type StreamRow<'a> = (String, Box<dyn FnMut() -> Res<f64> + 'a>);

fn stream_rows(
    title: &str,
    unit: &str,
    per_sec: f64,
    rounds: usize,
    rows: &mut [StreamRow],
) -> Res<()> {
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in rows.iter_mut().enumerate() {
            secs[i].push(f()?);
        }
    }
    println!("## {title} (median of {rounds} interleaved rounds)");
    println!("{:<44} {:>11} {:>11}", "", unit, "vs TCP");
    let tcp = per_sec / median(&mut secs[0].clone());
    for ((name, _), s) in rows.iter().zip(secs.iter_mut()) {
        let rate = per_sec / median(s);
        println!("{name:<44} {rate:>11.2} {:>10.2}x", rate / tcp);
    }
    println!();
    Ok(())
}

fn bulk(s: &Sizes) -> Res<()> {
    const MIB: usize = 1 << 20;
    let n = s.bulk_mib.max(1);
    let rounds = s.rounds.min(3);
    let len = frame_len(Kind::Message, "SINK", MIB, false)?;
    let sinks: Vec<(Mode, Sink)> = [Mode::Plain, AES, CHACHA]
        .into_iter()
        .map(|m| Ok((m, sink(m, true)?)))
        .collect::<Res<_>>()?;
    let mut rows: Vec<StreamRow> = vec![(
        "plain TCP, length-prefixed 1 MiB frames".into(),
        Box::new(move || tcp_stream(n, len, true)),
    )];
    for c in [Cipher::AesGcm, Cipher::ChaChaPoly] {
        rows.push((
            format!("bare TCP + Noise, {}", Mode::Secure(c).name()),
            Box::new(move || noise_stream(c, n, len, true)),
        ));
    }
    for (m, sk) in &sinks {
        let m = *m;
        rows.push((
            format!("p2prs 1 MiB bodies, {}", m.name()),
            Box::new(move || p2prs_stream(sk, m, n, MIB)),
        ));
    }
    // BENCH_BULK_ROWS (a word of the row names, e.g. `AES`) keeps the rows
    // that name it, and plain TCP, which the ratios need: for profiles.
    if let Ok(keep) = std::env::var("BENCH_BULK_ROWS") {
        let mut i = 0;
        rows.retain(|(name, _)| {
            i += 1;
            i == 1 || name.contains(keep.as_str())
        });
    }
    stream_rows(
        &format!("one-way 1 MiB bodies, {n} per row and round"),
        "GB/s",
        (n * MIB) as f64 / 1e9,
        rounds,
        &mut rows,
    )?;
    drop(rows);
    for (_, sk) in sinks {
        sk.node.shutdown();
    }
    Ok(())
}

fn small(s: &Sizes) -> Res<()> {
    let n = s.small.max(1);
    let rounds = s.rounds.min(3);
    let len = frame_len(Kind::Message, "SINK", 64, false)?;
    let mut sinks: Vec<(Mode, bool, Sink)> = Vec::new();
    for m in [Mode::Plain, AES, CHACHA] {
        for inline in [true, false] {
            sinks.push((m, inline, sink(m, inline)?));
        }
    }
    let mut rows: Vec<StreamRow> = vec![(
        format!("plain TCP, length-prefixed {len} B frames"),
        Box::new(move || tcp_stream(n, len, false)),
    )];
    for c in [Cipher::AesGcm, Cipher::ChaChaPoly] {
        rows.push((
            format!("bare TCP + Noise, {}", Mode::Secure(c).name()),
            Box::new(move || noise_stream(c, n, len, false)),
        ));
    }
    for (m, inline, sk) in &sinks {
        let m = *m;
        rows.push((
            format!(
                "p2prs 64 B, {} handler, {}",
                if *inline { "inline" } else { "pool" },
                m.name()
            ),
            Box::new(move || p2prs_stream(sk, m, n, 64)),
        ));
    }
    stream_rows(
        &format!("one-way 64 B messages, {n} per row and round"),
        "M msg/s",
        n as f64 / 1e6,
        rounds,
        &mut rows,
    )?;
    drop(rows);
    for (_, _, sk) in sinks {
        sk.node.shutdown();
    }
    Ok(())
}

// ---- connect + handshake ------------------------------------------------------

fn connects(s: &Sizes) -> Res<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let acceptor = thread::Builder::new()
        .name("bench-tcp-accept".into())
        .spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                drop(s);
            }
        })?;
    let mut nodes = Vec::new();
    let mut rows: Vec<TimedRow> = Vec::new();
    for mode in [AES, CHACHA, Mode::Plain] {
        let server = mode.builder().start()?;
        let client = mode.builder().start()?;
        let (c, at) = (client.clone(), server.local_addr());
        rows.push((
            format!("p2prs connect + handshake, {}", mode.name()),
            Box::new(move || {
                let t = Instant::now();
                let conn = c.connect(at)?;
                let d = t.elapsed();
                conn.close();
                Ok(d)
            }),
        ));
        nodes.push(server);
        nodes.push(client);
    }
    let mut t_tcp = Vec::new();
    let mut t_rows: Vec<Vec<Duration>> = vec![Vec::new(); rows.len()];
    for _ in 0..s.connects {
        let t = Instant::now();
        let c = TcpStream::connect(addr)?;
        t_tcp.push(t.elapsed());
        drop(c);
        for (i, (_, f)) in rows.iter_mut().enumerate() {
            t_rows[i].push(f()?);
        }
    }
    let tcp = Stats::of(&mut t_tcp);
    header(&format!("new connection, {} each", s.connects));
    row("plain TCP connect", tcp, tcp);
    for ((name, _), t) in rows.iter().zip(t_rows.iter_mut()) {
        row(name, Stats::of(t), tcp);
    }
    println!();
    stop.store(true, Ordering::Release);
    let _ = TcpStream::connect(addr);
    let _ = acceptor.join();
    drop(rows);
    for n in nodes {
        n.shutdown();
    }
    Ok(())
}

// ---- a ring in one process ------------------------------------------------------

fn ring(s: &Sizes) -> Res<()> {
    for mode in [AES, Mode::Plain] {
        ring_once(s, mode)?;
    }
    Ok(())
}

fn ring_once(s: &Sizes, mode: Mode) -> Res<()> {
    let n = s.ring.max(2);
    println!(
        "## a ring of {n} nodes in one process, {}, default config",
        mode.name()
    );
    let root = mode.builder().start()?;
    root.add_inline_handler("ECHO", echo)?;
    let mut nodes = vec![root];
    let first = mode.builder().start()?;
    first.add_inline_handler("ECHO", echo)?;
    let t = Instant::now();
    first.join_network(&[nodes[0].local_addr()])?;
    let first_join = t.elapsed();
    nodes.push(first);
    let mut joins = vec![first_join];
    let all = Instant::now();
    for _ in 2..n {
        let node = mode.builder().start()?;
        node.add_inline_handler("ECHO", echo)?;
        let t = Instant::now();
        node.join_network(&[nodes[0].local_addr()])?;
        joins.push(t.elapsed());
        nodes.push(node);
    }
    let joined = all.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|x| x.network_size() == n) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let sized = all.elapsed();
    let all_sized = nodes.iter().all(|x| x.network_size() == n);
    let js = Stats::of(&mut joins);
    println!(
        "first join into a 1-node network: {:.2} ms; then {} sequential joins: {:.1} ms in all \
         (per join median {:.2} ms, p99 {:.2} ms)",
        first_join.as_secs_f64() * 1e3,
        n - 2,
        joined.as_secs_f64() * 1e3,
        js.median / 1e3,
        js.p99 / 1e3,
    );
    println!(
        "every node reports network_size() = {n}: {} {:.1} ms after the joins began \
         ({:.1} ms after the last join returned)",
        if all_sized {
            "after"
        } else {
            "NOT within 30 s;"
        },
        sized.as_secs_f64() * 1e3,
        (sized - joined).as_secs_f64() * 1e3
    );
    // Requests by ID between random pairs (most are first contacts).
    let ids: Vec<NodeId> = nodes
        .iter()
        .map(|x| x.id().ok_or("not joined"))
        .collect::<Result<_, _>>()?;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut first_contact = Vec::new();
    let mut again = Vec::new();
    let body = vec![7u8; 64];
    for _ in 0..s.ring_requests {
        let a = (next() % n as u64) as usize;
        let mut b = (next() % n as u64) as usize;
        if a == b {
            b = (b + 1) % n;
        }
        let t = Instant::now();
        nodes[a].request(ids[b], Message::bytes("ECHO", body.clone()))?;
        first_contact.push(t.elapsed());
        for _ in 1..env("BENCH_RING_AGAIN", 1) {
            nodes[a].request(ids[b], Message::bytes("ECHO", body.clone()))?;
        }
        let t = Instant::now();
        nodes[a].request(ids[b], Message::bytes("ECHO", body.clone()))?;
        again.push(t.elapsed());
    }
    let f = Stats::of(&mut first_contact);
    // Sorted by `Stats::of`: the spread, since some pairs were connected
    // already (the other way round, or by an earlier pair).
    let at = |q: f64| quantile(&first_contact, q);
    println!(
        "request by ID between random pairs by quantile: p10 {:.0} µs, p25 {:.0}, p50 {:.0}, \
         p75 {:.0}, p90 {:.0}, p95 {:.0}, p99 {:.0}",
        at(0.1),
        at(0.25),
        at(0.5),
        at(0.75),
        at(0.9),
        at(0.95),
        at(0.99)
    );
    let g = Stats::of(&mut again);
    println!(
        "request by ID between random pairs ({} pairs): median {:.1} µs, p99 {:.1} µs; \
         the same pair again at once: median {:.1} µs, p99 {:.1} µs; {} threads in the process",
        s.ring_requests,
        f.median,
        f.p99,
        g.median,
        g.p99,
        p2prs::running_threads()
    );
    println!();
    for x in nodes {
        x.shutdown();
    }
    Ok(())
}

// ---- latency and hops against ring size -------------------------------------------

/// The most nodes in one ring of the chart.
const CHART_MAX_NODES: usize = 1024;

/// Threads a node of the chart's rings may take at most: its own and both
/// ends of its connections, all in this process (8-18 measured).
const CHART_THREADS_PER_NODE: usize = 18;

/// The thread budget the chart raises the process's to at most.
const CHART_MAX_BUDGET: usize = 15_000;

/// What one ring size measured.
struct ChartRow {
    fig: svg::Row,
    /// Until every node reported the right size, after the last join.
    sized: Option<Duration>,
    hops_max: u32,
    lookups: usize,
    lookups_failed: usize,
    requests: usize,
    requests_failed: usize,
    threads: usize,
}

fn chart(s: &Sizes) -> Res<()> {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!("## latency and lookup hops against ring size, one process, default config (AES-GCM)");
    println!(
        "{:>6} {:>9} {:>9} {:>8} {:>8} {:>11} {:>11} {:>11} {:>11} {:>8}",
        "nodes",
        "sized ms",
        "hops avg",
        "hops p99",
        "hops max",
        "first med",
        "first p99",
        "again med",
        "again p99",
        "failed"
    );
    let mut rows = Vec::new();
    for &n in &s.chart_sizes {
        let r = chart_once(s, n)?;
        println!(
            "{:>6} {:>9} {:>9.2} {:>8.0} {:>8} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>8}",
            n,
            r.sized
                .map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3)),
            r.fig.hops.0,
            r.fig.hops.1,
            r.hops_max,
            r.fig.first.0,
            r.fig.first.1,
            r.fig.again.0,
            r.fig.again.1,
            format!("{}+{}", r.lookups_failed, r.requests_failed)
        );
        rows.push(r);
    }
    println!(
        "(latency in µs; sized: after the last join; then {} ms idle; {} lookups of random \
         node IDs from random nodes and {} requests by ID between distinct random pairs per \
         size, each pair then asked again at once; failed: lookups+requests)",
        s.chart_settle.as_millis(),
        s.chart_lookups,
        s.chart_requests
    );
    let date = utc_date();
    let figs: Vec<svg::Row> = rows.iter().map(|r| r.fig).collect();
    let doc = svg::render(
        &figs,
        "p2prs: request latency and lookup hops against ring size",
        &format!(
            "{date}, {cores} cores, one process, default config (AES-GCM); \
             per size: {} pairs, {} lookups",
            s.chart_requests, s.chart_lookups
        ),
    );
    let path = std::path::Path::new(&s.chart_svg);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, doc)?;
    let tsv = path.with_extension("tsv");
    let mut t = format!(
        "# p2prs bench chart, {date}, {cores} cores; latency in µs\n\
         nodes\tsized_ms\thops_mean\thops_p99\thops_max\tlookups\tlookups_failed\t\
         first_median_us\tfirst_p99_us\tagain_median_us\tagain_p99_us\trequests\t\
         requests_failed\tthreads\n"
    );
    for r in &rows {
        t.push_str(&format!(
            "{}\t{}\t{:.3}\t{}\t{}\t{}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{}\t{}\t{}\n",
            r.fig.nodes,
            r.sized
                .map_or("".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            r.fig.hops.0,
            r.fig.hops.1,
            r.hops_max,
            r.lookups,
            r.lookups_failed,
            r.fig.first.0,
            r.fig.first.1,
            r.fig.again.0,
            r.fig.again.1,
            r.requests,
            r.requests_failed,
            r.threads
        ));
    }
    std::fs::write(&tsv, t)?;
    println!("chart: {}; figures: {}", path.display(), tsv.display());
    println!();
    Ok(())
}

/// One ring of `n` nodes: build, wait for the sizes, measure, shut down.
fn chart_once(s: &Sizes, n: usize) -> Res<ChartRow> {
    let want = (n * CHART_THREADS_PER_NODE + 200).min(CHART_MAX_BUDGET);
    if p2prs::max_threads() < want {
        p2prs::set_max_threads(want);
    }
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d ^ n as u64);
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let built = (|| -> Res<()> {
        for i in 0..n {
            let node = Node::builder().start()?;
            node.add_handler("ECHO", echo)?;
            if i > 0 {
                let via = nodes[rng.below(i)].local_addr();
                node.join_network(&[via])?;
            } else {
                node.create_network()?;
            }
            nodes.push(node);
        }
        Ok(())
    })();
    let measured = built.and_then(|()| chart_measure(s, &nodes, &mut rng));
    for x in nodes {
        x.shutdown();
    }
    measured
}

fn chart_measure(s: &Sizes, nodes: &[Node], rng: &mut Rng) -> Res<ChartRow> {
    let n = nodes.len();
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    while !nodes.iter().all(|x| x.network_size() == n) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let sized = nodes
        .iter()
        .all(|x| x.network_size() == n)
        .then(|| t.elapsed());
    // The ring is busy right after its joins (finger lookups on new
    // connections, until the finger refresh backs off): let it settle.
    thread::sleep(s.chart_settle);
    let ids: Vec<NodeId> = nodes
        .iter()
        .map(|x| x.id().ok_or("not joined"))
        .collect::<Result<_, _>>()?;

    let mut hops = Vec::with_capacity(s.chart_lookups);
    let mut lookups_failed = 0;
    for _ in 0..s.chart_lookups {
        let (a, b) = (rng.below(n), rng.below(n));
        match nodes[a].lookup(ids[b]) {
            Ok(r) if r.owner.id == ids[b] => hops.push(r.hops),
            _ => lookups_failed += 1,
        }
    }
    hops.sort_unstable();
    let hops_mean = hops.iter().map(|&h| h as f64).sum::<f64>() / hops.len().max(1) as f64;
    let hops_p99 = hops
        .get(((hops.len().max(1) - 1) as f64 * 0.99).round() as usize)
        .copied()
        .unwrap_or(0);

    // Distinct unordered pairs, each asked once in a random direction, so
    // that a first request is the pair's first (the ring's own links may
    // already join some pairs).
    let mut pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
        .collect();
    let k = s.chart_requests.min(pairs.len());
    for i in 0..k {
        let j = i + rng.below(pairs.len() - i);
        pairs.swap(i, j);
    }
    let body = vec![7u8; 64];
    let (mut first, mut again) = (Vec::with_capacity(k), Vec::with_capacity(k));
    let mut failed = 0;
    for &(a, b) in &pairs[..k] {
        let (a, b) = if rng.below(2) == 0 { (a, b) } else { (b, a) };
        let t = Instant::now();
        if nodes[a]
            .request(ids[b], Message::bytes("ECHO", body.clone()))
            .is_err()
        {
            failed += 1;
            continue;
        }
        first.push(t.elapsed());
        let t = Instant::now();
        match nodes[a].request(ids[b], Message::bytes("ECHO", body.clone())) {
            Ok(_) => again.push(t.elapsed()),
            Err(_) => failed += 1,
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        if v.is_empty() {
            (0.0, 0.0)
        } else {
            let s = Stats::of(v);
            (s.median, s.p99)
        }
    };
    Ok(ChartRow {
        fig: svg::Row {
            nodes: n,
            first: stats(&mut first),
            again: stats(&mut again),
            hops: (hops_mean, hops_p99 as f64),
        },
        sized,
        hops_max: hops.last().copied().unwrap_or(0),
        lookups: s.chart_lookups,
        lookups_failed,
        requests: k,
        requests_failed: failed,
        threads: p2prs::running_threads(),
    })
}

/// Today's date (UTC) as `YYYY-MM-DD HH:MM UTC`, from the system clock.
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

//! The attacks of issue 8 at full size against one node, with a good peer
//! making requests throughout: prints, per attack, the node's peak threads,
//! descriptors and resident memory, and the good peer's latency. See
//! `docs/robustness.md`.
//!
//! ```sh
//! cargo run --release --example attack            # every attack
//! cargo run --release --example attack -- silent  # one: silent greeted trickle
//!                                                 # partial json flood deaf
//! ```
//!
//! The node runs in a child process (this program, run with `serve`), so
//! that its threads, descriptors and memory are measured apart from the
//! attackers'. It has the default `Config`, except that the per-IP limit
//! applies to loopback too (`limit_loopback`): the attackers connect from
//! other addresses of 127.0.0.0/8, the good peer from 127.0.0.1.

use p2prs::testing::SecureStream;
use p2prs::{Identity, Message, Node};
use socket2::{Domain, Socket, Type};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

/// One attack against the node at an address; says what it did.
type Attack = fn(SocketAddr) -> String;

fn main() -> Result<(), p2prs::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return serve();
    }
    let only = args.first().cloned();
    let (mut child, addr) = start_node();
    let pid = child.id();
    let good = Node::builder().host("127.0.0.1").port(0).start()?;
    let conn = good.connect(addr)?;
    let base = sample(pid);
    let _ = NODE.set((pid, base.fds));
    println!(
        "node pid {pid} at {addr}: idle with {} threads, {} fds, {:.1} MiB",
        base.threads,
        base.fds,
        base.rss as f64 / MIB
    );
    println!(
        "| attack | node peak threads | peak fds | peak RSS | good peer: requests, median, p99, max, failed | \
         after |"
    );
    println!("|---|---|---|---|---|---|");
    let attacks: [(&str, Attack); 7] = [
        ("silent", silent),
        ("greeted", greeted),
        ("trickle", trickle),
        ("partial", partial),
        ("json", json),
        ("flood", flood),
        ("deaf", deaf),
    ];
    for (name, attack) in attacks {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let sampler = Sampler::start(pid);
        let prober = Prober::start(conn.clone());
        let note = attack(addr);
        let lat = prober.stop();
        let peak = sampler.stop();
        let fresh = fresh_request(addr);
        let back = settle(pid, base.rss);
        println!(
            "| {name}: {note} | {} | {} | {:.0} MiB | {} | new peer {fresh}; {back} |",
            peak.threads,
            peak.fds,
            peak.rss as f64 / MIB,
            lat
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

/// The node under attack: ADD (pooled) and ECHO (a 64 KiB answer).
fn serve() -> Result<(), p2prs::Error> {
    let node = Node::builder()
        .host("127.0.0.1")
        .port(0)
        .configure(|c| c.limit_loopback = true)
        .start()?;
    node.add_handler("ADD", |req| {
        let n: i64 = req.message().data()?;
        req.respond(Message::new("ADD RESP", n + 1))?;
        Ok(())
    })?;
    node.add_handler("ECHO", |req| {
        req.respond(Message::new("ECHO", ()).with_body(vec![1u8; 64 * 1024]))?;
        Ok(())
    })?;
    println!("{}", node.local_addr());
    // Until the parent closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    node.shutdown();
    Ok(())
}

fn start_node() -> (Child, SocketAddr) {
    let exe = std::env::current_exe().expect("this program's path");
    let mut child = Command::new(exe)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the node");
    let mut line = String::new();
    let out = child.stdout.take().expect("the node's stdout");
    BufReader::new(out)
        .read_line(&mut line)
        .expect("the node's address");
    (child, line.trim().parse().expect("an address"))
}

// ---- Measuring ------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct Usage {
    threads: usize,
    fds: usize,
    rss: usize,
}

fn sample(pid: u32) -> Usage {
    let count = |d: &str| std::fs::read_dir(format!("/proc/{pid}/{d}")).map_or(0, |r| r.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0)
        * 1024;
    Usage {
        threads: count("task"),
        fds: count("fd"),
        rss,
    }
}

/// Samples the node every 20 ms and keeps the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Usage>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("attack-sampler".into())
            .spawn(move || {
                let mut peak = Usage::default();
                while !s.load(Ordering::Acquire) {
                    let u = sample(pid);
                    peak.threads = peak.threads.max(u.threads);
                    peak.fds = peak.fds.max(u.fds);
                    peak.rss = peak.rss.max(u.rss);
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            })
            .expect("sampler thread");
        Sampler { stop, handle }
    }

    fn stop(self) -> Usage {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}

/// The good peer: an `ADD` request on its own connection every 10 ms.
struct Prober {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<Duration>, usize)>,
}

impl Prober {
    fn start(conn: p2prs::Connection) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("attack-good-peer".into())
            .spawn(move || {
                let mut lat = Vec::new();
                let mut failed = 0;
                while !s.load(Ordering::Acquire) {
                    let t = Instant::now();
                    match conn.request(Message::new("ADD", 1)) {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(e) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("good peer: {e}");
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (lat, failed)
            })
            .expect("prober thread");
        Prober { stop, handle }
    }

    fn stop(self) -> String {
        self.stop.store(true, Ordering::Release);
        let (mut lat, failed) = self.handle.join().unwrap_or_default();
        lat.sort();
        let at = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        format!(
            "{}, {:.2} ms, {:.1} ms, {:.0} ms, {failed}",
            lat.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

/// A new peer (a new connection) makes one request after the attack.
fn fresh_request(addr: SocketAddr) -> String {
    let Ok(n) = Node::builder().host("127.0.0.1").port(0).start() else {
        return "could not start".into();
    };
    let t = Instant::now();
    match n.request_timeout(addr, Message::new("ADD", 1), Duration::from_secs(5)) {
        Ok(_) => format!("served in {:.1} ms", t.elapsed().as_secs_f64() * 1000.0),
        Err(e) => format!("NOT served: {e}"),
    }
}

/// Wait (up to a minute) for the node's memory to come back near `base`.
fn settle(pid: u32, base: usize) -> String {
    let t = Instant::now();
    loop {
        let rss = sample(pid).rss;
        if rss <= base + 32 * 1024 * 1024 || t.elapsed() > Duration::from_secs(60) {
            return format!(
                "RSS {:.0} MiB {:.1} s after",
                rss as f64 / MIB,
                t.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- Attacking -------------------------------------------------------------

/// The `i`th attacker address of attack `a`: `n_ips` addresses 127.a.0.x.
fn source(a: u8, i: usize, n_ips: usize) -> IpAddr {
    let k = i % n_ips;
    IpAddr::V4(Ipv4Addr::new(127, a, (k / 250) as u8, (k % 250 + 1) as u8))
}

fn connect_from(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    s.bind(&SocketAddr::new(from, 0).into()).ok()?;
    s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
    Some(s.into())
}

fn greet(from: IpAddr, to: SocketAddr) -> Option<SecureStream> {
    let s = connect_from(from, to)?;
    let id = Identity::generate().ok()?;
    SecureStream::handshake(s, id, None, b"{}").ok()
}

fn frame(header: &[u8], body_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&(body_len as u32).to_be_bytes());
    v.extend_from_slice(header);
    v
}

fn is_closed(s: &TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
    let mut b = [0u8; 256];
    match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// 10,000 TCP connections that never send a byte, from 250 addresses.
fn silent(addr: SocketAddr) -> String {
    let t = Instant::now();
    let mut held = Vec::new();
    for i in 0..10_000 {
        if let Some(s) = connect_from(source(1, i, 250), addr) {
            held.push(s);
        }
    }
    let opened = t.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    let closed = held.iter().filter(|s| is_closed(s)).count();
    format!(
        "10,000 silent connections ({} opened in {:.1} s; {closed} closed by the node within 4 s)",
        held.len(),
        opened.as_secs_f64()
    )
}

/// 1,100 connections that complete the handshake and say nothing, from 50
/// addresses (22 each, under the per-IP limit of 32).
fn greeted(addr: SocketAddr) -> String {
    let mut held = Vec::new();
    for i in 0..1_100 {
        if let Some(s) = greet(source(2, i, 50), addr) {
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let fresh = fresh_request(addr);
    let closed = held.iter().filter(|s| is_closed(s.socket())).count();
    format!(
        "1,100 greeted silent connections ({} greeted, {closed} closed by the node; during it a new peer {fresh})",
        held.len()
    )
}

/// 500 connections that declare a 16 MiB frame and send it at 1 byte/s.
fn trickle(addr: SocketAddr) -> String {
    let mut held: Vec<SecureStream> = (0..500)
        .filter_map(|i| greet(source(3, i, 25), addr))
        .collect();
    let head = br#"{"kind":"message","type":"X","bin":true}"#;
    for s in &mut held {
        let mut f = frame(head, 16 * 1024 * 1024 - 100);
        f.push(0);
        let _ = s.write_plain(&f);
    }
    let t = Instant::now();
    let mut all_closed = None;
    while t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(1));
        for s in &mut held {
            let _ = s.write_plain(&[0]);
        }
        if held.iter().all(|s| is_closed(s.socket())) {
            all_closed = Some(t.elapsed());
            break;
        }
    }
    format!(
        "500 frames of 16 MiB at 1 byte/s ({} greeted; all closed by the node: {})",
        held.len(),
        all_closed.map_or("not within 20 s".into(), |d| format!(
            "after {:.1} s",
            d.as_secs_f64()
        ))
    )
}

/// 40 connections each sending all of a 16 MiB frame but its last byte.
fn partial(addr: SocketAddr) -> String {
    let senders: Vec<JoinHandle<(usize, usize)>> = (0..8)
        .map(|k| {
            std::thread::Builder::new()
                .name(format!("attack-partial-{k}"))
                .spawn(move || {
                    let head = br#"{"kind":"message","type":"X","bin":true}"#;
                    let body = 16 * 1024 * 1024 - 100;
                    let mut bytes = frame(head, body);
                    bytes.resize(bytes.len() + body - 1, 7);
                    let mut held = Vec::new();
                    let mut full = 0;
                    for i in 0..5 {
                        let Some(mut s) = greet(source(4, k * 5 + i, 40), addr) else {
                            continue;
                        };
                        let _ = s.socket().set_write_timeout(Some(Duration::from_secs(2)));
                        if s.write_plain(&bytes).is_ok() {
                            full += 1;
                        }
                        held.push(s);
                    }
                    std::thread::sleep(Duration::from_secs(8));
                    let closed = held.iter().filter(|s| is_closed(s.socket())).count();
                    (full, closed)
                })
                .expect("sender thread")
        })
        .collect();
    let (mut full, mut closed) = (0, 0);
    for h in senders {
        let (f, c) = h.join().unwrap_or_default();
        full += f;
        closed += c;
    }
    format!(
        "40 frames of 16 MiB less 1 byte ({full} sent whole; {closed} closed by the node after 8 s)"
    )
}

/// Four frames whose 16 MiB JSON header is `[0,0,0,…]`, at once.
fn json(addr: SocketAddr) -> String {
    let handles: Vec<JoinHandle<bool>> = (0..4)
        .map(|k| {
            std::thread::Builder::new()
                .name(format!("attack-json-{k}"))
                .spawn(move || {
                    let Some(mut s) = greet(source(5, k, 4), addr) else {
                        return false;
                    };
                    let mut header = b"{\"kind\":\"message\",\"type\":\"X\",\"data\":[0".to_vec();
                    while header.len() < 16 * 1024 * 1024 - 64 {
                        header.extend_from_slice(b",0");
                    }
                    header.extend_from_slice(b"]}");
                    let mut bytes = frame(&header, 0);
                    bytes.truncate(8 + header.len());
                    let _ = s.socket().set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = s.write_plain(&bytes);
                    std::thread::sleep(Duration::from_millis(500));
                    is_closed(s.socket())
                })
                .expect("json thread")
        })
        .collect();
    let closed = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(false))
        .filter(|c| *c)
        .count();
    format!("4 frames with a 16 MiB JSON header ({closed} closed by the node)")
}

/// One peer pipelining `ADD` requests for 10 s, reading the answers.
fn flood(addr: SocketAddr) -> String {
    let Some(mut s) = greet(source(6, 0, 1), addr) else {
        return "flood: no connection".into();
    };
    let Ok(reader) = s.socket().try_clone() else {
        return "flood: no clone".into();
    };
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    // The answers are encrypted: count their bytes, not their frames.
    let drain = std::thread::Builder::new()
        .name("attack-flood-reader".into())
        .spawn(move || {
            let _ = reader.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            while !st.load(Ordering::Acquire) {
                match (&reader).read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(_) => {}
                }
            }
            total
        })
        .expect("reader thread");
    let t = Instant::now();
    let mut sent = 0u64;
    let _ = s.socket().set_write_timeout(Some(Duration::from_secs(2)));
    while t.elapsed() < Duration::from_secs(10) {
        let mut batch = Vec::new();
        for _ in 0..100 {
            sent += 1;
            let h = format!(r#"{{"kind":"request","type":"ADD","data":1,"req":{sent}}}"#);
            batch.extend(frame(h.as_bytes(), 0));
        }
        if s.write_plain(&batch).is_err() {
            break;
        }
    }
    stop.store(true, Ordering::Release);
    let got = drain.join().unwrap_or(0);
    format!(
        "one peer pipelining requests for 10 s ({sent} sent, {:.1} MiB of answers read)",
        got as f64 / MIB
    )
}

/// 20 peers that ask for 64 KiB answers, 500 each, and never read.
fn deaf(addr: SocketAddr) -> String {
    let t = Instant::now();
    let mut held = Vec::new();
    for i in 0..20 {
        let Some(mut s) = greet(source(7, i, 20), addr) else {
            continue;
        };
        let _ = s
            .socket()
            .set_write_timeout(Some(Duration::from_millis(500)));
        let mut batch = Vec::new();
        for req in 0..500 {
            let h = format!(r#"{{"kind":"request","type":"ECHO","req":{req}}}"#);
            batch.extend(frame(h.as_bytes(), 0));
        }
        let _ = s.write_plain(&batch);
        held.push(s);
    }
    let mut closed_after = None;
    while t.elapsed() < Duration::from_secs(20) {
        // Not read (that would drain them): the node's descriptors say when
        // it has closed them.
        let (pid, fds) = NODE.get().copied().unwrap_or_default();
        if sample(pid).fds <= fds + 2 {
            closed_after = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    format!(
        "20 peers asking for 500 answers of 64 KiB, never reading (all closed by the node: {})",
        closed_after.map_or("not within 20 s".into(), |d| format!(
            "after {:.1} s",
            d.as_secs_f64()
        ))
    )
}

/// The node's process and its descriptors when idle.
static NODE: std::sync::OnceLock<(u32, usize)> = std::sync::OnceLock::new();

//! Request round trip over one constant loopback connection, against a plain
//! `std::net` TCP ping-pong that moves the same number of bytes each way.
//!
//! ```text
//! cargo run --release --example bench
//! cargo run --release --example bench -- --iters 20000 --warmup 2000
//! ```
//!
//! Rows:
//! - `tcp`: blocking ping-pong on one socket pair, TCP_NODELAY, one thread
//!   each side; request and response are exactly as long as p2prs's frames.
//! - `p2prs`: `Connection::request` to a user handler that responds with the
//!   request's data: the full path, including the hop to a handler thread.
//! - `p2prs (built-in ping)`: a request of the built-in `p2prs.ping`, which
//!   is answered on the connection thread (with a shorter, empty response):
//!   a diagnostic row, its difference to `p2prs` is mostly the cost of the
//!   hop to a handler thread.
//!
//! The rows run interleaved in rounds so that drift in CPU frequency or
//! load affects them alike.

use p2prs::wire::{encoded_size, Frame, Kind, FRAME_PREFIX};
use p2prs::{Connection, Message, Node};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const ROUNDS: usize = 10;

fn payload() -> Value {
    json!({"op": "echo", "seq": 12345, "text": "hello, p2prs"})
}

fn usage() -> ! {
    eprintln!("usage: bench [--iters N] [--warmup N]   (defaults: 10000, 1000)");
    std::process::exit(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut iters = 10_000usize;
    let mut warmup = 1_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--iters" => iters = num(),
            "--warmup" => warmup = num(),
            _ => usage(),
        }
    }
    let per_round = iters.div_ceil(ROUNDS).max(1);

    // ---- p2prs -----------------------------------------------------------------
    let server = Node::builder().start()?;
    server.add_handler("ECHO", |req| {
        let data = req.message().data_value().clone();
        req.respond(Message::new("ECHO", data))?;
        Ok(())
    })?;
    let client = Node::builder().start()?;
    let conn = client.connect(server.local_addr())?;

    // Frame sizes p2prs puts on the wire for this payload (request IDs of
    // five digits, as most of the run has).
    let mut req = Frame::new(Kind::Request, "ECHO", payload());
    req.req = Some(12_345);
    let mut resp = Frame::new(Kind::Response, "ECHO", payload());
    resp.req = Some(12_345);
    let req_len = FRAME_PREFIX + encoded_size(&req)? as usize;
    let resp_len = FRAME_PREFIX + encoded_size(&resp)? as usize;

    // ---- plain TCP ----------------------------------------------------------------
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let tcp_addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut inb = vec![0u8; req_len];
        let out = vec![b'r'; resp_len];
        loop {
            if let Err(e) = s.read_exact(&mut inb) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    return Ok(());
                }
                return Err(e);
            }
            s.write_all(&out)?;
        }
    });
    let mut tcp = TcpStream::connect(tcp_addr)?;
    tcp.set_nodelay(true)?;
    let tcp_out = vec![b'q'; req_len];
    let mut tcp_in = vec![0u8; resp_len];

    let mut tcp_once = || -> std::io::Result<Duration> {
        let t = Instant::now();
        tcp.write_all(&tcp_out)?;
        tcp.read_exact(&mut tcp_in)?;
        Ok(t.elapsed())
    };
    let p2prs_once = |conn: &Connection, kind: &str| -> p2prs::Result<Duration> {
        let msg = Message::new(kind, payload());
        let t = Instant::now();
        conn.request(msg)?;
        Ok(t.elapsed())
    };

    // Warm-up.
    for _ in 0..warmup {
        tcp_once()?;
        p2prs_once(&conn, "ECHO")?;
        p2prs_once(&conn, "p2prs.ping")?;
    }
    // Check once that the answers are what we think.
    let r = conn.request(Message::new("ECHO", payload()))?;
    assert_eq!(r.data_value(), &payload());
    let r = conn.request(Message::new("p2prs.ping", payload()))?;
    assert_eq!(r.kind(), "p2prs.pong");

    let mut t_tcp = Vec::with_capacity(per_round * ROUNDS);
    let mut t_p2p = Vec::with_capacity(per_round * ROUNDS);
    let mut t_ping = Vec::with_capacity(per_round * ROUNDS);
    for _ in 0..ROUNDS {
        for _ in 0..per_round {
            t_tcp.push(tcp_once()?);
        }
        for _ in 0..per_round {
            t_p2p.push(p2prs_once(&conn, "ECHO")?);
        }
        for _ in 0..per_round {
            t_ping.push(p2prs_once(&conn, "p2prs.ping")?);
        }
    }
    drop(tcp);
    let _ = echo.join();
    conn.close();
    client.shutdown();
    server.shutdown();

    let tcp = Stats::of(&mut t_tcp);
    let p2p = Stats::of(&mut t_p2p);
    let ping = Stats::of(&mut t_ping);
    println!(
        "request round trip over one loopback connection: {} iterations each \
         (after {warmup} warm-up), {ROUNDS} interleaved rounds",
        t_tcp.len()
    );
    println!("bytes each way: request {req_len}, response {resp_len}");
    println!();
    println!(
        "{:<24} {:>11} {:>11} {:>11} {:>11}",
        "", "median µs", "p99 µs", "mean µs", "min µs"
    );
    for (name, s) in [
        ("plain TCP ping-pong", &tcp),
        ("p2prs request", &p2p),
        ("p2prs (built-in ping)", &ping),
    ] {
        println!(
            "{name:<24} {:>11.1} {:>11.1} {:>11.1} {:>11.1}",
            s.median, s.p99, s.mean, s.min
        );
    }
    println!();
    let ratio = p2p.median / tcp.median;
    println!(
        "ratio p2prs / TCP: median {ratio:.2}x, p99 {:.2}x   (goal: median within 1.50x: {})",
        p2p.p99 / tcp.p99,
        if ratio <= 1.5 { "met" } else { "NOT met" }
    );
    println!(
        "ratio built-in ping / TCP: median {:.2}x (no handler-thread hop)",
        ping.median / tcp.median
    );
    Ok(())
}

struct Stats {
    median: f64,
    p99: f64,
    mean: f64,
    min: f64,
}

impl Stats {
    /// Figures in microseconds.
    fn of(v: &mut [Duration]) -> Stats {
        v.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| us(v[((v.len() - 1) as f64 * q).round() as usize]);
        Stats {
            median: at(0.5),
            p99: at(0.99),
            mean: v.iter().map(|d| us(*d)).sum::<f64>() / v.len() as f64,
            min: us(v[0]),
        }
    }
}

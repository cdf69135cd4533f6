//! Request round trip over one constant loopback connection, against a plain
//! `std::net` TCP ping-pong that moves the same number of bytes each way.
//!
//! ```text
//! cargo run --release --example bench
//! cargo run --release --example bench -- --iters 20000 --warmup 2000
//! ```
//!
//! Rows:
//! - `plain TCP ping-pong`: blocking ping-pong on one socket pair, TCP_NODELAY, one thread
//!   each side; request and response are exactly as long as p2prs's frames.
//! - `p2prs inline handler`: `Connection::request` to a user handler added
//!   with `Node::add_inline_handler`, which responds with the request's data
//!   on the connection's own thread. This is the row the goal is about.
//! - `p2prs pool handler`: the same request to the same handler added with
//!   `Node::add_handler` (as type `ECHO POOL`: 5 bytes longer each way),
//!   which runs on a handler-pool thread: one more thread hand-off on the
//!   server side.
//! - `p2prs built-in ping`: a request of the built-in `p2prs.ping`, which is
//!   answered on the connection thread with a shorter, empty response: a
//!   diagnostic row.
//! - `inline, wire client`: a diagnostic row. The same request to the inline
//!   handler, but from a bare socket that speaks the p2prs wire protocol
//!   (`p2prs::wire`) on the requesting thread: frames are encoded and
//!   decoded as `Connection::request` does, but the answer is read by the
//!   thread that waits for it. Its difference to `p2prs inline handler` is
//!   the client-side hand-off from the connection thread to the requester.
//!
//! The rows run interleaved in rounds so that drift in CPU frequency or
//! load affects them alike. See `docs/performance.md`.

use p2prs::wire::{
    encode_hello, encoded_size, write_frame, Decoder, Frame, Hello, Kind, FRAME_PREFIX,
};
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
    let echo = |req: &mut p2prs::Incoming| -> p2prs::HandlerResult {
        let data = req.message().data_value().clone();
        req.respond(Message::new("ECHO", data))?;
        Ok(())
    };
    server.add_inline_handler("ECHO", echo)?;
    server.add_handler("ECHO POOL", echo)?;
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

    // ---- p2prs server, wire-level client ------------------------------------------
    let mut wire = WireClient::connect(server.local_addr())?;

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

    let mut wire_once = || -> Result<Duration, Box<dyn std::error::Error>> {
        let t = Instant::now();
        wire.request("ECHO", payload())?;
        Ok(t.elapsed())
    };

    // Warm-up.
    for _ in 0..warmup {
        tcp_once()?;
        wire_once()?;
        p2prs_once(&conn, "ECHO")?;
        p2prs_once(&conn, "ECHO POOL")?;
        p2prs_once(&conn, "p2prs.ping")?;
    }
    // Check once that the answers are what we think.
    for kind in ["ECHO", "ECHO POOL"] {
        let r = conn.request(Message::new(kind, payload()))?;
        assert_eq!(r.data_value(), &payload());
    }
    let r = conn.request(Message::new("p2prs.ping", payload()))?;
    assert_eq!(r.kind(), "p2prs.pong");

    let mut t_tcp = Vec::with_capacity(per_round * ROUNDS);
    let mut t_inline = Vec::with_capacity(per_round * ROUNDS);
    let mut t_pool = Vec::with_capacity(per_round * ROUNDS);
    let mut t_ping = Vec::with_capacity(per_round * ROUNDS);
    let mut t_wire = Vec::with_capacity(per_round * ROUNDS);
    for _ in 0..ROUNDS {
        for _ in 0..per_round {
            t_tcp.push(tcp_once()?);
        }
        for _ in 0..per_round {
            t_inline.push(p2prs_once(&conn, "ECHO")?);
        }
        for _ in 0..per_round {
            t_pool.push(p2prs_once(&conn, "ECHO POOL")?);
        }
        for _ in 0..per_round {
            t_ping.push(p2prs_once(&conn, "p2prs.ping")?);
        }
        for _ in 0..per_round {
            t_wire.push(wire_once()?);
        }
    }
    drop(wire);
    drop(tcp);
    let _ = echo.join();
    conn.close();
    client.shutdown();
    server.shutdown();

    let tcp = Stats::of(&mut t_tcp);
    let inline = Stats::of(&mut t_inline);
    let pool = Stats::of(&mut t_pool);
    let ping = Stats::of(&mut t_ping);
    let wire = Stats::of(&mut t_wire);
    println!(
        "request round trip over one loopback connection: {} iterations each \
         (after {warmup} warm-up), {ROUNDS} interleaved rounds",
        t_tcp.len()
    );
    println!("bytes each way: request {req_len}, response {resp_len}");
    println!();
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>14} {:>11}",
        "", "median µs", "p99 µs", "mean µs", "min µs", "median / TCP", "p99 / TCP"
    );
    for (name, s) in [
        ("plain TCP ping-pong", &tcp),
        ("p2prs inline handler", &inline),
        ("p2prs pool handler", &pool),
        ("p2prs built-in ping", &ping),
        ("inline, wire client", &wire),
    ] {
        println!(
            "{name:<24} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>13.2}x {:>10.2}x",
            s.median,
            s.p99,
            s.mean,
            s.min,
            s.median / tcp.median,
            s.p99 / tcp.p99
        );
    }
    println!();
    let ratio = inline.median / tcp.median;
    println!(
        "goal, p2prs (inline handler) median within 1.50x of plain TCP: {ratio:.2}x, {}",
        if ratio <= 1.5 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// A client that speaks the p2prs wire protocol on a bare socket and reads
/// each answer on the thread that asked (diagnostic row only).
struct WireClient {
    stream: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
    out: Vec<u8>,
    next_req: u64,
}

impl WireClient {
    const MAX: usize = 1 << 20;

    fn connect(addr: std::net::SocketAddr) -> Result<WireClient, Box<dyn std::error::Error>> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.write_all(&encode_hello(&Hello {
            listen: None,
            id: None,
        }))?;
        let mut c = WireClient {
            stream,
            decoder: Decoder::new(Self::MAX),
            buf: vec![0u8; 32 * 1024],
            out: Vec::new(),
            next_req: 1,
        };
        while c.decoder.next_hello()?.is_none() {
            c.fill()?;
        }
        Ok(c)
    }

    fn fill(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let n = self.stream.read(&mut self.buf)?;
        if n == 0 {
            return Err("the p2prs node closed the connection".into());
        }
        self.decoder.push(&self.buf[..n]);
        Ok(())
    }

    fn request(&mut self, kind: &str, data: Value) -> Result<Frame, Box<dyn std::error::Error>> {
        let mut frame = Frame::new(Kind::Request, kind, data);
        frame.req = Some(self.next_req);
        self.next_req += 1;
        self.out.clear();
        write_frame(&mut self.out, &frame, Self::MAX)?;
        self.stream.write_all(&self.out)?;
        loop {
            match self.decoder.next_frame()? {
                Some(f) if f.req == frame.req && f.kind == Kind::Response => return Ok(f),
                Some(f) => return Err(format!("unexpected answer {f:?}").into()),
                None => self.fill()?,
            }
        }
    }
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

//! Helpers shared by the integration tests.
//!
//! Every test binary includes this module with `mod support;`; not every
//! binary uses every helper.
#![allow(dead_code)]

use p2prs::{Config, Message, Node};
use parking_lot::Mutex;
use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A generous deadline for conditions that normally hold within milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Short timeouts so that deliberate timeouts keep the suite fast.
pub fn test_config() -> Config {
    Config {
        handshake_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        handler_threads: 4,
        ..Config::default()
    }
}

/// A node on 127.0.0.1 and an ephemeral port, with [`test_config`].
pub fn node() -> Node {
    node_with(|_| {})
}

/// A node with [`test_config`] adjusted by `f`.
pub fn node_with(f: impl FnOnce(&mut Config)) -> Node {
    capture_logs();
    let mut cfg = test_config();
    f(&mut cfg);
    Node::builder()
        .host("127.0.0.1")
        .port(0)
        .config(cfg)
        .start()
        .expect("starting a test node")
}

/// A node that answers `ADD n` with `ADD RESP n+1`.
pub fn adder() -> Node {
    let n = node();
    add_adder(&n);
    n
}

/// Install the `ADD` handler on `node`.
pub fn add_adder(node: &Node) {
    node.add_handler("ADD", |req| {
        let n: i64 = req.message().data()?;
        req.respond(Message::new("ADD RESP", n + 1))?;
        Ok(())
    })
    .expect("adding the ADD handler");
}

/// Poll `cond` every few milliseconds until it holds or `within` has passed;
/// returns whether it held. This waits for a condition; it is not a sleep.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Threads of this process, from /proc/self/task.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("reading /proc/self/task")
        .count()
}

// ---- Captured log records ------------------------------------------------

struct Capture {
    lines: Mutex<Vec<String>>,
    echo: bool,
}

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("p2prs")
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!("{} {}", r.level(), r.args());
        if self.echo {
            eprintln!("[{:?}] {line}", std::thread::current().name());
        }
        if r.level() <= log::Level::Warn {
            self.lines.lock().push(line);
        }
    }

    fn flush(&self) {}
}

static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();

/// Record the library's warnings (and errors) for [`warned`]. Set
/// `P2PRS_TEST_LOG=1` to also see every record on stderr.
pub fn capture_logs() {
    CAPTURE.get_or_init(|| {
        let echo = std::env::var_os("P2PRS_TEST_LOG").is_some();
        let cap: &'static Capture = Box::leak(Box::new(Capture {
            lines: Mutex::new(Vec::new()),
            echo,
        }));
        if log::set_logger(cap).is_ok() {
            log::set_max_level(if echo {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Warn
            });
        }
        cap
    });
}

/// Whether a warning or error containing every one of `needles` was logged.
pub fn warned(needles: &[&str]) -> bool {
    CAPTURE.get().is_some_and(|c| {
        c.lines
            .lock()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    })
}

// ---- A peer that speaks the wire format by hand ---------------------------

/// The hello bytes: magic, version (u16 BE), JSON length (u32 BE), JSON.
pub fn hello_bytes(magic: &[u8; 4], version: u16, json: &[u8]) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&(json.len() as u32).to_be_bytes());
    v.extend_from_slice(json);
    v
}

/// A frame: header length (u32 BE), body length (u32 BE), header, body.
pub fn frame_bytes(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(header);
    v.extend_from_slice(body);
    v
}

/// A raw TCP peer for bad-input tests: it sends exactly the bytes it is told.
pub struct RawPeer {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawPeer {
    /// Connect, without saying anything.
    pub fn connect(addr: SocketAddr) -> RawPeer {
        RawPeer::from_stream(TcpStream::connect(addr).expect("raw connect"))
    }

    /// Connect from the local IP address `from` (any of 127.0.0.0/8 works
    /// on loopback), so the peer sees another host.
    pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> RawPeer {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::new(from, 0).into()).expect("bind");
        s.connect(&addr.into()).expect("raw connect");
        RawPeer::from_stream(s.into())
    }

    fn from_stream(stream: TcpStream) -> RawPeer {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawPeer {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connect, exchange hellos (ours names no listening address), and
    /// return the peer ready for frames.
    pub fn handshaken(addr: SocketAddr) -> RawPeer {
        let mut p = RawPeer::connect(addr);
        p.send(&hello_bytes(b"P2PR", 1, b"{}"))
            .expect("sending the hello");
        let hello = p.read_hello();
        assert!(hello.is_object(), "hello JSON is an object: {hello}");
        p
    }

    /// How the node sees this peer (it announced no listening address).
    pub fn addr(&self) -> String {
        self.stream.local_addr().expect("local addr").to_string()
    }

    /// Write raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Send one frame with a JSON header and a body.
    pub fn send_frame(&mut self, header: &Value, body: &[u8]) -> io::Result<()> {
        let h = serde_json::to_vec(header).expect("header JSON");
        self.send(&frame_bytes(&h, body))
    }

    /// Read until `n` bytes are buffered; panics on EOF or after [`PATIENCE`].
    fn fill(&mut self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        let mut chunk = [0u8; 64 * 1024];
        while self.buf.len() < n {
            assert!(Instant::now() < deadline, "nothing from the node in time");
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the node closed the connection unexpectedly"),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("reading from the node: {e}"),
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.fill(n);
        self.buf.drain(..n).collect()
    }

    /// Read the node's hello, check its magic and version, return its JSON.
    pub fn read_hello(&mut self) -> Value {
        let prefix = self.take(10);
        assert_eq!(&prefix[..4], b"P2PR", "magic");
        assert_eq!(u16::from_be_bytes([prefix[4], prefix[5]]), 1, "version");
        let len = u32::from_be_bytes([prefix[6], prefix[7], prefix[8], prefix[9]]) as usize;
        let json = self.take(len);
        serde_json::from_slice(&json).expect("hello JSON")
    }

    /// Read one frame: its JSON header and its body.
    pub fn read_frame(&mut self) -> (Value, Vec<u8>) {
        let prefix = self.take(8);
        let h = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let b = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
        let header = self.take(h);
        let body = self.take(b);
        (serde_json::from_slice(&header).expect("header JSON"), body)
    }

    /// Send request `req` of type `kind` with `data` and return the answer's header.
    pub fn request(&mut self, req: u64, kind: &str, data: Value) -> Value {
        let h = serde_json::json!({"kind": "request", "type": kind, "data": data, "req": req});
        self.send_frame(&h, &[]).expect("sending a request");
        let (answer, _) = self.read_frame();
        answer
    }

    /// Whether the node closes this connection within `within`: a read returns
    /// end of file or an error (a reset). Bytes the node sends first are skipped.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

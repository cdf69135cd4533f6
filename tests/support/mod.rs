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

/// Answer `ECHO` requests on `n` with the message they carry (the ring
/// tests' default handler).
pub fn echo_requests(n: &Node) {
    n.add_handler("ECHO", |req| {
        let m = req.message().clone();
        req.respond(m)?;
        Ok(())
    })
    .expect("ECHO handler");
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

/// The good peer's request is answered, and quickly.
pub fn assert_served(good: &Node, server: &Node, within: Duration) {
    let t = Instant::now();
    let r = good
        .request_timeout(server.local_addr(), Message::new("ADD", 41), PATIENCE)
        .expect("the good peer is answered");
    assert_eq!(r.data::<i64>().unwrap(), 42);
    assert!(
        t.elapsed() < within,
        "the good peer waited {:?} (more than {within:?})",
        t.elapsed()
    );
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

/// The process's thread count once it holds still: three reads 10 ms apart
/// that agree (within `PATIENCE`). A read of `/proc/self/task` while other
/// threads exit can miss live ones (it is read by position), so a count
/// taken as a baseline must not be taken while threads come and go.
pub fn settled_thread_count() -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (thread_count(), 0);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = thread_count();
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        if last.1 >= 2 {
            break;
        }
    }
    last.0
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

/// A frame: header length (u32 BE), body length (u32 BE), header, body.
pub fn frame_bytes(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(header);
    v.extend_from_slice(body);
    v
}

/// This process's resident memory in bytes (Linux; 0 where unknown).
pub fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0)
        * 1024
}

/// A raw TCP peer for bad-input tests: it sends exactly the bytes it is
/// told, in the clear before a handshake, and inside the encrypted channel
/// after [`RawPeer::handshaken`] (a misbehaving member).
pub struct RawPeer {
    pub stream: TcpStream,
    secure: Option<p2prs::testing::SecureStream>,
    buf: Vec<u8>,
}

/// The preamble of the secure handshake: `P2PR`, version, flags, tie-break.
pub fn preamble_bytes(magic: &[u8; 4], version: u16, flags: u8) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v.push(flags);
    v.push(0);
    v.extend_from_slice(&[7u8; 8]);
    v
}

/// The flags byte of a default node's preamble (AES-GCM, no network key).
pub const DEFAULT_FLAGS: u8 = 4;

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
            secure: None,
            buf: Vec::new(),
        }
    }

    /// Run the secure handshake with a new identity, saying `hello` (raw JSON).
    pub fn secure(&mut self, hello: &[u8]) -> p2prs::Result<()> {
        self.secure_as(p2prs::Identity::generate()?, None, hello)
    }

    /// Run the secure handshake as `identity`, with a network key.
    pub fn secure_as(
        &mut self,
        identity: p2prs::Identity,
        network_key: Option<&str>,
        hello: &[u8],
    ) -> p2prs::Result<()> {
        let stream = self.stream.try_clone().expect("clone");
        let s = p2prs::testing::SecureStream::handshake(stream, identity, network_key, hello)?;
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)));
        self.secure = Some(s);
        Ok(())
    }

    /// Connect, run the secure handshake (our hello names no listening
    /// address), and return the peer ready for frames.
    pub fn handshaken(addr: SocketAddr) -> RawPeer {
        let mut p = RawPeer::connect(addr);
        p.secure(b"{}").expect("handshake");
        p
    }

    /// Connect to a node in plaintext mode and exchange preambles and
    /// hellos (ours names no listening address): ready for frames in the
    /// clear.
    pub fn plain_handshaken(addr: SocketAddr) -> RawPeer {
        let mut p = RawPeer::connect(addr);
        let hello = b"{}";
        // Protocol version 3, flag 2: plaintext.
        let mut out = preamble_bytes(b"P2PR", 3, 2);
        out.extend_from_slice(&(hello.len() as u32).to_be_bytes());
        out.extend_from_slice(hello);
        p.stream
            .write_all(&out)
            .expect("plaintext preamble and hello");
        // The node's preamble (16 bytes) and hello (u32 length + JSON).
        let mut head = [0u8; 20];
        p.read_exact_within(&mut head, Duration::from_secs(5));
        let len = u32::from_be_bytes([head[16], head[17], head[18], head[19]]) as usize;
        let mut hello = vec![0u8; len];
        p.read_exact_within(&mut hello, Duration::from_secs(5));
        p
    }

    fn read_exact_within(&mut self, buf: &mut [u8], within: Duration) {
        let deadline = Instant::now() + within;
        let mut got = 0;
        while got < buf.len() {
            assert!(Instant::now() < deadline, "the node's hello did not come");
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => panic!("the node closed the connection"),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the node's hello: {e}"),
            }
        }
    }

    /// A frame, if one arrives within `within` (none if the connection closes).
    pub fn try_read_frame(&mut self, within: Duration) -> Option<(Value, Vec<u8>)> {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if self.buf.len() >= 8 {
                let h = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                let b = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
                    as usize;
                if self.buf.len() >= 8 + h + b {
                    return Some(self.read_frame());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.recv(&mut chunk) {
                Ok(0) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return None,
            }
        }
    }

    /// The node's hello, once handshaken.
    pub fn peer_hello(&self) -> Value {
        self.secure
            .as_ref()
            .map(|s| s.peer_hello.clone())
            .unwrap_or_default()
    }

    /// How the node sees this peer (it announced no listening address).
    pub fn addr(&self) -> String {
        self.stream.local_addr().expect("local addr").to_string()
    }

    /// Write bytes: raw before the handshake, encrypted after it.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.secure {
            Some(s) => s.write_plain(bytes),
            None => {
                self.stream.write_all(bytes)?;
                self.stream.flush()
            }
        }
    }

    fn recv(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        match &mut self.secure {
            Some(s) => s.read_plain(chunk),
            None => self.stream.read(chunk),
        }
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
            match self.recv(&mut chunk) {
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

    /// Read the node's preamble (sent at once, before any handshake).
    pub fn read_preamble(&mut self) -> Vec<u8> {
        self.take(16)
    }

    /// Read one handshake message (`length (u16) | message`), raw.
    pub fn read_handshake_message(&mut self) -> Vec<u8> {
        let len = self.take(2);
        self.take(u16::from_be_bytes([len[0], len[1]]) as usize)
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
            match self.recv(&mut chunk) {
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

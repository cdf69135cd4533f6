//! Tunable settings: intervals, timeouts, sizes.

use std::time::Duration;

/// Settings of a node. Every field has a sensible default; change what you need.
///
/// ```
/// use std::time::Duration;
/// let cfg = p2prs::Config {
///     request_timeout: Duration::from_secs(5),
///     ..Default::default()
/// };
/// assert_eq!(cfg.max_frame_size, 16 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame accepted or sent, header and body together (default 16 MiB).
    pub max_frame_size: usize,
    /// How long a new connection may take to say hello (default 5 s).
    pub handshake_timeout: Duration,
    /// How long a TCP connect may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long one write may block before the connection is given up (default 10 s).
    pub write_timeout: Duration,
    /// How long [`Node::request`](crate::Node::request) waits for an answer (default 10 s).
    pub request_timeout: Duration,
    /// A temporary connection this node opened is closed after this long unused (default 30 s).
    pub idle_timeout: Duration,
    /// Threads that run user handlers (default 2). Handlers run off the
    /// connection threads, so a handler may itself make requests.
    pub handler_threads: usize,
    /// Stack size of each connection thread (default 256 KiB). Connection
    /// threads only decode frames and do the ring's bookkeeping.
    pub connection_stack_size: usize,
    /// Period of the ring stabilizer (default 500 ms).
    pub stabilize_interval: Duration,
    /// How long one request of the ring's own protocol (a lookup hop, a
    /// stabilize exchange) may take before the peer counts as failed (default 3 s).
    pub ring_timeout: Duration,
    /// Fingers refreshed per stabilizer round (default 4).
    pub fingers_per_round: usize,
    /// Length of the successor list, about log2 of the expected ring size (default 8).
    pub successor_list_len: usize,
    /// Most connections open at once; further inbound ones are refused (default 1024).
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            handler_threads: 2,
            connection_stack_size: 256 * 1024,
            stabilize_interval: Duration::from_millis(500),
            ring_timeout: Duration::from_secs(3),
            fingers_per_round: 4,
            successor_list_len: 8,
            max_connections: 1024,
        }
    }
}

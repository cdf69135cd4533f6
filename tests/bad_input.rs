//! Bad input from a peer closes only that peer's connection, with a logged
//! warning; the node keeps serving every other peer.
//!
//! Each test opens a constant connection from a good peer first, feeds the
//! node bad bytes over a raw socket, checks that the raw socket gets closed,
//! and then checks that both the good peer's existing connection and a brand
//! new peer are still answered.

mod support;

use p2prs::{Connection, Message, Node};
use serde_json::json;
use support::*;

struct Fixture {
    server: Node,
    _good: Node,
    good_conn: Connection,
}

fn fixture() -> Fixture {
    let server = adder();
    let good = node();
    let good_conn = good.connect(server.local_addr()).unwrap();
    // The good peer is served before the bad input arrives.
    let resp = good_conn.request(Message::new("ADD", 1)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 2);
    Fixture {
        server,
        _good: good,
        good_conn,
    }
}

impl Fixture {
    fn addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The raw peer's connection is closed, a warning naming it was logged,
    /// and good peers are still served.
    fn assert_only_bad_peer_dropped(&self, bad: &mut RawPeer, warning: &str) {
        let who = bad.addr();
        assert!(
            bad.closed_within(PATIENCE),
            "the node closes the bad connection"
        );
        assert!(
            wait_until(PATIENCE, || warned(&[&who, warning])),
            "a warning about {who} saying {warning:?} was logged"
        );
        self.assert_serving();
    }

    /// The good peer's connection is open and answered, a new peer is
    /// answered, and the server holds no connection but the good one.
    fn assert_serving(&self) {
        self.assert_serving_with(0);
    }

    /// As [`Fixture::assert_serving`], with `others` more connections open.
    fn assert_serving_with(&self, others: usize) {
        assert!(self.good_conn.is_open(), "the good connection stays open");
        let resp = self.good_conn.request(Message::new("ADD", 17)).unwrap();
        assert_eq!(resp.data::<i64>().unwrap(), 18);
        {
            let fresh = node();
            let resp = fresh.request(self.addr(), Message::new("ADD", 41)).unwrap();
            assert_eq!(resp.data::<i64>().unwrap(), 42);
        }
        assert!(
            wait_until(PATIENCE, || self.server.connection_count() == 1 + others),
            "server has {} connections, expected {}",
            self.server.connection_count(),
            1 + others
        );
    }
}

#[test]
fn garbage_instead_of_a_hello() {
    let f = fixture();
    let mut bad = RawPeer::connect(f.addr());
    bad.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n\x00\xff\x13\x37 garbage")
        .ok();
    f.assert_only_bad_peer_dropped(&mut bad, "not a p2prs peer");
}

#[test]
fn garbage_after_the_hello() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    // Pseudo-random bytes: whatever the prefix decodes to, the frame is refused.
    let mut x: u32 = 0x1234_5678;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    bad.send(&garbage).ok();
    f.assert_only_bad_peer_dropped(&mut bad, "closing");
}

#[test]
fn wrong_magic() {
    let f = fixture();
    let mut bad = RawPeer::connect(f.addr());
    bad.send(&preamble_bytes(b"P2PX", 3, DEFAULT_FLAGS)).ok();
    f.assert_only_bad_peer_dropped(&mut bad, "not a p2prs peer");
}

#[test]
fn wrong_version() {
    let f = fixture();
    let mut bad = RawPeer::connect(f.addr());
    bad.send(&preamble_bytes(b"P2PR", 4, DEFAULT_FLAGS)).ok();
    f.assert_only_bad_peer_dropped(&mut bad, "protocol version 4");
}

#[test]
fn invalid_json_hello() {
    let f = fixture();
    let mut bad = RawPeer::connect(f.addr());
    // The hello travels inside the encrypted handshake.
    bad.secure(b"{\"listen\": ").ok();
    f.assert_only_bad_peer_dropped(&mut bad, "invalid hello");
}

#[test]
fn hello_over_the_maximum() {
    let f = fixture();
    let mut bad = RawPeer::connect(f.addr());
    let mut hello = b"{\"pad\": \"".to_vec();
    hello.extend_from_slice(&[b'x'; 20_000]);
    hello.extend_from_slice(b"\"}");
    bad.secure(&hello).ok();
    f.assert_only_bad_peer_dropped(&mut bad, "invalid hello");
}

#[test]
fn truncated_frame_then_eof() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    let whole = frame_bytes(br#"{"kind":"request","type":"ADD","data":1,"req":1}"#, &[]);
    bad.send(&whole[..whole.len() - 5]).unwrap();
    // Half-close: the node reads end of file in the middle of the frame.
    bad.stream.shutdown(std::net::Shutdown::Write).unwrap();
    f.assert_only_bad_peer_dropped(&mut bad, "in the middle of a frame");
}

#[test]
fn length_over_the_maximum() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    // A prefix announcing ~4 GiB: refused from the 8 prefix bytes alone,
    // before anything is allocated or the rest arrives.
    let mut prefix = 16u32.to_be_bytes().to_vec();
    prefix.extend_from_slice(&u32::MAX.to_be_bytes());
    bad.send(&prefix).unwrap();
    f.assert_only_bad_peer_dropped(&mut bad, "exceeds the maximum");
}

#[test]
fn invalid_json_header() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    bad.send(&frame_bytes(br#"{"kind":"request","type":"ADD","#, &[]))
        .unwrap();
    f.assert_only_bad_peer_dropped(&mut bad, "malformed header");
}

#[test]
fn header_of_the_wrong_shape() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    // Valid JSON, but not an object with a kind.
    bad.send(&frame_bytes(b"[1,2,3]", &[])).unwrap();
    f.assert_only_bad_peer_dropped(&mut bad, "malformed header");
}

#[test]
fn empty_header() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    bad.send(&frame_bytes(b"", b"body")).unwrap();
    f.assert_only_bad_peer_dropped(&mut bad, "empty header");
}

#[test]
fn request_without_a_request_id() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    bad.send_frame(&json!({"kind": "request", "type": "ADD", "data": 1}), &[])
        .unwrap();
    f.assert_only_bad_peer_dropped(&mut bad, "lacks the field");
}

#[test]
fn unknown_frame_kind() {
    let f = fixture();
    let mut bad = RawPeer::handshaken(f.addr());
    bad.send_frame(&json!({"kind": "shout", "type": "ADD", "data": 1}), &[])
        .unwrap();
    f.assert_only_bad_peer_dropped(&mut bad, "unknown frame kind");
}

#[test]
fn message_of_a_type_without_handler_keeps_the_connection() {
    let f = fixture();
    let mut peer = RawPeer::handshaken(f.addr());
    peer.send_frame(&json!({"kind": "message", "type": "NOPE", "data": 1}), &[])
        .unwrap();
    // A request of that type is answered no_handler on the same connection...
    let answer = peer.request(7, "NOPE", json!(1));
    assert_eq!(answer["kind"], "error");
    assert_eq!(answer["req"], 7);
    assert_eq!(answer["error"]["code"], "no_handler");
    // ...which stays open and keeps serving.
    let answer = peer.request(8, "ADD", json!(17));
    assert_eq!(answer["kind"], "response");
    assert_eq!(answer["req"], 8);
    assert_eq!(answer["data"], 18);
    assert!(
        warned(&[&peer.addr(), "NOPE"]),
        "the dropped message was logged"
    );
    f.assert_serving_with(1);
    let answer = peer.request(9, "ADD", json!(1));
    assert_eq!(answer["data"], 2);
}

#[test]
fn response_to_an_unknown_request_is_ignored() {
    let f = fixture();
    let mut peer = RawPeer::handshaken(f.addr());
    peer.send_frame(&json!({"kind": "response", "type": "X", "req": 999}), &[])
        .unwrap();
    peer.send_frame(
        &json!({"kind": "error", "req": 998, "error": {"code": "x", "message": "y"}}),
        &[],
    )
    .unwrap();
    let answer = peer.request(1, "ADD", json!(17));
    assert_eq!(answer["data"], 18);
    f.assert_serving_with(1);
}

#[test]
fn silent_peer_is_closed_after_the_handshake_timeout() {
    let f = fixture();
    let mut silent = RawPeer::connect(f.addr());
    // The node sends its preamble first; the silent peer never answers.
    let preamble = silent.read_preamble();
    assert_eq!(&preamble[..6], b"P2PR\x00\x03");
    // While the silent peer waits, others are served.
    f.assert_serving();
    assert!(
        silent.closed_within(PATIENCE),
        "closed after the 1 s handshake timeout"
    );
    assert!(wait_until(PATIENCE, || warned(&[
        &silent.addr(),
        "timed out"
    ])));
    f.assert_serving();
}

/// A leading dialer's preamble (flag bit 3: its Noise message 1 follows at
/// once) and message 1, whose ephemeral key is `key`.
fn leading(key: [u8; 32]) -> Vec<u8> {
    let mut v = preamble_bytes(b"P2PR", 3, DEFAULT_FLAGS | 8);
    v.extend_from_slice(&32u16.to_be_bytes());
    v.extend_from_slice(&key);
    v
}

#[test]
fn a_leading_peer_whose_first_message_holds_a_small_order_key_is_dropped() {
    let f = fixture();
    let mut bad = RawPeer::connect(f.addr());
    bad.send(&leading([0u8; 32])).ok();
    f.assert_only_bad_peer_dropped(&mut bad, "handshake with");
}

#[test]
fn a_leading_peer_is_answered_then_closed_when_it_says_nothing_more() {
    let f = fixture();
    let mut bad = RawPeer::connect(f.addr());
    bad.send(&leading([9u8; 32])).ok();
    let preamble = bad.read_preamble();
    assert_eq!(&preamble[..6], b"P2PR\x00\x03");
    assert_eq!(preamble[6] & 8, 0, "the accepting side does not lead");
    // Message 2: an ephemeral key, the sealed static key (48 bytes) and the
    // sealed payload (the node's preamble, its proof and its hello).
    let msg2 = bad.read_handshake_message();
    assert!(msg2.len() > 32 + 48 + 16 + 96 + 16, "{} bytes", msg2.len());
    f.assert_serving();
    assert!(
        bad.closed_within(PATIENCE),
        "closed after the 1 s handshake timeout"
    );
    f.assert_serving();
}

#[test]
fn many_leading_peers_at_once_leave_the_node_serving() {
    let f = fixture();
    let mut bad: Vec<RawPeer> = (0..20).map(|_| RawPeer::connect(f.addr())).collect();
    for (i, p) in bad.iter_mut().enumerate() {
        p.send(&leading([9 + i as u8; 32])).ok();
    }
    f.assert_serving();
    for p in &mut bad {
        assert!(p.closed_within(PATIENCE));
    }
    f.assert_serving();
}

#[test]
fn many_bad_peers_at_once() {
    let f = fixture();
    let mut bad: Vec<RawPeer> = (0..20).map(|_| RawPeer::connect(f.addr())).collect();
    for (i, p) in bad.iter_mut().enumerate() {
        let bytes = match i % 4 {
            0 => b"garbage!garbage!".to_vec(),
            1 => preamble_bytes(b"P2PR", 9, DEFAULT_FLAGS),
            2 => preamble_bytes(b"XXXX", 3, DEFAULT_FLAGS),
            // A peer in plaintext mode.
            _ => preamble_bytes(b"P2PR", 3, 2),
        };
        p.send(&bytes).ok();
    }
    f.assert_serving();
    for p in &mut bad {
        assert!(p.closed_within(PATIENCE));
    }
    f.assert_serving();
}

/// Peers that reset their connection at once, before or while the node
/// sends its preamble on accepting it: the node goes on accepting and
/// serving.
#[test]
fn peers_that_reset_at_once() {
    let f = fixture();
    for _ in 0..20 {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        s.connect(&f.addr().into()).unwrap();
        // Closing with a zero linger sends a reset.
        s.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(s);
    }
    f.assert_serving();
}

/// A peer may only claim a listening address on the host it connects from.
/// (Processes on one host can still claim each other's ports: see
/// docs/protocol.md, "What is trusted".)
#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "needs 127.0.0.2 on loopback")]
fn peer_from_another_host_claiming_a_nodes_address_does_not_receive_its_requests() {
    let x = adder();
    let n = node();
    // An impostor on another host (127.0.0.2) connects to N and says it
    // listens where X (127.0.0.1) does.
    let mut impostor = RawPeer::connect_from([127, 0, 0, 2].into(), n.local_addr());
    let hello = json!({ "listen": x.local_addr().to_string() }).to_string();
    impostor.secure(hello.as_bytes()).unwrap();
    assert!(wait_until(PATIENCE, || n.connection_count() == 1));
    // N's request to X must reach X, not the impostor (who would answer 666).
    let n2 = n.clone();
    let x_addr = x.local_addr();
    let asking = std::thread::spawn(move || n2.request(x_addr, Message::new("ADD", 17)));
    if let Some((header, _)) = impostor.try_read_frame(std::time::Duration::from_millis(500)) {
        impostor
            .send_frame(
                &json!({"kind": "response", "type": "ADD RESP", "data": 666, "req": header["req"]}),
                &[],
            )
            .unwrap();
    }
    let resp = asking.join().unwrap().unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 18, "the request reached X");
}

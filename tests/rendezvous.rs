//! The rendezvous, hole punching and the relay over loopback.
//!
//! Loopback has no NAT, so these tests force the path with
//! [`Config::traversal`]: `Punch` makes two nodes punch to each other from
//! their listening ports, `Relay` sends everything through the rendezvous.
//! The real NATs are in `tests/nat/run.sh`.

mod support;

use p2prs::{Config, Message, Node, NodeId, Path, Rendezvous, Traversal};
use serde_json::json;
use std::time::{Duration, Instant};
use support::{capture_logs, test_config, wait_until, RawPeer, PATIENCE};

fn rendezvous() -> Rendezvous {
    capture_logs();
    Rendezvous::start("127.0.0.1", 0).expect("starting a rendezvous")
}

fn rv_node(rv: &Rendezvous, traversal: Traversal) -> Node {
    rv_node_with(rv, |c| c.traversal = traversal)
}

fn rv_node_with(rv: &Rendezvous, f: impl FnOnce(&mut Config)) -> Node {
    let mut cfg = test_config();
    cfg.punch_timeout = Duration::from_secs(3);
    // The relayed handshake crosses the rendezvous twice each way: leave it
    // room on a loaded machine.
    cfg.handshake_timeout = Duration::from_secs(5);
    f(&mut cfg);
    let n = Node::builder()
        .host("127.0.0.1")
        .port(0)
        .config(cfg)
        .rendezvous(rv.local_addr().to_string())
        .start()
        .expect("starting a node with a rendezvous");
    n.add_handler("ECHO", |req| {
        let m = req.take_message();
        req.respond(m)?;
        Ok(())
    })
    .expect("ECHO handler");
    n
}

/// A ring of `first` (ID 0) and `second` (ID 1), joined directly.
fn ring(first: &Node, second: &Node) -> (NodeId, NodeId) {
    let b = second.join_network(&[first.local_addr()]).expect("joining");
    let a = first.id().expect("the first node has an ID");
    (a, b)
}

#[test]
fn a_node_registers_and_learns_its_endpoint() {
    let rv = rendezvous();
    let n = rv_node(&rv, Traversal::Auto);
    let s = n
        .nat_status()
        .expect("a node with a rendezvous has a status");
    assert!(s.connected, "{s:?}");
    // On loopback nothing translates: public and private are the listening address.
    assert_eq!(s.public_addr, Some(n.local_addr()));
    assert_eq!(s.private_addr, Some(n.local_addr()));
    assert!(!s.behind_nat());
    assert_eq!(rv.registered(), 1);
    assert!(Node::builder()
        .start()
        .expect("plain node")
        .nat_status()
        .is_none());
    n.shutdown();
    assert!(wait_until(PATIENCE, || rv.registered() == 0));
}

#[test]
fn public_peers_are_reached_directly() {
    let rv = rendezvous();
    let a = rv_node(&rv, Traversal::Auto);
    let b = rv_node(&rv, Traversal::Auto);
    let (ida, _) = ring(&a, &b);
    let answer = b.request(ida, Message::new("ECHO", "hi")).expect("request");
    assert_eq!(answer.data::<String>().expect("text"), "hi");
    assert_eq!(b.path(ida), Some(Path::Direct));
    assert_eq!(rv.stats().introductions, 0);
}

#[test]
fn two_nodes_punch_from_their_listening_ports() {
    let rv = rendezvous();
    let a = rv_node(&rv, Traversal::Punch);
    let b = rv_node(&rv, Traversal::Punch);
    let (ida, idb) = ring(&a, &b);
    let answer = b
        .request(ida, Message::new("ECHO", "through the hole"))
        .expect("request over a punched connection");
    assert_eq!(answer.data::<String>().expect("text"), "through the hole");
    assert_eq!(b.path(ida), Some(Path::Punched));
    assert!(wait_until(PATIENCE, || a.path(idb) == Some(Path::Punched)));
    assert!(rv.stats().introductions >= 1);
    let s = b.nat_status().expect("status");
    assert!(s.punches >= 1 && s.punched >= 1, "{s:?}");
    // The punched connection is between the two listening ports.
    let conn = b.connect(ida).expect("the open connection");
    assert_eq!(conn.path(), Path::Punched);
    assert_eq!(conn.peer_addr(), a.local_addr());
}

#[test]
fn the_relay_carries_requests_messages_bodies_and_bounces() {
    let rv = rendezvous();
    let a = rv_node(&rv, Traversal::Relay);
    let b = rv_node(&rv, Traversal::Relay);
    let c = rv_node(&rv, Traversal::Relay);
    let (ida, idb) = ring(&a, &b);
    let idc = c.join_network(&[a.local_addr()]).expect("c joins");
    let events = a.events();

    let answer = b
        .request(ida, Message::new("ECHO", "relayed"))
        .expect("request");
    assert_eq!(answer.data::<String>().expect("text"), "relayed");
    assert_eq!(b.path(ida), Some(Path::Relayed));

    // A large binary body crosses the relay intact.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let back = b
        .request(ida, Message::bytes("ECHO", big.clone()))
        .expect("a 2 MB request through the relay");
    assert_eq!(back.body(), Some(&big[..]));

    // One-way messages arrive, and say who sent them.
    b.send(ida, Message::text("hello over the relay"))
        .expect("send");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left).expect("the message event") {
            p2prs::Event::Message { from, message } => {
                assert_eq!(message.as_text(), Some("hello over the relay"));
                assert_eq!(from.id, Some(idb));
                break;
            }
            _ring_news => {}
        }
    }

    // A bounces B's request to C: both hops relayed.
    a.add_handler("WHO", move |req| {
        req.bounce(idc)?;
        Ok(())
    })
    .expect("WHO on a");
    c.add_handler("WHO", |req| {
        req.respond(Message::new("WHO", "c"))?;
        Ok(())
    })
    .expect("WHO on c");
    let who = b
        .request(ida, Message::new("WHO", ()))
        .expect("bounced request");
    assert_eq!(who.data::<String>().expect("text"), "c");
    assert_eq!(a.path(idc), Some(Path::Relayed));
    assert!(rv.stats().relayed_frames >= 6);
}

#[test]
fn closing_a_relayed_connection_fails_the_peer_s_pending_requests() {
    let rv = rendezvous();
    let a = rv_node(&rv, Traversal::Relay);
    let b = rv_node(&rv, Traversal::Relay);
    let (ida, _) = ring(&a, &b);
    a.add_handler("SLOW", |req| {
        // Never answers; the connection goes first.
        let _ = req.take_message();
        std::thread::sleep(Duration::from_millis(300));
        Err("gave up".into())
    })
    .expect("SLOW");
    let conn = b.connect(ida).expect("relayed connection");
    assert_eq!(conn.path(), Path::Relayed);
    // The rendezvous goes away: the relayed connection closes at once and
    // the request fails with ConnectionClosed, not a timeout.
    let started = Instant::now();
    let waiter = std::thread::spawn(move || conn.request(Message::new("SLOW", ())));
    assert!(wait_until(PATIENCE, || rv.stats().relayed_frames >= 1));
    rv.shutdown();
    let result = waiter.join().expect("request thread");
    assert!(
        matches!(result, Err(p2prs::Error::ConnectionClosed { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn the_relay_limits_the_byte_rate() {
    capture_logs();
    let cap = 256 * 1024;
    let rv = Rendezvous::start_with_config(
        "127.0.0.1",
        0,
        Config {
            relay_peer_cap: cap,
            ..Config::default()
        },
    )
    .expect("rendezvous");
    let a = rv_node(&rv, Traversal::Relay);
    let b = rv_node(&rv, Traversal::Relay);
    let (ida, _) = ring(&a, &b);
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g2 = got.clone();
    a.add_handler("CHUNK", move |m| {
        let n = m.message().body().map_or(0, <[u8]>::len);
        g2.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    })
    .expect("CHUNK");
    // 1 MiB in 128 KiB chunks: the first 256 KiB pass at once (the burst),
    // the rest at 256 KiB/s, so it takes about three seconds.
    // Ring maintenance shares the relay and may time out behind the flood:
    // hold the connection rather than route by ID.
    let conn = b.connect(ida).expect("relayed connection");
    assert_eq!(conn.path(), Path::Relayed);
    let started = Instant::now();
    for _ in 0..8 {
        conn.send(Message::bytes("CHUNK", vec![7u8; 128 * 1024]))
            .expect("send");
    }
    assert!(wait_until(Duration::from_secs(20), || got
        .load(std::sync::atomic::Ordering::SeqCst)
        == 1024 * 1024));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "1 MiB took only {took:?}"
    );

    // A frame that could not pass within the relay's patience is refused and
    // the relayed connection closed, so the request fails at once.
    let refused = conn.request(Message::bytes("ECHO", vec![0u8; 4 * 1024 * 1024]));
    assert!(refused.is_err(), "{refused:?}");
    // The relay's refusal and the close the requester sees race: wait for it.
    assert!(
        wait_until(PATIENCE, || rv.stats().refused_frames >= 1),
        "{refused:?} {:?}",
        rv.stats()
    );
}

#[test]
fn a_stranger_on_the_endpoint_is_never_taken_for_the_peer() {
    let rv = rendezvous();
    let stranger = support::node();
    let a = rv_node_with(&rv, |c| {
        c.traversal = Traversal::Punch;
        c.punch_timeout = Duration::from_secs(1);
    });
    a.create_network().expect("a creates a network");
    // A fake node registers with ID 99 and claims the stranger's address as
    // its private endpoint; its public endpoint (its own socket) listens for nothing.
    let mut fake = RawPeer::handshaken(rv.local_addr());
    let claimed = fake.addr();
    let reg = fake.request(
        1,
        "p2prs.rv.register",
        json!({ "id": 99, "listen": claimed, "private": stranger.local_addr() }),
    );
    assert_eq!(reg["kind"], "response", "{reg}");
    // A reaches "99" by its address: the rendezvous introduces them. The
    // fake cannot complete the end-to-end handshake through the relay (it
    // has no node behind it), so nothing is ever sent to it in the clear.
    let conn_result = a.send(
        claimed.parse::<std::net::SocketAddr>().expect("addr"),
        Message::text("for 99 only"),
    );
    assert!(conn_result.is_err(), "{conn_result:?}");
    // The fake got the go signal naming A, and then A's handshake through
    // the relay: the stranger's connection was refused (wrong ID) and the
    // punch fell back to the relay.
    let (go, _) = fake.read_frame();
    assert_eq!(go["type"], "p2prs.rv.punch", "{go}");
    assert_eq!(go["data"]["peer"]["id"], json!(0));
    let (relayed, body) = fake.read_frame();
    assert_eq!(relayed["type"], "p2prs.rv.relay", "{relayed}");
    assert_eq!(relayed["data"]["from"]["id"], json!(0));
    assert_eq!(&body[..4], b"P2PR", "the body is A's handshake preamble");
    assert!(!body.windows(11).any(|w| w == b"for 99 only"));
    // The stranger was asked and refused: A keeps no connection to it.
    assert!(wait_until(PATIENCE, || a
        .path(stranger.local_addr())
        .is_none()));
    assert!(support::warned(&["is not the one expected"]));
}

#[test]
fn nodes_register_again_after_the_rendezvous_restarts() {
    let rv = rendezvous();
    let port = rv.local_addr().port();
    let a = rv_node(&rv, Traversal::Punch);
    let b = rv_node(&rv, Traversal::Punch);
    let (ida, idb) = ring(&a, &b);
    rv.shutdown();
    assert!(wait_until(PATIENCE, || !a
        .nat_status()
        .expect("status")
        .connected));
    let rv2 = Rendezvous::start("127.0.0.1", port).expect("the rendezvous again, same port");
    assert!(wait_until(PATIENCE, || rv2.registered() == 2));
    for n in [&a, &b] {
        let again = || {
            let s = n.nat_status().expect("status");
            s.connected && s.links >= 2
        };
        assert!(wait_until(PATIENCE, again), "{:?}", n.nat_status());
    }
    // A new punch works through the new rendezvous. (While the link was
    // down, ring maintenance may have connected the two directly.)
    let old = b.connect(ida).expect("the open connection");
    assert!(b.disconnect(ida) >= 1);
    assert!(wait_until(PATIENCE, || !old.is_open()));
    let answer = b
        .request(ida, Message::new("ECHO", 5))
        .expect("request after restart");
    assert_eq!(answer.data::<i64>().expect("n"), 5);
    assert_eq!(b.path(ida), Some(Path::Punched));
    assert!(rv2.stats().introductions >= 1);
    let _ = idb;
}

#[test]
fn shutdown_joins_the_rendezvous_threads() {
    let rv = rendezvous();
    let a = rv_node(&rv, Traversal::Punch);
    let b = rv_node(&rv, Traversal::Punch);
    let ports = [a.local_addr().port(), b.local_addr().port()];
    let (ida, _) = ring(&a, &b);
    b.request(ida, Message::new("ECHO", 1)).expect("request");
    // Reading /proc/self/task can miss a live thread while others come and
    // go (it is read by position): look until it is seen.
    let rv_thread = format!("p2prs-rv-{}", ports[0]);
    assert!(wait_until(PATIENCE, || thread_names().contains(&rv_thread)));
    let started = Instant::now();
    a.shutdown();
    b.shutdown();
    rv.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Tests run side by side in this process, so look for these nodes' own
    // rendezvous threads by name rather than counting threads.
    let names = thread_names();
    for port in ports {
        let name = format!("p2prs-rv-{port}");
        assert!(!names.contains(&name), "{name} still runs: {names:?}");
    }
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("reading /proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

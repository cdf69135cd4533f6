//! Bounds that hold under hostile load (issue 8): a flooding peer is slowed
//! through its own TCP window, the events queue and the ring's work stay
//! bounded, ring control frames are rate-limited per connection, and
//! `shutdown()` returns within its grace even when a handler never returns.
//! Each test also checks that a good peer is still served. None sleeps to
//! synchronise: channels, conditions and deadlines.

mod support;

use crossbeam_channel::bounded;
use p2prs::{Error, Message, Node};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn a_flooding_peer_is_slowed_through_its_own_window() {
    // Three handler threads; one connection may hold two of them at most.
    let server = node_with(|c| {
        c.handler_threads = 3;
        c.handler_queue_len = 2;
    });
    add_adder(&server);
    let seen = Arc::new(AtomicUsize::new(0));
    let (gate_tx, gate_rx) = bounded::<()>(0);
    let counter = Arc::clone(&seen);
    server
        .add_handler("FLOOD", move |_req| {
            counter.fetch_add(1, Ordering::SeqCst);
            // Held until the test lets go (or PATIENCE): the flood's work
            // piles up behind these.
            let _ = gate_rx.recv_timeout(PATIENCE);
            Ok(())
        })
        .unwrap();

    // The flooder gives up a write that blocks for 500 ms: that happens only
    // when the server has stopped reading it.
    let flooder = node_with(|c| c.write_timeout = Duration::from_millis(500));
    let conn = flooder.connect(server.local_addr()).unwrap();
    const MAX: usize = 1000; // 64 MiB: far more than any socket buffer
    let flooding = std::thread::spawn(move || {
        let body = vec![7u8; 64 * 1024];
        for sent in 0..MAX {
            let msg = Message::new("FLOOD", sent).with_body(body.clone());
            if let Err(e) = conn.send(msg) {
                return (sent, Some(e));
            }
        }
        (MAX, None)
    });
    let (sent, err) = flooding.join().unwrap();
    assert!(
        matches!(err, Some(Error::Timeout { .. })),
        "the flooder's writes block: {sent} frames sent, then {err:?}"
    );
    assert!(sent < MAX);
    eprintln!("flood: {sent} messages of 64 KiB sent before the writes blocked");
    // While the flood waits, only two of its messages reached handlers...
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    // ...and a good peer is served at once by the third handler thread.
    let good = node();
    assert_served(&good, &server, Duration::from_secs(1));
    drop(gate_tx);
    assert_served(&good, &server, Duration::from_secs(1));
}

#[test]
fn the_events_queue_keeps_the_newest_and_counts_the_dropped() {
    let server = node_with(|c| c.events_capacity = 16);
    add_adder(&server);
    let events = server.events();
    let sender = node();
    let conn = sender.connect(server.local_addr()).unwrap();
    for i in 0..100 {
        conn.send(Message::text(format!("m{i}"))).unwrap();
    }
    // Frames of one connection are read in order: once this is answered,
    // every text before it has been delivered to the events queue.
    let r = conn.request(Message::new("ADD", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 2);
    assert_eq!(events.len(), 16);
    assert_eq!(server.events_dropped(), 84);
    let first = events.try_recv().unwrap();
    match first {
        p2prs::Event::Message { message, .. } => assert_eq!(message.as_text(), Some("m84")),
        other => panic!("unexpected event {other:?}"),
    }
    assert_served(&sender, &server, Duration::from_secs(1));
}

#[test]
fn the_events_queue_holds_a_bounded_number_of_bytes() {
    // A peer that sends large messages nobody handles cannot make the events
    // queue hold events_capacity × max_frame_size: past the byte bound the
    // oldest events are dropped, as past the count.
    let server = node_with(|c| c.events_max_bytes = 1024 * 1024);
    add_adder(&server);
    let events = server.events();
    let sender = node();
    let conn = sender.connect(server.local_addr()).unwrap();
    for i in 0..8 {
        conn.send(Message::new("BLOB", i).with_body(vec![i as u8; 300 * 1024]))
            .unwrap();
    }
    conn.send(Message::text("end")).unwrap();
    // Frames of one connection are read in order: once this is answered,
    // every message before it is in the events queue or was dropped.
    let r = conn.request(Message::new("ADD", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 2);
    // Three bodies of 300 KiB fit in 1 MiB, a fourth does not.
    assert_eq!(server.events_dropped(), 5);
    let kept: Vec<String> = events
        .try_iter()
        .map(|e| match e {
            p2prs::Event::Message { message, .. } => {
                format!("{}:{}", message.kind(), message.data_value())
            }
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(kept, ["BLOB:5", "BLOB:6", "BLOB:7", "TEXT:\"end\""]);
    // Once read, the bytes are free again: new events are kept.
    for i in 0..3 {
        conn.send(Message::new("BLOB", i).with_body(vec![0; 300 * 1024]))
            .unwrap();
    }
    let r = conn.request(Message::new("ADD", 2)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 3);
    assert_eq!(server.events_dropped(), 5);
    assert_eq!(events.len(), 3);
    assert_served(&sender, &server, Duration::from_secs(1));
}

#[test]
fn the_handler_queue_of_a_connection_holds_a_bounded_number_of_bytes() {
    // One handler thread, held by the first message: large messages queue
    // behind it until they pass handler_queue_bytes (not 64 of them, which
    // could be 64 × max_frame_size); then the node reads that connection no
    // further, so a request sent after them on it is not even read.
    let server = node_with(|c| {
        c.handler_threads = 1;
        c.handler_queue_bytes = 2 * 1024 * 1024;
    });
    let (gate_tx, gate_rx) = bounded::<()>(0);
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded::<i64>();
    server
        .add_handler("BLOB", move |req| {
            log::warn!("TEST handler {:?}", req.message().data_value());
            let _ = seen_tx.send(req.message().data::<i64>()?);
            let _ = gate_rx.recv_timeout(PATIENCE);
            Ok(())
        })
        .unwrap();
    server
        .add_inline_handler("PING", |req| {
            req.respond(Message::new("PONG", ()))?;
            Ok(())
        })
        .unwrap();
    let sender = node();
    let conn = sender.connect(server.local_addr()).unwrap();
    let blobs = conn.clone();
    let sending = std::thread::Builder::new()
        .name("test-blobs".into())
        .spawn(move || {
            for i in 0..8 {
                let msg = Message::new("BLOB", i).with_body(vec![0; 1024 * 1024]);
                log::warn!("TEST sending blob {i}");
                if let Err(e) = blobs.send(msg) {
                    return Some((i, e));
                }
            }
            None
        })
        .expect("a test thread");
    assert_eq!(seen_rx.recv_timeout(PATIENCE), Ok(0), "the first one runs");
    // The first (1 MiB and a little) runs; the second would pass 2 MiB, so
    // it waits on the reader, which reads no further: the PING after the
    // messages is not answered.
    let ping = conn.request_timeout(Message::new("PING", ()), Duration::from_secs(1));
    assert!(
        matches!(ping, Err(Error::Timeout { .. })),
        "the connection is not read while its handler queue is full: {ping:?}"
    );
    // A good peer is served meanwhile.
    let good = node();
    let r = good.request(server.local_addr(), Message::new("PING", ()));
    assert_eq!(r.unwrap().kind(), "PONG");
    // Released, every message runs, in order.
    log::warn!("TEST release");
    drop(gate_tx);
    let got: Vec<i64> = (1..8)
        .filter_map(|_| seen_rx.recv_timeout(PATIENCE).ok())
        .collect();
    let sent = sending.join().unwrap();
    assert_eq!(got, (1..8).collect::<Vec<_>>(), "sending: {sent:?}");
    assert!(sent.is_none(), "{sent:?}");
    let r = conn.request(Message::new("PING", ())).unwrap();
    assert_eq!(r.kind(), "PONG");
}

fn ring_of_two(f: impl Fn(&mut p2prs::Config) + Copy) -> (Node, Node) {
    let a = node_with(f);
    let b = node_with(f);
    add_adder(&a);
    a.create_network().unwrap();
    b.join_network(&[a.local_addr()]).unwrap();
    assert!(wait_until(PATIENCE, || a.network_size() == 2 && b.network_size() == 2));
    (a, b)
}

#[test]
fn stabilize_now_floods_cost_a_bounded_number_of_rounds() {
    let interval = Duration::from_millis(400);
    let (a, _b) = ring_of_two(|c| {
        c.stabilize_interval = interval;
        // Measure the coalescing alone, without the per-connection rate.
        c.ring_control_rate = 0;
    });
    // The ring's own frames, sent as another implementation would (the
    // API refuses to send reserved types).
    let mut attacker = RawPeer::handshaken(a.local_addr());
    let before = a.stabilizer_rounds();
    let t = Instant::now();
    let ask = json!({"kind": "message", "type": "p2prs.stabilize_now", "data": {}});
    for _ in 0..5000 {
        attacker.send_frame(&ask, &[]).unwrap();
    }
    // Read in order: once the ping is answered, every frame has been handled.
    let pong = attacker.request(1, "p2prs.ping", json!({}));
    assert_eq!(pong["type"], "p2prs.pong", "{pong}");
    let read_in = t.elapsed();
    // Count the rounds over a window of two and a half intervals from the
    // start of the flood: queued one by one, 5,000 asks would keep the
    // stabilizer busy far longer.
    let window = interval * 5 / 2;
    let _ = crossbeam_channel::after(window.saturating_sub(t.elapsed())).recv();
    let elapsed = t.elapsed();
    let rounds = a.stabilizer_rounds() - before;
    eprintln!("stabilize_now: 5000 frames read in {read_in:?}; {rounds} rounds in {elapsed:?}");
    // One periodic round per interval, one asked-for round per quarter of
    // it, and one of each under way at either end.
    let bound = 5 * (elapsed.as_millis() / interval.as_millis()) as u64 + 3;
    assert!(
        rounds <= bound,
        "{rounds} rounds for 5000 frames in {elapsed:?} (bound {bound})"
    );
    let good = node();
    assert_served(&good, &a, Duration::from_secs(1));
    assert_eq!(a.network_size(), 2);
}

#[test]
fn ring_control_frames_are_rate_limited_per_connection() {
    let (a, _b) = ring_of_two(|c| c.ring_control_rate = 100);
    // The ring's own frames, sent as another implementation would (the
    // API refuses to send reserved types).
    let mut attacker = RawPeer::handshaken(a.local_addr());
    // A fresh connection may send 100 at once; the other 150 at 100/s.
    let t = Instant::now();
    let ask = json!({"kind": "message", "type": "p2prs.stabilize_now", "data": {}});
    for _ in 0..250 {
        attacker.send_frame(&ask, &[]).unwrap();
    }
    let (done_tx, done_rx) = bounded(1);
    let pinging = std::thread::spawn(move || {
        let pong = attacker.request(1, "p2prs.ping", json!({}));
        let _ = done_tx.send(t.elapsed());
        pong
    });
    // Meanwhile a good peer, on its own connection, is not held up.
    let good = node();
    assert_served(&good, &a, Duration::from_millis(500));
    let mut good_raw = RawPeer::handshaken(a.local_addr());
    let good_ping = Instant::now();
    let pong = good_raw.request(1, "p2prs.ping", json!({}));
    assert_eq!(pong["type"], "p2prs.pong", "{pong}");
    let good_ping = good_ping.elapsed();
    assert!(good_ping < Duration::from_millis(500));
    let attacker_waited = done_rx.recv_timeout(PATIENCE).unwrap();
    eprintln!(
        "rate: the good peer's ping took {good_ping:?}; 250 control frames were read in {attacker_waited:?}"
    );
    let pong = pinging.join().unwrap();
    assert_eq!(pong["type"], "p2prs.pong", "{pong}");
    assert!(
        attacker_waited >= Duration::from_millis(1000),
        "250 control frames at 100/s were read in {attacker_waited:?}"
    );
}

#[test]
fn shutdown_returns_within_the_grace_when_a_handler_never_returns() {
    let grace = Duration::from_millis(500);
    let server = node_with(|c| c.shutdown_grace = grace);
    let (started_tx, started_rx) = bounded::<()>(1);
    // Never sent on until the very end: the handler blocks "for ever".
    let (forever_tx, forever_rx) = bounded::<()>(0);
    let (ended_tx, ended_rx) = bounded::<()>(1);
    server
        .add_handler("STUCK", move |_req| {
            let _ = started_tx.send(());
            let _ = forever_rx.recv();
            let _ = ended_tx.send(());
            Ok(())
        })
        .unwrap();
    let asker = node();
    let addr = server.local_addr();
    let asking = {
        let asker = asker.clone();
        std::thread::spawn(move || asker.request(addr, Message::new("STUCK", ())))
    };
    started_rx.recv_timeout(PATIENCE).unwrap();
    let t = Instant::now();
    server.shutdown();
    let took = t.elapsed();
    eprintln!("shutdown with a handler blocked for ever, grace {grace:?}: {took:?}");
    assert!(
        took < grace + Duration::from_secs(1),
        "shutdown took {took:?} with a grace of {grace:?}"
    );
    assert!(server.is_shut_down());
    assert!(wait_until(PATIENCE, || warned(&[
        "detached",
        "p2prs-handler"
    ])));
    assert!(asking.join().unwrap().is_err(), "the request failed");
    // Other nodes go on.
    let other = adder();
    assert_served(&asker, &other, Duration::from_secs(1));
    // The detached handler ends when it is let go.
    forever_tx.send(()).unwrap();
    ended_rx.recv_timeout(PATIENCE).unwrap();
}

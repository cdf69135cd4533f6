//! Messages, requests, handlers and connections between real nodes on loopback.

mod support;

use crossbeam_channel::{bounded, Receiver, Sender};
use p2prs::{Error, Event, Message, Node, TEXT};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use support::*;

/// A handler that tells the test it started, then waits for the test to let
/// it go (the sender dropped or a message sent) before returning.
fn blocking_handler(node: &Node, kind: &str) -> (Receiver<()>, Sender<()>) {
    let (started_tx, started_rx) = bounded::<()>(16);
    let (release_tx, release_rx) = bounded::<()>(16);
    node.add_handler(kind, move |_req| {
        let _ = started_tx.send(());
        let _ = release_rx.recv_timeout(PATIENCE);
        Ok(())
    })
    .unwrap();
    (started_rx, release_tx)
}

fn expect_remote(result: p2prs::Result<Message>, want: &str) -> String {
    match result {
        Err(Error::Remote { code, message }) => {
            assert_eq!(code, want, "remote error code (message: {message})");
            message
        }
        other => panic!("expected Remote {{ code: {want:?} }}, got {other:?}"),
    }
}

fn echo_handler(node: &Node) {
    node.add_handler("ECHO", |req| {
        let msg = req.take_message();
        let data = msg.data_value().clone();
        let mut resp = Message::new("ECHO RESP", data);
        if let Some(body) = msg.into_body() {
            resp = resp.with_body(body);
        }
        req.respond(resp)?;
        Ok(())
    })
    .unwrap();
}

// ---- Messages -------------------------------------------------------------

#[test]
fn text_message_reaches_events_with_sender_info() {
    let a = node();
    let b = node();
    let events = b.events();
    a.send_to_address(b.local_addr(), Message::text("Hi!"))
        .unwrap();
    match events.recv_timeout(PATIENCE).expect("an event") {
        Event::Message { from, message } => {
            assert_eq!(from.addr, a.local_addr());
            assert_eq!(from.id, None);
            assert_eq!(message.kind(), TEXT);
            assert_eq!(message.as_text(), Some("Hi!"));
        }
        other => panic!("unexpected event {other:?}"),
    }
}

#[test]
fn text_handler_can_be_replaced() {
    let a = node();
    let b = node();
    let (tx, rx) = bounded(1);
    b.add_handler(TEXT, move |m| {
        let text = m.message().as_text().unwrap_or_default().to_string();
        tx.send((text, m.from().addr)).unwrap();
        Ok(())
    })
    .unwrap();
    let events = b.events();
    a.send_to_address(b.local_addr(), Message::text("replaced"))
        .unwrap();
    let (text, from) = rx.recv_timeout(PATIENCE).expect("the handler ran");
    assert_eq!(text, "replaced");
    assert_eq!(from, a.local_addr());
    assert!(events.try_recv().is_err(), "a handled TEXT is not an event");
}

#[test]
fn message_without_handler_goes_to_events_and_one_with_a_handler_runs_it() {
    let a = node();
    let b = node();
    let events = b.events();
    let (tx, rx) = bounded(1);
    b.add_handler("NOTE", move |m| {
        // A one-way message cannot be responded to.
        let respond = m.respond(Message::new("NOTE RESP", ()));
        tx.send((m.is_request(), m.message().clone(), respond.is_err()))
            .unwrap();
        Ok(())
    })
    .unwrap();
    a.send_to_address(
        b.local_addr(),
        Message::new("UNHANDLED", json!({"k": [1, 2]})),
    )
    .unwrap();
    a.send_to_address(b.local_addr(), Message::new("NOTE", "remember"))
        .unwrap();
    match events.recv_timeout(PATIENCE).expect("an event") {
        Event::Message { from, message } => {
            assert_eq!(from.addr, a.local_addr());
            assert_eq!(message.kind(), "UNHANDLED");
            assert_eq!(message.data_value(), &json!({"k": [1, 2]}));
        }
        other => panic!("unexpected event {other:?}"),
    }
    let (is_request, message, respond_refused) = rx.recv_timeout(PATIENCE).unwrap();
    assert!(!is_request);
    assert_eq!(message.as_text(), Some("remember"));
    assert!(respond_refused);
}

// ---- Requests and handlers ---------------------------------------------------

#[test]
fn add_request_by_address() {
    let a = adder();
    let b = node();
    let resp = b.request(a.local_addr(), Message::new("ADD", 17)).unwrap();
    assert_eq!(resp.kind(), "ADD RESP");
    assert_eq!(resp.data::<i64>().unwrap(), 18);
    // The same with a "host:port" string.
    let text_addr = format!("127.0.0.1:{}", a.local_addr().port());
    let resp = b
        .request(text_addr.as_str(), Message::new("ADD", 41))
        .unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 42);
    // Both went over one (temporary) connection.
    assert_eq!(b.connection_count(), 1);
}

#[test]
fn add_request_over_a_constant_connection() {
    let a = adder();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    assert!(conn.is_open());
    assert_eq!(conn.peer_addr(), a.local_addr());
    for n in 0..5i64 {
        let resp = conn.request(Message::new("ADD", n)).unwrap();
        assert_eq!(resp.data::<i64>().unwrap(), n + 1);
    }
    let resp = b.request(&conn, Message::new("ADD", 17)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 18);

    let events = a.events();
    b.send_to_connection(&conn, Message::text("over the constant one"))
        .unwrap();
    match events.recv_timeout(PATIENCE).expect("an event") {
        Event::Message { from, message } => {
            assert_eq!(from.addr, b.local_addr());
            assert_eq!(message.as_text(), Some("over the constant one"));
        }
        other => panic!("unexpected event {other:?}"),
    }
    assert_eq!(b.connection_count(), 1);

    conn.close();
    assert!(!conn.is_open());
    assert!(matches!(
        conn.request(Message::new("ADD", 1)),
        Err(Error::ConnectionClosed { .. })
    ));
}

#[test]
fn node_is_a_cheap_shareable_handle() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Node>();
    shareable::<p2prs::Connection>();
    fn error_type<E: std::error::Error + Send + Sync + 'static>() {}
    error_type::<Error>();
    let a = adder();
    let b = node();
    let a_addr = a.local_addr();
    let answers: Vec<i64> = thread::scope(|s| {
        let hs: Vec<_> = (0..4i64)
            .map(|i| {
                let b = b.clone();
                s.spawn(move || {
                    b.request(a_addr, Message::new("ADD", i))
                        .unwrap()
                        .data::<i64>()
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, vec![1, 2, 3, 4]);
}

#[test]
fn typed_data_round_trips() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Point {
        x: i32,
        y: i32,
        label: String,
    }
    let a = node();
    a.add_handler("MIRROR", |req| {
        let p: Point = req.message().data()?;
        let m = Point {
            x: -p.x,
            y: -p.y,
            label: format!("mirror of {}", p.label),
        };
        req.respond(Message::with_data("MIRROR RESP", &m)?)?;
        Ok(())
    })
    .unwrap();
    let p = Point {
        x: 3,
        y: -4,
        label: "p".into(),
    };
    let resp = node()
        .request(a.local_addr(), Message::with_data("MIRROR", &p).unwrap())
        .unwrap();
    let m: Point = resp.data().unwrap();
    assert_eq!(
        m,
        Point {
            x: -3,
            y: 4,
            label: "mirror of p".into()
        }
    );
    // Data of the wrong shape is a JSON error on the receiving side.
    assert!(matches!(resp.data::<Vec<u8>>(), Err(Error::Json(_))));
}

#[test]
fn a_request_is_answered_once() {
    let a = node();
    a.add_handler("TWO", |req| {
        req.respond(Message::new("FIRST", 1))?;
        assert!(req.is_answered());
        let again = req.respond(Message::new("SECOND", 2));
        let msg = if again.is_err() { "refused" } else { "sent" };
        // The handler reports through the event channel of its own node.
        req.node()
            .send(req.node().local_addr(), Message::text(msg))?;
        Ok(())
    })
    .unwrap();
    let events = a.events();
    let resp = node()
        .request(a.local_addr(), Message::new("TWO", ()))
        .unwrap();
    assert_eq!(resp.kind(), "FIRST");
    match events.recv_timeout(PATIENCE).expect("an event") {
        Event::Message { message, .. } => assert_eq!(message.as_text(), Some("refused")),
        other => panic!("unexpected event {other:?}"),
    }
}

#[test]
fn handler_sees_the_sender() {
    let a = node();
    let b = node();
    a.add_handler("WHO", |req| {
        let from = req.from().clone();
        req.respond(Message::new("WHO RESP", from.addr.to_string()))?;
        Ok(())
    })
    .unwrap();
    let resp = b.request(a.local_addr(), Message::new("WHO", ())).unwrap();
    assert_eq!(resp.data::<String>().unwrap(), b.local_addr().to_string());
}

#[test]
fn many_requests_in_flight_on_one_connection() {
    const CALLERS: usize = 8;
    let a = node_with(|c| c.handler_threads = CALLERS);
    add_adder(&a);
    // GATHER answers only once every caller's request has arrived, so they
    // are all in flight at once; if requests were serialised none would return.
    let arrived = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&arrived);
    a.add_handler("GATHER", move |req| {
        seen.fetch_add(1, Ordering::SeqCst);
        let all_here = wait_until(PATIENCE, || seen.load(Ordering::SeqCst) >= CALLERS);
        let n: i64 = req.message().data()?;
        req.respond(Message::new(
            "GATHERED",
            json!({"double": n * 2, "all": all_here}),
        ))?;
        Ok(())
    })
    .unwrap();

    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    let results: Vec<(i64, serde_json::Value)> = thread::scope(|s| {
        let handles: Vec<_> = (0..CALLERS as i64)
            .map(|i| {
                let conn = conn.clone();
                s.spawn(move || {
                    let resp = conn.request(Message::new("GATHER", 1000 + i)).unwrap();
                    (i, resp.data_value().clone())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, v) in results {
        assert_eq!(v["double"], json!((1000 + i) * 2), "caller {i}");
        assert_eq!(
            v["all"],
            json!(true),
            "caller {i} saw every request in flight"
        );
    }

    // And a burst: each caller checks every answer is the one to its question.
    thread::scope(|s| {
        for t in 0..CALLERS as i64 {
            let conn = conn.clone();
            s.spawn(move || {
                for k in 0..200i64 {
                    let n = t * 1_000_000 + k;
                    let resp = conn.request(Message::new("ADD", n)).unwrap();
                    assert_eq!(resp.data::<i64>().unwrap(), n + 1);
                }
            });
        }
    });
    assert_eq!(b.connection_count(), 1);
    assert_eq!(a.connection_count(), 1);
}

#[test]
fn messages_and_requests_of_many_threads_on_one_connection_all_arrive_in_order() {
    // Many threads sending at once on one connection write together (the
    // send queue): every message arrives, each thread's in the order sent,
    // and every request is answered, whichever thread writes them.
    const SENDERS: u64 = 8;
    const EACH: u64 = 300;
    let a = node();
    add_adder(&a);
    let (tx, rx) = crossbeam_channel::unbounded::<(u64, u64)>();
    a.add_inline_handler("SEQ", move |req| {
        let (t, k): (u64, u64) = req.message().data()?;
        let _ = tx.send((t, k));
        Ok(())
    })
    .unwrap();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    thread::scope(|s| {
        for t in 0..SENDERS {
            let conn = conn.clone();
            s.spawn(move || {
                for k in 0..EACH {
                    conn.send(Message::new("SEQ", json!([t, k]))).unwrap();
                    if k % 3 == 0 {
                        let n = (t * 1_000_000 + k) as i64;
                        let resp = conn.request(Message::new("ADD", n)).unwrap();
                        assert_eq!(resp.data::<i64>().unwrap(), n + 1);
                    }
                }
            });
        }
    });
    let mut next = vec![0u64; SENDERS as usize];
    for _ in 0..SENDERS * EACH {
        let (t, k) = rx.recv_timeout(PATIENCE).expect("every message arrives");
        assert_eq!(k, next[t as usize], "sender {t}'s messages in order");
        next[t as usize] += 1;
    }
    assert!(next.iter().all(|&n| n == EACH));
}

#[test]
fn a_stream_of_messages_from_one_thread_arrives_whole_and_in_order() {
    // One thread sending message after message: they leave in batches (the
    // send queue and the node's flusher), yet every one arrives, in order,
    // with the large ones (written directly) and requests in their place,
    // the last of a burst without a further send, and a burst followed at
    // once by closing the connection.
    const N: u64 = 3000;
    let a = node();
    add_adder(&a);
    let (tx, rx) = crossbeam_channel::unbounded::<(u64, usize)>();
    a.add_inline_handler("SEQ", move |req| {
        let k: u64 = req.message().data()?;
        let _ = tx.send((k, req.message().body().map_or(0, |b| b.len())));
        Ok(())
    })
    .unwrap();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    let expect = |from: u64, to: u64| {
        for k in from..to {
            let (got, len) = rx.recv_timeout(PATIENCE).expect("every message arrives");
            assert_eq!(got, k, "in the order sent");
            assert_eq!(len, if k % 500 == 499 { 64 * 1024 } else { 16 });
        }
    };
    for k in 0..N {
        let body = vec![7u8; if k % 500 == 499 { 64 * 1024 } else { 16 }];
        conn.send(Message::new("SEQ", k).with_body(body)).unwrap();
        if k % 700 == 0 {
            let resp = conn.request(Message::new("ADD", k as i64)).unwrap();
            assert_eq!(resp.data::<i64>().unwrap(), k as i64 + 1);
        }
    }
    expect(0, N);
    conn.close();
    // A burst, then the connection closed at once.
    let conn = b.connect(a.local_addr()).unwrap();
    for k in N..N + 100 {
        conn.send(Message::new("SEQ", k).with_body(vec![7u8; 16]))
            .unwrap();
    }
    conn.close();
    expect(N, N + 100);
}

#[test]
fn requesters_get_their_answers_while_the_peer_talks_back() {
    // Requesters on one connection read their answers themselves when
    // nobody else reads; the peer's own messages and requests on the same
    // connection must still reach their handlers, and every answer its
    // requester. NOTE is one-way, sent back before each answer; ASK makes
    // a request back over the connection it came on (a pooled handler that
    // may run on the connection's thread once it has proved quick).
    const CALLERS: i64 = 6;
    const EACH: i64 = 150;
    let a = node();
    a.add_handler("ADD", |req| {
        let n: i64 = req.message().data()?;
        req.connection().send(Message::new("NOTE", n))?;
        req.respond(Message::new("ADD RESP", n + 1))?;
        Ok(())
    })
    .unwrap();
    a.add_handler("ASK", |req| {
        let n: i64 = req.message().data()?;
        let back = req.connection().request(Message::new("TWICE", n))?;
        let twice: i64 = back.data()?;
        req.respond(Message::new("ASK RESP", twice + 1))?;
        Ok(())
    })
    .unwrap();
    let b = node();
    let notes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&notes);
    b.add_handler("NOTE", move |_msg| {
        seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    b.add_inline_handler("TWICE", |req| {
        let n: i64 = req.message().data()?;
        req.respond(Message::new("TWICE RESP", 2 * n))?;
        Ok(())
    })
    .unwrap();
    let conn = b.connect(a.local_addr()).unwrap();
    thread::scope(|s| {
        for t in 0..CALLERS {
            let conn = conn.clone();
            s.spawn(move || {
                for k in 0..EACH {
                    let n = t * 1_000_000 + k;
                    if k % 3 == 0 {
                        let r = conn.request(Message::new("ASK", n)).unwrap();
                        assert_eq!(r.data::<i64>().unwrap(), 2 * n + 1);
                    } else {
                        let r = conn.request(Message::new("ADD", n)).unwrap();
                        assert_eq!(r.data::<i64>().unwrap(), n + 1);
                    }
                }
            });
        }
    });
    let adds = (CALLERS * (0..EACH).filter(|k| k % 3 != 0).count() as i64) as usize;
    assert!(
        wait_until(PATIENCE, || notes.load(Ordering::SeqCst) == adds),
        "{} of {adds} one-way messages arrived",
        notes.load(Ordering::SeqCst)
    );
    assert_eq!(b.connection_count(), 1);
}

#[test]
fn a_requester_takes_its_answer_read_with_a_message_for_a_quick_handler() {
    // The peer sends, in one write, a message whose quick pooled handler
    // runs on the connection's thread and the answer to a request of ours.
    // The connection's thread reads both and runs the handler with the
    // reading lent; the handler waits until the requester has its answer.
    // The requester must take the answer already read (it waits in the
    // read state's decoder) rather than wait on the socket for bytes the
    // peer will never send: the peer sends nothing more.
    let a = node_with(|c| {
        c.quick_handlers_inline = true;
        c.request_timeout = Duration::from_secs(3);
    });
    let (conn_tx, conn_rx) = bounded::<p2prs::Connection>(1);
    let (got_tx, got_rx) = bounded::<()>(1);
    let stale = got_rx.clone();
    // Per run: whether it ran on the connection's thread, and, for a run
    // that waits, whether the requester got its answer meanwhile.
    let (runs_tx, runs_rx) = bounded::<(bool, bool)>(16);
    a.add_handler("TICK", move |msg| {
        let _ = conn_tx.try_send(msg.connection());
        let here = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("p2prs-conn-"));
        let wait = msg.message().data::<bool>()?;
        let answered = wait && got_rx.recv_timeout(Duration::from_secs(2)).is_ok();
        let _ = runs_tx.send((here, answered));
        Ok(())
    })
    .unwrap();
    let mut peer = RawPeer::handshaken(a.local_addr());
    let tick = |wait: bool| {
        let h = json!({"kind": "message", "type": "TICK", "data": wait});
        frame_bytes(&serde_json::to_vec(&h).unwrap(), &[])
    };
    let mut conn = None;
    let mut lent_rounds = 0;
    for round in 0..20 {
        // Until the handler has proved quick and runs where it is read.
        warm_up(&runs_rx, || peer.send(&tick(false)).unwrap());
        let conn = conn.get_or_insert_with(|| conn_rx.recv().unwrap()).clone();
        let got = got_tx.clone();
        let requester = thread::spawn(move || {
            let r = conn.request(Message::new("Q", round));
            if r.is_ok() {
                let _ = got.send(());
            }
            r
        });
        let req = loop {
            let (h, _) = peer.read_frame();
            if h["kind"] == "request" && h["type"] == "Q" {
                break h["req"].as_u64().unwrap();
            }
        };
        let answer = json!({"kind": "response", "type": "Q RESP", "data": round, "req": req});
        let mut both = tick(true);
        both.extend(frame_bytes(&serde_json::to_vec(&answer).unwrap(), &[]));
        peer.send(&both).unwrap();
        let (here, answered) = runs_rx.recv_timeout(PATIENCE).expect("the TICK ran");
        let r = requester.join().unwrap();
        assert_eq!(r.unwrap().data::<i64>().unwrap(), round);
        if here {
            assert!(
                answered,
                "the requester got its answer only after the handler returned"
            );
            lent_rounds += 1;
            if lent_rounds == 3 {
                return;
            }
        }
        while stale.try_recv().is_ok() {}
    }
    panic!("the waiting handler ran on the connection's thread in only {lent_rounds} rounds");
}

#[test]
fn a_quick_handlers_request_fails_at_once_when_the_peer_closes() {
    // A quick pooled handler runs on the connection's thread and makes a
    // request over its own connection; the peer closes instead of
    // answering. Nobody else reads that connection while the handler runs,
    // so the request fails at once with the connection closed, not at its
    // timeout.
    let a = node_with(|c| {
        c.quick_handlers_inline = true;
        c.request_timeout = PATIENCE;
    });
    let (runs_tx, runs_rx) = bounded::<(bool, Option<p2prs::Result<Message>>)>(16);
    a.add_handler("TICK", move |msg| {
        let here = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("p2prs-conn-"));
        let ask = msg.message().data::<bool>()?;
        let r = ask.then(|| msg.connection().request(Message::new("Q", 1)));
        let _ = runs_tx.send((here, r));
        Ok(())
    })
    .unwrap();
    let tick = |wait: bool| {
        let h = json!({"kind": "message", "type": "TICK", "data": wait});
        frame_bytes(&serde_json::to_vec(&h).unwrap(), &[])
    };
    for _ in 0..10 {
        let mut peer = RawPeer::handshaken(a.local_addr());
        warm_up(&runs_rx, || peer.send(&tick(false)).unwrap());
        peer.send(&tick(true)).unwrap();
        loop {
            let (h, _) = peer.read_frame();
            if h["kind"] == "request" && h["type"] == "Q" {
                break;
            }
        }
        drop(peer);
        let (here, r) = runs_rx.recv_timeout(PATIENCE).expect("the TICK ran");
        match r {
            Some(Err(Error::ConnectionClosed { .. })) => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
        if here {
            return;
        }
    }
    panic!("the asking handler never ran on the connection's thread");
}

#[test]
fn a_pooled_handler_that_makes_requests_stays_on_the_handler_threads() {
    // Quick runs move a pooled handler onto the connection's thread, but
    // a run that made a request waited on a peer, however fast: such a
    // handler stays on the handler threads (two of them asking each other
    // back over one connection could otherwise each hold up the thread
    // the other's answer needs). A handler that only answers moves.
    let a = node_with(|c| c.quick_handlers_inline = true);
    let (where_tx, where_rx) = bounded::<(&str, bool)>(64);
    let tx = where_tx.clone();
    a.add_handler("ASK", move |req| {
        let back = req.connection().request(Message::new("ECHO", 1))?;
        let here = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("p2prs-conn-"));
        let _ = tx.send(("ASK", here));
        req.respond(back)?;
        Ok(())
    })
    .unwrap();
    a.add_handler("PLAIN", move |req| {
        let here = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("p2prs-conn-"));
        let _ = where_tx.send(("PLAIN", here));
        req.respond(Message::new("PLAIN RESP", 1))?;
        Ok(())
    })
    .unwrap();
    let b = node();
    b.add_inline_handler("ECHO", |req| {
        let m = req.take_message();
        req.respond(m)?;
        Ok(())
    })
    .unwrap();
    let conn = b.connect(a.local_addr()).unwrap();
    let mut plain_moved = false;
    for _ in 0..100 {
        conn.request(Message::new("ASK", 1)).unwrap();
        conn.request(Message::new("PLAIN", 1)).unwrap();
        for _ in 0..2 {
            match where_rx.recv_timeout(PATIENCE).unwrap() {
                ("ASK", here) => assert!(
                    !here,
                    "a handler that requests ran on the connection's thread"
                ),
                (_, here) => plain_moved |= here,
            }
        }
    }
    assert!(
        plain_moved,
        "the quick handler never ran on the connection's thread"
    );
}

#[test]
fn request_without_handler_is_answered_no_handler() {
    let a = node();
    let b = node();
    let msg = expect_remote(
        b.request(a.local_addr(), Message::new("NOBODY", 1)),
        "no_handler",
    );
    assert!(msg.contains("NOBODY"), "the reason names the type: {msg}");
}

#[test]
fn handler_error_is_answered_handler_failed() {
    let a = node();
    a.add_handler("FAIL", |_req| Err("the disk is on fire".into()))
        .unwrap();
    // A handler whose data does not decode fails the same way.
    add_adder(&a);
    let b = node();
    let msg = expect_remote(
        b.request(a.local_addr(), Message::new("FAIL", ())),
        "handler_failed",
    );
    assert!(msg.contains("the disk is on fire"), "{msg}");
    expect_remote(
        b.request(a.local_addr(), Message::new("ADD", "seventeen")),
        "handler_failed",
    );
}

#[test]
fn handler_panic_is_answered_and_the_node_keeps_serving() {
    let a = node();
    add_adder(&a);
    a.add_handler("PANIC", |_req| panic!("deliberate test panic"))
        .unwrap();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    // More panics than handler threads: none of them is lost.
    for _ in 0..(test_config().handler_threads * 2) {
        let msg = expect_remote(conn.request(Message::new("PANIC", ())), "handler_panicked");
        assert!(msg.contains("deliberate test panic"), "{msg}");
    }
    assert!(conn.is_open());
    let resp = conn.request(Message::new("ADD", 17)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 18);
    let resp = node()
        .request(a.local_addr(), Message::new("ADD", 1))
        .unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 2);
}

#[test]
fn handler_that_does_not_respond_is_answered_no_response() {
    let a = node();
    a.add_handler("MUTE", |_req| Ok(())).unwrap();
    let b = node();
    expect_remote(
        b.request(a.local_addr(), Message::new("MUTE", ())),
        "no_response",
    );
}

#[test]
fn handler_can_make_requests_itself() {
    let c = adder();
    let b = node();
    let c_addr = c.local_addr();
    b.add_handler("ADD2", move |req| {
        let n: i64 = req.message().data()?;
        let once = req.node().request(c_addr, Message::new("ADD", n))?;
        let twice = req
            .node()
            .request(c_addr, Message::new("ADD", once.data::<i64>()?))?;
        req.respond(twice)?;
        Ok(())
    })
    .unwrap();
    let a = node();
    let resp = a.request(b.local_addr(), Message::new("ADD2", 40)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 42);
}

#[test]
fn handler_can_request_back_over_the_incoming_connection() {
    // A's handler asks B back over the connection the request came on, with
    // A's own (short) request timeout; B's SLOW handler never answers in time.
    let a = node_with(|c| c.request_timeout = Duration::from_millis(200));
    a.add_handler("CALLBACK", |req| {
        let back = req.connection();
        let n: i64 = back.request(Message::new("ADD", 1))?.data()?;
        let after = match back.request(Message::new("SLOW", ())) {
            Err(Error::Timeout { after, .. }) => after.as_millis() as u64,
            other => return Err(format!("expected a timeout, got {other:?}").into()),
        };
        req.respond(Message::new(
            "CALLBACK RESP",
            json!({"n": n, "after_ms": after}),
        ))?;
        Ok(())
    })
    .unwrap();
    let b = adder();
    let (_started, release) = blocking_handler(&b, "SLOW");
    let resp = b
        .request(a.local_addr(), Message::new("CALLBACK", ()))
        .unwrap();
    drop(release);
    assert_eq!(resp.data_value()["n"], 2);
    assert_eq!(
        resp.data_value()["after_ms"],
        200,
        "the incoming connection uses the node's request timeout"
    );
}

#[test]
fn handler_added_after_start_works_and_can_be_removed() {
    let a = node();
    let b = node();
    expect_remote(
        b.request(a.local_addr(), Message::new("LATE", 1)),
        "no_handler",
    );
    a.add_handler("LATE", |req| {
        req.respond(Message::new("LATE RESP", "here now"))?;
        Ok(())
    })
    .unwrap();
    let resp = b.request(a.local_addr(), Message::new("LATE", 1)).unwrap();
    assert_eq!(resp.as_text(), Some("here now"));
    assert!(a.remove_handler("LATE"));
    expect_remote(
        b.request(a.local_addr(), Message::new("LATE", 1)),
        "no_handler",
    );
}

#[test]
fn handler_given_to_the_builder_works() {
    let a = Node::builder()
        .config(test_config())
        .handler("TWICE", |req| {
            let n: i64 = req.message().data()?;
            req.respond(Message::new("TWICE RESP", n * 2))?;
            Ok(())
        })
        .start()
        .unwrap();
    let resp = node()
        .request(a.local_addr(), Message::new("TWICE", 21))
        .unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 42);
}

#[test]
fn reserved_and_empty_types_are_refused() {
    let a = node();
    let refused = |r: p2prs::Result<()>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(refused(a.add_handler("p2prs.ping", |_| Ok(()))));
    assert!(refused(a.add_handler("p2prs.anything", |_| Ok(()))));
    assert!(refused(a.add_handler("", |_| Ok(()))));
    let built = Node::builder()
        .config(test_config())
        .handler("p2prs.mine", |_| Ok(()))
        .start();
    assert!(matches!(built, Err(Error::InvalidArgument(_))));
    // Nearby names that are not reserved are fine.
    assert!(a.add_handler("p2prs", |_| Ok(())).is_ok());
    assert!(a.add_handler("P2PRS.X", |_| Ok(())).is_ok());
}

#[test]
fn request_timeout_gives_timeout() {
    let a = node();
    add_adder(&a);
    let (started, release) = blocking_handler(&a, "SLOW");
    let b = node();
    let r = b.request_timeout(
        a.local_addr(),
        Message::new("SLOW", ()),
        Duration::from_millis(200),
    );
    assert!(matches!(r, Err(Error::Timeout { .. })), "got {r:?}");
    started.recv_timeout(PATIENCE).expect("the handler ran");

    // The node-wide default, set short.
    let c = node_with(|cfg| cfg.request_timeout = Duration::from_millis(200));
    let r = c.request(a.local_addr(), Message::new("SLOW", ()));
    assert!(matches!(r, Err(Error::Timeout { .. })), "got {r:?}");

    // Late answers (no_response once released) are dropped; the connections still work.
    drop(release);
    for n in [b.clone(), c.clone()] {
        let resp = n.request(a.local_addr(), Message::new("ADD", 1)).unwrap();
        assert_eq!(resp.data::<i64>().unwrap(), 2);
    }
}

#[test]
fn a_request_times_out_on_time_while_another_thread_s_write_is_blocked() {
    // A peer that completes the handshake and never reads.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let deaf = thread::Builder::new()
        .name("test-deaf-peer".into())
        .spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let id = p2prs::Identity::generate().unwrap();
            p2prs::testing::SecureStream::handshake(s, id, None, b"{}").unwrap()
        })
        .unwrap();
    let n = node_with(|c| c.write_timeout = Duration::from_secs(4));
    let conn = n.connect(addr).unwrap();
    // Held open, unread, until the end of the test.
    let _deaf = deaf.join().unwrap();
    // One thread sends 1 MiB messages: once the socket buffers are full its
    // write blocks, holding the socket, until the write timeout.
    let (sent_tx, sent_rx) = bounded(16);
    let blobs = conn.clone();
    let sending = thread::Builder::new()
        .name("test-blobs".into())
        .spawn(move || -> p2prs::Result<()> {
            for i in 0..16 {
                blobs.send(Message::new("BLOB", i).with_body(vec![0; 1024 * 1024]))?;
                let _ = sent_tx.send(i);
            }
            Ok(())
        })
        .unwrap();
    sent_rx.recv_timeout(PATIENCE).unwrap();
    // Meanwhile a request on the same connection gives up at its own
    // timeout, not when the other thread's write does.
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let r = conn.request_timeout(Message::new("PING", ()), Duration::from_millis(200));
        assert!(matches!(r, Err(Error::Timeout { .. })), "got {r:?}");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "a request with a 200 ms timeout returned after {:?}",
            t.elapsed()
        );
    }
    // Shutting down ends the blocked write at once.
    n.shutdown();
    let r = sending.join().unwrap();
    assert!(
        r.is_err(),
        "16 MiB were written to a peer that does not read"
    );
}

// ---- Bounce -------------------------------------------------------------------

/// B answers ADD by bouncing it to `to`.
fn bouncer(to: std::net::SocketAddr) -> Node {
    let b = node();
    b.add_handler("ADD", move |req| {
        req.bounce(to)?;
        Ok(())
    })
    .unwrap();
    b
}

#[test]
fn bounce_response_reaches_the_original_requester() {
    let c = node();
    c.add_handler("ADD", |req| {
        let n: i64 = req.message().data()?;
        req.respond(Message::new("ADD RESP", json!({"sum": n + 1, "by": "C"})))?;
        Ok(())
    })
    .unwrap();
    let b = bouncer(c.local_addr());
    let a = node();
    for n in [17, 100] {
        let resp = a.request(b.local_addr(), Message::new("ADD", n)).unwrap();
        assert_eq!(resp.data_value(), &json!({"sum": n + 1, "by": "C"}));
    }
    // A never talked to C directly.
    assert_eq!(a.connection_count(), 1);
}

#[test]
fn bounce_to_a_failing_node_reports_its_error() {
    let c = node();
    c.add_handler("ADD", |_req| Err("C cannot add today".into()))
        .unwrap();
    let b = bouncer(c.local_addr());
    let a = node();
    let msg = expect_remote(
        a.request(b.local_addr(), Message::new("ADD", 1)),
        "handler_failed",
    );
    assert!(msg.contains("C cannot add today"), "{msg}");
}

#[test]
fn bounce_to_a_node_that_shuts_down_reports_it() {
    let c = node();
    let (started, release) = blocking_handler(&c, "ADD");
    let b = bouncer(c.local_addr());
    let a = node_with(|cfg| cfg.request_timeout = Duration::from_secs(60));
    let b_addr = b.local_addr();
    let asking = thread::spawn(move || a.request(b_addr, Message::new("ADD", 1)));
    started.recv_timeout(PATIENCE).expect("C's handler started");
    let c2 = c.clone();
    let stopping = thread::spawn(move || c2.shutdown());
    let result = asking.join().unwrap();
    drop(release);
    stopping.join().unwrap();
    expect_remote(result, "bounce_failed");
}

#[test]
fn bounce_to_an_unreachable_node_fails_the_handler() {
    // A port that was just free: nothing listens there.
    let gone = node();
    let gone_addr = gone.local_addr();
    gone.shutdown();
    let b = bouncer(gone_addr);
    let a = node();
    expect_remote(
        a.request(b.local_addr(), Message::new("ADD", 1)),
        "handler_failed",
    );
}

#[test]
fn bounce_cycle_is_refused() {
    // B bounces to C, C to D, D back to B: each over a connection other than
    // the one the request came on.
    let (b, c, d) = (node(), node(), node());
    for (from, to) in [
        (&b, c.local_addr()),
        (&c, d.local_addr()),
        (&d, b.local_addr()),
    ] {
        from.add_handler("LOOP", move |req| {
            req.bounce(to)?;
            Ok(())
        })
        .unwrap();
    }
    let a = node();
    let r = a.request_timeout(
        b.local_addr(),
        Message::new("LOOP", ()),
        Duration::from_secs(2),
    );
    assert!(
        matches!(r, Err(Error::Remote { .. })),
        "the requester is told, rather than timing out: {r:?}"
    );
}

// ---- Bodies and sizes -------------------------------------------------------------

#[test]
fn binary_bodies_arrive_byte_exact() {
    // Encrypted, and in plaintext mode, whose large bodies leave with
    // their header in one vectored write (the answers too, with a
    // deadline).
    for plain in [true, false] {
        let a = node_with(|c| c.insecure_plaintext = plain);
        echo_handler(&a);
        let b = node_with(|c| c.insecure_plaintext = plain);
        let conn = b.connect(a.local_addr()).unwrap();
        let mib: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0, 159, 146, 150],
            (0..=255u8).collect(),
            vec![3; 200_000],
            mib,
        ];
        for body in cases {
            let resp = conn.request(Message::bytes("ECHO", body.clone())).unwrap();
            assert_eq!(resp.body().map(|b| b.len()), Some(body.len()));
            assert!(
                resp.body() == Some(&body[..]),
                "body of {} bytes differs (plaintext: {plain})",
                body.len()
            );
            assert!(resp.data_value().is_null());
        }
    }
    let a = node();
    echo_handler(&a);
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    // JSON data and a body together; and no body at all stays no body.
    let resp = conn
        .request(Message::new("ECHO", json!({"name": "x.bin"})).with_body(vec![1, 2, 3]))
        .unwrap();
    assert_eq!(resp.data_value(), &json!({"name": "x.bin"}));
    assert_eq!(resp.body(), Some(&[1u8, 2, 3][..]));
    let resp = conn.request(Message::new("ECHO", 5)).unwrap();
    assert_eq!(resp.body(), None);
}

/// Requesters sharing one connection, with bodies small and large: a
/// read may poll (recv that does not wait) or block, into the connection's
/// buffer or straight into the record layer, on the connection's thread or
/// a requester's, and every answer must still be its request's, byte exact.
/// In plaintext mode, the rest of a large body waiting in the socket is
/// read straight into it, by either kind of reader.
#[test]
fn bodies_of_every_size_from_many_requesters_arrive_byte_exact() {
    for plain in [false, true] {
        bodies_from_many_requesters(plain);
    }
}

fn bodies_from_many_requesters(plain: bool) {
    const CALLERS: u32 = 4;
    let a = node_with(|c| {
        c.handler_threads = CALLERS as usize;
        c.insecure_plaintext = plain;
    });
    echo_handler(&a);
    let b = node_with(|c| c.insecure_plaintext = plain);
    let conn = b.connect(a.local_addr()).unwrap();
    thread::scope(|s| {
        for t in 0..CALLERS {
            let conn = conn.clone();
            s.spawn(move || {
                for k in 0..24u32 {
                    let len = [10usize, 70_000, 1_000, 300_001][(k + t) as usize % 4];
                    let seed = t * 1_000 + k;
                    let body: Vec<u8> = (0..len as u32)
                        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(2_654_435_761)) as u8)
                        .collect();
                    let resp = conn
                        .request(Message::new("ECHO", seed).with_body(body.clone()))
                        .unwrap();
                    assert_eq!(resp.data::<u32>().unwrap(), seed);
                    assert!(
                        resp.body() == Some(&body[..]),
                        "caller {t}, request {k}: a body of {len} bytes differs \
                         (plaintext: {plain})"
                    );
                }
            });
        }
    });
    assert_eq!(b.connection_count(), 1);
}

/// A stream of large bodies, sent faster than one reader takes them: in
/// plaintext mode most of each is read straight into it from the socket;
/// every body arrives whole, byte exact and in order, in either mode.
#[test]
fn a_stream_of_large_bodies_arrives_byte_exact_and_in_order() {
    const N: u32 = 40;
    for plain in [true, false] {
        let a = node_with(|c| c.insecure_plaintext = plain);
        let (tx, rx) = crossbeam_channel::unbounded::<(u32, Vec<u8>)>();
        a.add_inline_handler("BLOB", move |req| {
            let k: u32 = req.message().data()?;
            let _ = tx.send((k, req.message().body().unwrap_or_default().to_vec()));
            Ok(())
        })
        .unwrap();
        let b = node_with(|c| c.insecure_plaintext = plain);
        let conn = b.connect(a.local_addr()).unwrap();
        let body = |k: u32| -> Vec<u8> {
            let len = 64 * 1024 + (k as usize * 37_123) % (1024 * 1024);
            (0..len as u32)
                .map(|i| (i.wrapping_mul(131) ^ k.wrapping_mul(2_654_435_761)) as u8)
                .collect()
        };
        let sender = {
            let conn = conn.clone();
            thread::Builder::new()
                .name("test-blob-sender".into())
                .spawn(move || {
                    for k in 0..N {
                        conn.send(Message::new("BLOB", k).with_body(body(k)))?;
                    }
                    Ok::<(), p2prs::Error>(())
                })
                .unwrap()
        };
        for k in 0..N {
            let (got, bytes) = rx.recv_timeout(PATIENCE).expect("every body arrives");
            assert_eq!(got, k, "in the order sent (plaintext: {plain})");
            assert!(
                bytes == body(k),
                "body {k} of {} bytes differs (plaintext: {plain})",
                bytes.len()
            );
        }
        sender.join().unwrap().unwrap();
    }
}

#[test]
fn one_way_binary_message_arrives_byte_exact() {
    let a = node();
    let b = node();
    let events = b.events();
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    a.send_to_address(b.local_addr(), Message::bytes("FILE", body.clone()))
        .unwrap();
    a.send_to_address(b.local_addr(), Message::bytes("FILE", Vec::new()))
        .unwrap();
    for want in [body, Vec::new()] {
        match events.recv_timeout(PATIENCE).expect("an event") {
            Event::Message { message, .. } => {
                assert_eq!(message.kind(), "FILE");
                assert!(message.body() == Some(&want[..]), "{} bytes", want.len());
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[test]
fn oversize_frame_is_refused_by_the_sender_and_the_connection_survives() {
    let a = adder();
    echo_handler(&a);
    let b = node_with(|c| c.max_frame_size = 64 * 1024);
    let conn = b.connect(a.local_addr()).unwrap();
    let big = || Message::bytes("ECHO", vec![7; 100_000]);
    let too_large = |r: &p2prs::Result<_>| matches!(r, Err(Error::FrameTooLarge { size, max }) if *max == 64 * 1024 && *size > *max);
    let r = conn.request(big());
    assert!(too_large(&r), "request: {r:?}");
    let r = conn.send(big()).map(|_| Message::text(""));
    assert!(too_large(&r), "send: {r:?}");
    let r = b.request(a.local_addr(), big());
    assert!(too_large(&r), "request by address: {r:?}");
    assert!(conn.is_open());
    let resp = conn.request(Message::new("ADD", 17)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 18);
    // Just under the limit goes through.
    let resp = conn
        .request(Message::bytes("ECHO", vec![9; 60 * 1024]))
        .unwrap();
    assert_eq!(resp.body().map(<[u8]>::len), Some(60 * 1024));
}

#[test]
fn oversize_frame_is_refused_by_the_receiver() {
    let a = node_with(|c| c.max_frame_size = 64 * 1024);
    echo_handler(&a);
    add_adder(&a);
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    let r = conn.request(Message::bytes("ECHO", vec![7; 100_000]));
    assert!(
        matches!(&r, Err(Error::Remote { code, .. }) if *code == p2prs::ErrorCode::FrameTooLarge),
        "A closes the connection that sent too much, and says why: {r:?}"
    );
    assert!(wait_until(PATIENCE, || !conn.is_open()));
    let resp = b.request(a.local_addr(), Message::new("ADD", 1)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 2);
}

// ---- Connections --------------------------------------------------------------------

#[test]
fn request_in_flight_fails_at_once_when_the_peer_shuts_down() {
    let a = node();
    let (started, release) = blocking_handler(&a, "BLOCK");
    // Long timeout: only a prompt ConnectionClosed lets this test pass.
    let b = node_with(|c| c.request_timeout = Duration::from_secs(60));
    let a_addr = a.local_addr();
    let b2 = b.clone();
    let asking = thread::spawn(move || b2.request(a_addr, Message::new("BLOCK", ())));
    started.recv_timeout(PATIENCE).expect("the handler started");
    let a2 = a.clone();
    // A's shutdown waits for its handler thread, which the test releases below.
    let stopping = thread::spawn(move || a2.shutdown());
    let result = asking.join().unwrap();
    drop(release);
    stopping.join().unwrap();
    assert!(
        matches!(result, Err(Error::ConnectionClosed { .. })),
        "got {result:?}"
    );
    assert!(wait_until(PATIENCE, || b.connection_count() == 0));
}

#[test]
fn close_all_connections_closes_and_fails_requests_in_flight() {
    let a = adder();
    let (started, release) = blocking_handler(&a, "BLOCK");
    let c = adder();
    let b = node_with(|cfg| cfg.request_timeout = Duration::from_secs(60));
    let conn = b.connect(a.local_addr()).unwrap();
    b.request(c.local_addr(), Message::new("ADD", 1)).unwrap();
    assert_eq!(b.connection_count(), 2);

    let conn2 = conn.clone();
    let asking = thread::spawn(move || conn2.request(Message::new("BLOCK", ())));
    started.recv_timeout(PATIENCE).expect("the handler started");
    b.close_all_connections();
    let result = asking.join().unwrap();
    drop(release);
    assert!(
        matches!(result, Err(Error::ConnectionClosed { .. })),
        "got {result:?}"
    );
    assert!(!conn.is_open());
    assert!(matches!(
        conn.request(Message::new("ADD", 1)),
        Err(Error::ConnectionClosed { .. })
    ));
    assert!(wait_until(PATIENCE, || b.connection_count() == 0));
    assert!(wait_until(PATIENCE, || a.connection_count() == 0
        && c.connection_count() == 0));
    // New connections can be made afterwards.
    let resp = b.request(a.local_addr(), Message::new("ADD", 17)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 18);
}

#[test]
fn temporary_connection_closes_when_idle_but_a_constant_one_stays() {
    let a = adder();
    let c = adder();
    let b = node_with(|cfg| cfg.idle_timeout = Duration::from_millis(200));
    // The constant connection is opened first, so it has been idle at least
    // as long as the temporary one when that one closes.
    let constant = b.connect(a.local_addr()).unwrap();
    let resp = b.request(c.local_addr(), Message::new("ADD", 1)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 2);
    assert!(
        wait_until(PATIENCE, || c.connection_count() == 0),
        "the temporary connection to C closed when idle"
    );
    assert!(wait_until(PATIENCE, || b.connection_count() == 1));
    assert!(constant.is_open());
    assert_eq!(a.connection_count(), 1);
    let resp = constant.request(Message::new("ADD", 17)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 18);

    // A one-way send uses a temporary connection too.
    let events = c.events();
    b.send_to_address(c.local_addr(), Message::text("bye"))
        .unwrap();
    assert!(events.recv_timeout(PATIENCE).is_ok());
    assert!(wait_until(PATIENCE, || c.connection_count() == 0));
    assert!(constant.is_open());
}

#[test]
fn send_after_the_peer_closed_an_idle_connection_reconnects() {
    let a = adder();
    let b = node();
    let resp = b.request(a.local_addr(), Message::new("ADD", 1)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 2);
    // A drops its side; B's next send and request find or open a live one.
    a.close_all_connections();
    assert!(wait_until(PATIENCE, || b.connection_count() == 0));
    let events = a.events();
    b.send_to_address(a.local_addr(), Message::text("again"))
        .unwrap();
    assert!(events.recv_timeout(PATIENCE).is_ok());
    let resp = b.request(a.local_addr(), Message::new("ADD", 2)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 3);
}

#[test]
fn connecting_to_nothing_is_an_io_error() {
    let gone = node();
    let addr = gone.local_addr();
    gone.shutdown();
    let b = node();
    let r = b.request(addr, Message::new("ADD", 1));
    assert!(matches!(r, Err(Error::Io { .. })), "got {r:?}");
    let r = b.connect("not an address");
    assert!(matches!(r, Err(Error::InvalidAddress(_))), "got {r:?}");
}

// ---- Inline handlers ------------------------------------------------------

fn thread_name() -> String {
    thread::current().name().unwrap_or_default().to_string()
}

#[test]
fn inline_handler_answers_a_request_on_the_connection_thread() {
    let a = node();
    let (tx, rx) = bounded(16);
    a.add_inline_handler("ADD", move |req| {
        let _ = tx.send(thread_name());
        let n: i64 = req.message().data()?;
        req.respond(Message::new("ADD RESP", n + 1))?;
        Ok(())
    })
    .unwrap();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    for n in 0..20 {
        let resp = conn.request(Message::new("ADD", n)).unwrap();
        assert_eq!(resp.data::<i64>().unwrap(), n + 1);
        let ran_on = rx.recv_timeout(PATIENCE).unwrap();
        assert!(ran_on.starts_with("p2prs-conn-"), "ran on {ran_on:?}");
    }
}

#[test]
fn pooled_handler_still_runs_on_a_handler_thread() {
    let a = node();
    let (tx, rx) = bounded(1);
    a.add_handler("WHERE", move |req| {
        let _ = tx.send(thread_name());
        req.respond(Message::new("HERE", ()))?;
        Ok(())
    })
    .unwrap();
    let b = node();
    b.request(a.local_addr(), Message::new("WHERE", ()))
        .unwrap();
    let ran_on = rx.recv_timeout(PATIENCE).unwrap();
    assert!(ran_on.starts_with("p2prs-handler-"), "ran on {ran_on:?}");
}

#[test]
fn builder_registers_an_inline_handler() {
    let a = Node::builder()
        .config(test_config())
        .inline_handler("ADD", |req| {
            let n: i64 = req.message().data()?;
            req.respond(Message::new("ADD RESP", n + 1))?;
            Ok(())
        })
        .start()
        .unwrap();
    let b = node();
    let resp = b.request(a.local_addr(), Message::new("ADD", 41)).unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 42);
    // A reserved type is refused, as for pooled handlers.
    let r = a.add_inline_handler("p2prs.mine", |_| Ok(()));
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "got {r:?}");
}

#[test]
fn panicking_inline_handler_is_answered_and_the_connection_keeps_working() {
    let a = node();
    a.add_inline_handler("BOOM", |_req| panic!("inline kaboom"))
        .unwrap();
    a.add_inline_handler("QUIET", |_req| Ok(())).unwrap();
    a.add_inline_handler("FAIL", |_req| Err("no good".into()))
        .unwrap();
    a.add_inline_handler("ADD", |req| {
        let n: i64 = req.message().data()?;
        req.respond(Message::new("ADD RESP", n + 1))?;
        Ok(())
    })
    .unwrap();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    for _ in 0..3 {
        let why = expect_remote(conn.request(Message::new("BOOM", ())), "handler_panicked");
        assert!(why.contains("inline kaboom"), "{why}");
        expect_remote(conn.request(Message::new("QUIET", ())), "no_response");
        expect_remote(conn.request(Message::new("FAIL", ())), "handler_failed");
        // The same connection, and its thread, still serve.
        assert!(conn.is_open());
        let resp = conn.request(Message::new("ADD", 1)).unwrap();
        assert_eq!(resp.data::<i64>().unwrap(), 2);
    }
}

#[test]
fn inline_handler_requesting_over_its_own_connection_fails_at_once() {
    let a = node();
    let (tx, rx) = bounded(1);
    a.add_inline_handler("CALLBACK", move |req| {
        // A request back over the connection this handler's thread reads:
        // its answer could never be read, so it must fail now, not time out.
        let back = req.connection().request(Message::new("ADD", 1));
        let _ = tx.send(back);
        req.respond(Message::new("DONE", ()))?;
        Ok(())
    })
    .unwrap();
    let b = adder();
    let conn = b.connect(a.local_addr()).unwrap();
    let resp = conn.request(Message::new("CALLBACK", ())).unwrap();
    assert_eq!(resp.kind(), "DONE");
    match rx.recv_timeout(PATIENCE).unwrap() {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("inline"), "{why}"),
        other => panic!("expected InvalidArgument at once, got {other:?}"),
    }
    // The connection is unharmed.
    let resp = conn.request(Message::new("CALLBACK", ())).unwrap();
    assert_eq!(resp.kind(), "DONE");
}

#[test]
fn the_library_s_reserved_types_are_refused_by_the_sender() {
    // As for handlers and broadcasts: a program cannot send the ring's own
    // messages, and is told at once, before any connection or lookup.
    let a = adder();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    let dead = "127.0.0.1:1";
    let refused = |r: p2prs::Result<()>| matches!(r, Err(Error::InvalidArgument(ref why)) if why.contains("reserved"));
    for kind in ["p2prs.ping", "p2prs.leaving"] {
        let msg = || Message::new(kind, json!({}));
        assert!(refused(b.send(dead, msg())));
        assert!(refused(b.send_to_address(dead, msg())));
        assert!(refused(b.request(dead, msg()).map(drop)));
        assert!(refused(b.request_timeout(dead, msg(), PATIENCE).map(drop)));
        assert!(refused(b.send_to_id(p2prs::NodeId(7), msg())));
        assert!(refused(b.send_to_peer_book(msg(), &[]).map(drop)));
        assert!(refused(conn.send(msg())));
        assert!(refused(conn.request(msg()).map(drop)));
        assert!(refused(b.send_to_connection(&conn, msg())));
    }
    assert!(conn.is_open());
    let r = conn.request(Message::new("ADD", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 2);
}

#[test]
fn a_message_without_a_type_is_refused_by_the_sender() {
    let a = adder();
    let b = node();
    let conn = b.connect(a.local_addr()).unwrap();
    for kind in ["", "  "] {
        assert!(matches!(
            conn.request(Message::new(kind, 1)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            b.send_to_address(a.local_addr(), Message::new(kind, 1)),
            Err(Error::InvalidArgument(_))
        ));
    }
    // The connection was never touched.
    assert!(conn.is_open());
    assert_eq!(
        conn.request(Message::new("ADD", 1))
            .unwrap()
            .data::<i64>()
            .unwrap(),
        2
    );
}

#[test]
fn a_closed_handle_refuses_to_send_even_if_the_connection_stays_for_others() {
    let a = adder();
    let b = node();
    let first = b.connect(a.local_addr()).unwrap();
    let second = b.connect(a.local_addr()).unwrap();
    first.close();
    assert!(!first.is_open());
    assert!(matches!(
        first.request(Message::new("ADD", 1)),
        Err(Error::ConnectionClosed { .. })
    ));
    // The other hold keeps the connection itself open and usable.
    assert!(second.is_open());
    assert_eq!(
        second
            .request(Message::new("ADD", 1))
            .unwrap()
            .data::<i64>()
            .unwrap(),
        2
    );
    second.close();
    assert!(wait_until(PATIENCE, || b.connection_count() == 0));
}

#[test]
fn a_frame_the_receiver_refuses_for_its_size_fails_with_that_reason() {
    // The receiver accepts 64 KiB frames; the sender allows 16 MiB.
    let small = node_with(|c| c.max_frame_size = 64 * 1024);
    echo_handler(&small);
    let sender = node();
    let conn = sender.connect(small.local_addr()).unwrap();
    let r = conn.request(Message::bytes("ECHO", vec![7; 4_000_000]));
    match r {
        Err(Error::Remote { code, message }) => {
            assert_eq!(code, p2prs::ErrorCode::FrameTooLarge, "{message}");
            assert!(message.contains("65536"), "{message}");
        }
        other => panic!("expected the receiver's refusal, got {other:?}"),
    }
    // The receiver serves others as before.
    let other = node();
    let resp = other
        .request(small.local_addr(), Message::new("ECHO", 5))
        .unwrap();
    assert_eq!(resp.data::<i64>().unwrap(), 5);
}

/// Call `tick` (which has the peer send a frame to a handler, and read
/// what comes back if anything) until the handler reports (first of its
/// run report) that it ran on the connection's thread: it has proved quick.
fn warm_up<T>(runs: &Receiver<(bool, T)>, mut tick: impl FnMut()) {
    for _ in 0..200 {
        tick();
        let (here, _) = runs.recv_timeout(PATIENCE).expect("a TICK ran");
        if here {
            return;
        }
    }
    panic!("the quick handler never ran on the connection's thread");
}

#[test]
fn an_answer_made_is_not_held_while_a_later_quick_handler_runs_long() {
    // The peer sends two requests in one write. The first is answered at
    // once by a pooled handler that has proved quick (it runs on the
    // connection's thread); the second, to the same handler, takes 2 s.
    // The first answer must not wait in the writer for the second run.
    let a = node_with(|c| c.quick_handlers_inline = true);
    let (runs_tx, runs_rx) = bounded::<(bool, ())>(64);
    a.add_handler("WORK", move |req| {
        let here = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("p2prs-conn-"));
        let slow = req.message().data::<bool>()?;
        if slow {
            thread::sleep(Duration::from_secs(2));
        }
        let _ = req.respond(Message::new("DONE", slow));
        let _ = runs_tx.try_send((here, ()));
        Ok(())
    })
    .unwrap();
    let mut peer = RawPeer::handshaken(a.local_addr());
    let next_id = std::cell::Cell::new(0u64);
    let request = |slow: bool| {
        next_id.set(next_id.get() + 1);
        let h = json!({"kind": "request", "type": "WORK", "data": slow, "req": next_id.get()});
        frame_bytes(&serde_json::to_vec(&h).unwrap(), &[])
    };
    // Until the handler has proved quick and runs where it is read.
    warm_up(&runs_rx, || {
        peer.send(&request(false)).unwrap();
        let (h, _) = peer.read_frame();
        assert_eq!(h["kind"], "response");
    });
    let mut both = request(false);
    let quick_id = next_id.get();
    both.extend(request(true));
    let sent = std::time::Instant::now();
    peer.send(&both).unwrap();
    let (h, _) = peer.read_frame();
    let took = sent.elapsed();
    assert_eq!(h["req"], quick_id, "{h}");
    assert!(
        took < Duration::from_millis(1000),
        "the quick answer waited {took:?}, held behind the next handler's run"
    );
}

// ---- A connection this node opened, and a peer that speaks first ----------

/// A peer listening on loopback that runs the secure handshake on the first
/// connection it accepts, then does `then` with the handshaken stream.
fn listening_peer(
    then: impl FnOnce(p2prs::testing::SecureStream) + Send + 'static,
) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    let addr = listener.local_addr().unwrap();
    let h = thread::Builder::new()
        .name("test-listening-peer".into())
        .spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let s = p2prs::testing::SecureStream::handshake(
                stream,
                p2prs::Identity::generate().unwrap(),
                None,
                b"{}",
            )
            .expect("handshake");
            then(s)
        })
        .unwrap();
    (addr, h)
}

fn text_frame(text: &str) -> Vec<u8> {
    let h = json!({"kind": "message", "type": TEXT, "data": text});
    frame_bytes(&serde_json::to_vec(&h).unwrap(), &[])
}

fn expect_text(events: &p2prs::Events, want: &str) -> std::time::Instant {
    match events.recv_timeout(PATIENCE) {
        Ok(Event::Message { message, .. }) => {
            assert_eq!(message.as_text(), Some(want));
            std::time::Instant::now()
        }
        other => panic!("expected the TEXT {want:?}, got {other:?}"),
    }
}

#[test]
fn a_message_the_peer_sends_right_after_the_handshake_reaches_the_node_that_dialed_it() {
    for round in 0..10 {
        let a = node();
        let events = a.events();
        let (sent_tx, sent_rx) = bounded::<std::time::Instant>(1);
        let (done_tx, done_rx) = bounded::<()>(1);
        let (addr, peer) = listening_peer(move |mut s| {
            s.write_plain(&text_frame("first")).unwrap();
            let _ = sent_tx.send(std::time::Instant::now());
            // Keep the connection open, saying nothing more.
            let _ = done_rx.recv_timeout(PATIENCE);
        });
        // The node opens the connection and sends nothing on it.
        let conn = a.connect(addr).unwrap();
        let got = expect_text(&events, "first");
        let sent = sent_rx.recv_timeout(PATIENCE).unwrap();
        let took = got.saturating_duration_since(sent);
        assert!(
            took < Duration::from_millis(1000),
            "round {round}: the peer's first message took {took:?}"
        );
        assert!(conn.is_open());
        drop(done_tx);
        peer.join().unwrap();
    }
}

#[test]
fn a_message_the_peer_sends_later_reaches_the_node_that_dialed_it_and_said_nothing() {
    // The node's connection thread has left the socket to requesters by
    // then; nobody requests.
    let a = node();
    let events = a.events();
    let (go_tx, go_rx) = bounded::<()>(1);
    let (sent_tx, sent_rx) = bounded::<std::time::Instant>(1);
    let (addr, peer) = listening_peer(move |mut s| {
        for i in 0..5 {
            if go_rx.recv_timeout(PATIENCE).is_err() {
                return;
            }
            s.write_plain(&text_frame(&format!("m{i}"))).unwrap();
            let _ = sent_tx.send(std::time::Instant::now());
        }
        let _ = go_rx.recv_timeout(PATIENCE);
    });
    let conn = a.connect(addr).unwrap();
    for i in 0..5 {
        go_tx.send(()).unwrap();
        let got = expect_text(&events, &format!("m{i}"));
        let sent = sent_rx.recv_timeout(PATIENCE).unwrap();
        let took = got.saturating_duration_since(sent);
        assert!(took < Duration::from_millis(1000), "m{i} took {took:?}");
    }
    assert!(conn.is_open());
    drop(go_tx);
    peer.join().unwrap();
}

#[test]
fn a_request_the_peer_sends_first_is_answered_by_the_node_that_dialed_it() {
    let a = node();
    echo_handler(&a);
    let (answer_tx, answer_rx) = bounded::<serde_json::Value>(1);
    let (addr, peer) = listening_peer(move |mut s| {
        let h = json!({"kind": "request", "type": "ECHO", "data": 7, "req": 1});
        s.write_plain(&frame_bytes(&serde_json::to_vec(&h).unwrap(), &[]))
            .unwrap();
        s.socket()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            match s.read_plain(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            if buf.len() >= 8 {
                let hl = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                let bl = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                if buf.len() >= 8 + hl + bl {
                    let _ = answer_tx.send(serde_json::from_slice(&buf[8..8 + hl]).unwrap());
                    return;
                }
            }
        }
    });
    let _conn = a.connect(addr).unwrap();
    let h = answer_rx.recv_timeout(PATIENCE).expect("an answer");
    assert_eq!(h["kind"], "response", "{h}");
    assert_eq!(h["req"], 1, "{h}");
    peer.join().unwrap();
}

#[test]
fn a_peer_that_closes_right_after_the_handshake_is_seen_closed_by_the_node_that_dialed_it() {
    for _ in 0..10 {
        let a = node();
        let (addr, peer) = listening_peer(drop);
        let conn = match a.connect(addr) {
            Ok(c) => c,
            // Closed before the node had the connection: seen as well.
            Err(_) => continue,
        };
        peer.join().unwrap();
        assert!(
            wait_until(PATIENCE, || !conn.is_open()),
            "the closed connection still looks open"
        );
        assert_eq!(a.connection_count(), 0);
    }
}

#[test]
fn a_message_the_peer_sends_while_the_dialer_waits_on_a_request_is_delivered() {
    // The node's requester reads the socket for an answer that does not
    // come yet; the message it meets goes to the connection's thread.
    let a = node();
    let events = a.events();
    let (got_tx, got_rx) = bounded::<()>(1);
    let (addr, peer) = listening_peer(move |mut s| {
        s.socket()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        // Wait for the node's request.
        let mut chunk = [0u8; 4096];
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut buf = Vec::new();
        let req = loop {
            assert!(std::time::Instant::now() < deadline, "no request came");
            if let Ok(n) = s.read_plain(&mut chunk) {
                assert!(n > 0, "the node closed");
                buf.extend_from_slice(&chunk[..n]);
            }
            if buf.len() >= 8 {
                let hl = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() >= 8 + hl {
                    let h: serde_json::Value = serde_json::from_slice(&buf[8..8 + hl]).unwrap();
                    break h["req"].as_u64().unwrap();
                }
            }
        };
        s.write_plain(&text_frame("meanwhile")).unwrap();
        // Answer once the node has the message.
        let _ = got_rx.recv_timeout(PATIENCE);
        let h = json!({"kind": "response", "type": "ECHO RESP", "data": 1, "req": req});
        s.write_plain(&frame_bytes(&serde_json::to_vec(&h).unwrap(), &[]))
            .unwrap();
        let _ = s.read_plain(&mut chunk);
    });
    let conn = a.connect(addr).unwrap();
    let requester = thread::Builder::new()
        .name("test-requester".into())
        .spawn(move || conn.request(Message::new("ECHO", 1)))
        .unwrap();
    expect_text(&events, "meanwhile");
    got_tx.send(()).unwrap();
    let r = requester.join().unwrap().expect("the answer");
    assert_eq!(r.kind(), "ECHO RESP");
    drop(a);
    peer.join().unwrap();
}

/// A connection's thread may serve a later connection once its own closed
/// (the node's spare connection thread). It is then no longer that closed
/// connection's reader: an inline handler on the new connection that makes
/// a request on a kept handle to the closed one is told it is closed, not
/// that it would wait on its own reads.
#[test]
fn a_reused_connection_thread_no_longer_reads_its_closed_connection() {
    let server = Node::builder().start().unwrap();
    let seen: Arc<parking_lot::Mutex<Vec<(thread::ThreadId, p2prs::Connection)>>> = Arc::default();
    let kept = Arc::clone(&seen);
    server
        .add_inline_handler("PROBE", move |r| {
            let me = thread::current().id();
            let mut g = kept.lock();
            // A closed connection this thread read before, if any.
            let old = g
                .iter()
                .find(|(t, c)| *t == me && !c.is_open())
                .map(|(_, c)| c.clone());
            g.push((me, r.connection()));
            drop(g);
            let verdict = match old {
                None => "fresh".to_string(),
                Some(c) => match c.request(Message::new("X", 0)) {
                    Err(Error::ConnectionClosed { .. }) => "closed".to_string(),
                    other => format!("{other:?}"),
                },
            };
            r.respond(Message::new("VERDICT", verdict))?;
            Ok(())
        })
        .unwrap();
    let client = Node::builder().start().unwrap();
    for _ in 0..50 {
        let c = client.connect(server.local_addr()).unwrap();
        let verdict: String = c.request(Message::new("PROBE", 0)).unwrap().data().unwrap();
        c.close();
        assert!(wait_until(PATIENCE, || server.connection_count() == 0));
        if verdict != "fresh" {
            assert_eq!(verdict, "closed");
            return;
        }
    }
    panic!("no connection thread served a second connection in 50 tries");
}

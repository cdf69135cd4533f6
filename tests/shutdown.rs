//! Shutdown leaves no thread behind.
//!
//! This binary holds exactly one test, so that no other test's threads come
//! and go while the process's threads are counted.

mod support;

use crossbeam_channel::bounded;
use p2prs::{Error, Message, Node};
use std::net::TcpStream;
use support::*;

fn is_shutdown<T: std::fmt::Debug>(r: p2prs::Result<T>) -> bool {
    matches!(r, Err(Error::Shutdown))
}

#[test]
fn shutdown_joins_every_thread_and_closes_every_socket() {
    capture_logs();
    let baseline = thread_count();

    // ---- Several nodes, talking in every way --------------------------------
    let a = adder();
    let b = adder();
    let c = adder();
    let d = adder();
    // B forwards ADD2 to C with a nested request from its handler, and
    // bounces ADD3 to D.
    let c_addr = c.local_addr();
    let d_addr = d.local_addr();
    b.add_handler("ADD2", move |req| {
        let n: i64 = req.message().data()?;
        let r = req.node().request(c_addr, Message::new("ADD", n))?;
        req.respond(Message::new("ADD2 RESP", r.data::<i64>()? + 1))?;
        Ok(())
    })
    .unwrap();
    b.add_handler("ADD3", move |req| {
        req.bounce(d_addr)?;
        Ok(())
    })
    .unwrap();
    d.add_handler("ADD3", |req| {
        let n: i64 = req.message().data()?;
        req.respond(Message::new("ADD3 RESP", n + 2))?;
        Ok(())
    })
    .unwrap();

    let ab = a.connect(b.local_addr()).unwrap();
    let bc = b.connect(c.local_addr()).unwrap();
    let ca = c.connect(a.local_addr()).unwrap();
    for n in 0..10i64 {
        assert_eq!(
            ab.request(Message::new("ADD", n))
                .unwrap()
                .data::<i64>()
                .unwrap(),
            n + 1
        );
        assert_eq!(
            bc.request(Message::new("ADD", n))
                .unwrap()
                .data::<i64>()
                .unwrap(),
            n + 1
        );
        assert_eq!(
            ca.request(Message::new("ADD", n))
                .unwrap()
                .data::<i64>()
                .unwrap(),
            n + 1
        );
    }
    let r = a.request(b.local_addr(), Message::new("ADD2", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 3);
    let r = a.request(b.local_addr(), Message::new("ADD3", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 3);
    // Temporary connections, and a message to an events receiver.
    let events = d.events();
    a.send_to_address(d.local_addr(), Message::text("hi"))
        .unwrap();
    assert!(events.recv_timeout(PATIENCE).is_ok());
    let r = d.request(a.local_addr(), Message::new("ADD", 5)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 6);
    // A stream of one-way messages (past its first few, written in batches,
    // by the sender or the node's flusher thread).
    for k in 0..200i64 {
        ab.send(Message::new("NOTE", k)).unwrap();
    }
    // A peer stuck in its handshake when the node stops.
    let mut silent = RawPeer::connect(b.local_addr());
    silent.read_preamble();
    assert!(thread_count() > baseline);

    // ---- Shutdown, twice; then every operation says so --------------------
    a.shutdown();
    assert!(a.is_shut_down());
    a.shutdown();
    assert!(is_shutdown(
        a.request(b.local_addr(), Message::new("ADD", 1))
    ));
    assert!(is_shutdown(
        a.send_to_address(b.local_addr(), Message::text("x"))
    ));
    assert!(is_shutdown(a.connect(b.local_addr())));
    assert!(is_shutdown(a.request(&ab, Message::new("ADD", 1))));
    assert!(!ab.is_open());
    assert!(matches!(
        ab.request(Message::new("ADD", 1)),
        Err(Error::ConnectionClosed { .. })
    ));
    // Its listening socket is closed.
    assert!(TcpStream::connect(a.local_addr()).is_err());
    // The others noticed and dropped their connections to it: B keeps its
    // connections to C and D, C its connection from B.
    assert!(wait_until(PATIENCE, || b.connection_count() == 2
        && c.connection_count() == 1));
    // ...and still work among themselves.
    assert_eq!(
        bc.request(Message::new("ADD", 1))
            .unwrap()
            .data::<i64>()
            .unwrap(),
        2
    );
    drop(ab);

    // ---- Dropping the last handle shuts down too ---------------------------
    let b_addr = b.local_addr();
    let b2 = b.clone();
    drop(b);
    let r = b2.request(c.local_addr(), Message::new("ADD", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 2, "a clone keeps the node alive");
    drop(b2);
    assert!(TcpStream::connect(b_addr).is_err(), "B stopped listening");
    assert!(
        silent.closed_within(PATIENCE),
        "B closed the peer in its handshake"
    );
    assert!(matches!(
        bc.request(Message::new("ADD", 1)),
        Err(Error::ConnectionClosed { .. })
    ));
    drop(bc);

    // ---- The last owning handle dropped while a handler runs ---------------
    // D's handler holds only a non-owning handle (its Incoming): dropping the
    // user's handle stops D at once, and the handler, let go, finds it shut
    // down.
    let (started_tx, started_rx) = bounded::<()>(1);
    let (release_tx, release_rx) = bounded::<()>(1);
    let (seen_tx, seen_rx) = bounded::<bool>(1);
    d.add_handler("HOLD", move |req| {
        let _ = started_tx.send(());
        let _ = release_rx.recv_timeout(PATIENCE);
        let _ = seen_tx.send(req.node().is_shut_down());
        req.respond(Message::new("HOLD RESP", "done"))?;
        Ok(())
    })
    .unwrap();
    let d_addr = d.local_addr();
    let asker = c.clone();
    let asking = std::thread::spawn(move || asker.request(d_addr, Message::new("HOLD", ())));
    started_rx
        .recv_timeout(PATIENCE)
        .expect("D's handler started");
    // Let the handler go once D has stopped listening and C has seen its
    // connection to D closed (A and B are gone: it is C's last), so that
    // the drop below is not held for the whole shutdown grace. (A probe's
    // connect can wake D's accept thread, which drops the listener, before
    // D has closed its connections.)
    let watcher = c.non_owning();
    let releaser = std::thread::spawn(move || {
        let stopped = wait_until(PATIENCE, || {
            TcpStream::connect(d_addr).is_err() && watcher.connection_count() == 0
        });
        let _ = release_tx.send(());
        stopped
    });
    drop(d);
    drop(events);
    assert!(
        releaser.join().unwrap(),
        "D stopped although its handler holds a handle"
    );
    assert_eq!(
        seen_rx.recv_timeout(PATIENCE),
        Ok(true),
        "the handler's handle reports D shut down"
    );
    assert!(
        asking.join().unwrap().is_err(),
        "the request fails: D closed its connections"
    );

    // ---- Everything gone ------------------------------------------------------
    drop(ca);
    c.shutdown();
    drop(c);
    drop(a);
    assert!(
        wait_until(PATIENCE, || thread_count() == baseline),
        "threads: {} now, {baseline} before the nodes started",
        thread_count()
    );
    // Nothing panicked in a node thread along the way.
    assert!(!warned(&["panicked"]));

    // A node started and dropped at once leaves nothing either.
    let n = Node::builder().start().unwrap();
    assert!(thread_count() > baseline);
    drop(n);
    assert!(wait_until(PATIENCE, || thread_count() == baseline));
}

//! The process-wide thread budget: at the cap, inbound connections are
//! refused with a warning, outbound ones and new nodes fail with
//! `Error::ResourceExhausted`, and nothing aborts; below it again, peers
//! are served.
//!
//! This binary holds exactly one test: the budget is process-wide.

mod support;

use p2prs::{Error, Message, Node};
use support::*;

fn exhausted<T: std::fmt::Debug>(r: p2prs::Result<T>) -> bool {
    matches!(r, Err(Error::ResourceExhausted { ref what, .. }) if what == "threads")
}

#[test]
fn at_the_thread_budget_connections_are_refused_and_nothing_aborts() {
    assert_eq!(p2prs::max_threads(), p2prs::DEFAULT_MAX_THREADS);
    let server = adder();
    let client = node();
    let third = adder();
    // A connection that works before the cap.
    let kept = client.connect(server.local_addr()).unwrap();
    let used = p2prs::running_threads();
    assert!(used >= 8, "two nodes and a connection run {used} threads");

    p2prs::set_max_threads(used);
    // Outbound: a typed error, before any connection is made.
    let e = client.request(third.local_addr(), Message::new("ADD", 1));
    assert!(exhausted(e), "an outbound connection at the cap");
    // A new node cannot start either.
    assert!(exhausted(Node::builder().start()));
    // Inbound: refused and closed, with a warning.
    let mut raw = RawPeer::connect(server.local_addr());
    assert!(
        raw.closed_within(PATIENCE),
        "the inbound connection is closed"
    );
    assert!(wait_until(PATIENCE, || warned(&[
        "no thread for the connection",
        "budget"
    ])));
    // The connection opened before the cap still works.
    let r = kept.request(Message::new("ADD", 1)).unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 2);
    // Nothing was left running by the refusals (a spare connection thread
    // counted in `used` may have ended since).
    assert!(p2prs::running_threads() <= used);

    // Back under the budget, new peers are served again.
    p2prs::set_max_threads(p2prs::DEFAULT_MAX_THREADS);
    let r = client
        .request(third.local_addr(), Message::new("ADD", 5))
        .unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 6);
    let fresh = node();
    let r = fresh
        .request(server.local_addr(), Message::new("ADD", 7))
        .unwrap();
    assert_eq!(r.data::<i64>().unwrap(), 8);
}

//! What holds under churn, over real sockets on loopback: nodes shut down
//! without leaving (the root among them) while others join and a client
//! requests live IDs; and a host that vanishes without closing its sockets
//! (a process stopped with SIGSTOP).

mod support;

use p2prs::{Error, Message, Node, NodeId};
use p2prs_rng::Rng;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{echo_requests, node_with, wait_until};

const INTERVAL: Duration = Duration::from_millis(100);
const RING_TIMEOUT: Duration = Duration::from_millis(600);
const PATIENCE: Duration = Duration::from_secs(30);

fn ring_node() -> Node {
    let n = node_with(|c| {
        c.stabilize_interval = INTERVAL;
        c.ring_timeout = RING_TIMEOUT;
        c.request_timeout = Duration::from_secs(3);
        c.successor_list_len = 4;
        c.handler_threads = 1;
    });
    echo_requests(&n);
    n
}

/// The live nodes and, for each, a generation bumped when it is killed: a
/// request's target was alive throughout if its generation did not move.
struct Live {
    nodes: parking_lot::Mutex<Vec<Arc<Node>>>,
    kills: AtomicUsize,
}

impl Live {
    fn pick(&self, rng: &mut Rng) -> Arc<Node> {
        let g = self.nodes.lock();
        Arc::clone(&g[rng.below(g.len())])
    }
    fn ids(&self) -> BTreeSet<NodeId> {
        self.nodes.lock().iter().filter_map(|n| n.id()).collect()
    }
}

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    retriable: Vec<String>,
    wrong: Vec<String>,
}

/// 14 nodes; every step (paced by the client's requests, not a clock) one
/// random node is shut down without leaving, the root at the third step, and
/// a new one joins through a random live member; a client thread requests
/// random live IDs throughout. No request to an ID that stayed alive fails
/// with `NoSuchNode` or a non-retriable error; every join succeeds, the one
/// right after the root's death too; sizes converge once churn stops.
#[test]
fn churn_with_abrupt_kills_including_the_root() {
    let mut rng = Rng::new(14);
    let first: Vec<Arc<Node>> = (0..14).map(|_| Arc::new(ring_node())).collect();
    first[0].create_network().expect("create");
    for i in 1..first.len() {
        let via = first[rng.below(i)].local_addr();
        first[i].join_network(&[via]).expect("join");
    }
    let live = Arc::new(Live {
        nodes: parking_lot::Mutex::new(first),
        kills: AtomicUsize::new(0),
    });
    let all_sizes = |live: &Live, n: usize| live.nodes.lock().iter().all(|x| x.network_size() == n);
    assert!(wait_until(PATIENCE, || all_sizes(&live, 14)));

    let done = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let client = {
        let (live, done, requests) = (Arc::clone(&live), Arc::clone(&done), Arc::clone(&requests));
        std::thread::spawn(move || {
            let mut rng = Rng::new(15);
            let mut t = Tally::default();
            while !done.load(Ordering::Acquire) {
                let from = live.pick(&mut rng);
                let to = live.pick(&mut rng);
                let (Some(id), Some(_)) = (to.id(), from.id()) else {
                    continue;
                };
                let before = live.kills.load(Ordering::Acquire);
                let got = from.request(id, Message::new("ECHO", 1));
                requests.fetch_add(1, Ordering::AcqRel);
                // Alive throughout: neither end was killed meanwhile.
                let steady = live.kills.load(Ordering::Acquire) == before
                    || (!to.is_shut_down() && !from.is_shut_down());
                match got {
                    Ok(_) => t.ok += 1,
                    Err(e) if !steady || from.is_shut_down() => t.retriable.push(e.to_string()),
                    Err(e @ Error::NoSuchNode(_)) => t.wrong.push(format!("{id}: {e}")),
                    Err(e) if e.is_retriable() => t.retriable.push(e.to_string()),
                    Err(e) => t.wrong.push(format!("{id}: {e:?}")),
                }
            }
            t
        })
    };

    let mut joins = 0;
    let mut join_failures = Vec::new();
    for step in 0..10 {
        // Pace by the client: a few requests between steps.
        let mark = requests.load(Ordering::Acquire) + 15;
        assert!(wait_until(PATIENCE, || requests.load(Ordering::Acquire) >= mark));
        let victim = {
            let mut g = live.nodes.lock();
            let i = if step == 2 {
                g.iter()
                    .position(|n| n.id() == Some(NodeId(0)))
                    .expect("the root")
            } else {
                rng.below(g.len())
            };
            g.remove(i)
        };
        live.kills.fetch_add(1, Ordering::AcqRel);
        victim.shutdown();
        let joiner = Arc::new(ring_node());
        let via = live.pick(&mut rng).local_addr();
        joins += 1;
        match joiner.join_network(&[via]) {
            Ok(_) => live.nodes.lock().push(joiner),
            Err(e) => join_failures.push(format!("step {step}: {e}")),
        }
    }
    let mark = requests.load(Ordering::Acquire) + 15;
    assert!(wait_until(PATIENCE, || requests.load(Ordering::Acquire) >= mark));
    done.store(true, Ordering::Release);
    let tally = client.join().expect("client");
    let stopped = Instant::now();
    let n = live.nodes.lock().len();
    assert!(
        wait_until(PATIENCE, || all_sizes(&live, n)),
        "sizes: {:?}, want {n}",
        live.nodes
            .lock()
            .iter()
            .map(|x| x.network_size())
            .collect::<Vec<_>>()
    );
    eprintln!(
        "churn: {} requests ok, {} retriable errors {:?}, {} wrong; {joins} joins; \
         sizes exact {:?} after churn stopped",
        tally.ok,
        tally.retriable.len(),
        tally.retriable.iter().take(5).collect::<Vec<_>>(),
        tally.wrong.len(),
        stopped.elapsed()
    );
    assert!(join_failures.is_empty(), "joins failed: {join_failures:?}");
    assert!(tally.wrong.is_empty(), "wrong answers: {:?}", tally.wrong);
    assert!(tally.ok > 0);
    // Every live node reaches every live ID once the ring is still.
    let ids = live.ids();
    assert_eq!(ids.len(), n);
    for from in live.nodes.lock().iter() {
        for id in &ids {
            let got = from.request(*id, Message::new("ECHO", 1));
            assert!(got.is_ok(), "{:?} -> {id}: {got:?}", from.id());
        }
    }
}

/// Run by `a_vanished_host_is_detected_and_routed_around` as a child
/// process: a ring node that joins the address in `P2PRS_CHURN_CHILD`,
/// prints its ID, and runs until it is killed.
#[test]
#[ignore = "a helper process for another test"]
fn child_node() {
    let Ok(via) = std::env::var("P2PRS_CHURN_CHILD") else {
        return;
    };
    let n = ring_node();
    let id = n
        .join_network(&[via.parse::<std::net::SocketAddr>().expect("address")])
        .expect("join");
    println!("ID {}", id.0);
    // Until the parent kills this process (at most a minute).
    let (_tx, rx) = crossbeam_channel::bounded::<()>(0);
    let _ = rx.recv_timeout(Duration::from_secs(60));
}

/// A node in another process is stopped with SIGSTOP: its sockets stay
/// open, nothing answers. Its neighbours drop it within a stabilizer period
/// and a ring timeout (docs/robustness.md), the ring heals around it as for
/// a closed socket, and requests to live IDs succeed again.
#[test]
fn a_vanished_host_is_detected_and_routed_around() {
    if !cfg!(unix) || Command::new("kill").arg("-l").output().is_err() {
        eprintln!("skipped: no kill(1) here");
        return;
    }
    let mut rng = Rng::new(6);
    let nodes: Vec<Node> = (0..6).map(|_| ring_node()).collect();
    nodes[0].create_network().expect("create");
    for i in 1..nodes.len() {
        let via = nodes[rng.below(i)].local_addr();
        nodes[i].join_network(&[via]).expect("join");
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_node",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("P2PRS_CHURN_CHILD", nodes[3].local_addr().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the child node");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let id = loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            panic!("the child node said nothing");
        }
        // The harness may have printed "test child_node ... " on that line.
        if let Some(at) = line.find("ID ") {
            break NodeId(line[at + 3..].trim().parse().expect("an ID"));
        }
    };
    let all: Vec<&Node> = nodes.iter().collect();
    let sizes = |n: usize| all.iter().all(|x| x.network_size() == n);
    assert!(wait_until(PATIENCE, || sizes(7)), "the child joined");

    let stop = Command::new("kill")
        .args(["-STOP", &child.id().to_string()])
        .status();
    assert!(stop.is_ok_and(|s| s.success()), "SIGSTOP");
    let t0 = Instant::now();
    let gone = |n: &Node| n.peer_book().iter().all(|p| p.id != id);
    // Its neighbours drop it: within a period and a ring timeout, plus a
    // round for the neighbours to find each other.
    let ids: Vec<NodeId> = nodes.iter().filter_map(|n| n.id()).collect();
    let pred = ids.iter().filter(|x| **x < id).max().or(ids.iter().max());
    let succ = ids.iter().filter(|x| **x > id).min().or(ids.iter().min());
    let neighbours: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.id().is_some_and(|x| Some(&x) == pred || Some(&x) == succ))
        .collect();
    assert_eq!(neighbours.len(), 2);
    let dropped = wait_until(PATIENCE, || neighbours.iter().all(|n| gone(n)));
    let detected = t0.elapsed();
    let healed = wait_until(PATIENCE, || sizes(6));
    let sized = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert!(dropped, "its neighbours still name it");
    assert!(
        healed,
        "sizes: {:?}",
        all.iter().map(|n| n.network_size()).collect::<Vec<_>>()
    );
    eprintln!(
        "vanished host: dropped by its neighbours after {detected:?}, sizes right after {sized:?}"
    );
    let bound = 3 * (INTERVAL + RING_TIMEOUT) + Duration::from_secs(2);
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    // Every live ID is reachable from every node.
    for from in &nodes {
        for to in &ids {
            let got = from.request(*to, Message::new("ECHO", 1));
            assert!(got.is_ok(), "{:?} -> {to}: {got:?}", from.id());
        }
    }
    // The frozen node's ID gives an error, never a hang.
    let t = Instant::now();
    let got = nodes[0].request(id, Message::new("ECHO", 1));
    assert!(got.is_err(), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

//! The `p2prs` binary end to end: separate `p2prs node --json` processes on
//! loopback join into one Chord ring and talk to each other by node ID, driven
//! through their stdin and read back from their stdout (docs/cli.md).
//!
//! Every wait is on a channel or a condition with a generous deadline; a
//! process still running when a test ends (passing or failing) is killed.

use p2prs_rng::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_p2prs");

/// Processes in the ring.
const NODES: usize = 5;

/// A generous deadline for things that normally take milliseconds (a ring
/// settles within a few stabilizer rounds of 500 ms).
const PATIENCE: Duration = Duration::from_secs(30);

/// Events a node prints on its own rather than in answer to a stdin command.
const UNASKED: &[&str] = &["message", "served", "peer_joined", "peer_left", "joined"];

/// How many lines of a process's stderr to show when a test fails.
const STDERR_TAIL: usize = 40;

/// The seeded generator of the test's random choices: the seed comes from
/// `P2PRS_TEST_SEED` or the clock, and is printed, so that a failing run's
/// choices can be repeated with `P2PRS_TEST_SEED=<seed>`.
fn test_rng() -> Rng {
    let seed = std::env::var("P2PRS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(p2prs_rng::clock_seed);
    println!("seed {seed} (repeat with P2PRS_TEST_SEED={seed})");
    Rng::new(seed)
}

/// What one wait on a process's stdout gave.
enum Pulled {
    Event,
    Eof,
    Timeout,
}

/// One `p2prs node` process, its stdin, and the events it printed.
///
/// Events are sorted as they arrive: answers to stdin commands (which come
/// in the order of the commands) go to `replies`, the rest to `unasked`.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    replies: VecDeque<Value>,
    unasked: Vec<Value>,
    /// Every stdout line so far, to explain failures.
    log: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The thread that reads stderr; it ends when the process has exited.
    stderr_reader: Option<thread::JoinHandle<()>>,
    eof: bool,
}

impl Proc {
    fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::spawn_env(name, args, &[])
    }

    fn spawn_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("P2PRS_NETWORK_KEY")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN} {args:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, events) = mpsc::channel();
        thread::Builder::new()
            .name(format!("{name} stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let event = serde_json::from_str(&line)
                        .unwrap_or_else(|_| json!({"event": "not_json", "line": line}));
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            })
            .expect("a stdout reader thread");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let stderr_reader = thread::Builder::new()
            .name(format!("{name} stderr"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
            .expect("a stderr reader thread");
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            events,
            replies: VecDeque::new(),
            unasked: Vec::new(),
            log: Vec::new(),
            stderr: lines,
            stderr_reader: Some(stderr_reader),
            eof: false,
        }
    }

    /// Panic, showing what this process printed.
    fn fail(&self, why: impl std::fmt::Display) -> ! {
        panic!(
            "{}: {why}\n--- its stdout so far:\n{}\n--- the end of its stderr:\n{}",
            self.name,
            self.log.join("\n"),
            self.stderr_tail()
        )
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines[lines.len().saturating_sub(STDERR_TAIL)..].join("\n")
    }

    /// Write one line to the process's stdin.
    fn command(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            self.fail(format!("stdin is closed; cannot send {line:?}"))
        };
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            self.fail(format!("writing {line:?} to stdin: {e}"));
        }
    }

    /// Wait until `deadline` for one more event and file it.
    fn pull(&mut self, deadline: Instant) -> Pulled {
        if self.eof {
            return Pulled::Eof;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(event) => {
                self.log.push(event.to_string());
                let kind = event["event"].as_str().unwrap_or("");
                if UNASKED.contains(&kind) {
                    self.unasked.push(event);
                } else {
                    self.replies.push_back(event);
                }
                Pulled::Event
            }
            Err(RecvTimeoutError::Timeout) => Pulled::Timeout,
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                Pulled::Eof
            }
        }
    }

    /// The next answer to a command (or an error not tied to one).
    fn reply(&mut self, waiting_for: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(event) = self.replies.pop_front() {
                return event;
            }
            match self.pull(deadline) {
                Pulled::Event => {}
                Pulled::Eof => self.fail(format!("stdout closed while waiting for {waiting_for}")),
                Pulled::Timeout => self.fail(format!(
                    "no answer within {PATIENCE:?} while waiting for {waiting_for}"
                )),
            }
        }
    }

    /// The next answer to a command, which must be a `kind` event.
    fn expect(&mut self, kind: &str) -> Value {
        let event = self.reply(&format!("a '{kind}' event"));
        if event["event"] != kind {
            self.fail(format!("expected a '{kind}' event, got {event}"));
        }
        event
    }

    /// Run `line` and return its answer, which must be a `kind` event.
    fn ask(&mut self, line: &str, kind: &str) -> Value {
        self.command(line);
        self.expect(kind)
    }

    /// Remove and return the first unasked event that `want` accepts,
    /// waiting for it if it has not arrived.
    fn wait_unasked(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut searched = 0;
        loop {
            if let Some(i) = self.unasked[searched..].iter().position(&want) {
                return self.unasked.remove(searched + i);
            }
            searched = self.unasked.len();
            match self.pull(deadline) {
                Pulled::Event => {}
                Pulled::Eof => self.fail(format!("stdout closed while waiting for {what}")),
                Pulled::Timeout => self.fail(format!("no {what} within {PATIENCE:?}")),
            }
        }
    }

    /// Wait on the events for at most `d` (a pause between two polls that
    /// ends early if the node reports something, e.g. a peer joining).
    fn idle(&mut self, d: Duration) {
        let _ = self.pull(Instant::now() + d);
    }

    /// The `listening` event; the node's address.
    fn listening(&mut self) -> String {
        let event = self.expect("listening");
        match event["addr"].as_str() {
            Some(addr) if addr.starts_with("127.0.0.1:") && !addr.ends_with(":0") => {
                addr.to_string()
            }
            _ => self.fail(format!(
                "a listening event without a loopback port: {event}"
            )),
        }
    }

    /// The public key of the node's `listening` event (read before or now).
    fn expect_listening_key(&mut self) -> String {
        let listening = self
            .log
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "listening")
            .unwrap_or_else(|| self.expect("listening"));
        match listening["key"].as_str() {
            Some(k) if k.len() == 64 => k.to_string(),
            _ => self.fail(format!("a listening event without a key: {listening}")),
        }
    }

    /// Read stdout to its end, filing every event.
    fn drain(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.pull(deadline) {
                Pulled::Event => {}
                Pulled::Eof => return,
                Pulled::Timeout => self.fail(format!("stdout still open after {PATIENCE:?}")),
            }
        }
    }

    /// Every line the process wrote to stderr; call once it has exited.
    fn whole_stderr(&mut self) -> Vec<String> {
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("the stderr reader");
        }
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait (with a deadline) for the process to exit.
    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    // Its stdout is closed already, so it is on its way out:
                    // poll its status.
                    thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => self.fail(format!("still running {PATIENCE:?} after stdout closed")),
                Err(e) => self.fail(format!("waiting for the process: {e}")),
            }
        }
    }

    /// Take every unasked event of type `kind`.
    fn take_unasked(&mut self, kind: &str) -> Vec<Value> {
        let (taken, rest) = std::mem::take(&mut self.unasked)
            .into_iter()
            .partition(|e| e["event"] == kind);
        self.unasked = rest;
        taken
    }
}

impl Drop for Proc {
    /// No process outlives its test; a failing test shows each one's stderr.
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- {}: stdout:\n{}\n--- {}: the end of stderr:\n{}",
                self.name,
                self.log.join("\n"),
                self.name,
                self.stderr_tail()
            );
        }
    }
}

/// The `id` field of `event` as a number.
fn id_of(p: &Proc, event: &Value) -> u64 {
    event["id"]
        .as_u64()
        .unwrap_or_else(|| p.fail(format!("no numeric ID in {event}")))
}

/// The text node `from` sends node `to`; inner spaces must survive.
fn text_for(from: u64, to: u64) -> String {
    format!("hello  from {from} to {to}, by ID")
}

fn broadcast_text(from: u64) -> String {
    format!("to everyone from {from}")
}

/// The number node `from` asks node `to` to add 1 to.
fn addend(from: u64, to: u64) -> u64 {
    1000 * from + to + 17
}

fn echo_data(from: u64, to: u64) -> Value {
    json!({"from": from, "to": to, "words": "a b  c", "list": [1, 2.5, null]})
}

/// An address on loopback where nothing listens (a port just freed).
fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    listener.local_addr().expect("its address").to_string()
}

#[test]
fn processes_join_one_ring_and_talk_by_id() {
    let mut rng = test_rng();
    let mut nodes: Vec<Proc> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    let mut ids: Vec<u64> = Vec::new();

    // 1. The first node is not in a network until someone joins through it.
    let mut first = Proc::spawn("node #0", &["node", "--json", "--port", "0"]);
    addrs.push(first.listening());
    assert_eq!(
        first.ask("id", "id")["id"],
        Value::Null,
        "no ID before a join"
    );
    assert_eq!(first.ask("size", "size")["size"], 0, "no network yet");
    nodes.push(first);
    ids.push(u64::MAX); // learnt when node #1 joins through it

    // The others join one at a time through a randomly chosen earlier
    // member; the last one is given a dead address first, as a fall-back test.
    for k in 1..NODES {
        let member = rng.below(k);
        let via = addrs[member].clone();
        let dead = (k == NODES - 1).then(dead_addr);
        let mut args = vec!["node", "--json", "--port", "0"];
        if let Some(dead) = &dead {
            args.extend(["--join", dead]);
        }
        args.extend(["--join", &via]);
        println!(
            "node #{k} joins through node #{member}: p2prs {}",
            args.join(" ")
        );
        let mut p = Proc::spawn(&format!("node #{k}"), &args);
        let addr = p.listening();
        let joined = p.wait_unasked("'joined' event", |e| e["event"] == "joined");
        assert_eq!(joined["addr"], addr, "joined names the node's own address");
        ids.push(id_of(&p, &joined));
        assert_eq!(p.ask("id", "id")["id"], ids[k], "id agrees with joined");
        if k == 1 {
            // Node #1's join started the network, and node #0 says so.
            let first = &mut nodes[0];
            let joined = first.wait_unasked("'joined' event", |e| e["event"] == "joined");
            assert_eq!(joined["addr"], addrs[0]);
            ids[0] = id_of(first, &joined);
            assert_eq!(first.ask("id", "id")["id"], ids[0], "id agrees with joined");
        }
        addrs.push(addr);
        nodes.push(p);
    }
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        distinct,
        (0..NODES as u64).collect::<BTreeSet<u64>>(),
        "IDs 0..{NODES}, each once: {ids:?}"
    );
    let addr_of: BTreeMap<u64, String> = ids.iter().copied().zip(addrs.clone()).collect();

    // 2. Every node comes to see the whole ring.
    let deadline = Instant::now() + PATIENCE;
    for p in &mut nodes {
        loop {
            let size = p.ask("size", "size")["size"].clone();
            if size == NODES {
                break;
            }
            if Instant::now() > deadline {
                p.fail(format!("network size still {size}, not {NODES}"));
            }
            p.idle(Duration::from_millis(50));
        }
    }

    // Lookups find every node where it is; peer books hold only ring members.
    for (i, p) in nodes.iter_mut().enumerate() {
        for &id in &ids {
            let route = p.ask(&format!("lookup {id}"), "route");
            assert_eq!(route["id"], id, "{}: {route}", p.name);
            assert_eq!(route["owner"]["id"], id, "{}: {route}", p.name);
            assert_eq!(route["owner"]["addr"], addr_of[&id], "{}: {route}", p.name);
        }
        let peers = p.ask("peers", "peers");
        let book = peers["peers"].as_array().cloned().unwrap_or_default();
        assert!(!book.is_empty(), "{}: empty peer book: {peers}", p.name);
        for peer in book {
            let id = peer["id"].as_u64().expect("a numeric peer ID");
            assert_ne!(id, ids[i], "{}: itself in its peer book: {peers}", p.name);
            assert_eq!(
                peer["addr"].as_str(),
                addr_of.get(&id).map(String::as_str),
                "{}: a peer that is not in the ring: {peers}",
                p.name
            );
        }
    }

    // 3. Every node sends a TEXT to every other, by ID, all nodes at once.
    for (i, p) in nodes.iter_mut().enumerate() {
        for &to in ids.iter().filter(|&&to| to != ids[i]) {
            p.command(&format!("send {to} {}", text_for(ids[i], to)));
        }
    }
    for (i, p) in nodes.iter_mut().enumerate() {
        for &to in ids.iter().filter(|&&to| to != ids[i]) {
            let sent = p.expect("sent");
            assert_eq!(sent["to"], to.to_string(), "{}: {sent}", p.name);
            assert_eq!(sent["type"], "TEXT", "{}: {sent}", p.name);
        }
    }

    // ... and makes an ADD and an ECHO request to every other, by ID.
    for (i, p) in nodes.iter_mut().enumerate() {
        let me = ids[i];
        for &to in ids.iter().filter(|&&to| to != me) {
            p.command(&format!("request {to} ADD {}", addend(me, to)));
            p.command(&format!("request {to} ECHO {}", echo_data(me, to)));
        }
    }
    for (i, p) in nodes.iter_mut().enumerate() {
        let me = ids[i];
        for &to in ids.iter().filter(|&&to| to != me) {
            let add = p.expect("response");
            assert_eq!(add["to"], to.to_string(), "{}: {add}", p.name);
            assert_eq!(add["type"], "ADD RESP", "{}: {add}", p.name);
            assert_eq!(add["data"], addend(me, to) + 1, "{}: {add}", p.name);
            let echo = p.expect("response");
            assert_eq!(echo["to"], to.to_string(), "{}: {echo}", p.name);
            assert_eq!(echo["type"], "ECHO", "{}: {echo}", p.name);
            assert_eq!(echo["data"], echo_data(me, to), "{}: {echo}", p.name);
        }
    }

    // 4. An ID that no node holds fails at once, with a clear reason.
    let nobody = 1000 + rng.below(1000) as u64;
    for p in &mut nodes {
        for (line, command) in [
            (format!("request {nobody} ADD 17"), "request"),
            (format!("send {nobody} anyone?"), "send"),
        ] {
            let error = p.ask(&line, "error");
            assert_eq!(error["command"], command, "{}: {error}", p.name);
            let why = error["error"].as_str().unwrap_or_default();
            assert!(
                why.contains(&format!("no node holds ID {nobody}")),
                "{}: {line:?} gave {error}",
                p.name
            );
        }
    }

    // A request its handler refuses is an error for the asker, and is not
    // reported as answered by the node asked (checked with the served
    // requests below).
    {
        let (asker, asked) = (&mut nodes[0], ids[1]);
        let error = asker.ask(&format!("request {asked} ADD \"x\""), "error");
        let why = error["error"].as_str().unwrap_or_default();
        assert!(why.contains("handler_failed"), "{}: {error}", asker.name);
    }

    // A broadcast from one node reaches every other.
    let caster = rng.below(NODES);
    let cast = nodes[caster].ask(
        &format!("broadcast {}", broadcast_text(ids[caster])),
        "broadcast",
    );
    assert!(cast["direct"].as_u64().is_some_and(|d| d >= 1), "{cast}");

    // Every message arrives before anyone quits.
    for (j, p) in nodes.iter_mut().enumerate() {
        for (i, &from) in ids.iter().enumerate().filter(|&(i, _)| i != j) {
            let mut texts = vec![text_for(from, ids[j])];
            if i == caster {
                texts.push(broadcast_text(from));
            }
            for text in texts {
                // Each text names its sender and receiver, so it identifies
                // the message; then the sender must be named right.
                let got = p.wait_unasked(&format!("message {text:?}"), |e| {
                    e["event"] == "message" && e["data"] == text.as_str()
                });
                if got["from_id"] != from || got["from"] != addrs[i].as_str() {
                    p.fail(format!(
                        "message from node #{i} (ID {from} at {}) arrived as {got}",
                        addrs[i]
                    ));
                }
                assert_eq!(got["type"], "TEXT", "{}: {got}", p.name);
            }
        }
    }

    // 5. quit: each leaves, stops and exits 0, one after the other.
    for (i, p) in nodes.iter_mut().enumerate() {
        p.command("quit");
        let left = p.expect("left");
        assert_eq!(left["id"], ids[i], "{}: {left}", p.name);
        p.expect("shutdown");
        p.drain();
        let status = p.exit_status();
        if !status.success() {
            p.fail(format!("exited with {status}"));
        }
        if let Some(extra) = p.replies.front() {
            p.fail(format!("printed {extra} after shutdown"));
        }
    }

    // Nothing else arrived (the expected messages were taken above), and
    // each node served exactly the requests made of it, naming who asked.
    for (j, p) in nodes.iter_mut().enumerate() {
        // Each TEXT received was printed once, as its event on stdout, not
        // also as a log line on stderr.
        let stderr = p.whole_stderr();
        for &from in ids.iter().filter(|&&from| from != ids[j]) {
            let text = text_for(from, ids[j]);
            if let Some(line) = stderr.iter().find(|l| l.contains(&text)) {
                p.fail(format!("logged a received TEXT on stderr too: {line}"));
            }
        }
        let extra = p.take_unasked("message");
        if !extra.is_empty() {
            p.fail(format!("unexpected or duplicated messages: {extra:?}"));
        }
        let mut served: Vec<(u64, String, String, Value)> = p
            .take_unasked("served")
            .iter()
            .map(|e| {
                let from = e["from_id"].as_u64().unwrap_or(u64::MAX);
                let addr = e["from"].as_str().unwrap_or_default().to_string();
                let kind = e["type"].as_str().unwrap_or_default().to_string();
                (from, addr, kind, e["data"].clone())
            })
            .collect();
        served.sort_by_key(|s| (s.0, s.2.clone()));
        let mut want = Vec::new();
        for (i, &from) in ids.iter().enumerate().filter(|&(i, _)| i != j) {
            let addr = addrs[i].clone();
            want.push((
                from,
                addr.clone(),
                "ADD".to_string(),
                json!(addend(from, ids[j])),
            ));
            want.push((from, addr, "ECHO".to_string(), echo_data(from, ids[j])));
        }
        want.sort_by_key(|s| (s.0, s.2.clone()));
        if served != want {
            p.fail(format!("served {served:?}, expected {want:?}"));
        }
    }
}

/// A non-UTF-8 argument, anywhere, is a bad command line: exit 2 and a
/// message that names it, not a panic.
#[cfg(unix)]
#[test]
fn network_keys_and_identity_files_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("p2prs-cli-id-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let id_file = dir.join("node.key");
    let _ = std::fs::remove_file(&id_file);
    let id_path = id_file.to_str().expect("utf-8 temp path");
    // A keyed network: the key from the environment for the first node, from
    // the flag for the member.
    let mut first = Proc::spawn_env(
        "keyed #0",
        &["node", "--json", "--identity", id_path],
        &[("P2PRS_NETWORK_KEY", "s3cret network key")],
    );
    let addr = first.listening();
    let mut member = Proc::spawn(
        "member",
        &[
            "node",
            "--json",
            "--network-key",
            "s3cret network key",
            "--join",
            &addr,
        ],
    );
    member.listening();
    member.wait_unasked("'joined' event", |e| e["event"] == "joined");
    // A stranger with another key is refused at once and says why.
    let mut stranger = Proc::spawn(
        "stranger",
        &["node", "--json", "--network-key", "wrong", "--join", &addr],
    );
    stranger.listening();
    let error = stranger.expect("error");
    let why = error["error"].as_str().unwrap_or_default();
    assert!(why.contains("network key mismatch"), "{error}");
    stranger.drain();
    assert!(!stranger.exit_status().success());
    // The identity file keeps the key across restarts.
    let key = {
        let listening = first.expect_listening_key();
        drop(first);
        listening
    };
    let mut again = Proc::spawn("keyed again", &["node", "--json", "--identity", id_path]);
    assert_eq!(again.expect_listening_key(), key);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn non_utf8_argument_exits_2_with_a_clear_error() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    for args in [
        vec![OsString::from_vec(b"n\xffde".to_vec())],
        vec![
            "node".into(),
            "--host".into(),
            OsString::from_vec(b"h\xffst".to_vec()),
        ],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {BIN} {args:?}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {stderr}");
        assert!(
            stderr.starts_with("p2prs: argument '") && stderr.contains("is not valid UTF-8"),
            "{args:?}: stderr {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: stderr {stderr:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
}

/// Run the binary with `args` and no stdin.
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {BIN} {args:?}: {e}"))
}

#[test]
fn bad_command_lines_exit_2_and_help_exits_0() {
    for (args, says) in [
        (
            &["node", "--bogus"][..],
            "p2prs: unknown option '--bogus' for 'p2prs node'",
        ),
        (
            &["node", "--port", "70000"][..],
            "p2prs: --port expects a port from 0 to 65535, got '70000'",
        ),
        (
            &["node", "--join", "nowhere"][..],
            "p2prs: --join expects an address as host:port",
        ),
        (&["fly"][..], "unknown subcommand 'fly'"),
        (
            &["--bogus"][..],
            "p2prs: unknown option '--bogus' (see 'p2prs --help')",
        ),
        (
            &["demo", "-x"][..],
            "p2prs: unknown option '-x' for 'p2prs demo'",
        ),
        (&["node", "--json=yes"][..], "--json takes no value"),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {stderr}");
        assert!(stderr.contains(says), "{args:?}: stderr {stderr:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
    for args in [
        &["--help"][..],
        &["-h"],
        &["node", "--help"],
        &["help", "node"],
        &["help", "rendezvous"],
    ] {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
        assert!(stdout.contains("p2prs node"), "{args:?}: {stdout}");
    }
}

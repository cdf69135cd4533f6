//! Test driver for `tests/nat/run.sh`: runs one p2prs node (or a
//! rendezvous) inside a network namespace, reads commands on stdin and
//! answers with one JSON object per line on stdout. Logs go to stderr.
//!
//! ```text
//! nat-driver rendezvous --listen HOST:PORT [--relay-peer-cap B] [--relay-rate-limit B]
//! nat-driver node --listen HOST:PORT [--rendezvous HOST:PORT] [--join HOST:PORT]
//!                 [--punch-timeout-ms N]
//! ```
//!
//! Node commands, each starting with a tag echoed in the answer:
//! `TAG id`, `TAG join HOST:PORT`, `TAG status`, `TAG path ID`, `TAG request ID TEXT`,
//! `TAG send ID TEXT`, `TAG close ID`, `TAG bench ID N`,
//! `TAG throughput ID TOTAL_BYTES CHUNK_BYTES`, `TAG quit`.

use p2prs::{Config, Event, Message, Node, NodeId, Path, Rendezvous};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static OUT: Mutex<()> = Mutex::new(());

fn say(v: Value) {
    let _g = OUT.lock();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

struct Logger {
    start: Instant,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("p2prs") || m.target().starts_with("nat_driver")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let t = self.start.elapsed().as_secs_f64();
            eprintln!("{t:9.3} {:5} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> ExitCode {
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        start: Instant::now(),
    }));
    if log::set_logger(logger).is_ok() {
        let debug = std::env::var_os("P2PRS_DEBUG").is_some();
        log::set_max_level(if debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("rendezvous") => rendezvous(&args),
        Some("node") => node(&args),
        _ => Err("usage: nat-driver rendezvous|node ...".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(json!({ "event": "error", "error": e }));
            ExitCode::FAILURE
        }
    }
}

fn split(listen: &str) -> Result<(String, u16), String> {
    let (h, p) = listen
        .rsplit_once(':')
        .ok_or_else(|| format!("{listen}: want HOST:PORT"))?;
    Ok((
        h.to_string(),
        p.parse().map_err(|e| format!("{listen}: {e}"))?,
    ))
}

fn rendezvous(args: &[String]) -> Result<(), String> {
    let (host, port) = split(&flag(args, "--listen").unwrap_or("0.0.0.0:9000".into()))?;
    let mut cfg = Config::default();
    if let Some(v) = flag(args, "--relay-peer-cap") {
        cfg.relay_peer_cap = v.parse().map_err(|e| format!("--relay-peer-cap: {e}"))?;
    }
    if let Some(v) = flag(args, "--relay-rate-limit") {
        cfg.relay_rate_limit = v.parse().map_err(|e| format!("--relay-rate-limit: {e}"))?;
    }
    let rv = Rendezvous::start_with_config(&host, port, cfg).map_err(|e| e.to_string())?;
    say(json!({ "event": "listening", "addr": rv.local_addr().to_string() }));
    // Until stdin closes or says quit.
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut w = line.split_whitespace();
        let tag = w.next().unwrap_or("");
        match w.next() {
            Some("stats") => {
                let s = rv.stats();
                say(json!({ "tag": tag, "registered": s.registered,
                    "introductions": s.introductions, "relayed_bytes": s.relayed_bytes }));
            }
            Some("quit") => break,
            _ => say(json!({ "tag": tag, "error": "unknown command" })),
        }
    }
    rv.shutdown();
    Ok(())
}

fn node(args: &[String]) -> Result<(), String> {
    let (host, port) = split(&flag(args, "--listen").unwrap_or("0.0.0.0:7000".into()))?;
    let mut b = Node::builder().host(host).port(port);
    if let Some(rv) = flag(args, "--rendezvous") {
        b = b.rendezvous(rv);
    }
    if let Some(ms) = flag(args, "--punch-timeout-ms") {
        let ms: u64 = ms.parse().map_err(|e| format!("--punch-timeout-ms: {e}"))?;
        b = b.configure(|c| c.punch_timeout = Duration::from_millis(ms));
    }
    let node = b
        .handler("ECHO", |req| {
            let m = req.take_message();
            req.respond(m)?;
            Ok(())
        })
        .handler("SINK", |req| {
            let n = req.message().body().map_or(0, <[u8]>::len);
            req.respond(Message::new("SINK", n))?;
            Ok(())
        })
        .start()
        .map_err(|e| e.to_string())?;
    let status = node.nat_status();
    say(json!({
        "event": "listening",
        "addr": node.local_addr().to_string(),
        "public": status.as_ref().and_then(|s| s.public_addr).map(|a| a.to_string()),
        "behind_nat": status.as_ref().map(|s| s.behind_nat()),
    }));
    if let Some(via) = flag(args, "--join") {
        let id = node
            .join_network(&[via.as_str()])
            .map_err(|e| e.to_string())?;
        say(json!({ "event": "joined", "id": id.0 }));
    } else if args.iter().any(|a| a == "--create") {
        let id = node.create_network().map_err(|e| e.to_string())?;
        say(json!({ "event": "joined", "id": id.0 }));
    }
    let events = node.events();
    // Prints messages until the node shuts down (which ends its events).
    let watcher = std::thread::Builder::new()
        .name("nat-driver-events".into())
        .spawn(move || {
            for e in &events {
                if let Event::Message { from, message } = e {
                    say(json!({
                        "event": "message",
                        "from": from.id.map(|i| i.0),
                        "text": message.as_text(),
                    }));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&tag, rest)) = words.split_first() else {
            continue;
        };
        if rest.first() == Some(&"quit") {
            break;
        }
        let mut answer = match command(&node, rest) {
            Ok(v) => v,
            Err(e) => json!({ "ok": false, "error": e }),
        };
        answer["tag"] = json!(tag);
        say(answer);
    }
    node.shutdown();
    let _ = watcher.join();
    Ok(())
}

fn id_arg(rest: &[&str], i: usize) -> Result<NodeId, String> {
    rest.get(i)
        .ok_or("missing node ID")?
        .parse::<u64>()
        .map(NodeId)
        .map_err(|e| format!("node ID: {e}"))
}

fn path_name(p: Option<Path>) -> Value {
    p.map_or(Value::Null, |p| json!(p.to_string()))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Close every connection to `id`; true once none is left.
fn close_all(node: &Node, id: NodeId) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.path(id).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        node.disconnect(id);
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

fn command(node: &Node, rest: &[&str]) -> Result<Value, String> {
    let s = |e: p2prs::Error| e.to_string();
    match rest.first().copied() {
        Some("id") => Ok(json!({ "ok": true, "id": node.id().map(|i| i.0) })),
        Some("status") => {
            let st = node.nat_status();
            Ok(json!({
                "ok": true,
                "id": node.id().map(|i| i.0),
                "connected": st.as_ref().map(|s| s.connected),
                "public": st.as_ref().and_then(|s| s.public_addr).map(|a| a.to_string()),
                "private": st.as_ref().and_then(|s| s.private_addr).map(|a| a.to_string()),
                "links": st.as_ref().map(|s| s.links),
                "registrations": st.as_ref().map(|s| s.registrations),
                "punches": st.as_ref().map(|s| s.punches),
                "punched": st.as_ref().map(|s| s.punched),
                "relays": st.as_ref().map(|s| s.relays),
                "size": node.network_size(),
            }))
        }
        Some("join") => {
            let via = rest.get(1).ok_or("missing the address to join through")?;
            let id = node.join_network(&[*via]).map_err(s)?;
            Ok(json!({ "ok": true, "id": id.0 }))
        }
        Some("path") => Ok(json!({ "ok": true, "path": path_name(node.path(id_arg(rest, 1)?)) })),
        Some("request") => {
            let id = id_arg(rest, 1)?;
            let text = rest.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            let t0 = Instant::now();
            let reply = node.request(id, Message::new("ECHO", text)).map_err(s)?;
            Ok(json!({
                "ok": true,
                "ms": ms(t0.elapsed()),
                "reply": reply.data::<String>().map_err(s)?,
                "path": path_name(node.path(id)),
            }))
        }
        Some("send") => {
            let id = id_arg(rest, 1)?;
            let text = rest.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            let t0 = Instant::now();
            node.send(id, Message::text(text)).map_err(s)?;
            Ok(json!({ "ok": true, "ms": ms(t0.elapsed()), "path": path_name(node.path(id)) }))
        }
        Some("close") => {
            let id = id_arg(rest, 1)?;
            Ok(json!({ "ok": close_all(node, id) }))
        }
        Some("bench") => {
            let id = id_arg(rest, 1)?;
            let n: usize = rest.get(2).and_then(|v| v.parse().ok()).unwrap_or(20);
            let mut times = Vec::new();
            let mut paths = Vec::new();
            let before = node.nat_status().map_or((0, 0), |s| (s.punches, s.punched));
            for i in 0..n {
                if !close_all(node, id) {
                    return Err(format!("try {i}: the connection to {id} would not close"));
                }
                let t0 = Instant::now();
                let sent = node.send(id, Message::text(format!("bench {i}")));
                let took = t0.elapsed();
                let path = node.path(id);
                log::info!("bench {i}: {sent:?} in {took:?} over {path:?}");
                if sent.is_ok() {
                    times.push(ms(took));
                }
                paths.push(path_name(path));
            }
            let after = node.nat_status().map_or((0, 0), |s| (s.punches, s.punched));
            let mut sorted = times.clone();
            sorted.sort_by(f64::total_cmp);
            let median = if sorted.is_empty() {
                Value::Null
            } else if sorted.len() % 2 == 1 {
                json!(sorted[sorted.len() / 2])
            } else {
                let m = (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0;
                json!((m * 100.0).round() / 100.0)
            };
            let punched = paths.iter().filter(|p| *p == "punched").count();
            Ok(json!({
                "ok": true, "tries": n, "sent": times.len(), "punched": punched,
                "punches_started": after.0 - before.0,
                "punches_won": after.1 - before.1,
                "median_ms": median, "ms": times, "paths": paths,
            }))
        }
        Some("throughput") => {
            let id = id_arg(rest, 1)?;
            let total: usize = rest.get(2).and_then(|v| v.parse().ok()).unwrap_or(8 << 20);
            let chunk: usize = rest
                .get(3)
                .and_then(|v| v.parse().ok())
                .unwrap_or(256 << 10);
            let conn = node.connect(id).map_err(s)?;
            let t0 = Instant::now();
            let mut sent = 0;
            while sent < total {
                let n = chunk.min(total - sent);
                let got = conn
                    .request_timeout(
                        Message::bytes("SINK", vec![0x5a; n]),
                        Duration::from_secs(60),
                    )
                    .map_err(s)?;
                if got.data::<usize>().map_err(s)? != n {
                    return Err("the sink counted wrong".into());
                }
                sent += n;
            }
            let secs = t0.elapsed().as_secs_f64();
            Ok(json!({
                "ok": true, "bytes": total, "secs": secs,
                "mib_per_s": (total as f64 / secs / 1048576.0 * 100.0).round() / 100.0,
                "path": conn.path().to_string(),
            }))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

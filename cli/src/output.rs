//! What `p2prs node` prints: one line per event, readable or JSON.

use p2prs::{Message, NodeId, Peer, PeerInfo};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;

/// One event of the node, as printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// The node listens.
    Listening {
        /// Where.
        addr: SocketAddr,
        /// The node's public key (its identity), in hex.
        key: String,
    },
    /// The node joined a network.
    Joined {
        /// Its ID.
        id: NodeId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// The node left its network gracefully.
    Left {
        /// The ID it held.
        id: Option<NodeId>,
    },
    /// Another node joined the ring.
    PeerJoined {
        /// Its ID.
        id: NodeId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// Another node left the ring or was found dead.
    PeerLeft {
        /// Its ID.
        id: NodeId,
    },
    /// A message arrived.
    Message {
        /// Who sent it.
        from: PeerInfo,
        /// The message.
        message: Message,
    },
    /// This node answered a request.
    Served {
        /// Who asked.
        from: PeerInfo,
        /// The request.
        message: Message,
    },
    /// A message went out.
    Sent {
        /// The target as the user wrote it.
        to: String,
        /// Its type.
        kind: String,
    },
    /// A broadcast went out.
    Broadcast {
        /// Nodes this node sent it to directly.
        direct: usize,
    },
    /// The answer to a request.
    Response {
        /// The target as the user wrote it.
        to: String,
        /// The answer.
        message: Message,
        /// Round trip in milliseconds.
        ms: f64,
    },
    /// Where a lookup led.
    Route {
        /// The ID looked up.
        id: NodeId,
        /// The node holding it.
        owner: Peer,
        /// Nodes asked on the way.
        hops: u32,
    },
    /// Something failed.
    Error {
        /// Why.
        error: String,
        /// The stdin command that failed, if one did.
        command: Option<String>,
    },
    /// The answer to `id`.
    Id(Option<NodeId>),
    /// The answer to `peers`.
    Peers(Vec<Peer>),
    /// The answer to `size`.
    Size(usize),
    /// The answer to `help`.
    Help(String),
    /// The node stopped; nothing follows.
    Shutdown,
}

impl Out {
    /// An error not tied to a stdin command.
    pub fn error(error: impl ToString) -> Out {
        Out::Error {
            error: error.to_string(),
            command: None,
        }
    }

    /// The event as one JSON object with an `"event"` field.
    pub fn json(&self) -> Value {
        match self {
            Out::Listening { addr, key } => json!({"event": "listening", "addr": addr, "key": key}),
            Out::Joined { id, addr } => json!({"event": "joined", "id": id, "addr": addr}),
            Out::Left { id } => json!({"event": "left", "id": id}),
            Out::PeerJoined { id, addr } => json!({"event": "peer_joined", "id": id, "addr": addr}),
            Out::PeerLeft { id } => json!({"event": "peer_left", "id": id}),
            Out::Message { from, message } => message_json("message", from, message),
            Out::Served { from, message } => message_json("served", from, message),
            Out::Sent { to, kind } => json!({"event": "sent", "to": to, "type": kind}),
            Out::Broadcast { direct } => json!({"event": "broadcast", "direct": direct}),
            Out::Response { to, message, ms } => response_json(to, message, *ms),
            Out::Route { id, owner, hops } => json!({
                "event": "route", "id": id, "owner": peer_json(owner), "hops": hops
            }),
            Out::Error { error, command } => error_json(error, command.as_deref()),
            Out::Id(id) => json!({"event": "id", "id": id}),
            Out::Peers(peers) => json!({
                "event": "peers", "peers": peers.iter().map(peer_json).collect::<Vec<_>>()
            }),
            Out::Size(size) => json!({"event": "size", "size": size}),
            Out::Help(text) => json!({"event": "help", "text": text}),
            Out::Shutdown => json!({"event": "shutdown"}),
        }
    }

    /// The event as one line of JSON, its `"event"` field first.
    pub fn json_line(&self) -> String {
        let mut v = self.json();
        let event = v.as_object_mut().and_then(|o| o.remove("event"));
        let rest = v.to_string();
        match (event, rest.strip_prefix('{')) {
            (Some(e), Some("}")) => format!("{{\"event\":{e}}}"),
            (Some(e), Some(fields)) => format!("{{\"event\":{e},{fields}"),
            _ => rest,
        }
    }

    /// The event as a readable one-liner (`help` spans several lines).
    pub fn text(&self) -> String {
        match self {
            Out::Listening { addr, key } => format!("Listening on {addr} (public key {key})"),
            Out::Joined { id, addr } => format!("Joined the network: ID {id} at {addr}"),
            Out::Left { id: Some(id) } => format!("Left the network (ID {id} is free again)"),
            Out::Left { id: None } => "Left the network".into(),
            Out::PeerJoined { id, addr } => format!("Node {id} joined the ring ({addr})"),
            Out::PeerLeft { id } => format!("Node {id} left the ring"),
            Out::Message { from, message } => format!("({from}) -> {}", describe(message)),
            Out::Served { from, message } => format!("Answered {} from {from}", describe(message)),
            Out::Sent { to, kind } => format!("Sent {kind} to {to}"),
            Out::Broadcast { direct } => {
                format!(
                    "Broadcast sent ({direct} direct {})",
                    plural(*direct as u64, "send")
                )
            }
            Out::Response { to, message, ms } => {
                format!("Response from {to} in {ms:.2} ms: {}", describe(message))
            }
            Out::Route { id, owner, hops } if owner.id == *id => {
                format!(
                    "ID {id} is the node at {} ({hops} {})",
                    owner.addr,
                    plural(*hops, "hop")
                )
            }
            Out::Route { id, owner, hops } => format!(
                "No node holds ID {id}; the next one after it is {} at {} ({hops} {})",
                owner.id,
                owner.addr,
                plural(*hops, "hop")
            ),
            Out::Error {
                error,
                command: Some(c),
            } => format!("Error ({c}): {error}"),
            Out::Error {
                error,
                command: None,
            } => format!("Error: {error}"),
            Out::Id(Some(id)) => format!("ID {id}"),
            Out::Id(None) => "No ID yet (not joined)".into(),
            Out::Peers(peers) => peers_text(peers),
            Out::Size(size) => format!("Network size: {size}"),
            Out::Help(text) => text.clone(),
            Out::Shutdown => "Stopped".into(),
        }
    }
}

fn peer_json(p: &Peer) -> Value {
    json!({"id": p.id, "addr": p.addr})
}

fn message_json(event: &str, from: &PeerInfo, m: &Message) -> Value {
    let mut v = json!({
        "event": event, "from": from.addr, "from_id": from.id, "type": m.kind(), "data": m.data_value()
    });
    if let Some(body) = m.body() {
        v["body_len"] = json!(body.len());
    }
    v
}

fn response_json(to: &str, m: &Message, ms: f64) -> Value {
    let mut v = json!({
        "event": "response", "to": to, "type": m.kind(), "data": m.data_value(), "ms": round2(ms)
    });
    if let Some(body) = m.body() {
        v["body_len"] = json!(body.len());
    }
    v
}

fn error_json(error: &str, command: Option<&str>) -> Value {
    match command {
        Some(c) => json!({"event": "error", "error": error, "command": c}),
        None => json!({"event": "error", "error": error}),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `"Hi!"` for a TEXT message, `TYPE data` for the others.
/// `word` with an `s` unless `n` is 1.
fn plural(n: impl Into<u64>, word: &str) -> String {
    if n.into() == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn describe(m: &Message) -> String {
    let body = m
        .body()
        .map(|b| format!(" + {} bytes", b.len()))
        .unwrap_or_default();
    match m.as_text() {
        Some(text) if m.kind() == p2prs::TEXT => format!("{text:?}{body}"),
        _ => format!("{} {}{body}", m.kind(), m.data_value()),
    }
}

fn peers_text(peers: &[Peer]) -> String {
    if peers.is_empty() {
        return "Peer book: empty".into();
    }
    let list: Vec<String> = peers
        .iter()
        .map(|p| format!("{} at {}", p.id, p.addr))
        .collect();
    format!("Peer book ({}): {}", peers.len(), list.join(", "))
}

/// Prints events, one whole line at a time, from any thread.
pub struct Printer {
    json: bool,
    sink: Mutex<Box<dyn Write + Send>>,
    /// The ID last announced as joined, so that the same join prints once.
    announced: Mutex<Option<NodeId>>,
}

impl Printer {
    /// A printer to stdout of JSON lines (`json`) or readable ones.
    pub fn new(json: bool) -> Printer {
        Printer::to(json, Box::new(std::io::stdout()))
    }

    /// A printer to `sink`.
    pub fn to(json: bool, sink: Box<dyn Write + Send>) -> Printer {
        Printer {
            json,
            sink: Mutex::new(sink),
            announced: Mutex::new(None),
        }
    }

    /// Print one event. A closed output is ignored: the node goes on.
    pub fn print(&self, out: &Out) {
        let line = if self.json {
            out.json_line()
        } else {
            out.text()
        };
        let mut sink = self.sink.lock();
        let _ = writeln!(sink, "{line}");
        let _ = sink.flush();
    }

    /// Print that the node joined as `id`, unless that was printed already
    /// (the join call and the event stream both report it).
    pub fn joined(&self, id: NodeId, addr: SocketAddr) {
        let mut announced = self.announced.lock();
        if *announced != Some(id) {
            *announced = Some(id);
            self.print(&Out::Joined { id, addr });
        }
    }

    /// Forget the announced ID (after leaving).
    pub fn left(&self) {
        *self.announced.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn listening_json_is_the_documented_line() {
        let out = Out::Listening {
            addr: addr(4444),
            key: "ab".repeat(32),
        };
        assert_eq!(
            out.json_line(),
            format!(
                r#"{{"event":"listening","addr":"127.0.0.1:4444","key":"{}"}}"#,
                "ab".repeat(32)
            )
        );
        assert_eq!(
            out.text(),
            format!(
                "Listening on 127.0.0.1:4444 (public key {})",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn message_json_has_sender_type_and_data() {
        let from = PeerInfo {
            addr: addr(5555),
            id: Some(NodeId(1)),
        };
        let out = Out::Message {
            from,
            message: Message::text("Hi!"),
        };
        let v = out.json();
        assert_eq!(v["event"], "message");
        assert_eq!(v["from"], "127.0.0.1:5555");
        assert_eq!(v["from_id"], 1);
        assert_eq!(v["type"], "TEXT");
        assert_eq!(v["data"], "Hi!");
        assert_eq!(out.text(), r#"(127.0.0.1:5555 (ID 1)) -> "Hi!""#);
    }

    #[test]
    fn id_is_null_before_joining() {
        assert_eq!(Out::Id(None).json_line(), r#"{"event":"id","id":null}"#);
        assert_eq!(Out::Shutdown.json_line(), r#"{"event":"shutdown"}"#);
        assert_eq!(Out::Id(Some(NodeId(3))).json()["id"], 3);
    }

    #[test]
    fn peers_and_errors() {
        let peers = vec![Peer {
            id: NodeId(2),
            addr: addr(7000),
            key: None,
        }];
        let v = Out::Peers(peers).json();
        assert_eq!(v["peers"][0]["id"], 2);
        assert_eq!(v["peers"][0]["addr"], "127.0.0.1:7000");
        let e = Out::Error {
            error: "boom".into(),
            command: Some("send".into()),
        };
        assert_eq!(e.json()["command"], "send");
        assert_eq!(e.text(), "Error (send): boom");
        assert!(Out::error("x").json().get("command").is_none());
    }

    #[test]
    fn response_rounds_its_latency() {
        let out = Out::Response {
            to: "0".into(),
            message: Message::new("ADD RESP", 18),
            ms: 1.23456,
        };
        let v = out.json();
        assert_eq!(v["data"], 18);
        assert_eq!(v["ms"], 1.23);
        assert_eq!(out.text(), "Response from 0 in 1.23 ms: ADD RESP 18");
    }
}

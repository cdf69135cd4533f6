//! Secure by default: what an observer on the path, an outsider without the
//! network key, and a member with a valid key who misbehaves can and cannot
//! do. See docs/security.md.

mod support;

use p2prs::{Identity, Message, Node, NodeId, Rendezvous};
use parking_lot::Mutex;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::*;

const CANARY: &str = "canary-7f3a9c-secret";

fn keyed(key: &str) -> Node {
    capture_logs();
    Node::builder()
        .config(test_config())
        .network_key(key)
        .start()
        .expect("starting a keyed node")
}

fn echo(n: &Node) {
    n.add_handler("ECHO", |req| {
        let m = req.take_message();
        req.respond(m)?;
        Ok(())
    })
    .expect("ECHO");
}

/// A proxy that forwards one connection to `target`, records every byte
/// both ways, and, once `flip` is set, flips one bit of the next chunk
/// going to `target`.
struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    flip: Arc<AtomicBool>,
}

fn proxy(target: SocketAddr) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
    let addr = l.local_addr().expect("proxy addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let flip = Arc::new(AtomicBool::new(false));
    let (seen2, flip2) = (Arc::clone(&seen), Arc::clone(&flip));
    std::thread::spawn(move || {
        let Ok((client, _)) = l.accept() else { return };
        let Ok(server) = TcpStream::connect(target) else {
            return;
        };
        let pump = |mut from: TcpStream, mut to: TcpStream, flip: Option<Arc<AtomicBool>>| {
            let seen = Arc::clone(&seen2);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    seen.lock().extend_from_slice(&buf[..n]);
                    if let Some(f) = &flip {
                        if f.swap(false, Ordering::SeqCst) {
                            buf[n / 2] ^= 0x10;
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            })
        };
        let (c2, s2) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        let a = pump(client, server, Some(flip2));
        let b = pump(s2, c2, None);
        let _ = a.join();
        let _ = b.join();
    });
    Proxy { addr, seen, flip }
}

#[test]
fn an_observer_sees_only_ciphertext_and_an_altered_byte_closes_only_that_connection() {
    let b = node();
    echo(&b);
    let a = node();
    let p = proxy(b.local_addr());
    let conn = a.connect(p.addr).expect("connecting through the proxy");
    assert_eq!(conn.peer_key(), Some(b.public_key()));
    let events = b.events();
    conn.send(Message::text(CANARY)).expect("TEXT");
    let got = events.iter().find_map(|e| match e {
        p2prs::Event::Message { message, .. } => message.as_text().map(str::to_owned),
        _ => None,
    });
    assert_eq!(got.as_deref(), Some(CANARY));
    let data = conn
        .request(Message::new("ECHO", json!({ "secret": CANARY })))
        .expect("JSON");
    assert_eq!(
        data.data::<serde_json::Value>().ok(),
        Some(json!({ "secret": CANARY }))
    );
    let body = conn
        .request(Message::bytes("ECHO", CANARY.as_bytes().to_vec()))
        .expect("bytes");
    assert_eq!(body.body(), Some(CANARY.as_bytes()));
    {
        let seen = p.seen.lock();
        assert!(seen.len() > 300, "the proxy saw the traffic");
        assert!(
            !seen.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "the canary never crosses the wire in the clear"
        );
        assert!(
            !seen.windows(4).any(|w| w == b"ECHO"),
            "nor do message types"
        );
    }
    // One altered byte: the receiver refuses the record and closes the
    // connection; the request fails at once with a clear error.
    p.flip.store(true, Ordering::SeqCst);
    let r = conn.request(Message::new("ECHO", 1));
    assert!(
        matches!(r, Err(p2prs::Error::ConnectionClosed { .. })),
        "{r:?}"
    );
    assert!(wait_until(PATIENCE, || warned(&["failed authentication"])));
    // Both nodes go on serving others.
    let c = node();
    assert_eq!(
        c.request(b.local_addr(), Message::new("ECHO", 5))
            .and_then(|m| m.data::<i64>())
            .ok(),
        Some(5)
    );
    echo(&a);
    assert_eq!(
        c.request(a.local_addr(), Message::new("ECHO", 6))
            .and_then(|m| m.data::<i64>())
            .ok(),
        Some(6)
    );
}

#[test]
fn a_wrong_or_missing_network_key_fails_the_join_at_once() {
    let a = keyed("right key");
    a.create_network().expect("network");
    let member = keyed("right key");
    member
        .join_network(&[a.local_addr()])
        .expect("a member joins");
    for stranger in [keyed("wrong key"), node()] {
        let e = stranger
            .join_network(&[a.local_addr()])
            .expect_err("a stranger cannot join");
        assert!(e.is_network_key_mismatch(), "{e}");
        assert!(e.to_string().contains("network key"), "{e}");
        assert!(!stranger.joined());
        // Not a message or request either.
        assert!(stranger.send(a.local_addr(), Message::text("hi")).is_err());
    }
    // A keyed node cannot join an open network either.
    let open = node();
    open.create_network().expect("open network");
    let e = keyed("right key")
        .join_network(&[open.local_addr()])
        .expect_err("keyed into open");
    assert!(e.is_network_key_mismatch(), "{e}");
    // The ring never lists a stranger.
    assert!(wait_until(PATIENCE, || a.network_size() == 2
        && member.network_size() == 2));
    let keys: Vec<_> = a.peer_book().iter().map(|p| p.key).collect();
    assert_eq!(keys, vec![Some(member.public_key())]);
}

#[test]
fn a_keyed_rendezvous_serves_only_members() {
    capture_logs();
    let cfg = p2prs::Config {
        network_key: Some(p2prs::NetworkKey::new("rv key")),
        ..test_config()
    };
    let rv = Rendezvous::start_with_config("127.0.0.1", 0, cfg).expect("rendezvous");
    let member = Node::builder()
        .config(test_config())
        .network_key("rv key")
        .rendezvous(rv.local_addr().to_string())
        .start()
        .expect("member");
    assert!(member.nat_status().is_some_and(|s| s.connected));
    let stranger = Node::builder()
        .config(test_config())
        .network_key("other")
        .rendezvous(rv.local_addr().to_string())
        .start()
        .expect("a stranger starts, but without its rendezvous");
    assert!(stranger.nat_status().is_some_and(|s| !s.connected));
    assert_eq!(rv.registered(), 1, "only the member registered");
}

#[test]
fn a_restarted_node_with_the_same_identity_file_is_the_same_peer() {
    let dir = std::env::temp_dir().join(format!("p2prs-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("id.key");
    let _ = std::fs::remove_file(&path);
    let first = Node::builder().identity_file(&path).start().expect("first");
    let key = first.public_key();
    first.shutdown();
    let again = Node::builder().identity_file(&path).start().expect("again");
    assert_eq!(again.public_key(), key);
    let other = Node::builder().start().expect("other");
    assert_ne!(other.public_key(), key);
    let conn = other.connect(again.local_addr()).expect("connect");
    assert_eq!(conn.peer_key(), Some(key));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_that_never_joined_grants_nothing() {
    let lone = node();
    let mut m = RawPeer::connect(lone.local_addr());
    let listen = TcpListener::bind("127.0.0.1:0").expect("bind");
    let at = listen.local_addr().expect("addr").to_string();
    m.secure(json!({ "listen": at }).to_string().as_bytes())
        .expect("handshake");
    let answer = m.request(1, "p2prs.claim", json!({ "id": null, "addr": at }));
    assert_eq!(answer["kind"], "error", "{answer}");
    assert!(!lone.joined(), "no ring was created");
}

/// A ring of three keyed nodes A (0), B (1), C (2) that answer WHO with the
/// ID they believe the requester holds and ECHO with their own ID.
fn ring3(key: &str) -> (Node, Node, Node) {
    let mk = || {
        let n = keyed(key);
        n.add_handler("WHO", |req| {
            let from = req.from().id.map(|i| i.0);
            req.respond(Message::new("WHO", from))?;
            Ok(())
        })
        .expect("WHO");
        n
    };
    let (a, b, c) = (mk(), mk(), mk());
    a.create_network().expect("a");
    b.join_network(&[a.local_addr()]).expect("b");
    c.join_network(&[a.local_addr()]).expect("c");
    for n in [&a, &b, &c] {
        let id = n.id().expect("joined").0;
        n.add_handler("ECHO", move |req| {
            req.respond(Message::new("ECHO", id))?;
            Ok(())
        })
        .expect("ECHO");
    }
    assert!(wait_until(PATIENCE, || [&a, &b, &c]
        .iter()
        .all(|n| n.network_size() == 3)));
    (a, b, c)
}

/// A member with the network key, speaking for itself at `listen` (a port
/// it holds), but claiming ID `claims` in its hello.
fn member(to: &Node, key: &str, id: &Identity, listen: SocketAddr, claims: u64) -> RawPeer {
    let mut m = RawPeer::connect(to.local_addr());
    let hello = json!({ "listen": listen.to_string(), "id": claims }).to_string();
    m.secure_as(id.clone(), Some(key), hello.as_bytes())
        .expect("a member's handshake");
    m
}

#[test]
fn a_member_with_the_key_cannot_forge_other_members() {
    let key = "members only";
    let (a, b, c) = ring3(key);
    let (ida, idc) = (a.id().expect("a"), c.id().expect("c"));
    let mid = Identity::generate().expect("identity");
    let mkey = mid.public_key();
    let hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = hole.local_addr().expect("addr");
    let peer = |id: u64, at: SocketAddr, k: p2prs::PublicKey| json!({ "id": id, "addr": { "at": at.to_string(), "key": k.to_string() } });

    // 1. A hello claiming C's ID is not believed.
    let mut m = member(&b, key, &mid, listen, idc.0);
    let who = m.request(1, "WHO", json!(null));
    assert_eq!(who["data"], json!(null), "B does not take M for C: {who}");
    assert!(warned(&["claims ID", "bound to another key"]));

    // 2. A notify for C's ID, or naming C's address or key, is refused; so
    //    is a notify for an unassigned ID that no grant gave M.
    for (i, cand) in [
        peer(idc.0, listen, mkey),
        peer(150, c.local_addr(), mkey),
        peer(idc.0, c.local_addr(), c.public_key()),
        peer(150, listen, mkey),
    ]
    .into_iter()
    .enumerate()
    {
        for target in [&a, &b, &c] {
            let mut m = member(target, key, &mid, listen, 150);
            let r = m.request(10 + i as u64, "p2prs.notify", json!({ "peer": cand }));
            assert_eq!(
                r["kind"],
                "error",
                "notify {cand} to {:?}: {r}",
                target.id()
            );
        }
    }

    // 3. A forged leaving notice for C is refused.
    let mut m = member(&b, key, &mid, listen, 150);
    let leave = json!({ "peer": peer(idc.0, c.local_addr(), c.public_key()), "pred": null, "successors": [] });
    let r = m.request(20, "p2prs.leaving", leave);
    assert_eq!(r["kind"], "error", "{r}");

    // 4. A claim for C's ID, or naming another address, is refused.
    let mut m = member(&a, key, &mid, listen, 150);
    let r = m.request(
        21,
        "p2prs.claim",
        json!({ "id": idc.0, "addr": listen.to_string() }),
    );
    assert_eq!(r["error"]["code"], "id_taken", "{r}");
    let r = m.request(
        22,
        "p2prs.claim",
        json!({ "id": null, "addr": b.local_addr().to_string() }),
    );
    assert_eq!(r["kind"], "error", "{r}");

    // 5. A broadcast with A as origin but not signed by A, and size news
    //    from a non-root or unsigned, are dropped.
    let got = news_seen(&c);
    let mut m = member(&c, key, &mid, listen, 150);
    let forged = json!({
        "kind": "message", "type": "p2prs.broadcast",
        "data": { "limit": idc.0, "origin": peer(ida.0, a.local_addr(), a.public_key()),
                  "type": "NEWS", "data": "forged", "sig": "00".repeat(64) }
    });
    m.send_frame(&forged, &[]).expect("send");
    let size = json!({
        "kind": "message", "type": "p2prs.broadcast",
        "data": { "limit": idc.0, "origin": peer(ida.0, listen, mkey),
                  "type": "p2prs.size", "data": { "size": 999999, "epoch": 99999, "joined":
                  [peer(666, "6.6.6.6:6".parse().expect("addr"), mkey)], "left": [] } }
    });
    m.send_frame(&size, &[]).expect("send");
    assert!(wait_until(PATIENCE, || warned(&[
        "dropped a broadcast",
        "not verify"
    ]) || warned(&[
        "dropped a broadcast",
        "not signed"
    ])));
    assert!(wait_until(PATIENCE, || warned(&[
        "dropped a broadcast",
        "bound to another key"
    ]) || warned(&[
        "dropped a broadcast",
        "not signed"
    ])));
    // A real broadcast still arrives, and the forged ones never did.
    a.broadcast(Message::new("NEWS", "real"))
        .expect("broadcast");
    assert!(wait_until(PATIENCE, || got.load(Ordering::SeqCst)));
    assert_eq!(c.network_size(), 3);
    assert!(c.peer_book().iter().all(|p| p.id != NodeId(666)));

    // 6. The ring is unchanged and requests for C reach C, never M.
    for n in [&a, &b] {
        let r = n
            .request(idc, Message::new("ECHO", 0))
            .expect("request to C");
        assert_eq!(r.data::<u64>().ok(), Some(idc.0));
        assert_eq!(n.lookup(NodeId(150)).map(|r| r.owner.id).ok(), Some(ida));
    }
    assert!(m
        .try_read_frame(std::time::Duration::from_millis(200))
        .is_none());
    for n in [&a, &b, &c] {
        assert_eq!(n.network_size(), 3);
    }
}

#[test]
fn the_rendezvous_binds_registrations_to_keys() {
    capture_logs();
    let rv = Rendezvous::start_with_config("127.0.0.1", 0, test_config()).expect("rendezvous");
    let victim = Node::builder()
        .config(test_config())
        .rendezvous(rv.local_addr().to_string())
        .start()
        .expect("victim");
    victim.create_network().expect("network");
    assert!(wait_until(PATIENCE, || rv.registered() == 1));
    let mut m = RawPeer::handshaken(rv.local_addr());
    let r = m.request(
        1,
        "p2prs.rv.register",
        json!({ "id": 0, "listen": victim.local_addr().to_string(), "private": m.addr() }),
    );
    assert_eq!(r["error"]["code"], "taken", "{r}");
    // The victim keeps its registration and its link.
    assert_eq!(rv.registered(), 1);
    assert!(victim.nat_status().is_some_and(|s| s.connected));
    // A relay frame to a session it was never introduced to is refused.
    let own = m.request(
        2,
        "p2prs.rv.register",
        json!({ "listen": m.addr(), "private": m.addr() }),
    );
    assert_eq!(own["kind"], "response", "{own}");
    let before = rv.stats().relayed_frames;
    for to in 0..64u64 {
        m.send_frame(
            &json!({"kind": "message", "type": "p2prs.rv.relay", "data": { "to": to }}),
            b"P2PR junk",
        )
        .expect("send");
    }
    assert!(wait_until(PATIENCE, || rv.stats().refused_frames >= 1));
    assert_eq!(rv.stats().relayed_frames, before);
}

/// The bytes an origin signs for a broadcast (docs/protocol.md): written
/// out here from the document, so that the test also checks it.
fn broadcast_signed_bytes(
    id: u64,
    at: SocketAddr,
    key: &[u8; 32],
    kind: &str,
    data: &serde_json::Value,
    body: &[u8],
) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut v = b"p2prs-broadcast-v1\0".to_vec();
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(at.to_string().as_bytes());
    v.push(0);
    v.extend_from_slice(key);
    v.extend_from_slice(kind.as_bytes());
    v.push(0);
    v.extend_from_slice(&serde_json::to_vec(data).expect("data JSON"));
    v.push(0);
    v.push(1);
    v.extend_from_slice(&Sha256::digest(body));
    v
}

#[test]
fn a_member_that_is_not_the_root_cannot_publish_size_news() {
    use ed25519_dalek::{Signer, SigningKey};
    let key = "members only";
    capture_logs();
    let secret = [7u8; 32];
    let mk = |identity: Option<Identity>| {
        let b = Node::builder().config(test_config()).network_key(key);
        match identity {
            Some(i) => b.identity(i),
            None => b,
        }
        .start()
        .expect("starting a keyed node")
    };
    let a = mk(None);
    let b = mk(Some(Identity::from_secret_bytes(secret)));
    let c = mk(None);
    a.create_network().expect("a");
    b.join_network(&[a.local_addr()]).expect("b");
    c.join_network(&[a.local_addr()]).expect("c");
    assert!(wait_until(PATIENCE, || [&a, &b, &c]
        .iter()
        .all(|n| n.network_size() == 3)));
    let (ida, idb) = (a.id().expect("a"), b.id().expect("b"));
    assert!(idb > ida, "the root holds the lowest ID");

    // B holds a real ID and its own key, and signs size news as itself:
    // a count that adds a stranger and drops the root.
    let signer = SigningKey::from_bytes(&secret);
    let bkey = signer.verifying_key().to_bytes();
    assert_eq!(
        b.public_key().to_string(),
        Identity::from_secret_bytes(secret).public_key().to_string()
    );
    let stranger = Identity::generate().expect("identity").public_key();
    let news = json!({
        "size": 999, "epoch": 1u64 << 40,
        "joined": [{ "id": 666, "addr": { "at": "6.6.6.6:6", "key": stranger.to_string() } }],
        "left": [ida.0],
    });
    let body = serde_json::to_vec(&news).expect("news JSON");
    let data = serde_json::Value::Null;
    let signed = broadcast_signed_bytes(idb.0, b.local_addr(), &bkey, "p2prs.size", &data, &body);
    let sig: String = signer
        .sign(&signed)
        .to_bytes()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let origin = json!({ "id": idb.0, "addr": { "at": b.local_addr().to_string(), "key": b.public_key().to_string() } });
    let hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = hole.local_addr().expect("addr");
    let mid = Identity::generate().expect("identity");
    // To C, whose successor (the root) is below B; and to the root itself,
    // which must look up ID 0 before it could take news from above it.
    for (target, why) in [(&c, "not the root"), (&a, "ID 0 is owned by")] {
        let mut m = member(target, key, &mid, listen, 150);
        let frame = json!({
            "kind": "message", "type": "p2prs.broadcast", "bin": true,
            "data": { "limit": idb.0, "origin": origin, "type": "p2prs.size",
                      "data": data, "sig": sig }
        });
        m.send_frame(&frame, &body).expect("send");
        assert!(
            wait_until(PATIENCE, || warned(&["size news from", why])),
            "the forged news was not dropped with {why:?}"
        );
    }
    // A real broadcast from the root still gets through, after the forged
    // news on the same paths; the ring is unchanged.
    let got = news_seen(&c);
    a.broadcast(Message::new("NEWS", "real"))
        .expect("broadcast");
    assert!(wait_until(PATIENCE, || got.load(Ordering::SeqCst)));
    for n in [&a, &b, &c] {
        assert_eq!(n.network_size(), 3);
        assert!(n.peer_book().iter().all(|p| p.id != NodeId(666)));
    }
    for n in [&b, &c] {
        assert!(
            n.peer_book().iter().any(|p| p.id == ida),
            "the root is still known"
        );
        assert_eq!(n.lookup(NodeId(0)).map(|r| r.owner.id).ok(), Some(ida));
    }
}

/// A flag set once `node` has received a `NEWS` message.
fn news_seen(node: &Node) -> Arc<AtomicBool> {
    let got = Arc::new(AtomicBool::new(false));
    let g2 = Arc::clone(&got);
    node.add_handler("NEWS", move |_| {
        g2.store(true, Ordering::SeqCst);
        Ok(())
    })
    .expect("NEWS");
    got
}

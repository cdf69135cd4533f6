//! A hostile stranger against the handshake and the plaintext reads: partial
//! handshakes that stop at each message, a leading dialer that sends its
//! first message and stalls or sends garbage, proofs for another static key,
//! many handshakes with fresh identities (the node's cache of checked proofs
//! and its spare keys), huge declared bodies, large plaintext frames sent
//! fast then trickled, many connections each holding part of a large body,
//! and requests mixed with large bodies on one connection. Each test checks
//! that the bad peer is closed with a warning, that a fresh good peer is
//! served within a second, and that threads and memory stay bounded.

mod support;

use p2prs::{Config, Node};
use parking_lot::Mutex;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// One test at a time: they measure the whole process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn server(f: impl FnOnce(&mut Config)) -> Node {
    let s = node_with(f);
    add_adder(&s);
    s
}

fn fresh_served(server: &Node, plain: bool) {
    let good = node_with(|c| c.insecure_plaintext = plain);
    assert_served(&good, server, Duration::from_secs(1));
}

// ---- A hand-made Noise initiator --------------------------------------------

const FLAG_AES: u8 = 4;
const FLAG_EARLY: u8 = 8;

fn leading_preamble() -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(b"P2PR");
    p[4..6].copy_from_slice(&3u16.to_be_bytes());
    p[6] = FLAG_AES | FLAG_EARLY;
    p[8] = 0x80;
    p
}

/// A leading initiator with the static key `kp`: its preamble and
/// message 1 (as sent), and its state.
fn initiator(kp: &snow::Keypair) -> (snow::HandshakeState, Vec<u8>) {
    let pre = leading_preamble();
    let mut prologue = b"p2prs/3".to_vec();
    prologue.extend_from_slice(&pre);
    let mut hs = snow::Builder::new(params())
        .local_private_key(&kp.private)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut m1 = vec![0u8; 1024];
    let n = hs.write_message(&[], &mut m1).unwrap();
    let mut out = pre.to_vec();
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&m1[..n]);
    (hs, out)
}

fn params() -> snow::params::NoiseParams {
    "Noise_XX_25519_AESGCM_BLAKE2s".parse().unwrap()
}

fn keypair() -> snow::Keypair {
    snow::Builder::new(params()).generate_keypair().unwrap()
}

fn read_exact_within(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok()?;
    Some(v)
}

/// Connect, lead with message 1, read the node's preamble and message 2.
fn up_to_message_2(addr: SocketAddr, kp: &snow::Keypair) -> (TcpStream, snow::HandshakeState) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let (mut hs, out) = initiator(kp);
    s.write_all(&out).unwrap();
    let _theirs = read_exact_within(&mut s, 16).expect("the node's preamble");
    let len = read_exact_within(&mut s, 2).expect("message 2's length");
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    let m2 = read_exact_within(&mut s, len).expect("message 2");
    let mut payload = vec![0u8; len];
    hs.read_message(&m2, &mut payload).expect("message 2 reads");
    (s, hs)
}

fn signer() -> ed25519_dalek::SigningKey {
    let mut k = [0u8; 32];
    getrandom_fill(&mut k);
    ed25519_dalek::SigningKey::from_bytes(&k)
}

fn getrandom_fill(k: &mut [u8]) {
    // Any distinct bytes do: a key made by snow's random source.
    let kp = keypair();
    k.copy_from_slice(&kp.private[..k.len()]);
}

/// A proof: an Ed25519 key and its signature of `static_public`.
fn proof_for(signer: &ed25519_dalek::SigningKey, static_public: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let mut signed = b"p2prs-noise-static-key:".to_vec();
    signed.extend_from_slice(static_public);
    let sig = signer.sign(&signed);
    let mut v = signer.verifying_key().to_bytes().to_vec();
    v.extend_from_slice(&sig.to_bytes());
    v
}

fn send_message_3(s: &mut TcpStream, hs: &mut snow::HandshakeState, payload: &[u8]) {
    let mut m3 = vec![0u8; 65535];
    let n = hs.write_message(payload, &mut m3).unwrap();
    let mut out = (n as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&m3[..n]);
    let _ = s.write_all(&out);
}

fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The node closes `s`, and a warning containing `needle` was logged.
fn assert_closed_with(s: &mut TcpStream, needle: &str) {
    assert!(
        closed_within(s, PATIENCE),
        "the node keeps a bad peer ({needle})"
    );
    assert!(
        wait_until(PATIENCE, || warned(&[needle])),
        "no warning saying {needle:?}"
    );
}

// ---- Handshakes ----------------------------------------------------------------

/// Handshakes that stop at each message, or that go on with garbage, are
/// closed within the handshake timeout with a warning; a fresh peer is
/// served meanwhile, and the node's threads come back to what they were.
#[test]
fn partial_and_broken_handshakes_are_closed_at_each_step() {
    let _one = ONE_AT_A_TIME.lock();
    let s = server(|c| c.handshake_timeout = Duration::from_millis(800));
    let addr = s.local_addr();
    fresh_served(&s, false);
    let threads = p2prs::running_threads();
    let mut stalled = Vec::new();
    // 1. Silent.
    stalled.push(TcpStream::connect(addr).unwrap());
    // 2. A leading preamble, no message 1.
    let mut t = TcpStream::connect(addr).unwrap();
    t.write_all(&leading_preamble()).unwrap();
    stalled.push(t);
    // 3. Message 1, then nothing (message 2 read, no message 3).
    stalled.push(up_to_message_2(addr, &keypair()).0);
    // 4. A preamble that does not lead, with the smallest tie-break: the
    //    node initiates; its message 1 is never answered.
    let mut t = TcpStream::connect(addr).unwrap();
    let mut pre = leading_preamble();
    pre[6] = FLAG_AES;
    pre[8] = 0;
    t.write_all(&pre).unwrap();
    stalled.push(t);
    // 5. Half of a declared maximal message 1.
    let mut t = TcpStream::connect(addr).unwrap();
    let mut half = leading_preamble().to_vec();
    half.extend_from_slice(&u16::MAX.to_be_bytes());
    half.extend_from_slice(&[0x41; 30_000]);
    t.write_all(&half).unwrap();
    stalled.push(t);
    fresh_served(&s, false);
    for t in &mut stalled {
        assert!(
            closed_within(t, Duration::from_secs(3)),
            "a stalled handshake is kept"
        );
    }
    assert!(wait_until(PATIENCE, || warned(&["handshake"])));

    // Message 1 with a key of small order (all zeros).
    let mut t = TcpStream::connect(addr).unwrap();
    let mut m = leading_preamble().to_vec();
    m.extend_from_slice(&32u16.to_be_bytes());
    m.extend_from_slice(&[0u8; 32]);
    t.write_all(&m).unwrap();
    assert!(closed_within(&mut t, PATIENCE), "a small-order key is kept");

    // Message 1 with a payload (XX's first message has none).
    let (_, mut hs_out) = initiator(&keypair());
    let mut t = TcpStream::connect(addr).unwrap();
    // Rebuild with a payload: the length covers key and payload.
    let pre = leading_preamble();
    let mut prologue = b"p2prs/3".to_vec();
    prologue.extend_from_slice(&pre);
    let mut hs = snow::Builder::new(params())
        .local_private_key(&keypair().private)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut m1 = vec![0u8; 65535];
    let n = hs.write_message(&[7u8; 1000], &mut m1).unwrap();
    hs_out.clear();
    hs_out.extend_from_slice(&pre);
    hs_out.extend_from_slice(&(n as u16).to_be_bytes());
    hs_out.extend_from_slice(&m1[..n]);
    t.write_all(&hs_out).unwrap();
    assert!(
        closed_within(&mut t, PATIENCE),
        "a message 1 with a payload is kept"
    );

    // Garbage in place of message 3.
    let (mut t, _) = up_to_message_2(addr, &keypair());
    let mut g = 200u16.to_be_bytes().to_vec();
    g.extend_from_slice(&[0x5a; 200]);
    t.write_all(&g).unwrap();
    assert_closed_with(&mut t, "network key mismatch");

    // Message 3 whose proof is 96 random bytes.
    let (mut t, mut hs) = up_to_message_2(addr, &keypair());
    let mut payload = vec![0x33u8; 96];
    payload.extend_from_slice(b"{}");
    send_message_3(&mut t, &mut hs, &payload);
    assert_closed_with(&mut t, "closing the connection from");

    // Message 3 with a proof too short, and with none.
    for payload in [&[1u8; 50][..], &[][..]] {
        let (mut t, mut hs) = up_to_message_2(addr, &keypair());
        send_message_3(&mut t, &mut hs, payload);
        assert!(closed_within(&mut t, PATIENCE), "a short proof is kept");
    }

    fresh_served(&s, false);
    assert!(
        wait_until(PATIENCE, || p2prs::running_threads() <= threads),
        "threads {} > {threads}",
        p2prs::running_threads()
    );
    assert!(wait_until(PATIENCE, || s.connection_count() == 0));
}

/// A proof checked (and remembered) for one static key passes for no
/// other: a stranger that replays another's proof with its own static key
/// is refused, however often the proof was seen; a static key proved anew
/// by another identity is that identity.
#[test]
fn a_remembered_proof_vouches_for_its_static_key_only() {
    let _one = ONE_AT_A_TIME.lock();
    let s = server(|c| c.handshake_timeout = Duration::from_millis(800));
    let addr = s.local_addr();
    let alice = signer();
    let (k1, k2) = (keypair(), keypair());
    let good = proof_for(&alice, &k1.public);
    // Alice with k1, three times: checked once, then remembered.
    for _ in 0..3 {
        let (mut t, mut hs) = up_to_message_2(addr, &k1);
        let mut payload = good.clone();
        payload.extend_from_slice(b"{}");
        send_message_3(&mut t, &mut hs, &payload);
        let mut tr = hs.into_transport_mode().unwrap();
        // A request inside a record: the node answers it.
        let h = serde_json::to_vec(&json!({"kind": "request", "type": "ADD", "data": 1, "req": 1}))
            .unwrap();
        let f = frame_bytes(&h, &[]);
        let mut rec = vec![0u8; f.len() + 16];
        let n = tr.write_message(&f, &mut rec).unwrap();
        let mut out = (n as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&rec[..n]);
        t.write_all(&out).unwrap();
        let len = read_exact_within(&mut t, 2).expect("a record back");
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let r = read_exact_within(&mut t, len).unwrap();
        let mut plain = vec![0u8; len];
        let m = tr
            .read_message(&r, &mut plain)
            .expect("the answer decrypts");
        let hl = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
        let ans: serde_json::Value = serde_json::from_slice(&plain[8..8 + hl]).unwrap();
        assert!(m >= 8 + hl);
        assert_eq!(ans["data"], 2, "{ans}");
    }
    // Alice's proof of k1, presented with k2, many times: always refused.
    for _ in 0..5 {
        let (mut t, mut hs) = up_to_message_2(addr, &k2);
        let mut payload = good.clone();
        payload.extend_from_slice(b"{}");
        send_message_3(&mut t, &mut hs, &payload);
        assert!(
            closed_within(&mut t, PATIENCE),
            "a replayed proof is believed"
        );
    }
    assert!(warned(&["does not verify"]));
    // Another identity proving k1 is that identity (the node's hello shows
    // nothing of it; the connection is simply accepted).
    let bob = signer();
    let (mut t, mut hs) = up_to_message_2(addr, &k1);
    let mut payload = proof_for(&bob, &k1.public);
    payload.extend_from_slice(b"{}");
    send_message_3(&mut t, &mut hs, &payload);
    assert!(
        !closed_within(&mut t, Duration::from_millis(300)),
        "bob's own proof is refused"
    );
    fresh_served(&s, false);
}

/// Many handshakes, each with a fresh identity and static key, from
/// several threads at once, some finished and some abandoned at message 2:
/// the remembered proofs stay bounded, the node's threads come back, its
/// memory grows by little, and a fresh peer is served throughout.
#[test]
fn many_fresh_identities_cost_a_bounded_amount() {
    let _one = ONE_AT_A_TIME.lock();
    let s = server(|c| {
        c.handshake_timeout = Duration::from_millis(600);
        c.max_handshaking = 64;
    });
    let addr = s.local_addr();
    fresh_served(&s, false);
    let threads = p2prs::running_threads();
    let rss = rss_bytes();
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                for i in 0..150 {
                    if (i + w) % 3 == 0 {
                        // Abandoned after message 2.
                        let _ = up_to_message_2(addr, &keypair());
                    } else {
                        let mut p = RawPeer::connect(addr);
                        p.secure(b"{}").expect("a fresh identity's handshake");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    while done.load(Ordering::Relaxed) < 600 {
        let t = Instant::now();
        fresh_served(&s, false);
        worst = worst.max(t.elapsed());
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    let grew = rss_bytes().saturating_sub(rss);
    eprintln!(
        "600 fresh identities: good peer's worst {worst:?}, RSS +{} KiB",
        grew / 1024
    );
    assert!(grew < 32 << 20, "RSS grew by {grew}");
    fresh_served(&s, false);
    assert!(
        wait_until(PATIENCE, || p2prs::running_threads() <= threads),
        "threads {} > {threads}",
        p2prs::running_threads()
    );
}

/// Leading dialers that send message 1 and stall, as many as the node has
/// handshake places: the accept thread's own answers (message 2) and the
/// spare keys cost no place beyond the limit, they are closed at the
/// handshake timeout, and a fresh peer gets in once the flood stops.
#[test]
fn a_flood_of_message_1_then_silence_is_bounded() {
    let _one = ONE_AT_A_TIME.lock();
    let s = server(|c| {
        c.handshake_timeout = Duration::from_millis(700);
        c.max_handshaking = 32;
    });
    let addr = s.local_addr();
    fresh_served(&s, false);
    let threads = p2prs::running_threads();
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut t = TcpStream::connect(addr).unwrap();
        let (_, out) = initiator(&keypair());
        let _ = t.write_all(&out);
        stalled.push(t);
        assert!(p2prs::running_threads() <= threads + 32 + 1);
    }
    for t in &mut stalled {
        assert!(
            closed_within(t, Duration::from_secs(3)),
            "a stalled dialer is kept"
        );
    }
    assert!(wait_until(PATIENCE, || p2prs::running_threads() <= threads));
    fresh_served(&s, false);
}

// ---- Frames ---------------------------------------------------------------------

fn peer(addr: SocketAddr, plain: bool) -> RawPeer {
    if plain {
        RawPeer::plain_handshaken(addr)
    } else {
        RawPeer::handshaken(addr)
    }
}

/// Declared lengths at and past every limit are refused from the prefix,
/// in both modes, without memory for them.
#[test]
fn huge_declared_lengths_are_refused_from_the_prefix() {
    let _one = ONE_AT_A_TIME.lock();
    for plain in [true, false] {
        let s = server(|c| c.insecure_plaintext = plain);
        let rss = rss_bytes();
        let max = Config::default().max_frame_size as u32;
        for (h, b) in [
            (10u32, u32::MAX),
            (u32::MAX, 10),
            (u32::MAX, u32::MAX),
            (0, 100),
            (10, max - 9),
            (65 * 1024, 10),
        ] {
            let mut p = peer(s.local_addr(), plain);
            let mut pre = h.to_be_bytes().to_vec();
            pre.extend_from_slice(&b.to_be_bytes());
            pre.extend_from_slice(b"{\"kind\":");
            p.send(&pre).unwrap();
            assert!(
                p.closed_within(PATIENCE),
                "h {h} b {b} kept (plain {plain})"
            );
        }
        assert!(wait_until(PATIENCE, || s.connection_count() == 0));
        let grew = rss_bytes().saturating_sub(rss);
        assert!(grew < 8 << 20, "RSS grew by {grew}");
        fresh_served(&s, plain);
    }
}

/// A large frame sent fast then trickled is closed by the slow-frame clock,
/// in plaintext mode (where the fast part is read straight into the body)
/// and encrypted; a fresh peer is served meanwhile.
#[test]
fn a_large_frame_sent_fast_then_trickled_is_closed() {
    let _one = ONE_AT_A_TIME.lock();
    for plain in [true, false] {
        let s = server(|c| {
            c.insecure_plaintext = plain;
            c.min_frame_rate = 20_000;
            c.frame_grace = Duration::from_millis(400);
        });
        s.add_handler("BIG", |_| Ok(())).unwrap();
        let addr = s.local_addr();
        let h =
            serde_json::to_vec(&json!({"kind": "message", "type": "BIG", "bin": true})).unwrap();
        let body = vec![3u8; 4 << 20];
        let frame = frame_bytes(&h, &body);
        let mut peers: Vec<RawPeer> = (0..8).map(|_| peer(addr, plain)).collect();
        for p in &mut peers {
            // 1.5 MiB at once.
            p.send(&frame[..3 << 19]).unwrap();
        }
        fresh_served(&s, plain);
        let began = Instant::now();
        let mut at = 3 << 19;
        let mut closed = vec![false; peers.len()];
        while closed.iter().any(|c| !c) && began.elapsed() < PATIENCE {
            for (i, p) in peers.iter_mut().enumerate() {
                if closed[i] {
                    continue;
                }
                // 100 bytes every 20 ms: 5 KB/s, under the minimum.
                if p.send(&frame[at..at + 100]).is_err()
                    || p.closed_within(Duration::from_millis(2))
                {
                    closed[i] = true;
                }
            }
            at += 100;
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "plain {plain}: trickling frames closed after {:?}",
            began.elapsed()
        );
        assert!(
            closed.iter().all(|c| *c),
            "a trickling frame is kept (plain {plain})"
        );
        assert!(began.elapsed() < Duration::from_secs(3));
        assert!(wait_until(PATIENCE, || warned(&["less than the minimum"])));
        fresh_served(&s, plain);
    }
}

/// Many plaintext connections each send most of a 16 MiB body at full
/// speed (read straight into the bodies' buffers): the memory they hold
/// stays within the budget, and a fresh peer is served.
#[test]
fn many_large_plaintext_bodies_keep_to_the_budget() {
    let _one = ONE_AT_A_TIME.lock();
    const BUDGET: usize = 16 << 20;
    let s = server(|c| {
        c.insecure_plaintext = true;
        c.memory_budget = BUDGET;
        c.min_frame_rate = 0;
        c.frame_grace = Duration::from_millis(700);
    });
    s.add_handler("BIG", |_| Ok(())).unwrap();
    let addr = s.local_addr();
    let h = serde_json::to_vec(&json!({"kind": "message", "type": "BIG", "bin": true})).unwrap();
    let body = vec![1u8; (16 << 20) - 100];
    let frame = Arc::new(frame_bytes(&h, &body));
    drop(body);
    let rss = rss_bytes();
    let peak = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..12)
        .map(|_| {
            let frame = Arc::clone(&frame);
            std::thread::spawn(move || {
                let mut p = RawPeer::plain_handshaken(addr);
                p.stream
                    .set_write_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut at = 0;
                while at < frame.len() - 10 {
                    let end = (at + (1 << 20)).min(frame.len() - 10);
                    if p.stream.write_all(&frame[at..end]).is_err() {
                        break;
                    }
                    at = end;
                }
                p
            })
        })
        .collect();
    let mut peers = Vec::new();
    for t in senders {
        while !t.is_finished() {
            peak.fetch_max(rss_bytes().saturating_sub(rss), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
        peers.push(t.join().unwrap());
    }
    fresh_served(&s, true);
    assert!(wait_until(PATIENCE, || warned(&["memory budget"])));
    peak.fetch_max(rss_bytes().saturating_sub(rss), Ordering::Relaxed);
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "12 plaintext bodies of 16 MiB, budget 16 MiB: RSS +{} KiB",
        peak / 1024
    );
    assert!(
        peak < BUDGET + 12 * (1 << 20) + (24 << 20),
        "RSS grew by {peak}"
    );
    fresh_served(&s, true);
}

/// Requests and large bodies pipelined on one connection, in one burst and
/// then cut at awkward places: every body arrives whole and in order, and
/// every request is answered, in both modes.
#[test]
fn requests_mixed_with_large_bodies_on_one_connection() {
    let _one = ONE_AT_A_TIME.lock();
    for plain in [true, false] {
        let s = server(|c| c.insecure_plaintext = plain);
        let got = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
        let g = Arc::clone(&got);
        s.add_handler("BIG", move |req| {
            let b = req.message().body().map(|b| b.to_vec()).unwrap_or_default();
            let sum = b.iter().enumerate().fold(0u64, |a, (i, x)| {
                a.wrapping_mul(31).wrapping_add(*x as u64 ^ i as u64)
            });
            g.lock().push((b.len(), sum));
            Ok(())
        })
        .unwrap();
        let sizes = [
            64 * 1024 - 1,
            64 * 1024,
            64 * 1024 + 1,
            16 * 1024,
            100_000,
            1 << 20,
            (1 << 20) + 7,
            3 << 20,
            200,
            128 * 1024 + 3,
        ];
        let mut want = Vec::new();
        let mut stream = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
            let sum = body.iter().enumerate().fold(0u64, |a, (i, x)| {
                a.wrapping_mul(31).wrapping_add(*x as u64 ^ i as u64)
            });
            want.push((n, sum));
            let h = serde_json::to_vec(&json!({"kind": "message", "type": "BIG", "bin": true}))
                .unwrap();
            stream.extend(frame_bytes(&h, &body));
            let r = serde_json::to_vec(
                &json!({"kind": "request", "type": "ADD", "data": i, "req": i + 1}),
            )
            .unwrap();
            stream.extend(frame_bytes(&r, &[]));
        }
        for cut in [usize::MAX, 17 * 1024 + 5, 64 * 1024 - 3, 300_001] {
            got.lock().clear();
            let mut p = peer(s.local_addr(), plain);
            let sender = {
                let mut w = p.stream.try_clone().unwrap();
                let stream = stream.clone();
                if plain {
                    Some(std::thread::spawn(move || {
                        for piece in stream.chunks(cut.min(stream.len())) {
                            w.write_all(piece).unwrap();
                            w.flush().unwrap();
                        }
                    }))
                } else {
                    None
                }
            };
            if !plain {
                for piece in stream.chunks(cut.min(stream.len())) {
                    p.send(piece).unwrap();
                }
            }
            // Pooled handlers answer in any order.
            let mut reqs: Vec<u64> = (0..sizes.len())
                .map(|_| {
                    let (a, _) = p.try_read_frame(PATIENCE).expect("an answer");
                    assert_eq!(a["data"], a["req"], "{a}");
                    a["req"].as_u64().unwrap()
                })
                .collect();
            reqs.sort();
            assert_eq!(reqs, (1..=sizes.len() as u64).collect::<Vec<_>>());
            if let Some(t) = sender {
                t.join().unwrap();
            }
            assert!(wait_until(PATIENCE, || got.lock().len() == sizes.len()));
            let mut seen = got.lock().clone();
            seen.sort();
            let mut want = want.clone();
            want.sort();
            assert_eq!(seen, want, "bodies (plain {plain}, cut {cut})");
        }
        fresh_served(&s, plain);
    }
}

/// Urgent (out-of-band) bytes in the middle of a large plaintext body,
/// which the kernel takes out of the stream and `FIONREAD` counts
/// around: the node neither hangs on the direct read nor keeps the
/// connection (its frames no longer line up), and serves a fresh peer.
#[test]
fn urgent_bytes_inside_a_large_plaintext_body() {
    let _one = ONE_AT_A_TIME.lock();
    let s = server(|c| {
        c.insecure_plaintext = true;
        c.min_frame_rate = 20_000;
        c.frame_grace = Duration::from_millis(400);
    });
    s.add_handler("BIG", |_| Ok(())).unwrap();
    let h = serde_json::to_vec(&json!({"kind": "message", "type": "BIG", "bin": true})).unwrap();
    let frame = frame_bytes(&h, &vec![2u8; 1 << 20]);
    let mut p = RawPeer::plain_handshaken(s.local_addr());
    let sock = socket2::SockRef::from(&p.stream);
    let mut at = 0;
    for piece in frame.chunks(100_000) {
        (&p.stream).write_all(piece).unwrap();
        sock.send_out_of_band(b"!").unwrap();
        at += piece.len();
    }
    assert_eq!(at, frame.len());
    // Whatever follows the body (the stream is off by the urgent bytes),
    // a request then: answered or the connection closed, soon either way.
    let r = serde_json::to_vec(&json!({"kind": "request", "type": "ADD", "data": 1, "req": 1}))
        .unwrap();
    let _ = p.stream.write_all(&frame_bytes(&r, &[]));
    fresh_served(&s, true);
    let t = Instant::now();
    let answered = p.try_read_frame(Duration::from_secs(3)).is_some();
    assert!(
        answered || p.closed_within(Duration::from_secs(3)),
        "the connection hangs"
    );
    eprintln!("urgent bytes: answered {answered} after {:?}", t.elapsed());
    fresh_served(&s, true);
}

/// A hostile plaintext peer that this node asks something answers with a
/// large body sent fast then trickled: the requester's own reads (which
/// take the body straight into its buffer) keep to the slow-frame clock
/// and the free allowance, and the request fails long before its timeout.
#[test]
fn a_trickled_large_answer_to_our_request_is_closed() {
    let _one = ONE_AT_A_TIME.lock();
    let s = node_with(|c| {
        c.insecure_plaintext = true;
        c.min_frame_rate = 20_000;
        c.frame_grace = Duration::from_millis(400);
        c.request_timeout = Duration::from_secs(8);
    });
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap();
    let hostile = std::thread::spawn(move || {
        let (mut t, _) = l.accept().unwrap();
        let hello = b"{}";
        let mut out = preamble_bytes(b"P2PR", 3, 2);
        out.extend_from_slice(&(hello.len() as u32).to_be_bytes());
        out.extend_from_slice(hello);
        t.write_all(&out).unwrap();
        // The node's preamble, hello and request.
        let head = read_exact_within(&mut t, 20).unwrap();
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
        read_exact_within(&mut t, len).unwrap();
        let pre = read_exact_within(&mut t, 8).unwrap();
        let h = u32::from_be_bytes(pre[..4].try_into().unwrap()) as usize;
        let b = u32::from_be_bytes(pre[4..].try_into().unwrap()) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(&read_exact_within(&mut t, h + b).unwrap()[..h]).unwrap();
        let answer = serde_json::to_vec(
            &json!({"kind": "response", "type": "R", "req": header["req"], "bin": true}),
        )
        .unwrap();
        let frame = frame_bytes(&answer, &vec![4u8; 8 << 20]);
        t.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = t.write_all(&frame[..2 << 20]);
        let began = Instant::now();
        let mut at = 2 << 20;
        while began.elapsed() < Duration::from_secs(8) {
            if t.write_all(&frame[at..at + 50]).is_err() {
                break;
            }
            at += 50;
            std::thread::sleep(Duration::from_millis(20));
        }
        began.elapsed()
    });
    let t = Instant::now();
    let r = s.request(at, p2prs::Message::new("Q", 1));
    let took = t.elapsed();
    eprintln!(
        "trickled answer: {:?} after {took:?}",
        r.as_ref().map(|_| ())
    );
    assert!(r.is_err(), "a body that never finished was taken");
    assert!(took < Duration::from_secs(3), "the request waited {took:?}");
    assert!(wait_until(PATIENCE, || warned(&[
        &at.to_string(),
        "less than the minimum"
    ])));
    let trickled = hostile.join().unwrap();
    assert!(
        trickled < Duration::from_secs(3),
        "the node read the trickle for {trickled:?}"
    );
    add_adder(&s);
    fresh_served(&s, true);
}

//! Writes the committed seed corpora, `fuzz/corpus/<target>/`: a handful of
//! valid inputs and edge cases per target. Run from `fuzz/` after changing it:
//! `cargo run --example gen_corpus`. Crash inputs found later are committed
//! next to these by hand (named `crash-*`), not written here.

use p2prs::wire::{write_frame, Frame, Kind};
use p2prs_fuzz::encode_input;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

fn frame(f: &Frame) -> Vec<u8> {
    let mut v = Vec::new();
    write_frame(&mut v, f, usize::MAX).unwrap();
    v
}

fn message(t: &str, data: Value) -> Frame {
    Frame::new(Kind::Message, t, data)
}

fn request(t: &str, req: u64, data: Value) -> Frame {
    let mut f = Frame::new(Kind::Request, t, data);
    f.req = Some(req);
    f
}

fn response(req: u64, data: Value) -> Frame {
    let mut f = Frame::new(Kind::Response, "p2prs.rv.ok", data);
    f.req = Some(req);
    f
}

/// A frame prefix and header written by hand: lengths need not match.
fn raw(h: u32, b: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = h.to_be_bytes().to_vec();
    v.extend(b.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let mut with_body = request("ADD", 42, json!({"n": 17}));
    with_body.body = Some(vec![0, 1, 2, 255]);
    let mut empty_body = message("BIN", Value::Null);
    empty_body.body = Some(Vec::new());
    let text = message("TEXT", json!("hello"));
    let odd_data = message(
        "p2prs.x",
        json!({"f": 1.5e300, "neg": -0.0, "big": u64::MAX, "s": "\u{1F600}\"\\\n", "a": [null, true, {}]}),
    );
    let error = Frame::error(42, "no_handler", "none");
    let mut bounced = request("FIND", 7, json!([1, 2, 3]));
    bounced.bounces = 3;
    let answer = {
        let mut f = Frame::new(Kind::Response, "ADD RESP", json!(18));
        f.req = Some(42);
        f
    };

    // frame_decoder: `sel | n | cuts | stream` (see fuzz/src/lib.rs).
    let t = "frame_decoder";
    write(t, "message-whole", &encode_input(2, &[], &frame(&text)));
    write(
        t,
        "request-body-byte-by-byte",
        &encode_input(2, &[0], &frame(&with_body)),
    );
    write(
        t,
        "three-frames-cut-3-8",
        &encode_input(
            3,
            &[2, 7],
            &cat(&[frame(&answer), frame(&error), frame(&bounced)]),
        ),
    );
    write(t, "empty-body", &encode_input(1, &[4], &frame(&empty_body)));
    write(
        t,
        "odd-data",
        &encode_input(1, &[0, 9, 30], &frame(&odd_data)),
    );
    write(
        t,
        "oversize-prefix-max-64",
        &encode_input(0, &[], &raw(50, 51, b"")),
    );
    write(
        t,
        "exactly-max-64",
        &encode_input(
            0,
            &[],
            &raw(44, 20, &{
                let mut v = br#"{"kind":"message","type":"X","bin":true}    "#.to_vec();
                v.extend([7u8; 20]);
                v
            }),
        ),
    );
    write(t, "empty-header", &encode_input(1, &[], &raw(0, 3, b"abc")));
    write(t, "bad-json", &encode_input(1, &[], &raw(5, 0, b"{nope")));
    write(
        t,
        "unknown-kind",
        &encode_input(1, &[], &raw(27, 0, br#"{"kind":"shout","type":"X"}"#)),
    );
    write(
        t,
        "request-without-req",
        &encode_input(1, &[], &raw(29, 0, br#"{"kind":"request","type":"X"}"#)),
    );
    let full = frame(&with_body);
    write(
        t,
        "truncated",
        &encode_input(2, &[5], &full[..full.len() - 1]),
    );

    // noise_handshake: the same layout; the stream is what a stranger
    // sends: a preamble (magic, version, flags, tie-break), then Noise
    // messages (u16 length + bytes). Bit 0 of the first byte: a keyed node.
    let t = "noise_handshake";
    let pre = |flags: u8, version: u16, nonce: u8| {
        let mut v = b"P2PR".to_vec();
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(&[flags, 0]);
        v.extend_from_slice(&[nonce; 8]);
        v
    };
    let msg = |len: usize| {
        let mut v = (len as u16).to_be_bytes().to_vec();
        v.extend((0..len).map(|i| i as u8));
        v
    };
    write(
        t,
        "preamble-initiator-then-msg1",
        &encode_input(0, &[], &cat(&[pre(4, 3, 0xff), msg(32)])),
    );
    // A leading dialer (flag bit 3): its message 1 follows its preamble,
    // whatever the tie-break; the node answers with message 2.
    write(
        t,
        "preamble-leading-then-msg1",
        &encode_input(0, &[], &cat(&[pre(4 | 8, 3, 0), msg(32)])),
    );
    write(
        t,
        "preamble-leading-keyed",
        &encode_input(1, &[], &cat(&[pre(5 | 8, 3, 0), vec![0, 48], vec![0; 48]])),
    );
    write(
        t,
        "preamble-responder-waits",
        &encode_input(0, &[], &pre(4, 3, 0)),
    );
    write(
        t,
        "preamble-keyed",
        &encode_input(1, &[], &cat(&[pre(5, 3, 0xff), vec![0, 48], vec![0; 48]])),
    );
    write(
        t,
        "preamble-plaintext",
        &encode_input(
            0,
            &[],
            &cat(&[pre(6, 3, 1), vec![0, 0, 0, 2], b"{}".to_vec()]),
        ),
    );
    write(
        t,
        "preamble-wrong-version",
        &encode_input(0, &[], &pre(4, 1, 1)),
    );
    write(t, "preamble-chacha", &encode_input(0, &[], &pre(0, 3, 1)));
    write(
        t,
        "not-p2prs-http",
        &encode_input(0, &[], b"GET / HTTP/1.1\r\n\r\n"),
    );
    write(
        t,
        "refusal-after-preamble",
        &encode_input(0, &[3], &cat(&[pre(4, 3, 0), vec![0, 0]])),
    );
    write(
        t,
        "byte-by-byte",
        &encode_input(0, &[0], &cat(&[pre(4, 3, 0xff), vec![0, 96], vec![0; 96]])),
    );

    // rendezvous: `header JSON [0x00 body]`.
    let t = "rendezvous";
    let header = |f: &Frame| {
        let bytes = frame(f);
        let h = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        bytes[8..8 + h].to_vec()
    };
    let ep = json!({"session": 4, "id": 9, "listen": "203.0.113.5:4000",
                    "public": "198.51.100.7:61000", "private": "192.168.1.2:4000"});
    let ep6 = json!({"session": 5, "listen": "[2001:db8::1]:4000",
                     "public": "[2001:db8::1]:4000", "private": "[fe80::1%2]:4000"});
    write(
        t,
        "register",
        &header(&request(
            "p2prs.rv.register",
            1,
            json!({"id": 9, "listen": "203.0.113.5:4000", "private": "192.168.1.2:4000"}),
        )),
    );
    write(
        t,
        "register-no-id-ipv6",
        &header(&request(
            "p2prs.rv.register",
            2,
            json!({"id": null, "listen": "[::1]:4000", "private": "[::1]:4000"}),
        )),
    );
    write(
        t,
        "register-bad-addr",
        &header(&request(
            "p2prs.rv.register",
            3,
            json!({"listen": "localhost:4000", "private": "1.2.3.4"}),
        )),
    );
    write(
        t,
        "connect-auto",
        &header(&request(
            "p2prs.rv.connect",
            4,
            json!({"addr": "203.0.113.5:4000", "id": 9, "from_id": 1, "want": "auto"}),
        )),
    );
    write(
        t,
        "connect-relay",
        &header(&request(
            "p2prs.rv.connect",
            5,
            json!({"addr": "[2001:db8::1]:4000", "want": "relay"}),
        )),
    );
    write(
        t,
        "connect-bad-want",
        &header(&request(
            "p2prs.rv.connect",
            6,
            json!({"addr": "1.2.3.4:5", "want": "Auto"}),
        )),
    );
    write(
        t,
        "registered",
        &header(&response(
            1,
            json!({"public": "198.51.100.7:61000", "session": 4}),
        )),
    );
    write(
        t,
        "connect-reply-punch",
        &header(&response(
            4,
            json!({"mode": "punch", "peer": ep, "token": 12}),
        )),
    );
    write(
        t,
        "connect-reply-unknown",
        &header(&response(5, json!({"mode": "unknown"}))),
    );
    write(
        t,
        "punch",
        &header(&message(
            "p2prs.rv.punch",
            json!({"peer": ep6, "token": 12}),
        )),
    );
    let mut relay_out = message("p2prs.rv.relay", json!({"to": 5}));
    relay_out.body = Some(frame(&text));
    let mut relay_out_bytes = header(&relay_out);
    relay_out_bytes.push(0);
    relay_out_bytes.extend(frame(&text));
    write(t, "relay-out", &relay_out_bytes);
    let mut relay_in = message("p2prs.rv.relay", json!({"from": ep, "close": false}));
    let inner = cat(&[frame(&with_body), frame(&answer)]);
    relay_in.body = Some(inner.clone());
    let mut relay_in_bytes = header(&relay_in);
    relay_in_bytes.push(0);
    relay_in_bytes.extend(&inner);
    write(t, "relay-in-two-frames", &relay_in_bytes);
    write(
        t,
        "relay-in-close",
        &header(&message(
            "p2prs.rv.relay",
            json!({"from": ep6, "close": true}),
        )),
    );
    write(
        t,
        "gone",
        &header(&message(
            "p2prs.rv.gone",
            json!({"session": 5, "reason": "the peer left"}),
        )),
    );
    write(
        t,
        "not-a-rendezvous-type",
        &header(&request("p2prs.rv.nothing", 7, json!({}))),
    );
}

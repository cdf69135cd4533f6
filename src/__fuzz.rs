//! Hooks for the fuzz targets in `fuzz/`, behind the `fuzzing` feature.
//!
//! Unstable: not part of the API, and may change or go at any release. It
//! exposes only what the targets cannot reach through the public API: the
//! rendezvous messages, which are crate-internal.

use crate::rendezvous::proto::*;
use crate::wire::{Frame, Kind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Parse `frame` the way a rendezvous server and a rendezvous client would
/// (by its message type, into the structures of `rendezvous::proto`).
/// Returns how many messages parsed.
///
/// Panics if a message that parsed does not survive re-encoding (encode,
/// parse again, encode again: the same JSON).
pub fn rendezvous_frame(frame: &Frame) -> usize {
    let mut parsed = 0;
    let data = &frame.data;
    match frame.kind {
        // The client parses the answers to its requests with `Message::data`.
        Kind::Response => {
            parsed += usize::from(reparse::<Registered>(data, false).is_some());
            parsed += usize::from(reparse::<ConnectReply>(data, false).is_some());
        }
        Kind::Error => {}
        Kind::Message | Kind::Request => match frame.msg_type.as_str() {
            // What the server parses.
            REGISTER => parsed += usize::from(reparse::<Register>(data, true).is_some()),
            CONNECT => parsed += usize::from(reparse::<ConnectReq>(data, true).is_some()),
            // What the client parses.
            PUNCH => parsed += usize::from(reparse::<PunchGo>(data, true).is_some()),
            GONE => parsed += usize::from(reparse::<Gone>(data, true).is_some()),
            // Both ways: a node sends `RelayOut`, the server forwards
            // `RelayIn`. The body is ciphertext for the relayed connection:
            // it is handed over undecoded.
            RELAY => {
                parsed += usize::from(reparse::<RelayOut>(data, true).is_some());
                parsed += usize::from(reparse::<RelayIn>(data, true).is_some());
            }
            _ => {}
        },
    }
    parsed
}

/// Parse `data` as a `T` (by value like `serde_json::from_value`, or by
/// reference like `Message::data`), then check that it re-encodes stably.
fn reparse<T: DeserializeOwned + Serialize>(data: &Value, by_value: bool) -> Option<T> {
    let parsed = if by_value {
        serde_json::from_value::<T>(data.clone()).ok()?
    } else {
        T::deserialize(data).ok()?
    };
    let once = serde_json::to_value(&parsed).expect("a parsed message encodes");
    let again: T = serde_json::from_value(once.clone()).expect("a re-encoded message parses");
    let twice = serde_json::to_value(&again).expect("a parsed message encodes");
    assert_eq!(once, twice, "a message changed on re-encoding");
    Some(parsed)
}

/// Feed `chunks` to a node's side of the secure handshake, as the bytes a
/// peer sends (a preamble, then length-prefixed Noise messages): it must
/// never panic, never queue more than one preamble and one Noise message to
/// send, and, once failed, take no more input.
///
/// Returns whether the handshake failed (it can only complete with a peer
/// that holds a key, which random bytes do not).
pub fn noise_handshake(chunks: &[&[u8]], keyed: bool) -> bool {
    use crate::identity::{Identity, NetworkKey};
    use crate::noise::{Cipher, Handshaker, Local};
    use std::sync::{Arc, OnceLock};
    static LOCALS: OnceLock<[Arc<Local>; 2]> = OnceLock::new();
    let locals = LOCALS.get_or_init(|| {
        let mk = |key: Option<NetworkKey>| {
            let id = Identity::from_secret_bytes([7; 32]);
            Arc::new(Local::new(id, key, false, Cipher::default()).expect("local"))
        };
        [mk(None), mk(Some(NetworkKey::new("fuzz")))]
    });
    let local = Arc::clone(&locals[usize::from(keyed)]);
    let hello = crate::wire::Hello {
        listen: Some("127.0.0.1:4444".into()),
        id: Some(3),
    };
    let mut hs = Handshaker::new(local, &hello, [0x80; 8]);
    let mut failed = false;
    for c in chunks {
        let out = hs.take_output();
        assert!(
            out.len() <= 16 + 2 + 65_535,
            "one handshake step queued {} bytes",
            out.len()
        );
        if hs.push(c).is_err() || hs.settle().is_err() {
            failed = true;
            // A refusal is at most two bytes more.
            assert!(hs.take_output().len() <= 2 + 16 + 2 + 65_535);
            break;
        }
    }
    failed
}

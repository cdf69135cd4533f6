//! The handshake: `wire::Decoder::next_hello` from the first byte (asked
//! before any byte arrives, as the transport does), then frames, on a stream
//! cut where the input says. Same checks as `frame_decoder`, plus: a hello
//! never takes more than the largest hello, re-encodes to itself, and a bad
//! magic is reported with the bytes that were sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p2prs_fuzz::decode_both_ways(data, true);
});

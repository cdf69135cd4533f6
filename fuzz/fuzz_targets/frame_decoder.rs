//! The frame decoder, `wire::Decoder::next_frame`, on a stream that arrives
//! in pieces cut where the input says (see the layout in `src/lib.rs`): no
//! panic, no frame over the maximum size, every frame re-encodes to itself,
//! and the result does not depend on where the stream was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p2prs_fuzz::decode_both_ways(data);
});

//! The secure handshake (`noise::Handshaker`): the bytes a stranger sends
//! after connecting, cut into the pieces the input chooses (see the layout
//! in `src/lib.rs`), against a node with and without a network key. No
//! panic, bounded output, and no success without the peer's keys.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = p2prs_fuzz::Input::parse(data);
    let keyed = data.first().is_some_and(|b| b & 1 == 1);
    let chunks = input.chunks();
    let failed = p2prs::__fuzz::noise_handshake(&chunks, keyed);
    let _ = failed;
});

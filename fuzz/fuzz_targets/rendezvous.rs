//! The rendezvous messages (`src/rendezvous/proto.rs`), parsed as the
//! rendezvous server and client parse them, through the real frame decoder.
//!
//! Input: `header JSON [0x00 body]`. The target adds the frame prefix (so
//! mutations of the JSON are not lost to a wrong length), decodes the frame
//! and parses it by its type: register, connect, punch, relay (both ways,
//! its body is ciphertext, handed over undecoded), gone, and the answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2prs::wire::Decoder;

/// The decoder's maximum frame size, as for the relayed frames: 1 MiB.
const MAX_FRAME: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // JSON holds no raw NUL byte, so the first one ends the header.
    let (header, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut d = Decoder::new(MAX_FRAME);
    d.push(&(header.len() as u32).to_be_bytes());
    d.push(&(body.len() as u32).to_be_bytes());
    d.push(header);
    d.push(body);
    if let Ok(Some(frame)) = d.next_frame() {
        p2prs_fuzz::check_frame(
            &frame,
            p2prs_fuzz::FRAME_PREFIX + header.len() + body.len(),
            MAX_FRAME,
        );
        p2prs::__fuzz::rendezvous_frame(&frame);
    }
});

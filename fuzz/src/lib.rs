//! What the fuzz targets share: how an input picks the decoder's maximum
//! frame size and the points where the byte stream is cut, and the checks
//! every decoded frame must pass.
//!
//! A stream input is laid out as
//! `size selector (1 byte) | n (1 byte) | n cut lengths (1 byte each) | stream`:
//! the decoder gets the stream in pieces of the cut lengths (each plus one,
//! cycled), as a socket would deliver it. Missing bytes read as zero.

pub use p2prs::wire::FRAME_PREFIX;
use p2prs::wire::{write_frame, Decoder, Frame, Kind, WireError};
use serde_json::Value;

/// The maximum frame sizes a decoder is tried with; the last is p2prs's default.
pub const MAX_FRAMES: [usize; 4] = [64, 4096, 1 << 20, 16 << 20];

/// A fuzz input split into its parts.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The decoder's maximum frame size.
    pub max_frame: usize,
    cuts: &'a [u8],
    /// The bytes the peer sends.
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    /// Read an input laid out as the module documentation says.
    pub fn parse(data: &'a [u8]) -> Input<'a> {
        let sel = data.first().copied().unwrap_or(0);
        let n = data.get(1).copied().unwrap_or(0) as usize % 16;
        let rest = data.get(2..).unwrap_or(&[]);
        let n = n.min(rest.len());
        Input {
            max_frame: MAX_FRAMES[sel as usize % MAX_FRAMES.len()],
            cuts: &rest[..n],
            stream: &rest[n..],
        }
    }

    /// The stream in the pieces the input chose (one piece if it chose none).
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        if self.cuts.is_empty() {
            return vec![self.stream];
        }
        let mut out = Vec::new();
        let mut rest = self.stream;
        for &c in self.cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at((c as usize + 1).min(rest.len()));
            out.push(a);
            rest = b;
        }
        out
    }
}

/// Lay out an input (for seed corpora): `sel` picks the maximum frame size
/// from [`MAX_FRAMES`], `cuts` are the piece lengths minus one.
pub fn encode_input(sel: u8, cuts: &[u8], stream: &[u8]) -> Vec<u8> {
    assert!(cuts.len() < 16);
    let mut v = vec![sel, cuts.len() as u8];
    v.extend_from_slice(cuts);
    v.extend_from_slice(stream);
    v
}

/// Everything a decoder made of a stream: what a connection would see.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The frames decoded, in order.
    pub frames: Vec<Frame>,
    /// The error that would close the connection, if any.
    pub error: Option<WireError>,
    /// Bytes left undecoded at the end (when no error).
    pub buffered: usize,
}

/// Feed `chunks` to a decoder of `max_frame` bytes as a connection does
/// (after the handshake): frames after each piece, stopping at the first
/// error. Every frame is checked with [`check_frame`].
pub fn decode(chunks: &[&[u8]], max_frame: usize) -> Outcome {
    let mut d = Decoder::new(max_frame);
    let mut out = Outcome {
        frames: Vec::new(),
        error: None,
        buffered: 0,
    };
    let mut pieces = chunks.iter();
    loop {
        if let Err(e) = drain(&mut d, max_frame, &mut out.frames) {
            out.error = Some(e);
            break;
        }
        match pieces.next() {
            Some(p) => d.push(p),
            None => break,
        }
    }
    assert_eq!(d.finish().is_ok(), d.buffered() == 0);
    // After an error the connection closes: what was left does not matter.
    out.buffered = if out.error.is_none() { d.buffered() } else { 0 };
    out
}

/// Decode frames until none is complete; the first error ends it.
fn drain(d: &mut Decoder, max_frame: usize, frames: &mut Vec<Frame>) -> Result<(), WireError> {
    loop {
        let before = d.buffered();
        match d.next_frame() {
            Ok(Some(f)) => {
                check_frame(&f, before - d.buffered(), max_frame);
                frames.push(f);
            }
            Ok(None) => {
                assert_eq!(d.buffered(), before, "a frame in waiting took bytes");
                assert!(d.wanted() > 0, "a frame in waiting wants no more bytes");
                return Ok(());
            }
            Err(e) => {
                if let WireError::FrameTooLarge { size, max } = e {
                    assert_eq!(max, max_frame as u64);
                    assert!(size > max, "refused a frame of {size} <= {max} bytes");
                }
                assert_eq!(d.buffered(), before, "a refused frame took bytes");
                return Err(e);
            }
        }
    }
}

/// A decoded frame took at most the maximum size (plus the prefix), has the
/// fields its kind requires, and decodes to the same frame once re-encoded.
pub fn check_frame(f: &Frame, consumed: usize, max_frame: usize) {
    assert!(consumed > FRAME_PREFIX, "a frame of {consumed} bytes");
    let size = consumed - FRAME_PREFIX;
    assert!(size <= max_frame, "decoded a frame of {size} > {max_frame}");
    assert!(f.body.as_ref().map_or(0, Vec::len) < size);
    match f.kind {
        Kind::Request | Kind::Response | Kind::Error => assert!(f.req.is_some()),
        Kind::Message => {}
    }
    if f.kind == Kind::Error {
        assert!(f.error.is_some());
    }
    if matches!(f.kind, Kind::Message | Kind::Request) {
        assert!(!f.msg_type.is_empty());
    }
    // Re-encoded (as a node forwarding it would), it decodes to itself.
    let mut bytes = Vec::new();
    write_frame(&mut bytes, f, usize::MAX).expect("a decoded frame re-encodes");
    let mut d = Decoder::new(usize::MAX);
    d.push(&bytes);
    let g = d
        .next_frame()
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(d.buffered(), 0);
    let (mut f0, mut g0) = (f.clone(), g.clone());
    f0.data = Value::Null;
    g0.data = Value::Null;
    assert_eq!(f0, g0, "frame round trip");
    assert!(
        same_json(&f.data, &g.data),
        "data round trip: {:?} vs {:?}",
        f.data,
        g.data
    );
}

/// Equal JSON, but floats only to within rounding: serde_json parses floats
/// to best effort unless its `float_roundtrip` feature is on.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Decode `input` in one piece and in the pieces it chose: the same frames
/// and error either way.
pub fn decode_both_ways(data: &[u8]) -> Outcome {
    let input = Input::parse(data);
    let whole = decode(&[input.stream], input.max_frame);
    let cut = decode(&input.chunks(), input.max_frame);
    assert_eq!(whole, cut, "decoding depends on how the bytes arrive");
    whole
}

//! The wire format: handshake and length-prefixed frames.
//!
//! Pure code over byte buffers: no sockets. See `docs/protocol.md`.
//!
//! A connection starts with the secure handshake (`crate::noise`), which
//! carries each side's [`Hello`]. Then frames follow, inside the encrypted
//! records:
//! `header length (u32 BE) | body length (u32 BE) | header JSON | body bytes`.
//! Both lengths are checked against the maximum frame size before anything
//! is allocated.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::io::{self, Write};

/// The four bytes every p2prs connection starts with.
pub const MAGIC: [u8; 4] = *b"P2PR";
/// Bytes in a frame prefix (two u32 lengths).
pub const FRAME_PREFIX: usize = 8;

/// Why bytes from a peer were refused. Holds no I/O error, so it compares.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A frame (or hello) is larger than allowed.
    FrameTooLarge {
        /// Announced size in bytes.
        size: u64,
        /// Maximum allowed.
        max: u64,
    },
    /// The JSON header (or hello) is not valid JSON of the documented shape.
    BadHeader(String),
    /// The frame's `kind` is not one this version knows.
    UnknownKind(String),
    /// A field the frame kind requires is missing.
    MissingField(&'static str),
    /// The stream ended in the middle of a frame.
    Truncated,
    /// A frame's JSON header is larger than the header limit (large data
    /// belongs in the byte body). Refused from the frame's 8-byte prefix.
    HeaderTooLarge {
        /// Announced header size in bytes.
        size: u64,
        /// Maximum allowed.
        max: u64,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::FrameTooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the maximum of {max}")
            }
            WireError::BadHeader(e) => write!(f, "malformed header: {e}"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind {k:?}"),
            WireError::MissingField(n) => write!(f, "frame lacks the field {n:?}"),
            WireError::Truncated => write!(f, "connection ended in the middle of a frame"),
            WireError::HeaderTooLarge { size, max } => write!(
                f,
                "frame header of {size} bytes exceeds the header maximum of {max} \
                 (large data belongs in the body)"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// What a node says of itself when a connection opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hello {
    /// The address the sender listens on, if it accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The sender's node ID, once it has joined a ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// The four kinds of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A one-way message.
    Message,
    /// A request that expects a response or an error with the same `req`.
    Request,
    /// The answer to a request.
    Response,
    /// A request failed; `error` says why.
    Error,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Request => "request",
            Kind::Response => "response",
            Kind::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "message" => Kind::Message,
            "request" => Kind::Request,
            "response" => Kind::Response,
            "error" => Kind::Error,
            _ => return None,
        })
    }
}

/// Why a request failed, as carried in an error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `no_handler`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// The JSON header of a frame, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RawHeader {
    kind: String,
    #[serde(rename = "type", default)]
    msg_type: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    req: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    bin: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    bounces: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// What kind of frame this is.
    pub kind: Kind,
    /// The message type, e.g. `TEXT`.
    pub msg_type: String,
    /// JSON data (null when absent).
    pub data: Value,
    /// Request ID, for requests, responses and errors.
    pub req: Option<u64>,
    /// Why the request failed, for error frames.
    pub error: Option<ErrorBody>,
    /// The raw binary body, when the sender attached one.
    pub body: Option<Vec<u8>>,
    /// For a request: how many times it has been bounced on the way here.
    pub bounces: u32,
}

impl Frame {
    /// A frame with no request ID, error, or body.
    pub fn new(kind: Kind, msg_type: impl Into<String>, data: Value) -> Frame {
        Frame {
            kind,
            msg_type: msg_type.into(),
            data,
            req: None,
            error: None,
            body: None,
            bounces: 0,
        }
    }

    /// An error frame answering request `req`.
    pub fn error(req: u64, code: &str, message: impl Into<String>) -> Frame {
        Frame {
            kind: Kind::Error,
            msg_type: String::new(),
            data: Value::Null,
            req: Some(req),
            error: Some(ErrorBody {
                code: code.to_string(),
                message: message.into(),
            }),
            body: None,
            bounces: 0,
        }
    }
}

/// Write one frame to `w`, refusing it if it would exceed `max` bytes.
/// The body is written straight from the caller's slice, without a copy.
pub fn write_frame(w: &mut impl Write, frame: &Frame, max: usize) -> io::Result<()> {
    Encoded::new(frame)?.write(w, max)
}

/// The encoded size of a frame: what [`write_frame`] compares with the maximum.
pub fn encoded_size(frame: &Frame) -> io::Result<u64> {
    Ok(Encoded::new(frame)?.size())
}

/// A frame with its header encoded, once: its size can decide how it is
/// written, before [`Encoded::write`] writes it (with no second encoding).
#[derive(Debug)]
pub struct Encoded<'a> {
    header: Vec<u8>,
    body: &'a [u8],
}

impl<'a> Encoded<'a> {
    /// Encode `frame`'s header.
    pub fn new(frame: &'a Frame) -> io::Result<Self> {
        Ok(Encoded {
            header: encode_header(frame)?,
            body: frame.body.as_deref().unwrap_or(&[]),
        })
    }

    /// The encoded size: header and body, without the prefix (what
    /// [`Encoded::write`] compares with the maximum).
    pub fn size(&self) -> u64 {
        self.header.len() as u64 + self.body.len() as u64
    }

    /// Write the frame (prefix, header, body); an `InvalidInput` error,
    /// with nothing written, when it is larger than `max`.
    pub fn write(&self, w: &mut impl Write, max: usize) -> io::Result<()> {
        let size = self.size();
        if size > max as u64 || self.body.len() > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                WireError::FrameTooLarge {
                    size,
                    max: max as u64,
                },
            ));
        }
        let mut prefix = [0u8; FRAME_PREFIX];
        prefix[..4].copy_from_slice(&(self.header.len() as u32).to_be_bytes());
        prefix[4..].copy_from_slice(&(self.body.len() as u32).to_be_bytes());
        w.write_all(&prefix)?;
        w.write_all(&self.header)?;
        w.write_all(self.body)
    }
}

/// The header as written: borrows from the frame, copies nothing.
#[derive(Serialize)]
struct RawHeaderRef<'a> {
    kind: &'a str,
    #[serde(rename = "type")]
    msg_type: &'a str,
    #[serde(skip_serializing_if = "Value::is_null")]
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    req: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorBody>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    bin: bool,
    #[serde(skip_serializing_if = "is_zero")]
    bounces: u32,
}

fn encode_header(frame: &Frame) -> io::Result<Vec<u8>> {
    let raw = RawHeaderRef {
        kind: frame.kind.as_str(),
        msg_type: &frame.msg_type,
        data: &frame.data,
        req: frame.req,
        error: frame.error.as_ref(),
        bin: frame.body.is_some(),
        bounces: frame.bounces,
    };
    serde_json::to_vec(&raw).map_err(io::Error::other)
}

fn decode_header(bytes: &[u8], body: Option<Vec<u8>>) -> Result<Frame, WireError> {
    let raw: RawHeader =
        serde_json::from_slice(bytes).map_err(|e| WireError::BadHeader(e.to_string()))?;
    let kind = Kind::parse(&raw.kind).ok_or_else(|| WireError::UnknownKind(raw.kind.clone()))?;
    match kind {
        Kind::Request | Kind::Response | Kind::Error if raw.req.is_none() => {
            return Err(WireError::MissingField("req"));
        }
        Kind::Error if raw.error.is_none() => return Err(WireError::MissingField("error")),
        Kind::Message | Kind::Request if raw.msg_type.is_empty() => {
            return Err(WireError::MissingField("type"));
        }
        _ => {}
    }
    let body = if raw.bin {
        Some(body.unwrap_or_default())
    } else {
        None
    };
    Ok(Frame {
        kind,
        msg_type: raw.msg_type,
        data: raw.data,
        req: raw.req,
        error: raw.error,
        body,
        bounces: raw.bounces,
    })
}

/// Turns a stream of bytes, fed in pieces of any size, into frames.
///
/// Memory: the buffer grows only as bytes arrive (never to a frame's
/// declared size ahead of its bytes), never past the end of the frame under
/// way, and is given back once a large frame has been decoded. So holding a
/// partial frame costs about the bytes received, and decoding one costs
/// at most about twice its size (the buffer and the decoded body; a large
/// body is the buffer itself, see below).
///
/// A large body is received in place: once a frame's prefix and header are
/// in and a body of [`LARGE_BODY`] bytes or more is still coming, the
/// prefix and header move aside and the buffer holds the body alone from
/// its first byte, so that the finished body is handed over in that buffer
/// with no copy.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
    max_header: usize,
    /// The prefix and header of the frame under way while `buf` holds its
    /// body alone (from index 0); empty otherwise.
    head: Vec<u8>,
}

/// The most a decoder's buffer grows by at once (plus the bytes pushed).
pub const MAX_GROWTH: usize = 1024 * 1024;

/// A body this large that ends the decoder's buffer is handed over in that
/// buffer rather than copied out of it.
const LARGE_BODY: usize = 64 * 1024;

/// Buffers larger than this are freed, not kept, once empty.
const KEEP_CAPACITY: usize = 256 * 1024;

impl Decoder {
    /// A decoder that refuses frames over `max_frame` bytes (and headers
    /// over `max_frame` too: see [`Decoder::with_header_limit`]).
    #[cfg_attr(
        not(feature = "unstable-testing"),
        allow(
            dead_code,
            reason = "the transport sets its limits; the fuzz targets use this"
        )
    )]
    pub fn new(max_frame: usize) -> Decoder {
        Decoder::with_header_limit(max_frame, max_frame)
    }

    /// A decoder that refuses frames over `max_frame` bytes and JSON headers
    /// over `max_header` bytes, both from the frame's prefix, before a byte
    /// of the frame is buffered.
    pub fn with_header_limit(max_frame: usize, max_header: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            max: max_frame,
            max_header,
            head: Vec::new(),
        }
    }

    /// Append bytes read from the connection.
    #[cfg_attr(
        not(feature = "unstable-testing"),
        allow(
            dead_code,
            reason = "the transport uses push_with; the tests and fuzz targets use this"
        )
    )]
    pub fn push(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    /// Append what `fill` appends to the buffer it is given, at most `n`
    /// bytes: bytes produced straight into the decoder (decrypted records,
    /// say) with no copy in between. Room is made as [`Decoder::push`]
    /// makes it for `n` bytes.
    pub fn push_with<R>(&mut self, n: usize, fill: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        self.make_room(n);
        fill(&mut self.buf)
    }

    /// Make room for `n` more bytes.
    fn make_room(&mut self, n: usize) {
        self.set_body_aside();
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            // Double up to 1 MiB, then grow by 1 MiB (a large buffer grows
            // in place), never past the end of the frame under way: a frame
            // that has not arrived is not allocated for.
            let cap = self.buf.capacity();
            let mut target = (cap + cap.min(MAX_GROWTH)).max(need);
            if let Some(end) = self.frame_end() {
                target = target.min(end.max(need));
            }
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    /// The frame under way has its prefix and header in, passes the
    /// checks of its prefix, and a large body of which bytes are still to
    /// come: move the prefix and header aside, so that the buffer holds the
    /// body alone and is handed over as it is (see [`Decoder`]). The bytes
    /// moved are those of the body come so far: one push's worth.
    fn set_body_aside(&mut self) {
        if !self.head.is_empty() {
            return;
        }
        let pending = &self.buf[self.start..];
        if pending.len() < FRAME_PREFIX {
            return;
        }
        let (h, b) = prefix_lengths(pending);
        let fits = h > 0 && h <= self.max_header && h as u64 + b as u64 <= self.max as u64;
        if !fits || b < LARGE_BODY || pending.len() < FRAME_PREFIX + h {
            return;
        }
        if pending.len() >= FRAME_PREFIX + h + b {
            return;
        }
        self.head = pending[..FRAME_PREFIX + h].to_vec();
        self.buf.drain(..self.start + FRAME_PREFIX + h);
        self.start = 0;
    }

    /// The body length of the frame set aside in `head`, if any.
    fn body_aside(&self) -> Option<usize> {
        (!self.head.is_empty()).then(|| prefix_lengths(&self.head).1)
    }

    /// Where in `buf` the frame under way ends, once its prefix is here.
    fn frame_end(&self) -> Option<usize> {
        if let Some(b) = self.body_aside() {
            return Some(b);
        }
        let pending = &self.buf[self.start..];
        (pending.len() >= FRAME_PREFIX).then(|| {
            let (h, b) = prefix_lengths(pending);
            self.start + FRAME_PREFIX + h.min(self.max) + b.min(self.max)
        })
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start + self.head.len()
    }

    /// Bytes of memory the decoder holds now (its buffer's capacity).
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.head.capacity()
    }

    /// How many more bytes the frame under way needs, at least; 0 if unknown.
    /// Lets a reader size its next read for large bodies, or tell that
    /// more of a large one is to come.
    pub fn wanted(&self) -> usize {
        if let Some(b) = self.body_aside() {
            return b.saturating_sub(self.buf.len());
        }
        let pending = &self.buf[self.start..];
        if pending.len() < FRAME_PREFIX {
            return FRAME_PREFIX - pending.len();
        }
        let (h, b) = prefix_lengths(pending);
        (FRAME_PREFIX + h + b).saturating_sub(pending.len())
    }

    /// Bytes still to come of a large body under way whose prefix and
    /// header are in and pass the prefix's checks (the body is then, or
    /// at the next push, in a buffer of its own: see [`Decoder`]); `None`
    /// for anything else. Bytes read for it may go straight into that
    /// buffer with [`Decoder::push_with`], no copy in between.
    pub fn body_left(&self) -> Option<usize> {
        if let Some(b) = self.body_aside() {
            return Some(b.saturating_sub(self.buf.len()));
        }
        let pending = &self.buf[self.start..];
        if pending.len() < FRAME_PREFIX {
            return None;
        }
        let (h, b) = prefix_lengths(pending);
        let fits = h > 0 && h <= self.max_header && h as u64 + b as u64 <= self.max as u64;
        if !fits || b < LARGE_BODY || pending.len() < FRAME_PREFIX + h {
            return None;
        }
        Some((FRAME_PREFIX + h + b).saturating_sub(pending.len()))
    }

    /// Decode the next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(b) = self.body_aside() {
            return self.next_aside(b);
        }
        let pending = &self.buf[self.start..];
        if pending.len() < FRAME_PREFIX {
            return Ok(None);
        }
        let (h, b) = prefix_lengths(pending);
        let size = h as u64 + b as u64;
        if size > self.max as u64 {
            return Err(WireError::FrameTooLarge {
                size,
                max: self.max as u64,
            });
        }
        if h > self.max_header {
            return Err(WireError::HeaderTooLarge {
                size: h as u64,
                max: self.max_header as u64,
            });
        }
        if h == 0 {
            return Err(WireError::BadHeader("empty header".into()));
        }
        if pending.len() < FRAME_PREFIX + h + b {
            return Ok(None);
        }
        let end = self.start + FRAME_PREFIX + h + b;
        if b >= LARGE_BODY && end == self.buf.len() {
            // A large body that ends the buffer becomes the body itself:
            // no fresh allocation, only the body moved to the front.
            let header = &self.buf[self.start + FRAME_PREFIX..self.start + FRAME_PREFIX + h];
            let frame = decode_header(header, Some(Vec::new()))?;
            let mut body = std::mem::take(&mut self.buf);
            body.drain(..end - b);
            self.start = 0;
            return Ok(Some(Frame {
                body: frame.body.map(|_| body),
                ..frame
            }));
        }
        let header = &pending[FRAME_PREFIX..FRAME_PREFIX + h];
        let body = (b > 0).then(|| pending[FRAME_PREFIX + h..FRAME_PREFIX + h + b].to_vec());
        let frame = decode_header(header, body)?;
        self.start += FRAME_PREFIX + h + b;
        if self.start == self.buf.len() && self.buf.capacity() > KEEP_CAPACITY {
            // Give a large frame's buffer back at once.
            self.buf = Vec::new();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// The frame whose prefix and header are set aside, once its body of
    /// `b` bytes is in: the buffer is the body; bytes past it (the next
    /// frames, at most what one push brought) move to a new buffer.
    fn next_aside(&mut self, b: usize) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < b {
            return Ok(None);
        }
        // A refused header takes no bytes, as elsewhere.
        let frame = decode_header(&self.head[FRAME_PREFIX..], Some(Vec::new()))?;
        self.head = Vec::new();
        let rest = self.buf.split_off(b);
        let body = std::mem::replace(&mut self.buf, rest);
        self.start = 0;
        Ok(Some(Frame {
            body: frame.body.map(|_| body),
            ..frame
        }))
    }

    /// Called when the stream ends: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buffered() == 0 {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }
}

fn prefix_lengths(p: &[u8]) -> (usize, usize) {
    let h = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
    let b = u32::from_be_bytes([p[4], p[5], p[6], p[7]]) as usize;
    (h, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Frame {
        let mut f = Frame::new(Kind::Request, "ADD", json!({"n": 17}));
        f.req = Some(42);
        f.body = Some(vec![0, 1, 2, 255]);
        f
    }

    fn encode(f: &Frame) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, f, 1 << 20).unwrap();
        v
    }

    #[test]
    fn large_bodies_come_out_whole_in_every_position() {
        let big: Vec<u8> = (0..LARGE_BODY * 3 + 5).map(|i| (i % 251) as u8).collect();
        let mut f = Frame::new(Kind::Message, "BIG", json!(1));
        f.body = Some(big.clone());
        let small = sample();
        // Alone (the body ends the buffer), then followed by another frame.
        for tail in [false, true] {
            let mut bytes = encode(&f);
            if tail {
                bytes.extend(encode(&small));
            }
            for step in [1000, 32 * 1024, bytes.len()] {
                let mut d = Decoder::new(1 << 22);
                let mut got = Vec::new();
                for chunk in bytes.chunks(step) {
                    d.push_with(chunk.len(), |buf| buf.extend_from_slice(chunk));
                    while let Some(frame) = d.next_frame().unwrap() {
                        got.push(frame);
                    }
                }
                assert_eq!(got.len(), 1 + usize::from(tail), "step {step}");
                assert_eq!(got[0].body.as_deref(), Some(&big[..]), "step {step}");
                if tail {
                    assert_eq!(got[1].body, small.body);
                }
                assert_eq!(d.buffered(), 0);
            }
        }
    }

    #[test]
    fn a_large_body_is_received_in_place() {
        let big: Vec<u8> = (0..LARGE_BODY * 4).map(|i| (i % 253) as u8).collect();
        let mut f = Frame::new(Kind::Message, "BIG", json!({"x": 1}));
        f.body = Some(big.clone());
        let bytes = encode(&f);
        let mut d = Decoder::new(1 << 22);
        let mut at = 0usize;
        for step in [40, 5000, 70_000, usize::MAX] {
            let end = bytes.len().min(at.saturating_add(step));
            d.push(&bytes[at..end]);
            at = end;
            if at < bytes.len() {
                assert_eq!(d.next_frame(), Ok(None));
                assert_eq!(d.buffered(), at);
                assert_eq!(d.buffered() + d.wanted(), bytes.len());
                assert!(d.held() <= bytes.len() + 64, "held {}", d.held());
            }
        }
        let got = d.next_frame().unwrap().unwrap();
        assert_eq!(got, f);
        assert_eq!((d.buffered(), d.held()), (0, 0));
        // A bad header of a large body is refused once the frame is in, as
        // any other; the same frame cut short is truncated.
        let mut bad = bytes.clone();
        bad[FRAME_PREFIX] = b'[';
        let mut d = Decoder::new(1 << 22);
        for c in bad.chunks(30_000) {
            d.push(c);
        }
        assert!(matches!(d.next_frame(), Err(WireError::BadHeader(_))));
        assert_eq!(d.buffered(), bad.len(), "a refused frame took bytes");
        let mut d = Decoder::new(1 << 22);
        d.push(&bytes[..100]);
        d.push(&bytes[100..bytes.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(WireError::Truncated));
    }

    /// `body_left` names the rest of a large body once its prefix and
    /// header are in, and bytes appended with `push_with` in pieces of at
    /// most that finish it, in place: the frame comes out whole.
    #[test]
    fn the_rest_of_a_large_body_goes_straight_into_it() {
        let big: Vec<u8> = (0..LARGE_BODY * 3 + 5).map(|i| (i % 251) as u8).collect();
        let mut f = Frame::new(Kind::Message, "BIG", json!({"x": 1}));
        f.body = Some(big.clone());
        let bytes = encode(&f);
        let head = bytes.len() - big.len();
        let mut d = Decoder::new(1 << 22);
        assert_eq!(d.body_left(), None);
        d.push(&bytes[..head - 1]);
        assert_eq!(d.body_left(), None, "the header is not all in");
        d.push(&bytes[head - 1..head + 10]);
        assert_eq!(d.body_left(), Some(big.len() - 10));
        let mut at = head + 10;
        while let Some(left) = d.body_left().filter(|&l| l > 0) {
            let n = left.min(50_000);
            d.push_with(n, |buf| buf.extend_from_slice(&bytes[at..at + n]));
            at += n;
            assert!(d.held() <= bytes.len() + 64, "held {}", d.held());
        }
        assert_eq!(at, bytes.len());
        assert_eq!(d.next_frame().unwrap().unwrap(), f);
        assert_eq!(d.body_left(), None);
        // Small bodies, and frames the prefix refuses, are not for it.
        let mut small = Frame::new(Kind::Message, "S", json!(1));
        small.body = Some(vec![1; LARGE_BODY - 1]);
        let mut d = Decoder::new(1 << 22);
        d.push(&encode(&small)[..100]);
        assert_eq!(d.body_left(), None);
        let mut d = Decoder::new(LARGE_BODY);
        d.push(&bytes[..head + 10]);
        assert_eq!(d.body_left(), None, "a frame over the limit");
    }

    #[test]
    fn round_trip_cut_at_every_byte() {
        let mut bytes = encode(&sample());
        bytes.extend(encode(&Frame::error(42, "no_handler", "none")));
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new(1 << 20);
            d.push(&bytes[..cut]);
            let mut frames = Vec::new();
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            d.push(&bytes[cut..]);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[0], sample());
            assert_eq!(frames[1].error.as_ref().unwrap().code, "no_handler");
            assert!(d.finish().is_ok());
        }
    }

    #[test]
    fn oversize_refused_before_body_arrives() {
        let mut d = Decoder::new(100);
        d.push(&50u32.to_be_bytes());
        d.push(&51u32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(WireError::FrameTooLarge {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn a_large_header_is_refused_from_the_prefix() {
        let mut d = Decoder::with_header_limit(1 << 20, 100);
        d.push(&101u32.to_be_bytes());
        d.push(&0u32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(WireError::HeaderTooLarge {
                size: 101,
                max: 100
            })
        );
        // A large body is fine.
        let mut f = sample();
        f.body = Some(vec![1; 1000]);
        let mut d = Decoder::with_header_limit(1 << 20, 100);
        d.push(&encode(&f));
        assert_eq!(d.next_frame().unwrap().unwrap(), f);
    }

    #[test]
    fn memory_grows_with_the_bytes_not_the_declared_size() {
        let mut d = Decoder::new(1 << 24);
        let mut f = sample();
        f.body = Some(vec![3; 1 << 19]);
        let bytes = encode(&f);
        d.push(&bytes[..1000]);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.held() < 4096, "held {}", d.held());
        for chunk in bytes[1000..].chunks(4096) {
            d.push(chunk);
            assert!(d.held() <= bytes.len(), "held {}", d.held());
        }
        assert_eq!(d.next_frame().unwrap().unwrap(), f);
        // The buffer is given back.
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn write_refuses_oversize() {
        let mut f = sample();
        f.body = Some(vec![0; 200]);
        let err = write_frame(&mut Vec::new(), &f, 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn invalid_json_and_unknown_kind() {
        let raw = |h: &[u8]| {
            let mut v = (h.len() as u32).to_be_bytes().to_vec();
            v.extend(0u32.to_be_bytes());
            v.extend_from_slice(h);
            let mut d = Decoder::new(1024);
            d.push(&v);
            d.next_frame()
        };
        assert!(matches!(raw(b"{nope"), Err(WireError::BadHeader(_))));
        assert_eq!(
            raw(br#"{"kind":"shout","type":"X"}"#),
            Err(WireError::UnknownKind("shout".into()))
        );
        assert_eq!(
            raw(br#"{"kind":"request","type":"X"}"#),
            Err(WireError::MissingField("req"))
        );
        assert!(raw(br#"{"kind":"message","type":"X","extra":1}"#)
            .unwrap()
            .is_some());
    }

    #[test]
    fn truncated_stream_is_reported() {
        let bytes = encode(&sample());
        let mut d = Decoder::new(1 << 20);
        d.push(&bytes[..bytes.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(WireError::Truncated));
    }

    #[test]
    fn empty_body_survives() {
        let mut f = Frame::new(Kind::Message, "BIN", Value::Null);
        f.body = Some(Vec::new());
        let mut d = Decoder::new(1024);
        d.push(&encode(&f));
        assert_eq!(d.next_frame().unwrap().unwrap().body, Some(Vec::new()));
    }
}

//! Node identifiers and the interval arithmetic of the 2^64 identifier ring.
//!
//! Pure code: no sockets, no threads, no clock.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A node's identifier: a position on the ring of 2^64 identifiers.
///
/// The first node of a network takes ID 0 and each node that joins takes the
/// next number after the highest in use, unless it asks for one explicitly.
///
/// ```
/// use p2prs::NodeId;
/// let a = NodeId(10);
/// assert_eq!(a.distance_to(NodeId(3)), u64::MAX - 6);
/// assert!(NodeId(5).in_half_open(a, NodeId(3)) == false);
/// assert!(NodeId(11).in_half_open(a, NodeId(3)));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    /// Clockwise distance from `self` to `other` on the ring (wrapping).
    pub fn distance_to(self, other: NodeId) -> u64 {
        other.0.wrapping_sub(self.0)
    }

    /// The identifier `2^k` positions clockwise of this one (wrapping); `k < 64`.
    pub fn plus_pow2(self, k: u32) -> NodeId {
        NodeId(self.0.wrapping_add(1u64 << (k % 64)))
    }

    /// Whether `self` lies in the half-open interval `(a, b]` going clockwise.
    /// When `a == b` the interval is the whole ring.
    pub fn in_half_open(self, a: NodeId, b: NodeId) -> bool {
        if a == b {
            return true;
        }
        let d = a.distance_to(self);
        d != 0 && d <= a.distance_to(b)
    }

    /// Whether `self` lies in the open interval `(a, b)` going clockwise.
    /// When `a == b` the interval is the whole ring except `a`.
    pub fn in_open(self, a: NodeId, b: NodeId) -> bool {
        if a == b {
            return self != a;
        }
        let d = a.distance_to(self);
        d != 0 && d < a.distance_to(b)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

impl From<u64> for NodeId {
    fn from(v: u64) -> Self {
        NodeId(v)
    }
}

impl From<NodeId> for u64 {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

/// Parses a node ID written as its [`Display`](fmt::Display) form, a plain
/// whole number.
///
/// ```
/// use p2prs::NodeId;
/// let id: NodeId = "42".parse().expect("a number");
/// assert_eq!(id, NodeId(42));
/// assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
/// assert!("ID 42".parse::<NodeId>().is_err());
/// ```
impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(NodeId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The neutral point (a key of small order) "signs" anything with
    /// R = neutral and s = 0 under the cofactorless check; strictly, it
    /// signs nothing.
    #[test]
    fn a_small_order_key_verifies_nothing() {
        let mut neutral = [0u8; 32];
        neutral[0] = 1;
        let mut sig = neutral.to_vec();
        sig.extend_from_slice(&[0u8; 32]);
        if let Ok(key) = PublicKey::from_bytes(neutral) {
            assert!(!key.verify(b"any message", &sig));
        }
    }

    #[test]
    fn half_open_wraps() {
        let a = NodeId(u64::MAX - 1);
        let b = NodeId(2);
        assert!(NodeId(u64::MAX).in_half_open(a, b));
        assert!(NodeId(0).in_half_open(a, b));
        assert!(NodeId(2).in_half_open(a, b));
        assert!(!NodeId(3).in_half_open(a, b));
        assert!(!a.in_half_open(a, b));
    }

    #[test]
    fn open_excludes_ends() {
        let a = NodeId(3);
        let b = NodeId(9);
        assert!(!a.in_open(a, b));
        assert!(!b.in_open(a, b));
        assert!(NodeId(4).in_open(a, b));
        assert!(NodeId(7).in_open(a, a));
        assert!(!a.in_open(a, a));
    }

    #[test]
    fn whole_ring_when_equal() {
        assert!(NodeId(0).in_half_open(NodeId(5), NodeId(5)));
        assert!(NodeId(5).in_half_open(NodeId(5), NodeId(5)));
    }

    #[test]
    fn parses_what_it_displays() {
        for id in [NodeId(0), NodeId(7), NodeId(u64::MAX)] {
            assert_eq!(id.to_string().parse(), Ok(id));
        }
        assert!("".parse::<NodeId>().is_err());
        assert!("-1".parse::<NodeId>().is_err());
        assert!("18446744073709551616".parse::<NodeId>().is_err());
    }

    #[test]
    fn plus_pow2_wraps() {
        assert_eq!(NodeId(u64::MAX).plus_pow2(0), NodeId(0));
        assert_eq!(NodeId(1).plus_pow2(3), NodeId(9));
    }
}

/// A node's public key (Ed25519): who the node is, whatever its address or ID.
///
/// Written as 64 hexadecimal digits.
///
/// ```
/// let id = p2prs::Identity::generate()?;
/// let key = id.public_key();
/// let text = key.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<p2prs::PublicKey>()?, key);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key from its 32 bytes, if they are a valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<PublicKey, ParseKeyError> {
        VerifyingKey::from_bytes(&bytes)
            .map(|_| PublicKey(bytes))
            .map_err(|_| ParseKeyError("not an Ed25519 public key".into()))
    }

    pub(crate) fn from_verifying_key(k: &VerifyingKey) -> PublicKey {
        PublicKey(k.to_bytes())
    }

    /// Whether `sig` is this key's signature of `msg`, checked strictly: a
    /// key or signature of small order never verifies (anyone could sign
    /// as such a key).
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        VerifyingKey::from_bytes(&self.0).is_ok_and(|k| k.verify_strict(msg, &sig).is_ok())
    }

    /// The first bytes in hex, for log lines.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<PublicKey, ParseKeyError> {
        let bytes = unhex::<32>(s.trim())
            .ok_or_else(|| ParseKeyError(format!("{s:?} is not 64 hex digits")))?;
        PublicKey::from_bytes(bytes)
    }
}

/// Why text or bytes are not a [`PublicKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseKeyError(String);

impl fmt::Display for ParseKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid public key: {}", self.0)
    }
}

impl std::error::Error for ParseKeyError {}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<PublicKey, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

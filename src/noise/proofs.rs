//! The identity proofs a node has checked already: a peer's proof is the
//! same bytes at every handshake (its Ed25519 key and that key's signature
//! of its Noise static key), and checking the signature (30-50 µs here)
//! is on the critical path of the responder's last handshake step. A proof
//! whose bytes equal one checked before, for the same static key, passes
//! without a second check.
//!
//! This is safe because the check is a pure function of exactly the bytes
//! compared, and because the Noise handshake itself proves that the peer
//! holds the static key's private half: a peer that replays another's
//! proof fails the handshake whether its proof was checked before or not.

use crate::id::PublicKey;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

/// The most proofs a node remembers; past it the oldest is forgotten (and
/// is checked again next time).
pub(crate) const MAX_VERIFIED: usize = 256;

/// Bytes of a proof: the Ed25519 key and its signature.
pub(crate) const PROOF_LEN: usize = 96;

/// Proofs checked already, by the static key they sign.
#[derive(Default)]
pub(crate) struct Verified {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_static: HashMap<[u8; 32], ([u8; PROOF_LEN], PublicKey)>,
    /// Static keys in the order they were remembered, oldest first.
    order: VecDeque<[u8; 32]>,
}

impl Verified {
    /// The identity `proof` names, if exactly this proof of the static key
    /// `rs` was checked before.
    pub(crate) fn get(&self, rs: &[u8; 32], proof: &[u8; PROOF_LEN]) -> Option<PublicKey> {
        let g = self.inner.lock();
        match g.by_static.get(rs) {
            Some((known, key)) if known == proof => Some(*key),
            _ => None,
        }
    }

    /// Remember that `proof` of the static key `rs`, naming `key`, checks.
    pub(crate) fn insert(&self, rs: [u8; 32], proof: [u8; PROOF_LEN], key: PublicKey) {
        let mut g = self.inner.lock();
        if g.by_static.insert(rs, (proof, key)).is_some() {
            return;
        }
        g.order.push_back(rs);
        while g.order.len() > MAX_VERIFIED {
            if let Some(old) = g.order.pop_front() {
                g.by_static.remove(&old);
            }
        }
    }

    /// Proofs remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_static.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn key(seed: u8) -> PublicKey {
        Identity::from_secret_bytes([seed; 32]).public_key()
    }

    #[test]
    fn only_the_same_bytes_for_the_same_static_key_pass() {
        let v = Verified::default();
        let (rs, proof) = ([1u8; 32], [2u8; PROOF_LEN]);
        assert_eq!(v.get(&rs, &proof), None);
        v.insert(rs, proof, key(1));
        assert_eq!(v.get(&rs, &proof), Some(key(1)));
        let mut other = proof;
        other[95] ^= 1;
        assert_eq!(v.get(&rs, &other), None, "another signature");
        assert_eq!(v.get(&[3u8; 32], &proof), None, "another static key");
        // A static key proved anew with other bytes is remembered so.
        v.insert(rs, other, key(2));
        assert_eq!(v.get(&rs, &other), Some(key(2)));
        assert_eq!(v.get(&rs, &proof), None);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn the_oldest_is_forgotten_past_the_bound() {
        let v = Verified::default();
        let rs = |i: usize| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            k
        };
        for i in 0..MAX_VERIFIED + 10 {
            v.insert(rs(i), [7u8; PROOF_LEN], key(1));
        }
        assert_eq!(v.len(), MAX_VERIFIED);
        assert_eq!(v.get(&rs(9), &[7u8; PROOF_LEN]), None);
        assert!(v.get(&rs(10), &[7u8; PROOF_LEN]).is_some());
        assert!(v.get(&rs(MAX_VERIFIED + 9), &[7u8; PROOF_LEN]).is_some());
    }
}

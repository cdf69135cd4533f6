//! X25519 for the Noise handshake from aws-lc-rs, handed to `snow` through
//! its resolver interface; hashes, ciphers and the random source stay
//! snow's (ring's where it has them, else its own).
//!
//! A handshake's Diffie-Hellman operations run one after another across
//! the two sides (six in an XX handshake, about 40 µs each with snow's
//! curve25519-dalek on this project's test machine): they set the time to
//! a first request. AWS-LC's X25519 (assembly with ADX/BMI2 where the CPU
//! has them) takes about 20 µs there, and its key generation 6 µs instead
//! of 12. ring, which snow already uses, offers X25519 only for
//! single-use keys, and Noise uses each of its keys twice.
//!
//! Both compute RFC 7748's function, so nodes built either way agree (a
//! unit test checks this against snow's own). One difference: a peer key
//! of small order, whose shared secret is all zeros, fails the handshake
//! here rather than going on with a key any onlooker knows.

use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
use parking_lot::Mutex;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{
    BoxedCryptoResolver, CryptoResolver, DefaultResolver, FallbackResolver, RingResolver,
};
use snow::types::{Cipher, Dh, Hash, Random};
use std::sync::Arc;

/// The resolver for every handshake: X25519 from here, the rest from
/// ring, then snow's own.
pub(crate) fn resolver() -> BoxedCryptoResolver {
    with(AwsLcDh {
        known: None,
        spares: None,
    })
}

/// An X25519 key pair, parsed once: a node's static key (a handshake that
/// sets it costs no scalar multiplication: deriving its public half, or
/// parsing it again for each Diffie-Hellman operation, takes 6 µs here, on
/// the handshake's critical path), or a spare ephemeral one ([`Spares`]).
pub(crate) struct KeyPair {
    private: [u8; 32],
    public: [u8; 32],
    key: PrivateKey,
}

impl KeyPair {
    /// The key pair of `private` (32 bytes).
    pub(crate) fn new(private: &[u8]) -> Result<KeyPair, snow::Error> {
        let private = <[u8; 32]>::try_from(private).map_err(|_| snow::Error::Dh)?;
        let key = PrivateKey::from_private_key(&X25519, &private).map_err(|_| snow::Error::Dh)?;
        let public = key
            .compute_public_key()
            .ok()
            .and_then(|p| <[u8; 32]>::try_from(p.as_ref()).ok())
            .ok_or(snow::Error::Dh)?;
        Ok(KeyPair {
            private,
            public,
            key,
        })
    }

    /// A fresh random key pair, from the operating system's random source.
    fn generate() -> Result<KeyPair, snow::Error> {
        let mut private = [0u8; 32];
        getrandom::fill(&mut private).map_err(|_| snow::Error::Rng)?;
        KeyPair::new(&private)
    }

    /// Its public half.
    #[cfg(test)]
    fn public(&self) -> &[u8] {
        &self.public
    }
}

/// The most spare ephemeral keys a node keeps ready.
const SPARES: usize = 2;

/// Ephemeral key pairs made ahead of the handshakes that take them, each
/// taken once. Making one (a scalar multiplication, 23 µs here) is on a
/// handshake's critical path twice: the dialer's before it connects, the
/// responder's before its reply. A handshake that waits for its peer
/// makes one spare meanwhile ([`Spares::refill`]), so the next handshake
/// of the node finds its key made; one that finds none makes its own, as
/// before. A handshake makes at most one spare, so a node's work per
/// handshake is the same.
pub(crate) struct Spares {
    keys: Mutex<Vec<KeyPair>>,
}

impl Spares {
    /// A pool with [`SPARES`] keys made.
    pub(crate) fn new() -> Spares {
        let spares = Spares {
            keys: Mutex::new(Vec::with_capacity(SPARES)),
        };
        for _ in 0..SPARES {
            spares.refill();
        }
        spares
    }

    /// A spare key, if one is ready; it leaves the pool.
    fn take(&self) -> Option<KeyPair> {
        self.keys.lock().pop()
    }

    /// Make one spare key, unless [`SPARES`] are ready. (A key the random
    /// source or the library fails to make is not made: the handshake that
    /// finds none makes its own and fails then, with the error.)
    pub(crate) fn refill(&self) {
        if self.keys.lock().len() >= SPARES {
            return;
        }
        if let Ok(k) = KeyPair::generate() {
            let mut keys = self.keys.lock();
            if keys.len() < SPARES {
                keys.push(k);
            }
        }
    }

    /// A pool with no key made (a plaintext node's, which never uses one).
    pub(crate) fn empty() -> Spares {
        Spares {
            keys: Mutex::new(Vec::new()),
        }
    }

    /// Keys ready now.
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.keys.lock().len()
    }
}

/// [`resolver`], for handshakes with the static key `known`, which setting
/// that key takes as it is, and ephemeral keys taken from `spares` when
/// one is ready.
pub(crate) fn resolver_with_static(
    known: &Arc<KeyPair>,
    spares: &Arc<Spares>,
) -> BoxedCryptoResolver {
    with(AwsLcDh {
        known: Some(Arc::clone(known)),
        spares: Some(Arc::clone(spares)),
    })
}

fn with(dh: AwsLcDh) -> BoxedCryptoResolver {
    Box::new(FallbackResolver::new(
        Box::new(dh),
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        )),
    ))
}

/// Resolves X25519 only.
struct AwsLcDh {
    /// A key that [`Dh::set`] takes as it is.
    known: Option<Arc<KeyPair>>,
    /// Where [`Dh::generate`] takes a key made ahead, if one is ready.
    spares: Option<Arc<Spares>>,
}

impl CryptoResolver for AwsLcDh {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519Key {
                known: self.known.clone(),
                spares: self.spares.clone(),
                ..X25519Key::default()
            })),
            _ => None,
        }
    }

    fn resolve_hash(&self, _choice: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }

    fn resolve_cipher(&self, _choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

/// One X25519 key pair (the static key, or an ephemeral one).
#[derive(Default)]
struct X25519Key {
    private: [u8; 32],
    public: [u8; 32],
    /// The private key as parsed, for each Diffie-Hellman operation.
    key: Option<Key>,
    /// See [`AwsLcDh::known`].
    known: Option<Arc<KeyPair>>,
    /// See [`AwsLcDh::spares`].
    spares: Option<Arc<Spares>>,
}

/// A parsed private key: this pair's own, or the node's static key.
enum Key {
    Own(PrivateKey),
    Static(Arc<KeyPair>),
}

impl Key {
    fn get(&self) -> &PrivateKey {
        match self {
            Key::Own(k) => k,
            Key::Static(s) => &s.key,
        }
    }
}

impl Dh for X25519Key {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let n = privkey.len().min(32);
        self.private = [0u8; 32];
        self.private[..n].copy_from_slice(&privkey[..n]);
        if let Some(known) = &self.known {
            if known.private == self.private {
                self.public = known.public;
                self.key = Some(Key::Static(Arc::clone(known)));
                return;
            }
        }
        // Cannot fail for 32 bytes; if it did, the public key would be
        // all zeros and this side's own Diffie-Hellman would fail (it has
        // no parsed key), and so would the handshake. (A peer on snow's
        // own X25519 would not fail on that key itself.)
        self.key = PrivateKey::from_private_key(&X25519, &self.private)
            .ok()
            .map(Key::Own);
        self.public = self
            .key
            .as_ref()
            .and_then(|k| k.get().compute_public_key().ok())
            .and_then(|p| <[u8; 32]>::try_from(p.as_ref()).ok())
            .unwrap_or_default();
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        if let Some(spare) = self.spares.as_ref().and_then(|s| s.take()) {
            self.private = spare.private;
            self.public = spare.public;
            self.key = Some(Key::Own(spare.key));
            return Ok(());
        }
        let mut k = [0u8; 32];
        rng.try_fill_bytes(&mut k)?;
        self.set(&k);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow hands over its whole key buffer: the key is the first 32 bytes.
        let pubkey = pubkey.get(..32).ok_or(snow::Error::Dh)?;
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        agree(
            key.get(),
            UnparsedPublicKey::new(&X25519, pubkey),
            snow::Error::Dh,
            |shared| match out.get_mut(..shared.len()) {
                Some(o) => {
                    o.copy_from_slice(shared);
                    Ok(())
                }
                None => Err(snow::Error::Dh),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random source that gives one byte again and again.
    struct Rng(u8);

    impl Random for Rng {
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
            dest.fill(self.0);
            Ok(())
        }
    }

    fn snows_own() -> Box<dyn Dh> {
        DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow's X25519")
    }

    #[test]
    fn agrees_with_snows_own_x25519() {
        let mut seed = [0u8; 64];
        getrandom::fill(&mut seed).expect("random bytes");
        for round in 0..8u8 {
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            a.copy_from_slice(&seed[..32]);
            b.copy_from_slice(&seed[32..]);
            a[0] ^= round;
            b[31] ^= round;
            let (mut ours, mut theirs) = (X25519Key::default(), snows_own());
            ours.set(&a);
            theirs.set(&b);
            let mut check = snows_own();
            check.set(&a);
            assert_eq!(ours.pubkey(), check.pubkey(), "public keys differ");
            let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
            ours.dh(theirs.pubkey(), &mut x).expect("ours");
            theirs.dh(ours.pubkey(), &mut y).expect("theirs");
            assert_eq!(x, y, "the shared secrets differ");
            // As snow calls it: the key at the front of a longer buffer.
            let mut padded = [0u8; 56];
            padded[..32].copy_from_slice(theirs.pubkey());
            let mut z = [0u8; 56];
            ours.dh(&padded, &mut z).expect("a padded key");
            assert_eq!(z[..32], x);
            assert_ne!(x, [0u8; 32]);
        }
    }

    /// Keys an honest peer never sends but a hostile one may: u with the
    /// high bit set (RFC 7748 ignores it) and u at or above 2^255 - 19
    /// (taken mod p). Both implementations must give the same secret, or
    /// fail only where snow's gives all zeros (small order).
    #[test]
    fn agrees_with_snows_own_on_non_canonical_keys() {
        let mut ours = X25519Key::default();
        ours.set(&[7u8; 32]);
        let mut theirs = snows_own();
        theirs.set(&[7u8; 32]);
        let mut valid = X25519Key::default();
        valid.set(&[9u8; 32]);
        let mut keys = Vec::new();
        // p + k for k in 0..19, p = 2^255 - 19: u = k taken mod p.
        for k in 0..19u8 {
            let mut u = [0xffu8; 32];
            u[31] = 0x7f;
            u[0] = 0xed + k;
            keys.push(u);
        }
        for base in [[0u8; 32], [1u8; 32], [0xffu8; 32]] {
            keys.push(base);
        }
        let mut high = [0u8; 32];
        high.copy_from_slice(valid.pubkey());
        keys.push(high);
        for key in keys.clone() {
            let mut k = key;
            k[31] |= 0x80;
            keys.push(k);
        }
        for key in keys {
            let (mut x, mut y) = ([0u8; 56], [0u8; 56]);
            theirs.dh(&key, &mut y).expect("snow's never fails");
            match ours.dh(&key, &mut x) {
                Ok(()) => assert_eq!(x[..32], y[..32], "the secrets differ for {key:02x?}"),
                Err(_) => assert_eq!(y[..32], [0u8; 32], "only ours failed for {key:02x?}"),
            }
        }
    }

    #[test]
    fn a_known_static_key_gives_its_public_key() {
        let mut k = X25519Key::default();
        k.set(&[3u8; 32]);
        let public = k.pubkey().to_vec();
        let fixed = Arc::new(KeyPair::new(&[3u8; 32]).expect("a static key"));
        assert_eq!(fixed.public(), &public[..]);
        let r = resolver_with_static(&fixed, &Arc::new(Spares::empty()));
        let mut known = r.resolve_dh(&DHChoice::Curve25519).expect("X25519");
        known.set(&[3u8; 32]);
        assert_eq!(known.pubkey(), &public[..]);
        // It agrees with the same key parsed anew.
        let mut peer = X25519Key::default();
        peer.set(&[9u8; 32]);
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        known.dh(peer.pubkey(), &mut x).expect("with the known key");
        k.dh(peer.pubkey(), &mut y).expect("parsed anew");
        assert_eq!(x, y);
        // Another key is computed, not taken from the known pair.
        known.set(&[4u8; 32]);
        let mut other = X25519Key::default();
        other.set(&[4u8; 32]);
        assert_eq!(known.pubkey(), other.pubkey());
    }

    /// Setting keys in turn on one pair (the static key, another, the
    /// static key again, a generated one) always leaves the pair the key
    /// last set: its public half and its Diffie-Hellman agree with that key
    /// parsed anew. One static key shared by pairs on several threads gives
    /// each the same secrets.
    #[test]
    fn a_pair_is_the_key_last_set_and_a_shared_static_key_agrees_everywhere() {
        let fixed = Arc::new(KeyPair::new(&[3u8; 32]).expect("a static key"));
        let mut peer = X25519Key::default();
        peer.set(&[9u8; 32]);
        let fresh = |k: &[u8; 32]| {
            let mut x = X25519Key::default();
            x.set(k);
            let mut out = [0u8; 32];
            x.dh(peer.pubkey(), &mut out).expect("parsed anew");
            (x.pubkey().to_vec(), out)
        };
        let r = resolver_with_static(&fixed, &Arc::new(Spares::empty()));
        let mut pair = r.resolve_dh(&DHChoice::Curve25519).expect("X25519");
        let check = |pair: &dyn Dh, k: &[u8; 32]| {
            let mut out = [0u8; 32];
            pair.dh(peer.pubkey(), &mut out).expect("dh");
            assert_eq!((pair.pubkey().to_vec(), out), fresh(k), "key {:02x}", k[0]);
            assert_eq!(pair.privkey(), &k[..]);
        };
        for k in [[3u8; 32], [4u8; 32], [3u8; 32], [5u8; 32], [3u8; 32]] {
            pair.set(&k);
            check(&*pair, &k);
        }
        pair.generate(&mut Rng(6)).expect("generate");
        check(&*pair, &[6u8; 32]);
        // One static key, shared by pairs on several threads.
        let want = fresh(&[3u8; 32]);
        let peer_public = peer.pubkey().to_vec();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let fixed = Arc::clone(&fixed);
                let spares = Arc::new(Spares::empty());
                let peer_public = peer_public.clone();
                std::thread::Builder::new()
                    .name("test-dh".into())
                    .spawn(move || {
                        let r = resolver_with_static(&fixed, &spares);
                        let mut seen = Vec::new();
                        for _ in 0..50 {
                            let mut pair = r.resolve_dh(&DHChoice::Curve25519).expect("X25519");
                            pair.set(&[3u8; 32]);
                            let mut out = [0u8; 32];
                            pair.dh(&peer_public, &mut out).expect("dh");
                            seen.push((pair.pubkey().to_vec(), out));
                        }
                        seen
                    })
                    .expect("a test thread")
            })
            .collect();
        for t in threads {
            for got in t.join().expect("a thread") {
                assert_eq!(got, want);
            }
        }
    }

    /// A generated key comes from the spares while one is ready, each
    /// spare once; then from the handshake's random source. A refill makes
    /// one key at a time, up to the pool's size.
    #[test]
    fn generated_keys_come_from_the_spares_each_once() {
        let fixed = Arc::new(KeyPair::new(&[3u8; 32]).expect("a static key"));
        let spares = Arc::new(Spares::new());
        assert_eq!(spares.ready(), SPARES);
        let made: Vec<Vec<u8>> = spares
            .keys
            .lock()
            .iter()
            .map(|k| k.public.to_vec())
            .collect();
        let r = resolver_with_static(&fixed, &spares);
        let mut seen = Vec::new();
        for _ in 0..SPARES {
            let mut e = r.resolve_dh(&DHChoice::Curve25519).expect("X25519");
            e.generate(&mut Rng(6)).expect("a spare");
            // Its own pair: the public half and the secrets are its key's.
            let mut parsed = X25519Key::default();
            parsed.set(e.privkey());
            assert_eq!(e.pubkey(), parsed.pubkey());
            seen.push(e.pubkey().to_vec());
        }
        seen.sort();
        let mut made = made;
        made.sort();
        assert_eq!(seen, made, "each spare is taken once");
        assert_ne!(seen[0], seen[1]);
        assert_eq!(spares.ready(), 0);
        let mut e = r.resolve_dh(&DHChoice::Curve25519).expect("X25519");
        e.generate(&mut Rng(6)).expect("from the random source");
        assert_eq!(e.privkey(), &[6u8; 32]);
        spares.refill();
        assert_eq!(spares.ready(), 1);
        for _ in 0..5 {
            spares.refill();
        }
        assert_eq!(spares.ready(), SPARES);
    }

    #[test]
    fn a_small_order_peer_key_fails() {
        let mut ours = X25519Key::default();
        ours.set(&[7u8; 32]);
        let mut out = [0u8; 32];
        // Points of small order: u = 0 and u = 1.
        assert!(ours.dh(&[0u8; 32], &mut out).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(ours.dh(&one, &mut out).is_err());
    }
}

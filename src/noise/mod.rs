//! The secure handshake and the encrypted record layer, as pure code over
//! bytes: no sockets, no clock. See `docs/protocol.md`.
//!
//! Each side first sends a 16-byte preamble (`P2PR`, version, flags, a random
//! tie-break). A side that dialled sends the Noise handshake's first message
//! with its preamble and leads (flag [`FLAG_EARLY`]); otherwise the side with
//! the larger tie-break is the Noise initiator. Then a Noise `XX` handshake
//! (`XXpsk2` with a network key) runs, each message prefixed by its length
//! (u16). The last two handshake messages
//! carry each side's identity (an Ed25519 key that signs the Noise static
//! key) and its hello. After it, each direction is a stream of records:
//! `length (u16) | ciphertext`, each holding up to [`MAX_PLAIN`] bytes of the
//! frame stream. The Noise protocol is the `snow` crate's, with X25519 from
//! aws-lc-rs (`dh.rs`).

pub(crate) use crate::config::Cipher;
pub use crate::error::HandshakeError;
mod dh;
mod proofs;

use crate::id::PublicKey;
use crate::identity::{Identity, NetworkKey};
use crate::wire::{Hello, MAGIC};
use snow::params::NoiseParams;
use snow::{HandshakeState, StatelessTransportState};
use std::fmt;
use std::sync::Arc;

/// The protocol version this build speaks (1 was plaintext; 2 had no
/// early first message).
pub const VERSION: u16 = 3;
/// Bytes in a preamble.
pub const PREAMBLE_LEN: usize = 16;
/// Largest Noise message.
const MAX_MSG: usize = 65535;
/// AEAD tag length.
const TAG: usize = 16;
/// Most plaintext bytes in one record.
pub const MAX_PLAIN: usize = MAX_MSG - TAG;
/// Context of the signature binding a Noise static key to an identity.
const SIG_CONTEXT: &[u8] = b"p2prs-noise-static-key:";
/// Largest hello inside a handshake payload.
const MAX_HELLO: usize = 16 * 1024;

const FLAG_NETWORK_KEY: u8 = 1;
const FLAG_PLAINTEXT: u8 = 2;
const FLAG_AES: u8 = 4;
/// The sender's first Noise message follows its preamble at once: it leads.
const FLAG_EARLY: u8 = 8;
/// The prologue's label.
const PROLOGUE: &[u8] = b"p2prs/3";

/// What this node brings to every handshake. Built once per node.
pub(crate) struct Local {
    identity: Identity,
    psk: Option<NetworkKey>,
    plaintext: bool,
    cipher: Cipher,
    /// X25519 static key for Noise (fresh per process), and the identity
    /// proof: Ed25519 public key + its signature of the static public key.
    static_private: Vec<u8>,
    static_key: Arc<dh::KeyPair>,
    proof: Vec<u8>,
    /// Ephemeral keys made ahead of this node's handshakes.
    spares: Arc<dh::Spares>,
    /// Peers' identity proofs checked already.
    verified: proofs::Verified,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("identity", &self.identity)
            .field("network_key", &self.psk.is_some())
            .field("plaintext", &self.plaintext)
            .finish()
    }
}

impl Local {
    /// Handshake material for `identity`, with an optional network key.
    pub(crate) fn new(
        identity: Identity,
        psk: Option<NetworkKey>,
        plaintext: bool,
        cipher: Cipher,
    ) -> Result<Local, HandshakeError> {
        let params = params(psk.is_some(), cipher)?;
        let kp = snow::Builder::with_resolver(params, dh::resolver())
            .generate_keypair()
            .map_err(|e| HandshakeError::Noise(format!("generating a static key: {e:?}")))?;
        let mut signed = SIG_CONTEXT.to_vec();
        signed.extend_from_slice(&kp.public);
        let mut proof = identity.public_key().as_bytes().to_vec();
        proof.extend_from_slice(&identity.sign(&signed));
        Ok(Local {
            identity,
            psk,
            plaintext,
            cipher,
            static_key: Arc::new(
                dh::KeyPair::new(&kp.private)
                    .map_err(|e| HandshakeError::Noise(format!("parsing the static key: {e:?}")))?,
            ),
            static_private: kp.private,
            proof,
            spares: Arc::new(if plaintext {
                dh::Spares::empty()
            } else {
                dh::Spares::new()
            }),
            verified: proofs::Verified::default(),
        })
    }

    /// This node's identity.
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether this node has a network key.
    pub(crate) fn keyed(&self) -> bool {
        self.psk.is_some()
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.psk.is_some() {
            f |= FLAG_NETWORK_KEY;
        }
        if self.plaintext {
            f |= FLAG_PLAINTEXT;
        }
        if self.cipher == Cipher::AesGcm {
            f |= FLAG_AES;
        }
        f
    }
}

fn params(keyed: bool, cipher: Cipher) -> Result<NoiseParams, HandshakeError> {
    let pattern = if keyed { "XXpsk2" } else { "XX" };
    format!("Noise_{pattern}_25519_{}_BLAKE2s", cipher.noise_name())
        .parse()
        .map_err(|e| HandshakeError::Noise(format!("protocol name: {e:?}")))
}

/// What the handshake learnt of the peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerProof {
    /// Its hello (listen address, claimed ID).
    pub hello: Hello,
    /// Its authenticated identity; `None` only in plaintext mode.
    pub key: Option<PublicKey>,
}

enum Phase {
    /// Waiting for the peer's preamble.
    Preamble,
    /// Plaintext mode: waiting for the peer's hello (u32 length + JSON).
    PlainHello,
    /// The Noise messages.
    Noise(Box<HandshakeState>),
    /// The initiator has written its last message; the responder's proof
    /// (its payload and static key) is checked in [`Handshaker::settle`],
    /// once that message is on its way.
    Unverified(Box<HandshakeState>, Vec<u8>, Vec<u8>),
    /// Finished.
    Done,
    /// Failed; nothing more is read.
    Failed,
}

/// A handshake in progress, fed with the bytes the peer sends.
pub(crate) struct Handshaker {
    local: Arc<Local>,
    hello: Vec<u8>,
    nonce: [u8; 8],
    ours: [u8; PREAMBLE_LEN],
    theirs: Option<[u8; PREAMBLE_LEN]>,
    phase: Phase,
    input: Vec<u8>,
    output: Vec<u8>,
    peer: Option<PeerProof>,
    session: Option<Session>,
    /// The initiator's state when this side [leads](Handshaker::lead):
    /// message 1 is sent, the peer's preamble not read yet.
    early: Option<Box<HandshakeState>>,
    /// [`Handshaker::prepare`] has made its spare key.
    prepared: bool,
}

impl Handshaker {
    /// Start a handshake that announces `hello`; `nonce` is the random
    /// tie-break that picks the initiator.
    pub(crate) fn new(local: Arc<Local>, hello: &Hello, nonce: [u8; 8]) -> Handshaker {
        let hello = serde_json::to_vec(hello).unwrap_or_default();
        Handshaker::with_raw_hello(local, hello, nonce)
    }

    /// As [`Handshaker::new`], with the hello as raw bytes (tests send bad ones).
    pub(crate) fn with_raw_hello(local: Arc<Local>, hello: Vec<u8>, nonce: [u8; 8]) -> Handshaker {
        let mut ours = [0u8; PREAMBLE_LEN];
        ours[..4].copy_from_slice(&MAGIC);
        ours[4..6].copy_from_slice(&VERSION.to_be_bytes());
        ours[6] = local.flags();
        ours[8..16].copy_from_slice(&nonce);
        let mut output = ours.to_vec();
        if local.plaintext {
            // Plaintext mode: the hello goes with the preamble, without
            // waiting for the peer's (it holds nothing the peer must see
            // first).
            output.extend_from_slice(&(hello.len() as u32).to_be_bytes());
            output.extend_from_slice(&hello);
        }
        Handshaker {
            local,
            hello,
            nonce,
            ours,
            theirs: None,
            phase: Phase::Preamble,
            input: Vec::new(),
            output,
            peer: None,
            session: None,
            early: None,
            prepared: false,
        }
    }

    /// Lead this handshake, as a side that dialled: send the first Noise
    /// message with the preamble, without waiting for the peer's, which
    /// saves the peer's thread a wait of one message. Not for a connection
    /// both sides may have dialled at once (a punched one): two leaders
    /// fail. No change in plaintext mode (its hello leaves with the
    /// preamble already), or once any output was sent.
    pub(crate) fn lead(mut self) -> Result<Handshaker, HandshakeError> {
        if self.local.plaintext || self.output.len() != PREAMBLE_LEN {
            return Ok(self);
        }
        self.ours[6] |= FLAG_EARLY;
        let mut prologue = PROLOGUE.to_vec();
        prologue.extend_from_slice(&self.ours);
        let hs = self
            .builder(&prologue)?
            .build_initiator()
            .map_err(noise_err)?;
        self.output = self.ours.to_vec();
        self.phase = Phase::Noise(Box::new(hs));
        self.write_noise(false, false)?;
        let Phase::Noise(hs) = std::mem::replace(&mut self.phase, Phase::Preamble) else {
            return Err(HandshakeError::Noise("no initiator state".into()));
        };
        self.early = Some(hs);
        Ok(self)
    }

    /// The Noise handshake of this node's parameters with `prologue`.
    fn builder<'a>(&'a self, prologue: &'a [u8]) -> Result<snow::Builder<'a>, HandshakeError> {
        let mut b = snow::Builder::with_resolver(
            params(self.local.keyed(), self.local.cipher)?,
            dh::resolver_with_static(&self.local.static_key, &self.local.spares),
        )
        .local_private_key(&self.local.static_private)
        .map_err(noise_err)?
        .prologue(prologue)
        .map_err(noise_err)?;
        if let Some(k) = &self.local.psk {
            b = b.psk(2, k.psk()).map_err(noise_err)?;
        }
        Ok(b)
    }

    /// Whether [`Handshaker::prepare`] has work to do.
    pub(crate) fn may_prepare(&self) -> bool {
        !self.prepared && !self.local.plaintext && !self.is_done()
    }

    /// Work for while this side waits for the peer's next message: make a
    /// spare ephemeral key for a later handshake of this node, once per
    /// handshake (see `dh::Spares`). Drivers call it when they find that
    /// message not come yet.
    pub(crate) fn prepare(&mut self) {
        if self.may_prepare() {
            self.prepared = true;
            self.local.spares.refill();
        }
    }

    /// Bytes to send to the peer now, left in place: follow a send of
    /// some of them with [`Handshaker::sent`].
    pub(crate) fn output(&self) -> &[u8] {
        &self.output
    }

    /// The first `n` bytes of [`Handshaker::output`] were sent.
    pub(crate) fn sent(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// Bytes to send to the peer now.
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Whether the handshake is complete.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The outcome, once [`Handshaker::is_done`]: the peer, the session, and
    /// the bytes the peer sent after its handshake.
    pub(crate) fn finish(mut self) -> Option<(PeerProof, Session, Vec<u8>)> {
        let rest = std::mem::take(&mut self.input);
        Some((self.peer?, self.session?, rest))
    }

    /// Feed bytes from the peer. On error, [`Handshaker::take_output`] may
    /// hold a refusal to send before closing.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), HandshakeError> {
        if matches!(self.phase, Phase::Failed | Phase::Done) {
            self.input.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        let r = self.advance();
        if r.is_err() {
            self.phase = Phase::Failed;
        }
        r
    }

    fn advance(&mut self) -> Result<(), HandshakeError> {
        loop {
            match &mut self.phase {
                Phase::Preamble => {
                    // Refuse a peer that is not p2prs at its first wrong byte.
                    let n = self.input.len().min(4);
                    if self.input[..n] != MAGIC[..n] {
                        let shown = self.input[..self.input.len().min(16)].to_vec();
                        return Err(HandshakeError::NotP2prs(shown));
                    }
                    if self.input.len() < PREAMBLE_LEN {
                        return Ok(());
                    }
                    let mut p = [0u8; PREAMBLE_LEN];
                    p.copy_from_slice(&self.input[..PREAMBLE_LEN]);
                    self.input.drain(..PREAMBLE_LEN);
                    self.theirs = Some(p);
                    self.on_preamble(p)?;
                }
                Phase::PlainHello => {
                    if self.input.len() < 4 {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([
                        self.input[0],
                        self.input[1],
                        self.input[2],
                        self.input[3],
                    ]) as usize;
                    if len > MAX_HELLO {
                        return Err(HandshakeError::BadHello(format!(
                            "{len} bytes, more than {MAX_HELLO}"
                        )));
                    }
                    if self.input.len() < 4 + len {
                        return Ok(());
                    }
                    let hello = parse_hello(&self.input[4..4 + len])?;
                    self.input.drain(..4 + len);
                    self.peer = Some(PeerProof { hello, key: None });
                    self.session = Some(Session { noise: None });
                    self.phase = Phase::Done;
                    return Ok(());
                }
                Phase::Noise(_) => {
                    if self.input.len() < 2 {
                        return Ok(());
                    }
                    let len = u16::from_be_bytes([self.input[0], self.input[1]]) as usize;
                    if len == 0 {
                        return Err(HandshakeError::Refused);
                    }
                    if self.input.len() < 2 + len {
                        return Ok(());
                    }
                    let msg: Vec<u8> = self.input.drain(..2 + len).skip(2).collect();
                    self.on_noise_message(&msg)?;
                }
                Phase::Unverified(..) | Phase::Done | Phase::Failed => return Ok(()),
            }
        }
    }

    /// Finish what waits on the output having been sent: the initiator
    /// checks the responder's proof after its last message is written, so
    /// that the responder's work on that message and this check overlap.
    /// Drivers call it after each write of [`Handshaker::take_output`]; on
    /// error the handshake has failed and nothing more may be sent.
    pub(crate) fn settle(&mut self) -> Result<(), HandshakeError> {
        if !matches!(self.phase, Phase::Unverified(..)) {
            return Ok(());
        }
        let Phase::Unverified(hs, payload, rs) = std::mem::replace(&mut self.phase, Phase::Failed)
        else {
            return Ok(());
        };
        self.peer = Some(verify_proof(&self.local, &payload, Some(&rs))?);
        self.phase = Phase::Noise(hs);
        self.check_done()
    }

    fn on_preamble(&mut self, p: [u8; PREAMBLE_LEN]) -> Result<(), HandshakeError> {
        let version = u16::from_be_bytes([p[4], p[5]]);
        if version != VERSION {
            return Err(HandshakeError::Version {
                theirs: version,
                ours: VERSION,
            });
        }
        let (mine, theirs) = (self.local.flags(), p[6]);
        if (mine ^ theirs) & FLAG_PLAINTEXT != 0 {
            return Err(HandshakeError::PlaintextMismatch {
                ours: self.local.plaintext,
            });
        }
        if self.local.plaintext {
            // Our hello left with the preamble.
            self.phase = Phase::PlainHello;
            return Ok(());
        }
        if (mine ^ theirs) & FLAG_NETWORK_KEY != 0 {
            return Err(HandshakeError::NetworkKeyPresence {
                ours: self.local.keyed(),
            });
        }
        if (mine ^ theirs) & FLAG_AES != 0 {
            return Err(HandshakeError::CipherMismatch {
                ours: self.local.cipher.noise_name().into(),
            });
        }
        let their_early = theirs & FLAG_EARLY != 0;
        if let Some(hs) = self.early.take() {
            if their_early {
                return Err(HandshakeError::Noise(
                    "both sides sent the first handshake message at once".into(),
                ));
            }
            // Message 1 is on its way; the responder's preamble is bound
            // by message 2, whose payload repeats it.
            self.phase = Phase::Noise(hs);
            return Ok(());
        }
        let mut prologue = PROLOGUE.to_vec();
        let initiator = if their_early {
            // The peer leads: its message 1 follows its preamble, with its
            // preamble alone as the prologue.
            prologue.extend_from_slice(&p);
            false
        } else {
            let initiator = match self.nonce.as_slice().cmp(&p[8..16]) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => {
                    return Err(HandshakeError::Noise(
                        "both sides chose the same tie-break".into(),
                    ))
                }
            };
            // The prologue binds both preambles: neither flags nor roles
            // can be changed in transit without the handshake failing.
            if initiator {
                prologue.extend_from_slice(&self.ours);
                prologue.extend_from_slice(&p);
            } else {
                prologue.extend_from_slice(&p);
                prologue.extend_from_slice(&self.ours);
            }
            initiator
        };
        let b = self.builder(&prologue)?;
        let hs = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(noise_err)?;
        self.phase = Phase::Noise(Box::new(hs));
        if initiator {
            self.write_noise(false, false)?;
        }
        Ok(())
    }

    /// Write the next Noise message; `with_proof` adds our identity and
    /// hello, after our preamble if `with_preamble` (message 2).
    fn write_noise(&mut self, with_proof: bool, with_preamble: bool) -> Result<(), HandshakeError> {
        let Phase::Noise(hs) = &mut self.phase else {
            return Ok(());
        };
        let mut payload = Vec::new();
        if with_preamble {
            payload.extend_from_slice(&self.ours);
        }
        if with_proof {
            payload.extend_from_slice(&self.local.proof);
            payload.extend_from_slice(&self.hello);
        }
        // Room for the payload and what XX adds to it (an ephemeral key,
        // an encrypted static key and two tags: 96 bytes), sized to the
        // message: a new connection's thread touches fresh memory, and
        // every page of it is a fault.
        let mut buf = vec![0u8; (payload.len() + 128).min(MAX_MSG)];
        let n = hs
            .write_message(&payload, &mut buf)
            .map_err(|e| HandshakeError::Noise(format!("writing: {e:?}")))?;
        self.output.extend_from_slice(&(n as u16).to_be_bytes());
        self.output.extend_from_slice(&buf[..n]);
        Ok(())
    }

    fn on_noise_message(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let Phase::Noise(hs) = &mut self.phase else {
            return Ok(());
        };
        // The payload is shorter than the message that carries it.
        let mut payload = vec![0u8; msg.len()];
        let n = match hs.read_message(msg, &mut payload) {
            Ok(n) => n,
            Err(snow::Error::Decrypt) => {
                // Tell the peer why before closing: a zero length.
                self.output.extend_from_slice(&[0, 0]);
                return Err(HandshakeError::NetworkKeyMismatch);
            }
            Err(e) => return Err(HandshakeError::Noise(format!("{e:?}"))),
        };
        let rs = hs.get_remote_static().map(<[u8]>::to_vec);
        if hs.is_handshake_finished() {
            // The responder, on message 3: the initiator's proof.
            if n > 0 {
                self.peer = Some(verify_proof(&self.local, &payload[..n], rs.as_deref())?);
            }
            return self.check_done();
        }
        // XX: the responder's reply (message 2) and the initiator's last
        // message (3) both carry the proof.
        let initiator_last = n > 0;
        if n > 0 && rs.is_none() {
            return Err(HandshakeError::BadIdentity("no static key".into()));
        }
        // Message 2 repeats the responder's preamble, which a leading
        // initiator's prologue could not hold.
        let proof = if initiator_last {
            let Some(said) = payload[..n].get(..PREAMBLE_LEN) else {
                return Err(HandshakeError::BadIdentity("message 2 is too short".into()));
            };
            if Some(said) != self.theirs.as_ref().map(|t| &t[..]) {
                return Err(HandshakeError::Noise(
                    "message 2 names another preamble than the peer sent".into(),
                ));
            }
            payload[PREAMBLE_LEN..n].to_vec()
        } else {
            Vec::new()
        };
        self.write_noise(true, !initiator_last)?;
        if initiator_last {
            // Message 2 read, 3 written: check the responder's proof once
            // message 3 is on its way (see `settle`).
            let Phase::Noise(hs) = std::mem::replace(&mut self.phase, Phase::Failed) else {
                return Ok(());
            };
            self.phase = Phase::Unverified(hs, proof, rs.unwrap_or_default());
            return Ok(());
        }
        self.check_done()
    }

    fn check_done(&mut self) -> Result<(), HandshakeError> {
        let finished = matches!(&self.phase, Phase::Noise(hs) if hs.is_handshake_finished());
        if !finished {
            return Ok(());
        }
        if self.peer.is_none() {
            return Err(HandshakeError::BadIdentity(
                "the peer sent no identity".into(),
            ));
        }
        let Phase::Noise(hs) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        let t = hs
            .into_stateless_transport_mode()
            .map_err(|e| HandshakeError::Noise(format!("{e:?}")))?;
        self.session = Some(Session {
            noise: Some(Arc::new(t)),
        });
        Ok(())
    }
}

fn noise_err(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(format!("{e:?}"))
}

fn parse_hello(bytes: &[u8]) -> Result<Hello, HandshakeError> {
    serde_json::from_slice(bytes).map_err(|e| HandshakeError::BadHello(e.to_string()))
}

/// Check the identity proof in `payload` (an Ed25519 key and its
/// signature of the peer's static key `remote_static`, then the hello),
/// or find it checked already (see `proofs.rs`).
fn verify_proof(
    local: &Local,
    payload: &[u8],
    remote_static: Option<&[u8]>,
) -> Result<PeerProof, HandshakeError> {
    if payload.len() < proofs::PROOF_LEN {
        return Err(HandshakeError::BadIdentity(format!(
            "{} bytes, fewer than {}",
            payload.len(),
            proofs::PROOF_LEN
        )));
    }
    let rs = remote_static.ok_or_else(|| HandshakeError::BadIdentity("no static key".into()))?;
    let rs = <[u8; 32]>::try_from(rs)
        .map_err(|_| HandshakeError::BadIdentity("a static key not of 32 bytes".into()))?;
    let mut proof = [0u8; proofs::PROOF_LEN];
    proof.copy_from_slice(&payload[..proofs::PROOF_LEN]);
    let key = match local.verified.get(&rs, &proof) {
        Some(key) => key,
        None => {
            let key = check_signature(&rs, &proof)?;
            local.verified.insert(rs, proof, key);
            key
        }
    };
    let hello_bytes = &payload[proofs::PROOF_LEN..];
    if hello_bytes.len() > MAX_HELLO {
        return Err(HandshakeError::BadHello("too long".into()));
    }
    Ok(PeerProof {
        hello: parse_hello(hello_bytes)?,
        key: Some(key),
    })
}

/// The identity `proof` names, if its signature of the static key `rs`
/// verifies (the key is parsed once).
fn check_signature(
    rs: &[u8; 32],
    proof: &[u8; proofs::PROOF_LEN],
) -> Result<PublicKey, HandshakeError> {
    use ed25519_dalek::{Signature, VerifyingKey};
    let mut key = [0u8; 32];
    key.copy_from_slice(&proof[..32]);
    let key = VerifyingKey::from_bytes(&key)
        .map_err(|_| HandshakeError::BadIdentity("not an Ed25519 key".into()))?;
    let mut signed = SIG_CONTEXT.to_vec();
    signed.extend_from_slice(rs);
    let sig = Signature::from_slice(&proof[32..]).map_err(|_| {
        HandshakeError::BadIdentity("the signature of the static key does not verify".into())
    })?;
    // Strict: a key or R of small order is refused (the cofactorless
    // check alone lets anyone sign as a small-order key).
    key.verify_strict(&signed, &sig).map_err(|_| {
        HandshakeError::BadIdentity("the signature of the static key does not verify".into())
    })?;
    Ok(PublicKey::from_verifying_key(&key))
}

/// The keys of an established connection, shared by its two directions.
#[derive(Clone)]
pub(crate) struct Session {
    noise: Option<Arc<StatelessTransportState>>,
}

impl Session {
    /// The encrypting half (or a pass-through in plaintext mode).
    pub(crate) fn sealer(&self) -> Sealer {
        Sealer {
            noise: self.noise.clone(),
            nonce: 0,
        }
    }

    /// The decrypting half (or a pass-through in plaintext mode).
    pub(crate) fn opener(&self) -> Opener {
        Opener {
            noise: self.noise.clone(),
            nonce: 0,
            rec: Vec::new(),
            have: 0,
            bulk: false,
        }
    }
}

/// Why received records were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// A record's length is zero.
    Empty,
    /// A record did not decrypt: altered in transit or not from the peer.
    Decrypt,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Empty => write!(f, "an empty encrypted record"),
            RecordError::Decrypt => write!(
                f,
                "an encrypted record failed authentication (altered in transit?)"
            ),
        }
    }
}

/// Encrypts a direction's byte stream into records.
pub(crate) struct Sealer {
    noise: Option<Arc<StatelessTransportState>>,
    nonce: u64,
}

impl Sealer {
    /// Whether this is plaintext mode (records are the bytes themselves).
    pub(crate) fn is_plain(&self) -> bool {
        self.noise.is_none()
    }

    /// Write `plain`, encrypted as records, to the front of `out`, which
    /// holds at least [`sealed_len`] of it: the bytes written. Unlike
    /// [`Sealer::seal`], nothing of `out` is zero-filled first, so a buffer
    /// kept for a stream of large writes is sealed into as it is.
    pub(crate) fn seal_into(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        let Some(noise) = &self.noise else {
            out[..plain.len()].copy_from_slice(plain);
            return Ok(plain.len());
        };
        let mut at = 0;
        for chunk in plain.chunks(MAX_PLAIN) {
            let room = out
                .get_mut(at + 2..at + 2 + chunk.len() + TAG)
                .ok_or(RecordError::Decrypt)?;
            let n = noise
                .write_message(self.nonce, chunk, room)
                .map_err(|_| RecordError::Decrypt)?;
            self.nonce += 1;
            out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
            at += 2 + n;
        }
        Ok(at)
    }

    /// Append `plain`, encrypted as records, to `out`.
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let Some(noise) = &self.noise else {
            out.extend_from_slice(plain);
            return Ok(());
        };
        for chunk in plain.chunks(MAX_PLAIN) {
            let start = out.len();
            out.extend_from_slice(&[0, 0]);
            out.resize(start + 2 + chunk.len() + TAG, 0);
            let n = noise
                .write_message(self.nonce, chunk, &mut out[start + 2..])
                .map_err(|_| RecordError::Decrypt)?;
            self.nonce += 1;
            out.truncate(start + 2 + n);
            out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
        }
        Ok(())
    }
}

/// The bytes `n` bytes of plaintext take once sealed as records (each
/// [`MAX_PLAIN`] at most, with its length and tag).
pub(crate) fn sealed_len(n: usize) -> usize {
    n + n.div_ceil(MAX_PLAIN) * (2 + TAG)
}

/// The length of the record that starts `b` (at least two bytes long).
fn record_len(b: &[u8]) -> Result<usize, RecordError> {
    match u16::from_be_bytes([b[0], b[1]]) as usize {
        0 => Err(RecordError::Empty),
        n => Ok(n),
    }
}

/// Decrypts a direction's records back into the byte stream.
pub(crate) struct Opener {
    noise: Option<Arc<StatelessTransportState>>,
    nonce: u64,
    /// Bytes of an incomplete record: the first `have` bytes of `rec`
    /// (at most one record: 64 KiB). `rec` keeps its length once grown, so
    /// that a read can go straight into it (see [`Opener::room`]).
    rec: Vec<u8>,
    have: usize,
    /// The last record was large: the peer sends bulk, and the next read
    /// may go straight into `rec` even at a record's start.
    bulk: bool,
}

/// The largest record on the wire: its length and the ciphertext.
const MAX_RECORD: usize = 2 + MAX_MSG;
/// A record at least this large marks the peer as sending bulk.
const BULK_RECORD: usize = 16 * 1024;
/// Bytes of a record still to come for which reading straight into the
/// opener is worth it.
const DIRECT_MIN: usize = 4096;

impl Opener {
    /// Whether this is plaintext mode (records are the bytes themselves).
    pub(crate) fn is_plain(&self) -> bool {
        self.noise.is_none()
    }

    /// Bytes of an incomplete record held.
    pub(crate) fn pending(&self) -> usize {
        self.have
    }

    /// Where the next read may go with no copy: the rest of the record
    /// under way when much of it is still to come, or, while the peer sends
    /// bulk and no record is under way, room for one whole record. `None`
    /// in plaintext mode and for small records. After reading into it, call
    /// [`Opener::filled`].
    pub(crate) fn room(&mut self) -> Option<&mut [u8]> {
        self.noise.as_ref()?;
        if self.have >= 2 {
            let end = 2 + u16::from_be_bytes([self.rec[0], self.rec[1]]) as usize;
            if end - self.have < DIRECT_MIN {
                return None;
            }
            if self.rec.len() < end {
                self.rec.resize(end, 0);
            }
            return Some(&mut self.rec[self.have..end]);
        }
        if self.have == 0 && self.bulk {
            if self.rec.len() < MAX_RECORD {
                self.rec.resize(MAX_RECORD, 0);
            }
            return Some(&mut self.rec[..MAX_RECORD]);
        }
        None
    }

    /// `n` bytes were read into [`Opener::room`]: decrypt the records
    /// completed, appending to `plain`, and keep the rest.
    pub(crate) fn filled(&mut self, n: usize, plain: &mut Vec<u8>) -> Result<(), RecordError> {
        let Some(noise) = &self.noise else {
            return Ok(());
        };
        self.have += n;
        let mut at = 0;
        let result = loop {
            let left = self.have - at;
            if left < 2 {
                break Ok(());
            }
            let len = match record_len(&self.rec[at..]) {
                Ok(len) => len,
                Err(e) => break Err(e),
            };
            if left < 2 + len {
                break Ok(());
            }
            self.bulk = 2 + len >= BULK_RECORD;
            if let Err(e) = Self::decrypt(
                noise,
                &mut self.nonce,
                &self.rec[at + 2..at + 2 + len],
                plain,
            ) {
                break Err(e);
            }
            at += 2 + len;
        };
        if at > 0 {
            self.rec.copy_within(at..self.have, 0);
            self.have -= at;
        }
        result
    }

    /// Append `bytes` to the record under way (`rec`, `have`).
    fn hold(rec: &mut Vec<u8>, have: &mut usize, bytes: &[u8]) {
        let end = *have + bytes.len();
        if rec.len() < end {
            rec.resize(end, 0);
        }
        rec[*have..end].copy_from_slice(bytes);
        *have = end;
    }

    /// Feed received bytes; decrypted bytes are appended to `plain`.
    pub(crate) fn open(&mut self, input: &[u8], plain: &mut Vec<u8>) -> Result<(), RecordError> {
        let Opener {
            noise,
            nonce,
            rec,
            have,
            bulk,
        } = self;
        let Some(noise) = noise else {
            plain.extend_from_slice(input);
            return Ok(());
        };
        let mut input = input;
        loop {
            if *have > 0 {
                // Complete the record begun in an earlier read.
                if *have < 2 {
                    let take = (2 - *have).min(input.len());
                    Self::hold(rec, have, &input[..take]);
                    input = &input[take..];
                    if *have < 2 {
                        return Ok(());
                    }
                }
                let len = record_len(rec)?;
                let take = (2 + len - *have).min(input.len());
                Self::hold(rec, have, &input[..take]);
                input = &input[take..];
                if *have < 2 + len {
                    return Ok(());
                }
                *bulk = 2 + len >= BULK_RECORD;
                Self::decrypt(noise, nonce, &rec[2..2 + len], plain)?;
                *have = 0;
                continue;
            }
            if input.len() < 2 {
                Self::hold(rec, have, input);
                return Ok(());
            }
            let len = record_len(input)?;
            if input.len() < 2 + len {
                Self::hold(rec, have, input);
                return Ok(());
            }
            *bulk = 2 + len >= BULK_RECORD;
            Self::decrypt(noise, nonce, &input[2..2 + len], plain)?;
            input = &input[2 + len..];
        }
    }

    fn decrypt(
        noise: &StatelessTransportState,
        nonce: &mut u64,
        record: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if record.len() < TAG {
            return Err(RecordError::Decrypt);
        }
        let start = plain.len();
        plain.resize(start + record.len(), 0);
        match noise.read_message(*nonce, record, &mut plain[start..]) {
            Ok(n) => {
                *nonce += 1;
                plain.truncate(start + n);
                Ok(())
            }
            Err(_) => {
                plain.truncate(start);
                Err(RecordError::Decrypt)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(seed: u8, key: Option<&str>) -> Arc<Local> {
        let id = Identity::from_secret_bytes([seed; 32]);
        Arc::new(Local::new(id, key.map(NetworkKey::new), false, Cipher::default()).expect("local"))
    }

    /// `b` with its static key, presenting `proof` as its identity proof.
    fn proving(b: &Local, proof: Vec<u8>) -> Arc<Local> {
        Arc::new(Local {
            identity: b.identity.clone(),
            psk: None,
            plaintext: false,
            cipher: b.cipher,
            static_private: b.static_private.clone(),
            static_key: Arc::clone(&b.static_key),
            proof,
            spares: Arc::new(dh::Spares::new()),
            verified: proofs::Verified::default(),
        })
    }

    fn hello(port: u16) -> Hello {
        Hello {
            listen: Some(format!("127.0.0.1:{port}")),
            id: None,
        }
    }

    type Outcome = (
        Result<Handshaker, HandshakeError>,
        Result<Handshaker, HandshakeError>,
    );

    /// Run two handshakers against each other in memory, delivering output
    /// in chunks of `chunk` bytes.
    fn pair(a: Arc<Local>, b: Arc<Local>, chunk: usize) -> Outcome {
        let x = Handshaker::new(a, &hello(1), [9; 8]);
        let y = Handshaker::new(b, &hello(2), [3; 8]);
        run(x, y, chunk)
    }

    /// Run `x` and `y` against each other in memory, delivering output in
    /// chunks of `chunk` bytes.
    fn run(mut x: Handshaker, mut y: Handshaker, chunk: usize) -> Outcome {
        let (mut ex, mut ey) = (None, None);
        for _ in 0..100 {
            let to_y = x.take_output();
            let to_x = y.take_output();
            if ex.is_none() {
                ex = x.settle().err();
            }
            if ey.is_none() {
                ey = y.settle().err();
            }
            if to_y.is_empty() && to_x.is_empty() {
                break;
            }
            for c in to_y.chunks(chunk) {
                if ey.is_none() {
                    ey = y.push(c).err();
                }
            }
            for c in to_x.chunks(chunk) {
                if ex.is_none() {
                    ex = x.push(c).err();
                }
            }
        }
        (ex.map_or(Ok(x), Err), ey.map_or(Ok(y), Err))
    }

    #[test]
    fn handshake_authenticates_both_sides_at_any_split() {
        for chunk in [1, 2, 7, 1000] {
            let (a, b) = (local(1, None), local(2, None));
            let (ka, kb) = (a.identity.public_key(), b.identity.public_key());
            let (x, y) = pair(a, b, chunk);
            let (x, y) = (x.expect("x"), y.expect("y"));
            assert!(x.is_done() && y.is_done());
            let (px, sx, _) = x.finish().expect("x done");
            let (py, sy, _) = y.finish().expect("y done");
            assert_eq!(px.key, Some(kb));
            assert_eq!(py.key, Some(ka));
            assert_eq!(px.hello, hello(2));
            assert_eq!(py.hello, hello(1));
            // Records both ways, at every split.
            let mut out = Vec::new();
            let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            sx.sealer().seal(&data, &mut out).expect("seal");
            assert!(!out.windows(64).any(|w| w == &data[1000..1064]));
            let mut opener = sy.opener();
            let mut plain = Vec::new();
            for c in out.chunks(chunk.max(3)) {
                opener.open(c, &mut plain).expect("open");
            }
            assert_eq!(plain, data);
            let mut back = Vec::new();
            sy.sealer().seal(b"pong", &mut back).expect("seal");
            let mut plain = Vec::new();
            sx.opener().open(&back, &mut plain).expect("open");
            assert_eq!(plain, b"pong");
        }
    }

    #[test]
    fn a_leading_dialer_sends_message_1_with_its_preamble_and_leads_whatever_the_tie_break() {
        for chunk in [1, 5, 49, 50, 1000] {
            for (nx, ny) in [([0x80; 8], [0x7f; 8]), ([0x01; 8], [0x02; 8])] {
                let (a, b) = (local(1, None), local(2, None));
                let (ka, kb) = (a.identity.public_key(), b.identity.public_key());
                let x = Handshaker::new(a, &hello(1), nx).lead().expect("lead");
                // The preamble, then message 1 (an ephemeral key).
                assert_eq!(x.output().len(), PREAMBLE_LEN + 2 + 32);
                assert_eq!(x.output()[6] & FLAG_EARLY, FLAG_EARLY);
                let y = Handshaker::new(b, &hello(2), ny);
                let (x, y) = run(x, y, chunk);
                let (x, y) = (x.expect("leader"), y.expect("follower"));
                let (px, sx, _) = x.finish().expect("leader done");
                let (py, sy, _) = y.finish().expect("follower done");
                assert_eq!((px.key, py.key), (Some(kb), Some(ka)));
                assert_eq!((px.hello, py.hello), (hello(2), hello(1)));
                let mut wire = Vec::new();
                sx.sealer().seal(b"first", &mut wire).expect("seal");
                let mut plain = Vec::new();
                sy.opener().open(&wire, &mut plain).expect("open");
                assert_eq!(plain, b"first");
            }
        }
    }

    #[test]
    fn two_leaders_fail_and_a_leader_in_plaintext_mode_is_unchanged() {
        let x = Handshaker::new(local(1, None), &hello(1), [0x80; 8])
            .lead()
            .unwrap();
        let y = Handshaker::new(local(2, None), &hello(2), [0x81; 8])
            .lead()
            .unwrap();
        let (x, y) = run(x, y, 1000);
        assert!(matches!(x, Err(HandshakeError::Noise(ref m)) if m.contains("at once")));
        assert!(y.is_err());
        let id = Identity::from_secret_bytes([5; 32]);
        let plain = Arc::new(Local::new(id, None, true, Cipher::default()).unwrap());
        let h = Handshaker::new(plain, &hello(1), [0x80; 8]);
        let before = h.output().to_vec();
        assert_eq!(h.lead().unwrap().output(), &before[..]);
    }

    #[test]
    fn a_follower_preamble_altered_in_transit_fails_the_leader() {
        let mut x = Handshaker::new(local(1, None), &hello(1), [0x80; 8])
            .lead()
            .unwrap();
        let mut y = Handshaker::new(local(2, None), &hello(2), [0x01; 8]);
        y.push(&x.take_output()).expect("preamble and message 1");
        let mut back = y.take_output();
        // The follower's preamble, then message 2: change its tie-break.
        back[15] ^= 1;
        let err = x.push(&back).expect_err("an altered preamble");
        assert!(err.to_string().contains("another preamble"), "{err}");
    }

    #[test]
    fn reads_straight_into_the_opener_give_the_same_stream() {
        let (x, y) = pair(local(1, None), local(2, None), 1000);
        let (_, sx, _) = x.expect("x").finish().expect("x");
        let (_, sy, _) = y.expect("y").finish().expect("y");
        // Large records, then small ones, then large again.
        let mut sealer = sx.sealer();
        let mut wire = Vec::new();
        let mut data = Vec::new();
        for (i, len) in [300_000usize, 10, 200, 5000, 150_000]
            .into_iter()
            .enumerate()
        {
            let piece: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            for c in piece.chunks(if len > 1000 { MAX_PLAIN } else { 7 }) {
                sealer.seal(c, &mut wire).expect("seal");
            }
            data.extend_from_slice(&piece);
        }
        for read in [1000usize, 4096, 32 * 1024, 100_000] {
            let mut opener = sy.opener();
            let mut plain = Vec::new();
            let (mut at, mut direct) = (0, 0);
            while at < wire.len() {
                let n = match opener.room() {
                    Some(room) => {
                        let n = room.len().min(read).min(wire.len() - at);
                        room[..n].copy_from_slice(&wire[at..at + n]);
                        opener.filled(n, &mut plain).expect("filled");
                        direct += n;
                        n
                    }
                    None => {
                        let n = read.min(wire.len() - at);
                        opener.open(&wire[at..at + n], &mut plain).expect("open");
                        n
                    }
                };
                at += n;
            }
            assert_eq!(opener.pending(), 0);
            assert_eq!(plain, data, "reads of {read}");
            assert!(direct > wire.len() / 2, "reads of {read}: {direct} direct");
        }
    }

    #[test]
    fn sealing_into_a_kept_buffer_gives_the_same_records() {
        let (x, y) = pair(local(1, None), local(2, None), 1000);
        let (_, sx, _) = x.expect("x").finish().expect("x");
        let (_, sy, _) = y.expect("y").finish().expect("y");
        let (mut a, mut b) = (sx.sealer(), sx.sealer());
        let mut opener = sy.opener();
        // A kept buffer full of old bytes: nothing of it may leak.
        let mut kept = vec![0xAAu8; sealed_len(4 * MAX_PLAIN)];
        let mut plain = Vec::new();
        let mut data = Vec::new();
        for (i, len) in [4 * MAX_PLAIN, 1, MAX_PLAIN + 5, 3 * MAX_PLAIN]
            .into_iter()
            .enumerate()
        {
            let piece: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            let n = a.seal_into(&piece, &mut kept).expect("seal_into");
            assert_eq!(n, sealed_len(len));
            let mut wire = Vec::new();
            b.seal(&piece, &mut wire).expect("seal");
            assert_eq!(&kept[..n], &wire[..], "piece {i}");
            opener.open(&kept[..n], &mut plain).expect("open");
            data.extend_from_slice(&piece);
        }
        assert_eq!(plain, data);
        // Too little room is an error, not a panic.
        assert!(a.seal_into(&[1; 100], &mut [0u8; 100]).is_err());
    }

    #[test]
    fn a_flipped_byte_fails_the_record() {
        let (x, y) = pair(local(1, None), local(2, None), 1000);
        let (_, sx, _) = x.expect("x").finish().expect("x");
        let (_, sy, _) = y.expect("y").finish().expect("y");
        let mut out = Vec::new();
        sx.sealer().seal(b"secret canary", &mut out).expect("seal");
        out[5] ^= 1;
        let mut plain = Vec::new();
        assert_eq!(
            sy.opener().open(&out, &mut plain),
            Err(RecordError::Decrypt)
        );
        assert!(plain.is_empty());
    }

    #[test]
    fn network_keys_must_match() {
        let (x, y) = pair(local(1, Some("k1")), local(2, Some("k1")), 1000);
        assert!(x.is_ok() && y.is_ok());
        let (x, y) = pair(local(1, Some("k1")), local(2, Some("k2")), 1000);
        // The initiator (larger tie-break) cannot verify message 2; the
        // responder then reads its refusal.
        assert_eq!(x.err(), Some(HandshakeError::NetworkKeyMismatch));
        assert_eq!(y.err(), Some(HandshakeError::Refused));
        let (x, y) = pair(local(1, Some("k1")), local(2, None), 1000);
        assert_eq!(
            x.err(),
            Some(HandshakeError::NetworkKeyPresence { ours: true })
        );
        assert_eq!(
            y.err(),
            Some(HandshakeError::NetworkKeyPresence { ours: false })
        );
    }

    #[test]
    fn the_initiator_sends_its_last_message_before_it_checks_the_responder() {
        let (a, b) = (local(1, None), local(2, None));
        let kb = b.identity.public_key();
        // The larger tie-break (the dialer's) initiates.
        let mut x = Handshaker::new(a, &hello(1), [0x80, 0, 0, 0, 0, 0, 0, 1]);
        let mut y = Handshaker::new(b, &hello(2), [0x7f; 8]);
        let (px, py) = (x.take_output(), y.take_output());
        x.push(&py).expect("preamble");
        y.push(&px).expect("preamble");
        let msg1 = x.take_output();
        assert!(!msg1.is_empty(), "the initiator writes message 1 at once");
        y.push(&msg1).expect("message 1");
        let msg2 = y.take_output();
        x.push(&msg2).expect("message 2");
        // Message 3 is ready while the responder's proof is still unchecked.
        let msg3 = x.take_output();
        assert!(!msg3.is_empty());
        assert!(!x.is_done());
        // Bytes arriving meanwhile wait (here: the responder's first record).
        x.push(b"later").expect("held");
        x.settle().expect("the proof checks");
        assert!(x.is_done());
        y.push(&msg3).expect("message 3");
        y.settle().expect("nothing to settle");
        assert!(y.is_done());
        let (peer, _, rest) = x.finish().expect("done");
        assert_eq!(peer.key, Some(kb));
        assert_eq!(rest, b"later");
    }

    #[test]
    fn a_responder_proof_for_another_static_key_fails_at_settle() {
        let (a, b) = (local(1, None), local(2, None));
        let mut x = Handshaker::new(a, &hello(1), [0x80; 8]);
        // The responder signs a static key that is not the one it uses.
        let other = local(3, None);
        let forged = proving(&b, other.proof.clone());
        let mut y = Handshaker::new(forged, &hello(2), [0x01; 8]);
        let (px, py) = (x.take_output(), y.take_output());
        x.push(&py).expect("preamble");
        y.push(&px).expect("preamble");
        y.push(&x.take_output()).expect("message 1");
        x.push(&y.take_output()).expect("message 2");
        assert!(!x.take_output().is_empty());
        let e = x.settle().expect_err("a proof of another key");
        assert!(matches!(e, HandshakeError::BadIdentity(_)), "{e:?}");
        assert!(!x.is_done());
        assert!(x.finish().is_none());
    }

    /// A proof checked once passes again without a check; a proof that
    /// differs, for a static key whose proof was checked, is checked (and
    /// fails). The spare keys a handshake makes are taken by the next.
    #[test]
    fn a_checked_proof_is_remembered_and_another_for_its_key_is_checked() {
        let (a, b) = (local(1, None), local(2, None));
        let kb = b.identity.public_key();
        for round in 0..3 {
            let (x, y) = pair(Arc::clone(&a), Arc::clone(&b), 1000);
            let (mut x, mut y) = (x.expect("x"), y.expect("y"));
            assert!(x.is_done() && y.is_done(), "round {round}");
            x.prepare();
            y.prepare();
            assert_eq!(x.finish().expect("done").0.key, Some(kb));
            assert_eq!(a.verified.len(), 1);
            assert_eq!(b.verified.len(), 1);
        }
        // Another identity's proof with b's static key: a remembers b's
        // proof of that key, and checks this one, which fails.
        let forged = proving(&b, local(3, None).proof.clone());
        let (x, _) = pair(Arc::clone(&a), forged, 1000);
        let e = x.err().expect("a proof of another key");
        assert!(matches!(e, HandshakeError::BadIdentity(_)), "{e:?}");
        // And b's own proof still passes.
        let (x, y) = pair(Arc::clone(&a), Arc::clone(&b), 7);
        assert!(x.expect("x").is_done() && y.expect("y").is_done());
    }

    /// A proof by a key of small order (here the neutral point, with the
    /// signature R = neutral, s = 0, which "verifies" any message under
    /// the cofactorless check without strictness) is refused: anyone
    /// could claim such an identity.
    #[test]
    fn a_proof_by_a_small_order_key_is_refused() {
        let (a, b) = (local(1, None), local(2, None));
        let mut neutral = [0u8; 32];
        neutral[0] = 1;
        let mut proof = neutral.to_vec();
        proof.extend_from_slice(&neutral);
        proof.extend_from_slice(&[0u8; 32]);
        // As the responder (checked at settle) and as the initiator
        // (checked on message 3).
        let (x, _) = pair(Arc::clone(&a), proving(&b, proof.clone()), 1000);
        let e = x.err().expect("a small-order identity as responder");
        assert!(matches!(e, HandshakeError::BadIdentity(_)), "{e:?}");
        let weak = proving(&b, proof);
        let (_, y) = pair(weak, Arc::clone(&a), 1000);
        let e = y.err().expect("a small-order identity as initiator");
        assert!(matches!(e, HandshakeError::BadIdentity(_)), "{e:?}");
    }

    #[test]
    fn a_preamble_sent_in_part_is_finished_by_the_rest_of_the_output() {
        let (a, b) = (local(1, None), local(2, None));
        let mut x = Handshaker::new(a, &hello(1), [0x7f; 8]);
        let mut y = Handshaker::new(b, &hello(2), [0x80; 8]);
        // As an accepting thread sends what its socket takes at once.
        let first = x.output()[..5].to_vec();
        x.sent(5);
        x.sent(0);
        let rest = x.take_output();
        assert_eq!(first.len() + rest.len(), PREAMBLE_LEN);
        // More than there is: nothing left, no panic.
        let mut z = Handshaker::new(local(3, None), &hello(3), [1; 8]);
        z.sent(1000);
        assert!(z.output().is_empty());
        y.push(&first).expect("part of a preamble");
        y.push(&rest).expect("the rest");
        // The larger tie-break (y's) initiates: its preamble and message 1.
        x.push(&y.take_output()).expect("preamble and message 1");
        y.push(&x.take_output()).expect("message 2");
        let msg3 = y.take_output();
        y.settle().expect("x's proof");
        x.push(&msg3).expect("message 3");
        assert!(x.is_done() && y.is_done());
    }

    /// Handshake messages are written into buffers sized to their
    /// payload: the largest hello a peer accepts still fits, with and
    /// without a network key.
    #[test]
    fn the_largest_hello_fits_its_message() {
        for key in [None, Some("k")] {
            let pad = "x".repeat(MAX_HELLO - 40);
            let raw = format!("{{\"listen\":\"{pad}\",\"id\":null}}").into_bytes();
            assert!(raw.len() <= MAX_HELLO);
            let mut x = Handshaker::with_raw_hello(local(1, key), raw, [0x80; 8]);
            let mut y = Handshaker::new(local(2, key), &hello(2), [0x01; 8]);
            y.push(&x.take_output()).expect("preamble");
            x.push(&y.take_output()).expect("preamble");
            y.push(&x.take_output()).expect("message 1");
            x.push(&y.take_output()).expect("message 2");
            let msg3 = x.take_output();
            assert!(msg3.len() > MAX_HELLO - 40, "{} bytes", msg3.len());
            x.settle().expect("y's proof");
            y.push(&msg3).expect("message 3");
            let (peer, _, _) = y.finish().expect("done");
            assert_eq!(peer.hello.listen.map(|l| l.len()), Some(pad.len()));
        }
    }

    #[test]
    fn not_p2prs_is_named_at_the_first_wrong_byte() {
        let mut x = Handshaker::new(local(1, None), &hello(1), [1; 8]);
        let e = x.push(b"HTTP/1.1 200 OK").err();
        assert_eq!(
            e,
            Some(HandshakeError::NotP2prs(b"HTTP/1.1 200 OK".to_vec()))
        );
        assert!(e
            .map(|e| e.to_string())
            .is_some_and(|s| s.contains("\"HTTP/1.1 200 OK\"")));
        let mut x = Handshaker::new(local(1, None), &hello(1), [1; 8]);
        assert!(x.push(b"P").is_ok());
        assert!(x.push(&[0xff]).is_err());
    }

    #[test]
    fn plaintext_does_not_mix_with_encrypted() {
        let id = Identity::from_secret_bytes([5; 32]);
        let plain = Arc::new(Local::new(id, None, true, Cipher::default()).expect("local"));
        let (x, y) = pair(plain, local(2, None), 1000);
        assert_eq!(
            x.err(),
            Some(HandshakeError::PlaintextMismatch { ours: true })
        );
        assert_eq!(
            y.err(),
            Some(HandshakeError::PlaintextMismatch { ours: false })
        );
    }

    #[test]
    fn ciphers_must_match() {
        let id = Identity::from_secret_bytes([5; 32]);
        let chacha = Arc::new(Local::new(id, None, false, Cipher::ChaChaPoly).expect("local"));
        let (x, _) = pair(chacha.clone(), local(2, None), 1000);
        assert!(matches!(
            x.err(),
            Some(HandshakeError::CipherMismatch { .. })
        ));
        let id = Identity::from_secret_bytes([6; 32]);
        let chacha2 = Arc::new(Local::new(id, None, false, Cipher::ChaChaPoly).expect("local"));
        let (x, y) = pair(chacha, chacha2, 5);
        assert!(x.is_ok() && y.is_ok());
    }
}

//! A node's long-term identity: an Ed25519 key pair, and the network key
//! that keeps strangers out.
//!
//! The cryptography is `ed25519-dalek`'s and `sha2`'s; this module only keeps
//! keys, files and their text forms.

use crate::error::{Error, Result};
use crate::id::PublicKey;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The first line of an identity file.
const FILE_HEADER: &str = "p2prs identity v1";

/// A node's long-term key pair. A node started without one generates a new
/// one; one started with the same identity (for example from the same file,
/// [`NodeBuilder::identity_file`](crate::NodeBuilder::identity_file)) is the
/// same peer to everyone.
///
/// ```no_run
/// let id = p2prs::Identity::load_or_generate("node.key")?; // created with mode 0600
/// let node = p2prs::Node::builder().identity(id.clone()).start()?;
/// assert_eq!(node.public_key(), id.public_key());
/// # Ok::<(), p2prs::Error>(())
/// ```
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        write!(f, "Identity({})", self.public_key().short())
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Result<Identity> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            Error::io(
                "reading random bytes for a new identity",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(Identity::from_secret_bytes(seed))
    }

    /// The identity whose secret key is these 32 bytes.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// This identity's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(&self.key.verifying_key())
    }

    /// Sign `msg`.
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Read an identity file written by [`Identity::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Identity> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the identity file {}", path.display()), e))?;
        let mut lines = text.lines();
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "{} is not a p2prs identity file: {why}",
                path.display()
            ))
        };
        if lines.next().map(str::trim) != Some(FILE_HEADER) {
            return Err(bad(&format!("the first line is not {FILE_HEADER:?}")));
        }
        let secret = lines
            .next()
            .and_then(|l| unhex::<32>(l.trim()))
            .ok_or_else(|| bad("the second line is not 64 hex digits"))?;
        warn_if_readable_by_others(path);
        Ok(Identity::from_secret_bytes(secret))
    }

    /// Write this identity to a new file that only its owner may read
    /// (mode 0600 on Unix). Fails if the file exists.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let ctx = || format!("creating the identity file {}", path.display());
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| Error::io(ctx(), e))?;
        let text = format!(
            "{FILE_HEADER}\n{}\npublic {}\n",
            hex(&self.key.to_bytes()),
            self.public_key()
        );
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(ctx(), e))
    }

    /// The identity in `path`, or a new one saved there if the file does not exist.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Identity> {
        let path = path.as_ref();
        if path.exists() {
            return Identity::load(path);
        }
        let id = Identity::generate()?;
        match id.save(path) {
            Ok(()) => Ok(id),
            // Another process created it first: use that one.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Identity::load(path)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "identity file {} can be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// The secret shared by the members of a closed network. Peers without the
/// same key fail the handshake before anything else happens.
///
/// Any string works, but the handshake lets an active attacker test guesses
/// offline: use a long random key (for example 32 random bytes in hex:
/// `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'`), not a password.
///
/// An empty text is not a key: a node or rendezvous server given one
/// refuses to start (an unset environment variable read as `""` would
/// otherwise close the network by accident).
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey {
    psk: [u8; 32],
    empty: bool,
}

impl NetworkKey {
    /// The network key for this text.
    pub fn new(text: impl AsRef<[u8]>) -> NetworkKey {
        let mut h = Sha256::new();
        h.update(b"p2prs network key v1\0");
        h.update(text.as_ref());
        NetworkKey {
            psk: h.finalize().into(),
            empty: text.as_ref().is_empty(),
        }
    }

    /// Whether it was made from empty text (which starting refuses).
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    /// The 32-byte pre-shared key used in the handshake.
    pub(crate) fn psk(&self) -> &[u8; 32] {
        &self.psk
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

pub(crate) use crate::id::{hex, unhex};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_as_text() {
        let id = Identity::from_secret_bytes([7; 32]);
        let k = id.public_key();
        assert_eq!(k.to_string().parse::<PublicKey>().ok(), Some(k));
        assert!("zz".parse::<PublicKey>().is_err());
        assert!("é".repeat(32).parse::<PublicKey>().is_err());
        let json = serde_json::to_string(&k).unwrap_or_default();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).ok(), Some(k));
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let a = Identity::from_secret_bytes([1; 32]);
        let b = Identity::from_secret_bytes([2; 32]);
        let sig = a.sign(b"hello");
        assert!(a.public_key().verify(b"hello", &sig));
        assert!(!a.public_key().verify(b"hellO", &sig));
        assert!(!b.public_key().verify(b"hello", &sig));
        assert!(!a.public_key().verify(b"hello", &sig[..63]));
    }

    #[test]
    fn identity_files_round_trip_and_are_private() {
        let dir = std::env::temp_dir().join(format!("p2prs-id-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let a = Identity::load_or_generate(&path).expect("created");
        let b = Identity::load_or_generate(&path).expect("loaded");
        assert_eq!(a.public_key(), b.public_key());
        assert!(a.save(&path).is_err(), "save never overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode());
            assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600));
        }
        std::fs::write(&path, "not an identity\n").expect("overwrite for the test");
        let err = Identity::load(&path).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("not a p2prs identity file")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn network_keys_differ_by_text() {
        assert_eq!(NetworkKey::new("a"), NetworkKey::new("a"));
        assert_ne!(NetworkKey::new("a"), NetworkKey::new("b"));
    }
}

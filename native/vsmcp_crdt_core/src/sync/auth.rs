//! Optional message authentication: a keyed BLAKE3 MAC around every sync
//! message, with up to [`MAX_SECRETS`] secrets accepted at once so a
//! secret can be rotated without a stop.
//!
//! ```text
//! byte 0      AUTH_MAGIC 0xCA
//! bytes 1-8   key id (which secret made the MAC)
//! bytes 9-40  MAC: keyed BLAKE3 of bytes 0-8 and the message
//! rest        the message (`wire`, starting with WIRE_MAGIC 0xC9)
//! ```
//!
//! Each secret is stretched with BLAKE3's key derivation, under a fixed
//! context string, together with the sync topic: a message made for one
//! topic does not authenticate on another with the same secret. The key
//! id is a keyed hash of the derived key (it names the key without
//! revealing it), so a receiver checks one MAC, never one per secret.
//! The first secret of a [`Keyring`] signs; every one of them verifies.
//!
//! A MAC proves who made a message, not when. The engine bounds replay
//! with the message's HLC stamp (`EngineConfig::replay_window_ms`): an
//! authenticated message stamped longer ago than the window is refused.
//! Inside the window a replay is a duplicate, which the protocol already
//! tolerates (every merge is a join).

use crate::error::{Error, Result};

/// First byte of an authenticated message.
pub const AUTH_MAGIC: u8 = 0xCA;
/// Bytes of a key id.
pub const KEY_ID_BYTES: usize = 8;
/// Bytes of a MAC.
pub const MAC_BYTES: usize = 32;
/// Bytes an authenticated message adds to the message it carries.
pub const FRAME_BYTES: usize = 1 + KEY_ID_BYTES + MAC_BYTES;
/// The shortest secret accepted (128 bits).
pub const MIN_SECRET_BYTES: usize = 16;
/// The longest secret accepted.
pub const MAX_SECRET_BYTES: usize = 4096;
/// The most secrets one keyring accepts (the one that signs, and those
/// still accepted during a rotation).
pub const MAX_SECRETS: usize = 4;

// The messages of `Keyring::new` name these bounds.
const _: () = assert!(MAX_SECRETS == 4 && MIN_SECRET_BYTES == 16 && MAX_SECRET_BYTES == 4096);

const KDF_CONTEXT: &str = "vsmcp_crdt 2026-12-07 sync message authentication v1";

#[derive(Clone)]
struct Key {
    id: [u8; KEY_ID_BYTES],
    key: [u8; 32],
}

/// The secrets of one store's sync, derived for its topic. The first one
/// signs; all of them verify. `Debug` shows key ids only.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self
            .keys
            .iter()
            .map(|k| k.id.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

/// Why an authenticated message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Not an authenticated message (no frame, or too short).
    Missing,
    /// Made with a secret this keyring does not hold.
    UnknownKey,
    /// The MAC does not match: forged or altered.
    BadMac,
}

impl AuthError {
    /// What it means, for logs.
    pub fn describe(self) -> &'static str {
        match self {
            AuthError::Missing => "no message authentication code",
            AuthError::UnknownKey => "made with a secret not accepted here",
            AuthError::BadMac => "message authentication code does not match",
        }
    }
}

impl Keyring {
    /// A keyring of `secrets` (the first signs) for sync `context` (the
    /// topic). `Error::InvalidArgument` for no secret, more than
    /// [`MAX_SECRETS`], or one shorter than [`MIN_SECRET_BYTES`] or longer
    /// than [`MAX_SECRET_BYTES`].
    pub fn new<S: AsRef<[u8]>>(secrets: &[S], context: &[u8]) -> Result<Keyring> {
        if secrets.is_empty() || secrets.len() > MAX_SECRETS {
            return Err(Error::InvalidArgument("1 to 4 secrets"));
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for s in secrets {
            let s = s.as_ref();
            if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&s.len()) {
                return Err(Error::InvalidArgument("a secret has 16 to 4096 bytes"));
            }
            keys.push(derive(s, context));
        }
        Ok(Keyring { keys })
    }

    /// The id of the key that signs.
    pub fn signing_key_id(&self) -> [u8; KEY_ID_BYTES] {
        self.keys[0].id
    }

    /// `msg` in an authenticated frame, signed with the first secret.
    pub fn seal(&self, msg: &[u8]) -> Vec<u8> {
        let k = &self.keys[0];
        let mut out = Vec::with_capacity(FRAME_BYTES + msg.len());
        out.push(AUTH_MAGIC);
        out.extend_from_slice(&k.id);
        let mac = mac(&k.key, &out, msg);
        out.extend_from_slice(mac.as_bytes());
        out.extend_from_slice(msg);
        out
    }

    /// The message inside an authenticated frame, once its MAC checks
    /// out with one of our secrets (compared in constant time).
    pub fn open<'a>(&self, bytes: &'a [u8]) -> std::result::Result<&'a [u8], AuthError> {
        if bytes.len() < FRAME_BYTES || bytes[0] != AUTH_MAGIC {
            return Err(AuthError::Missing);
        }
        let (head, rest) = bytes.split_at(1 + KEY_ID_BYTES);
        let (tag, msg) = rest.split_at(MAC_BYTES);
        let key = self
            .keys
            .iter()
            .find(|k| k.id[..] == head[1..])
            .ok_or(AuthError::UnknownKey)?;
        let mut theirs = [0u8; MAC_BYTES];
        theirs.copy_from_slice(tag);
        // `blake3::Hash`'s equality is constant-time.
        if mac(&key.key, head, msg) == blake3::Hash::from(theirs) {
            Ok(msg)
        } else {
            Err(AuthError::BadMac)
        }
    }
}

fn derive(secret: &[u8], context: &[u8]) -> Key {
    let mut kdf = blake3::Hasher::new_derive_key(KDF_CONTEXT);
    // Length-prefixed, so no (secret, context) pair reads as another.
    kdf.update(&(secret.len() as u64).to_le_bytes());
    kdf.update(secret);
    kdf.update(&(context.len() as u64).to_le_bytes());
    kdf.update(context);
    let key: [u8; 32] = *kdf.finalize().as_bytes();
    let mut id = [0u8; KEY_ID_BYTES];
    id.copy_from_slice(&blake3::keyed_hash(&key, b"key id").as_bytes()[..KEY_ID_BYTES]);
    Key { id, key }
}

fn mac(key: &[u8; 32], head: &[u8], msg: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(head);
    h.update(msg);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef-secret-a";
    const B: &[u8] = b"0123456789abcdef-secret-b";

    #[test]
    fn a_sealed_message_opens_with_the_same_secret_and_topic_only() {
        let ring = Keyring::new(&[A], b"topic").unwrap();
        let sealed = ring.seal(b"\xC9hello");
        assert_eq!(sealed.len(), FRAME_BYTES + 6);
        assert_eq!(ring.open(&sealed), Ok(&b"\xC9hello"[..]));
        let other_topic = Keyring::new(&[A], b"topic2").unwrap();
        assert_eq!(other_topic.open(&sealed), Err(AuthError::UnknownKey));
        let other_secret = Keyring::new(&[B], b"topic").unwrap();
        assert_eq!(other_secret.open(&sealed), Err(AuthError::UnknownKey));
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let ring = Keyring::new(&[A], b"t").unwrap();
        let sealed = ring.seal(b"\xC9\x04\x01payload");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(ring.open(&bad).is_err(), "byte {i} altered was accepted");
        }
        assert_eq!(
            ring.open(&sealed[..FRAME_BYTES - 1]),
            Err(AuthError::Missing)
        );
        assert_eq!(ring.open(b"\xC9\x04\x01"), Err(AuthError::Missing));
    }

    #[test]
    fn a_forged_mac_with_a_known_key_id_is_refused() {
        let ring = Keyring::new(&[A], b"t").unwrap();
        let mut forged = ring.seal(b"\xC9original");
        let n = forged.len();
        forged[FRAME_BYTES..n].copy_from_slice(b"\xC9tampered");
        assert_eq!(ring.open(&forged), Err(AuthError::BadMac));
    }

    #[test]
    fn during_a_rotation_both_secrets_are_accepted_and_the_first_signs() {
        let old = Keyring::new(&[A], b"t").unwrap();
        let rotating = Keyring::new(&[B, A], b"t").unwrap();
        let new = Keyring::new(&[B], b"t").unwrap();
        // The rotating node reads both; its messages are signed with B.
        assert!(rotating.open(&old.seal(b"x")).is_ok());
        assert!(rotating.open(&new.seal(b"x")).is_ok());
        assert!(new.open(&rotating.seal(b"x")).is_ok());
        assert_eq!(old.open(&rotating.seal(b"x")), Err(AuthError::UnknownKey));
        assert_eq!(rotating.signing_key_id(), new.signing_key_id());
    }

    #[test]
    fn bad_secrets_are_refused_and_debug_hides_keys() {
        assert!(Keyring::new::<&[u8]>(&[], b"t").is_err());
        assert!(Keyring::new(&[&b"short"[..]], b"t").is_err());
        assert!(Keyring::new(&[A, A, A, A, A], b"t").is_err());
        assert!(Keyring::new(&[vec![0u8; MAX_SECRET_BYTES + 1]], b"t").is_err());
        let shown = format!("{:?}", Keyring::new(&[A], b"t").unwrap());
        assert!(shown.starts_with("Keyring { key_ids: ["), "{shown}");
        assert!(!shown.contains("secret"));
    }
}

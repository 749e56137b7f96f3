//! Optional message authentication: a keyed BLAKE3 MAC around every sync
//! message, with up to [`MAX_SECRETS`] secrets accepted at once so a
//! secret can be rotated without a stop.
//!
//! ```text
//! byte 0       AUTH_MAGIC 0xCA
//! bytes 1-8    key id (which secret made the MAC)
//! bytes 9-16   sequence number (the sender engine's count of messages)
//! byte 17      0: broadcast (a hello), 1: to one recipient
//! bytes 18-49  MAC: keyed BLAKE3 of bytes 0-17, the recipient's sync id
//!              (for byte 17 = 1) and the message
//! rest         the message (`wire`, starting with WIRE_MAGIC 0xC9)
//! ```
//!
//! Each secret is stretched with BLAKE3's key derivation, under a fixed
//! context string, together with the sync topic: a message made for one
//! topic does not authenticate on another with the same secret. The key
//! id is a keyed hash of the derived key (it names the key without
//! revealing it), so a receiver checks one MAC, never one per secret.
//! The first secret of a [`Keyring`] signs; every one of them verifies.
//!
//! A message is bound to its recipient: the MAC covers the sync id
//! (replica and session) it was sent to, so it authenticates nowhere
//! else, and only a hello may be sealed as a broadcast. Replays to the
//! same recipient are refused by the sequence number, which the receiver
//! checks per sending session with a [`ReplayWindow`]; hellos, which
//! every session hears, by their HLC stamp (see `sync::engine`). The
//! secret authenticates the cluster, not a node: whoever holds it may
//! speak as any member.

use crate::error::{Error, Result};

/// First byte of an authenticated message.
pub const AUTH_MAGIC: u8 = 0xCA;
/// Bytes of a key id.
pub const KEY_ID_BYTES: usize = 8;
/// Bytes of a MAC.
pub const MAC_BYTES: usize = 32;
/// Bytes of the sequence number.
pub const SEQ_BYTES: usize = 8;
/// Bytes an authenticated message adds to the message it carries.
pub const FRAME_BYTES: usize = HEAD_BYTES + MAC_BYTES;
/// Bytes before the MAC: magic, key id, sequence number, recipient flag.
const HEAD_BYTES: usize = 1 + KEY_ID_BYTES + SEQ_BYTES + 1;
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

    /// `msg` in an authenticated frame, signed with the first secret:
    /// the sender's `seq`uence number, and the sync id it goes `to`
    /// (`None`: a broadcast).
    pub fn seal(&self, msg: &[u8], seq: u64, to: Option<&[u8]>) -> Vec<u8> {
        let k = &self.keys[0];
        let mut out = Vec::with_capacity(FRAME_BYTES + msg.len());
        out.push(AUTH_MAGIC);
        out.extend_from_slice(&k.id);
        out.extend_from_slice(&seq.to_be_bytes());
        out.push(u8::from(to.is_some()));
        let mac = mac(&k.key, &out, to, msg);
        out.extend_from_slice(mac.as_bytes());
        out.extend_from_slice(msg);
        out
    }

    /// The message inside an authenticated frame, once its MAC checks
    /// out with one of our secrets (compared in constant time) for a
    /// broadcast or for `me` (our sync id).
    pub fn open<'a>(
        &self,
        bytes: &'a [u8],
        me: &[u8],
    ) -> std::result::Result<Opened<'a>, AuthError> {
        if bytes.len() < FRAME_BYTES || bytes[0] != AUTH_MAGIC {
            return Err(AuthError::Missing);
        }
        let (head, rest) = bytes.split_at(HEAD_BYTES);
        let (tag, msg) = rest.split_at(MAC_BYTES);
        let key = self
            .keys
            .iter()
            .find(|k| k.id[..] == head[1..1 + KEY_ID_BYTES])
            .ok_or(AuthError::UnknownKey)?;
        let mut seq = [0u8; SEQ_BYTES];
        seq.copy_from_slice(&head[1 + KEY_ID_BYTES..1 + KEY_ID_BYTES + SEQ_BYTES]);
        let broadcast = match head[HEAD_BYTES - 1] {
            0 => true,
            1 => false,
            _ => return Err(AuthError::BadMac),
        };
        let mut theirs = [0u8; MAC_BYTES];
        theirs.copy_from_slice(tag);
        let to = (!broadcast).then_some(me);
        // `blake3::Hash`'s equality is constant-time.
        if mac(&key.key, head, to, msg) == blake3::Hash::from(theirs) {
            Ok(Opened {
                msg,
                seq: u64::from_be_bytes(seq),
                broadcast,
            })
        } else {
            Err(AuthError::BadMac)
        }
    }
}

/// An authenticated message, opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The message (`wire` bytes).
    pub msg: &'a [u8],
    /// The sender engine's sequence number of it.
    pub seq: u64,
    /// Sealed as a broadcast (only a hello may be).
    pub broadcast: bool,
}

/// The sequence numbers seen of one sending session: a number is taken
/// once, and only if it is above the floor and among the last
/// [`ReplayWindow::SPAN`] below the highest seen (older ones could be
/// replays it no longer remembers; the protocol takes them as lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Nothing at or below it is taken.
    floor: u64,
    /// The highest taken (`floor` before any).
    top: u64,
    /// Bit `i`: `top - i` was taken.
    seen: [u64; Self::SPAN / 64],
}

impl ReplayWindow {
    /// How far below the highest number a late message is still taken.
    pub const SPAN: usize = 1024;

    /// A window taking only numbers above `floor`.
    pub fn above(floor: u64) -> Self {
        ReplayWindow {
            floor,
            top: floor,
            seen: [0; Self::SPAN / 64],
        }
    }

    /// Take `seq`: false if it was taken before, is at or below the
    /// floor, or too far below the highest.
    pub fn take(&mut self, seq: u64) -> bool {
        if seq <= self.floor {
            return false;
        }
        if seq > self.top {
            self.shift(seq - self.top);
            self.top = seq;
            self.seen[0] |= 1;
            return true;
        }
        let d = (self.top - seq) as usize;
        if d >= Self::SPAN {
            return false;
        }
        let (word, bit) = (d / 64, d % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return false;
        }
        self.seen[word] |= 1 << bit;
        true
    }

    /// Age every bit by `by` positions.
    fn shift(&mut self, by: u64) {
        if by >= Self::SPAN as u64 {
            self.seen = [0; Self::SPAN / 64];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        let n = self.seen.len();
        for i in (0..n).rev() {
            let lo = if i >= words { self.seen[i - words] } else { 0 };
            let carry = if bits > 0 && i > words {
                self.seen[i - words - 1] >> (64 - bits)
            } else {
                0
            };
            self.seen[i] = if bits > 0 { (lo << bits) | carry } else { lo };
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

fn mac(key: &[u8; 32], head: &[u8], to: Option<&[u8]>, msg: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(head);
    if let Some(to) = to {
        // Length-prefixed: no (recipient, message) pair reads as another.
        h.update(&(to.len() as u64).to_le_bytes());
        h.update(to);
    }
    h.update(msg);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef-secret-a";
    const B: &[u8] = b"0123456789abcdef-secret-b";
    const ME: &[u8] = b"recipient sync id";

    #[test]
    fn a_sealed_message_opens_with_the_same_secret_topic_and_recipient_only() {
        let ring = Keyring::new(&[A], b"topic").unwrap();
        let sealed = ring.seal(b"\xC9hello", 7, Some(ME));
        assert_eq!(sealed.len(), FRAME_BYTES + 6);
        let opened = ring.open(&sealed, ME).unwrap();
        assert_eq!(
            (opened.msg, opened.seq, opened.broadcast),
            (&b"\xC9hello"[..], 7, false)
        );
        assert_eq!(ring.open(&sealed, b"someone else"), Err(AuthError::BadMac));
        let other_topic = Keyring::new(&[A], b"topic2").unwrap();
        assert_eq!(other_topic.open(&sealed, ME), Err(AuthError::UnknownKey));
        let other_secret = Keyring::new(&[B], b"topic").unwrap();
        assert_eq!(other_secret.open(&sealed, ME), Err(AuthError::UnknownKey));
        // A broadcast opens for anyone, and says so.
        let hello = ring.seal(b"\xC9hi", 8, None);
        assert!(ring.open(&hello, b"anyone").unwrap().broadcast);
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let ring = Keyring::new(&[A], b"t").unwrap();
        for to in [None, Some(ME)] {
            let sealed = ring.seal(b"\xC9\x04\x01payload", 3, to);
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert!(
                    ring.open(&bad, ME).is_err(),
                    "byte {i} altered was accepted"
                );
            }
            assert_eq!(
                ring.open(&sealed[..FRAME_BYTES - 1], ME),
                Err(AuthError::Missing)
            );
        }
        assert_eq!(ring.open(b"\xC9\x04\x01", ME), Err(AuthError::Missing));
    }

    #[test]
    fn a_forged_mac_with_a_known_key_id_is_refused() {
        let ring = Keyring::new(&[A], b"t").unwrap();
        let mut forged = ring.seal(b"\xC9original", 1, Some(ME));
        let n = forged.len();
        forged[FRAME_BYTES..n].copy_from_slice(b"\xC9tampered");
        assert_eq!(ring.open(&forged, ME), Err(AuthError::BadMac));
    }

    #[test]
    fn during_a_rotation_both_secrets_are_accepted_and_the_first_signs() {
        let old = Keyring::new(&[A], b"t").unwrap();
        let rotating = Keyring::new(&[B, A], b"t").unwrap();
        let new = Keyring::new(&[B], b"t").unwrap();
        // The rotating node reads both; its messages are signed with B.
        assert!(rotating.open(&old.seal(b"x", 1, None), ME).is_ok());
        assert!(rotating.open(&new.seal(b"x", 1, None), ME).is_ok());
        assert!(new.open(&rotating.seal(b"x", 1, None), ME).is_ok());
        assert_eq!(
            old.open(&rotating.seal(b"x", 1, None), ME),
            Err(AuthError::UnknownKey)
        );
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

    #[test]
    fn the_replay_window_takes_each_number_once_late_ones_within_its_span() {
        let mut w = ReplayWindow::above(10);
        assert!(!w.take(10) && !w.take(3), "at or below the floor");
        assert!(w.take(12) && w.take(11) && w.take(15));
        assert!(!w.take(12) && !w.take(11) && !w.take(15), "taken twice");
        assert!(w.take(14) && w.take(13));
        // A jump: everything within the span below stays remembered.
        assert!(w.take(15 + 100));
        assert!(!w.take(15) && !w.take(12) && w.take(16));
        let top = 15 + 100 + ReplayWindow::SPAN as u64;
        assert!(w.take(top));
        assert!(!w.take(top - ReplayWindow::SPAN as u64), "beyond the span");
        assert!(w.take(top - ReplayWindow::SPAN as u64 + 1));
        assert!(!w.take(top - ReplayWindow::SPAN as u64 + 1));
    }

    #[test]
    fn the_replay_window_agrees_with_a_set_of_everything_taken() {
        // Against a model: a number is taken iff above the floor, never
        // taken before, and within the span below the highest taken.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20 {
            let mut w = ReplayWindow::above(5);
            let mut taken = std::collections::BTreeSet::new();
            let mut top = 5u64;
            let mut base = 5u64;
            for _ in 0..5_000 {
                base += next() % 40;
                let seq = base.saturating_sub(next() % 1500);
                let expect = seq > 5
                    && !taken.contains(&seq)
                    && (seq > top || top - seq < ReplayWindow::SPAN as u64);
                assert_eq!(w.take(seq), expect, "seq {seq} top {top}");
                if expect {
                    taken.insert(seq);
                    top = top.max(seq);
                }
            }
        }
    }
}

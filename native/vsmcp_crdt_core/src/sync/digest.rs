//! An incrementally maintained digest of a replica's states, for
//! anti-entropy.
//!
//! Ids fall into [`BUCKETS`] buckets by a hash of the id; each bucket is the
//! wrapping sum of an item hash over its ids. The item hash ([`item_hash`],
//! the one hash of production and of the simulation test of the core)
//! covers the id, the record's generation, its kind and its state in digest
//! form (`canonical::digest_bytes`: for an OR-Set its causal context plus
//! the hash of the elements it reads as present), so any two copies that
//! read differently differ. Tombstones stay out of the digest.
//! A sum is order-independent and invertible, so an update costs O(1):
//! subtract the old item hash, add the new one. Two replicas holding equal
//! states have equal digests; the buckets where digests differ name the ids
//! worth exchanging.
//!
//! The hash is [`stable_hash`] (FNV-1a 64 with a SplitMix64 finalizer, fixed
//! constants): peers must agree on it, so it can be neither a randomly
//! seeded `HashMap` hasher nor anything that changes between builds. It is
//! not collision resistant against an adversary: a peer that forges a
//! collision can only make anti-entropy skip an exchange with it (what it
//! sends is validated like any peer input; see the sync guide's trust
//! model). The digest guards against lost messages, not against peers.
//!
//! The state bytes must be canonical (equal states, equal bytes): see
//! [`canonical_state_bytes`](super::canonical::canonical_state_bytes).

use crate::crdt::Crdt;
use crate::record::{encode_gen, Meta};
pub use crate::stable_hash::stable_hash;

/// Number of digest buckets. Changing it changes the wire protocol.
pub const BUCKETS: usize = 256;

/// The bucket of `id`.
pub fn bucket_of(id: &[u8]) -> u16 {
    (stable_hash(&[id]) % BUCKETS as u64) as u16
}

/// The contribution of one live record to its bucket: id, generation,
/// kind and state in its digest form (`canonical::digest_bytes`; times are
/// left out: they are labels, not state).
pub fn item_hash(id: &[u8], meta: &Meta, crdt: &Crdt) -> u64 {
    let gen = encode_gen(&meta.gen);
    let state = super::canonical::digest_bytes(crdt);
    stable_hash(&[id, &gen, &[meta.kind.code()], &state])
}

/// Bucket sums of the item hashes of a replica's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    buckets: [u64; BUCKETS],
}

impl Default for Digest {
    fn default() -> Self {
        Self::new()
    }
}

impl Digest {
    /// The digest of no states.
    pub fn new() -> Self {
        Digest {
            buckets: [0; BUCKETS],
        }
    }

    /// `id`'s item hash changed from `old` to `new` (`None`: absent).
    pub fn replace_hash(&mut self, id: &[u8], old: Option<u64>, new: Option<u64>) {
        let b = &mut self.buckets[bucket_of(id) as usize];
        if let Some(old) = old {
            *b = b.wrapping_sub(old);
        }
        if let Some(new) = new {
            *b = b.wrapping_add(new);
        }
    }

    /// One hash of all buckets (announced in `Hello`: equal roots mean
    /// equal digests, with overwhelming probability).
    pub fn root(&self) -> u64 {
        let parts: Vec<[u8; 8]> = self.buckets.iter().map(|b| b.to_le_bytes()).collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        stable_hash(&refs)
    }

    /// The bucket sums, as a `DigestRequest` carries them.
    pub fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// Indices of the buckets that differ from `other`, increasing. A
    /// digest of the wrong length differs everywhere.
    pub fn diff(&self, other: &[u64]) -> Vec<u16> {
        if other.len() != BUCKETS {
            return (0..BUCKETS as u16).collect();
        }
        (0..BUCKETS)
            .filter(|&i| self.buckets[i] != other[i])
            .map(|i| i as u16)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Gen;
    use crate::stable_hash::{mix, FNV_OFFSET};
    use crate::Kind;

    #[test]
    fn hash_is_pinned() {
        // Peers of different builds must agree: pin a few values.
        assert_eq!(stable_hash(&[]), mix(FNV_OFFSET));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(
            [bucket_of(b""), bucket_of(b"a"), bucket_of(b"counter:1")],
            PINNED_BUCKETS
        );
        assert_eq!(stable_hash(&[b"a", b"b"]), PINNED_PAIR);
        let meta = Meta {
            kind: Kind::GCounter,
            created_by: std::sync::Arc::from(&b"r"[..]),
            created_at: 0,
            updated_at: 0,
            gen: Gen::default(),
            deleted: false,
        };
        let item = item_hash(b"a", &meta, &Crdt::new(Kind::GCounter));
        assert_eq!(item, PINNED_ITEM);
    }

    const PINNED_BUCKETS: [u16; 3] = [19, 29, 17];
    const PINNED_PAIR: u64 = 3_196_273_102_744_022_582;
    const PINNED_ITEM: u64 = 14_686_814_547_275_047_505;

    /// A stand-in item hash of `(id, state)`.
    fn h(id: &[u8], state: &[u8]) -> u64 {
        stable_hash(&[id, state])
    }

    #[test]
    fn incremental_equals_from_scratch() {
        let mut a = Digest::new();
        a.replace_hash(b"x", None, Some(h(b"x", b"1")));
        a.replace_hash(b"y", None, Some(h(b"y", b"1")));
        a.replace_hash(b"x", Some(h(b"x", b"1")), Some(h(b"x", b"2")));
        a.replace_hash(b"z", None, Some(h(b"z", b"9")));
        a.replace_hash(b"z", Some(h(b"z", b"9")), None);
        let mut b = Digest::new();
        b.replace_hash(b"y", None, Some(h(b"y", b"1")));
        b.replace_hash(b"x", None, Some(h(b"x", b"2")));
        assert_eq!(a, b);
        assert!(a.diff(b.buckets()).is_empty());
        b.replace_hash(b"y", Some(h(b"y", b"1")), Some(h(b"y", b"3")));
        assert_eq!(a.diff(b.buckets()), vec![bucket_of(b"y")]);
        assert_eq!(a.diff(&[0; 3]).len(), BUCKETS);
    }
}

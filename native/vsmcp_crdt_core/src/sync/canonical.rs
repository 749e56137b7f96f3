//! Canonical bytes of a CRDT state, for hashing into the digest.
//!
//! [`Crdt::encode`] is canonical for counters and registers (entries sorted
//! by replica) but not for OR-Sets, whose bytes follow the order in which a
//! replica happened to intern replicas and insert elements. Anti-entropy
//! needs *equal states, equal bytes*, so an OR-Set is hashed through its
//! normalized form (the one its `PartialEq` compares).

use crate::crdt::Crdt;
use serde_bytes::Bytes;

/// A dot in canonical form: replica bytes, counter, remove tag.
type DotRef<'a> = (&'a Bytes, u64, bool);

/// Marks canonical OR-Set bytes (never a valid `Crdt::encode` header).
const CANONICAL_ORSET: u8 = 0xCA;

/// Bytes equal for equal states (`a == b` implies equal bytes, and equal
/// bytes imply `a == b`). For hashing only: an OR-Set's canonical form does
/// not decode with [`Crdt::decode`].
pub fn canonical_state_bytes(c: &Crdt) -> Vec<u8> {
    match c {
        Crdt::ORSet(s) => {
            let n = s.normalized();
            let elems: Vec<(&Bytes, Vec<DotRef<'_>>)> = n
                .elems
                .iter()
                .map(|(e, dots)| {
                    (
                        Bytes::new(e),
                        dots.iter()
                            .map(|(r, k, rm)| (Bytes::new(r.as_bytes()), *k, *rm))
                            .collect(),
                    )
                })
                .collect();
            let vv: Vec<(&Bytes, u64)> = n
                .ctx
                .vv
                .iter()
                .map(|(r, k)| (Bytes::new(r.as_bytes()), *k))
                .collect();
            let cloud: Vec<(&Bytes, u64)> = n
                .ctx
                .cloud
                .iter()
                .map(|(r, k)| (Bytes::new(r.as_bytes()), *k))
                .collect();
            let mut out = vec![CANONICAL_ORSET, c.kind().code()];
            let res = rmp_serde::encode::write(&mut out, &(n.policy, elems, vv, cloud));
            // Writing to a Vec cannot fail, and every field is serializable.
            debug_assert!(res.is_ok());
            out
        }
        other => other.encode(),
    }
}

/// Marks the digest form of an OR-Set.
const DIGEST_ORSET: u8 = 0xCB;

/// The bytes hashed into the digest: everything a replica reads, so that
/// any two copies that read differently have different digests and
/// exchange states (anti-entropy never stops while they differ).
///
/// Counters and registers: their canonical bytes. An OR-Set (either
/// policy): its causal context plus the order-independent hash of the
/// elements it reads as present ([`ORSet::value_hash`](crate::orset::ORSet::value_hash)),
/// O(elements) without allocating, instead of the normalized form's sorted
/// copy of every dot. Two copies with equal contexts but different values
/// (one collected a remove token unsafely, one missed a remove that makes
/// no dot) therefore differ; two that read the same but keep different
/// internal dots (one collected its tokens, one not yet) do not, as they
/// should not.
pub fn digest_bytes(c: &Crdt) -> Vec<u8> {
    match c {
        Crdt::ORSet(s) => {
            let ctx = s.causal_context();
            let vv: Vec<(&Bytes, u64)> = ctx
                .vv
                .iter()
                .map(|(r, k)| (Bytes::new(r.as_bytes()), *k))
                .collect();
            let cloud: Vec<(&Bytes, u64)> = ctx
                .cloud
                .iter()
                .map(|(r, k)| (Bytes::new(r.as_bytes()), *k))
                .collect();
            let mut out = vec![DIGEST_ORSET, c.kind().code()];
            let res = rmp_serde::encode::write(&mut out, &(vv, cloud, s.value_hash()));
            debug_assert!(res.is_ok());
            out
        }
        other => canonical_state_bytes(other),
    }
}

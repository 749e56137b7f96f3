//! What the cold tier stores per id: metadata plus the CRDT state, and the
//! RocksDB merge operator that joins records.
//!
//! Every mutation is persisted as a RocksDB *merge operand* holding only the
//! delta (plus metadata), so adding one element to a 1M-element set writes
//! a few dozen bytes; RocksDB folds operands into the base record with
//! [`merge_records`] on reads and compactions. Because the fold is a CRDT
//! join it is commutative, associative and idempotent: operand order,
//! partial merges and replays after a crash cannot change the result.
//!
//! Record wire format (versioned like deltas):
//! `[RECORD_MAGIC, RECORD_VERSION]` + MessagePack
//! `(kind code, created_by, created_at_ms, updated_at_ms, Crdt::encode bytes,
//! epoch, create stamp, create replica, deleted)`. Version 1 records (no
//! generation) read as generation [`Gen::LEGACY`].
//!
//! **Generations.** Every record carries the [`Gen`] of the `create` that
//! made it. Two records of one id join by [`Gen::precedence`]: a record of
//! a higher epoch (a re-create after a delete) wins whole; in one epoch the
//! create with the smaller `(stamp, replica)` wins whole, so two nodes that
//! create one id concurrently, even with different types, end with the
//! same winner everywhere. Only records of the same generation join their
//! states. The same rule is the RocksDB merge operator, so disk and memory
//! agree.

use crate::crdt::{Crdt, Kind};
use crate::error::{Error, Result};
use serde_bytes::{ByteBuf, Bytes};
use std::sync::Arc;

pub const RECORD_MAGIC: u8 = 0xC8;
/// Bytes of a store's replica id: its directory's random id, then the
/// incarnation.
pub const REPLICA_BYTES: usize = 24;
/// Bytes of the directory part of a replica id.
pub const DIRECTORY_BYTES: usize = 16;
pub const RECORD_VERSION: u8 = 2;

/// The generation of an id: which `create` made the state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Gen {
    /// 0 for the first create; a create over a tombstone of epoch `e` gets
    /// `e + 1`.
    pub epoch: u32,
    /// The creating replica's HLC at the create, as `Timestamp::to_u64`.
    pub stamp: u64,
    /// The creating replica.
    pub replica: Arc<[u8]>,
}

impl Gen {
    /// The generation of records written before generations existed: in
    /// epoch 0 it wins over every concurrent create (smallest stamp).
    pub fn legacy() -> Gen {
        Gen::default()
    }

    /// Which of two generations wins: `Greater` when `self` does.
    pub fn precedence(&self, other: &Gen) -> std::cmp::Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| (other.stamp, &other.replica[..]).cmp(&(self.stamp, &self.replica[..])))
    }
}

/// Per-id metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Canonical term bytes of the creating node id (shared: every id a
    /// store creates names the same node).
    pub created_by: Arc<[u8]>,
    pub created_at: u64,
    pub updated_at: u64,
    /// The create this state descends from (see the module docs).
    pub gen: Gen,
    /// A tombstone: the id was deleted in generation `gen` (sync entries
    /// only; the store keeps tombstones apart from records).
    pub deleted: bool,
}

impl Meta {
    /// Which of two records of one id wins whole: the generation's
    /// precedence, then, for two kinds claiming one generation (records
    /// from before generations existed, or forged ones), the larger kind
    /// code, so that every replica picks the same. `Equal`: same generation
    /// and kind, the states join.
    pub fn wins_over(&self, other: &Meta) -> std::cmp::Ordering {
        self.gen
            .precedence(&other.gen)
            .then_with(|| self.kind.code().cmp(&other.kind.code()))
    }

    /// Join of the same generation: the earliest creation wins (ties broken
    /// by node), latest update, deleted if either is.
    pub fn join(&mut self, other: &Meta) {
        self.deleted |= other.deleted;
        if (other.created_at, &other.created_by) < (self.created_at, &self.created_by) {
            self.created_at = other.created_at;
            self.created_by = other.created_by.clone();
        }
        self.updated_at = self.updated_at.max(other.updated_at);
    }
}

/// Metadata plus a CRDT state (or, as a merge operand, a delta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub meta: Meta,
    pub crdt: Crdt,
}

/// A delete tombstone: the generation deleted and the HLC stamp of the
/// delete (`Timestamp::to_u64`).
///
/// It kills a record of generation `g` when `gen` wins over or equals `g`
/// (the deleted generation, the creates it beat, and every update of them)
/// **and** `g` was created before the delete (`g.stamp < at`). The second
/// condition makes a create that came after the delete survive it even on
/// a node that never saw the delete, or that already collected the
/// tombstone (see `sync::engine`), so tombstones can be collected without
/// a later re-create being killed by a peer that still holds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tomb {
    pub gen: Gen,
    pub at: u64,
}

impl Tomb {
    /// The tombstone of a delete of `gen` at HLC stamp `at` (at least just
    /// after the create: a delete observed its create).
    pub fn new(gen: Gen, at: u64) -> Tomb {
        let at = at.max(gen.stamp.saturating_add(1));
        Tomb { gen, at }
    }

    /// The tombstone a sync entry with `meta.deleted` carries: its
    /// generation, and the delete's stamp in `updated_at` (an entry of an
    /// older build carries wall ms there, which reads as a stamp just after
    /// the create).
    pub fn of_entry(meta: &Meta) -> Tomb {
        Tomb::new(meta.gen.clone(), meta.updated_at)
    }

    /// Whether this tombstone kills records of generation `g`.
    pub fn kills(&self, g: &Gen) -> bool {
        self.gen.precedence(g).is_ge() && g.stamp < self.at
    }

    /// Whether this tombstone kills everything `other` kills (and so
    /// makes it redundant): its generation is at least as strong and its
    /// delete no earlier.
    pub fn covers(&self, other: &Tomb) -> bool {
        self.gen.precedence(&other.gen).is_ge() && self.at >= other.at
    }

    /// The metadata of this tombstone as a sync entry (see
    /// [`Tomb::of_entry`]).
    pub fn entry_meta(&self) -> Meta {
        Meta {
            kind: Kind::GCounter,
            created_by: Arc::from(&[][..]),
            created_at: 0,
            updated_at: self.at,
            gen: self.gen.clone(),
            deleted: true,
        }
    }
}

/// Most tombstones one id keeps apart (see [`Tombs`]).
pub const MAX_TOMBS: usize = 8;

/// The tombstones of one id: an antichain under [`Tomb::covers`] (none
/// makes another redundant), kept in a canonical order. A record is killed
/// when one of them kills it, so the join (the union, minus what is
/// covered) kills exactly what the deletes it holds kill, whatever the
/// order they arrive in. Two deletes of one id usually give one tombstone
/// (the later covers the earlier); several stay apart only for concurrent
/// creates deleted separately. Past [`MAX_TOMBS`] (hostile input) they
/// collapse into one with the strongest generation and the latest delete,
/// which kills at least as much.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tombs(Vec<Tomb>);

impl Tombs {
    pub fn one(t: Tomb) -> Tombs {
        Tombs(vec![t])
    }

    /// Whether one of the tombstones kills records of generation `g`.
    pub fn kills(&self, g: &Gen) -> bool {
        self.0.iter().any(|t| t.kills(g))
    }

    /// The join of two sets: commutative and idempotent; associative
    /// while the union keeps at most [`MAX_TOMBS`] apart (beyond, the
    /// collapse makes it depend on grouping, never on order).
    pub fn join(a: Option<Tombs>, b: Option<Tombs>) -> Option<Tombs> {
        match b {
            Some(b) => Some(b.over(a)),
            None => a,
        }
    }

    /// These joined with `held` (the ones an id had, if any).
    pub fn over(self, held: Option<Tombs>) -> Tombs {
        match held {
            Some(mut held) => {
                for t in self.0 {
                    held.insert(t);
                }
                held.bound();
                held
            }
            None => self,
        }
    }

    /// Add `t` to the antichain (the result of a union does not depend on
    /// the order of insertion).
    fn insert(&mut self, t: Tomb) {
        if self.0.iter().any(|have| have.covers(&t)) {
            return;
        }
        self.0.retain(|have| !t.covers(have));
        self.0.push(t);
    }

    /// Collapse past [`MAX_TOMBS`], and sort.
    fn bound(&mut self) {
        if self.0.len() > MAX_TOMBS {
            let at = self.0.iter().map(|t| t.at).max().unwrap_or(0);
            let mut gens = self.0.drain(..).map(|t| t.gen);
            let first = gens.next().unwrap_or_default();
            let gen = gens.fold(first, |a, b| if b.precedence(&a).is_gt() { b } else { a });
            self.0.push(Tomb { gen, at });
        }
        self.0.sort_by(|a, b| {
            (a.gen.epoch, a.gen.stamp, &a.gen.replica[..], a.at).cmp(&(
                b.gen.epoch,
                b.gen.stamp,
                &b.gen.replica[..],
                b.at,
            ))
        });
    }

    /// The tombstones, in canonical order (at least one).
    pub fn iter(&self) -> impl Iterator<Item = &Tomb> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The epoch a create over these tombstones starts: after every one.
    pub fn next_epoch(&self) -> u32 {
        self.0
            .iter()
            .map(|t| t.gen.epoch.saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// The latest delete among them.
    pub fn latest(&self) -> u64 {
        self.0.iter().map(|t| t.at).max().unwrap_or(0)
    }

    /// One of them as a sync entry: the one of the strongest generation.
    pub fn entry_meta(&self) -> Meta {
        let strongest = self.0.iter().reduce(|a, b| {
            if b.gen.precedence(&a.gen).is_gt() {
                b
            } else {
                a
            }
        });
        match strongest {
            Some(t) => t.entry_meta(),
            None => Tomb::new(Gen::legacy(), 0).entry_meta(),
        }
    }
}

/// Encoding of an id's tombstones (stored under `cold::TOMB_PREFIX ++ id`):
/// a MessagePack array of `(epoch, stamp, replica, at)`. A single tuple
/// (one tombstone, before sets) and `(epoch, stamp, replica)` (before `at`
/// existed: read with `at` just after the create) are read too.
pub fn encode_tombs(ts: &Tombs) -> Vec<u8> {
    let body: Vec<_> =
        ts.0.iter()
            .map(|t| (t.gen.epoch, t.gen.stamp, Bytes::new(&t.gen.replica), t.at))
            .collect();
    let mut out = Vec::with_capacity(32 * body.len());
    let res = rmp_serde::encode::write(&mut out, &body);
    debug_assert!(res.is_ok());
    out
}

/// Inverse of [`encode_tombs`].
pub fn decode_tombs(bytes: &[u8]) -> Result<Tombs> {
    type Wire = (u32, u64, ByteBuf, u64);
    let tomb = |(epoch, stamp, replica, at): Wire| {
        let gen = Gen {
            epoch,
            stamp,
            replica: Arc::from(replica.into_vec()),
        };
        Tomb::new(gen, at)
    };
    if let Ok(list) = rmp_serde::from_slice::<Vec<Wire>>(bytes) {
        let mut out = Tombs(Vec::new());
        for w in list.into_iter().take(4 * MAX_TOMBS) {
            out.insert(tomb(w));
        }
        if out.is_empty() {
            return Err(Error::Decode("no tombstone".into()));
        }
        out.bound();
        return Ok(out);
    }
    decode_tomb(bytes).map(Tombs::one)
}

/// MessagePack `(epoch, stamp, replica)` of a generation (the digest's
/// form of it).
pub fn encode_gen(gen: &Gen) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + gen.replica.len());
    let res = rmp_serde::encode::write(&mut out, &(gen.epoch, gen.stamp, Bytes::new(&gen.replica)));
    debug_assert!(res.is_ok());
    out
}

/// One tombstone as stored before [`Tombs`]: `(epoch, stamp, replica, at)`,
/// or `(epoch, stamp, replica)` from before `at` existed (read with `at`
/// just after the create).
pub fn decode_tomb(bytes: &[u8]) -> Result<Tomb> {
    let gen = |epoch, stamp, replica: ByteBuf| Gen {
        epoch,
        stamp,
        replica: Arc::from(replica.into_vec()),
    };
    if let Ok((epoch, stamp, replica, at)) =
        rmp_serde::from_slice::<(u32, u64, ByteBuf, u64)>(bytes)
    {
        return Ok(Tomb::new(gen(epoch, stamp, replica), at));
    }
    let (epoch, stamp, replica): (u32, u64, ByteBuf) =
        rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))?;
    Ok(Tomb::new(gen(epoch, stamp, replica), 0))
}

/// What [`Record::absorb`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// Same generation: the states were joined.
    Joined,
    /// The other record's generation won: it replaced this one.
    Replaced,
    /// This record's generation won: the other was dropped.
    Dropped,
}

impl Record {
    /// Join by generation (see the module docs and [`Meta::wins_over`]).
    pub fn join(&mut self, other: &Record) -> Result<()> {
        self.absorb(&other.meta, &other.crdt).map(|_| ())
    }

    /// [`Record::join`] with `(meta, crdt)`, reporting what happened.
    pub fn absorb(&mut self, meta: &Meta, crdt: &Crdt) -> Result<Absorbed> {
        match meta.wins_over(&self.meta) {
            std::cmp::Ordering::Less => Ok(Absorbed::Dropped),
            std::cmp::Ordering::Greater => {
                self.meta = meta.clone();
                let mut c = Crdt::new(meta.kind);
                c.join(crdt)?;
                self.crdt = c;
                Ok(Absorbed::Replaced)
            }
            std::cmp::Ordering::Equal => {
                self.crdt.join(crdt)?;
                self.meta.join(meta);
                Ok(Absorbed::Joined)
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_parts(&self.meta, &self.crdt.encode())
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let (meta, body) = decode_parts(bytes)?;
        let crdt = Crdt::decode(body)?;
        if crdt.kind() != meta.kind {
            return Err(Error::Decode("record kind does not match its state".into()));
        }
        Ok(Record { meta, crdt })
    }
}

/// Encode metadata with already-encoded CRDT bytes (the warm tier keeps
/// states encoded, so demotion to disk needs no re-encoding).
pub fn encode_parts(meta: &Meta, crdt_bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crdt_bytes.len() + 32 + meta.created_by.len());
    out.push(RECORD_MAGIC);
    out.push(RECORD_VERSION);
    let body = (
        meta.kind.code(),
        Bytes::new(&meta.created_by),
        meta.created_at,
        meta.updated_at,
        Bytes::new(crdt_bytes),
        meta.gen.epoch,
        meta.gen.stamp,
        Bytes::new(&meta.gen.replica),
        meta.deleted,
    );
    let res = rmp_serde::encode::write(&mut out, &body);
    debug_assert!(res.is_ok());
    out
}

/// Decode metadata and return the encoded CRDT bytes without decoding them.
pub fn decode_parts(bytes: &[u8]) -> Result<(Meta, &[u8])> {
    let (body, version) = match bytes {
        [RECORD_MAGIC, v @ (1 | RECORD_VERSION), body @ ..] => (body, *v),
        [RECORD_MAGIC, v, ..] => return Err(Error::UnsupportedVersion(*v)),
        _ => return Err(Error::Decode("not a vsmcp_crdt record".into())),
    };
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    let de_err = |e: rmp_serde::decode::Error| Error::Decode(e.to_string());
    let (kind, created_by, created_at, updated_at, crdt, gen, deleted) = if version == 1 {
        let (kind, created_by, created_at, updated_at, crdt): (u8, ByteBuf, u64, u64, &Bytes) =
            serde::Deserialize::deserialize(&mut de).map_err(de_err)?;
        (
            kind,
            created_by,
            created_at,
            updated_at,
            crdt,
            Gen::legacy(),
            false,
        )
    } else {
        type V2<'b> = (u8, ByteBuf, u64, u64, &'b Bytes, u32, u64, ByteBuf, bool);
        let (kind, created_by, created_at, updated_at, crdt, epoch, stamp, replica, deleted): V2 =
            serde::Deserialize::deserialize(&mut de).map_err(de_err)?;
        let gen = Gen {
            epoch,
            stamp,
            replica: Arc::from(replica.into_vec()),
        };
        (kind, created_by, created_at, updated_at, crdt, gen, deleted)
    };
    // `from_read_ref`'s `get_ref` is the whole input, not the unread rest:
    // check for trailing bytes by trying to read one more value.
    match <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        _ => return Err(Error::Decode("trailing bytes in record".into())),
    }
    Ok((
        Meta {
            kind: Kind::from_code(kind)?,
            created_by: Arc::from(created_by.into_vec()),
            created_at,
            updated_at,
            gen,
            deleted,
        },
        crdt,
    ))
}

/// Fold `existing` and `operands` with the record join. Used by RocksDB for
/// both full and partial merges. Returns `None` (RocksDB reports corruption)
/// only if a stored record cannot be decoded.
pub fn merge_records<'a>(
    existing: Option<&[u8]>,
    operands: impl Iterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let mut operands = operands.peekable();
    // A record with nothing to fold into it (the common case for an id
    // created and not yet compacted) is returned as it is.
    if existing.is_none() {
        let first = operands.next()?;
        if operands.peek().is_none() {
            return decode_parts(first).is_ok().then(|| first.to_vec());
        }
        return fold(Some(Record::decode(first).ok()?), operands);
    }
    let acc = existing.map(Record::decode).transpose().ok()?;
    fold(acc, operands)
}

fn fold<'a>(mut acc: Option<Record>, operands: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    for op in operands {
        let rec = Record::decode(op).ok()?;
        match &mut acc {
            None => acc = Some(rec),
            Some(a) => {
                if a.join(&rec).is_err() {
                    // States of one generation and kind that do not join
                    // (too many replicas): the newer operand wins, as a
                    // record written over it.
                    *a = rec;
                }
            }
        }
    }
    acc.map(|r| r.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::ReplicaId;
    use crate::crdt::Op;

    fn tomb(epoch: u32, stamp: u64, r: u8, at: u64) -> Tomb {
        Tomb::new(
            Gen {
                epoch,
                stamp,
                replica: Arc::from(&[r][..]),
            },
            at,
        )
    }

    #[test]
    fn tombstone_sets_join_as_a_lattice_and_kill_their_union() {
        // A small deterministic sweep of tombstones and generations.
        let mut all = Vec::new();
        for epoch in 0..2 {
            for stamp in [10, 20, 30] {
                for at in [15, 25, 35] {
                    if at > stamp {
                        all.push(tomb(epoch, stamp, (stamp % 7) as u8, at));
                    }
                }
            }
        }
        let sets: Vec<Tombs> = all
            .chunks(3)
            .map(|c| {
                c.iter()
                    .fold(None, |acc, t| Tombs::join(acc, Some(Tombs::one(t.clone()))))
                    .unwrap()
            })
            .collect();
        let gens: Vec<Gen> = (0..2)
            .flat_map(|epoch| {
                [5, 12, 22, 33, 40].map(|stamp| Gen {
                    epoch,
                    stamp,
                    replica: Arc::from(&[1][..]),
                })
            })
            .collect();
        let j = |a: &Tombs, b: &Tombs| Tombs::join(Some(a.clone()), Some(b.clone())).unwrap();
        for a in &sets {
            assert_eq!(&j(a, a), a);
            for b in &sets {
                assert_eq!(j(a, b), j(b, a));
                for g in &gens {
                    assert_eq!(j(a, b).kills(g), a.kills(g) || b.kills(g));
                }
                for c in &sets {
                    assert_eq!(j(&j(a, b), c), j(a, &j(b, c)));
                }
            }
        }
        // Stored and read back, and the formats before sets.
        for s in &sets {
            assert_eq!(&decode_tombs(&encode_tombs(s)).unwrap(), s);
        }
        let old = rmp_serde::to_vec(&(1u32, 20u64, Bytes::new(b"r"), 25u64)).unwrap();
        assert_eq!(
            decode_tombs(&old).unwrap(),
            Tombs::one(tomb(1, 20, b'r', 25))
        );
        let older = rmp_serde::to_vec(&(1u32, 20u64, Bytes::new(b"r"))).unwrap();
        assert_eq!(
            decode_tombs(&older).unwrap(),
            Tombs::one(tomb(1, 20, b'r', 21))
        );
        assert!(decode_tombs(b"junk").is_err());
    }

    #[test]
    fn hostile_tombstone_sets_stay_bounded_and_kill_at_least_as_much() {
        let mut set: Option<Tombs> = None;
        let mut parts = Vec::new();
        for i in 0..100u64 {
            // Stronger generations deleted earlier: none covers another.
            let t = tomb(0, 1000 - i, 0, 5000 - i);
            parts.push(t.clone());
            set = Tombs::join(set, Some(Tombs::one(t)));
        }
        let set = set.unwrap();
        assert!(set.len() <= MAX_TOMBS && set.len() > 1, "{}", set.len());
        for t in &parts {
            assert!(set.kills(&t.gen));
        }
    }

    #[test]
    fn operands_fold_to_the_joined_state() {
        let r = ReplicaId::from("n");
        let meta = Meta {
            kind: Kind::ORSet,
            created_by: b"n".to_vec().into(),
            created_at: 5,
            updated_at: 5,
            gen: Gen::legacy(),
            deleted: false,
        };
        let mut state = Crdt::new(Kind::ORSet);
        let base = Record {
            meta: meta.clone(),
            crdt: state.clone(),
        }
        .encode();
        let mut ops = Vec::new();
        for e in [&b"a"[..], b"b", b"c"] {
            let d = state.mutate(&r, Op::Add(e)).unwrap();
            ops.push(
                Record {
                    meta: Meta {
                        updated_at: 9,
                        ..meta.clone()
                    },
                    crdt: d,
                }
                .encode(),
            );
        }
        let merged = merge_records(Some(&base), ops.iter().rev().map(|v| &v[..])).unwrap();
        let rec = Record::decode(&merged).unwrap();
        assert_eq!(rec.crdt, state);
        assert_eq!(rec.meta.updated_at, 9);
        assert_eq!(rec.meta.created_at, 5);
        assert!(merge_records(Some(b"junk"), std::iter::empty()).is_none());
    }
}

//! The closed family of CRDTs and their versioned wire format.
//!
//! [`Crdt`] is what the NIF and the store hold: one enum so a delta that
//! arrives as bytes can be joined into whatever state the API reads.
//!
//! Wire format (states and deltas alike):
//!
//! ```text
//! byte 0   MAGIC  0xC7
//! byte 1   FORMAT_VERSION (1)
//! byte 2   kind code (see [`Kind`])
//! rest     MessagePack body (rmp-serde, structs as arrays)
//! ```
//!
//! Decoding validates everything (replica indices, duplicate entries,
//! trailing bytes) and returns `Err`, never panics. Golden vectors in
//! `tests/codec.rs` pin the bytes.

use crate::causal::ReplicaId;
use crate::error::{Error, Result};
use crate::gcounter::GCounter;
use crate::hlc::Timestamp;
use crate::lww::{LwwEntry, LwwRegister};
use crate::orset::{ORSet, Policy};
use crate::pncounter::PNCounter;
use serde::Deserialize;
use serde_bytes::ByteBuf;

pub const MAGIC: u8 = 0xC7;
pub const FORMAT_VERSION: u8 = 1;

/// CRDT kinds, with their stable wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    GCounter,
    PNCounter,
    /// Remove-wins observed-remove set.
    ORSet,
    /// Add-wins observed-remove set.
    AWSet,
    LwwRegister,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::GCounter,
        Kind::PNCounter,
        Kind::ORSet,
        Kind::AWSet,
        Kind::LwwRegister,
    ];

    pub fn code(self) -> u8 {
        match self {
            Kind::GCounter => 1,
            Kind::PNCounter => 2,
            Kind::ORSet => 3,
            Kind::AWSet => 4,
            Kind::LwwRegister => 5,
        }
    }

    pub fn from_code(c: u8) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.code() == c)
            .ok_or_else(|| Error::Decode(format!("unknown CRDT kind {c}")))
    }

    /// The Elixir-facing name (`:g_counter`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::GCounter => "g_counter",
            Kind::PNCounter => "pn_counter",
            Kind::ORSet => "or_set",
            Kind::AWSet => "aw_set",
            Kind::LwwRegister => "lww_register",
        }
    }

    pub fn from_name(n: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == n)
    }
}

/// One CRDT state or delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crdt {
    GCounter(GCounter),
    PNCounter(PNCounter),
    /// Boxed: an OR-Set is several times larger than the other states, and
    /// the store keeps one `Crdt` per id.
    ORSet(Box<ORSet>),
    LwwRegister(LwwRegister),
}

/// A mutation, with payloads already in canonical term bytes.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    Increment(u64),
    Decrement(u64),
    Add(&'a [u8]),
    Remove(&'a [u8]),
    Set(&'a [u8], Timestamp),
}

/// An operation as the API states it (amounts signed, as callers give
/// them), before it is fitted to a kind with [`Mutation::fit`]. The one
/// parser behind both the store and the pure `Types.*` modules.
#[derive(Debug, Clone, Copy)]
pub enum Mutation<'a> {
    Increment(i128),
    Decrement(i128),
    Add(&'a [u8]),
    Remove(&'a [u8]),
    Set(&'a [u8]),
}

impl<'a> Mutation<'a> {
    /// Fit to `kind`. `Ok(None)` is a no-op. One rule for every caller: a
    /// PN-Counter increment by a negative n decrements (a decrement by a
    /// negative n increments); a G-Counter ignores n <= 0. An amount beyond
    /// the 64-bit counter range is `Error::Overflow`. A register's
    /// timestamp is `Timestamp::ZERO`: the caller stamps it.
    pub fn fit(self, kind: Kind) -> Result<Option<Op<'a>>> {
        fn amount(n: i128) -> Result<u64> {
            u64::try_from(n.unsigned_abs()).map_err(|_| Error::Overflow)
        }
        Ok(match (kind, self) {
            (Kind::GCounter, Mutation::Increment(n)) if n <= 0 => None,
            (Kind::GCounter, Mutation::Increment(n)) => Some(Op::Increment(amount(n)?)),
            (Kind::PNCounter, Mutation::Increment(0) | Mutation::Decrement(0)) => None,
            (Kind::PNCounter, Mutation::Increment(n)) if n > 0 => Some(Op::Increment(amount(n)?)),
            (Kind::PNCounter, Mutation::Increment(n)) => Some(Op::Decrement(amount(n)?)),
            (Kind::PNCounter, Mutation::Decrement(n)) if n > 0 => Some(Op::Decrement(amount(n)?)),
            (Kind::PNCounter, Mutation::Decrement(n)) => Some(Op::Increment(amount(n)?)),
            (Kind::ORSet | Kind::AWSet, Mutation::Add(e)) => Some(Op::Add(e)),
            (Kind::ORSet | Kind::AWSet, Mutation::Remove(e)) => Some(Op::Remove(e)),
            (Kind::LwwRegister, Mutation::Set(v)) => Some(Op::Set(v, Timestamp::ZERO)),
            _ => return Err(Error::UnsupportedOperation),
        })
    }
}

/// The value of a CRDT, in core terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Counter(i128),
    Set(Vec<&'a [u8]>),
    Register(Option<&'a [u8]>),
}

impl Crdt {
    pub fn new(kind: Kind) -> Crdt {
        match kind {
            Kind::GCounter => Crdt::GCounter(GCounter::new()),
            Kind::PNCounter => Crdt::PNCounter(PNCounter::new()),
            Kind::ORSet => Crdt::ORSet(Box::new(ORSet::new(Policy::RemoveWins))),
            Kind::AWSet => Crdt::ORSet(Box::new(ORSet::new(Policy::AddWins))),
            Kind::LwwRegister => Crdt::LwwRegister(LwwRegister::new()),
        }
    }

    /// The bottom element of `kind` as a *delta*: the starting point of a
    /// delta group (an OR-Set delta is scoped, see `orset`).
    pub fn empty_delta(kind: Kind) -> Crdt {
        match Crdt::new(kind) {
            Crdt::ORSet(s) => Crdt::ORSet(Box::new(ORSet::empty_delta(s.policy()))),
            other => other,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Crdt::GCounter(_) => Kind::GCounter,
            Crdt::PNCounter(_) => Kind::PNCounter,
            Crdt::ORSet(s) if s.policy() == Policy::RemoveWins => Kind::ORSet,
            Crdt::ORSet(_) => Kind::AWSet,
            Crdt::LwwRegister(_) => Kind::LwwRegister,
        }
    }

    /// Apply `op` as `replica`; returns the delta. An operation that does not
    /// fit the kind is `Error::UnsupportedOperation`. A non-positive amount
    /// is expressed by the caller as `Increment(0)` and yields an empty delta.
    pub fn mutate(&mut self, replica: &ReplicaId, op: Op<'_>) -> Result<Crdt> {
        Ok(match (self, op) {
            (Crdt::GCounter(c), Op::Increment(n)) => Crdt::GCounter(c.increment(replica, n)?),
            (Crdt::PNCounter(c), Op::Increment(n)) => Crdt::PNCounter(c.increment(replica, n)?),
            (Crdt::PNCounter(c), Op::Decrement(n)) => Crdt::PNCounter(c.decrement(replica, n)?),
            (Crdt::ORSet(s), Op::Add(e)) => Crdt::ORSet(Box::new(s.add(replica, e)?)),
            (Crdt::ORSet(s), Op::Remove(e)) => Crdt::ORSet(Box::new(s.remove(replica, e)?)),
            (Crdt::LwwRegister(r), Op::Set(v, ts)) => Crdt::LwwRegister(r.set(replica, v, ts)),
            _ => return Err(Error::UnsupportedOperation),
        })
    }

    /// The delta `op` would produce as `replica`, leaving `self` unchanged
    /// (the paper's delta mutator m^δ(X)): `self.join(&delta)` then gives
    /// the state `mutate` would. Lets a durable store write the delta before
    /// it changes memory, so a failed write leaves the state as it was.
    pub fn delta_of(&self, replica: &ReplicaId, op: Op<'_>) -> Result<Crdt> {
        Ok(match (self, op) {
            (Crdt::GCounter(c), Op::Increment(n)) => {
                Crdt::GCounter(c.clone().increment(replica, n)?)
            }
            (Crdt::PNCounter(c), Op::Increment(n)) => {
                Crdt::PNCounter(c.clone().increment(replica, n)?)
            }
            (Crdt::PNCounter(c), Op::Decrement(n)) => {
                Crdt::PNCounter(c.clone().decrement(replica, n)?)
            }
            (Crdt::ORSet(s), Op::Add(e)) => {
                Crdt::ORSet(Box::new(s.delta_of_write(replica, e, false)?))
            }
            (Crdt::ORSet(s), Op::Remove(e)) => {
                Crdt::ORSet(Box::new(s.delta_of_write(replica, e, true)?))
            }
            (Crdt::LwwRegister(r), Op::Set(v, ts)) => {
                Crdt::LwwRegister(r.clone().set(replica, v, ts))
            }
            _ => return Err(Error::UnsupportedOperation),
        })
    }

    /// `Some(entries)` when one more element would reallocate a table (see
    /// [`ORSet::next_insert_reallocates`]); counters and registers: `None`.
    pub fn next_insert_reallocates(&self) -> Option<usize> {
        match self {
            Crdt::ORSet(s) => s.next_insert_reallocates(),
            _ => None,
        }
    }

    /// Whether [`Crdt::collect_stable`] has anything to drop.
    pub fn has_collectable(&self) -> bool {
        matches!(self, Crdt::ORSet(s) if s.has_remove_tokens())
    }

    /// Causal-stability collection (see [`ORSet::collect_stable`]);
    /// counters and registers hold nothing to collect.
    pub fn collect_stable(&mut self) -> usize {
        match self {
            Crdt::ORSet(s) => s.collect_stable(),
            _ => 0,
        }
    }

    /// A remove-wins set's stability snapshot (its version vector), if it
    /// holds remove tokens (see [`ORSet::collect_stable_upto`]).
    pub fn stability_snapshot(&self) -> Option<Vec<(ReplicaId, u64)>> {
        match self {
            Crdt::ORSet(s) if s.has_collectable_tokens() => Some(s.version_vector()),
            _ => None,
        }
    }

    /// Collection up to a stability snapshot (see
    /// [`ORSet::collect_stable_upto`]); 0 for every other type.
    pub fn collect_stable_upto(&mut self, stable: &[(ReplicaId, u64)]) -> usize {
        match self {
            Crdt::ORSet(s) => s.collect_stable_upto(stable),
            _ => 0,
        }
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Crdt::ORSet(s) => s.heap_bytes(),
            other => other.size_hint(),
        }
    }

    /// O(1) estimate of the encoded size in bytes (see [`ORSet::size_hint`]).
    pub fn size_hint(&self) -> usize {
        match self {
            Crdt::GCounter(c) => 16 + c.len() * 24,
            Crdt::PNCounter(c) => 16 + (c.positive().len() + c.negative().len()) * 24,
            Crdt::ORSet(s) => 16 + s.size_hint(),
            Crdt::LwwRegister(r) => 32 + r.value().map_or(0, <[u8]>::len),
        }
    }

    /// Apply `op` as `replica` and join its delta into `acc` (a delta group
    /// being accumulated, e.g. the writes not yet on disk). Equivalent to
    /// `acc.join(&self.mutate(replica, op)?)`, but counters update `acc` in
    /// place instead of building a temporary delta.
    pub fn mutate_join(&mut self, replica: &ReplicaId, op: Op<'_>, acc: &mut Crdt) -> Result<()> {
        match (self, op, acc) {
            (Crdt::GCounter(c), Op::Increment(n), Crdt::GCounter(a)) if n > 0 => {
                c.increment_in_place(replica, n)?;
                a.join_entry(replica, c.get(replica));
            }
            (Crdt::PNCounter(c), Op::Increment(n), Crdt::PNCounter(a)) if n > 0 => {
                c.p.increment_in_place(replica, n)?;
                a.p.join_entry(replica, c.p.get(replica));
            }
            (Crdt::PNCounter(c), Op::Decrement(n), Crdt::PNCounter(a)) if n > 0 => {
                c.n.increment_in_place(replica, n)?;
                a.n.join_entry(replica, c.n.get(replica));
            }
            (Crdt::ORSet(s), Op::Add(e), Crdt::ORSet(a)) => a.join(&s.add(replica, e)?)?,
            (Crdt::ORSet(s), Op::Remove(e), Crdt::ORSet(a)) => a.join(&s.remove(replica, e)?)?,
            (Crdt::LwwRegister(r), Op::Set(v, ts), Crdt::LwwRegister(a)) => {
                a.join_owned(r.set(replica, v, ts))
            }
            (this, op, acc) => {
                let delta = this.mutate(replica, op)?;
                acc.join(&delta)?;
            }
        }
        Ok(())
    }

    /// The join (least upper bound). Kinds must match.
    pub fn join(&mut self, other: &Crdt) -> Result<()> {
        match (self, other) {
            (Crdt::GCounter(a), Crdt::GCounter(b)) => a.join(b),
            (Crdt::PNCounter(a), Crdt::PNCounter(b)) => a.join(b),
            (Crdt::ORSet(a), Crdt::ORSet(b)) => a.join(b)?,
            (Crdt::LwwRegister(a), Crdt::LwwRegister(b)) => a.join(b),
            _ => return Err(Error::TypeMismatch),
        }
        Ok(())
    }

    pub fn value(&self) -> Value<'_> {
        match self {
            Crdt::GCounter(c) => Value::Counter(c.value() as i128),
            Crdt::PNCounter(c) => Value::Counter(c.value()),
            Crdt::ORSet(s) => Value::Set(s.elements().collect()),
            Crdt::LwwRegister(r) => Value::Register(r.value()),
        }
    }

    /// Encode with the versioned header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MAGIC, FORMAT_VERSION, self.kind().code()];
        let res = match self {
            Crdt::GCounter(c) => rmp_serde::encode::write(&mut out, &gcounter_wire(c)),
            Crdt::PNCounter(c) => rmp_serde::encode::write(
                &mut out,
                &(gcounter_wire(c.positive()), gcounter_wire(c.negative())),
            ),
            Crdt::ORSet(s) => rmp_serde::encode::write(&mut out, s),
            Crdt::LwwRegister(r) => rmp_serde::encode::write(&mut out, &lww_wire(r)),
        };
        // Writing to a Vec cannot fail, and every field is serializable.
        debug_assert!(res.is_ok());
        out
    }

    /// Decode bytes from anywhere (a peer, a file, a caller). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Crdt> {
        let (kind, body) = split_header(bytes)?;
        // A `&[u8]` reader advances as it is read, so `get_ref` below is the
        // unread rest. (`from_read_ref`'s `get_ref` is the whole input.)
        let mut de = rmp_serde::Deserializer::new(body);
        let crdt = match kind {
            Kind::GCounter => Crdt::GCounter(gcounter_from_wire(
                Deserialize::deserialize(&mut de).map_err(de_err)?,
            )?),
            Kind::PNCounter => {
                let (p, n): (GCounterWire, GCounterWire) =
                    Deserialize::deserialize(&mut de).map_err(de_err)?;
                Crdt::PNCounter(PNCounter::from_parts(
                    gcounter_from_wire(p)?,
                    gcounter_from_wire(n)?,
                ))
            }
            Kind::ORSet | Kind::AWSet => {
                let s: ORSet = Deserialize::deserialize(&mut de).map_err(de_err)?;
                let expected = if kind == Kind::ORSet {
                    Policy::RemoveWins
                } else {
                    Policy::AddWins
                };
                if s.policy() != expected {
                    return Err(Error::Decode("OR-Set policy does not match kind".into()));
                }
                Crdt::ORSet(Box::new(s))
            }
            Kind::LwwRegister => Crdt::LwwRegister(lww_from_wire(
                Deserialize::deserialize(&mut de).map_err(de_err)?,
            )),
        };
        if de.get_ref().is_empty() {
            Ok(crdt)
        } else {
            Err(Error::Decode("trailing bytes".into()))
        }
    }
}

/// Check magic and version; return the kind and the body.
pub fn split_header(bytes: &[u8]) -> Result<(Kind, &[u8])> {
    match bytes {
        [MAGIC, FORMAT_VERSION, kind, body @ ..] => Ok((Kind::from_code(*kind)?, body)),
        [MAGIC, v, _, ..] => Err(Error::UnsupportedVersion(*v)),
        _ => Err(Error::Decode("missing header".into())),
    }
}

fn de_err(e: rmp_serde::decode::Error) -> Error {
    Error::Decode(e.to_string())
}

type GCounterWire = Vec<(ReplicaId, u64)>;

fn gcounter_wire(c: &GCounter) -> Vec<(&ReplicaId, u64)> {
    c.sorted_entries().into_iter().collect()
}

fn gcounter_from_wire(w: GCounterWire) -> Result<GCounter> {
    GCounter::from_entries(w)
}

type LwwWire = Option<(u64, u32, ReplicaId, ByteBuf)>;

fn lww_wire(r: &LwwRegister) -> Option<(u64, u32, &ReplicaId, &serde_bytes::Bytes)> {
    r.entry().map(|e| {
        (
            e.ts.wall_ms,
            e.ts.counter,
            &e.replica,
            serde_bytes::Bytes::new(&e.value),
        )
    })
}

fn lww_from_wire(w: LwwWire) -> LwwRegister {
    LwwRegister::from_entry(w.map(|(wall, counter, replica, value)| LwwEntry {
        ts: Timestamp::new(wall, counter),
        replica,
        value: value.into_vec().into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mutate_join` must equal `acc.join(mutate(..))` for every kind and op.
    #[test]
    fn mutate_join_equals_join_of_the_delta() {
        let r = ReplicaId::from("r1");
        let ops: Vec<(Kind, Vec<Op>)> = vec![
            (
                Kind::GCounter,
                vec![Op::Increment(3), Op::Increment(0), Op::Increment(9)],
            ),
            (
                Kind::PNCounter,
                vec![
                    Op::Increment(3),
                    Op::Decrement(5),
                    Op::Decrement(0),
                    Op::Increment(1),
                ],
            ),
            (
                Kind::ORSet,
                vec![
                    Op::Add(b"a"),
                    Op::Add(b"b"),
                    Op::Remove(b"a"),
                    Op::Add(b"a"),
                ],
            ),
            (
                Kind::AWSet,
                vec![Op::Add(b"a"), Op::Remove(b"a"), Op::Add(b"b")],
            ),
            (
                Kind::LwwRegister,
                vec![
                    Op::Set(b"x", Timestamp::new(5, 0)),
                    Op::Set(b"y", Timestamp::new(4, 0)),
                ],
            ),
        ];
        for (kind, ops) in ops {
            let (mut s1, mut s2) = (Crdt::new(kind), Crdt::new(kind));
            let (mut acc1, mut acc2) = (Crdt::empty_delta(kind), Crdt::empty_delta(kind));
            for op in ops {
                s1.mutate_join(&r, op, &mut acc1).unwrap();
                let d = s2.mutate(&r, op).unwrap();
                acc2.join(&d).unwrap();
            }
            assert_eq!(s1, s2, "{kind:?}");
            assert_eq!(acc1, acc2, "{kind:?}");
            // The accumulated delta group rebuilds the state from scratch.
            let mut fresh = Crdt::new(kind);
            fresh.join(&acc1).unwrap();
            assert_eq!(fresh, s1, "{kind:?}");
        }
    }
}

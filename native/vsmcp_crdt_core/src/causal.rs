//! Replica identities, dots and the causal context of delta-state CRDTs
//! (Almeida, Shoker, Baquero, "Delta State Replicated Data Types", 2018, §5).
//!
//! A *dot* `(replica, n)` names the n-th event of a replica. A
//! [`CausalContext`] is the set of dots a state has seen, kept compact as a
//! version vector (every dot `1..=vv[r]` seen) plus a *dot cloud* of the
//! out-of-order dots beyond it. [`CausalContext::insert`] re-compacts, so two
//! contexts holding the same dots have the same representation.
//!
//! Replica ids are opaque byte strings (the canonical encoding of the Elixir
//! node id). To keep per-dot memory small a state interns them in a
//! [`ReplicaTable`] and dots refer to replicas by `u32` index; joining two
//! states remaps the other side's indices through [`ReplicaTable::remap`].

use crate::error::{Error, Result};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Opaque, totally ordered replica identity. Shared (`Arc`), because every
/// delta names its replica: cloning one must not allocate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub Arc<[u8]>);

impl Serialize for ReplicaId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(ReplicaId(Arc::from(b.into_vec())))
    }
}

impl ReplicaId {
    pub fn new(bytes: &[u8]) -> Self {
        ReplicaId(bytes.into())
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for ReplicaId {
    fn from(s: &str) -> Self {
        ReplicaId::new(s.as_bytes())
    }
}

/// A dot whose replica is an index into the owning state's [`ReplicaTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub replica: u32,
    pub counter: u64,
}

/// Interned replica ids of one state.
#[derive(Debug, Clone, Default)]
pub struct ReplicaTable {
    ids: Vec<ReplicaId>,
    index: HashMap<ReplicaId, u32>,
}

impl ReplicaTable {
    pub fn intern(&mut self, id: &ReplicaId) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.clone());
        self.index.insert(id.clone(), i);
        i
    }

    pub fn lookup(&self, id: &ReplicaId) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn get(&self, i: u32) -> &ReplicaId {
        &self.ids[i as usize]
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[ReplicaId] {
        &self.ids
    }

    /// Map every index of `other` to an index of `self`, interning as needed.
    pub fn remap(&mut self, other: &ReplicaTable) -> Vec<u32> {
        other.ids.iter().map(|id| self.intern(id)).collect()
    }

    /// Build from decoded ids, rejecting duplicates.
    pub fn from_ids(ids: Vec<ReplicaId>) -> Result<Self> {
        let mut t = ReplicaTable::default();
        for id in ids {
            if t.index.contains_key(&id) {
                return Err(Error::Decode("duplicate replica id".into()));
            }
            t.intern(&id);
        }
        Ok(t)
    }
}

/// Version vector plus dot cloud, compacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CausalContext {
    /// `vv[r] = n`: dots `(r, 1..=n)` are all in the context.
    vv: Vec<u64>,
    /// Seen dots that are not contiguous with the version vector.
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// `n` such that dots `(r, 1..=n)` are all in the context.
    pub fn vv_at(&self, r: u32) -> u64 {
        self.vv_of(r)
    }

    fn vv_of(&self, r: u32) -> u64 {
        self.vv.get(r as usize).copied().unwrap_or(0)
    }

    pub fn contains(&self, d: Dot) -> bool {
        d.counter <= self.vv_of(d.replica) || self.cloud.contains(&d)
    }

    pub fn insert(&mut self, d: Dot) {
        let r = d.replica as usize;
        if d.counter == 0 || d.counter <= self.vv_of(d.replica) {
            return;
        }
        if self.vv.len() <= r {
            self.vv.resize(r + 1, 0);
        }
        if d.counter == self.vv[r] + 1 {
            self.vv[r] = d.counter;
            self.compact(d.replica);
        } else {
            self.cloud.insert(d);
        }
    }

    fn compact(&mut self, r: u32) {
        let ri = r as usize;
        // A vector entry at u64::MAX (possible in decoded peer bytes) has no
        // successor to absorb.
        while let Some(counter) = self.vv[ri].checked_add(1) {
            if !self.cloud.remove(&Dot {
                replica: r,
                counter,
            }) {
                break;
            }
            self.vv[ri] = counter;
        }
    }

    /// The highest counter of replica `r` seen anywhere in the context.
    pub fn max_counter(&self, r: u32) -> u64 {
        let base = self.vv_of(r);
        let cloud_max = self
            .cloud
            .range(
                Dot {
                    replica: r,
                    counter: 0,
                }..=Dot {
                    replica: r,
                    counter: u64::MAX,
                },
            )
            .next_back()
            .map(|d| d.counter)
            .unwrap_or(0);
        base.max(cloud_max)
    }

    /// A fresh dot for replica `r`, not yet inserted.
    pub fn next_dot(&self, r: u32) -> Result<Dot> {
        let counter = self.max_counter(r).checked_add(1).ok_or(Error::Overflow)?;
        Ok(Dot {
            replica: r,
            counter,
        })
    }

    /// Join `other` (whose replica indices map through `remap`) into `self`.
    pub fn join(&mut self, other: &CausalContext, remap: &[u32]) {
        for (r, &n) in other.vv.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let lr = remap[r];
            let li = lr as usize;
            if self.vv.len() <= li {
                self.vv.resize(li + 1, 0);
            }
            if n > self.vv[li] {
                self.vv[li] = n;
                // Cloud dots now covered by the vector are dropped.
                let covered: Vec<Dot> = self
                    .cloud
                    .range(
                        Dot {
                            replica: lr,
                            counter: 0,
                        }..=Dot {
                            replica: lr,
                            counter: n,
                        },
                    )
                    .copied()
                    .collect();
                for d in covered {
                    self.cloud.remove(&d);
                }
                self.compact(lr);
            }
        }
        for d in &other.cloud {
            self.insert(Dot {
                replica: remap[d.replica as usize],
                counter: d.counter,
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.vv.iter().all(|&n| n == 0) && self.cloud.is_empty()
    }

    /// `(replica index, contiguous max)` pairs with a non-zero maximum.
    pub fn vector(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.vv
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(r, &n)| (r as u32, n))
    }

    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }

    /// Order-independent form keyed by replica id, for equality and display.
    pub fn normalized(&self, table: &ReplicaTable) -> NormalizedContext {
        NormalizedContext {
            vv: self
                .vector()
                .map(|(r, n)| (table.get(r).clone(), n))
                .collect(),
            cloud: self
                .cloud
                .iter()
                .map(|d| (table.get(d.replica).clone(), d.counter))
                .collect(),
        }
    }

    /// Rebuild from decoded parts, validating replica indices.
    pub fn from_parts(vv: &[(u32, u64)], cloud: &[(u32, u64)], replicas: usize) -> Result<Self> {
        let mut ctx = CausalContext::default();
        for &(r, n) in vv {
            if r as usize >= replicas {
                return Err(Error::Decode("replica index out of range".into()));
            }
            if ctx.vv.len() <= r as usize {
                ctx.vv.resize(r as usize + 1, 0);
            }
            ctx.vv[r as usize] = ctx.vv[r as usize].max(n);
        }
        for &(r, n) in cloud {
            if r as usize >= replicas {
                return Err(Error::Decode("replica index out of range".into()));
            }
            ctx.insert(Dot {
                replica: r,
                counter: n,
            });
        }
        for r in 0..ctx.vv.len() as u32 {
            ctx.compact(r);
        }
        Ok(ctx)
    }
}

/// A causal context keyed by replica id instead of table index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NormalizedContext {
    pub vv: BTreeMap<ReplicaId, u64>,
    pub cloud: BTreeSet<(ReplicaId, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(r: u32, c: u64) -> Dot {
        Dot {
            replica: r,
            counter: c,
        }
    }

    #[test]
    fn out_of_order_dots_compact_into_vector() {
        let mut c = CausalContext::default();
        c.insert(d(0, 3));
        c.insert(d(0, 2));
        assert!(!c.contains(d(0, 1)));
        assert_eq!(c.cloud().count(), 2);
        c.insert(d(0, 1));
        assert_eq!(c.cloud().count(), 0);
        assert_eq!(c.vector().collect::<Vec<_>>(), vec![(0, 3)]);
        assert_eq!(c.next_dot(0).unwrap(), d(0, 4));
    }

    #[test]
    fn join_is_union() {
        let mut a = CausalContext::default();
        a.insert(d(0, 1));
        a.insert(d(1, 5));
        let mut b = CausalContext::default();
        b.insert(d(0, 1));
        b.insert(d(0, 2));
        b.insert(d(1, 2));
        a.join(&b, &[0, 1]);
        assert!(a.contains(d(0, 2)));
        assert!(a.contains(d(1, 5)));
        assert!(a.contains(d(1, 2)));
        assert!(!a.contains(d(1, 1)));
    }
}

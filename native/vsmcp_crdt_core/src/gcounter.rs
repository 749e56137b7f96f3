//! Grow-only counter: one monotone entry per replica, merge is pointwise max
//! (Shapiro et al., "A comprehensive study of CRDTs", 2011, §3.1.1).
//!
//! A delta is a counter holding only the changed entry. The sum is cached
//! so `value` is O(1) at any number of replicas. A counter with one entry
//! (every delta, and a single writer's counter) keeps it inline and costs
//! no allocation; beyond that a hash map makes `increment` one probe.

use crate::causal::ReplicaId;
use crate::error::{Error, Result};
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// Entries kept inline (scanned) before switching to a hash map.
const SMALL: usize = 1;

#[derive(Debug, Clone)]
enum Entries {
    Small(SmallVec<[(ReplicaId, u64); SMALL]>),
    Large(HashMap<ReplicaId, u64>),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Small(SmallVec::new())
    }
}

impl Entries {
    fn get_mut(&mut self, r: &ReplicaId) -> Option<&mut u64> {
        match self {
            Entries::Small(v) => v.iter_mut().find(|(k, _)| k == r).map(|(_, n)| n),
            Entries::Large(m) => m.get_mut(r),
        }
    }

    fn get(&self, r: &ReplicaId) -> Option<u64> {
        match self {
            Entries::Small(v) => v.iter().find(|(k, _)| k == r).map(|&(_, n)| n),
            Entries::Large(m) => m.get(r).copied(),
        }
    }

    /// Insert an entry known to be absent.
    fn insert_new(&mut self, r: ReplicaId, n: u64) {
        match self {
            Entries::Small(v) if v.len() < SMALL => v.push((r, n)),
            Entries::Small(v) => {
                let mut m: HashMap<ReplicaId, u64> = v.drain(..).collect();
                m.insert(r, n);
                *self = Entries::Large(m);
            }
            Entries::Large(m) => {
                m.insert(r, n);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Entries::Small(v) => v.len(),
            Entries::Large(m) => m.len(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&ReplicaId, u64)> + '_> {
        match self {
            Entries::Small(v) => Box::new(v.iter().map(|(r, n)| (r, *n))),
            Entries::Large(m) => Box::new(m.iter().map(|(r, n)| (r, *n))),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GCounter {
    entries: Entries,
    sum: u128,
}

impl GCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `n` to `replica`'s entry; returns the delta (the changed entry).
    /// `n == 0` changes nothing and returns an empty delta.
    pub fn increment(&mut self, replica: &ReplicaId, n: u64) -> Result<GCounter> {
        if n == 0 {
            return Ok(GCounter::new());
        }
        let next = self.increment_in_place(replica, n)?;
        let mut delta = GCounter::new();
        delta.entries.insert_new(replica.clone(), next);
        delta.sum = next as u128;
        Ok(delta)
    }

    /// Add `n` to `replica`'s entry without building a delta; returns the
    /// new entry.
    pub fn increment_in_place(&mut self, replica: &ReplicaId, n: u64) -> Result<u64> {
        let next = match self.entries.get_mut(replica) {
            Some(e) => {
                *e = e.checked_add(n).ok_or(Error::Overflow)?;
                *e
            }
            None => {
                self.entries.insert_new(replica.clone(), n);
                n
            }
        };
        self.sum += n as u128;
        Ok(next)
    }

    /// Raise `replica`'s entry to at least `n` (the join with a one-entry
    /// counter, without building it).
    pub fn join_entry(&mut self, replica: &ReplicaId, n: u64) {
        match self.entries.get_mut(replica) {
            Some(e) if *e >= n => {}
            Some(e) => {
                self.sum += (n - *e) as u128;
                *e = n;
            }
            None => {
                self.entries.insert_new(replica.clone(), n);
                self.sum += n as u128;
            }
        }
    }

    /// Pointwise max.
    pub fn join(&mut self, other: &GCounter) {
        for (r, n) in other.entries.iter() {
            self.join_entry(r, n);
        }
    }

    pub fn value(&self) -> u128 {
        self.sum
    }

    pub fn get(&self, replica: &ReplicaId) -> u64 {
        self.entries.get(replica).unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// Entries sorted by replica: the canonical form used by equality and
    /// the wire format.
    pub fn sorted_entries(&self) -> BTreeMap<&ReplicaId, u64> {
        self.entries.iter().filter(|&(_, n)| n > 0).collect()
    }

    pub fn from_entries(entries: impl IntoIterator<Item = (ReplicaId, u64)>) -> Result<Self> {
        let mut c = GCounter::new();
        for (r, n) in entries {
            if c.entries.get(&r).is_some() {
                return Err(Error::Decode("duplicate counter entry".into()));
            }
            c.sum += n as u128;
            c.entries.insert_new(r, n);
        }
        Ok(c)
    }

    /// A state with the given per-replica counts: the contribution of each
    /// replica, as another store (the replaced DETS application, keyed by
    /// its node ids) recorded it. A replica named twice keeps the larger
    /// count (the join of one-entry counters); zero counts add nothing.
    pub fn from_counts(counts: impl IntoIterator<Item = (ReplicaId, u64)>) -> Self {
        let mut c = GCounter::new();
        for (r, n) in counts {
            if n > 0 {
                c.join_entry(&r, n);
            }
        }
        c
    }

    /// The entries as a causal summary: replica -> count.
    pub fn causal_context(&self) -> BTreeMap<ReplicaId, u64> {
        self.sorted_entries()
            .into_iter()
            .map(|(r, n)| (r.clone(), n))
            .collect()
    }
}

impl PartialEq for GCounter {
    fn eq(&self, other: &Self) -> bool {
        self.sorted_entries() == other.sorted_entries()
    }
}
impl Eq for GCounter {}

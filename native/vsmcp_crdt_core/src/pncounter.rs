//! Positive-negative counter: a pair of G-Counters, value `P - N`
//! (Shapiro et al. 2011, §3.1.2). A delta is a PN-Counter holding the one
//! changed entry of `P` or `N`.

use crate::causal::ReplicaId;
use crate::error::Result;
use crate::gcounter::GCounter;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PNCounter {
    pub(crate) p: GCounter,
    pub(crate) n: GCounter,
}

impl PNCounter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn increment(&mut self, replica: &ReplicaId, by: u64) -> Result<PNCounter> {
        Ok(PNCounter {
            p: self.p.increment(replica, by)?,
            n: GCounter::new(),
        })
    }

    pub fn decrement(&mut self, replica: &ReplicaId, by: u64) -> Result<PNCounter> {
        Ok(PNCounter {
            p: GCounter::new(),
            n: self.n.increment(replica, by)?,
        })
    }

    pub fn join(&mut self, other: &PNCounter) {
        self.p.join(&other.p);
        self.n.join(&other.n);
    }

    pub fn value(&self) -> i128 {
        // Each side is a sum of u64 entries, far below i128::MAX.
        self.p.value() as i128 - self.n.value() as i128
    }

    pub fn positive(&self) -> &GCounter {
        &self.p
    }

    pub fn negative(&self) -> &GCounter {
        &self.n
    }

    pub fn from_parts(p: GCounter, n: GCounter) -> Self {
        PNCounter { p, n }
    }

    /// A state with the given per-replica counts of increments
    /// (`positive`) and decrements (`negative`); see
    /// [`GCounter::from_counts`].
    pub fn from_counts(
        positive: impl IntoIterator<Item = (ReplicaId, u64)>,
        negative: impl IntoIterator<Item = (ReplicaId, u64)>,
    ) -> Self {
        PNCounter {
            p: GCounter::from_counts(positive),
            n: GCounter::from_counts(negative),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.p.is_empty() && self.n.is_empty()
    }

    /// Version vector of the counter: `p[r] + n[r]` grows with every
    /// operation of replica `r`, so it is that replica's version number.
    pub fn causal_context(&self) -> std::collections::BTreeMap<&ReplicaId, u128> {
        let mut counts = std::collections::BTreeMap::new();
        for side in [&self.p, &self.n] {
            for (r, n) in side.sorted_entries() {
                *counts.entry(r).or_default() += u128::from(n);
            }
        }
        counts
    }
}

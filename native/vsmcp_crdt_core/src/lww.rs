//! Last-writer-wins register ordered by `(HLC timestamp, replica, value
//! bytes)`: a total order, so concurrent writes resolve identically on every
//! replica whatever the delivery order (Shapiro et al. 2011, §3.2.1, with an
//! HLC instead of a wall clock so causally later writes always win).
//!
//! The state is at most one entry; the delta of `set` is the new entry; join
//! keeps the larger entry.

use crate::causal::ReplicaId;
use crate::hlc::Timestamp;
use std::cmp::Ordering;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LwwEntry {
    pub ts: Timestamp,
    pub replica: ReplicaId,
    /// Shared, not copied, by the clones a local write makes (the state,
    /// its delta, the pending write and the outgoing change hold one
    /// value).
    pub value: Arc<[u8]>,
}

impl Ord for LwwEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts, &self.replica, &self.value).cmp(&(other.ts, &other.replica, &other.value))
    }
}
impl PartialOrd for LwwEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LwwRegister {
    entry: Option<LwwEntry>,
}

impl LwwRegister {
    pub fn new() -> Self {
        Self::default()
    }

    /// Write `value` at a timestamp greater than both `ts` (the writer's
    /// clock) and the current entry's, so a local write always supersedes
    /// what this replica has seen. Returns the delta.
    pub fn set(&mut self, replica: &ReplicaId, value: &[u8], ts: Timestamp) -> LwwRegister {
        let ts = match &self.entry {
            Some(cur) if cur.ts >= ts => cur.ts.successor(),
            _ => ts,
        };
        let entry = LwwEntry {
            ts,
            replica: replica.clone(),
            value: value.into(),
        };
        self.entry = Some(entry.clone());
        LwwRegister { entry: Some(entry) }
    }

    pub fn join(&mut self, other: &LwwRegister) {
        if let Some(o) = &other.entry {
            if self.entry.as_ref().is_none_or(|cur| o > cur) {
                self.entry = Some(o.clone());
            }
        }
    }

    /// [`LwwRegister::join`] taking `other` by value (no copy of its value).
    pub fn join_owned(&mut self, other: LwwRegister) {
        if let Some(o) = other.entry {
            if self.entry.as_ref().is_none_or(|cur| o > *cur) {
                self.entry = Some(o);
            }
        }
    }

    pub fn entry(&self) -> Option<&LwwEntry> {
        self.entry.as_ref()
    }

    pub fn value(&self) -> Option<&[u8]> {
        self.entry.as_ref().map(|e| &*e.value)
    }

    pub fn timestamp(&self) -> Option<Timestamp> {
        self.entry.as_ref().map(|e| e.ts)
    }

    pub fn from_entry(entry: Option<LwwEntry>) -> Self {
        LwwRegister { entry }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ContextStore.set/3` relies on to answer the caller's own term:
    /// a local write wins locally even over an entry from a peer whose
    /// clock was ahead (its timestamp later than the writer's clock), and
    /// every replica that joins both keeps it.
    #[test]
    fn a_local_set_supersedes_a_held_entry_stamped_later() {
        let theirs = LwwRegister::from_entry(Some(LwwEntry {
            ts: Timestamp::new(90_000, 7),
            replica: ReplicaId::from("zz-peer-ahead"),
            value: b"theirs".as_slice().into(),
        }));
        let mut r = theirs.clone();
        let delta = r.set(&ReplicaId::from("aa-me"), b"mine", Timestamp::new(1_000, 0));
        assert_eq!(r.value(), Some(&b"mine"[..]));
        assert!(r.timestamp() > theirs.timestamp());
        let mut peer = theirs.clone();
        peer.join(&delta);
        assert_eq!(peer, r);
    }
}

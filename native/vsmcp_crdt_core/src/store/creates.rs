//! The causal context of creates: which generations (`Gen::replica`,
//! `Gen::seq`) this store has seen, as a record or as a tombstone.
//!
//! Every create gets the next sequence number of its replica (a dense
//! counter per replica id, which includes the incarnation). A generation
//! this store has seen and no longer holds was deleted; once its tombstone
//! is collected (causal stability), a late copy of it (a duplicated or
//! delayed message) is recognised here and dropped instead of bringing the
//! id back. Compact: per replica the contiguous prefix plus the few seen
//! out of order. Persisted in the metadata column family.

use crate::error::{Error, Result};
use serde_bytes::{ByteBuf, Bytes};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Key of the persisted context in the metadata column family.
pub const CREATES_KEY: &[u8] = b"creates";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    /// `1..=upto` all seen.
    upto: u64,
    /// Seen beyond `upto + 1`.
    cloud: BTreeSet<u64>,
}

/// See the module docs.
#[derive(Debug, Default, Clone)]
pub struct Creates {
    seen: HashMap<Arc<[u8]>, Seen>,
    /// Changed since the last [`Creates::take_dirty`].
    dirty: bool,
}

impl Creates {
    /// Whether create `(replica, seq)` was seen (`seq` 0, records from before
    /// sequence numbers existed, never is).
    pub fn contains(&self, replica: &[u8], seq: u64) -> bool {
        seq != 0
            && self
                .seen
                .get(replica)
                .is_some_and(|s| seq <= s.upto || s.cloud.contains(&seq))
    }

    /// Record create `(replica, seq)` as seen.
    pub fn insert(&mut self, replica: &Arc<[u8]>, seq: u64) {
        if seq == 0 || self.contains(replica, seq) {
            return;
        }
        let s = self.seen.entry(replica.clone()).or_default();
        if seq == s.upto + 1 {
            s.upto = seq;
            while s.cloud.remove(&(s.upto + 1)) {
                s.upto += 1;
            }
        } else {
            s.cloud.insert(seq);
        }
        self.dirty = true;
    }

    /// The encoding to persist if it changed since the last call.
    pub fn take_dirty(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.encode())
    }

    /// Mark changed (a write of the encoding failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn encode(&self) -> Vec<u8> {
        let v: Vec<(&Bytes, u64, Vec<u64>)> = self
            .seen
            .iter()
            .map(|(r, s)| (Bytes::new(r), s.upto, s.cloud.iter().copied().collect()))
            .collect();
        rmp_serde::to_vec(&v).unwrap_or_default()
    }

    /// Inverse of the persisted encoding.
    pub fn decode(bytes: &[u8]) -> Result<Creates> {
        let v: Vec<(ByteBuf, u64, Vec<u64>)> =
            rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))?;
        let seen = v
            .into_iter()
            .map(|(r, upto, cloud)| {
                (
                    Arc::from(r.into_vec()),
                    Seen {
                        upto,
                        cloud: cloud.into_iter().collect(),
                    },
                )
            })
            .collect();
        Ok(Creates { seen, dirty: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_prefix_and_cloud() {
        let r: Arc<[u8]> = Arc::from(&b"r"[..]);
        let mut c = Creates::default();
        c.insert(&r, 2);
        assert!(!c.contains(&r, 1) && c.contains(&r, 2));
        c.insert(&r, 1);
        c.insert(&r, 3);
        assert!(c.contains(&r, 3) && !c.contains(&r, 4) && !c.contains(&r, 0));
        let back = Creates::decode(&c.take_dirty().unwrap()).unwrap();
        assert!(back.contains(&r, 3) && !back.contains(&r, 4));
        assert!(c.take_dirty().is_none());
    }
}

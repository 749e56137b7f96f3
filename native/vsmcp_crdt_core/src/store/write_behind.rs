//! Write-behind: the writes not yet in RocksDB, and the thread that commits
//! them.
//!
//! In relaxed durability every mutation joins its delta into the id's
//! pending delta group (`Pending`) in its shard; a flush thread commits all
//! groups every `flush_interval_ms` as one RocksDB write batch (group
//! commit). A group being written moves to `inflight` so reads still see it
//! laid over the disk; a failed batch goes back, older before newer, and is
//! retried by the next flush. `written` counts successful writes of the
//! shard, so a reader that read the disk without the shard lock can tell
//! whether a flush moved something out of the overlay meanwhile.

use super::cold::BatchOp;
use super::record::{encode_parts, Meta};
use crate::crdt::Crdt;
use hashbrown::HashMap;

/// Writes of one id not yet in RocksDB: an optional delete, then a delta.
#[derive(Default)]
pub struct Pending {
    pub(super) reset: bool,
    pub(super) meta: Option<Meta>,
    pub(super) delta: Option<Crdt>,
}

impl Pending {
    pub(super) fn reset() -> Pending {
        Pending {
            reset: true,
            ..Pending::default()
        }
    }

    pub(super) fn add(&mut self, meta: &Meta, delta: &Crdt) {
        match &mut self.meta {
            Some(m) => m.join(meta),
            None => self.meta = Some(meta.clone()),
        }
        match &mut self.delta {
            Some(d) => {
                if d.join(delta).is_err() {
                    *d = delta.clone();
                }
            }
            None => self.delta = Some(delta.clone()),
        }
    }

    /// `self` happened before `newer`; return their combination.
    pub(super) fn then(mut self, newer: Pending) -> Pending {
        if newer.reset {
            return newer;
        }
        if let (Some(m), Some(d)) = (&newer.meta, &newer.delta) {
            self.add(m, d);
        }
        self
    }

    /// The batch operations that persist these writes.
    pub(super) fn write_to(&self, key: &[u8], ops: &mut Vec<BatchOp>) {
        if self.reset {
            ops.push(BatchOp::Delete(key.into()));
        }
        if let (Some(meta), Some(delta)) = (&self.meta, &self.delta) {
            ops.push(BatchOp::Merge(
                key.into(),
                encode_parts(meta, &delta.encode()),
            ));
        }
    }
}

/// One shard's writes not yet in RocksDB.
#[derive(Default)]
pub(super) struct PendingWrites {
    pub(super) dirty: HashMap<Box<[u8]>, Pending>,
    /// Taken from `dirty` by a flush whose batch is not yet written.
    pub(super) inflight: HashMap<Box<[u8]>, Pending>,
    /// Successful RocksDB writes of this shard's ids so far.
    pub(super) written: u64,
}

impl PendingWrites {
    /// The pending writes of `id`, created empty when missing (without
    /// allocating a key when present).
    pub(super) fn entry(&mut self, id: &[u8]) -> &mut Pending {
        self.dirty.entry_ref(id).or_default()
    }

    /// Record `delta` of `id` (with its metadata) in the delta group.
    pub(super) fn add(&mut self, id: &[u8], meta: &Meta, delta: &Crdt) {
        self.entry(id).add(meta, delta);
    }

    /// Record a delete of `id`: replaces whatever was pending.
    pub(super) fn delete(&mut self, id: &[u8]) {
        *self.entry(id) = Pending::reset();
    }

    /// The pending layers of `id`, oldest first.
    pub(super) fn overlays(&self, id: &[u8]) -> impl Iterator<Item = &Pending> {
        [self.inflight.get(id), self.dirty.get(id)]
            .into_iter()
            .flatten()
    }

    pub(super) fn len(&self) -> usize {
        self.dirty.len() + self.inflight.len()
    }

    /// Start a flush: move `dirty` to `inflight` and add its operations.
    pub(super) fn begin_flush(&mut self, ops: &mut Vec<BatchOp>) {
        if self.dirty.is_empty() {
            return;
        }
        let taken = std::mem::take(&mut self.dirty);
        for (k, p) in &taken {
            p.write_to(k, ops);
        }
        self.inflight = taken;
    }

    /// End a flush: on success the inflight writes are on disk; on failure
    /// they go back before the newer ones.
    pub(super) fn end_flush(&mut self, ok: bool) {
        if ok {
            if !self.inflight.is_empty() {
                self.inflight.clear();
                self.written += 1;
            }
            return;
        }
        let inflight = std::mem::take(&mut self.inflight);
        for (k, older) in inflight {
            let merged = match self.dirty.remove(&k) {
                Some(newer) => older.then(newer),
                None => older,
            };
            self.dirty.insert(k, merged);
        }
    }

    /// Everything pending, oldest first, leaving nothing behind.
    pub(super) fn drain(&mut self) -> Vec<(Box<[u8]>, Pending)> {
        self.end_flush(false);
        self.dirty.drain().collect()
    }

    /// The operations of everything pending (the exit hook's write).
    pub(super) fn ops(&self, ops: &mut Vec<BatchOp>) {
        for (k, p) in self.inflight.iter().chain(self.dirty.iter()) {
            p.write_to(k, ops);
        }
    }
}

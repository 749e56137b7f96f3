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

use super::config::regrows_large;
use super::config::INLINE_BYTES;
use super::keys::{tomb_key, BatchOp};
use crate::crdt::Crdt;
use crate::record::{encode_parts, encode_tombs, Meta, Tombs};
use hashbrown::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Join a change `(meta, delta)` of one id into a held delta group
/// `(held, group)` by generation (see `record`): a delta of a newer
/// generation replaces the group, one of an older is ignored, one of the
/// same generation is joined in. The write-behind groups ([`Pending`]) and
/// the changes captured for sync (`replication::note_out`) both join so.
pub(super) fn join_by_generation(
    held: &mut Meta,
    group: &mut Option<Arc<Crdt>>,
    meta: &Meta,
    delta: &Crdt,
) {
    match meta.wins_over(held) {
        std::cmp::Ordering::Less => {}
        std::cmp::Ordering::Greater => {
            *held = meta.clone();
            *group = Some(Arc::new(delta.clone()));
        }
        std::cmp::Ordering::Equal => {
            held.join(meta);
            join_delta(group, delta);
        }
    }
}

/// Join `delta` into `group` (copied on write); a delta that does not
/// join (another type) replaces it.
fn join_delta(group: &mut Option<Arc<Crdt>>, delta: &Crdt) {
    match group {
        Some(d) => {
            if Arc::make_mut(d).join(delta).is_err() {
                *d = Arc::new(delta.clone());
            }
        }
        None => *group = Some(Arc::new(delta.clone())),
    }
}

/// Writes of one id not yet in RocksDB: an optional delete, then a delta.
/// The delta is shared (copied on write), so that a dirty-scheduler load of
/// a large item can lay it over the record without the shard lock.
#[derive(Default, Clone)]
pub struct Pending {
    pub(super) reset: bool,
    pub(super) meta: Option<Meta>,
    pub(super) delta: Option<Arc<Crdt>>,
    /// A delete tombstone to persist.
    pub(super) tomb: Option<Tombs>,
    /// Stamp of the last change (see [`PendingWrites::stamp`]).
    pub(super) seq: u64,
}

impl Pending {
    pub(super) fn reset() -> Pending {
        Pending {
            reset: true,
            ..Pending::default()
        }
    }

    /// Join `(meta, delta)` in by generation (see `record`): a delta of a
    /// newer generation replaces the group, one of an older is ignored.
    pub(super) fn add(&mut self, meta: &Meta, delta: &Crdt) {
        match &mut self.meta {
            Some(m) => join_by_generation(m, &mut self.delta, meta, delta),
            None => {
                self.meta = Some(meta.clone());
                join_delta(&mut self.delta, delta);
            }
        }
    }

    /// `self` happened before `newer`; return their combination.
    pub(super) fn then(mut self, newer: Pending) -> Pending {
        if newer.reset {
            let mut newer = newer;
            newer.tomb = Tombs::join(self.tomb, newer.tomb);
            return newer;
        }
        self.tomb = Tombs::join(self.tomb.take(), newer.tomb);
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
        if let Some(t) = &self.tomb {
            ops.push(BatchOp::PutMetaKey(tomb_key(key), encode_tombs(t)));
        }
    }
}

type Group = HashMap<Box<[u8]>, Pending>;

/// One shard's writes not yet in RocksDB.
#[derive(Default)]
pub(super) struct PendingWrites {
    pub(super) dirty: Group,
    /// Taken from `dirty` by a flush whose batch is not yet written; shared
    /// with the flush thread, which encodes it without the shard lock.
    pub(super) inflight: Arc<Group>,
    /// Successful RocksDB writes of this shard's ids so far.
    pub(super) written: u64,
    /// Changes so far (stamps of `Pending::seq`).
    changes: u64,
    /// When the oldest write in `dirty` / `inflight` was made (see
    /// [`PendingWrites::oldest`]).
    dirty_since: Option<Instant>,
    inflight_since: Option<Instant>,
}

impl PendingWrites {
    /// The pending writes of `id`, created empty when missing (without
    /// allocating a key when present), stamped as changed.
    pub(super) fn entry(&mut self, id: &[u8]) -> &mut Pending {
        self.changes += 1;
        self.dirty_since.get_or_insert_with(Instant::now);
        let seq = self.changes;
        let p = self.dirty.entry_ref(id).or_default();
        p.seq = seq;
        p
    }

    /// Identifies the pending writes of `id` as they are now: equal stamps
    /// mean nothing of `id` changed in between (a flush of this shard, the
    /// other way they change, needs the shard's disk lock).
    pub(super) fn stamp(&self, id: &[u8]) -> (Option<u64>, Option<u64>) {
        (
            self.inflight.get(id).map(|p| p.seq),
            self.dirty.get(id).map(|p| p.seq),
        )
    }

    /// Whether a first write of `id` in this flush window would rehash a
    /// large pending map (O(n) once; done on a dirty scheduler).
    pub(super) fn insert_would_regrow(&self, id: &[u8]) -> bool {
        let d = &self.dirty;
        regrows_large(d.len(), d.capacity()) && !d.contains_key(id)
    }

    /// Record `delta` of `id` (with its metadata) in the delta group.
    pub(super) fn add(&mut self, id: &[u8], meta: &Meta, delta: &Crdt) {
        self.entry(id).add(meta, delta);
    }

    /// Record a delete of `id`: replaces whatever was pending (a large
    /// delta group is freed in the background).
    pub(super) fn delete(&mut self, id: &[u8], tomb: Option<Tombs>) {
        let p = self.entry(id);
        let (seq, tomb) = (p.seq, Tombs::join(p.tomb.take(), tomb));
        let old = std::mem::replace(
            p,
            Pending {
                seq,
                tomb,
                ..Pending::reset()
            },
        );
        if old
            .delta
            .as_deref()
            .is_some_and(|d| d.size_hint() > INLINE_BYTES)
        {
            super::tiers::drop_in_background(old);
        }
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

    /// Start a flush: move `dirty` to `inflight` (O(1)) and return it, for
    /// the caller to encode with [`write_group`] *without* the shard lock,
    /// and to drop only after [`PendingWrites::end_flush`] (so that a large
    /// group is freed outside the lock too).
    pub(super) fn begin_flush(&mut self) -> Option<Arc<Group>> {
        if self.dirty.is_empty() {
            return None;
        }
        self.inflight = Arc::new(std::mem::take(&mut self.dirty));
        self.inflight_since = self.dirty_since.take();
        Some(Arc::clone(&self.inflight))
    }

    /// End a flush: on success the inflight writes are on disk; on failure
    /// they go back before the newer ones (the caller dropped its share).
    pub(super) fn end_flush(&mut self, ok: bool) {
        if ok {
            self.inflight_since = None;
            if !self.inflight.is_empty() {
                self.inflight = Arc::default();
                self.written += 1;
            }
            return;
        }
        self.dirty_since = match (self.inflight_since.take(), self.dirty_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let inflight = std::mem::take(&mut self.inflight);
        let inflight = Arc::try_unwrap(inflight).unwrap_or_else(|shared| (*shared).clone());
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
        self.dirty_since = None;
        self.dirty.drain().collect()
    }

    /// The operations of everything pending (the exit hook's write).
    pub(super) fn ops(&self, ops: &mut Vec<BatchOp>) {
        for (k, p) in self.inflight.iter().chain(self.dirty.iter()) {
            p.write_to(k, ops);
        }
    }
}

/// The batch operations that persist a group taken by
/// [`PendingWrites::begin_flush`].
pub(super) fn write_group(group: &Group, ops: &mut Vec<BatchOp>) {
    for (k, p) in group {
        p.write_to(k, ops);
    }
}

impl PendingWrites {
    /// When the oldest write still pending was made (`None`: nothing
    /// pending). Writes that arrived without a time (handed over by a
    /// predecessor) are dated from the first time this is asked.
    pub(super) fn oldest(&mut self) -> Option<Instant> {
        if self.len() == 0 {
            return None;
        }
        if self.dirty_since.is_none() && self.inflight_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
        match (self.inflight_since, self.dirty_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Estimated encoded bytes of the pending deltas (O(pending)).
    pub(super) fn delta_bytes(&self) -> usize {
        self.inflight
            .values()
            .chain(self.dirty.values())
            .filter_map(|p| p.delta.as_deref())
            .map(Crdt::size_hint)
            .sum()
    }
}

//! Causal-stability collection: the remove tokens of one id
//! ([`Store::collect`]) and the delete tombstones
//! ([`Store::collect_tombstones`]), and the tombstones held.

use super::config::{Access, Durability};
use super::handle::Store;
use super::keys::{tomb_key, BatchOp, CUT_PREFIX, TOMB_CUT_KEY};
use super::tiers::{decode_stored, drop_in_background, Body};
use super::write::merge_op;
use crate::causal::ReplicaId;
use crate::error::{Error, Result};
use crate::record;
use crate::record::{Gen, Tombs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Store {
    /// Causal-stability collection of `id` up to a stability snapshot
    /// (see `Crdt::collect_stable_upto`): remove tokens that `stable`
    /// covers are dropped with the elements they hold. The work happens on
    /// a copy, without the shard lock, and is put back only if the item did
    /// not change meanwhile (else nothing happens: the next round tries
    /// again); the collected state replaces the pending writes of `id` (it
    /// includes them) and, written as a full state, drops the collected
    /// dots from the record on disk too. Returns the elements dropped.
    pub fn collect(&self, id: &[u8], gen: &Gen, stable: &[(ReplicaId, u64)]) -> Result<usize> {
        let inner = &self.0;
        let access = Access::MayBlock;
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (sh, present) = inner.locate(id, access)?;
        if !present {
            return Ok(0);
        }
        inner.check_writable_at(&sh, id, access)?;
        let slot = sh.tiers.get(id).ok_or(Error::NotFound)?;
        if slot.meta.gen != *gen {
            // Another generation: its dots are not the snapshot's.
            return Ok(0);
        }
        let version = slot.version;
        let snapshot = match &slot.body {
            Body::Hot(c) => Body::Hot(Arc::clone(c)),
            Body::Warm(b) => Body::Warm(Arc::clone(b)),
        };
        drop(sh);
        let mut state = match &snapshot {
            Body::Hot(c) => (**c).clone(),
            Body::Warm(b) => decode_stored(b)?,
        };
        let was_warm = matches!(snapshot, Body::Warm(_));
        drop(snapshot);
        let dropped = state.collect_stable_upto(stable);
        if dropped == 0 {
            return Ok(0);
        }
        // A warm slot stays warm (the tiers count their items): encoded
        // here, without the lock.
        let encoded: Option<Arc<[u8]>> = was_warm.then(|| state.encode().into());
        let mut sh = inner.lock_state_unchecked(id);
        let meta = match sh.tiers.get(id) {
            Some(slot) if slot.version == version => slot.meta.clone(),
            _ => return Ok(0),
        };
        let state = Arc::new(state);
        match inner.cfg.durability {
            Durability::Relaxed => {
                let p = sh.pending.entry(id);
                p.meta = Some(meta);
                let old = p.delta.replace(Arc::clone(&state));
                drop_in_background(old);
            }
            Durability::Strict => {
                // The disk lock keeps other writers of this shard out.
                drop(sh);
                inner.write_strict(id, &[merge_op(id, &meta, &state)])?;
                sh = inner.lock_state_unchecked(id);
            }
        }
        if let Some(slot) = sh.tiers.get_mut(id) {
            let body = match (&slot.body, encoded) {
                (Body::Hot(_), _) => Body::Hot(state),
                (Body::Warm(_), Some(b)) => Body::Warm(b),
                (Body::Warm(_), None) => Body::Warm(state.encode().into()),
            };
            let old = std::mem::replace(&mut slot.body, body);
            slot.changed();
            drop_in_background(old);
        }
        Ok(dropped)
    }

    /// Causal-stability collection of delete tombstones (see
    /// `sync::engine`, "Membership and stability"). `members` gives each
    /// member directory's frontier: every record it created with a stamp
    /// below it is here or was deleted here. Each becomes that directory's
    /// cut (persisted first: a late copy of what a dropped tombstone
    /// killed is then recognised by `merge_remote` without it), and every
    /// tombstone whose delete came before `cut` (at most the least of
    /// them) is dropped, from memory and from disk, if the creators of the
    /// generations it kills have a cut above their creates (a creator
    /// that is not a member keeps its tombstones, and so does an import,
    /// which has no creator directory). Pending writes are flushed first, so
    /// the delete a tombstone stands for is on disk before the tombstone
    /// leaves it; one written since is left for a later call. Runs on a
    /// dirty scheduler; each shard's lock is held for one pass over its
    /// tombstones. Returns the tombstones dropped.
    pub fn collect_tombstones(&self, cut: u64, members: &[(&[u8], u64)]) -> Result<usize> {
        let inner = &self.0;
        let due = inner.shards.iter().any(|shard| {
            let sh = shard.state.lock();
            !sh.tombs.is_empty() && sh.tomb_floor < cut
        });
        if !due {
            return Ok(0);
        }
        inner.flush()?;
        {
            // The cuts first: a tombstone leaves the disk only once a late
            // copy of what it killed is recognised without it.
            let mut cuts = inner.member_cuts.lock();
            let mut ops = Vec::new();
            if cut > inner.tomb_cut.load(Ordering::Acquire) {
                ops.push(BatchOp::PutMeta(TOMB_CUT_KEY, cut.to_be_bytes().to_vec()));
            }
            for (dir, c) in members {
                if cuts.get(*dir).is_none_or(|old| old < c) {
                    let key: Box<[u8]> = [CUT_PREFIX, dir].concat().into();
                    ops.push(BatchOp::PutMetaKey(key, c.to_be_bytes().to_vec()));
                }
            }
            inner.injected_fault()?;
            inner.cold.write(&ops)?;
            inner.tomb_cut.fetch_max(cut, Ordering::AcqRel);
            for (dir, c) in members {
                let old = cuts.entry_ref(*dir).or_insert(0);
                *old = (*old).max(*c);
            }
        }
        let mut dropped = 0;
        for shard in inner.shards.iter() {
            let _disk = shard.disk.lock();
            let mut sh = shard.state.lock();
            if sh.tombs.is_empty() || sh.tomb_floor >= cut {
                continue;
            }
            if inner.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let mut gone: Vec<Box<[u8]>> = Vec::new();
            let mut floor = u64::MAX;
            let cuts = inner.member_cuts.lock();
            // A generation with no creator directory (an import, a record
            // from before generations) has no cut to stand in for its
            // tombstone: that is kept.
            let covered = |t: &Tombs| {
                t.iter().all(|t| {
                    t.gen.replica.len() == record::REPLICA_BYTES
                        && cuts
                            .get(&t.gen.replica[..record::DIRECTORY_BYTES])
                            .is_some_and(|c| *c > t.gen.stamp)
                })
            };
            for (id, t) in sh.tombs.iter() {
                if t.latest() < cut && covered(t) && sh.pending.overlays(id).next().is_none() {
                    gone.push(id.clone());
                } else {
                    floor = floor.min(t.latest());
                }
            }
            drop(cuts);
            sh.tomb_floor = floor;
            if gone.is_empty() {
                continue;
            }
            let taken: Vec<(Box<[u8]>, Tombs)> = gone
                .into_iter()
                .filter_map(|id| sh.tombs.remove_entry(&id))
                .collect();
            drop(sh);
            // The disk lock keeps every writer of this shard out until the
            // deletes are written (or the tombstones are back).
            let ops: Vec<BatchOp> = taken
                .iter()
                .map(|(id, _)| BatchOp::DeleteMetaKey(tomb_key(id)))
                .collect();
            let written = inner.injected_fault().and_then(|()| inner.cold.write(&ops));
            if let Err(e) = written {
                let mut sh = shard.state.lock();
                for (id, t) in taken {
                    let t = t.over(sh.tombs.remove(&id));
                    sh.put_tombs(id, t);
                }
                return Err(e);
            }
            shard.state.lock().pending.written += 1;
            dropped += taken.len();
        }
        Ok(dropped)
    }

    /// The largest cut below which this store collected tombstones (0 if
    /// none). A copy of a record older than it that arrives late might be
    /// one whose tombstone is gone: the sync engine drops anti-entropy
    /// messages sent before it (anti-entropy repairs what they held).
    pub fn tomb_cut(&self) -> u64 {
        self.0.tomb_cut.load(Ordering::Acquire)
    }

    /// The tombstone of `id`, if it was deleted (also when it was created
    /// again since: the tombstone still kills late copies of what it
    /// deleted).
    pub fn tombstone(&self, id: &[u8]) -> Option<Tombs> {
        self.0.lock_state_unchecked(id).tombs.get(id).cloned()
    }

    /// Every tombstone, re-created ids included.
    pub fn tombstones(&self) -> Vec<(Box<[u8]>, Tombs)> {
        let mut out = Vec::new();
        for shard in self.0.shards.iter() {
            let sh = shard.state.lock();
            out.extend(sh.tombs.iter().map(|(k, g)| (k.clone(), g.clone())));
        }
        out
    }
}

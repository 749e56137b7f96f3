//! The write path every mutation shares (local, remote, collection):
//! whether a write may proceed, the strict write to the WAL, persisting a
//! delta or a delete with the store's durability, installing a state.

use super::config::{regrows_large, Access, Durability};
use super::handle::{Inner, Outgoing, Shard};
use super::keys::{tomb_key, BatchOp};
use super::shard::StateGuard;
use super::tiers;
use super::tiers::Body;
use crate::crdt::Crdt;
use crate::error::{Error, Result};
use crate::hash::HashMap;
use crate::record::{encode_parts, encode_tombs, Meta, Tombs};
use std::sync::atomic::Ordering;

pub(super) fn merge_op(id: &[u8], meta: &Meta, crdt: &Crdt) -> BatchOp {
    BatchOp::Merge(id.into(), encode_parts(meta, &crdt.encode()))
}

impl Inner {
    pub(super) fn check_size(&self, n: usize) -> Result<()> {
        if n > self.cfg.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: n,
                max: self.cfg.max_value_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn injected_fault(&self) -> Result<()> {
        if self.fail_writes.load(Ordering::Acquire) {
            return Err(Error::Storage(format!(
                "{}: writes are failing (injected fault)",
                self.cold.path().display()
            )));
        }
        Ok(())
    }

    /// [`Inner::check_writable`], and on a normal scheduler, room in the
    /// pending map without a rehash.
    pub(super) fn check_writable_at(&self, sh: &Shard, id: &[u8], access: Access) -> Result<()> {
        self.check_writable()?;
        if access == Access::MemoryOnly
            && self.cfg.durability == Durability::Relaxed
            && sh.pending.insert_would_regrow(id)
        {
            return Err(Error::WouldBlock);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.injected_fault()?;
        if !self.has_write_error.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.write_error.lock() {
            Some(e) => Err(Error::Storage(e.clone())),
            None => Ok(()),
        }
    }

    /// A strict write: to the WAL now (the caller holds the disk lock, not
    /// the state lock).
    pub(super) fn write_strict(&self, id: &[u8], ops: &[BatchOp]) -> Result<()> {
        self.injected_fault()?;
        if let Err(e) = self.cold.write(ops) {
            // Further writes are refused until the flush thread's probe
            // finds the disk writable again.
            self.record_write_error(&e);
            return Err(e);
        }
        self.lock_state_unchecked(id).pending.written += 1;
        Ok(())
    }

    /// Whether recording a change of `id` for sync would rehash a large
    /// outgoing map (O(n) once; done on a dirty scheduler).
    pub(super) fn out_would_regrow(&self, out: &HashMap<Box<[u8]>, Outgoing>, id: &[u8]) -> bool {
        self.capture.load(Ordering::Relaxed)
            && regrows_large(out.len(), out.capacity())
            && !out.contains_key(id)
    }

    /// Persist `tombs` (already joined with those held) as the tombstones
    /// of `id`, with the store's durability, and hold them.
    pub(super) fn record_tombs<'a>(
        &'a self,
        mut sh: StateGuard<'a>,
        id: &[u8],
        tombs: Tombs,
    ) -> Result<()> {
        match self.cfg.durability {
            Durability::Relaxed => {
                let p = sh.pending.entry(id);
                p.tomb = Tombs::join(p.tomb.take(), Some(tombs.clone()));
            }
            Durability::Strict => {
                drop(sh);
                let op = BatchOp::PutMetaKey(tomb_key(id), encode_tombs(&tombs));
                self.write_strict(id, &[op])?;
                sh = self.lock_state_unchecked(id);
            }
        }
        sh.put_tombs(id.into(), tombs);
        Ok(())
    }

    /// Delete `id` (present, locked) with the store's durability, leaving
    /// `tomb` if any.
    pub(super) fn delete_locked<'a>(
        &'a self,
        mut sh: StateGuard<'a>,
        id: &[u8],
        tomb: Option<Tombs>,
        _access: Access,
    ) -> Result<StateGuard<'a>> {
        // Persisted joined with the one held: a tombstone write replaces
        // the stored one.
        let tomb = tomb.map(|t| t.over(sh.tombs.get(id).cloned()));
        match self.cfg.durability {
            Durability::Relaxed => sh.pending.delete(id, tomb.clone()),
            Durability::Strict => {
                drop(sh);
                let mut ops = vec![BatchOp::Delete(id.into())];
                if let Some(t) = &tomb {
                    ops.push(BatchOp::PutMetaKey(tomb_key(id), encode_tombs(t)));
                }
                self.write_strict(id, &ops)?;
                sh = self.lock_state_unchecked(id);
            }
        }
        // Joined above; the disk lock kept every other tombstone writer of
        // this shard out meanwhile.
        if let Some(t) = tomb {
            sh.put_tombs(id.into(), t);
        }
        if let Some(slot) = sh.tiers.remove(id) {
            tiers::drop_in_background(slot);
        }
        Ok(sh)
    }

    /// Persist `(meta, crdt)` joined into `id`, with the store's durability.
    pub(super) fn persist<'a>(
        &'a self,
        mut sh: StateGuard<'a>,
        id: &[u8],
        meta: &Meta,
        crdt: &Crdt,
    ) -> Result<StateGuard<'a>> {
        match self.cfg.durability {
            Durability::Relaxed => sh.pending.add(id, meta, crdt),
            Durability::Strict => {
                drop(sh);
                self.write_strict(id, &[merge_op(id, meta, crdt)])?;
                sh = self.lock_state_unchecked(id);
            }
        }
        Ok(sh)
    }

    pub(super) fn insert(&self, sh: &mut Shard, id: &[u8], meta: Meta, body: Body, accesses: u32) {
        if sh.tiers.insert(id, meta, body, accesses, self.limits) {
            self.cold_possible.store(true, Ordering::Release);
        }
    }
}

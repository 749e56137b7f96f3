//! Moving items between the tiers: locating an id (a cold load lays the
//! pending writes over the record on disk), assembling its state,
//! promoting warm to hot, and decay (demotion).

use super::cold::Cached;
use super::config::{Access, INLINE_BYTES};
use super::handle::{Inner, Shard, Store, View};
use super::shard::StateGuard;
use super::tiers;
use super::tiers::{drop_in_background, Body};
use super::write_behind::Pending;
use crate::crdt::Crdt;
use crate::error::{Error, Result};
use crate::record::{decode_parts, Meta, Record};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Estimated bytes of the pending deltas among `overlays`.
fn deltas_size<'p>(overlays: impl IntoIterator<Item = &'p Pending>) -> usize {
    overlays
        .into_iter()
        .filter_map(|p| p.delta.as_deref())
        .map(Crdt::size_hint)
        .sum()
}

impl Store {
    /// One decay pass: halve access counts; demote what was not used since
    /// the previous pass (hot -> warm -> cold). The shard lock is taken per
    /// item, and a large hot item leaves memory without being encoded, so
    /// no caller waits long behind it.
    pub fn decay(&self) {
        self.0.decay()
    }
}

impl Inner {
    /// Lock `id`'s shard and bring `id` into memory if it is on disk.
    /// Returns the guard and whether `id` exists. On a normal scheduler the
    /// disk is not read (`Error::WouldBlock`); on a dirty one it is read
    /// without the state lock (the caller holds the disk lock, so no flush
    /// of this shard moves writes out of the pending overlay meanwhile).
    pub(super) fn locate(&self, id: &[u8], access: Access) -> Result<(StateGuard<'_>, bool)> {
        self.locate_with(self.lock_state(id, access)?, id, access)
    }

    /// [`Inner::locate`] with the state lock already taken. On a dirty
    /// scheduler a large record is assembled (decoded, its pending deltas
    /// joined, encoded) without the state lock; it is kept only if nothing
    /// of `id` changed meanwhile, else the load starts again (and after a
    /// few tries assembles under the lock).
    pub(super) fn locate_with<'a>(
        &'a self,
        mut sh: StateGuard<'a>,
        id: &[u8],
        access: Access,
    ) -> Result<(StateGuard<'a>, bool)> {
        let mut attempt = 0;
        loop {
            if sh.tiers.contains(id) {
                return Ok((sh, true));
            }
            // `id` may be inserted next (loaded or created).
            if access == Access::MemoryOnly && sh.tiers.insert_would_regrow() {
                return Err(Error::WouldBlock);
            }
            if !self.cold_possible.load(Ordering::Acquire) {
                return Ok((sh, false));
            }
            let (s, base) = self.read_base(sh, id, access)?;
            sh = s;
            // Loaded by a normal-scheduler call while the lock was released
            // for the disk read: that copy is current.
            if sh.tiers.contains(id) {
                return Ok((sh, true));
            }
            attempt += 1;
            let size = base.as_ref().map_or(0, Vec::len) + deltas_size(sh.pending.overlays(id));
            let assembled = if access == Access::MayBlock && size > INLINE_BYTES && attempt <= 3 {
                let stamp = sh.pending.stamp(id);
                // Cheap: the deltas are shared, not copied.
                let overlays: Vec<Pending> = sh.pending.overlays(id).cloned().collect();
                drop(sh);
                let assembled = self.assemble_from(access, base, overlays.iter())?;
                drop(overlays);
                sh = self.lock_state_unchecked(id);
                if sh.tiers.contains(id) || sh.pending.stamp(id) != stamp {
                    drop_in_background(assembled);
                    continue;
                }
                assembled
            } else {
                self.assemble_from(access, base, sh.pending.overlays(id))?
            };
            return match assembled {
                None => Ok((sh, false)),
                Some((meta, bytes)) => {
                    self.insert(&mut sh, id, meta, Body::Warm(bytes), 0);
                    Ok((sh, true))
                }
            };
        }
    }

    /// The record of `id` in RocksDB (`None` when absent or when a pending
    /// delete hides it). Memory-only: from memtables and block cache under
    /// the state lock. Otherwise: released around the disk read.
    pub(super) fn read_base<'a>(
        &'a self,
        sh: StateGuard<'a>,
        id: &[u8],
        access: Access,
    ) -> Result<(StateGuard<'a>, Option<Vec<u8>>)> {
        if sh.pending.overlays(id).any(|p| p.reset) {
            return Ok((sh, None));
        }
        match self.cold.get(id, true) {
            Ok(Cached::Found(v)) => return Ok((sh, Some(v))),
            Ok(Cached::Missing) => return Ok((sh, None)),
            Err(Error::WouldBlock) if access == Access::MayBlock => {}
            Err(e) => return Err(e),
        }
        drop(sh);
        let base = match self.cold.get(id, false)? {
            Cached::Found(v) => Some(v),
            Cached::Missing => None,
        };
        let sh = self.lock_state_unchecked(id);
        Ok((sh, base))
    }

    pub(super) fn corrupt(&self, e: Error) -> Error {
        Error::Storage(format!(
            "{}: corrupt record: {e}",
            self.cold.path().display()
        ))
    }

    /// Lay pending writes (`overlays` of an id, oldest first) over its
    /// RocksDB record `base`: metadata and encoded state, or `None` when
    /// absent. Decoding and re-encoding a large record is refused on a
    /// normal scheduler.
    fn assemble_from<'p>(
        &self,
        access: Access,
        base: Option<Vec<u8>>,
        overlays: impl IntoIterator<Item = &'p Pending>,
    ) -> Result<Option<(Meta, Arc<[u8]>)>> {
        let overlays: Vec<&Pending> = overlays.into_iter().collect();
        let reset = overlays.iter().any(|p| p.reset);
        let base = if reset { None } else { base };
        if overlays.iter().all(|p| p.delta.is_none()) {
            return match base {
                None => Ok(None),
                Some(b) => {
                    let (meta, crdt) = decode_parts(&b).map_err(|e| self.corrupt(e))?;
                    Ok(Some((meta, crdt.into())))
                }
            };
        }
        if access == Access::MemoryOnly {
            // The joins and the encoding below are O(record + deltas).
            let size = base.as_ref().map_or(0, Vec::len) + deltas_size(overlays.iter().copied());
            if size > INLINE_BYTES {
                return Err(Error::WouldBlock);
            }
        }
        let mut rec: Option<Record> = match base {
            Some(b) => Some(Record::decode(&b).map_err(|e| self.corrupt(e))?),
            None => None,
        };
        for p in overlays {
            if p.reset {
                rec = None;
            }
            if let (Some(meta), Some(delta)) = (&p.meta, &p.delta) {
                let r = rec.get_or_insert_with(|| Record {
                    meta: meta.clone(),
                    crdt: Crdt::new(meta.kind),
                });
                r.absorb(meta, delta)?;
            }
        }
        Ok(rec.map(|r| (r.meta, r.crdt.encode().into())))
    }

    /// The metadata [`Inner::assemble_from`] would give, without decoding
    /// any state (O(1)).
    pub(super) fn assemble_meta(
        &self,
        sh: &Shard,
        id: &[u8],
        base: Option<Vec<u8>>,
    ) -> Result<Option<Meta>> {
        let mut meta: Option<Meta> = None;
        let overlays: Vec<&Pending> = sh.pending.overlays(id).collect();
        if !overlays.iter().any(|p| p.reset) {
            if let Some(b) = base {
                meta = Some(decode_parts(&b).map_err(|e| self.corrupt(e))?.0);
            }
        }
        for p in overlays {
            if p.reset {
                meta = None;
            }
            if let (Some(m), Some(_)) = (&p.meta, &p.delta) {
                match &mut meta {
                    Some(have) => match m.wins_over(have) {
                        std::cmp::Ordering::Greater => *have = m.clone(),
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => have.join(m),
                    },
                    None => meta = Some(m.clone()),
                }
            }
        }
        Ok(meta)
    }

    /// Call `f` on a snapshot of `id`'s large hot state without the shard
    /// lock (dirty schedulers): the NIF's `ext` is taken out for the call
    /// and put back if the state did not change meanwhile.
    pub(super) fn view_unlocked<'a, R>(
        &'a self,
        mut sh: StateGuard<'a>,
        id: &[u8],
        f: impl FnOnce(View<'_>) -> R,
    ) -> Result<R> {
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        let Body::Hot(c) = &slot.body else {
            return Err(Error::NotFound);
        };
        let (c, version, mut ext) = (Arc::clone(c), slot.version, slot.ext.take());
        drop(sh);
        let r = f(View {
            crdt: &c,
            version,
            ext: Some(&mut ext),
        });
        self.restore_ext(id, version, &c, ext);
        drop(c);
        Ok(r)
    }

    /// Keep the NIF's `ext` (taken out of the slot for work without the
    /// lock) if the slot still holds the state it was built from.
    fn restore_ext(&self, id: &[u8], version: u64, state: &Arc<Crdt>, ext: tiers::Ext) {
        if ext.is_none() {
            return;
        }
        let mut sh = self.lock_state_unchecked(id);
        if let Some(slot) = sh.tiers.get_mut(id) {
            // The same state object, not only the same version number (a
            // re-created id could reach an equal version).
            let same = matches!(&slot.body, Body::Hot(c) if Arc::ptr_eq(c, state));
            if slot.version == version && slot.ext.is_none() && same {
                slot.ext = ext;
                return;
            }
        }
        drop(sh);
        drop_in_background(ext);
    }

    /// Install `crdt`, decoded without the lock from warm `id` at
    /// `version`, as hot (if it is still warm at that version).
    pub(super) fn promote(&self, id: &[u8], version: u64, crdt: Crdt) {
        let mut sh = self.lock_state_unchecked(id);
        if sh.tiers.promote(id, version, crdt, self.limits) {
            self.cold_possible.store(true, Ordering::Release);
        }
    }

    pub(super) fn decay(&self) {
        let threshold = self.limits.threshold;
        for shard in self.shards.iter() {
            let candidates = shard.state.lock().tiers.decay_candidates(threshold);
            // `cold_possible` is set before the shard lock is released: a
            // miss on this shard must look on disk from then on.
            for (k, gen) in candidates {
                let mut sh = shard.state.lock();
                if sh.tiers.decay_one(k, gen) {
                    self.cold_possible.store(true, Ordering::Release);
                }
            }
            // Items demoted from hot may overfill warm (its used items
            // stay): restore the limits (evicting warm items is O(1) each).
            let mut sh = shard.state.lock();
            if sh.tiers.enforce_limits(&[], self.limits) {
                self.cold_possible.store(true, Ordering::Release);
            }
        }
    }
}

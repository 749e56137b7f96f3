//! The caller's operations on one id: create, read, update, merge,
//! metadata and delete, and the in-memory mutation each write makes.

use super::config::{Access, Durability, INLINE_BYTES, REGROW_INLINE_MAX};
use super::handle::{Inner, Outgoing, Shard, Store, View};
use super::replication::note_out;
use super::shard::StateGuard;
use super::telemetry::Counted;
use super::tiers::{decode_stored, drop_in_background, Body, Tier};
use super::write::merge_op;
use crate::crdt::{Crdt, Kind, Mutation, Op};
use crate::error::{Error, Result};
use crate::hlc::Timestamp;
use crate::lww::{LwwEntry, LwwRegister};
use crate::record::{Gen, Meta, Tomb, Tombs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Store {
    /// Create `id` of `kind`.
    pub fn create(&self, id: &[u8], kind: Kind, access: Access) -> Result<()> {
        let r = self.create_uncounted(id, kind, access);
        self.0.telemetry.note(Counted::Write, r)
    }

    fn create_uncounted(&self, id: &[u8], kind: Kind, access: Access) -> Result<()> {
        let inner = &self.0;
        inner.check_size(id.len())?;
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (mut sh, present) = inner.locate(id, access)?;
        if present {
            return Err(Error::AlreadyExists);
        }
        if access == Access::MemoryOnly && inner.out_would_regrow(&sh.out, id) {
            return Err(Error::WouldBlock);
        }
        inner.check_writable_at(&sh, id, access)?;
        let now = inner.now_ms();
        // A create over a tombstone starts the next epoch, which wins over
        // every delta of the deleted generation still travelling.
        let gen = Gen {
            epoch: sh.tombs.get(id).map_or(0, Tombs::next_epoch),
            stamp: inner.clock.lock().tick(now).to_u64(),
            replica: inner.replica.0.clone(),
        };
        let meta = Meta {
            kind,
            created_by: inner.node_id.clone(),
            created_at: now,
            updated_at: now,
            gen,
            deleted: false,
        };
        let crdt = Crdt::new(kind);
        match inner.cfg.durability {
            Durability::Relaxed => sh.pending.add(id, &meta, &crdt),
            Durability::Strict => {
                // Written before it exists in memory; the disk lock keeps
                // other writers of this shard out meanwhile.
                drop(sh);
                inner.write_strict(id, &[merge_op(id, &meta, &crdt)])?;
                sh = inner.lock_state_unchecked(id);
            }
        }
        if inner.capture.load(Ordering::Relaxed) {
            note_out(&mut sh.out, id, &meta, &crdt);
        }
        inner.insert(&mut sh, id, meta, Body::Hot(Arc::new(crdt)), 1);
        Ok(())
    }

    /// Call `f` with the state of `id`. On a dirty scheduler, a large item
    /// is decoded and `f` runs without the shard lock, on a snapshot (see
    /// `tiers`): normal-scheduler calls on the shard never wait for O(n)
    /// work.
    pub fn read<R>(&self, id: &[u8], access: Access, f: impl FnOnce(View<'_>) -> R) -> Result<R> {
        let r = self.read_with(id, access, true, f);
        self.0.telemetry.note(Counted::Read, r)
    }

    /// [`Store::read`]; without `touch` the read counts no access (no
    /// promotion, no demotion).
    pub(super) fn read_with<R>(
        &self,
        id: &[u8],
        access: Access,
        touch: bool,
        f: impl FnOnce(View<'_>) -> R,
    ) -> Result<R> {
        let inner = &self.0;
        let _disk = inner.lock_disk_for_read(id, access);
        let (mut sh, present) = inner.locate(id, access)?;
        if !present {
            return Err(Error::NotFound);
        }
        let inline = access == Access::MemoryOnly;
        let touched = if touch {
            sh.tiers.touch(id, inner.limits)?
        } else {
            Default::default()
        };
        if touched.to_cold {
            inner.cold_possible.store(true, Ordering::Release);
        }
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        let version = slot.version;
        let big = slot.size_hint() > INLINE_BYTES;
        if big && !inline && matches!(slot.body, Body::Hot(_)) {
            return inner.view_unlocked(sh, id, f);
        }
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        match &slot.body {
            Body::Hot(c) => Ok(f(View {
                crdt: c,
                version,
                ext: Some(&mut slot.ext),
            })),
            Body::Warm(_) if inline && big => Err(Error::WouldBlock),
            Body::Warm(bytes) if !big => {
                let c = decode_stored(bytes)?;
                Ok(f(View {
                    crdt: &c,
                    version,
                    ext: None,
                }))
            }
            Body::Warm(bytes) => {
                let bytes = Arc::clone(bytes);
                drop(sh);
                let c = decode_stored(&bytes)?;
                drop(bytes);
                let r = f(View {
                    crdt: &c,
                    version,
                    ext: None,
                });
                if touched.promote {
                    inner.promote(id, version, c);
                }
                Ok(r)
            }
        }
    }

    /// Apply `m` to `id` and call `f` with the new state.
    pub fn update<R>(
        &self,
        id: &[u8],
        m: Mutation<'_>,
        access: Access,
        f: impl FnOnce(View<'_>) -> R,
    ) -> Result<R> {
        self.update_with(id, m, access, false, f)
    }

    /// [`Store::update`]; with `linear_reply`, `f` does O(size) work (builds
    /// the value), so on a normal scheduler a large item answers
    /// `Error::WouldBlock` *before* it is mutated: the dirty retry then
    /// mutates and replies in one call, and the reply is the value right
    /// after this mutation.
    pub fn update_with<R>(
        &self,
        id: &[u8],
        m: Mutation<'_>,
        access: Access,
        linear_reply: bool,
        f: impl FnOnce(View<'_>) -> R,
    ) -> Result<R> {
        let r = self.update_uncounted(id, m, access, linear_reply, f);
        self.0.telemetry.note(Counted::Write, r)
    }

    fn update_uncounted<R>(
        &self,
        id: &[u8],
        m: Mutation<'_>,
        access: Access,
        linear_reply: bool,
        f: impl FnOnce(View<'_>) -> R,
    ) -> Result<R> {
        let inner = &self.0;
        let inline = access == Access::MemoryOnly;
        if let Mutation::Add(b) | Mutation::Remove(b) | Mutation::Set(b) = m {
            inner.check_size(b.len())?;
            // Copying a large payload into the state and the delta is O(n).
            if inline && b.len() > INLINE_BYTES {
                return Err(Error::WouldBlock);
            }
        }
        let _disk = inner.lock_disk_for_write(id, access)?;
        // Judged on the size *after* the mutation (bounded by the size
        // before plus the payload), so that a reply is never refused once
        // the state has changed.
        let payload = match m {
            Mutation::Add(b) | Mutation::Remove(b) | Mutation::Set(b) => b.len(),
            _ => 0,
        };
        let mut promotions = 0;
        let mut sh = loop {
            let (sh, present) = inner.locate(id, access)?;
            if !present {
                return Err(Error::NotFound);
            }
            let slot = sh.tiers.get(id).ok_or(Error::NotFound)?;
            let big = slot.size_hint() + payload + 64 > INLINE_BYTES;
            // A register's write replaces (and frees) its whole value.
            let replaces = slot.meta.kind == Kind::LwwRegister;
            if inline && big && (linear_reply || replaces || matches!(slot.body, Body::Warm(_))) {
                return Err(Error::WouldBlock);
            }
            // An add (or a remove-wins remove token) may grow a large set's
            // tables: that one write rehashes them all.
            if inline && matches!(m, Mutation::Add(_) | Mutation::Remove(_)) {
                if let Body::Hot(c) = &slot.body {
                    if matches!(c.next_insert_reallocates(), Some(n) if n >= REGROW_INLINE_MAX) {
                        return Err(Error::WouldBlock);
                    }
                }
            }
            // A large warm item written on a dirty scheduler is decoded once,
            // without the shard lock, and made hot: the write (and the next
            // ones) then change it in place instead of decoding and
            // re-encoding all of it under the lock.
            match &slot.body {
                Body::Warm(bytes) if big && promotions < 3 => {
                    promotions += 1;
                    let (bytes, version) = (Arc::clone(bytes), slot.version);
                    drop(sh);
                    let c = decode_stored(&bytes)?;
                    drop(bytes);
                    inner.promote(id, version, c);
                }
                _ => break sh,
            }
        };
        if sh.tiers.touch(id, inner.limits)?.to_cold {
            inner.cold_possible.store(true, Ordering::Release);
        }
        let kind = sh.tiers.get(id).ok_or(Error::NotFound)?.meta.kind;
        // `None`: a no-op (e.g. increment of a G-Counter by n <= 0).
        if let Some(op) = m.fit(kind)? {
            sh = inner.mutate(sh, id, op, access)?;
        }
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        let version = slot.version;
        let unlocked = linear_reply && !inline && slot.size_hint() > INLINE_BYTES;
        if unlocked && matches!(slot.body, Body::Hot(_)) {
            return inner.view_unlocked(sh, id, f);
        }
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        Ok(match &slot.body {
            Body::Hot(c) => f(View {
                crdt: c,
                version,
                ext: Some(&mut slot.ext),
            }),
            Body::Warm(b) if unlocked => {
                let b = Arc::clone(b);
                drop(sh);
                f(View {
                    crdt: &decode_stored(&b)?,
                    version,
                    ext: None,
                })
            }
            Body::Warm(b) => f(View {
                crdt: &decode_stored(b)?,
                version,
                ext: None,
            }),
        })
    }

    /// Join a CRDT (state or delta, e.g. from a peer) into `id`, creating it
    /// when missing.
    pub fn merge(&self, id: &[u8], meta: &Meta, other: &Crdt, access: Access) -> Result<()> {
        let r = self.merge_uncounted(id, meta, other, access);
        self.0.telemetry.note(Counted::Write, r)
    }

    fn merge_uncounted(&self, id: &[u8], meta: &Meta, other: &Crdt, access: Access) -> Result<()> {
        let inner = &self.0;
        if meta.kind != other.kind() {
            return Err(Error::TypeMismatch);
        }
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (mut sh, present) = inner.locate(id, access)?;
        if let Some(slot) = sh.tiers.get(id) {
            if slot.meta.kind != meta.kind {
                return Err(Error::TypeMismatch);
            }
            if access == Access::MemoryOnly && slot.size_hint() > INLINE_BYTES {
                return Err(Error::WouldBlock);
            }
        }
        inner.check_writable_at(&sh, id, access)?;
        // A new id is persisted as its joined state: a delta alone is no
        // record.
        let persisted = if present {
            other.clone()
        } else {
            let mut crdt = Crdt::new(meta.kind);
            crdt.join(other)?;
            crdt
        };
        match inner.cfg.durability {
            Durability::Relaxed => sh.pending.add(id, meta, &persisted),
            Durability::Strict => {
                drop(sh);
                inner.write_strict(id, &[merge_op(id, meta, &persisted)])?;
                sh = inner.lock_state_unchecked(id);
            }
        }
        if sh.tiers.contains(id) {
            inner.join_in_memory(&mut sh, id, meta, other)?;
        } else if !present {
            inner.insert(&mut sh, id, meta.clone(), Body::Hot(Arc::new(persisted)), 1);
        }
        // Present before but gone now: it left memory after the write,
        // which the next load reads.
        Ok(())
    }

    /// Metadata and tier of `id`, without promoting it.
    pub fn metadata(&self, id: &[u8], access: Access) -> Result<(Meta, Tier)> {
        let inner = &self.0;
        let _disk = inner.lock_disk_for_read(id, access);
        let sh = inner.lock_state(id, access)?;
        if let Some(slot) = sh.tiers.get(id) {
            return Ok((slot.meta.clone(), slot.tier()));
        }
        if !inner.cold_possible.load(Ordering::Acquire) {
            return Err(Error::NotFound);
        }
        let (sh, base) = inner.read_base(sh, id, access)?;
        if let Some(slot) = sh.tiers.get(id) {
            return Ok((slot.meta.clone(), slot.tier()));
        }
        match inner.assemble_meta(&sh, id, base)? {
            Some(meta) => Ok((meta, Tier::Cold)),
            None => Err(Error::NotFound),
        }
    }

    /// Delete `id`.
    pub fn delete(&self, id: &[u8], access: Access) -> Result<()> {
        let r = self.delete_uncounted(id, access);
        self.0.telemetry.note(Counted::Write, r)
    }

    fn delete_uncounted(&self, id: &[u8], access: Access) -> Result<()> {
        let inner = &self.0;
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (sh, present) = inner.locate(id, access)?;
        if !present {
            return Err(Error::NotFound);
        }
        if access == Access::MemoryOnly && inner.out_would_regrow(&sh.out, id) {
            return Err(Error::WouldBlock);
        }
        inner.check_writable_at(&sh, id, access)?;
        let meta = sh.tiers.get(id).ok_or(Error::NotFound)?.meta.clone();
        // A directory that never synced keeps no tombstone: it guards only
        // against peers' late copies of the deleted generation.
        let capture = inner.capture.load(Ordering::Relaxed);
        let tomb = (capture || inner.synced.load(Ordering::Relaxed)).then(|| {
            let at = inner.clock.lock().tick(inner.now_ms()).to_u64();
            Tomb::new(meta.gen.clone(), at)
        });
        let mut sh = inner.delete_locked(sh, id, tomb.clone().map(Tombs::one), access)?;
        if let (true, Some(tomb)) = (capture, tomb) {
            // A tombstone entry carries the delete's stamp in `updated_at`
            // (see `Tomb::of_entry`).
            let meta = Meta {
                deleted: true,
                updated_at: tomb.at,
                ..meta
            };
            sh.out.insert(id.into(), Outgoing { meta, delta: None });
        }
        Ok(())
    }
}

impl Inner {
    /// Apply `op` to `id` (present, in memory) with the store's durability.
    /// Strict: the delta is in the WAL before memory changes.
    fn mutate<'a>(
        &'a self,
        mut sh: StateGuard<'a>,
        id: &[u8],
        op: Op<'_>,
        access: Access,
    ) -> Result<StateGuard<'a>> {
        let inner = self;
        inner.check_writable_at(&sh, id, access)?;
        let now = inner.now_ms();
        let (op, ticked) = match op {
            Op::Set(v, _) => {
                let ts = inner.clock.lock().tick(now);
                (Op::Set(v, ts), Some(ts))
            }
            other => (other, None),
        };
        match inner.cfg.durability {
            Durability::Relaxed => match op {
                Op::Set(v, ts) if access == Access::MayBlock && inner.large(&sh, id, v.len()) => {
                    sh = inner.set_large(sh, id, v, ts)?;
                }
                op => inner.apply_relaxed(&mut sh, id, op, access, now)?,
            },
            Durability::Strict => {
                let (delta, meta) = {
                    let slot = sh.tiers.get(id).ok_or(Error::NotFound)?;
                    let delta = match &slot.body {
                        Body::Hot(c) => c.delta_of(&inner.replica, op)?,
                        Body::Warm(b) => decode_stored(b)?.delta_of(&inner.replica, op)?,
                    };
                    let mut meta = slot.meta.clone();
                    meta.updated_at = now;
                    (delta, meta)
                };
                drop(sh);
                let mut ops = vec![merge_op(id, &meta, &delta)];
                let hlc_moved =
                    matches!(delta, Crdt::LwwRegister(_)) && inner.hlc_to_batch(&mut ops);
                if let Err(e) = inner.write_strict(id, &ops) {
                    if hlc_moved {
                        *inner.persisted_hlc.lock() = Timestamp::ZERO;
                    }
                    return Err(e);
                }
                let (s, present) = inner.locate_with(inner.lock_state_unchecked(id), id, access)?;
                sh = s;
                if !present {
                    return Err(Error::NotFound);
                }
                // If it left memory and was reloaded meanwhile, the reload
                // already holds the delta: joining again is idempotent.
                inner.join_in_memory(&mut sh, id, &meta, &delta)?;
                if inner.capture.load(Ordering::Relaxed) {
                    note_out(&mut sh.out, id, &meta, &delta);
                }
            }
        }
        // A register keeps a newer timestamp than the one just issued (a
        // peer's): the clock moves past it. (The clock is already at or past
        // the issued one, so an older or equal timestamp changes nothing.)
        if let Some(issued) = ticked {
            if let Some(slot) = sh.tiers.get(id) {
                if let Body::Hot(c) = &slot.body {
                    if let Crdt::LwwRegister(r) = &**c {
                        if let Some(ts) = r.timestamp().filter(|ts| *ts > issued) {
                            inner.clock.lock().observe(ts);
                        }
                    }
                }
            }
        }
        Ok(sh)
    }

    /// Relaxed: apply `op` in memory and join its delta into the pending
    /// delta group. Nothing can fail after the state changed.
    fn apply_relaxed(
        &self,
        sh: &mut Shard,
        id: &[u8],
        op: Op<'_>,
        access: Access,
        now: u64,
    ) -> Result<()> {
        let Shard {
            tiers,
            pending,
            out,
            ..
        } = sh;
        if access == Access::MemoryOnly && self.out_would_regrow(out, id) {
            return Err(Error::WouldBlock);
        }
        let slot = tiers.get_mut(id).ok_or(Error::NotFound)?;
        let kind = slot.meta.kind;
        if let Body::Hot(c) = &slot.body {
            // A dirty call is reading a snapshot of it: changing it now
            // would copy all of it.
            if access == Access::MemoryOnly && Arc::strong_count(c) > 1 {
                return Err(Error::WouldBlock);
            }
        }
        let p = pending.entry(id);
        let acc = Arc::make_mut(
            p.delta
                .get_or_insert_with(|| Arc::new(Crdt::empty_delta(kind))),
        );
        // With sync capture on, the delta is made alone and joined into
        // both the pending group and the outgoing change.
        let capture = self.capture.load(Ordering::Relaxed);
        let mut alone = capture.then(|| Crdt::empty_delta(kind));
        let into = match &mut alone {
            Some(d) => d,
            None => acc,
        };
        match &mut slot.body {
            Body::Hot(c) => Arc::make_mut(c).mutate_join(&self.replica, op, into)?,
            Body::Warm(bytes) => {
                let mut c = decode_stored(bytes)?;
                c.mutate_join(&self.replica, op, into)?;
                *bytes = c.encode().into();
            }
        }
        slot.meta.updated_at = now;
        slot.changed();
        match &mut p.meta {
            Some(m) => m.join(&slot.meta),
            None => p.meta = Some(slot.meta.clone()),
        }
        if let Some(d) = alone {
            // Cannot fail: both are of `kind`, and the state just took it.
            let _ = acc.join(&d);
            note_out(out, id, &slot.meta, &d);
        }
        Ok(())
    }

    /// Whether `id` (present) with `payload` more bytes is over `INLINE_BYTES`.
    pub(super) fn large(&self, sh: &Shard, id: &[u8], payload: usize) -> bool {
        sh.tiers
            .get(id)
            .is_some_and(|slot| slot.size_hint() + payload > INLINE_BYTES)
    }

    /// Relaxed write of a large register value on a dirty scheduler: the new
    /// state is built (the value copied) without the shard lock and then
    /// installed in O(1), shared with the pending delta group, which it
    /// replaces (a local write is newer than all this replica has seen, so
    /// the join of both is the new state). The replaced values are freed in
    /// the background. Falls back to [`Inner::apply_relaxed`] when `id`
    /// changed meanwhile.
    fn set_large<'a>(
        &'a self,
        sh: StateGuard<'a>,
        id: &[u8],
        v: &[u8],
        ts: Timestamp,
    ) -> Result<StateGuard<'a>> {
        let slot = sh.tiers.get(id).ok_or(Error::NotFound)?;
        let (current, version) = match &slot.body {
            Body::Hot(c) => match &**c {
                Crdt::LwwRegister(r) => (r.timestamp(), slot.version),
                _ => return Err(Error::UnsupportedOperation),
            },
            Body::Warm(_) => {
                let mut sh = sh;
                self.apply_relaxed(&mut sh, id, Op::Set(v, ts), Access::MayBlock, self.now_ms())?;
                return Ok(sh);
            }
        };
        drop(sh);
        let entry_ts = match current {
            Some(cur) if cur >= ts => cur.successor(),
            _ => ts,
        };
        let new = Arc::new(Crdt::LwwRegister(LwwRegister::from_entry(Some(LwwEntry {
            ts: entry_ts,
            replica: self.replica.clone(),
            value: v.into(),
        }))));
        let (mut sh, present) =
            self.locate_with(self.lock_state_unchecked(id), id, Access::MayBlock)?;
        if !present {
            return Err(Error::NotFound);
        }
        let Shard {
            tiers,
            pending,
            out,
            ..
        } = &mut *sh;
        let slot = tiers.get_mut(id).ok_or(Error::NotFound)?;
        if slot.version != version || !matches!(slot.body, Body::Hot(_)) {
            drop_in_background(new);
            self.apply_relaxed(&mut sh, id, Op::Set(v, ts), Access::MayBlock, self.now_ms())?;
            return Ok(sh);
        }
        let old = std::mem::replace(&mut slot.body, Body::Hot(Arc::clone(&new)));
        slot.meta.updated_at = self.now_ms();
        slot.changed();
        if self.capture.load(Ordering::Relaxed) {
            // The new state dominates every earlier local change of it.
            let o = Outgoing {
                meta: slot.meta.clone(),
                delta: Some(Arc::clone(&new)),
            };
            if let Some(old) = out.insert(id.into(), o) {
                drop_in_background(old.delta);
            }
        }
        let p = pending.entry(id);
        let old_delta = p.delta.replace(new);
        match &mut p.meta {
            Some(m) => m.join(&slot.meta),
            None => p.meta = Some(slot.meta.clone()),
        }
        drop_in_background((old, old_delta));
        Ok(sh)
    }

    /// Join `other` into the in-memory state of `id` (present).
    pub(super) fn join_in_memory(
        &self,
        sh: &mut Shard,
        id: &[u8],
        meta: &Meta,
        other: &Crdt,
    ) -> Result<()> {
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        match &mut slot.body {
            Body::Hot(c) => Arc::make_mut(c).join(other)?,
            Body::Warm(bytes) => {
                let mut c = decode_stored(bytes)?;
                c.join(other)?;
                *bytes = c.encode().into();
            }
        }
        slot.meta.join(meta);
        slot.changed();
        Ok(())
    }
}

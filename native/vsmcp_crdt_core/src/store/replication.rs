//! What sync needs of the store: the capture of local changes for
//! outgoing deltas, and the merge of a peer's entries by generation, with
//! its rules for tombstones and collection cuts.

use super::config::Access;
use super::handle::{Inner, Outgoing, Store};
use super::keys::SYNCED_KEY;
use super::telemetry::Counted;
use super::tiers::{drop_in_background, Body};
use super::write_behind::join_by_generation;
use crate::crdt::{Crdt, Kind};
use crate::error::{Error, Result};
use crate::hash::HashMap;
use crate::record;
use crate::record::{encode_parts, Meta, Tomb, Tombs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Join a local change of `id` into the outgoing map, by generation.
pub(super) fn note_out(
    out: &mut HashMap<Box<[u8]>, Outgoing>,
    id: &[u8],
    meta: &Meta,
    delta: &Crdt,
) {
    match out.get_mut(id) {
        None => {
            let o = Outgoing {
                meta: meta.clone(),
                delta: Some(Arc::new(delta.clone())),
            };
            out.insert(id.into(), o);
        }
        Some(o) => join_by_generation(&mut o.meta, &mut o.delta, meta, delta),
    }
}

/// What [`Store::merge_remote`] did with a peer's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// The id did not exist here; it does now.
    Created,
    /// Same generation: joined.
    Joined,
    /// The peer's generation won: its state replaced ours (`clash`: of
    /// another type).
    Replaced { clash: bool },
    /// Our generation won, or the id was deleted here in a generation at
    /// least as new: the entry was dropped (`clash`: of another type).
    Dropped { clash: bool },
    /// A tombstone that deleted the id here.
    Deleted,
    /// A tombstone recorded (the id was absent) or already known.
    Tombstone,
    /// A generation deleted here (its tombstone is here): dropped.
    Stale,
    /// A generation deleted before a collection cut (see `merge_remote`):
    /// dropped, and the record held here, which that delete killed too,
    /// deleted.
    CutDeleted,
}

/// At most this many entries of room are kept in a shard's map of local
/// changes when it is taken (about 100 B each).
const OUT_CAPACITY_KEPT: usize = 256;

impl Store {
    /// Start recording local changes for sync (for [`Store::take_outgoing`]).
    /// Returns the owner token that [`Store::stop_capture`] needs: a newer
    /// owner supersedes an older one, whose stop then changes nothing.
    pub fn start_capture(&self) -> u64 {
        static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let token = TOKENS.fetch_add(1, Ordering::Relaxed);
        if !self.0.synced.swap(true, Ordering::AcqRel) {
            // Best effort: if it is lost, deletes made while no engine runs
            // after the next open leave no tombstone, as before any sync.
            let _ = self.0.cold.put_meta(SYNCED_KEY, b"1", false);
        }
        *self.0.capture_owner.lock() = token;
        self.0.capture.store(true, Ordering::Release);
        token
    }

    /// Stop recording local changes if `token` is still the owner's; what
    /// was recorded is dropped. Takes every shard lock: not for normal
    /// schedulers.
    pub fn stop_capture(&self, token: u64) {
        let mut owner = self.0.capture_owner.lock();
        if *owner != token {
            return;
        }
        *owner = 0;
        self.0.capture.store(false, Ordering::Release);
        drop(owner);
        for shard in self.0.shards.iter() {
            let old = std::mem::take(&mut shard.state.lock().out);
            drop_in_background(old);
        }
    }

    /// Take the local changes recorded since the last call, as sync
    /// entries: `(id, record bytes)` where the record holds the joined
    /// deltas of the id (or, `deleted`, its tombstone). Each shard's map is
    /// taken in O(1); encoding happens without locks.
    pub fn take_outgoing(&self) -> Vec<(Box<[u8]>, Vec<u8>)> {
        let mut entries = Vec::new();
        for shard in self.0.shards.iter() {
            let taken = {
                let mut sh = shard.state.lock();
                // Room for what this round held, but not a burst's worth
                // kept for ever (a sync process held up for a while lets
                // a shard's map grow to many thousands of entries).
                let cap = sh.out.len().min(OUT_CAPACITY_KEPT);
                std::mem::replace(
                    &mut sh.out,
                    HashMap::with_capacity_and_hasher(cap, Default::default()),
                )
            };
            for (id, o) in taken {
                let crdt = match &o.delta {
                    Some(d) if !o.meta.deleted => d.encode(),
                    _ => Crdt::new(o.meta.kind).encode(),
                };
                entries.push((id, encode_parts(&o.meta, &crdt)));
            }
        }
        entries
    }

    /// Join a peer's sync entry for `id` (metadata and a delta or state, or
    /// a tombstone) into the store, by generation (see `record`). Runs on a
    /// dirty scheduler; persisted with the store's durability; never
    /// recorded as a local change.
    pub fn merge_remote(&self, id: &[u8], meta: &Meta, crdt: &Crdt) -> Result<Merged> {
        let r = self.merge_remote_uncounted(id, meta, crdt);
        self.0.telemetry.note(Counted::RemoteMerge, r)
    }

    fn merge_remote_uncounted(&self, id: &[u8], meta: &Meta, crdt: &Crdt) -> Result<Merged> {
        let inner = &self.0;
        let access = Access::MayBlock;
        if meta.kind != crdt.kind() {
            return Err(Error::TypeMismatch);
        }
        inner.check_size(id.len())?;
        if let Crdt::LwwRegister(r) = crdt {
            inner.check_size(r.value().map_or(0, <[u8]>::len))?;
        }
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (mut sh, present) = inner.locate(id, access)?;
        inner.check_writable_at(&sh, id, access)?;
        let local = if present {
            Some(sh.tiers.get(id).ok_or(Error::NotFound)?.meta.clone())
        } else {
            None
        };
        if meta.deleted {
            let held = sh.tombs.get(id).cloned();
            let joined = Tombs::one(Tomb::of_entry(meta)).over(held.clone());
            // The tombstone held beside a record never kills it. The join
            // can kill more than either part, so the record is checked
            // against the join: every replica holding both decides alike.
            if local.as_ref().is_some_and(|l| joined.kills(&l.gen)) {
                let mut sh = inner.delete_locked(sh, id, Some(joined.clone()), access)?;
                // Local changes of the deleted generation not yet shipped
                // would only be dropped by every peer.
                if sh.out.get(id).is_some_and(|o| joined.kills(&o.meta.gen)) {
                    sh.out.remove(id);
                }
                return Ok(Merged::Deleted);
            }
            let outcome = if local.is_some() {
                Merged::Dropped { clash: false }
            } else {
                Merged::Tombstone
            };
            if held.as_ref() == Some(&joined) {
                return Ok(outcome);
            }
            // Recorded even beside a record it does not kill (a create made
            // after the delete): it still kills late copies of what it
            // deleted.
            inner.record_tombs(sh, id, joined)?;
            return Ok(outcome);
        }
        if sh.tombs.get(id).is_some_and(|t| t.kills(&meta.gen)) {
            return Ok(Merged::Stale);
        }
        let cut = inner.cut_of(&meta.gen.replica);
        let unknown_gen = local.as_ref().is_none_or(|l| l.gen != meta.gen);
        if meta.gen.stamp < cut && unknown_gen {
            // Created before a collection cut its creator was part of, and
            // not held here: at the cut every replica held what we held,
            // and everything the creator had made before it was here. So
            // this is a late copy of a record deleted since, whose
            // tombstone was collected: from a restored backup, a replica
            // that missed the delete, a late message. It is deleted again
            // with a tombstone just after its create, which kills a subset
            // of what the collected delete killed (that came later), and
            // the tombstone is answered. Creates of replicas that were
            // never part of a cut (a new node, one that wrote before it
            // found the cluster) are never refused; imports and records
            // from before generations have no directory.
            let tombs = Tombs::one(Tomb::new(meta.gen.clone(), 0)).over(sh.tombs.get(id).cloned());
            if local.as_ref().is_some_and(|l| tombs.kills(&l.gen)) {
                let mut sh = inner.delete_locked(sh, id, Some(tombs.clone()), access)?;
                if sh.out.get(id).is_some_and(|o| tombs.kills(&o.meta.gen)) {
                    sh.out.remove(id);
                }
                return Ok(Merged::CutDeleted);
            }
            inner.record_tombs(sh, id, tombs)?;
            return Ok(Merged::Stale);
        }
        let outcome = match &local {
            Some(local) => match meta.wins_over(local) {
                std::cmp::Ordering::Less => {
                    return Ok(Merged::Dropped {
                        clash: local.kind != meta.kind,
                    })
                }
                std::cmp::Ordering::Equal => Merged::Joined,
                std::cmp::Ordering::Greater => Merged::Replaced {
                    clash: local.kind != meta.kind,
                },
            },
            None => Merged::Created,
        };
        if outcome == Merged::Joined {
            sh = inner.persist(sh, id, meta, crdt)?;
            if sh.tiers.contains(id) {
                inner.join_in_memory(&mut sh, id, meta, crdt)?;
            }
            return Ok(outcome);
        }
        let mut state = Crdt::new(meta.kind);
        state.join(crdt)?;
        sh = inner.persist(sh, id, meta, &state)?;
        if let Some(slot) = sh.tiers.remove(id) {
            drop_in_background(slot);
        }
        inner.insert(&mut sh, id, meta.clone(), Body::Hot(Arc::new(state)), 1);
        Ok(outcome)
    }

    /// Call `f` with the metadata and state of `id` without counting an
    /// access (sync's digests and state transfers); for a deleted id, its
    /// tombstone (`meta.deleted`) and an empty state. `Ok(None)` when the
    /// store knows nothing of `id`.
    pub fn with_sync_state<R>(
        &self,
        id: &[u8],
        f: impl FnOnce(&Meta, &Crdt, u64) -> R,
    ) -> Result<Option<R>> {
        let access = Access::MayBlock;
        let meta = match self.metadata(id, access) {
            Ok((meta, _)) => meta,
            Err(Error::NotFound) => {
                return Ok(self
                    .tombstone(id)
                    .map(|t| f(&t.entry_meta(), &Crdt::new(Kind::GCounter), 0)))
            }
            Err(e) => return Err(e),
        };
        match self.read_with(id, access, false, |v| f(&meta, v.crdt, v.version)) {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Inner {
    /// The latest collection cut the creating replica of a generation was
    /// part of (0: none; also for replica ids that name no directory).
    fn cut_of(&self, replica: &[u8]) -> u64 {
        if replica.len() != record::REPLICA_BYTES {
            return 0;
        }
        let dir = &replica[..record::DIRECTORY_BYTES];
        self.member_cuts.lock().get(dir).copied().unwrap_or(0)
    }
}

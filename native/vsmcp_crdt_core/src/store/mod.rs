//! The tiered store: hot and warm tiers in memory, cold tier in RocksDB.
//!
//! * [`config`]: options, durability, the scheduler contract ([`Access`]).
//! * `tiers`: hot/warm CLOCK queues of one shard; promotion and demotion.
//! * `write_behind`: pending delta groups and group commit.
//! * [`cold`]: RocksDB, shared by the stores of one OS process per path.
//! * [`record`]: what is stored per id, and the merge operator.
//! * [`halt`]: process exit without a crash and without losing writes.
//!
//! Ids are spread over shards. Each shard has two locks: `state` (its tiers
//! and pending writes; held for microseconds, never across I/O) and `disk`
//! (held by whoever does I/O for the shard: the flush thread during a batch,
//! a strict write, a cold load from disk). Normal BEAM schedulers take only
//! `state`, so they never wait behind a disk. Lock order: `disk`, then
//! `state`, then RocksDB.
//!
//! **Durability.** Every mutation produces a delta, persisted as a RocksDB
//! merge operand of bytes proportional to the delta. `Relaxed` (default):
//! deltas are joined into per-id delta groups written every
//! `flush_interval_ms`. `Strict`: the delta, computed without changing
//! memory (`Crdt::delta_of`), is in the WAL before memory changes and
//! before the call returns; a failed write changes nothing. WAL writes are
//! not fsynced: they survive the OS process being killed, not a power loss.
//!
//! **Replica identity.** Each open is a new *incarnation* (persisted with
//! fsync); the replica id in dots and counter entries is
//! `node_id ++ incarnation`, so a crash never makes a node reuse a dot.

pub mod cold;
pub mod config;
pub mod halt;
pub mod record;
mod tiers;
mod write_behind;

pub use config::{Access, Durability, StoreConfig, INLINE_BYTES};
pub use tiers::{drop_in_background, Ext, Tier};
pub use write_behind::Pending;

use crate::causal::ReplicaId;
pub use crate::crdt::Mutation;
use crate::crdt::{Crdt, Kind, Op};
use crate::error::{Error, Result};
use crate::hlc::{now_ms, Clock, Timestamp};
use cold::{BatchOp, Cached, ColdTier, Owner, HLC_KEY, INCARNATION_KEY, NODE_KEY};
use parking_lot::{Condvar, Mutex, MutexGuard};
use record::{decode_parts, encode_parts, Meta, Record};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tiers::{decode_stored, Body, Limits, Tiers};
use write_behind::PendingWrites;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub hot: usize,
    pub warm: usize,
    pub pending_writes: usize,
    pub cold_estimate: u64,
    pub shards: usize,
    pub incarnation: u64,
}

/// What a read or update callback sees: the state, its version (bumped on
/// every change) and, for hot items, the slot the NIF may cache a built
/// value in.
pub struct View<'a> {
    pub crdt: &'a Crdt,
    pub version: u64,
    pub ext: Option<&'a mut Ext>,
}

impl std::ops::Deref for View<'_> {
    type Target = Crdt;
    fn deref(&self) -> &Crdt {
        self.crdt
    }
}

#[derive(Default)]
struct Shard {
    tiers: Tiers,
    pending: PendingWrites,
}

#[derive(Default)]
struct ShardLocks {
    state: Mutex<Shard>,
    disk: Mutex<()>,
}

struct Inner {
    cold: Arc<ColdTier>,
    shards: Box<[ShardLocks]>,
    hasher: hashbrown::DefaultHashBuilder,
    node_id: Arc<[u8]>,
    replica: ReplicaId,
    incarnation: u64,
    clock: Mutex<Clock>,
    persisted_hlc: Mutex<Timestamp>,
    cfg: StoreConfig,
    limits: Limits,
    /// False while every stored id is known to be in memory (a fresh store
    /// that has demoted nothing): misses then need no disk read.
    cold_possible: AtomicBool,
    closed: AtomicBool,
    write_error: Mutex<Option<String>>,
    /// Mirrors `write_error.is_some()`, read on every write without a lock.
    has_write_error: AtomicBool,
    fail_writes: AtomicBool,
    stop: Arc<(Mutex<bool>, Condvar)>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    flush_lock: Mutex<()>,
    /// Held for a whole `close` or hand-over.
    close_lock: Mutex<()>,
}

/// A handle to an open store. Cloning shares it.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

fn shard_count(hot_limit: usize) -> usize {
    (hot_limit / 256).clamp(1, 32).next_power_of_two().min(32)
}

fn decode_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
}

impl Store {
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        let (cold, handed_over) = ColdTier::open(&cfg.path, cfg.ephemeral, cfg.cache_bytes)?;
        let incarnation = cold
            .get_meta(INCARNATION_KEY)?
            .and_then(|b| decode_u64(&b))
            .unwrap_or(0)
            + 1;
        cold.put_meta(INCARNATION_KEY, &incarnation.to_be_bytes(), true)?;
        cold.put_meta(NODE_KEY, &cfg.node_id, false)?;
        let hlc = cold
            .get_meta(HLC_KEY)?
            .filter(|b| b.len() == 12)
            .map(|b| {
                let wall = decode_u64(&b[..8]).unwrap_or(0);
                let counter = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                Timestamp::new(wall, counter)
            })
            .unwrap_or(Timestamp::ZERO);
        let mut replica = cfg.node_id.clone();
        replica.push(0);
        replica.extend_from_slice(&incarnation.to_be_bytes());
        let n = shard_count(cfg.hot_limit);
        let limits = Limits {
            hot: cfg.hot_limit.div_ceil(n).max(1),
            warm: cfg.warm_limit.div_ceil(n),
            threshold: cfg.access_threshold.max(1),
        };
        let cold_possible = !handed_over.is_empty() || !cold.keys_empty()?;
        let inner = Arc::new(Inner {
            cold: cold.clone(),
            shards: (0..n).map(|_| ShardLocks::default()).collect(),
            hasher: Default::default(),
            node_id: Arc::from(cfg.node_id.as_slice()),
            replica: ReplicaId::new(&replica),
            incarnation,
            clock: Mutex::new(Clock::with_last(hlc, cfg.max_clock_offset_ms)),
            persisted_hlc: Mutex::new(hlc),
            limits,
            cfg,
            cold_possible: AtomicBool::new(cold_possible),
            closed: AtomicBool::new(false),
            write_error: Mutex::new(None),
            has_write_error: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            flusher: Mutex::new(None),
            flush_lock: Mutex::new(()),
            close_lock: Mutex::new(()),
        });
        // A predecessor's unwritten writes are ours to write now.
        for (id, p) in handed_over {
            let i = inner.shard_index(&id);
            let mut sh = inner.shards[i].state.lock();
            let merged = match sh.pending.dirty.remove(&id) {
                Some(newer) => p.then(newer),
                None => p,
            };
            sh.pending.dirty.insert(id, merged);
        }
        let weak_owner: Weak<dyn Owner> = Arc::downgrade(&inner) as Weak<dyn Owner>;
        cold.add_owner(weak_owner);
        let handle = spawn_flusher(&inner)?;
        *inner.flusher.lock() = Some(handle);
        Ok(Store(inner))
    }

    pub fn node_id(&self) -> &[u8] {
        &self.0.node_id
    }

    pub fn durability(&self) -> Durability {
        self.0.cfg.durability
    }

    pub fn incarnation(&self) -> u64 {
        self.0.incarnation
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.cold.path()
    }

    /// The last HLC timestamp issued (never below the persisted mark).
    pub fn clock(&self) -> Timestamp {
        self.0.clock.lock().last()
    }

    /// Create `id` of `kind`.
    pub fn create(&self, id: &[u8], kind: Kind, access: Access) -> Result<()> {
        let inner = &self.0;
        inner.check_size(id.len())?;
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (mut sh, present) = inner.locate(id, access)?;
        if present {
            return Err(Error::AlreadyExists);
        }
        inner.check_writable()?;
        let now = now_ms();
        let meta = Meta {
            kind,
            created_by: inner.node_id.clone(),
            created_at: now,
            updated_at: now,
        };
        let crdt = Crdt::new(kind);
        match inner.cfg.durability {
            Durability::Relaxed => sh.pending.add(id, &meta, &crdt),
            Durability::Strict => {
                // Written before it exists in memory; the disk lock keeps
                // other writers of this shard out meanwhile.
                drop(sh);
                inner.write_strict(id, &[merge_op(id, &meta, &crdt)])?;
                sh = inner.lock_state(id)?;
            }
        }
        inner.insert(&mut sh, id, meta, Body::Hot(crdt), 1);
        Ok(())
    }

    /// Call `f` with the state of `id`.
    pub fn read<R>(&self, id: &[u8], access: Access, f: impl FnOnce(View<'_>) -> R) -> Result<R> {
        let inner = &self.0;
        let _disk = inner.lock_disk_for_read(id, access);
        let (mut sh, present) = inner.locate(id, access)?;
        if !present {
            return Err(Error::NotFound);
        }
        let inline = access == Access::MemoryOnly;
        if sh.tiers.touch(id, inline, inner.limits)? {
            inner.cold_possible.store(true, Ordering::Release);
        }
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        let version = slot.version;
        match &slot.body {
            Body::Hot(c) => Ok(f(View {
                crdt: c,
                version,
                ext: Some(&mut slot.ext),
            })),
            Body::Warm(bytes) => {
                if inline && bytes.len() > INLINE_BYTES {
                    return Err(Error::WouldBlock);
                }
                let c = decode_stored(bytes)?;
                Ok(f(View {
                    crdt: &c,
                    version,
                    ext: None,
                }))
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
        let inner = &self.0;
        if let Mutation::Add(b) | Mutation::Remove(b) | Mutation::Set(b) = m {
            inner.check_size(b.len())?;
        }
        let inline = access == Access::MemoryOnly;
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (mut sh, present) = inner.locate(id, access)?;
        if !present {
            return Err(Error::NotFound);
        }
        let slot = sh.tiers.get(id).ok_or(Error::NotFound)?;
        let big = slot.size_hint() > INLINE_BYTES;
        if inline && big && (linear_reply || matches!(slot.body, Body::Warm(_))) {
            return Err(Error::WouldBlock);
        }
        let kind = slot.meta.kind;
        if sh.tiers.touch(id, inline, inner.limits)? {
            inner.cold_possible.store(true, Ordering::Release);
        }
        // `None`: a no-op (e.g. increment of a G-Counter by n <= 0).
        if let Some(op) = m.fit(kind)? {
            sh = inner.mutate(sh, id, op, access)?;
        }
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        let version = slot.version;
        Ok(match &slot.body {
            Body::Hot(c) => f(View {
                crdt: c,
                version,
                ext: Some(&mut slot.ext),
            }),
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
        inner.check_writable()?;
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
                sh = inner.lock_state(id)?;
            }
        }
        if sh.tiers.contains(id) {
            inner.join_in_memory(&mut sh, id, meta, other)?;
        } else if !present {
            inner.insert(&mut sh, id, meta.clone(), Body::Hot(persisted), 1);
        }
        // Present before but gone now: it left memory after the write,
        // which the next load reads.
        Ok(())
    }

    /// Metadata and tier of `id`, without promoting it.
    pub fn metadata(&self, id: &[u8], access: Access) -> Result<(Meta, Tier)> {
        let inner = &self.0;
        let _disk = inner.lock_disk_for_read(id, access);
        let sh = inner.lock_state(id)?;
        if let Some(slot) = sh.tiers.get(id) {
            return Ok((slot.meta.clone(), slot.tier()));
        }
        if !inner.cold_possible.load(Ordering::Acquire) {
            return Err(Error::NotFound);
        }
        let (sh, base) = inner.read_base(sh, id, access)?;
        match inner.assemble(&sh, id, access, base)? {
            Some((meta, _)) => Ok((meta, Tier::Cold)),
            None => Err(Error::NotFound),
        }
    }

    /// Delete `id`.
    pub fn delete(&self, id: &[u8], access: Access) -> Result<()> {
        let inner = &self.0;
        let _disk = inner.lock_disk_for_write(id, access)?;
        let (mut sh, present) = inner.locate(id, access)?;
        if !present {
            return Err(Error::NotFound);
        }
        inner.check_writable()?;
        match inner.cfg.durability {
            Durability::Relaxed => sh.pending.delete(id),
            Durability::Strict => {
                drop(sh);
                inner.write_strict(id, &[BatchOp::Delete(id.into())])?;
                sh = inner.lock_state(id)?;
            }
        }
        if let Some(slot) = sh.tiers.remove(id) {
            tiers::drop_in_background(slot);
        }
        Ok(())
    }

    /// Every id: the ids on disk with the writes still pending laid over
    /// them. Tries to flush first, but answers even when the disk refuses
    /// writes (reads keep working on a full disk).
    pub fn ids(&self) -> Result<Vec<Box<[u8]>>> {
        let _ = self.flush();
        let mut ids: std::collections::BTreeSet<Box<[u8]>> =
            self.0.cold.keys()?.into_iter().collect();
        for shard in self.0.shards.iter() {
            let sh = shard.state.lock();
            let p = &sh.pending;
            for (k, p) in p.inflight.iter().chain(p.dirty.iter()) {
                if p.delta.is_some() {
                    ids.insert(k.clone());
                } else if p.reset {
                    ids.remove(k);
                }
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// Write pending deltas now (group commit).
    pub fn flush(&self) -> Result<()> {
        self.0.flush()
    }

    /// One decay pass: halve access counts; demote what was not used since
    /// the previous pass (hot -> warm -> cold). The shard lock is taken per
    /// item, and a large hot item leaves memory without being encoded, so
    /// no caller waits long behind it.
    pub fn decay(&self) {
        self.0.decay()
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            shards: self.0.shards.len(),
            incarnation: self.0.incarnation,
            cold_estimate: self.0.cold.estimate_keys(),
            ..Stats::default()
        };
        for shard in self.0.shards.iter() {
            let sh = shard.state.lock();
            s.hot += sh.tiers.hot_len();
            s.warm += sh.tiers.warm_len();
            s.pending_writes += sh.pending.len();
        }
        s
    }

    /// Write what is pending, retrying for up to `deadline`, then refuse
    /// further calls and release RocksDB. `Err(Error::Unflushed)` when
    /// acknowledged writes could not be written (the count of ids and the
    /// last error). Idempotent: a second close answers `Ok`.
    pub fn close(&self, deadline: Duration) -> Result<()> {
        self.0.close(deadline)
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// The error that currently makes writes fail, if any.
    pub fn write_error(&self) -> Option<String> {
        self.0.write_error.lock().clone()
    }

    /// Fault injection for tests: make every durable write fail as a full
    /// or read-only disk would.
    #[cfg(feature = "fault-injection")]
    pub fn set_fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::Release);
        if !on {
            let _ = self.0.flush();
        }
    }
}

fn merge_op(id: &[u8], meta: &Meta, crdt: &Crdt) -> BatchOp {
    BatchOp::Merge(id.into(), encode_parts(meta, &crdt.encode()))
}

type StateGuard<'a> = MutexGuard<'a, Shard>;

impl Inner {
    fn shard_index(&self, id: &[u8]) -> usize {
        (self.hasher.hash_one(id) as usize) & (self.shards.len() - 1)
    }

    fn lock_state(&self, id: &[u8]) -> Result<StateGuard<'_>> {
        let sh = self.shards[self.shard_index(id)].state.lock();
        // Checked under the shard lock: a close that flushes this shard
        // afterwards sees every write that passed this check.
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(sh)
    }

    /// The disk lock of `id`'s shard for a call that may read the disk
    /// (dirty schedulers only; normal schedulers never take it).
    fn lock_disk_for_read(&self, id: &[u8], access: Access) -> Option<MutexGuard<'_, ()>> {
        (access == Access::MayBlock).then(|| self.shards[self.shard_index(id)].disk.lock())
    }

    /// As [`Inner::lock_disk_for_read`], for a write: in strict durability
    /// every write needs the WAL, so a normal scheduler gets WouldBlock.
    fn lock_disk_for_write(&self, id: &[u8], access: Access) -> Result<Option<MutexGuard<'_, ()>>> {
        if access == Access::MemoryOnly && self.cfg.durability == Durability::Strict {
            return Err(Error::WouldBlock);
        }
        Ok(self.lock_disk_for_read(id, access))
    }

    fn check_size(&self, n: usize) -> Result<()> {
        if n > self.cfg.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: n,
                max: self.cfg.max_value_bytes,
            });
        }
        Ok(())
    }

    fn injected_fault(&self) -> Result<()> {
        if self.fail_writes.load(Ordering::Acquire) {
            return Err(Error::Storage(format!(
                "{}: writes are failing (injected fault)",
                self.cold.path().display()
            )));
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
    fn write_strict(&self, id: &[u8], ops: &[BatchOp]) -> Result<()> {
        self.injected_fault()?;
        self.cold.write(ops)?;
        let mut sh = self.lock_state(id)?;
        sh.pending.written += 1;
        Ok(())
    }

    fn insert(&self, sh: &mut Shard, id: &[u8], meta: Meta, body: Body, accesses: u32) {
        if sh.tiers.insert(id, meta, body, accesses, self.limits) {
            self.cold_possible.store(true, Ordering::Release);
        }
    }

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
        inner.check_writable()?;
        let now = now_ms();
        let (op, ticked) = match op {
            Op::Set(v, _) => {
                let ts = inner.clock.lock().tick(now);
                (Op::Set(v, ts), Some(ts))
            }
            other => (other, None),
        };
        match inner.cfg.durability {
            Durability::Relaxed => inner.apply_relaxed(&mut sh, id, op, now)?,
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
                let (s, present) = inner.locate(id, access)?;
                sh = s;
                if !present {
                    return Err(Error::NotFound);
                }
                // If it left memory and was reloaded meanwhile, the reload
                // already holds the delta: joining again is idempotent.
                inner.join_in_memory(&mut sh, id, &meta, &delta)?;
            }
        }
        // A register keeps a newer timestamp than the one just issued (a
        // peer's): the clock moves past it. (The clock is already at or past
        // the issued one, so an older or equal timestamp changes nothing.)
        if let Some(issued) = ticked {
            if let Some(slot) = sh.tiers.get(id) {
                if let Body::Hot(Crdt::LwwRegister(r)) = &slot.body {
                    if let Some(ts) = r.timestamp().filter(|ts| *ts > issued) {
                        inner.clock.lock().observe(ts);
                    }
                }
            }
        }
        Ok(sh)
    }

    /// Relaxed: apply `op` in memory and join its delta into the pending
    /// delta group. Nothing can fail after the state changed.
    fn apply_relaxed(&self, sh: &mut Shard, id: &[u8], op: Op<'_>, now: u64) -> Result<()> {
        let Shard { tiers, pending } = sh;
        let slot = tiers.get_mut(id).ok_or(Error::NotFound)?;
        let kind = slot.meta.kind;
        let p = pending.entry(id);
        let acc = p.delta.get_or_insert_with(|| Crdt::empty_delta(kind));
        match &mut slot.body {
            Body::Hot(c) => c.mutate_join(&self.replica, op, acc)?,
            Body::Warm(bytes) => {
                let mut c = decode_stored(bytes)?;
                c.mutate_join(&self.replica, op, acc)?;
                *bytes = c.encode().into_boxed_slice();
            }
        }
        slot.meta.updated_at = now;
        slot.changed();
        match &mut p.meta {
            Some(m) => m.join(&slot.meta),
            None => p.meta = Some(slot.meta.clone()),
        }
        Ok(())
    }

    /// Join `other` into the in-memory state of `id` (present).
    fn join_in_memory(&self, sh: &mut Shard, id: &[u8], meta: &Meta, other: &Crdt) -> Result<()> {
        let slot = sh.tiers.get_mut(id).ok_or(Error::NotFound)?;
        match &mut slot.body {
            Body::Hot(c) => c.join(other)?,
            Body::Warm(bytes) => {
                let mut c = decode_stored(bytes)?;
                c.join(other)?;
                *bytes = c.encode().into_boxed_slice();
            }
        }
        slot.meta.join(meta);
        slot.changed();
        Ok(())
    }

    /// Lock `id`'s shard and bring `id` into memory if it is on disk.
    /// Returns the guard and whether `id` exists. On a normal scheduler the
    /// disk is not read (`Error::WouldBlock`); on a dirty one it is read
    /// without the state lock (the caller holds the disk lock, so no flush
    /// of this shard moves writes out of the pending overlay meanwhile).
    fn locate(&self, id: &[u8], access: Access) -> Result<(StateGuard<'_>, bool)> {
        let sh = self.lock_state(id)?;
        if sh.tiers.contains(id) {
            return Ok((sh, true));
        }
        if !self.cold_possible.load(Ordering::Acquire) {
            return Ok((sh, false));
        }
        let (mut sh, base) = self.read_base(sh, id, access)?;
        match self.assemble(&sh, id, access, base)? {
            None => Ok((sh, false)),
            Some((meta, bytes)) => {
                self.insert(&mut sh, id, meta, Body::Warm(bytes), 0);
                Ok((sh, true))
            }
        }
    }

    /// The record of `id` in RocksDB (`None` when absent or when a pending
    /// delete hides it). Memory-only: from memtables and block cache under
    /// the state lock. Otherwise: released around the disk read.
    fn read_base<'a>(
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
        let sh = self.lock_state(id)?;
        Ok((sh, base))
    }

    /// Lay the pending writes of `id` over its RocksDB record `base`:
    /// metadata and encoded state, or `None` when absent. Decoding and
    /// re-encoding a large record is refused on a normal scheduler.
    fn assemble(
        &self,
        sh: &Shard,
        id: &[u8],
        access: Access,
        base: Option<Vec<u8>>,
    ) -> Result<Option<(Meta, Box<[u8]>)>> {
        let corrupt = |e: Error| {
            Error::Storage(format!(
                "{}: corrupt record: {e}",
                self.cold.path().display()
            ))
        };
        let overlays: Vec<&Pending> = sh.pending.overlays(id).collect();
        let reset = overlays.iter().any(|p| p.reset);
        let base = if reset { None } else { base };
        if overlays.iter().all(|p| p.delta.is_none()) {
            return match base {
                None => Ok(None),
                Some(b) => {
                    let (meta, crdt) = decode_parts(&b).map_err(corrupt)?;
                    Ok(Some((meta, crdt.into())))
                }
            };
        }
        if access == Access::MemoryOnly && base.as_ref().is_some_and(|b| b.len() > INLINE_BYTES) {
            return Err(Error::WouldBlock);
        }
        let mut rec: Option<Record> = match base {
            Some(b) => Some(Record::decode(&b).map_err(corrupt)?),
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
                if r.meta.kind != meta.kind {
                    return Err(Error::TypeMismatch);
                }
                r.crdt.join(delta)?;
                r.meta.join(meta);
            }
        }
        Ok(rec.map(|r| (r.meta, r.crdt.encode().into_boxed_slice())))
    }

    /// Add the HLC high-water mark to `ops` if it moved; true if it did.
    fn hlc_to_batch(&self, ops: &mut Vec<BatchOp>) -> bool {
        let last = self.clock.lock().last();
        let mut persisted = self.persisted_hlc.lock();
        if last <= *persisted {
            return false;
        }
        let mut v = last.wall_ms.to_be_bytes().to_vec();
        v.extend_from_slice(&last.counter.to_be_bytes());
        ops.push(BatchOp::PutMeta(HLC_KEY, v));
        *persisted = last;
        true
    }

    fn flush(&self) -> Result<()> {
        let _one_at_a_time = self.flush_lock.lock();
        // The disk locks of every shard (in order), so that no cold load
        // reads the disk while writes move from the overlay to RocksDB.
        let _disks: Vec<_> = self.shards.iter().map(|s| s.disk.lock()).collect();
        let mut ops = Vec::new();
        for shard in self.shards.iter() {
            shard.state.lock().pending.begin_flush(&mut ops);
        }
        let hlc_changed = self.hlc_to_batch(&mut ops);
        if ops.is_empty() {
            return self.check_writable_after_idle();
        }
        let res = self.injected_fault().and_then(|()| self.cold.write(&ops));
        let ok = res.is_ok();
        match &res {
            Ok(()) => {
                *self.write_error.lock() = None;
                self.has_write_error.store(false, Ordering::Release);
            }
            Err(e) => {
                *self.write_error.lock() = Some(e.to_string());
                self.has_write_error.store(true, Ordering::Release);
                if hlc_changed {
                    *self.persisted_hlc.lock() = Timestamp::ZERO;
                }
            }
        }
        for shard in self.shards.iter() {
            shard.state.lock().pending.end_flush(ok);
        }
        res
    }

    /// Nothing to write: a write error recorded earlier (e.g. a strict
    /// write or a flush on a full disk) is cleared once a probe succeeds,
    /// so writes resume when space is freed.
    fn check_writable_after_idle(&self) -> Result<()> {
        if !self.has_write_error.load(Ordering::Acquire) {
            return Ok(());
        }
        let probe = self
            .injected_fault()
            .and_then(|()| self.cold.put_meta(NODE_KEY, &self.cfg.node_id, false));
        if probe.is_ok() {
            *self.write_error.lock() = None;
            self.has_write_error.store(false, Ordering::Release);
        }
        probe
    }

    fn decay(&self) {
        let threshold = self.limits.threshold;
        for shard in self.shards.iter() {
            let candidates = shard.state.lock().tiers.decay_candidates(threshold);
            let mut to_cold = false;
            for (k, gen) in candidates {
                to_cold |= shard.state.lock().tiers.decay_one(k, gen);
            }
            // Items demoted from hot may overfill warm (its used items
            // stay): restore the limits (evicting warm items is O(1) each).
            to_cold |= shard.state.lock().tiers.enforce_limits(&[], self.limits);
            if to_cold {
                self.cold_possible.store(true, Ordering::Release);
            }
        }
    }

    /// Stop the flush thread and wait for callers inside shard locks.
    fn stop_flusher(&self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock() = true;
            cv.notify_all();
        }
        if let Some(h) = self.flusher.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        for shard in self.shards.iter() {
            drop(shard.state.lock());
        }
    }

    fn close(&self, deadline: Duration) -> Result<()> {
        let _closing = self.close_lock.lock();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_flusher();
        let until = Instant::now() + deadline;
        let mut res = self.flush();
        while res.is_err() && Instant::now() < until && !halt::halting() {
            std::thread::sleep(Duration::from_millis(20));
            res = self.flush();
        }
        let res = match res {
            Ok(()) => {
                if !self.fail_writes.load(Ordering::Acquire) {
                    let _ = self.cold.flush_memtables();
                }
                Ok(())
            }
            Err(e) => {
                let ids = self
                    .shards
                    .iter()
                    .map(|s| s.state.lock().pending.len())
                    .sum();
                Err(Error::Unflushed {
                    ids,
                    reason: e.to_string(),
                })
            }
        };
        // Last user of the directory in this process: close RocksDB now, so
        // its files and LOCK are free the moment `close` returns.
        self.cold.release();
        res
    }
}

impl Owner for Inner {
    fn hand_over(&self) -> Vec<(Box<[u8]>, Pending)> {
        let _closing = self.close_lock.lock();
        self.closed.store(true, Ordering::Release);
        self.stop_flusher();
        let _disks: Vec<_> = self.shards.iter().map(|s| s.disk.lock()).collect();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.state.lock().pending.drain());
        }
        out
    }

    fn pending_ops_at_exit(&self, ops: &mut Vec<BatchOp>) {
        for shard in self.shards.iter() {
            if let Some(sh) = shard.state.try_lock_for(Duration::from_millis(200)) {
                sh.pending.ops(ops);
            }
        }
        self.hlc_to_batch(ops);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Unreferenced (garbage-collected) handle: a short retry only.
        let _ = self.close(Duration::from_millis(100));
    }
}

fn spawn_flusher(inner: &Arc<Inner>) -> Result<JoinHandle<()>> {
    let weak = Arc::downgrade(inner);
    let stop = inner.stop.clone();
    let interval = Duration::from_millis(inner.cfg.flush_interval_ms.max(1));
    std::thread::Builder::new()
        .name("vsmcp-crdt-flush".into())
        .spawn(move || loop {
            {
                let (lock, cv) = &*stop;
                let mut stopped = lock.lock();
                if !*stopped {
                    cv.wait_for(&mut stopped, interval);
                }
                if *stopped {
                    break;
                }
            }
            let Some(inner) = weak.upgrade() else { break };
            let _ = inner.flush();
        })
        .map_err(|e| Error::Storage(format!("cannot spawn the flush thread: {e}")))
}

//! The tiered store: hot and warm tiers in memory, cold tier in RocksDB.
//!
//! * **Hot**: decoded CRDTs, mutated in place (a G-Counter increment is a
//!   hash probe and an add).
//! * **Warm**: the encoded bytes of a CRDT (compact, no per-element
//!   allocations); decoded on access.
//! * **Cold**: only in RocksDB ([`cold::ColdTier`]); read on demand.
//!
//! Ids are spread over shards, each behind its own `parking_lot::Mutex`, so
//! many BEAM processes calling in parallel contend only when they touch the
//! same shard. Within a shard, tiers are CLOCK (second-chance) queues:
//! promotion happens when an item's access count reaches
//! `access_threshold`; demotion pops the queue head, giving referenced items
//! a second chance, so both cost O(1) amortized per operation and never scan
//! a tier on the write path. A periodic [`Store::decay`] halves access
//! counts and demotes what was not touched since the previous pass.
//!
//! **Durability.** Every mutation produces a delta; it is persisted as a
//! RocksDB merge operand of bytes proportional to the delta (see
//! [`record`]). In `Durability::Relaxed` (default) deltas are coalesced per
//! id in a per-shard dirty map and written by a background thread every
//! `flush_interval_ms` (group commit); in `Durability::Strict` the write
//! reaches the WAL before the call returns. Writes go to the WAL without
//! fsync: they survive the OS process being killed, not a power loss.
//!
//! **Replica identity.** Each open of a store is a new *incarnation*
//! (persisted with fsync), and the replica id used in dots and counter
//! entries is `node_id ++ incarnation`. A crash can therefore never make a
//! node reuse a dot it may already have published.

pub mod cold;
pub mod record;

use crate::causal::ReplicaId;
use crate::crdt::{Crdt, Kind, Op};
use crate::error::{Error, Result};
use crate::hlc::{now_ms, Clock, Timestamp};
use cold::{BatchOp, Cached, ColdTier, Owner, HLC_KEY, INCARNATION_KEY, NODE_KEY};
use hashbrown::HashMap;
use parking_lot::{Condvar, Mutex};
use record::{decode_parts, encode_parts, Meta, Record};
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// When a mutation is acknowledged relative to its WAL write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge at once; the WAL write follows within `flush_interval_ms`.
    Relaxed,
    /// Acknowledge after the write is in the WAL.
    Strict,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Remove the directory when the store closes (stores with no location).
    pub ephemeral: bool,
    /// Canonical term bytes of the node id.
    pub node_id: Vec<u8>,
    /// Items kept decoded in the hot tier.
    pub memory_limit: usize,
    /// Items kept encoded in the warm tier.
    pub ets_limit: usize,
    /// Accesses before a warm item is promoted to hot.
    pub access_threshold: u32,
    pub durability: Durability,
    pub flush_interval_ms: u64,
    /// Largest accepted id, element or register value, in encoded bytes.
    pub max_value_bytes: usize,
    pub max_clock_offset_ms: u64,
    /// RocksDB block cache size.
    pub cache_bytes: usize,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>, node_id: &[u8]) -> Self {
        StoreConfig {
            path: path.into(),
            ephemeral: false,
            node_id: node_id.to_vec(),
            memory_limit: 10_000,
            ets_limit: 100_000,
            access_threshold: 3,
            durability: Durability::Relaxed,
            flush_interval_ms: 5,
            max_value_bytes: 16 << 20,
            max_clock_offset_ms: crate::hlc::DEFAULT_MAX_OFFSET_MS,
            cache_bytes: 64 << 20,
        }
    }
}

/// A mutation as the API states it, before it is fitted to a kind.
#[derive(Debug, Clone, Copy)]
pub enum Mutation<'a> {
    Increment(i128),
    Decrement(i128),
    Add(&'a [u8]),
    Remove(&'a [u8]),
    Set(&'a [u8]),
}

/// Where an id currently lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Hot,
    Warm,
    Cold,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
}

/// Whether a call may block on the disk. Calls made on a normal BEAM
/// scheduler pass `MemoryOnly`: they read memory, RocksDB's memtables and
/// its block cache (a cold id whose block is cached costs about a
/// microsecond), and get `Ok(None)` when a disk read or, in strict
/// durability, a WAL write would be needed; the caller then repeats the call
/// on a dirty IO scheduler with `MayUseDisk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    MemoryOnly,
    MayUseDisk,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub hot: usize,
    pub warm: usize,
    pub pending_writes: usize,
    pub cold_estimate: u64,
    pub shards: usize,
    pub incarnation: u64,
}

enum Body {
    Hot(Crdt),
    Warm(Box<[u8]>),
}

struct Slot {
    meta: Meta,
    body: Body,
    accesses: u32,
    referenced: bool,
    gen: u64,
}

/// Writes of one id not yet in RocksDB: an optional delete, then a delta.
#[derive(Default)]
struct Pending {
    reset: bool,
    meta: Option<Meta>,
    delta: Option<Crdt>,
}

impl Pending {
    fn add(&mut self, meta: &Meta, delta: &Crdt) {
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
    fn then(mut self, newer: Pending) -> Pending {
        if newer.reset {
            return newer;
        }
        if let (Some(m), Some(d)) = (&newer.meta, &newer.delta) {
            self.add(m, d);
        }
        self
    }

    /// The batch operations that persist these writes.
    fn write_to(&self, key: &[u8], ops: &mut Vec<BatchOp>) {
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

#[derive(Default)]
struct Shard {
    map: HashMap<Box<[u8]>, Slot>,
    hot_q: VecDeque<(Box<[u8]>, u64)>,
    warm_q: VecDeque<(Box<[u8]>, u64)>,
    hot_len: usize,
    warm_len: usize,
    next_gen: u64,
    dirty: HashMap<Box<[u8]>, Pending>,
    /// Taken from `dirty` by a flush whose batch is not yet written.
    inflight: HashMap<Box<[u8]>, Pending>,
}

enum ColdRead {
    Found(Meta, Box<[u8]>),
    Absent,
    NeedsIo,
}

enum Presence {
    InMemory,
    Absent,
    NeedsDisk,
}

struct Inner {
    cold: Arc<ColdTier>,
    shards: Box<[Mutex<Shard>]>,
    hasher: hashbrown::DefaultHashBuilder,
    node_id: Arc<[u8]>,
    replica: ReplicaId,
    incarnation: u64,
    clock: Mutex<Clock>,
    persisted_hlc: Mutex<Timestamp>,
    cfg: StoreConfig,
    hot_limit: usize,
    warm_limit: usize,
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
    /// Held for a whole `close`, so that a concurrent caller (a hand-over
    /// while the owner closes) returns only once the pending writes are in.
    close_lock: Mutex<()>,
}

/// A handle to an open store. Cloning shares it.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

fn shard_count(memory_limit: usize) -> usize {
    (memory_limit / 256)
        .clamp(1, 32)
        .next_power_of_two()
        .min(32)
}

fn decode_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
}

impl Store {
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        let cold = ColdTier::open(&cfg.path, cfg.ephemeral, cfg.cache_bytes)?;
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
        let n = shard_count(cfg.memory_limit);
        let hot_limit = cfg.memory_limit.div_ceil(n).max(1);
        let warm_limit = cfg.ets_limit.div_ceil(n);
        let cold_possible = !cold.keys_empty()?;
        let inner = Arc::new(Inner {
            cold: cold.clone(),
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            node_id: Arc::from(cfg.node_id.as_slice()),
            replica: ReplicaId::new(&replica),
            incarnation,
            clock: Mutex::new(Clock::with_last(hlc, cfg.max_clock_offset_ms)),
            persisted_hlc: Mutex::new(hlc),
            hot_limit,
            warm_limit,
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

    /// Create `id` of `kind`. `Ok(None)`: the disk must be consulted.
    pub fn create(&self, id: &[u8], kind: Kind, access: Access) -> Result<Option<()>> {
        self.0.check_size(id.len())?;
        let inner = &self.0;
        let Some((mut sh, present)) = inner.locate(id, access, true)? else {
            return Ok(None);
        };
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
        inner.persist(&mut sh, id, &meta, &crdt, false)?;
        inner.insert_hot(&mut sh, id, meta, crdt);
        Ok(Some(()))
    }

    /// Call `f` with the CRDT of `id`. `Ok(None)`: the disk must be consulted.
    pub fn read<R>(
        &self,
        id: &[u8],
        access: Access,
        f: impl FnOnce(&Crdt) -> R,
    ) -> Result<Option<R>> {
        let inner = &self.0;
        let Some((mut sh, present)) = inner.locate(id, access, false)? else {
            return Ok(None);
        };
        if !present {
            return Err(Error::NotFound);
        }
        inner.touch(&mut sh, id)?;
        let slot = sh.map.get(id).ok_or(Error::NotFound)?;
        match &slot.body {
            Body::Hot(c) => Ok(Some(f(c))),
            Body::Warm(bytes) => Ok(Some(f(&decode_stored(bytes)?))),
        }
    }

    /// Apply `m` to `id` and call `f` with the new state. `Ok(None)`: the
    /// call must be repeated with `Access::MayUseDisk`.
    pub fn update<R>(
        &self,
        id: &[u8],
        m: Mutation<'_>,
        access: Access,
        f: impl FnOnce(&Crdt) -> R,
    ) -> Result<Option<R>> {
        let inner = &self.0;
        if let Mutation::Add(b) | Mutation::Remove(b) | Mutation::Set(b) = m {
            inner.check_size(b.len())?;
        }
        let Some((mut sh, present)) = inner.locate(id, access, true)? else {
            return Ok(None);
        };
        if !present {
            return Err(Error::NotFound);
        }
        inner.touch(&mut sh, id)?;
        let sh = &mut *sh;
        let slot = sh.map.get_mut(id).ok_or(Error::NotFound)?;
        let kind = slot.meta.kind;
        let op = match fit_mutation(kind, m)? {
            Some(op) => op,
            None => {
                // A no-op (e.g. increment of a G-Counter by n <= 0).
                return Ok(Some(match &slot.body {
                    Body::Hot(c) => f(c),
                    Body::Warm(b) => f(&decode_stored(b)?),
                }));
            }
        };
        inner.check_writable()?;
        let op = match op {
            Op::Set(v, _) => Op::Set(v, inner.clock.lock().tick(now_ms())),
            other => other,
        };
        let replica = &inner.replica;
        let now = now_ms();
        slot.meta.updated_at = now;
        let Shard { map, dirty, .. } = sh;
        let slot = map.get_mut(id).ok_or(Error::NotFound)?;
        // Apply the mutation; the delta goes straight into the pending
        // delta group (relaxed) or is written on its own (strict).
        let mut apply = |c: &mut Crdt| -> Result<()> {
            match inner.cfg.durability {
                Durability::Relaxed => {
                    let p = pending_entry(dirty, id);
                    let acc = p.delta.get_or_insert_with(|| Crdt::empty_delta(kind));
                    c.mutate_join(replica, op, acc)?;
                    match &mut p.meta {
                        Some(m) => m.join(&slot.meta),
                        None => p.meta = Some(slot.meta.clone()),
                    }
                    Ok(())
                }
                Durability::Strict => {
                    let delta = c.mutate(replica, op)?;
                    inner.persist_with(dirty, id, &slot.meta, &delta, false)
                }
            }
        };
        let result = match &mut slot.body {
            Body::Hot(c) => {
                apply(c)?;
                f(c)
            }
            Body::Warm(bytes) => {
                let mut c = decode_stored(bytes)?;
                apply(&mut c)?;
                *bytes = c.encode().into_boxed_slice();
                f(&c)
            }
        };
        if let Body::Hot(Crdt::LwwRegister(r)) = &slot.body {
            if let Some(ts) = r.timestamp() {
                inner.clock.lock().observe(ts);
            }
        }
        Ok(Some(result))
    }

    /// Join a CRDT (state or delta, e.g. from a peer) into `id`, creating it
    /// when missing. `Ok(None)`: repeat with `Access::MayUseDisk`.
    pub fn merge(
        &self,
        id: &[u8],
        meta: &Meta,
        other: &Crdt,
        access: Access,
    ) -> Result<Option<()>> {
        let inner = &self.0;
        if meta.kind != other.kind() {
            return Err(Error::TypeMismatch);
        }
        let Some((mut sh, present)) = inner.locate(id, access, true)? else {
            return Ok(None);
        };
        inner.check_writable()?;
        match present {
            false => {
                let mut crdt = Crdt::new(meta.kind);
                crdt.join(other)?;
                // Persist the joined state: a delta alone is no record.
                inner.persist(&mut sh, id, meta, &crdt, false)?;
                inner.insert_hot(&mut sh, id, meta.clone(), crdt);
            }
            true => {
                let slot = sh.map.get_mut(id).ok_or(Error::NotFound)?;
                if slot.meta.kind != meta.kind {
                    return Err(Error::TypeMismatch);
                }
                match &mut slot.body {
                    Body::Hot(c) => c.join(other)?,
                    Body::Warm(bytes) => {
                        let mut c = decode_stored(bytes)?;
                        c.join(other)?;
                        *bytes = c.encode().into_boxed_slice();
                    }
                }
                slot.meta.join(meta);
                let m = slot.meta.clone();
                inner.persist(&mut sh, id, &m, other, false)?;
            }
        }
        Ok(Some(()))
    }

    /// Metadata and tier of `id`, without promoting it.
    pub fn metadata(&self, id: &[u8], access: Access) -> Result<Option<(Meta, Tier)>> {
        let inner = &self.0;
        let sh = inner.lock_shard(id)?;
        if let Some(slot) = sh.map.get(id) {
            let tier = match slot.body {
                Body::Hot(_) => Tier::Hot,
                Body::Warm(_) => Tier::Warm,
            };
            return Ok(Some((slot.meta.clone(), tier)));
        }
        if !inner.cold_possible.load(Ordering::Acquire) {
            return Err(Error::NotFound);
        }
        match inner.load_cold(&sh, id, access)? {
            ColdRead::Found(meta, _) => Ok(Some((meta, Tier::Cold))),
            ColdRead::Absent => Err(Error::NotFound),
            ColdRead::NeedsIo => Ok(None),
        }
    }

    /// Delete `id`. `Ok(None)`: repeat with `Access::MayUseDisk`.
    pub fn delete(&self, id: &[u8], access: Access) -> Result<Option<()>> {
        let inner = &self.0;
        let Some((mut sh, present)) = inner.locate(id, access, true)? else {
            return Ok(None);
        };
        if !present {
            return Err(Error::NotFound);
        }
        inner.check_writable()?;
        if let Some(slot) = sh.map.remove(id) {
            match slot.body {
                Body::Hot(_) => sh.hot_len -= 1,
                Body::Warm(_) => sh.warm_len -= 1,
            }
            inner.persist(&mut sh, id, &slot.meta, &Crdt::new(slot.meta.kind), true)?;
        }
        Ok(Some(()))
    }

    /// Every id: the ids on disk with the writes still pending laid over
    /// them. Tries to flush first, but answers even when the disk refuses
    /// writes (reads keep working on a full disk).
    pub fn ids(&self) -> Result<Vec<Box<[u8]>>> {
        let _ = self.flush();
        let mut ids: std::collections::BTreeSet<Box<[u8]>> =
            self.0.cold.keys()?.into_iter().collect();
        for shard in self.0.shards.iter() {
            let sh = shard.lock();
            for (k, p) in sh.inflight.iter().chain(sh.dirty.iter()) {
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
    /// the previous pass (hot -> warm -> cold).
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
            let sh = shard.lock();
            s.hot += sh.hot_len;
            s.warm += sh.warm_len;
            s.pending_writes += sh.dirty.len() + sh.inflight.len();
        }
        s
    }

    /// Flush and refuse further calls. Idempotent.
    pub fn close(&self) {
        self.0.close()
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
    pub fn set_fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::Release);
        if !on {
            let _ = self.0.flush();
        }
    }
}

/// Fit an API mutation to a kind. `Ok(None)` is a no-op.
fn fit_mutation(kind: Kind, m: Mutation<'_>) -> Result<Option<Op<'_>>> {
    fn amount(n: i128) -> Result<u64> {
        u64::try_from(n).map_err(|_| Error::Overflow)
    }
    Ok(match (kind, m) {
        (Kind::GCounter, Mutation::Increment(n)) if n <= 0 => None,
        (Kind::GCounter, Mutation::Increment(n)) => Some(Op::Increment(amount(n)?)),
        (Kind::PNCounter, Mutation::Increment(0) | Mutation::Decrement(0)) => None,
        (Kind::PNCounter, Mutation::Increment(n)) if n > 0 => Some(Op::Increment(amount(n)?)),
        (Kind::PNCounter, Mutation::Increment(n)) => Some(Op::Decrement(amount(-n)?)),
        (Kind::PNCounter, Mutation::Decrement(n)) if n > 0 => Some(Op::Decrement(amount(n)?)),
        (Kind::PNCounter, Mutation::Decrement(n)) => Some(Op::Increment(amount(-n)?)),
        (Kind::ORSet | Kind::AWSet, Mutation::Add(e)) => Some(Op::Add(e)),
        (Kind::ORSet | Kind::AWSet, Mutation::Remove(e)) => Some(Op::Remove(e)),
        (Kind::LwwRegister, Mutation::Set(v)) => Some(Op::Set(v, Timestamp::ZERO)),
        _ => return Err(Error::UnsupportedOperation),
    })
}

/// The pending writes of `id`, created empty when missing (without
/// allocating a key when present).
fn pending_entry<'a>(dirty: &'a mut HashMap<Box<[u8]>, Pending>, id: &[u8]) -> &'a mut Pending {
    dirty.entry_ref(id).or_default()
}

fn decode_stored(bytes: &[u8]) -> Result<Crdt> {
    Crdt::decode(bytes).map_err(|e| Error::Storage(format!("corrupt state in memory: {e}")))
}

impl Shard {
    fn bump_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    fn compact_queues(&mut self) {
        let map = &self.map;
        if self.hot_q.len() > 2 * self.hot_len + 64 {
            self.hot_q.retain(|(k, g)| {
                map.get(k)
                    .is_some_and(|s| s.gen == *g && matches!(s.body, Body::Hot(_)))
            });
        }
        if self.warm_q.len() > 2 * self.warm_len + 64 {
            self.warm_q.retain(|(k, g)| {
                map.get(k)
                    .is_some_and(|s| s.gen == *g && matches!(s.body, Body::Warm(_)))
            });
        }
    }
}

impl Inner {
    fn lock_shard(&self, id: &[u8]) -> Result<parking_lot::MutexGuard<'_, Shard>> {
        let i = (self.hasher.hash_one(id) as usize) & (self.shards.len() - 1);
        let sh = self.shards[i].lock();
        // Checked under the shard lock: a close that flushes this shard
        // afterwards sees every write that passed this check.
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(sh)
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

    fn check_writable(&self) -> Result<()> {
        if self.fail_writes.load(Ordering::Acquire) {
            return Err(Error::Storage(format!(
                "{}: writes are failing (injected fault)",
                self.cold.path().display()
            )));
        }
        if !self.has_write_error.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.write_error.lock() {
            Some(e) => Err(Error::Storage(e.clone())),
            None => Ok(()),
        }
    }

    /// Put a new id in the hot tier and make room.
    fn insert_hot(&self, sh: &mut Shard, id: &[u8], meta: Meta, crdt: Crdt) {
        self.insert(sh, id, meta, Body::Hot(crdt), 1);
    }

    /// Put `id` in the tier its `body` belongs to and make room.
    fn insert(&self, sh: &mut Shard, id: &[u8], meta: Meta, body: Body, accesses: u32) {
        let gen = sh.bump_gen();
        let queue = match body {
            Body::Hot(_) => {
                sh.hot_len += 1;
                &mut sh.hot_q
            }
            Body::Warm(_) => {
                sh.warm_len += 1;
                &mut sh.warm_q
            }
        };
        queue.push_back((id.into(), gen));
        let slot = Slot {
            meta,
            body,
            accesses,
            referenced: true,
            gen,
        };
        sh.map.insert(id.into(), slot);
        self.enforce_limits(sh, id);
    }

    /// Lock `id`'s shard and bring `id` into memory if it is on disk.
    /// `Ok(None)`: the call needs the disk (or, for a write in strict
    /// durability, the WAL) and must be repeated with `Access::MayUseDisk`.
    /// Otherwise the guard and whether `id` exists.
    fn locate(
        &self,
        id: &[u8],
        access: Access,
        write: bool,
    ) -> Result<Option<(parking_lot::MutexGuard<'_, Shard>, bool)>> {
        if write && access == Access::MemoryOnly && self.cfg.durability == Durability::Strict {
            return Ok(None);
        }
        let mut sh = self.lock_shard(id)?;
        Ok(match self.presence(&mut sh, id, access)? {
            Presence::NeedsDisk => None,
            Presence::Absent => Some((sh, false)),
            Presence::InMemory => Some((sh, true)),
        })
    }

    fn presence(&self, sh: &mut Shard, id: &[u8], access: Access) -> Result<Presence> {
        if sh.map.contains_key(id) {
            return Ok(Presence::InMemory);
        }
        if !self.cold_possible.load(Ordering::Acquire) {
            return Ok(Presence::Absent);
        }
        match self.load_cold(sh, id, access)? {
            ColdRead::NeedsIo => Ok(Presence::NeedsDisk),
            ColdRead::Absent => Ok(Presence::Absent),
            ColdRead::Found(meta, bytes) => {
                self.insert(sh, id, meta, Body::Warm(bytes), 0);
                Ok(Presence::InMemory)
            }
        }
    }

    /// Read `id` from RocksDB with the writes still pending in memory laid
    /// over it: metadata and encoded CRDT bytes. With `Access::MemoryOnly`
    /// only memtables and the block cache are consulted (no blocking IO).
    fn load_cold(&self, sh: &Shard, id: &[u8], access: Access) -> Result<ColdRead> {
        let overlays: Vec<&Pending> = [sh.inflight.get(id), sh.dirty.get(id)]
            .into_iter()
            .flatten()
            .collect();
        let reset = overlays.iter().any(|p| p.reset);
        let base = if reset {
            None
        } else {
            match self.cold.get(id, access == Access::MemoryOnly)? {
                Cached::Found(v) => Some(v),
                Cached::Missing => None,
                Cached::NeedsIo => return Ok(ColdRead::NeedsIo),
            }
        };
        let corrupt = |e: Error| {
            Error::Storage(format!(
                "{}: corrupt record: {e}",
                self.cold.path().display()
            ))
        };
        if overlays.iter().all(|p| p.delta.is_none()) {
            return match base {
                None => Ok(ColdRead::Absent),
                Some(b) => {
                    let (meta, crdt) = decode_parts(&b).map_err(corrupt)?;
                    Ok(ColdRead::Found(meta, crdt.into()))
                }
            };
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
        Ok(match rec {
            None => ColdRead::Absent,
            Some(r) => ColdRead::Found(r.meta, r.crdt.encode().into_boxed_slice()),
        })
    }

    fn touch(&self, sh: &mut Shard, id: &[u8]) -> Result<()> {
        let threshold = self.cfg.access_threshold;
        let gen = sh.next_gen + 1;
        let slot = sh.map.get_mut(id).ok_or(Error::NotFound)?;
        slot.accesses = slot.accesses.saturating_add(1);
        slot.referenced = true;
        if let Body::Warm(bytes) = &slot.body {
            if slot.accesses >= threshold {
                slot.body = Body::Hot(decode_stored(bytes)?);
                slot.gen = gen;
                sh.next_gen = gen;
                sh.hot_q.push_back((id.into(), gen));
                sh.hot_len += 1;
                sh.warm_len -= 1;
                self.enforce_limits(sh, id);
            }
        }
        Ok(())
    }

    /// CLOCK demotion until both tiers fit; `keep` is never demoted.
    fn enforce_limits(&self, sh: &mut Shard, keep: &[u8]) {
        // Each queue entry is looked at no more than twice (a second chance,
        // then a decision), so a pass is bounded even when only `keep` is left.
        let mut budget = 2 * sh.hot_q.len() + 2;
        while sh.hot_len > self.hot_limit && budget > 0 {
            budget -= 1;
            let Some((k, g)) = sh.hot_q.pop_front() else {
                break;
            };
            let gen = sh.next_gen + 1;
            let Some(slot) = sh.map.get_mut(&k) else {
                continue;
            };
            let Body::Hot(c) = &slot.body else { continue };
            if slot.gen != g {
                continue;
            }
            if &*k == keep || slot.referenced {
                slot.referenced = false;
                sh.hot_q.push_back((k, g));
                continue;
            }
            slot.body = Body::Warm(c.encode().into_boxed_slice());
            slot.gen = gen;
            sh.next_gen = gen;
            sh.warm_q.push_back((k, gen));
            sh.hot_len -= 1;
            sh.warm_len += 1;
        }
        let mut budget = 2 * sh.warm_q.len() + 2;
        while sh.warm_len > self.warm_limit && budget > 0 {
            budget -= 1;
            let Some((k, g)) = sh.warm_q.pop_front() else {
                break;
            };
            let Some(slot) = sh.map.get_mut(&k) else {
                continue;
            };
            if slot.gen != g || !matches!(slot.body, Body::Warm(_)) {
                continue;
            }
            if &*k == keep || slot.referenced {
                slot.referenced = false;
                sh.warm_q.push_back((k, g));
                continue;
            }
            // Its state is in RocksDB or in this shard's pending writes.
            sh.map.remove(&k);
            sh.warm_len -= 1;
            self.cold_possible.store(true, Ordering::Release);
        }
        sh.compact_queues();
    }

    fn persist(
        &self,
        sh: &mut Shard,
        id: &[u8],
        meta: &Meta,
        delta: &Crdt,
        reset: bool,
    ) -> Result<()> {
        self.persist_with(&mut sh.dirty, id, meta, delta, reset)
    }

    /// Record a delta: into the shard's dirty map (relaxed) or straight to
    /// the WAL (strict).
    fn persist_with(
        &self,
        dirty: &mut HashMap<Box<[u8]>, Pending>,
        id: &[u8],
        meta: &Meta,
        delta: &Crdt,
        reset: bool,
    ) -> Result<()> {
        match self.cfg.durability {
            Durability::Strict => {
                let mut p = Pending {
                    reset,
                    ..Pending::default()
                };
                if !reset {
                    p.add(meta, delta);
                }
                let mut ops = Vec::with_capacity(3);
                p.write_to(id, &mut ops);
                if let Crdt::LwwRegister(_) = delta {
                    self.hlc_to_batch(&mut ops);
                }
                self.cold.write(&ops)
            }
            Durability::Relaxed => {
                let p = pending_entry(dirty, id);
                if reset {
                    *p = Pending {
                        reset: true,
                        ..Pending::default()
                    };
                } else {
                    p.add(meta, delta);
                }
                Ok(())
            }
        }
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
        let mut ops = Vec::new();
        for shard in self.shards.iter() {
            let mut sh = shard.lock();
            if sh.dirty.is_empty() {
                continue;
            }
            let taken = std::mem::take(&mut sh.dirty);
            for (k, p) in &taken {
                p.write_to(k, &mut ops);
            }
            sh.inflight = taken;
        }
        let hlc_changed = self.hlc_to_batch(&mut ops);
        if ops.is_empty() {
            return Ok(());
        }
        let res = if self.fail_writes.load(Ordering::Acquire) {
            Err(Error::Storage(format!(
                "{}: writes are failing (injected fault)",
                self.cold.path().display()
            )))
        } else {
            self.cold.write(&ops)
        };
        match &res {
            Ok(()) => {
                *self.write_error.lock() = None;
                self.has_write_error.store(false, Ordering::Release);
                for shard in self.shards.iter() {
                    shard.lock().inflight.clear();
                }
            }
            Err(e) => {
                *self.write_error.lock() = Some(e.to_string());
                self.has_write_error.store(true, Ordering::Release);
                if hlc_changed {
                    *self.persisted_hlc.lock() = Timestamp::ZERO;
                }
                // Keep the writes for the next attempt, older before newer.
                for shard in self.shards.iter() {
                    let mut sh = shard.lock();
                    let inflight = std::mem::take(&mut sh.inflight);
                    for (k, older) in inflight {
                        let merged = match sh.dirty.remove(&k) {
                            Some(newer) => older.then(newer),
                            None => older,
                        };
                        sh.dirty.insert(k, merged);
                    }
                }
            }
        }
        res
    }

    fn decay(&self) {
        let threshold = self.cfg.access_threshold;
        for shard in self.shards.iter() {
            let mut sh = shard.lock();
            let sh = &mut *sh;
            let mut demoted_any = false;
            let mut to_cold = Vec::new();
            for (k, slot) in sh.map.iter_mut() {
                slot.accesses /= 2;
                let referenced = std::mem::replace(&mut slot.referenced, false);
                if referenced {
                    continue;
                }
                match &slot.body {
                    Body::Hot(c) if slot.accesses < threshold => {
                        sh.next_gen += 1;
                        slot.gen = sh.next_gen;
                        slot.body = Body::Warm(c.encode().into_boxed_slice());
                        sh.warm_q.push_back((k.clone(), slot.gen));
                        sh.hot_len -= 1;
                        sh.warm_len += 1;
                    }
                    Body::Hot(_) => {}
                    Body::Warm(_) => to_cold.push(k.clone()),
                }
            }
            for k in to_cold {
                // Only items that were warm before this pass go cold.
                if let Some(slot) = sh.map.get(&k) {
                    if matches!(slot.body, Body::Warm(_)) {
                        sh.map.remove(&k);
                        sh.warm_len -= 1;
                        demoted_any = true;
                    }
                }
            }
            if demoted_any {
                self.cold_possible.store(true, Ordering::Release);
            }
            // Items demoted from hot may overfill warm (its used items stay):
            // restore both limits. No id is empty, so none is kept.
            self.enforce_limits(sh, &[]);
        }
    }

    fn close(&self) {
        let _closing = self.close_lock.lock();
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
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
        // Wait for callers inside shard locks, then write what they left.
        for shard in self.shards.iter() {
            drop(shard.lock());
        }
        if self.flush().is_ok() && !self.fail_writes.load(Ordering::Acquire) {
            let _ = self.cold.flush_memtables();
        }
        // Last user of the directory in this process: close RocksDB now, so
        // its files and LOCK are free the moment `close` returns.
        self.cold.release();
    }
}

impl Owner for Inner {
    fn hand_over(&self) {
        self.close();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
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

//! The tiered store: hot and warm tiers in memory, cold tier in RocksDB.
//!
//! * [`config`]: options, durability, the scheduler contract ([`Access`]).
//! * `tiers`: hot/warm CLOCK queues of one shard; promotion and demotion.
//! * `write_behind`: pending delta groups and group commit.
//! * [`cold`]: RocksDB, shared by the stores of one OS process per path.
//! * [`record`]: re-export of [`crate::record`], what is stored per id.
//! * [`halt`]: process exit without a crash and without losing writes.
//! * `backup`, `listing`, [`info`]: operations on a running store (online
//!   backup, ids by pages, the `info` report).
//! * [`import`]: the replaced application's DETS data, imported.
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

mod backup;
pub mod cold;
pub mod config;
#[cfg(feature = "fault-injection")]
mod crash;
pub mod halt;
pub mod import;
pub mod info;
pub mod keys;
mod listing;
pub mod membership;
/// The record format moved to [`crate::record`] (sync reads it too); this
/// re-export keeps `store::record` paths working until their users move.
pub use crate::record;
mod tiers;
mod write_behind;

pub use config::{Access, Durability, StoreConfig, INLINE_BYTES};
pub use info::Info;
pub use listing::IdsPage;
pub use tiers::{drop_in_background, Ext, Tier};
pub use write_behind::Pending;

use crate::causal::ReplicaId;
pub use crate::crdt::Mutation;
use crate::crdt::{Crdt, Kind, Op};
use crate::error::{Error, Result};
use crate::hash::HashMap;
use crate::hlc::{Clock, Timestamp};
use crate::lww::{LwwEntry, LwwRegister};
use crate::record::{decode_parts, encode_parts, encode_tombs, Gen, Meta, Record, Tomb, Tombs};
use cold::{Cached, ColdTier, Owner};
use config::{regrows_large, REGROW_INLINE_MAX};
use info::Counted;
use keys::{
    tomb_key, BatchOp, CUT_PREFIX, HLC_KEY, INCARNATION_KEY, NODE_KEY, REPLICA_KEY, SYNCED_KEY,
    TOMB_CUT_KEY, TOMB_PREFIX,
};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tiers::{decode_stored, Body, Limits, Tiers};
use write_behind::{write_group, PendingWrites};

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
    /// Delete tombstones, per id (see `record::Tombs`). Insert with
    /// [`Shard::put_tombs`].
    tombs: HashMap<Box<[u8]>, Tombs>,
    /// No tombstone here has a latest delete before this (0: unknown), so
    /// collection skips the shard below it.
    tomb_floor: u64,
    /// Local changes not yet taken by sync (only while capture is on).
    out: HashMap<Box<[u8]>, Outgoing>,
}

impl Shard {
    fn put_tombs(&mut self, id: Box<[u8]>, tombs: Tombs) {
        self.tomb_floor = self.tomb_floor.min(tombs.latest());
        self.tombs.insert(id, tombs);
    }
}

/// A local change not yet taken by sync ([`Store::take_outgoing`]): the
/// joined local deltas of one id since the last take, or its tombstone
/// (`meta.deleted`, no delta). Changes merged from peers never enter it.
#[derive(Clone)]
struct Outgoing {
    meta: Meta,
    delta: Option<Arc<Crdt>>,
}

/// Join a local change of `id` into the outgoing map, by generation.
fn note_out(out: &mut HashMap<Box<[u8]>, Outgoing>, id: &[u8], meta: &Meta, delta: &Crdt) {
    let fresh = || Outgoing {
        meta: meta.clone(),
        delta: Some(Arc::new(delta.clone())),
    };
    match out.get_mut(id) {
        None => {
            out.insert(id.into(), fresh());
        }
        Some(o) => match meta.wins_over(&o.meta) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Greater => *o = fresh(),
            std::cmp::Ordering::Equal => {
                o.meta.join(meta);
                match &mut o.delta {
                    Some(d) => {
                        if Arc::make_mut(d).join(delta).is_err() {
                            *d = Arc::new(delta.clone());
                        }
                    }
                    None => o.delta = Some(Arc::new(delta.clone())),
                }
            }
        },
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

#[derive(Default)]
struct ShardLocks {
    state: Mutex<Shard>,
    disk: Mutex<()>,
}

struct Inner {
    cold: Arc<ColdTier>,
    shards: Box<[ShardLocks]>,
    hasher: crate::hash::RandomState,
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
    /// Record local changes for sync (see [`Store::start_capture`]).
    capture: AtomicBool,
    /// The directory has synced (persisted): its deletes keep tombstones
    /// even while no sync engine runs.
    synced: AtomicBool,
    /// See [`Store::tomb_cut`] (persisted).
    tomb_cut: std::sync::atomic::AtomicU64,
    /// Per replica directory, the latest collection cut it was part of
    /// (persisted under `CUT_PREFIX`; see `merge_remote`).
    member_cuts: Mutex<HashMap<Box<[u8]>, u64>>,
    /// The member directories, with when each joined (persisted under
    /// `membership::MEMBER_PREFIX`).
    members: Mutex<HashMap<Box<[u8]>, u64>>,
    /// The token of the current capture owner (0: none).
    capture_owner: Mutex<u64>,
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
    /// Operation counters and observed clock offsets (see `info`).
    telemetry: info::Telemetry,
    /// The source this store imported, if it did (see `import`).
    migrated_from: Mutex<Option<Arc<[u8]>>>,
}

/// A handle to an open store. Cloning shares it.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

fn shard_count(hot_limit: usize) -> usize {
    (hot_limit / 256).clamp(1, 32).next_power_of_two().min(32)
}

/// The random id of the directory behind `cold`, made (and fsynced) at
/// its first open.
fn directory_id(cold: &ColdTier, _cfg: &StoreConfig) -> Result<Vec<u8>> {
    if let Some(id) = cold.get_meta(REPLICA_KEY)?.filter(|b| b.len() == 16) {
        return Ok(id);
    }
    #[cfg(feature = "fault-injection")]
    if let Some(seed) = _cfg.test_replica_seed {
        let id = crash::seeded_directory_id(seed);
        cold.put_meta(REPLICA_KEY, &id, true)?;
        return Ok(id);
    }
    let mut id = vec![0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| Error::Storage(format!("/dev/urandom: {e}")))?;
    cold.put_meta(REPLICA_KEY, &id, true)?;
    Ok(id)
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
        let bump = || cold.put_meta(INCARNATION_KEY, &incarnation.to_be_bytes(), true);
        // A predecessor whose log write failed (full disk) left RocksDB
        // refusing writes: reopen it if room is back.
        if let Err(e) = bump() {
            if !cold.reopen_if_room() {
                return Err(e);
            }
            bump()?;
        }
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
        // The replica id: this directory's random id plus the incarnation.
        // The configured node id is only a label (deployments often give
        // every node the same one); two directories never share an id, and
        // a restart keeps its directory's id with a new incarnation, so a
        // crash never reuses a dot or counter entry already shipped.
        let mut replica = directory_id(&cold, &cfg)?;
        replica.extend_from_slice(&incarnation.to_be_bytes());
        let n = shard_count(cfg.hot_limit);
        let limits = Limits {
            hot: cfg.hot_limit.div_ceil(n).max(1),
            warm: cfg.warm_limit.div_ceil(n),
            threshold: cfg.access_threshold.max(1),
        };
        let cold_possible = !cold.keys_empty()?;
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
            capture: AtomicBool::new(false),
            synced: AtomicBool::new(cold.get_meta(SYNCED_KEY)?.is_some()),
            member_cuts: Mutex::new(
                cold.meta_with_prefix(CUT_PREFIX)?
                    .into_iter()
                    .filter_map(|(dir, v)| Some((dir, decode_u64(&v)?)))
                    .collect(),
            ),
            members: Mutex::new(
                cold.meta_with_prefix(membership::MEMBER_PREFIX)?
                    .into_iter()
                    .filter_map(|(dir, v)| Some((dir, decode_u64(&v)?)))
                    .collect(),
            ),
            tomb_cut: std::sync::atomic::AtomicU64::new(
                cold.get_meta(TOMB_CUT_KEY)?
                    .and_then(|b| decode_u64(&b))
                    .unwrap_or(0),
            ),
            capture_owner: Mutex::new(0),
            closed: AtomicBool::new(false),
            write_error: Mutex::new(None),
            has_write_error: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            flusher: Mutex::new(None),
            flush_lock: Mutex::new(()),
            close_lock: Mutex::new(()),
            telemetry: Default::default(),
            migrated_from: Mutex::new(import::load_migrated_from(&cold)?),
        });
        for (id, tomb) in cold.meta_with_prefix(TOMB_PREFIX)? {
            // An undecodable tombstone is dropped: it only guards against
            // stale deltas of a deleted generation.
            if let Ok(tomb) = record::decode_tombs(&tomb) {
                let i = inner.shard_index(&id);
                inner.shards[i].state.lock().put_tombs(id, tomb);
            }
        }
        let handle = spawn_flusher(&inner)?;
        *inner.flusher.lock() = Some(handle);
        // Nothing fallible from here: the predecessors' unwritten writes
        // (kept by the tier until now) become ours.
        let weak_owner: Weak<dyn Owner> = Arc::downgrade(&inner) as Weak<dyn Owner>;
        cold.add_owner(weak_owner);
        cold.adopt_orphans(|handed_over| {
            if !handed_over.is_empty() {
                inner.cold_possible.store(true, Ordering::Release);
            }
            for (id, p) in handed_over {
                let i = inner.shard_index(&id);
                let mut sh = inner.shards[i].state.lock();
                let merged = match sh.pending.dirty.remove(&id) {
                    Some(newer) => p.then(newer),
                    None => p,
                };
                sh.pending.dirty.insert(id, merged);
            }
        });
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

    /// The replica id of this open store: the directory's random id plus
    /// the incarnation (see [`Store::open`]).
    pub fn replica_id(&self) -> &ReplicaId {
        &self.0.replica
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.cold.path()
    }

    /// The last HLC timestamp issued (never below the persisted mark).
    pub fn clock(&self) -> Timestamp {
        self.0.clock.lock().last()
    }

    /// The largest offset accepted of a remote clock ahead of ours.
    pub fn max_clock_offset_ms(&self) -> u64 {
        self.0.clock.lock().max_offset_ms()
    }

    /// Physical time by the store's [`crate::hlc::WallClock`] (ms since
    /// the epoch).
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    /// A new HLC timestamp for an outgoing sync message (send rule).
    pub fn tick_clock(&self) -> Timestamp {
        self.0.clock.lock().tick(self.0.now_ms())
    }

    /// Apply the HLC receive rule to a peer's clock; `Err(ClockSkew)` when
    /// it is more than the configured offset ahead (nothing changes then).
    pub fn receive_clock(&self, remote: Timestamp) -> Result<Timestamp> {
        let now = self.0.now_ms();
        self.0.telemetry.observe_remote_clock(remote.wall_ms, now);
        self.0.clock.lock().receive(remote, now)
    }

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
    fn read_with<R>(
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
                let cap = sh.out.capacity();
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

    /// The HLC high-water mark known to be on disk (zero after a failed
    /// write of it, until the next one succeeds).
    pub fn persisted_clock(&self) -> Timestamp {
        *self.0.persisted_hlc.lock()
    }

    /// The largest cut below which this store collected tombstones (0 if
    /// none). A copy of a record older than it that arrives late might be
    /// one whose tombstone is gone: the sync engine drops anti-entropy
    /// messages sent before it (anti-entropy repairs what they held).
    pub fn tomb_cut(&self) -> u64 {
        self.0.tomb_cut.load(Ordering::Acquire)
    }

    /// Approximate heap bytes of `id`'s state in memory (0 when on disk).
    pub fn heap_bytes(&self, id: &[u8]) -> usize {
        let sh = self.0.lock_state_unchecked(id);
        match sh.tiers.get(id).map(|s| &s.body) {
            Some(Body::Hot(c)) => c.heap_bytes(),
            Some(Body::Warm(b)) => b.len(),
            None => 0,
        }
    }

    /// Elements of `id` holding a remove token (diagnostics: what causal
    /// stability has yet to collect; 0 for other types and ids not in
    /// memory). O(elements).
    pub fn remove_tokens(&self, id: &[u8]) -> usize {
        let body = {
            let sh = self.0.lock_state_unchecked(id);
            match sh.tiers.get(id).map(|s| &s.body) {
                Some(Body::Hot(c)) => Arc::clone(c),
                _ => return 0,
            }
        };
        match &*body {
            Crdt::ORSet(s) => s.remove_token_count(),
            _ => 0,
        }
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

/// How long a normal-scheduler call spins for a busy shard before it
/// hands the call to a dirty scheduler.
const INLINE_LOCK_WAIT: Duration = Duration::from_micros(20);

/// Take `lock` by spinning (never parking the scheduler thread: a parked
/// thread wakes only when the OS runs it again), or `Error::WouldBlock`.
fn spin_lock(lock: &Mutex<Shard>) -> Result<StateGuard<'_>> {
    if let Some(g) = lock.try_lock() {
        return Ok(g);
    }
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            std::hint::spin_loop();
        }
        if let Some(g) = lock.try_lock() {
            return Ok(g);
        }
        if start.elapsed() > INLINE_LOCK_WAIT {
            return Err(Error::WouldBlock);
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.cfg.wall_clock.now_ms()
    }

    /// The latest collection cut the creating replica of a generation was
    /// part of (0: none; also for replica ids that name no directory).
    fn cut_of(&self, replica: &[u8]) -> u64 {
        if replica.len() != record::REPLICA_BYTES {
            return 0;
        }
        let dir = &replica[..record::DIRECTORY_BYTES];
        self.member_cuts.lock().get(dir).copied().unwrap_or(0)
    }

    fn shard_index(&self, id: &[u8]) -> usize {
        (self.hasher.hash_one(id) as usize) & (self.shards.len() - 1)
    }

    /// The state lock of `id`'s shard. A normal scheduler never waits for
    /// it: the holder may be a thread the OS has descheduled (on a busy
    /// machine, for a whole 4 ms tick), so after a short spin the call
    /// answers `Error::WouldBlock` and is repeated on a dirty scheduler.
    fn lock_state(&self, id: &[u8], access: Access) -> Result<StateGuard<'_>> {
        let lock = &self.shards[self.shard_index(id)].state;
        let sh = match access {
            Access::MemoryOnly => spin_lock(lock)?,
            Access::MayBlock => lock.lock(),
        };
        // Checked under the shard lock: a close that flushes this shard
        // afterwards sees every write that passed this check.
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(sh)
    }

    /// The state lock without the `closed` check, for a call that holds the
    /// disk lock (finishing a write already in the WAL, or a disk read): a
    /// close that started meanwhile waits for that disk lock before it
    /// releases RocksDB, so the call completes.
    fn lock_state_unchecked(&self, id: &[u8]) -> StateGuard<'_> {
        self.shards[self.shard_index(id)].state.lock()
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

    /// [`Inner::check_writable`], and on a normal scheduler, room in the
    /// pending map without a rehash.
    fn check_writable_at(&self, sh: &Shard, id: &[u8], access: Access) -> Result<()> {
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
    fn write_strict(&self, id: &[u8], ops: &[BatchOp]) -> Result<()> {
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
    fn out_would_regrow(&self, out: &HashMap<Box<[u8]>, Outgoing>, id: &[u8]) -> bool {
        self.capture.load(Ordering::Relaxed)
            && regrows_large(out.len(), out.capacity())
            && !out.contains_key(id)
    }

    /// Persist `tombs` (already joined with those held) as the tombstones
    /// of `id`, with the store's durability, and hold them.
    fn record_tombs<'a>(&'a self, mut sh: StateGuard<'a>, id: &[u8], tombs: Tombs) -> Result<()> {
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
    fn delete_locked<'a>(
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
    fn persist<'a>(
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
    fn large(&self, sh: &Shard, id: &[u8], payload: usize) -> bool {
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
    fn join_in_memory(&self, sh: &mut Shard, id: &[u8], meta: &Meta, other: &Crdt) -> Result<()> {
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

    /// Lock `id`'s shard and bring `id` into memory if it is on disk.
    /// Returns the guard and whether `id` exists. On a normal scheduler the
    /// disk is not read (`Error::WouldBlock`); on a dirty one it is read
    /// without the state lock (the caller holds the disk lock, so no flush
    /// of this shard moves writes out of the pending overlay meanwhile).
    fn locate(&self, id: &[u8], access: Access) -> Result<(StateGuard<'_>, bool)> {
        self.locate_with(self.lock_state(id, access)?, id, access)
    }

    /// [`Inner::locate`] with the state lock already taken. On a dirty
    /// scheduler a large record is assembled (decoded, its pending deltas
    /// joined, encoded) without the state lock; it is kept only if nothing
    /// of `id` changed meanwhile, else the load starts again (and after a
    /// few tries assembles under the lock).
    fn locate_with<'a>(
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
        let sh = self.lock_state_unchecked(id);
        Ok((sh, base))
    }

    fn corrupt(&self, e: Error) -> Error {
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
    fn assemble_meta(&self, sh: &Shard, id: &[u8], base: Option<Vec<u8>>) -> Result<Option<Meta>> {
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
    fn view_unlocked<'a, R>(
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
    fn promote(&self, id: &[u8], version: u64, crdt: Crdt) {
        let mut sh = self.lock_state_unchecked(id);
        if sh.tiers.promote(id, version, crdt, self.limits) {
            self.cold_possible.store(true, Ordering::Release);
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
        // The disk locks of every shard (in order), so that no cold load
        // reads the disk while writes move from the overlay to RocksDB.
        let _disks: Vec<_> = self.shards.iter().map(|s| s.disk.lock()).collect();
        // Taken under each shard lock in O(1); encoded without it.
        let groups: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.state.lock().pending.begin_flush())
            .collect();
        let mut ops = Vec::new();
        for g in groups.iter().flatten() {
            write_group(g, &mut ops);
        }
        let hlc_changed = self.hlc_to_batch(&mut ops);
        if ops.is_empty() {
            // Groups with nothing to write (a failed mutation's empty
            // entry) are done too.
            drop(groups);
            for shard in self.shards.iter() {
                shard.state.lock().pending.end_flush(true);
            }
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
                self.record_write_error(e);
                if hlc_changed {
                    *self.persisted_hlc.lock() = Timestamp::ZERO;
                }
            }
        }
        // On failure `end_flush` takes the groups back (unshared); on
        // success they are freed after it, without the lock.
        let mut groups = Some(groups);
        if !ok {
            groups = None;
        }
        for shard in self.shards.iter() {
            shard.state.lock().pending.end_flush(ok);
        }
        drop(groups);
        drop(ops);
        if !ok {
            // The batch stays pending; once RocksDB accepts writes again
            // the next flush writes it.
            self.cold.recover_after_write_error();
        }
        res
    }

    fn record_write_error(&self, e: &Error) {
        if matches!(e, Error::Storage(_)) {
            *self.write_error.lock() = Some(e.to_string());
            self.has_write_error.store(true, Ordering::Release);
        }
    }

    /// Nothing to write: a write error recorded earlier (e.g. a strict
    /// write or a flush on a full disk) is cleared once a probe succeeds,
    /// so writes resume when space is freed.
    fn check_writable_after_idle(&self) -> Result<()> {
        if !self.has_write_error.load(Ordering::Acquire) {
            return Ok(());
        }
        self.cold.recover_after_write_error();
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
    fn hand_over(&self) -> cold::HandedOver {
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

    fn pending_ops_at_exit(&self, ops: &mut Vec<BatchOp>) -> bool {
        let mut all = true;
        for shard in self.shards.iter() {
            match shard.state.try_lock_for(Duration::from_millis(500)) {
                Some(sh) => sh.pending.ops(ops),
                None => all = false,
            }
        }
        self.hlc_to_batch(ops);
        all
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

/// Estimated bytes of the pending deltas among `overlays`.
fn deltas_size<'p>(overlays: impl IntoIterator<Item = &'p Pending>) -> usize {
    overlays
        .into_iter()
        .filter_map(|p| p.delta.as_deref())
        .map(Crdt::size_hint)
        .sum()
}

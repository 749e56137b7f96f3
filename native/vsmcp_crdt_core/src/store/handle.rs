//! The store handle ([`Store`]) and the state its clones share
//! (`Inner`): the cold tier, the shards and what each holds (tiers,
//! pending writes, tombstones, outgoing changes), the clock and the flags;
//! with the handle's small accessors. Each job module of `store` adds its
//! methods to these types in an `impl` block of its own.

use super::cold::ColdTier;
use super::config::{Durability, StoreConfig};
use super::telemetry::Telemetry;
use super::tiers::{Ext, Limits, Tiers};
use super::write_behind::PendingWrites;
use crate::causal::ReplicaId;
use crate::crdt::Crdt;
use crate::error::Result;
use crate::hash::HashMap;
use crate::hlc::{Clock, Timestamp};
use crate::record::{Meta, Tombs};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

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
pub(super) struct Shard {
    pub(super) tiers: Tiers,
    pub(super) pending: PendingWrites,
    /// Delete tombstones, per id (see `record::Tombs`). Insert with
    /// [`Shard::put_tombs`].
    pub(super) tombs: HashMap<Box<[u8]>, Tombs>,
    /// No tombstone here has a latest delete before this (0: unknown), so
    /// collection skips the shard below it.
    pub(super) tomb_floor: u64,
    /// Local changes not yet taken by sync (only while capture is on).
    pub(super) out: HashMap<Box<[u8]>, Outgoing>,
}

impl Shard {
    pub(super) fn put_tombs(&mut self, id: Box<[u8]>, tombs: Tombs) {
        self.tomb_floor = self.tomb_floor.min(tombs.latest());
        self.tombs.insert(id, tombs);
    }
}

/// A local change not yet taken by sync ([`Store::take_outgoing`]): the
/// joined local deltas of one id since the last take, or its tombstone
/// (`meta.deleted`, no delta). Changes merged from peers never enter it.
#[derive(Clone)]
pub(super) struct Outgoing {
    pub(super) meta: Meta,
    pub(super) delta: Option<Arc<Crdt>>,
}

#[derive(Default)]
pub(super) struct ShardLocks {
    pub(super) state: Mutex<Shard>,
    pub(super) disk: Mutex<()>,
}

pub(super) struct Inner {
    pub(super) cold: Arc<ColdTier>,
    pub(super) shards: Box<[ShardLocks]>,
    pub(super) hasher: crate::hash::RandomState,
    pub(super) node_id: Arc<[u8]>,
    pub(super) replica: ReplicaId,
    pub(super) incarnation: u64,
    pub(super) clock: Mutex<Clock>,
    pub(super) persisted_hlc: Mutex<Timestamp>,
    pub(super) cfg: StoreConfig,
    pub(super) limits: Limits,
    /// False while every stored id is known to be in memory (a fresh store
    /// that has demoted nothing): misses then need no disk read.
    pub(super) cold_possible: AtomicBool,
    /// Record local changes for sync (see [`Store::start_capture`]).
    pub(super) capture: AtomicBool,
    /// The directory has synced (persisted): its deletes keep tombstones
    /// even while no sync engine runs.
    pub(super) synced: AtomicBool,
    /// See [`Store::tomb_cut`] (persisted).
    pub(super) tomb_cut: std::sync::atomic::AtomicU64,
    /// Per replica directory, the latest collection cut it was part of
    /// (persisted under `CUT_PREFIX`; see `merge_remote`).
    pub(super) member_cuts: Mutex<HashMap<Box<[u8]>, u64>>,
    /// The member directories, with when each joined (persisted under
    /// `membership::MEMBER_PREFIX`).
    pub(super) members: Mutex<HashMap<Box<[u8]>, u64>>,
    /// The token of the current capture owner (0: none).
    pub(super) capture_owner: Mutex<u64>,
    pub(super) closed: AtomicBool,
    pub(super) write_error: Mutex<Option<String>>,
    /// Mirrors `write_error.is_some()`, read on every write without a lock.
    pub(super) has_write_error: AtomicBool,
    pub(super) fail_writes: AtomicBool,
    pub(super) stop: Arc<(Mutex<bool>, Condvar)>,
    pub(super) flusher: Mutex<Option<JoinHandle<()>>>,
    pub(super) flush_lock: Mutex<()>,
    /// Held for a whole `close` or hand-over.
    pub(super) close_lock: Mutex<()>,
    /// Operation counters and observed clock offsets (see `info`).
    pub(super) telemetry: Telemetry,
    /// The source this store imported, if it did (see `import`).
    pub(super) migrated_from: Mutex<Option<Arc<[u8]>>>,
}

/// A handle to an open store. Cloning shares it.
#[derive(Clone)]
pub struct Store(pub(super) Arc<Inner>);

impl Store {
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

    /// The HLC high-water mark known to be on disk (zero after a failed
    /// write of it, until the next one succeeds).
    pub fn persisted_clock(&self) -> Timestamp {
        *self.0.persisted_hlc.lock()
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
}

impl Inner {
    pub(super) fn now_ms(&self) -> u64 {
        self.cfg.wall_clock.now_ms()
    }
}

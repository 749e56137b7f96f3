//! Store configuration, durability modes and the scheduler contract.
//!
//! Names here are the core's own (`hot_limit`, `warm_limit`); the legacy
//! Elixir option names (`memory_limit`, `ets_limit`) are translated at the
//! NIF edge.

use super::cold::RocksMemory;
use crate::hlc::WallClock;
use std::path::PathBuf;

/// When a mutation is acknowledged relative to its WAL write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge at once; the WAL write follows within `flush_interval_ms`.
    Relaxed,
    /// Acknowledge after the write is in the WAL. A write that fails leaves
    /// the state exactly as it was.
    Strict,
}

/// Whether a call may block. Calls made on a normal BEAM scheduler pass
/// `MemoryOnly`: they read memory, RocksDB's memtables and its block cache,
/// and fail with [`crate::Error::WouldBlock`] when they would need a disk
/// read, a WAL write (strict durability) or O(n) work on a large item
/// (more than [`INLINE_BYTES`]); the caller then repeats the call on a dirty
/// scheduler with `MayBlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    MemoryOnly,
    MayBlock,
}

/// Largest item (estimated encoded bytes, see `Crdt::size_hint`) whose
/// O(n) work (decode, encode, building its value) runs on a normal
/// scheduler. Decoding runs at roughly 0.2-1 ns per byte plus 0.2 µs per
/// element, so this keeps such work well under a millisecond.
pub const INLINE_BYTES: usize = 64 << 10;

/// Largest table (a set's index, a shard's map or queues, the pending map)
/// that may reallocate on a normal scheduler: growing one rehashes or copies
/// all of it (about 0.1 ms at this size, milliseconds at 100,000).
pub const REGROW_INLINE_MAX: usize = 4096;

/// Whether the next insert into a table holding `len` of `capacity`
/// entries reallocates one too large for a normal scheduler.
pub fn regrows_large(len: usize, capacity: usize) -> bool {
    len >= REGROW_INLINE_MAX && len == capacity
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Remove the directory when the store closes (stores with no location).
    pub ephemeral: bool,
    /// Canonical term bytes of the node id.
    pub node_id: Vec<u8>,
    /// Items kept decoded in the hot tier.
    pub hot_limit: usize,
    /// Items kept encoded in the warm tier.
    pub warm_limit: usize,
    /// Accesses before a warm item is promoted to hot.
    pub access_threshold: u32,
    pub durability: Durability,
    pub flush_interval_ms: u64,
    /// Largest accepted id, element or register value, in encoded bytes.
    pub max_value_bytes: usize,
    pub max_clock_offset_ms: u64,
    /// The memory the store sizes its fixed costs by (see
    /// [`StoreConfig::rocks_memory`]).
    pub memory_budget: usize,
    /// RocksDB block cache size; `None`: a quarter of `memory_budget`.
    pub cache_bytes: Option<usize>,
    /// Source of physical time (`WallClock::System`; tests may drive it).
    pub wall_clock: WallClock,
    /// Tests only: the directory's replica id, when the directory has none
    /// yet (first open, or a restored backup), is derived from this seed
    /// instead of `/dev/urandom`, so that a seeded run replays exactly.
    #[cfg(feature = "fault-injection")]
    pub test_replica_seed: Option<u64>,
}

/// The default `memory_budget`: 256 MiB, of which RocksDB's caches and
/// buffers are sized to half (64 MiB of block cache, two memtables of 32
/// MiB; its index and filter blocks come on top, see
/// [`StoreConfig::rocks_memory`]), which leaves a 512 MiB container room
/// for the VM, the hot and warm tiers and the sync log.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

/// The smallest budget honoured: below it RocksDB's buffers would be too
/// small to write efficiently (4 MiB memtables already flush often).
pub const MIN_MEMORY_BUDGET: usize = 32 << 20;

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>, node_id: &[u8]) -> Self {
        StoreConfig {
            path: path.into(),
            ephemeral: false,
            node_id: node_id.to_vec(),
            hot_limit: 10_000,
            warm_limit: 100_000,
            access_threshold: 3,
            durability: Durability::Relaxed,
            flush_interval_ms: 5,
            max_value_bytes: 16 << 20,
            max_clock_offset_ms: crate::hlc::DEFAULT_MAX_OFFSET_MS,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            cache_bytes: None,
            wall_clock: WallClock::System,
            #[cfg(feature = "fault-injection")]
            test_replica_seed: None,
        }
    }

    /// RocksDB's share of the memory budget: a quarter for the block cache
    /// (unless `cache_bytes` says otherwise), an eighth per memtable (two
    /// at most: a quarter), and the write-ahead log flushed beyond a
    /// quarter. The other half is for what is sized in items (the hot and
    /// warm tiers), the sync log (`max_log_bytes`) and the VM. A memtable
    /// stops growing at 256 MiB and the log at 1 GiB whatever the budget
    /// (larger ones only lengthen the log replay of a restart). Not
    /// counted: RocksDB's index and filter blocks (`table_readers_bytes`
    /// in `info`), which grow with the data on disk.
    pub fn rocks_memory(&self) -> RocksMemory {
        let budget = self.memory_budget.max(MIN_MEMORY_BUDGET);
        RocksMemory {
            cache_bytes: self.cache_bytes.unwrap_or(budget / 4),
            write_buffer_bytes: (budget / 8).min(256 << 20),
            max_wal_bytes: (budget / 4).min(1 << 30) as u64,
        }
    }
}

//! The tiered store: hot and warm tiers in memory, cold tier in RocksDB.
//!
//! One module per job; this one only declares them and re-exports the
//! public API (`store::Store`, `store::Access`, ...).
//!
//! * [`config`]: options, durability, the scheduler contract ([`Access`]).
//! * `handle`: the [`Store`] handle and the state its clones share.
//! * `open`: opening a directory, recovery, the replica id.
//! * `shard`: which shard holds an id; its locks and the bounded spin.
//! * `local`: the caller's operations (create, read, update, merge, delete).
//! * `write`: the write path those and sync's merges share.
//! * `load`: locate, assemble and promote from the cold tier; decay.
//! * `replication`: capture of local changes for sync, and remote merge.
//! * `collection`: causal-stability collection of remove tokens and
//!   tombstones.
//! * `tiers`: hot/warm CLOCK queues of one shard; promotion and demotion.
//! * `write_behind`: pending delta groups; `flusher`: the thread that
//!   commits them, close and hand-over.
//! * [`cold`]: the RocksDB wrapper; `cold::registry`: the stores of one OS
//!   process per path, and the exit sweep; [`cold::admin`]: backups,
//!   listing, properties.
//! * [`keys`]: column families, metadata keys and prefixes, `BatchOp`.
//! * [`halt`]: the exit gate: process exit without a crash and without
//!   losing writes.
//! * [`record`]: re-export of [`crate::record`], what is stored per id.
//! * `backup`, `listing`, [`info`] (with `telemetry`): operations on a
//!   running store (online backup, ids by pages, the `info` report).
//! * [`membership`]: the replica directories this one syncs with.
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
//! fsync). The replica id in dots and counter entries is the directory's
//! random 16-byte id (made and fsynced at its first open, `REPLICA_KEY`)
//! followed by the incarnation (8 bytes, big end): two directories never
//! share an id, and a restart, crash or not, never reuses a dot or counter
//! entry already shipped. The configured `node_id` is only a label
//! (deployments often give every node the same one).

mod backup;
pub mod cold;
mod collection;
pub mod config;
#[cfg(feature = "fault-injection")]
mod crash;
mod flusher;
pub mod halt;
mod handle;
pub mod import;
pub mod info;
pub mod keys;
mod listing;
mod load;
mod local;
pub mod membership;
mod open;
mod replication;
mod shard;
mod telemetry;
mod tiers;
mod write;
mod write_behind;

/// The record format moved to [`crate::record`] (sync reads it too); this
/// re-export keeps `store::record` paths working until their users move.
pub use crate::record;

pub use crate::crdt::Mutation;
pub use config::{Access, Durability, StoreConfig, INLINE_BYTES};
pub use handle::{Stats, Store, View};
pub use info::Info;
pub use listing::{IdsPage, RecordsPage};
pub use replication::Merged;
pub use tiers::{drop_in_background, Ext, Tier};
pub use write_behind::Pending;

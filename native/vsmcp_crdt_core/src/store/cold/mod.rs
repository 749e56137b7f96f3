//! The cold tier: RocksDB (the successor of the replaced DETS tier).
//!
//! Column families (named in [`keys`](super::keys)): `crdt` (id bytes ->
//! record, with the record-join merge operator) and `meta` (format marker,
//! node id, incarnation, HLC high-water mark, tombstones, cuts, members).
//!
//! * `rocks`: the plain RocksDB wrapper ([`RocksDir`]).
//! * `registry`: one [`ColdTier`] per directory per OS process (RocksDB
//!   refuses a second open of a path this process holds), the hand-over of
//!   a closing store's writes to its successor, and the exit sweep.
//! * [`admin`]: backups, pages of keys, record samples, properties.

pub mod admin;
mod registry;
mod rocks;

pub use super::keys::{
    BatchOp, KeyValue, CF_CRDT, CF_META, CUT_PREFIX, FORMAT_KEY, FORMAT_VALUE, HLC_KEY,
    INCARNATION_KEY, NODE_KEY, REPLICA_KEY, SYNCED_KEY, TOMB_CUT_KEY, TOMB_PREFIX,
};
pub use registry::{ColdTier, HandedOver, Owner};
pub use rocks::{Cached, RocksDir, RocksMemory};

//! The names of the store on disk: column families, metadata keys and key
//! prefixes, and [`BatchOp`], one write of a batch. Everything a store
//! module writes or reads by name is spelt here, once; this module imports
//! nothing of the store, so any of them can use it.

pub const CF_CRDT: &str = "crdt";
pub const CF_META: &str = "meta";
/// Written once at creation; its absence marks a foreign RocksDB.
pub const FORMAT_KEY: &[u8] = b"format";
pub const FORMAT_VALUE: &[u8] = b"vsmcp_crdt/1";
pub const NODE_KEY: &[u8] = b"node_id";
pub const INCARNATION_KEY: &[u8] = b"incarnation";
pub const HLC_KEY: &[u8] = b"hlc";
/// Present once the directory has synced (its deletes keep tombstones).
pub const SYNCED_KEY: &[u8] = b"synced";
/// The largest cut below which tombstones were collected (u64, big end).
pub const TOMB_CUT_KEY: &[u8] = b"tomb_cut";
/// Prefix of the per-directory collection cuts (`prefix ++ directory`:
/// u64, big end): the latest cut at which that replica was part of the
/// agreement.
pub const CUT_PREFIX: &[u8] = b"cut/";
/// A random id of this data directory, made at its first open (fsynced).
pub const REPLICA_KEY: &[u8] = b"replica_id";

/// Prefix of the metadata keys holding delete tombstones (`prefix ++ id`).
pub const TOMB_PREFIX: &[u8] = b"tomb/";

/// The metadata key of `id`'s tombstone.
pub fn tomb_key(id: &[u8]) -> Box<[u8]> {
    [TOMB_PREFIX, id].concat().into()
}

/// Prefix of the membership keys.
pub const MEMBER_PREFIX: &[u8] = b"member/";

/// Prefix of the directories removed by `forget_replica` (their sessions
/// are refused for good).
pub const FORGOTTEN_PREFIX: &[u8] = b"forgotten/";

/// Metadata key of the source a store imported (see
/// `Store::finish_import`); its presence also marks a finished import.
pub const MIGRATED_FROM_KEY: &[u8] = b"migrated_from";

/// Metadata key a backup leaves in its copy: the directory id of the store
/// it was taken from, then the time it was taken (ms since the epoch, 8
/// bytes big-endian). Diagnostics only; nothing reads it.
pub const BACKUP_OF_KEY: &[u8] = b"backup_of";

/// One write of a batch (see `ColdTier::write`).
#[derive(Debug)]
pub enum BatchOp {
    Delete(Box<[u8]>),
    Merge(Box<[u8]>, Vec<u8>),
    PutMeta(&'static [u8], Vec<u8>),
    /// A metadata entry under a computed key (tombstones, `TOMB_PREFIX`).
    PutMetaKey(Box<[u8]>, Vec<u8>),
    /// Removal of a metadata entry under a computed key.
    DeleteMetaKey(Box<[u8]>),
}

/// A key and its value.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

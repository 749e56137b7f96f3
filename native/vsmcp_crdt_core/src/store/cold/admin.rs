//! Operational access to the RocksDB of a [`RocksDir`]: checkpoints
//! (backups), pages of record keys (listing), record samples and RocksDB's
//! properties (`Store::info`). Everything here may read or write the disk:
//! dirty schedulers only.

use super::rocks::{storage_err, RocksDir, RocksMemory};
use crate::error::Result;
use crate::hlc::now_ms;
use crate::store::halt::Gate;
use crate::store::keys::{CF_CRDT, CF_META, REPLICA_KEY};
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ReadOptions, WriteOptions};
use std::path::Path;

pub use crate::store::keys::BACKUP_OF_KEY;

/// The first and last record keys.
pub type KeyRange = (Box<[u8]>, Box<[u8]>);

/// Memory of the short-lived handle that edits a fresh checkpoint.
const EDIT_MEMORY: RocksMemory = RocksMemory {
    cache_bytes: 1 << 20,
    write_buffer_bytes: 1 << 20,
    max_wal_bytes: 4 << 20,
};

/// RocksDB properties summed over the store's column families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskProperties {
    /// `rocksdb.total-sst-files-size`: every SST file, obsolete ones not yet
    /// deleted included.
    pub total_sst_bytes: u64,
    /// `rocksdb.live-sst-files-size`: SST files of the current version.
    pub live_sst_bytes: u64,
    /// `rocksdb.estimate-live-data-size`.
    pub live_data_bytes: u64,
    /// `rocksdb.cur-size-all-mem-tables`: active and unflushed memtables.
    pub memtable_bytes: u64,
    /// `rocksdb.block-cache-usage` (one cache, shared by the column family
    /// of records).
    pub block_cache_bytes: u64,
    /// `rocksdb.estimate-table-readers-mem`: index and filter blocks held
    /// outside the block cache.
    pub table_readers_bytes: u64,
    /// `rocksdb.estimate-num-keys` of the records' column family. Counts
    /// unmerged updates of one id too, so it over-counts until compaction.
    pub keys_estimate: u64,
    /// `rocksdb.num-running-compactions` (whole database).
    pub running_compactions: u64,
    /// `rocksdb.num-running-flushes` (whole database).
    pub running_flushes: u64,
    /// `rocksdb.compaction-pending` of any column family.
    pub compaction_pending: bool,
    /// `rocksdb.estimate-pending-compaction-bytes`.
    pub pending_compaction_bytes: u64,
    /// `rocksdb.mem-table-flush-pending` of any column family.
    pub flush_pending: bool,
    /// `rocksdb.is-write-stopped` (writes stalled by RocksDB).
    pub write_stopped: bool,
    /// `rocksdb.background-errors` since open.
    pub background_errors: u64,
    /// Write-ahead log: bytes and number of the `*.log` files of the
    /// directory. RocksDB has no property for it.
    pub wal_bytes: u64,
    pub wal_files: u64,
}

impl RocksDir {
    /// A consistent copy of the database at `dest` (which must not exist):
    /// a RocksDB checkpoint, hard links to the SST files (copies across
    /// filesystems) plus the memtables flushed first. Writes go on
    /// meanwhile; the copy holds every write completed before the call.
    ///
    /// The copy then forgets this directory's replica id (`REPLICA_KEY`),
    /// so that a store opened on it makes a fresh one: two live stores with
    /// one directory id would be taken by sync for a single replica (their
    /// dots would collide). `BACKUP_OF_KEY` records where it came from.
    pub fn checkpoint(&self, dest: &Path) -> Result<()> {
        let origin = self.get_meta(REPLICA_KEY)?.unwrap_or_default();
        {
            let (_gate, db) = self.db()?;
            let cp = Checkpoint::new(&*db).map_err(|e| storage_err(dest, e))?;
            cp.create_checkpoint(dest)
                .map_err(|e| storage_err(dest, e))?;
        }
        if let Err(e) = Self::detach_identity(dest, &origin) {
            // A copy that kept the identity must not be left behind.
            let _ = std::fs::remove_dir_all(dest);
            return Err(e);
        }
        Ok(())
    }

    /// Remove the directory id from the checkpoint at `dest` and note its
    /// origin, with a short-lived handle of its own (nothing else has the
    /// fresh directory open).
    fn detach_identity(dest: &Path, origin: &[u8]) -> Result<()> {
        let _gate = Gate::enter()?;
        let db = Self::open_db(dest, EDIT_MEMORY)?;
        let res = (|| {
            let meta = db
                .cf_handle(CF_META)
                .ok_or_else(|| storage_err(dest, "missing column family meta"))?;
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            let mut stamp = origin.to_vec();
            stamp.extend_from_slice(&now_ms().to_be_bytes());
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_cf(meta, REPLICA_KEY);
            batch.put_cf(meta, BACKUP_OF_KEY, &stamp);
            db.write_opt(batch, &wo).map_err(|e| storage_err(dest, e))?;
            db.flush_cf(meta).map_err(|e| storage_err(dest, e))
        })();
        db.cancel_all_background_work(true);
        drop(db);
        res
    }

    /// Up to `limit` record keys greater than `after` (from the first key
    /// when `None`), in byte order, leaving out those `hidden` names.
    /// Values are not copied and the block cache is not filled.
    pub fn keys_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        mut hidden: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<Box<[u8]>>> {
        let mut out = Vec::with_capacity(limit.min(4096));
        self.scan(after, None, limit, |k, _| {
            let shown = !hidden(k);
            if shown {
                out.push(k.into());
            }
            shown
        })?;
        Ok(out)
    }

    /// Call `f` with the key and record of up to `limit` records whose keys
    /// are greater than `after` (from the first key when `None`) and not
    /// greater than `until` (no bound when `None`), in byte order. Returns
    /// the last key visited when `limit` were visited (more may follow),
    /// `None` when the records in the range ran out. The block cache is not
    /// filled.
    pub fn records_after(
        &self,
        after: Option<&[u8]>,
        until: Option<&[u8]>,
        limit: usize,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<Option<Box<[u8]>>> {
        self.scan(after, until, limit.max(1), |k, v| {
            f(k, v);
            true
        })
    }

    /// Visit the records with keys in `(after, until]` in byte order until
    /// `limit` of them counted (`f` answers whether a record counts);
    /// returns the key of the record that reached the limit, `None` when
    /// the range ran out first. Values are borrowed from the iterator, not
    /// copied; the block cache is not filled.
    fn scan(
        &self,
        after: Option<&[u8]>,
        until: Option<&[u8]>,
        limit: usize,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Option<Box<[u8]>>> {
        let (_gate, db) = self.db()?;
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        let mut it = db.raw_iterator_cf_opt(self.cf(&db, CF_CRDT)?, ro);
        match after {
            Some(k) => it.seek(k),
            None => it.seek_to_first(),
        }
        let mut counted = 0;
        let mut last = None;
        while counted < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if until.is_some_and(|u| k > u) {
                break;
            }
            if after != Some(k) && f(k, v) {
                counted += 1;
                if counted == limit {
                    last = Some(Box::from(k));
                }
            }
            it.next();
        }
        it.status().map_err(|e| storage_err(&self.path, e))?;
        Ok(last)
    }

    /// Call `f` with the key and record of up to `n` consecutive records
    /// from `from` (the first key at or after it), wrapping to the start
    /// once. Returns how many were visited.
    pub fn visit_records(
        &self,
        from: &[u8],
        n: usize,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<usize> {
        let (_gate, db) = self.db()?;
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        let mut it = db.raw_iterator_cf_opt(self.cf(&db, CF_CRDT)?, ro);
        it.seek(from);
        let mut seen = 0;
        let mut wrapped = false;
        while seen < n {
            match (it.key(), it.value()) {
                (Some(k), Some(v)) => {
                    if wrapped && k >= from {
                        break;
                    }
                    f(k, v);
                    seen += 1;
                    it.next();
                }
                _ if !wrapped => {
                    it.status().map_err(|e| storage_err(&self.path, e))?;
                    wrapped = true;
                    it.seek_to_first();
                }
                _ => break,
            }
        }
        it.status().map_err(|e| storage_err(&self.path, e))?;
        Ok(seen)
    }

    /// The first and last record keys (`None` when no record is stored).
    pub fn key_range(&self) -> Result<Option<KeyRange>> {
        let (_gate, db) = self.db()?;
        let mut it = db.raw_iterator_cf(self.cf(&db, CF_CRDT)?);
        it.seek_to_first();
        let Some(first) = it.key().map(Box::<[u8]>::from) else {
            return it
                .status()
                .map(|()| None)
                .map_err(|e| storage_err(&self.path, e));
        };
        it.seek_to_last();
        let last = it
            .key()
            .map(Box::<[u8]>::from)
            .unwrap_or_else(|| first.clone());
        it.status().map_err(|e| storage_err(&self.path, e))?;
        Ok(Some((first, last)))
    }

    /// RocksDB's size, memory and compaction properties, and the size of
    /// the write-ahead log.
    pub fn disk_properties(&self) -> Result<DiskProperties> {
        let (_gate, db) = self.db()?;
        let cfs = [self.cf(&db, CF_CRDT)?, self.cf(&db, CF_META)?];
        let int = |cf, name: &str| {
            db.property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let sum = |name: &str| cfs.iter().map(|cf| int(*cf, name)).sum::<u64>();
        let any = |name: &str| cfs.iter().any(|cf| int(*cf, name) > 0);
        let db_wide = |name: &str| int(cfs[0], name);
        let mut p = DiskProperties {
            total_sst_bytes: sum("rocksdb.total-sst-files-size"),
            live_sst_bytes: sum("rocksdb.live-sst-files-size"),
            live_data_bytes: sum("rocksdb.estimate-live-data-size"),
            memtable_bytes: sum("rocksdb.cur-size-all-mem-tables"),
            block_cache_bytes: int(cfs[0], "rocksdb.block-cache-usage"),
            table_readers_bytes: sum("rocksdb.estimate-table-readers-mem"),
            keys_estimate: int(cfs[0], "rocksdb.estimate-num-keys"),
            running_compactions: db_wide("rocksdb.num-running-compactions"),
            running_flushes: db_wide("rocksdb.num-running-flushes"),
            compaction_pending: any("rocksdb.compaction-pending"),
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
            flush_pending: any("rocksdb.mem-table-flush-pending"),
            write_stopped: db_wide("rocksdb.is-write-stopped") > 0,
            background_errors: db_wide("rocksdb.background-errors"),
            ..DiskProperties::default()
        };
        drop(db);
        if let Ok(dir) = std::fs::read_dir(&self.path) {
            for e in dir.flatten() {
                let is_wal = e.file_name().to_str().is_some_and(|n| n.ends_with(".log"));
                if is_wal {
                    p.wal_files += 1;
                    p.wal_bytes += e.metadata().map_or(0, |m| m.len());
                }
            }
        }
        Ok(p)
    }
}

//! The RocksDB wrapper: one open directory ([`RocksDir`]) and what a store
//! asks of it: point reads (cache-only on a normal scheduler), batch
//! writes to the WAL, metadata, iteration, memtable flushes, and the reopen
//! after a failed write. Every call passes the exit gate ([`Gate`]). Which
//! stores share a directory is the registry's business, not this one's.

use crate::error::{Error, Result};
use crate::record::merge_records;
use crate::store::halt::Gate;
use crate::store::keys::{BatchOp, KeyValue, CF_CRDT, CF_META, FORMAT_KEY, FORMAT_VALUE};
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, IteratorMode, MergeOperands,
    Options, ReadOptions, ReadTier, WriteBatch, WriteOptions, DB,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

thread_local! {
    /// Set while a cache-only read runs on a normal scheduler: the merge
    /// operator then refuses to fold a large record (O(size) work) and
    /// flags it, and the read answers `Error::WouldBlock` instead.
    static INLINE_READ: std::cell::Cell<(bool, bool)> = const { std::cell::Cell::new((false, false)) };
}

fn full_merge(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let (inline, _) = INLINE_READ.with(|c| c.get());
    if inline {
        let size = existing.map_or(0, <[u8]>::len) + ops.iter().map(<[u8]>::len).sum::<usize>();
        if size > crate::store::config::INLINE_BYTES {
            INLINE_READ.with(|c| c.set((true, true)));
            return None;
        }
    }
    merge_records(existing, ops.iter())
}

fn partial_merge(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    merge_records(existing, ops.iter())
}

/// Outcome of a point read.
#[derive(Debug)]
pub enum Cached {
    Found(Vec<u8>),
    Missing,
}

/// RocksDB's memory: what [`crate::store::StoreConfig::memory_budget`]
/// gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksMemory {
    /// The block cache (decompressed blocks of SST files).
    pub cache_bytes: usize,
    /// One memtable; RocksDB keeps up to two (one being flushed).
    pub write_buffer_bytes: usize,
    /// The write-ahead log is flushed away beyond this.
    pub max_wal_bytes: u64,
}

/// An open RocksDB directory (shared through [`super::ColdTier`]).
pub struct RocksDir {
    /// `None` once released by the last store using it.
    pub(super) db: RwLock<Option<DB>>,
    memory: RocksMemory,
    last_recovery: Mutex<Option<Instant>>,
    pub(super) path: PathBuf,
    pub(super) _cleanup: DirCleanup,
}

pub(super) struct DirCleanup(pub(super) Option<PathBuf>);

impl Drop for DirCleanup {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Reopen after a failed write at most this often...
const RECOVERY_EVERY: Duration = Duration::from_millis(200);
/// ...and only when the filesystem has this much room.
const RECOVERY_MIN_FREE: u64 = 1 << 20;

/// Bytes available to this process on the filesystem of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out
    // pointer for the duration of the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

pub(super) fn storage_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{}: {e}", path.display()))
}

impl RocksDir {
    pub(super) fn open_fresh(
        path: &Path,
        ephemeral: bool,
        memory: RocksMemory,
    ) -> Result<RocksDir> {
        let has_current = path.join("CURRENT").exists();
        if !has_current {
            let foreign = std::fs::read_dir(path)
                .map_err(|e| storage_err(path, e))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != "LOCK" && e.file_name() != "LOG");
            if foreign {
                return Err(storage_err(
                    path,
                    "directory holds files that are not a vsmcp_crdt store",
                ));
            }
        }
        let db = Self::open_db(path, memory)?;
        let tier = RocksDir {
            db: RwLock::new(Some(db)),
            memory,
            last_recovery: Mutex::new(None),
            path: path.to_path_buf(),
            _cleanup: DirCleanup(ephemeral.then(|| path.to_path_buf())),
        };
        match tier.get_meta(FORMAT_KEY)? {
            Some(v) if v == FORMAT_VALUE => {}
            Some(_) => return Err(storage_err(path, "unknown store format")),
            None if has_current && tier.has_any_record()? => {
                return Err(storage_err(
                    path,
                    "RocksDB without a vsmcp_crdt format marker",
                ))
            }
            None => tier.put_meta(FORMAT_KEY, FORMAT_VALUE, true)?,
        }
        Ok(tier)
    }

    pub(super) fn open_db(path: &Path, memory: RocksMemory) -> Result<DB> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_keep_log_file_num(2);
        db_opts.set_max_total_wal_size(memory.max_wal_bytes);
        // The last reader of an obsolete memtable would otherwise free it
        // (tens of MB) in its own thread: a normal scheduler, in a read.
        db_opts.set_avoid_unnecessary_blocking_io(true);
        // One block cache for both column families.
        let cache = Cache::new_lru_cache(memory.cache_bytes);
        let mut crdt_opts = Options::default();
        crdt_opts.set_merge_operator("vsmcp_record_join", full_merge, partial_merge);
        crdt_opts.set_write_buffer_size(memory.write_buffer_bytes);
        crdt_opts.set_max_write_buffer_number(2);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        crdt_opts.set_block_based_table_factory(&table);
        crdt_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // The metadata (HLC, members, tombstones) is small: memtables of at
        // most 4 MiB, flushed with the records by the log's bound anyway.
        let mut meta_opts = Options::default();
        meta_opts.set_write_buffer_size(memory.write_buffer_bytes.min(4 << 20));
        meta_opts.set_max_write_buffer_number(2);
        let mut meta_table = BlockBasedOptions::default();
        meta_table.set_block_cache(&cache);
        meta_opts.set_block_based_table_factory(&meta_table);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_CRDT, crdt_opts),
            ColumnFamilyDescriptor::new(CF_META, meta_opts),
        ];
        DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| storage_err(path, e))
    }

    /// After a failed write: RocksDB stops accepting writes once a write
    /// to its log failed (a full disk), and its C API has no `Resume`. So
    /// when the filesystem has room again, reopen the database (its log is
    /// replayed; the writes that failed are still pending in memory and are
    /// written next). At most every `RECOVERY_EVERY`; true if reopened.
    pub fn recover_after_write_error(&self) -> bool {
        {
            let mut last = self.last_recovery.lock();
            if last.is_some_and(|t: Instant| t.elapsed() < RECOVERY_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.reopen_if_room()
    }

    /// Reopen RocksDB now if the filesystem has room (see
    /// [`RocksDir::recover_after_write_error`]).
    pub fn reopen_if_room(&self) -> bool {
        if free_bytes(&self.path).is_none_or(|b| b < RECOVERY_MIN_FREE) {
            return false;
        }
        let Ok(_gate) = Gate::enter() else {
            return false;
        };
        let mut guard = self.db.write();
        let Some(old) = guard.take() else {
            return false;
        };
        old.cancel_all_background_work(true);
        drop(old);
        // The LOCK is free once the old handle is dropped; opening again
        // on the same path rarely fails, but if it does, keep trying:
        // without a database the store answers `Error::Closed`.
        for _ in 0..50 {
            if let Ok(db) = Self::open_db(&self.path, self.memory) {
                *guard = Some(db);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, or `Error::Closed` once [`RocksDir::release`] ran
    /// or the process is exiting. Hold the returned guard for the whole call.
    pub(super) fn db(&self) -> Result<(Gate, MappedRwLockReadGuard<'_, DB>)> {
        let gate = Gate::enter()?;
        let db =
            RwLockReadGuard::try_map(self.db.read(), Option::as_ref).map_err(|_| Error::Closed)?;
        Ok((gate, db))
    }

    /// [`RocksDir::db`] for a caller on a normal scheduler: while the
    /// database is being reopened or closed, `Error::WouldBlock`.
    pub(super) fn db_now(&self) -> Result<(Gate, MappedRwLockReadGuard<'_, DB>)> {
        let gate = Gate::enter()?;
        let guard = self.db.try_read().ok_or(Error::WouldBlock)?;
        let db = RwLockReadGuard::try_map(guard, Option::as_ref).map_err(|_| Error::Closed)?;
        Ok((gate, db))
    }

    pub(super) fn cf<'a>(&self, db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
        db.cf_handle(name)
            .ok_or_else(|| storage_err(&self.path, format!("missing column family {name}")))
    }

    /// True when no record is stored (cheap: one iterator seek).
    pub fn keys_empty(&self) -> Result<bool> {
        Ok(!self.has_any_record()?)
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (_gate, db) = self.db()?;
        db.get_cf(self.cf(&db, CF_META)?, key)
            .map_err(|e| storage_err(&self.path, e))
    }

    pub fn put_meta(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let (_gate, db) = self.db()?;
        db.put_cf_opt(self.cf(&db, CF_META)?, key, value, &wo)
            .map_err(|e| storage_err(&self.path, e))
    }

    fn has_any_record(&self) -> Result<bool> {
        let (_gate, db) = self.db()?;
        let cf = self.cf(&db, CF_CRDT)?;
        let found = db.iterator_cf(cf, IteratorMode::Start).next().is_some();
        Ok(found)
    }

    /// Point read of a record's bytes. With `cache_only`, RocksDB answers
    /// from the memtables and the block cache alone, and `Error::WouldBlock`
    /// says a disk read (or folding a large record) would be needed: such a
    /// call never blocks, so it may run on a normal BEAM scheduler.
    pub fn get(&self, key: &[u8], cache_only: bool) -> Result<Cached> {
        let mut ro = ReadOptions::default();
        if cache_only {
            ro.set_read_tier(ReadTier::BlockCache);
        }
        let (_gate, db) = if cache_only {
            self.db_now()?
        } else {
            self.db()?
        };
        let cf = self.cf(&db, CF_CRDT)?;
        INLINE_READ.with(|c| c.set((cache_only, false)));
        let res = db.get_pinned_cf_opt(cf, key, &ro);
        let (_, refused_large) = INLINE_READ.with(|c| c.replace((false, false)));
        match res {
            // Copying a large value is O(size) too.
            Ok(Some(v)) if cache_only && v.len() > crate::store::config::INLINE_BYTES => {
                Err(Error::WouldBlock)
            }
            Ok(Some(v)) => Ok(Cached::Found(v.to_vec())),
            Ok(None) => Ok(Cached::Missing),
            Err(_) if refused_large => Err(Error::WouldBlock),
            Err(e) if cache_only && e.kind() == rocksdb::ErrorKind::Incomplete => {
                Err(Error::WouldBlock)
            }
            Err(e) => Err(storage_err(&self.path, e)),
        }
    }

    /// Write `ops` as one batch to the WAL (no fsync: survives a killed
    /// process). Callers may hold a shard lock; nothing here takes one, so
    /// the lock order is always shard, then database.
    pub fn write(&self, ops: &[BatchOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let (_gate, db) = self.db()?;
        self.write_to(&db, ops)
    }

    pub(super) fn write_to(&self, db: &DB, ops: &[BatchOp]) -> Result<()> {
        let (crdt, meta) = (self.cf(db, CF_CRDT)?, self.cf(db, CF_META)?);
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                BatchOp::Delete(k) => batch.delete_cf(crdt, k),
                BatchOp::Merge(k, v) => batch.merge_cf(crdt, k, v),
                BatchOp::PutMeta(k, v) => batch.put_cf(meta, k, v),
                BatchOp::PutMetaKey(k, v) => batch.put_cf(meta, k, v),
                BatchOp::DeleteMetaKey(k) => batch.delete_cf(meta, k),
            }
        }
        db.write_opt(batch, &WriteOptions::default())
            .map_err(|e| storage_err(&self.path, e))
    }

    /// Write the memtables to SST files, so the next open has no
    /// write-ahead log to replay (a clean restart of a large store then
    /// takes milliseconds instead of seconds).
    pub fn flush_memtables(&self) -> Result<()> {
        let (_gate, db) = self.db()?;
        for name in [CF_CRDT, CF_META] {
            db.flush_cf(self.cf(&db, name)?)
                .map_err(|e| storage_err(&self.path, e))?;
        }
        Ok(())
    }

    /// Every metadata entry whose key starts with `prefix`, the prefix
    /// stripped.
    pub fn meta_with_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let (_gate, db) = self.db()?;
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in db.iterator_cf(self.cf(&db, CF_META)?, mode) {
            let (k, v) = item.map_err(|e| storage_err(&self.path, e))?;
            match k.strip_prefix(prefix) {
                Some(rest) => out.push((rest.into(), v)),
                None => break,
            }
        }
        Ok(out)
    }

    pub fn keys(&self) -> Result<Vec<Box<[u8]>>> {
        let (_gate, db) = self.db()?;
        let mut out = Vec::new();
        for item in db.iterator_cf(self.cf(&db, CF_CRDT)?, IteratorMode::Start) {
            let (k, _) = item.map_err(|e| storage_err(&self.path, e))?;
            out.push(k);
        }
        Ok(out)
    }

    pub fn estimate_keys(&self) -> u64 {
        let Ok((_gate, db)) = self.db_now() else {
            return 0;
        };
        self.cf(&db, CF_CRDT)
            .ok()
            .and_then(|cf| {
                db.property_int_value_cf(cf, "rocksdb.estimate-num-keys")
                    .ok()
                    .flatten()
            })
            .unwrap_or(0)
    }

    /// Close RocksDB inside the gate; once the process is exiting, leave it
    /// open (the exit hook has quiesced it; closing would touch destroyed
    /// statics).
    pub(super) fn close_db(&self) {
        let Some(db) = self.db.write().take() else {
            return;
        };
        match Gate::enter() {
            Ok(_gate) => {
                // Wait for background flushes and compactions, then close.
                db.cancel_all_background_work(true);
                drop(db);
            }
            Err(_) => std::mem::forget(db),
        }
    }
}

impl Drop for RocksDir {
    fn drop(&mut self) {
        self.close_db();
    }
}

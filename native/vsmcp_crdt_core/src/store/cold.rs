//! The cold tier: RocksDB (the successor of the replaced DETS tier).
//!
//! Column families: `crdt` (id bytes -> record, with the record-join merge
//! operator) and `meta` (format marker, node id, incarnation, HLC
//! high-water mark). One [`ColdTier`] per directory per OS process:
//! RocksDB refuses a second open of a path this process holds (its LOCK
//! file), so open handles are kept in a process-wide registry and a store
//! that starts on a path whose previous store is still shutting down takes
//! the handle over instead of failing.

pub mod admin;

use super::halt::{self, Gate};
use super::write_behind::Pending;
use crate::error::{Error, Result};
use crate::record::merge_records;
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, IteratorMode, MergeOperands,
    Options, ReadOptions, ReadTier, WriteBatch, WriteOptions, DB,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

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
        if size > super::config::INLINE_BYTES {
            INLINE_READ.with(|c| c.set((true, true)));
            return None;
        }
    }
    merge_records(existing, ops.iter())
}

fn partial_merge(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    merge_records(existing, ops.iter())
}

/// One write of a batch (see [`ColdTier::write`]).
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

/// Prefix of the metadata keys holding delete tombstones (`prefix ++ id`).
pub const TOMB_PREFIX: &[u8] = b"tomb/";

/// Outcome of a point read.
#[derive(Debug)]
pub enum Cached {
    Found(Vec<u8>),
    Missing,
}

/// An open RocksDB directory, shared by the stores of this OS process that
/// use it (normally one; two only during a hand-over).
pub struct ColdTier {
    /// `None` once released by the last store using it.
    db: RwLock<Option<DB>>,
    cache_bytes: usize,
    last_recovery: Mutex<Option<Instant>>,
    /// Pending writes handed over by a closed store and not yet taken by
    /// a successor (oldest first).
    orphans: Mutex<HandedOver>,
    path: PathBuf,
    /// Stores that used this handle; a newcomer closes them (flushing their
    /// pending writes) before it proceeds.
    owners: Mutex<Vec<Weak<dyn Owner>>>,
    _cleanup: DirCleanup,
}

/// Pending writes a predecessor handed over, oldest first.
pub type HandedOver = Vec<(Box<[u8]>, Pending)>;

/// Something that holds unflushed writes for a [`ColdTier`].
pub trait Owner: Send + Sync {
    /// Refuse further operations and give up the pending writes (oldest
    /// first) to the successor, without writing them: a successor is never
    /// blocked by its predecessor's disk.
    fn hand_over(&self) -> HandedOver;
    /// At process exit: the batch operations of every pending write; false
    /// if some could not be collected (a shard stayed locked).
    fn pending_ops_at_exit(&self, ops: &mut Vec<BatchOp>) -> bool;
}

struct DirCleanup(Option<PathBuf>);

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

/// How long [`ColdTier::open`] waits for a closing handle of this process.
const LOCK_RETRY_FOR: Duration = Duration::from_secs(10);
/// RocksDB's message when this process already holds the directory's LOCK.
const HELD_BY_THIS_PROCESS: &str = "lock hold by current process";

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<ColdTier>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Weak<ColdTier>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

fn storage_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{}: {e}", path.display()))
}

impl ColdTier {
    /// Open (or share) the RocksDB at `path`, creating it when missing.
    /// `ephemeral` directories are removed when the last handle goes.
    /// The writes a predecessor on the same path handed over wait in the
    /// tier ([`ColdTier::take_orphans`]) until a successor has opened
    /// completely; the exit hook and the tier's last close write them too.
    pub fn open(path: &Path, ephemeral: bool, cache_bytes: usize) -> Result<Arc<ColdTier>> {
        std::fs::create_dir_all(path).map_err(|e| storage_err(path, e))?;
        let canon = std::fs::canonicalize(path).map_err(|e| storage_err(path, e))?;
        // A handle of this process whose last reference was just dropped is
        // gone from the registry but may still be closing (its RocksDB LOCK
        // not yet released): retry for a while instead of failing.
        let deadline = Instant::now() + LOCK_RETRY_FOR;
        loop {
            let mut reg = registry().lock();
            if let Some(existing) = reg.get(&canon).and_then(Weak::upgrade) {
                let owners: Vec<_> = existing.owners.lock().clone();
                // Hand over without the registry lock: a previous owner may
                // be inside its own close, waiting for that lock to release
                // the handle (which our reference now keeps open). An owner
                // stays listed until its writes are orphans, so the exit
                // hook finds them in one place or the other.
                drop(reg);
                for o in &owners {
                    if let Some(owner) = o.upgrade() {
                        let handed = owner.hand_over();
                        existing.orphans.lock().extend(handed);
                    }
                    existing.owners.lock().retain(|w| !w.ptr_eq(o));
                }
                return Ok(existing);
            }
            let opened = {
                let _gate = Gate::enter()?;
                Self::open_fresh(&canon, ephemeral, cache_bytes)
            };
            match opened {
                Ok(tier) => {
                    halt::register_exit_hook();
                    let tier = Arc::new(tier);
                    reg.retain(|_, w| w.strong_count() > 0);
                    reg.insert(canon, Arc::downgrade(&tier));
                    return Ok(tier);
                }
                Err(Error::Storage(msg))
                    if msg.contains(HELD_BY_THIS_PROCESS) && Instant::now() < deadline =>
                {
                    drop(reg);
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a store of this OS process has the directory `path` open.
    pub fn in_use(path: &Path) -> bool {
        let Ok(canon) = std::fs::canonicalize(path) else {
            return false;
        };
        registry()
            .lock()
            .get(&canon)
            .is_some_and(|w| w.strong_count() > 0)
    }

    fn open_fresh(path: &Path, ephemeral: bool, cache_bytes: usize) -> Result<ColdTier> {
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
        let db = Self::open_db(path, cache_bytes)?;
        let tier = ColdTier {
            db: RwLock::new(Some(db)),
            cache_bytes,
            last_recovery: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            owners: Mutex::new(Vec::new()),
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

    fn open_db(path: &Path, cache_bytes: usize) -> Result<DB> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_keep_log_file_num(2);
        db_opts.set_max_total_wal_size(64 << 20);
        // The last reader of an obsolete memtable would otherwise free it
        // (tens of MB) in its own thread: a normal scheduler, in a read.
        db_opts.set_avoid_unnecessary_blocking_io(true);
        let mut crdt_opts = Options::default();
        crdt_opts.set_merge_operator("vsmcp_record_join", full_merge, partial_merge);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(cache_bytes));
        table.set_bloom_filter(10.0, false);
        crdt_opts.set_block_based_table_factory(&table);
        crdt_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_CRDT, crdt_opts),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
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
    /// [`ColdTier::recover_after_write_error`]).
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
            if let Ok(db) = Self::open_db(&self.path, self.cache_bytes) {
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

    /// Give the writes handed over by predecessors (see [`ColdTier::open`])
    /// to `adopt`, holding them until it returns (the exit hook waits, so it
    /// finds each write either here or with its adopter).
    pub fn adopt_orphans(&self, adopt: impl FnOnce(HandedOver)) {
        let mut orphans = self.orphans.lock();
        adopt(std::mem::take(&mut *orphans));
    }

    /// Forget the orphaned writes without writing them (a simulated kill,
    /// `Store::crash`).
    #[cfg(feature = "fault-injection")]
    pub(super) fn drop_orphans(&self) {
        self.orphans.lock().clear();
    }

    /// The batch operations of the orphaned writes.
    fn orphan_ops(&self, ops: &mut Vec<BatchOp>) {
        for (k, p) in self.orphans.lock().iter() {
            p.write_to(k, ops);
        }
    }

    pub fn add_owner(&self, o: Weak<dyn Owner>) {
        self.owners.lock().push(o);
    }

    /// The open database, or `Error::Closed` once [`ColdTier::release`] ran
    /// or the process is exiting. Hold the returned guard for the whole call.
    fn db(&self) -> Result<(Gate, MappedRwLockReadGuard<'_, DB>)> {
        let gate = Gate::enter()?;
        let db =
            RwLockReadGuard::try_map(self.db.read(), Option::as_ref).map_err(|_| Error::Closed)?;
        Ok((gate, db))
    }

    /// [`ColdTier::db`] for a caller on a normal scheduler: while the
    /// database is being reopened or closed, `Error::WouldBlock`.
    fn db_now(&self) -> Result<(Gate, MappedRwLockReadGuard<'_, DB>)> {
        let gate = Gate::enter()?;
        let guard = self.db.try_read().ok_or(Error::WouldBlock)?;
        let db = RwLockReadGuard::try_map(guard, Option::as_ref).map_err(|_| Error::Closed)?;
        Ok((gate, db))
    }

    fn cf<'a>(&self, db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
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
            Ok(Some(v)) if cache_only && v.len() > super::config::INLINE_BYTES => {
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

    fn write_to(&self, db: &DB, ops: &[BatchOp]) -> Result<()> {
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

    /// Close the database now (releasing its files and LOCK) when no other
    /// store of this process shares it. Done under the registry lock, so a
    /// concurrent open either shares the handle before this runs (and it
    /// stays open) or opens the directory afresh after.
    pub fn release(self: &Arc<Self>) {
        // Shared (e.g. a newcomer taking the handle over calls this through
        // `Owner::hand_over` while it holds the registry lock): keep it open.
        if Arc::strong_count(self) != 1 {
            return;
        }
        let reg = registry().lock();
        // Re-checked under the lock: opens upgrade the registry's weak
        // reference only while holding it.
        if Arc::strong_count(self) != 1 {
            return;
        }
        let mut reg = reg;
        reg.remove(&self.path);
        drop(reg);
        self.close_db();
        if let Some(p) = &self._cleanup.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }

    /// Close RocksDB inside the gate; once the process is exiting, leave it
    /// open (the exit hook has quiesced it; closing would touch destroyed
    /// statics).
    fn close_db(&self) {
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

impl Drop for ColdTier {
    fn drop(&mut self) {
        // Writes handed over to a successor that never opened: last chance.
        let mut ops = Vec::new();
        self.orphan_ops(&mut ops);
        if !ops.is_empty() {
            if let Ok((_gate, db)) = self.db() {
                if let Err(e) = self.write_to(&db, &ops) {
                    eprintln!(
                        "vsmcp_crdt: {}: writes of {} ids handed over by a closed store were lost: {e}",
                        self.path.display(),
                        self.orphans.lock().len()
                    );
                }
            }
        }
        self.close_db();
    }
}

/// The exit hook's work (see [`halt`]): write what every store of every
/// open directory has pending, then stop RocksDB's background threads.
/// Runs with the gate closed and drained, so it calls RocksDB directly.
pub(super) fn write_all_pending_at_exit() {
    let Some(reg) = registry().try_lock_for(Duration::from_secs(5)) else {
        eprintln!("vsmcp_crdt: exit: store registry busy; pending writes not written");
        return;
    };
    let tiers: Vec<Arc<ColdTier>> = reg.values().filter_map(Weak::upgrade).collect();
    drop(reg);
    for tier in tiers {
        let mut ops = Vec::new();
        tier.orphan_ops(&mut ops);
        match tier.owners.try_lock_for(Duration::from_secs(1)) {
            Some(o) => {
                let owners: Vec<_> = o.iter().filter_map(Weak::upgrade).collect();
                drop(o);
                for owner in owners {
                    if !owner.pending_ops_at_exit(&mut ops) {
                        eprintln!(
                            "vsmcp_crdt: exit: {}: a busy shard's pending writes were skipped",
                            tier.path.display()
                        );
                    }
                }
            }
            None => eprintln!(
                "vsmcp_crdt: exit: {}: stores busy; their pending writes were skipped",
                tier.path.display()
            ),
        }
        let Some(guard) = tier.db.try_read_for(Duration::from_secs(1)) else {
            eprintln!(
                "vsmcp_crdt: exit: {}: database busy; not written",
                tier.path.display()
            );
            std::mem::forget(tier);
            continue;
        };
        if let Some(db) = guard.as_ref() {
            // An ephemeral store's data dies with the process: not written,
            // and its directory removed once RocksDB is quiet.
            if tier._cleanup.0.is_none() {
                if let Err(e) = tier.write_to(db, &ops) {
                    eprintln!(
                        "vsmcp_crdt: exit: {}: pending writes lost: {e}",
                        tier.path.display()
                    );
                }
            }
            db.cancel_all_background_work(true);
            if let Some(p) = &tier._cleanup.0 {
                let _ = std::fs::remove_dir_all(p);
            }
        }
        // The handle is never closed: leak the tier and its database.
        drop(guard);
        std::mem::forget(tier);
    }
}

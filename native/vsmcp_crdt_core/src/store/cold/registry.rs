//! The process registry of open directories, the hand-over between the
//! stores of one directory, and the exit sweep. RocksDB refuses a second
//! open of a path this process holds (its LOCK file), so open handles are
//! kept here per path; a store that starts on a path whose previous store
//! is still shutting down takes the handle over (with its unwritten
//! writes) instead of failing; and at process exit [`halt`] calls
//! `write_all_pending_at_exit` to write what every store has pending.

use super::rocks::{storage_err, RocksDir, RocksMemory};
use crate::error::{Error, Result};
use crate::store::halt::{self, Gate};
use crate::store::keys::BatchOp;
use crate::store::write_behind::Pending;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// An open directory, shared by the stores of this OS process that use it
/// (normally one; two only during a hand-over): its [`RocksDir`] (reached
/// through `Deref`) and the stores' hand-over state.
pub struct ColdTier {
    rocks: RocksDir,
    /// Pending writes handed over by a closed store and not yet taken by
    /// a successor (oldest first).
    orphans: Mutex<HandedOver>,
    /// Stores that used this handle; a newcomer closes them (flushing their
    /// pending writes) before it proceeds.
    owners: Mutex<Vec<Weak<dyn Owner>>>,
}

impl std::ops::Deref for ColdTier {
    type Target = RocksDir;
    fn deref(&self) -> &RocksDir {
        &self.rocks
    }
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

/// How long [`ColdTier::open`] waits for a closing handle of this process.
const LOCK_RETRY_FOR: Duration = Duration::from_secs(10);
/// RocksDB's message when this process already holds the directory's LOCK.
const HELD_BY_THIS_PROCESS: &str = "lock hold by current process";

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<ColdTier>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Weak<ColdTier>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

impl ColdTier {
    /// Open (or share) the RocksDB at `path`, creating it when missing.
    /// `ephemeral` directories are removed when the last handle goes.
    /// The writes a predecessor on the same path handed over wait in the
    /// tier ([`ColdTier::take_orphans`]) until a successor has opened
    /// completely; the exit hook and the tier's last close write them too.
    pub fn open(path: &Path, ephemeral: bool, memory: RocksMemory) -> Result<Arc<ColdTier>> {
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
                RocksDir::open_fresh(&canon, ephemeral, memory)
            };
            match opened {
                Ok(rocks) => {
                    halt::register_exit_hook(write_all_pending_at_exit);
                    let tier = Arc::new(ColdTier {
                        rocks,
                        orphans: Mutex::new(Vec::new()),
                        owners: Mutex::new(Vec::new()),
                    });
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
    pub(in crate::store) fn drop_orphans(&self) {
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
fn write_all_pending_at_exit() {
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

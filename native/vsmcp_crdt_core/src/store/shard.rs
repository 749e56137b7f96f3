//! The shard locks: which shard holds an id, its `state` lock (taken by a
//! bounded spin on a normal scheduler, never parked) and its `disk` lock.

use super::config::{Access, Durability};
use super::handle::{Inner, Shard};
use crate::error::{Error, Result};
use parking_lot::{Mutex, MutexGuard};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) type StateGuard<'a> = MutexGuard<'a, Shard>;

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
    pub(super) fn shard_index(&self, id: &[u8]) -> usize {
        (self.hasher.hash_one(id) as usize) & (self.shards.len() - 1)
    }

    /// The state lock of `id`'s shard. A normal scheduler never waits for
    /// it: the holder may be a thread the OS has descheduled (on a busy
    /// machine, for a whole 4 ms tick), so after a short spin the call
    /// answers `Error::WouldBlock` and is repeated on a dirty scheduler.
    pub(super) fn lock_state(&self, id: &[u8], access: Access) -> Result<StateGuard<'_>> {
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
    pub(super) fn lock_state_unchecked(&self, id: &[u8]) -> StateGuard<'_> {
        self.shards[self.shard_index(id)].state.lock()
    }

    /// The disk lock of `id`'s shard for a call that may read the disk
    /// (dirty schedulers only; normal schedulers never take it).
    pub(super) fn lock_disk_for_read(
        &self,
        id: &[u8],
        access: Access,
    ) -> Option<MutexGuard<'_, ()>> {
        (access == Access::MayBlock).then(|| self.shards[self.shard_index(id)].disk.lock())
    }

    /// As [`Inner::lock_disk_for_read`], for a write: in strict durability
    /// every write needs the WAL, so a normal scheduler gets WouldBlock.
    pub(super) fn lock_disk_for_write(
        &self,
        id: &[u8],
        access: Access,
    ) -> Result<Option<MutexGuard<'_, ()>>> {
        if access == Access::MemoryOnly && self.cfg.durability == Durability::Strict {
            return Err(Error::WouldBlock);
        }
        Ok(self.lock_disk_for_read(id, access))
    }
}

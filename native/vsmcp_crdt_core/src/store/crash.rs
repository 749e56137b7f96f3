//! Test-only hooks (`fault-injection`) for the deterministic simulator
//! (`tests/sim.rs`): a simulated kill of the process, and replica ids
//! derived from a seed.
//!
//! **Crash.** [`Store::crash`] does what a SIGKILL does to a store: the
//! writes still pending in the write-behind groups (relaxed durability) are
//! lost, nothing is flushed, and RocksDB is closed without writing its
//! memtables; what already reached its write-ahead log survives, as it
//! survives a killed process (the log is replayed at the next open). The
//! handle then answers `Error::Closed`, and a store can open the same
//! directory at once: it is a new incarnation, as after a real kill.

use super::handle::Store;
use std::sync::atomic::Ordering;

/// The 16-byte directory id a store derives from `seed` (splitmix64).
pub(super) fn seeded_directory_id(seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut id = next().to_be_bytes().to_vec();
    id.extend_from_slice(&next().to_be_bytes());
    id
}

impl Store {
    /// Simulate the process being killed (see the module docs): pending
    /// relaxed writes are dropped, nothing is flushed, RocksDB is closed.
    /// Idempotent; a closed store is left as it is.
    pub fn crash(&self) {
        let inner = &self.0;
        let _closing = inner.close_lock.lock();
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        inner.stop_flusher();
        // Every disk lock: no strict write or cold load is halfway.
        let _disks: Vec<_> = inner.shards.iter().map(|s| s.disk.lock()).collect();
        for shard in inner.shards.iter() {
            let lost = shard.state.lock().pending.drain();
            drop(lost);
        }
        // Writes a predecessor handed over die with the process too.
        inner.cold.drop_orphans();
        inner.cold.release();
    }
}

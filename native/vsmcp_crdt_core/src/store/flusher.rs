//! The flush thread and the end of a store, beside the write-behind
//! groups they write: group commit, recovery after a failed write, close,
//! the hand-over to a successor and the writes collected at exit.

use super::cold;
use super::cold::Owner;
use super::halt;
use super::handle::{Inner, Store};
use super::keys::{BatchOp, HLC_KEY, NODE_KEY};
use super::write_behind::write_group;
use crate::error::{Error, Result};
use crate::hlc::Timestamp;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

impl Owner for Inner {
    fn hand_over(&self) -> cold::HandedOver {
        let _closing = self.close_lock.lock();
        self.closed.store(true, Ordering::Release);
        self.stop_flusher();
        let _disks: Vec<_> = self.shards.iter().map(|s| s.disk.lock()).collect();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.state.lock().pending.drain());
        }
        out
    }

    fn pending_ops_at_exit(&self, ops: &mut Vec<BatchOp>) -> bool {
        let mut all = true;
        for shard in self.shards.iter() {
            match shard.state.try_lock_for(Duration::from_millis(500)) {
                Some(sh) => sh.pending.ops(ops),
                None => all = false,
            }
        }
        self.hlc_to_batch(ops);
        all
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Unreferenced (garbage-collected) handle: a short retry only.
        let _ = self.close(Duration::from_millis(100));
    }
}

pub(super) fn spawn_flusher(inner: &Arc<Inner>) -> Result<JoinHandle<()>> {
    let weak = Arc::downgrade(inner);
    let stop = inner.stop.clone();
    let interval = Duration::from_millis(inner.cfg.flush_interval_ms.max(1));
    std::thread::Builder::new()
        .name("vsmcp-crdt-flush".into())
        .spawn(move || loop {
            {
                let (lock, cv) = &*stop;
                let mut stopped = lock.lock();
                if !*stopped {
                    cv.wait_for(&mut stopped, interval);
                }
                if *stopped {
                    break;
                }
            }
            let Some(inner) = weak.upgrade() else { break };
            let _ = inner.flush();
            inner.telemetry.sample();
        })
        .map_err(|e| Error::Storage(format!("cannot spawn the flush thread: {e}")))
}

impl Store {
    /// Write pending deltas now (group commit).
    pub fn flush(&self) -> Result<()> {
        self.0.flush()
    }

    /// Write what is pending, retrying for up to `deadline`, then refuse
    /// further calls and release RocksDB. `Err(Error::Unflushed)` when
    /// acknowledged writes could not be written (the count of ids and the
    /// last error). Idempotent: a second close answers `Ok`.
    pub fn close(&self, deadline: Duration) -> Result<()> {
        self.0.close(deadline)
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// The error that currently makes writes fail, if any.
    pub fn write_error(&self) -> Option<String> {
        self.0.write_error.lock().clone()
    }

    /// Fault injection for tests: make every durable write fail as a full
    /// or read-only disk would.
    #[cfg(feature = "fault-injection")]
    pub fn set_fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::Release);
        if !on {
            let _ = self.0.flush();
        }
    }
}

impl Inner {
    /// Add the HLC high-water mark to `ops` if it moved; true if it did.
    pub(super) fn hlc_to_batch(&self, ops: &mut Vec<BatchOp>) -> bool {
        let last = self.clock.lock().last();
        let mut persisted = self.persisted_hlc.lock();
        if last <= *persisted {
            return false;
        }
        let mut v = last.wall_ms.to_be_bytes().to_vec();
        v.extend_from_slice(&last.counter.to_be_bytes());
        ops.push(BatchOp::PutMeta(HLC_KEY, v));
        *persisted = last;
        true
    }

    pub(super) fn flush(&self) -> Result<()> {
        let _one_at_a_time = self.flush_lock.lock();
        // The disk locks of every shard (in order), so that no cold load
        // reads the disk while writes move from the overlay to RocksDB.
        let _disks: Vec<_> = self.shards.iter().map(|s| s.disk.lock()).collect();
        // Taken under each shard lock in O(1); encoded without it.
        let groups: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.state.lock().pending.begin_flush())
            .collect();
        let mut ops = Vec::new();
        for g in groups.iter().flatten() {
            write_group(g, &mut ops);
        }
        let hlc_changed = self.hlc_to_batch(&mut ops);
        if ops.is_empty() {
            // Groups with nothing to write (a failed mutation's empty
            // entry) are done too.
            drop(groups);
            for shard in self.shards.iter() {
                shard.state.lock().pending.end_flush(true);
            }
            return self.check_writable_after_idle();
        }
        let res = self.injected_fault().and_then(|()| self.cold.write(&ops));
        let ok = res.is_ok();
        match &res {
            Ok(()) => {
                *self.write_error.lock() = None;
                self.has_write_error.store(false, Ordering::Release);
            }
            Err(e) => {
                self.record_write_error(e);
                if hlc_changed {
                    *self.persisted_hlc.lock() = Timestamp::ZERO;
                }
            }
        }
        // On failure `end_flush` takes the groups back (unshared); on
        // success they are freed after it, without the lock.
        let mut groups = Some(groups);
        if !ok {
            groups = None;
        }
        for shard in self.shards.iter() {
            shard.state.lock().pending.end_flush(ok);
        }
        drop(groups);
        drop(ops);
        if !ok {
            // The batch stays pending; once RocksDB accepts writes again
            // the next flush writes it.
            self.cold.recover_after_write_error();
        }
        res
    }

    pub(super) fn record_write_error(&self, e: &Error) {
        if matches!(e, Error::Storage(_)) {
            *self.write_error.lock() = Some(e.to_string());
            self.has_write_error.store(true, Ordering::Release);
        }
    }

    /// Nothing to write: a write error recorded earlier (e.g. a strict
    /// write or a flush on a full disk) is cleared once a probe succeeds,
    /// so writes resume when space is freed.
    fn check_writable_after_idle(&self) -> Result<()> {
        if !self.has_write_error.load(Ordering::Acquire) {
            return Ok(());
        }
        self.cold.recover_after_write_error();
        let probe = self
            .injected_fault()
            .and_then(|()| self.cold.put_meta(NODE_KEY, &self.cfg.node_id, false));
        if probe.is_ok() {
            *self.write_error.lock() = None;
            self.has_write_error.store(false, Ordering::Release);
        }
        probe
    }

    /// Stop the flush thread and wait for callers inside shard locks.
    pub(super) fn stop_flusher(&self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock() = true;
            cv.notify_all();
        }
        if let Some(h) = self.flusher.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        for shard in self.shards.iter() {
            drop(shard.state.lock());
        }
    }

    pub(super) fn close(&self, deadline: Duration) -> Result<()> {
        let _closing = self.close_lock.lock();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_flusher();
        let until = Instant::now() + deadline;
        let mut res = self.flush();
        while res.is_err() && Instant::now() < until && !halt::halting() {
            std::thread::sleep(Duration::from_millis(20));
            res = self.flush();
        }
        let res = match res {
            Ok(()) => {
                if !self.fail_writes.load(Ordering::Acquire) {
                    let _ = self.cold.flush_memtables();
                }
                Ok(())
            }
            Err(e) => {
                let ids = self
                    .shards
                    .iter()
                    .map(|s| s.state.lock().pending.len())
                    .sum();
                Err(Error::Unflushed {
                    ids,
                    reason: e.to_string(),
                })
            }
        };
        // Last user of the directory in this process: close RocksDB now, so
        // its files and LOCK are free the moment `close` returns.
        self.cold.release();
        res
    }
}

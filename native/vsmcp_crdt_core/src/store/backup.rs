//! Online backup: a consistent copy of a running store's directory.
//!
//! The pending relaxed writes are flushed first, so every write
//! acknowledged before the call is in the copy; then RocksDB makes a
//! checkpoint (hard links to its immutable SST files, the memtables flushed
//! into new ones), which costs O(files), not O(data), on one filesystem.
//! Writes go on meanwhile; those acknowledged after the call began may or
//! may not be in the copy.
//!
//! **Identity.** The copy forgets the directory's random replica id, so a
//! store opened on it makes a fresh one at its first open: it is a new
//! replica that starts with the original's state (values, metadata, delete
//! tombstones, the context of creates, the HLC high-water mark). Two live
//! stores with one directory id would be one replica to sync, and their
//! dots would collide. Restoring a lost node is therefore "a new node with
//! its data"; its peers wait for the lost one until it is forgotten
//! (`forget_replica`).

use super::handle::Store;
use crate::error::{Error, Result};
use std::path::Path;

impl Store {
    /// Copy the store to `dest`, a directory that must not exist
    /// (`Error::AlreadyExists`); its parent must be writable
    /// (`Error::Storage` otherwise). Runs on a dirty scheduler: it flushes
    /// and writes files. A store opened on `dest` is a new replica holding
    /// this store's data (see the module docs).
    pub fn backup(&self, dest: &Path) -> Result<()> {
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(Error::AlreadyExists);
        }
        // Acknowledged relaxed writes are in the copy, or it fails.
        self.flush()?;
        self.0.cold.checkpoint(dest)
    }
}

//! The store's cluster membership, persisted: the replica directories that
//! have taken part in sync with this one. Collection of tombstones and
//! remove tokens waits for every member (see `sync::engine`, "Membership
//! and stability"), so membership must outlive an engine, a store and a
//! node restart: a member that is down, refused or not heard since a
//! restart still holds collection back. A member leaves only by
//! [`Store::remove_member`] (the engine's expiry, or `forget_replica`),
//! which records the directory's cut so that what it sends after coming
//! back is judged by rule (`Store::merge_remote`).
//!
//! Persisted under `MEMBER_PREFIX ++ directory` in the meta column family
//! (value: the wall-clock ms it joined, u64 big end).

use super::handle::Store;
use super::keys::{BatchOp, CUT_PREFIX};
use crate::error::{Error, Result};
use crate::record::DIRECTORY_BYTES;

pub use super::keys::{FORGOTTEN_PREFIX, MEMBER_PREFIX};

/// Most members a store keeps: a hello from yet another directory is
/// refused (a bound on what forged hellos can make it hold).
pub const MAX_MEMBERS: usize = 256;

impl Store {
    /// The member directories, with the wall-clock ms each joined.
    pub fn members(&self) -> Vec<(Box<[u8]>, u64)> {
        let m = self.0.members.lock();
        let mut v: Vec<(Box<[u8]>, u64)> = m.iter().map(|(d, t)| (d.clone(), *t)).collect();
        v.sort_unstable();
        v
    }

    /// Whether `dir` is a member.
    pub fn is_member(&self, dir: &[u8]) -> bool {
        self.0.members.lock().contains_key(dir)
    }

    /// Make `dir` a member (persisted before it counts); `Ok(false)` if it
    /// was one already. `Error::InvalidArgument` for a directory id of the
    /// wrong length, our own, a forgotten one, or beyond [`MAX_MEMBERS`]. A write, so a
    /// caller on a BEAM scheduler must be on a dirty one.
    pub fn add_member(&self, dir: &[u8], joined_ms: u64) -> Result<bool> {
        let inner = &self.0;
        if dir.len() != DIRECTORY_BYTES || dir == &inner.replica.as_bytes()[..DIRECTORY_BYTES] {
            return Err(Error::InvalidArgument("not a peer directory id"));
        }
        let mut members = inner.members.lock();
        if members.contains_key(dir) {
            return Ok(false);
        }
        // Checked on disk, not only by the engine: a forgotten directory
        // must never be a member again (its cut may be the end of time).
        if inner
            .cold
            .get_meta(&[FORGOTTEN_PREFIX, dir].concat())?
            .is_some()
        {
            return Err(Error::InvalidArgument("forgotten replica"));
        }
        if members.len() >= MAX_MEMBERS {
            return Err(Error::InvalidArgument("too many members"));
        }
        let key: Box<[u8]> = [MEMBER_PREFIX, dir].concat().into();
        inner.injected_fault()?;
        inner
            .cold
            .write(&[BatchOp::PutMetaKey(key, joined_ms.to_be_bytes().to_vec())])?;
        members.insert(dir.into(), joined_ms);
        Ok(true)
    }

    /// Remove `dir` from the membership, raising its cut to `cut` first
    /// (both persisted, in one batch): a record it created with a stamp
    /// below the cut and not held here is treated as deleted when it
    /// arrives (`merge_remote`). A no-op for a directory that is not a
    /// member, except for the cut.
    pub fn remove_member(&self, dir: &[u8], cut: u64) -> Result<()> {
        self.remove_member_as(dir, cut, false)
    }

    /// [`Store::remove_member`], and record `dir` as forgotten (persisted
    /// with the removal): see [`Store::forgotten`].
    pub fn forget_member(&self, dir: &[u8], cut: u64) -> Result<()> {
        self.remove_member_as(dir, cut, true)
    }

    /// The directories forgotten with [`Store::forget_member`].
    pub fn forgotten(&self) -> Result<Vec<Box<[u8]>>> {
        Ok(self
            .0
            .cold
            .meta_with_prefix(FORGOTTEN_PREFIX)?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    fn remove_member_as(&self, dir: &[u8], cut: u64, forget: bool) -> Result<()> {
        let inner = &self.0;
        let mut members = inner.members.lock();
        let mut cuts = inner.member_cuts.lock();
        let mut ops = Vec::new();
        let raise = cut > 0 && cuts.get(dir).is_none_or(|c| *c < cut);
        if raise {
            let key: Box<[u8]> = [CUT_PREFIX, dir].concat().into();
            ops.push(BatchOp::PutMetaKey(key, cut.to_be_bytes().to_vec()));
        }
        if members.contains_key(dir) {
            ops.push(BatchOp::DeleteMetaKey([MEMBER_PREFIX, dir].concat().into()));
        }
        if forget {
            let key: Box<[u8]> = [FORGOTTEN_PREFIX, dir].concat().into();
            ops.push(BatchOp::PutMetaKey(key, Vec::new()));
        }
        if ops.is_empty() {
            return Ok(());
        }
        inner.injected_fault()?;
        inner.cold.write(&ops)?;
        if raise {
            cuts.insert(dir.into(), cut);
        }
        members.remove(dir);
        Ok(())
    }

    /// The collection cut of a directory (0: none): every record it
    /// created with a stamp below it is here or was deleted here.
    pub fn member_cut(&self, dir: &[u8]) -> u64 {
        self.0.member_cuts.lock().get(dir).copied().unwrap_or(0)
    }
}

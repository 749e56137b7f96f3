//! Listing a large store page by page.
//!
//! The ids of a store are the record keys in RocksDB with the pending
//! writes laid over them (a pending delta adds its id, a pending delete
//! without a later delta removes it; in-memory items not yet flushed are
//! pending). A page is the first `limit` ids greater than a cursor, in
//! byte order of their canonical encoding, so a listing that passes each
//! page's last id as the next cursor yields every id at most once, in a
//! stable order, whatever is written meanwhile: an id present for the whole
//! listing is listed exactly once; one created or deleted during it may or
//! may not be.
//!
//! Cost per page: O(pending writes) to snapshot the overlay (each shard
//! under its lock, briefly) plus one RocksDB range scan of `limit` keys
//! (values are not copied, the block cache is not filled). Dirty
//! schedulers only.

use super::handle::Store;
use crate::error::Result;
use crate::record::Record;
use std::collections::BTreeMap;

/// One page of ids and the cursor of the next (`None`: the listing is
/// complete).
pub type IdsPage = (Vec<Box<[u8]>>, Option<Box<[u8]>>);

impl Store {
    /// The first `limit` (at least 1) ids greater than `after` (from the
    /// first id when `None`), in byte order, and the cursor of the next
    /// page. See the module docs for what concurrent writes do.
    pub fn ids_page(&self, after: Option<&[u8]>, limit: usize) -> Result<IdsPage> {
        let limit = limit.max(1);
        let overlay = self.pending_overlay(after);
        let on_disk = self
            .0
            .cold
            .keys_after(after, limit, |k| overlay.get(k) == Some(&false))?;
        // The first `limit` ids are among the first `limit` live disk keys
        // and the pending adds.
        let mut ids: Vec<Box<[u8]>> = on_disk;
        ids.extend(
            overlay
                .into_iter()
                .filter_map(|(k, present)| present.then_some(k)),
        );
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);
        let next = (ids.len() == limit).then(|| ids[limit - 1].clone());
        Ok((ids, next))
    }

    /// A page of records for a scan of the whole store (the first build
    /// of the sync digest): `f` gets each id greater than `after` whose
    /// current record is the one on disk, decoded, for up to `limit` (at
    /// least 1) records on disk; the page also names the ids of that range
    /// whose current value is a pending write (at most `limit`; read those
    /// through the store), and the cursor of the next page (`None`:
    /// complete).
    ///
    /// Cost: O(pending writes) for the overlay, then one range scan of
    /// `limit` records decoded (values copied, the block cache not filled):
    /// no tier is touched, so a scan neither promotes nor evicts anything
    /// (the ids it names as pending are loaded when read through the
    /// store).
    /// A record that does not decode is named as pending, so the store's
    /// own read reports it. An id written after its record was read is a
    /// change the caller is told of anyway (the store's change feed), as
    /// for [`Store::ids_page`]. Dirty schedulers only.
    pub fn records_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        mut f: impl FnMut(&[u8], &Record),
    ) -> Result<RecordsPage> {
        let limit = limit.max(1);
        let overlay = self.pending_overlay(after);
        // At most `limit` pending ids per page: the page ends at the
        // limit-th one at the latest.
        let until = overlay.keys().nth(limit - 1).cloned();
        let mut pending = Vec::new();
        let last = self
            .0
            .cold
            .records_after(after, until.as_deref(), limit, |k, v| {
                if overlay.contains_key(k) {
                    return;
                }
                match Record::decode(v) {
                    Ok(r) => f(k, &r),
                    Err(_) => pending.push(Box::from(k)),
                }
            })?;
        let next = last.or(until);
        pending.extend(
            overlay
                .into_iter()
                .filter(|(k, present)| *present && next.as_ref().is_none_or(|n| k <= n))
                .map(|(k, _)| k),
        );
        Ok(RecordsPage { pending, next })
    }

    /// The pending writes of ids greater than `after`: `true` for a write
    /// that leaves the id present, `false` for a delete. Read before the
    /// disk: a write that a flush moves to RocksDB meanwhile is found on
    /// disk then, so no id falls between the two reads.
    fn pending_overlay(&self, after: Option<&[u8]>) -> BTreeMap<Box<[u8]>, bool> {
        let beyond = |k: &[u8]| after.is_none_or(|a| k > a);
        let mut overlay = BTreeMap::new();
        for shard in self.0.shards.iter() {
            let sh = shard.state.lock();
            let p = &sh.pending;
            for (k, p) in p.inflight.iter().chain(p.dirty.iter()) {
                if !beyond(k) {
                    continue;
                }
                if p.delta.is_some() {
                    overlay.insert(k.clone(), true);
                } else if p.reset {
                    overlay.insert(k.clone(), false);
                }
            }
        }
        overlay
    }
}

/// A page of [`Store::records_page`].
#[derive(Debug, Default)]
pub struct RecordsPage {
    /// Ids in the page's range whose current value is a pending write (or
    /// whose record did not decode): read them through the store.
    pub pending: Vec<Box<[u8]>>,
    /// The cursor of the next page; `None` when the scan is complete.
    pub next: Option<Box<[u8]>>,
}

impl Store {
    /// Every id: the ids on disk with the writes still pending laid over
    /// them. Tries to flush first, but answers even when the disk refuses
    /// writes (reads keep working on a full disk).
    pub fn ids(&self) -> Result<Vec<Box<[u8]>>> {
        let _ = self.flush();
        let mut ids: std::collections::BTreeSet<Box<[u8]>> =
            self.0.cold.keys()?.into_iter().collect();
        for shard in self.0.shards.iter() {
            let sh = shard.state.lock();
            let p = &sh.pending;
            for (k, p) in p.inflight.iter().chain(p.dirty.iter()) {
                if p.delta.is_some() {
                    ids.insert(k.clone());
                } else if p.reset {
                    ids.remove(k);
                }
            }
        }
        Ok(ids.into_iter().collect())
    }
}

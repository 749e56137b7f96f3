//! What a running store reports about itself (`Store::info`), in the
//! spirit of Redis `INFO`: items per type and tier, memory per tier,
//! RocksDB's disk, memory and compaction state, operation counters and
//! rates, durability lag and the clock.
//!
//! **Cost.** Operation counters are striped per thread (one relaxed atomic
//! add per call on a cache line no other scheduler writes), so counting
//! never contends. `Store::info` is O(items in memory + pending writes),
//! each shard under its lock for one pass, plus at most
//! `COLD_SAMPLE` records read from disk: dirty schedulers only.
//!
//! **Exact and estimated.** Hot and warm counts are exact. The cold tier
//! (out of memory: on disk, or pending for a flush) is counted exactly,
//! per type, when it holds at most
//! `COLD_EXACT_MAX` records; above that, a sample of `COLD_SAMPLE` records
//! read from random points of the key range gives the share of each type
//! among the ids not in memory, applied to RocksDB's key estimate (which
//! counts unmerged updates too, so it over-counts until compaction).
//! `ColdCensus::exact` says which.

use super::handle::Store;
use super::tiers::Body;
use crate::crdt::{Crdt, Kind};
use crate::error::Result;
use crate::hlc::{now_ms, Timestamp};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub use super::cold::admin::DiskProperties;
pub use super::telemetry::Ops;

/// The cold tier is counted record by record up to this many records.
const COLD_EXACT_MAX: u64 = 10_000;
/// Records sampled to estimate a larger cold tier...
const COLD_SAMPLE: usize = 1024;
/// ...in this many runs of consecutive keys from random points.
const COLD_SAMPLE_RUNS: usize = 16;
/// An OR-Set above this estimated size has its heap bytes (O(elements))
/// counted with the shard lock taken for it alone.
const HEAP_BYTES_INLINE: usize = 4 << 10;

/// Counts per CRDT type, in the order of [`Kind::ALL`].
pub type ByKind = [u64; 5];

fn kind_index(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// Items of an in-memory tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierCensus {
    pub count: u64,
    pub by_kind: ByKind,
    /// Hot: approximate heap bytes of the decoded states
    /// (`Crdt::heap_bytes`); warm: bytes of the encoded states.
    pub bytes: u64,
}

/// Items on disk only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColdCensus {
    pub count: u64,
    pub by_kind: ByKind,
    /// Counted record by record (else estimated, see the module docs).
    pub exact: bool,
    /// Records read to count or estimate.
    pub sampled: u64,
}

/// Writes acknowledged but not yet in RocksDB (relaxed durability).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// Ids with pending writes.
    pub ids: u64,
    /// Estimated encoded bytes of their pending deltas.
    pub bytes: u64,
    /// Age of the oldest pending write (`None`: nothing pending).
    pub oldest_ms: Option<u64>,
}

/// Everything [`Store::info`] reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    pub uptime_ms: u64,
    pub hot: TierCensus,
    pub warm: TierCensus,
    pub cold: ColdCensus,
    pub disk: DiskProperties,
    pub lag: Lag,
    pub ops: Ops,
    /// The last HLC timestamp issued.
    pub hlc: Timestamp,
    /// The largest `remote wall clock - local wall clock` (ms) seen in a
    /// peer's message, refused ones included (`None`: no message yet).
    pub max_remote_ahead_ms: Option<i64>,
    pub max_clock_offset_ms: u64,
    pub flush_interval_ms: u64,
    /// Delete tombstones held (see `record::Tomb`).
    pub tombstones: u64,
}

impl Store {
    /// A report on the store (see [`Info`] and the module docs).
    pub fn info(&self) -> Result<Info> {
        let inner = &self.0;
        let mut info = Info {
            uptime_ms: inner.telemetry.opened.elapsed().as_millis() as u64,
            ops: inner.telemetry.ops(),
            hlc: self.clock(),
            max_clock_offset_ms: self.max_clock_offset_ms(),
            flush_interval_ms: inner.cfg.flush_interval_ms,
            ..Info::default()
        };
        let ahead = inner.telemetry.max_remote_ahead_ms.load(Ordering::Relaxed);
        info.max_remote_ahead_ms = (ahead != i64::MIN).then_some(ahead);
        let mut large_sets: Vec<Box<[u8]>> = Vec::new();
        let mut oldest: Option<Instant> = None;
        for shard in inner.shards.iter() {
            let mut sh = shard.state.lock();
            for (id, slot) in sh.tiers.slots() {
                let k = kind_index(slot.meta.kind);
                match &slot.body {
                    Body::Hot(c) => {
                        info.hot.count += 1;
                        info.hot.by_kind[k] += 1;
                        match &**c {
                            Crdt::ORSet(_) if c.size_hint() > HEAP_BYTES_INLINE => {
                                large_sets.push(id.into())
                            }
                            c => info.hot.bytes += c.heap_bytes() as u64,
                        }
                    }
                    Body::Warm(b) => {
                        info.warm.count += 1;
                        info.warm.by_kind[k] += 1;
                        info.warm.bytes += b.len() as u64;
                    }
                }
            }
            info.tombstones += sh.tombs.len() as u64;
            info.lag.ids += sh.pending.len() as u64;
            info.lag.bytes += sh.pending.delta_bytes() as u64;
            if let Some(t) = sh.pending.oldest() {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        info.lag.oldest_ms = oldest.map(|t| t.elapsed().as_millis() as u64);
        for id in large_sets {
            info.hot.bytes += self.heap_bytes(&id) as u64;
        }
        info.disk = inner.cold.disk_properties()?;
        info.cold = self.cold_census(info.disk.keys_estimate)?;
        Ok(info)
    }

    /// Count (or estimate) the records on disk whose ids are not in memory.
    fn cold_census(&self, keys_estimate: u64) -> Result<ColdCensus> {
        let inner = &self.0;
        let cold = &inner.cold;
        // Read first, judged after: the shard locks are never taken while
        // a RocksDB iterator is open (lock order: state, then RocksDB).
        let mut records: Vec<(Box<[u8]>, Option<Kind>)> = Vec::new();
        let entry = |id: &[u8], record: &[u8]| {
            let kind = crate::record::decode_parts(record)
                .ok()
                .map(|(m, _)| m.kind);
            (Box::from(id), kind)
        };
        let mut exact = false;
        let mut pending_only = Vec::new();
        if keys_estimate <= 4 * COLD_EXACT_MAX {
            // Read before the disk (as in `listing`), so that a flush
            // meanwhile cannot hide an id from both.
            pending_only = self.pending_out_of_memory();
            let max = COLD_EXACT_MAX as usize;
            exact = cold.visit_records(&[], max + 1, |id, r| records.push(entry(id, r)))? <= max;
        }
        if !exact {
            records.clear();
            match cold.key_range()? {
                None => exact = true,
                Some((first, last)) => {
                    let mut rng = seed();
                    for _ in 0..COLD_SAMPLE_RUNS {
                        let from = random_key_between(&first, &last, &mut rng);
                        let n = COLD_SAMPLE / COLD_SAMPLE_RUNS;
                        cold.visit_records(&from, n, |id, r| records.push(entry(id, r)))?;
                    }
                }
            }
        }
        // Runs from nearby points may overlap.
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        records.dedup_by(|a, b| a.0 == b.0);
        let mut census = ColdCensus {
            exact,
            sampled: records.len() as u64,
            ..ColdCensus::default()
        };
        for (id, kind) in &records {
            let sh = inner.lock_state_unchecked(id);
            let in_memory = sh.tiers.contains(id);
            let deleted = sh
                .pending
                .overlays(id)
                .last()
                .is_some_and(|p| p.reset && p.delta.is_none());
            drop(sh);
            if let (false, false, Some(kind)) = (in_memory, deleted, kind) {
                census.by_kind[kind_index(*kind)] += 1;
            }
        }
        if exact {
            for (id, kind) in &pending_only {
                let on_disk = records.binary_search_by(|r| (*r.0).cmp(id)).is_ok();
                if !on_disk && !inner.lock_state_unchecked(id).tiers.contains(id) {
                    census.by_kind[kind_index(*kind)] += 1;
                }
            }
        }
        if !exact && !records.is_empty() {
            let scale = keys_estimate as f64 / records.len() as f64;
            for n in census.by_kind.iter_mut() {
                *n = (*n as f64 * scale).round() as u64;
            }
        }
        census.count = census.by_kind.iter().sum();
        Ok(census)
    }
}

impl Store {
    /// Ids that left memory before their writes were flushed (neither in
    /// memory nor on disk yet), with their kinds.
    fn pending_out_of_memory(&self) -> Vec<(Box<[u8]>, Kind)> {
        let mut out = Vec::new();
        for shard in self.0.shards.iter() {
            let sh = shard.state.lock();
            let p = &sh.pending;
            let ids = p
                .inflight
                .keys()
                .chain(p.dirty.keys().filter(|k| !p.inflight.contains_key(*k)));
            for id in ids {
                if sh.tiers.contains(id) {
                    continue;
                }
                let mut kind = None;
                for layer in p.overlays(id) {
                    match (&layer.meta, &layer.delta) {
                        (Some(m), Some(_)) => kind = Some(m.kind),
                        _ if layer.reset => kind = None,
                        _ => {}
                    }
                }
                if let Some(k) = kind {
                    out.push((id.clone(), k));
                }
            }
        }
        out
    }
}

/// A seed for the sampling positions (no cryptographic use).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish() | 1
}

/// xorshift64.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A key between `first` and `last`: their common prefix, a byte drawn
/// between theirs at the first position they differ, then random bytes.
fn random_key_between(first: &[u8], last: &[u8], rng: &mut u64) -> Vec<u8> {
    let common = first.iter().zip(last).take_while(|(a, b)| a == b).count();
    let mut key = first[..common].to_vec();
    let lo = first.get(common).copied().unwrap_or(0) as u64;
    let hi = last.get(common).copied().unwrap_or(255) as u64;
    if hi >= lo {
        key.push((lo + next(rng) % (hi - lo + 1)) as u8);
    }
    for _ in 0..8 {
        key.push(next(rng) as u8);
    }
    key
}

impl Store {
    /// Approximate heap bytes of `id`'s state in memory (0 when on disk).
    pub fn heap_bytes(&self, id: &[u8]) -> usize {
        let sh = self.0.lock_state_unchecked(id);
        match sh.tiers.get(id).map(|s| &s.body) {
            Some(Body::Hot(c)) => c.heap_bytes(),
            Some(Body::Warm(b)) => b.len(),
            None => 0,
        }
    }

    /// Elements of `id` holding a remove token (diagnostics: what causal
    /// stability has yet to collect; 0 for other types and ids not in
    /// memory). O(elements).
    pub fn remove_tokens(&self, id: &[u8]) -> usize {
        let body = {
            let sh = self.0.lock_state_unchecked(id);
            match sh.tiers.get(id).map(|s| &s.body) {
                Some(Body::Hot(c)) => Arc::clone(c),
                _ => return 0,
            }
        };
        match &*body {
            Crdt::ORSet(s) => s.remove_token_count(),
            _ => 0,
        }
    }
}

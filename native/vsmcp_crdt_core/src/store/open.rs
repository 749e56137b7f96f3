//! Opening a store: the directory's RocksDB, what a predecessor left
//! (incarnation, HLC high-water mark, tombstones, cuts, members, writes
//! handed over) and the replica id.

use super::cold::{ColdTier, Owner};
use super::config::StoreConfig;
#[cfg(feature = "fault-injection")]
use super::crash;
use super::flusher::spawn_flusher;
use super::handle::{Inner, ShardLocks, Store};
use super::import;
use super::keys::{
    CUT_PREFIX, HLC_KEY, INCARNATION_KEY, MEMBER_PREFIX, NODE_KEY, REPLICA_KEY, SYNCED_KEY,
    TOMB_CUT_KEY, TOMB_PREFIX,
};
use super::tiers::Limits;
use crate::causal::ReplicaId;
use crate::error::{Error, Result};
use crate::hlc::{Clock, Timestamp};
use crate::record;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

fn shard_count(hot_limit: usize) -> usize {
    (hot_limit / 256).clamp(1, 32).next_power_of_two().min(32)
}

/// The random id of the directory behind `cold`, made (and fsynced) at
/// its first open.
pub(super) fn directory_id(cold: &ColdTier, _cfg: &StoreConfig) -> Result<Vec<u8>> {
    if let Some(id) = cold.get_meta(REPLICA_KEY)?.filter(|b| b.len() == 16) {
        return Ok(id);
    }
    #[cfg(feature = "fault-injection")]
    if let Some(seed) = _cfg.test_replica_seed {
        let id = crash::seeded_directory_id(seed);
        cold.put_meta(REPLICA_KEY, &id, true)?;
        return Ok(id);
    }
    let mut id = vec![0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| Error::Storage(format!("/dev/urandom: {e}")))?;
    cold.put_meta(REPLICA_KEY, &id, true)?;
    Ok(id)
}

fn decode_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
}

impl Store {
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        let cold = ColdTier::open(&cfg.path, cfg.ephemeral, cfg.rocks_memory())?;
        let incarnation = cold
            .get_meta(INCARNATION_KEY)?
            .and_then(|b| decode_u64(&b))
            .unwrap_or(0)
            + 1;
        let bump = || cold.put_meta(INCARNATION_KEY, &incarnation.to_be_bytes(), true);
        // A predecessor whose log write failed (full disk) left RocksDB
        // refusing writes: reopen it if room is back.
        if let Err(e) = bump() {
            if !cold.reopen_if_room() {
                return Err(e);
            }
            bump()?;
        }
        cold.put_meta(NODE_KEY, &cfg.node_id, false)?;
        let hlc = cold
            .get_meta(HLC_KEY)?
            .filter(|b| b.len() == 12)
            .map(|b| {
                let wall = decode_u64(&b[..8]).unwrap_or(0);
                let counter = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                Timestamp::new(wall, counter)
            })
            .unwrap_or(Timestamp::ZERO);
        // The replica id: this directory's random id plus the incarnation.
        // The configured node id is only a label (deployments often give
        // every node the same one); two directories never share an id, and
        // a restart keeps its directory's id with a new incarnation, so a
        // crash never reuses a dot or counter entry already shipped.
        let mut replica = directory_id(&cold, &cfg)?;
        replica.extend_from_slice(&incarnation.to_be_bytes());
        let n = shard_count(cfg.hot_limit);
        let limits = Limits {
            hot: cfg.hot_limit.div_ceil(n).max(1),
            warm: cfg.warm_limit.div_ceil(n),
            threshold: cfg.access_threshold.max(1),
        };
        let cold_possible = !cold.keys_empty()?;
        let inner = Arc::new(Inner {
            cold: cold.clone(),
            shards: (0..n).map(|_| ShardLocks::default()).collect(),
            hasher: Default::default(),
            node_id: Arc::from(cfg.node_id.as_slice()),
            replica: ReplicaId::new(&replica),
            incarnation,
            clock: Mutex::new(Clock::with_last(hlc, cfg.max_clock_offset_ms)),
            persisted_hlc: Mutex::new(hlc),
            limits,
            cfg,
            cold_possible: AtomicBool::new(cold_possible),
            capture: AtomicBool::new(false),
            synced: AtomicBool::new(cold.get_meta(SYNCED_KEY)?.is_some()),
            member_cuts: Mutex::new(
                cold.meta_with_prefix(CUT_PREFIX)?
                    .into_iter()
                    .filter_map(|(dir, v)| Some((dir, decode_u64(&v)?)))
                    .collect(),
            ),
            members: Mutex::new(
                cold.meta_with_prefix(MEMBER_PREFIX)?
                    .into_iter()
                    .filter_map(|(dir, v)| Some((dir, decode_u64(&v)?)))
                    .collect(),
            ),
            tomb_cut: std::sync::atomic::AtomicU64::new(
                cold.get_meta(TOMB_CUT_KEY)?
                    .and_then(|b| decode_u64(&b))
                    .unwrap_or(0),
            ),
            capture_owner: Mutex::new(0),
            closed: AtomicBool::new(false),
            write_error: Mutex::new(None),
            has_write_error: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            flusher: Mutex::new(None),
            flush_lock: Mutex::new(()),
            close_lock: Mutex::new(()),
            telemetry: Default::default(),
            migrated_from: Mutex::new(import::load_migrated_from(&cold)?),
        });
        for (id, tomb) in cold.meta_with_prefix(TOMB_PREFIX)? {
            // An undecodable tombstone is dropped: it only guards against
            // stale deltas of a deleted generation.
            if let Ok(tomb) = record::decode_tombs(&tomb) {
                let i = inner.shard_index(&id);
                inner.shards[i].state.lock().put_tombs(id, tomb);
            }
        }
        let handle = spawn_flusher(&inner)?;
        *inner.flusher.lock() = Some(handle);
        // Nothing fallible from here: the predecessors' unwritten writes
        // (kept by the tier until now) become ours.
        let weak_owner: Weak<dyn Owner> = Arc::downgrade(&inner) as Weak<dyn Owner>;
        cold.add_owner(weak_owner);
        cold.adopt_orphans(|handed_over| {
            if !handed_over.is_empty() {
                inner.cold_possible.store(true, Ordering::Release);
            }
            for (id, p) in handed_over {
                let i = inner.shard_index(&id);
                let mut sh = inner.shards[i].state.lock();
                let merged = match sh.pending.dirty.remove(&id) {
                    Some(newer) => p.then(newer),
                    None => p,
                };
                sh.pending.dirty.insert(id, merged);
            }
        });
        Ok(Store(inner))
    }
}

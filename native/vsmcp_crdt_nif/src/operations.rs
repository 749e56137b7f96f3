//! NIFs of the store's operational functions: backup, listing by pages,
//! and `info`. Each does disk work or O(n) work, so each runs on a dirty
//! IO scheduler (never a normal one).

use crate::atoms::{nil, ok};
use crate::errors::{answer, NifError};
use crate::handle::resolve;
use crate::term as tc;
use crate::value::kind_atom;
use rustler::types::map::map_new;
use rustler::{Binary, Encoder, Env, NifMap, Term};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use vsmcp_crdt_core::store::info::{ByKind, Info};
use vsmcp_crdt_core::Kind;

/// Copy the store to the directory `path` (which must not exist): `:ok`,
/// `{:error, :already_exists}` or `{:error, {:storage_error, msg}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn store_backup<'a>(env: Env<'a>, store: Term<'a>, path: Binary<'a>) -> Term<'a> {
    answer(env, || {
        let h = resolve(store)?;
        let dest = Path::new(std::ffi::OsStr::from_bytes(path.as_slice()));
        h.store.backup(dest)?;
        Ok(ok().encode(env))
    })
}

/// One page of ids after the cursor `after` (`nil`: from the first):
/// `{:ok, ids, next_cursor | nil}`. Cursors are the raw bytes of the last
/// id of a page; an id that no longer decodes is left out of the page (the
/// cursor still moves past it).
#[rustler::nif(schedule = "DirtyIo")]
fn store_ids_page<'a>(
    env: Env<'a>,
    store: Term<'a>,
    after: Option<Binary<'a>>,
    limit: usize,
) -> Term<'a> {
    answer(env, || {
        let h = resolve(store)?;
        let (ids, next) = h
            .store
            .ids_page(after.as_ref().map(|b| b.as_slice()), limit)?;
        let out: Vec<Term<'a>> = ids
            .iter()
            .filter_map(|id| tc::decode_shown(env, id, h.trust).ok())
            .collect();
        let next = match next {
            Some(c) => tc::make_binary(env, &c),
            None => nil().encode(env),
        };
        Ok((ok(), out, next).encode(env))
    })
}

/// The store's report (see `Vsmcp.CRDT.ContextStore.info/1` for the
/// fields): `{:ok, map}`.
#[rustler::nif(schedule = "DirtyIo")]
fn store_info<'a>(env: Env<'a>, store: Term<'a>) -> Result<InfoMap<'a>, NifError<'a>> {
    let info = resolve(store)?.store.info()?;
    Ok(InfoMap::new(env, &info))
}

/// `%{g_counter: n, ...}` with every type.
fn by_kind<'a>(env: Env<'a>, counts: &ByKind) -> Term<'a> {
    let mut map = map_new(env);
    for (k, n) in Kind::ALL.iter().zip(counts) {
        map = map
            .map_put(kind_atom(env, *k).encode(env), n.encode(env))
            .unwrap_or(map);
    }
    map
}

/// The map of `store_info`; the keys are the fields' names.
#[derive(NifMap)]
struct InfoMap<'a> {
    uptime_ms: u64,
    crdts: Crdts<'a>,
    memory: Memory,
    disk: Disk,
    compaction: Compaction,
    ops: Ops,
    lag: Lag,
    clock: Clock,
}

#[derive(NifMap)]
struct Crdts<'a> {
    count: u64,
    by_type: Term<'a>,
    hot: Tier<'a>,
    warm: Tier<'a>,
    cold: ColdTier<'a>,
    tombstones: u64,
}

#[derive(NifMap)]
struct Tier<'a> {
    count: u64,
    by_type: Term<'a>,
}

#[derive(NifMap)]
struct ColdTier<'a> {
    count: u64,
    by_type: Term<'a>,
    exact: bool,
    sampled: u64,
}

#[derive(NifMap)]
struct Memory {
    hot_bytes: u64,
    warm_bytes: u64,
    pending_bytes: u64,
    memtable_bytes: u64,
    block_cache_bytes: u64,
    table_readers_bytes: u64,
    nif_heap_live_bytes: u64,
    nif_heap_resident_bytes: u64,
}

#[derive(NifMap)]
struct Disk {
    sst_bytes: u64,
    live_sst_bytes: u64,
    live_data_bytes: u64,
    wal_bytes: u64,
    wal_files: u64,
    keys_estimate: u64,
}

#[derive(NifMap)]
struct Compaction {
    running: u64,
    pending: bool,
    pending_bytes: u64,
    running_flushes: u64,
    flush_pending: bool,
    write_stopped: bool,
    background_errors: u64,
}

#[derive(NifMap)]
struct Ops {
    reads: u64,
    writes: u64,
    remote_merges: u64,
    reads_per_sec: f64,
    writes_per_sec: f64,
    remote_merges_per_sec: f64,
    window_ms: u64,
}

#[derive(NifMap)]
struct Lag {
    pending_writes: u64,
    pending_bytes: u64,
    oldest_pending_ms: Option<u64>,
    flush_interval_ms: u64,
}

#[derive(NifMap)]
struct Clock {
    hlc: (u64, u32),
    max_remote_ahead_ms: Option<i64>,
    max_clock_offset_ms: u64,
}

impl<'a> InfoMap<'a> {
    fn new(env: Env<'a>, i: &Info) -> Self {
        let mut all = i.hot.by_kind;
        for (n, (w, c)) in all
            .iter_mut()
            .zip(i.warm.by_kind.iter().zip(&i.cold.by_kind))
        {
            *n += w + c;
        }
        let (d, o) = (&i.disk, &i.ops);
        InfoMap {
            uptime_ms: i.uptime_ms,
            crdts: Crdts {
                count: i.hot.count + i.warm.count + i.cold.count,
                by_type: by_kind(env, &all),
                hot: Tier {
                    count: i.hot.count,
                    by_type: by_kind(env, &i.hot.by_kind),
                },
                warm: Tier {
                    count: i.warm.count,
                    by_type: by_kind(env, &i.warm.by_kind),
                },
                cold: ColdTier {
                    count: i.cold.count,
                    by_type: by_kind(env, &i.cold.by_kind),
                    exact: i.cold.exact,
                    sampled: i.cold.sampled,
                },
                tombstones: i.tombstones,
            },
            memory: Memory {
                hot_bytes: i.hot.bytes,
                warm_bytes: i.warm.bytes,
                pending_bytes: i.lag.bytes,
                memtable_bytes: d.memtable_bytes,
                block_cache_bytes: d.block_cache_bytes,
                table_readers_bytes: d.table_readers_bytes,
                nif_heap_live_bytes: crate::heap::live_bytes(),
                nif_heap_resident_bytes: crate::heap::resident_bytes(),
            },
            disk: Disk {
                sst_bytes: d.total_sst_bytes,
                live_sst_bytes: d.live_sst_bytes,
                live_data_bytes: d.live_data_bytes,
                wal_bytes: d.wal_bytes,
                wal_files: d.wal_files,
                keys_estimate: d.keys_estimate,
            },
            compaction: Compaction {
                running: d.running_compactions,
                pending: d.compaction_pending,
                pending_bytes: d.pending_compaction_bytes,
                running_flushes: d.running_flushes,
                flush_pending: d.flush_pending,
                write_stopped: d.write_stopped,
                background_errors: d.background_errors,
            },
            ops: Ops {
                reads: o.reads,
                writes: o.writes,
                remote_merges: o.remote_merges,
                reads_per_sec: o.reads_per_sec,
                writes_per_sec: o.writes_per_sec,
                remote_merges_per_sec: o.remote_merges_per_sec,
                window_ms: o.window_ms,
            },
            lag: Lag {
                pending_writes: i.lag.ids,
                pending_bytes: i.lag.bytes,
                oldest_pending_ms: i.lag.oldest_ms,
                flush_interval_ms: i.flush_interval_ms,
            },
            clock: Clock {
                hlc: (i.hlc.wall_ms, i.hlc.counter),
                max_remote_ahead_ms: i.max_remote_ahead_ms,
                max_clock_offset_ms: i.max_clock_offset_ms,
            },
        }
    }
}

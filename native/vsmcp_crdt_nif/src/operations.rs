//! NIFs of the store's operational functions: backup, listing by pages,
//! and `info`. Each does disk work or O(n) work, so each runs on a dirty
//! IO scheduler (never a normal one).

use crate::atoms::{atom_map, nil, ok};
use crate::errors::{answer, NifError};
use crate::handle::resolve;
use crate::term::{self as tc, Trust};
use crate::value::kind_atom;
use rustler::types::map::map_new;
use rustler::{Binary, Encoder, Env, Term};
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
            .filter_map(|id| tc::decode(env, id, Trust::Local).ok())
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
fn store_info<'a>(env: Env<'a>, store: Term<'a>) -> Result<Term<'a>, NifError<'a>> {
    let info = resolve(store)?.store.info()?;
    Ok(info_map(env, &info))
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

fn info_map<'a>(env: Env<'a>, i: &Info) -> Term<'a> {
    let tier = |count: u64, kinds: &ByKind| {
        atom_map(
            env,
            &[
                ("count", count.encode(env)),
                ("by_type", by_kind(env, kinds)),
            ],
        )
    };
    let mut all = i.hot.by_kind;
    for (n, (w, c)) in all
        .iter_mut()
        .zip(i.warm.by_kind.iter().zip(&i.cold.by_kind))
    {
        *n += w + c;
    }
    let cold = atom_map(
        env,
        &[
            ("count", i.cold.count.encode(env)),
            ("by_type", by_kind(env, &i.cold.by_kind)),
            ("exact", i.cold.exact.encode(env)),
            ("sampled", i.cold.sampled.encode(env)),
        ],
    );
    let crdts = atom_map(
        env,
        &[
            (
                "count",
                (i.hot.count + i.warm.count + i.cold.count).encode(env),
            ),
            ("by_type", by_kind(env, &all)),
            ("hot", tier(i.hot.count, &i.hot.by_kind)),
            ("warm", tier(i.warm.count, &i.warm.by_kind)),
            ("cold", cold),
            ("tombstones", i.tombstones.encode(env)),
        ],
    );
    let d = &i.disk;
    let memory = atom_map(
        env,
        &[
            ("hot_bytes", i.hot.bytes.encode(env)),
            ("warm_bytes", i.warm.bytes.encode(env)),
            ("pending_bytes", i.lag.bytes.encode(env)),
            ("memtable_bytes", d.memtable_bytes.encode(env)),
            ("block_cache_bytes", d.block_cache_bytes.encode(env)),
            ("table_readers_bytes", d.table_readers_bytes.encode(env)),
        ],
    );
    let disk = atom_map(
        env,
        &[
            ("sst_bytes", d.total_sst_bytes.encode(env)),
            ("live_sst_bytes", d.live_sst_bytes.encode(env)),
            ("live_data_bytes", d.live_data_bytes.encode(env)),
            ("wal_bytes", d.wal_bytes.encode(env)),
            ("wal_files", d.wal_files.encode(env)),
            ("keys_estimate", d.keys_estimate.encode(env)),
        ],
    );
    let compaction = atom_map(
        env,
        &[
            ("running", d.running_compactions.encode(env)),
            ("pending", d.compaction_pending.encode(env)),
            ("pending_bytes", d.pending_compaction_bytes.encode(env)),
            ("running_flushes", d.running_flushes.encode(env)),
            ("flush_pending", d.flush_pending.encode(env)),
            ("write_stopped", d.write_stopped.encode(env)),
            ("background_errors", d.background_errors.encode(env)),
        ],
    );
    let o = &i.ops;
    let ops = atom_map(
        env,
        &[
            ("reads", o.reads.encode(env)),
            ("writes", o.writes.encode(env)),
            ("remote_merges", o.remote_merges.encode(env)),
            ("reads_per_sec", o.reads_per_sec.encode(env)),
            ("writes_per_sec", o.writes_per_sec.encode(env)),
            ("remote_merges_per_sec", o.remote_merges_per_sec.encode(env)),
            ("window_ms", o.window_ms.encode(env)),
        ],
    );
    let lag = atom_map(
        env,
        &[
            ("pending_writes", i.lag.ids.encode(env)),
            ("pending_bytes", i.lag.bytes.encode(env)),
            ("oldest_pending_ms", i.lag.oldest_ms.encode(env)),
            ("flush_interval_ms", i.flush_interval_ms.encode(env)),
        ],
    );
    let clock = atom_map(
        env,
        &[
            ("hlc", (i.hlc.wall_ms, i.hlc.counter).encode(env)),
            ("max_remote_ahead_ms", i.max_remote_ahead_ms.encode(env)),
            ("max_clock_offset_ms", i.max_clock_offset_ms.encode(env)),
        ],
    );
    atom_map(
        env,
        &[
            ("uptime_ms", i.uptime_ms.encode(env)),
            ("crdts", crdts),
            ("memory", memory),
            ("disk", disk),
            ("compaction", compaction),
            ("ops", ops),
            ("lag", lag),
            ("clock", clock),
        ],
    )
}

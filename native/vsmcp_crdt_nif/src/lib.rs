//! Thin rustler glue over `vsmcp_crdt_core`: term conversion, resources,
//! error mapping and scheduler flags. No CRDT semantics live here.
//!
//! Foundations (import nothing above them):
//!
//! * `atoms`  - every atom of the glue, and maps keyed by atoms
//! * `errors` - `NifError`: core and glue errors -> `{:error, reason}`
//! * `term`   - Erlang terms <-> canonical bytes
//! * `op`     - operation terms -> core `Mutation` (one parser for both)
//! * `options` - the option maps of `store_open` and `sync_start`
//! * `handle` - the store resource, the owners' registry, `resolve`
//!
//! Values:
//!
//! * `set_value` - a set as a `MapSet` term
//! * `set_cache` - a hot set's built `MapSet` kept beside it, edited per update
//! * `value`  - CRDT values -> Elixir terms (sets as real `MapSet`s)
//!
//! NIFs:
//!
//! * `store`  - `Vsmcp.CRDT.ContextStore`'s calls on a store
//! * `operations` - backup, listing by pages and `info` of a store
//! * `import` - the replaced application's DETS entries, imported
//! * `sync`   - the sync engine behind `Vsmcp.CRDT.Sync.Peer`
//! * `types`  - the pure CRDT and HLC functions behind `Vsmcp.CRDT.Types.*`

mod atoms;
mod errors;
mod handle;
mod heap;
mod import;
mod op;
mod operations;
mod options;
#[cfg(feature = "fault-injection")]
mod probe;
mod set_cache;
mod set_value;
mod store;
mod sync;
mod term;
mod types;
mod value;

#[rustler::nif]
fn nif_loaded() -> bool {
    true
}

/// At load: mimalloc never returns freed pages to the OS on its own
/// (`purge_delay = -1`). Its purging runs inside whichever thread next
/// allocates, a scheduler in the middle of a NIF call: after a large set
/// was freed, a microsecond call spent milliseconds in `madvise`. Freed
/// memory is reused by later allocations, as glibc's would be. An
/// operator who prefers memory back over that latency sets mimalloc's own
/// `MIMALLOC_PURGE_DELAY` (milliseconds) in the environment, which is
/// then left as given.
fn on_load(_env: rustler::Env, _info: rustler::Term) -> bool {
    // `mi_option_purge_delay` in mimalloc's option enum.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an allocator option; valid at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    true
}

rustler::init!("Elixir.Vsmcp.CRDT.Native", load = on_load);

/// The NIF's Rust heap: mimalloc, counting live bytes (see `heap`).
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

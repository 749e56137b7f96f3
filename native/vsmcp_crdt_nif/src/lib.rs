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

rustler::init!("Elixir.Vsmcp.CRDT.Native");

/// The NIF's Rust heap: jemalloc, counting live bytes (see `heap`).
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

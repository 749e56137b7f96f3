//! Thin rustler glue over `vsmcp_crdt_core`: term conversion, resources,
//! error mapping and scheduler flags. No CRDT semantics live here.
//!
//! * `term`   - Erlang terms <-> canonical bytes
//! * `errors` - core errors -> `{:error, reason}`
//! * `types`  - the pure CRDT and HLC functions behind `Vsmcp.CRDT.Types.*`
//! * `op`     - operation terms -> core `Mutation` (one parser for both)
//! * `value`  - CRDT values -> Elixir terms (sets as real `MapSet`s)
//! * `set_cache` - a hot set's built `MapSet` kept beside it, edited per update
//! * `store`  - the store resource behind `Vsmcp.CRDT.ContextStore`

mod errors;
mod op;
mod set_cache;
mod store;
mod term;
mod types;
mod value;

#[rustler::nif]
fn nif_loaded() -> bool {
    true
}

rustler::init!("Elixir.Vsmcp.CRDT.Native");

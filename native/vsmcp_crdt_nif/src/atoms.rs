//! Every atom the glue answers with or reads, defined once, and the one
//! way to build a map keyed by atoms of fixed names.
//!
//! `ok`, `error` and `nil` are rustler's own (re-exported here), so that
//! rustler's `Result` and `Option` encodings and ours are the same atoms.
//! Atoms are never created from peer input: `atom_map` and the error
//! reasons take names from fixed sets in the code.

use rustler::types::map::map_new;
use rustler::{Atom, Env, Term};

pub use rustler::types::atom::{error, nil, ok};

rustler::atoms! {
    // Replies of the store NIFs (`store.rs`, `errors.rs`).
    dirty,
    // A get's reply that will come by message (`set_cache`), and the
    // argument asking for that answer.
    by_message,
    ask,
    noproc,
    unknown_type,
    unsupported_operation,
    invalid_amount,
    relaxed,
    strict,
    hot,
    warm,
    cold,
    // Operation tags (`op.rs`).
    increment,
    decrement,
    add,
    remove,
    set,
    // `MapSet`'s layout (`set_value.rs`).
    __struct__,
    map,
    version,
    mapset_module = "Elixir.MapSet",
    // `%Vsmcp.CRDT.UnsafeTerm{bytes: _}` (`term.rs`).
    unsafe_term_module = "Elixir.Vsmcp.CRDT.UnsafeTerm",
    bytes,
    tag,
    // Legacy entries (`import.rs`).
    g_counter,
    pn_counter,
    or_set,
    lww_register,
    value,
    invalid_entry,
    entry,
    remote,
    migrated_from,
    // Sync events and reasons (`sync.rs`).
    peer_up,
    peer_down,
    changed,
    local,
    rejected,
    merged,
    answered,
    collected,
    invalid_replica,
    closed,
    // Causal contexts and clock order (`types.rs`).
    vv,
    cloud,
    timestamp,
    counter,
    node_id,
    lt,
    eq,
    gt,
}

/// A map with atom keys from a fixed list of names (replies whose keys are
/// only known at run time, such as the sync engine's rejection kinds).
pub fn atom_map<'a>(env: Env<'a>, pairs: &[(&str, Term<'a>)]) -> Term<'a> {
    let mut map = map_new(env);
    for (k, v) in pairs {
        if let Ok(key) = Atom::from_str(env, k) {
            map = map.map_put(key, *v).unwrap_or(map);
        }
    }
    map
}

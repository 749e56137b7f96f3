//! Every atom the glue answers with or reads, defined once.
//!
//! `ok`, `error` and `nil` are rustler's own (re-exported here), so that
//! rustler's `Result` and `Option` encodings and ours are the same atoms.

pub use rustler::types::atom::{error, nil, ok};

rustler::atoms! {
    // Replies of the pure CRDT functions (`types.rs`).
    invalid_amount,
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

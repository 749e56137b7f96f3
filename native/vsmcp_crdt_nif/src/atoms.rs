//! Every atom the glue answers with or reads, defined once.
//!
//! `ok` and `nil` are rustler's own (re-exported here), so that rustler's
//! `Result` and `Option` encodings and ours are the same atoms.

pub use rustler::types::atom::{nil, ok};

rustler::atoms! {
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
}

//! Values as Elixir terms: integers, registers' terms, and sets as real
//! `MapSet`s built in Rust (no tagged tuple for Elixir to convert, so no
//! register value can be mistaken for a set).
//!
//! Building a value is O(size); above `INLINE_BYTES` it answers
//! `Error::WouldBlock` on a normal scheduler. An element that cannot be
//! decoded any more (e.g. an ETF payload the running VM refuses) is left
//! out of the set rather than failing the whole read.

use crate::term::{self as tc, Trust};
use rustler::types::atom::nil;
use rustler::{Atom, Encoder, Env, Term};
use vsmcp_crdt_core::crdt::{Crdt, Value};
use vsmcp_crdt_core::store::INLINE_BYTES;
use vsmcp_crdt_core::Error;

rustler::atoms! {
    __struct__,
    map,
    version,
    mapset_module = "Elixir.MapSet",
}

/// `MapSet`'s private layout in Elixir 1.14+: `%MapSet{map: %{e => []},
/// version: 2}`. Pinned by a test against the running Elixir.
pub fn mapset<'a>(env: Env<'a>, elements: &[Term<'a>]) -> Term<'a> {
    let empty: Vec<Term<'a>> = Vec::new();
    let dummy = empty.encode(env);
    let values = vec![dummy; elements.len()];
    let m = match Term::map_from_term_arrays(env, elements, &values) {
        Ok(m) => m,
        // Two encodings that decode to one term: keep one.
        Err(_) => elements
            .iter()
            .fold(rustler::types::map::map_new(env), |m, e| {
                m.map_put(*e, dummy).unwrap_or(m)
            }),
    };
    let keys = [
        __struct__().encode(env),
        map().encode(env),
        version().encode(env),
    ];
    let vals = [mapset_module().encode(env), m, 2.encode(env)];
    Term::map_from_term_arrays(env, &keys, &vals).unwrap_or(m)
}

/// `{:ok, value}` of `c`; `Err(WouldBlock)` when too large for a normal
/// scheduler (`inline`).
pub fn value_term<'a>(env: Env<'a>, c: &Crdt, inline: bool) -> Result<Term<'a>, Error> {
    if inline && c.size_hint() > INLINE_BYTES {
        return Err(Error::WouldBlock);
    }
    let ok = crate::errors::ok();
    Ok(match c.value() {
        Value::Counter(n) => (ok, n).encode(env),
        Value::Register(None) => (ok, nil()).encode(env),
        Value::Register(Some(b)) => (ok, tc::decode(env, b, Trust::Local)?).encode(env),
        Value::Set(elems) => {
            let terms: Vec<Term<'a>> = elems
                .into_iter()
                .filter_map(|b| tc::decode(env, b, Trust::Local).ok())
                .collect();
            (ok, mapset(env, &terms)).encode(env)
        }
    })
}

/// The Elixir name of a kind (`:g_counter`, ...): a fixed set of atoms.
pub fn kind_atom(env: Env, kind: vsmcp_crdt_core::Kind) -> Atom {
    Atom::from_str(env, kind.name()).unwrap_or_else(|_| nil())
}

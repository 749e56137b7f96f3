//! Values as Elixir terms: integers, registers' terms, and sets as real
//! `MapSet`s built in Rust (no tagged tuple for Elixir to convert, so no
//! register value can be mistaken for a set).
//!
//! Building a set's value is O(size) (decoding and hashing every element,
//! ~0.1-0.5 µs each); a hot set keeps its built value in a [`SetCache`]
//! (see `set_cache`), so most replies only copy it. Work over the inline
//! budget answers `Error::WouldBlock` on a normal scheduler. An element that
//! cannot be decoded any more (e.g. an ETF payload the running VM refuses)
//! is left out of the set rather than failing the whole read.

use crate::set_cache;
use crate::term::{self as tc, Trust};
use rustler::types::atom::nil;
use rustler::{Atom, Encoder, Env, Term};
use vsmcp_crdt_core::crdt::{Crdt, Value};
use vsmcp_crdt_core::orset::ORSet;
use vsmcp_crdt_core::store::{View, INLINE_BYTES};
use vsmcp_crdt_core::Error;

rustler::atoms! {
    __struct__,
    map,
    version,
    mapset_module = "Elixir.MapSet",
}

/// The inner map `%{e => []}` of a `MapSet` of `elements`, and whether it
/// has one key per element (false when two elements decode to equal terms:
/// then one is kept).
pub fn set_map<'a>(env: Env<'a>, elements: &[Term<'a>]) -> (Term<'a>, bool) {
    let empty = Term::list_new_empty(env);
    let values = vec![empty; elements.len()];
    match Term::map_from_term_arrays(env, elements, &values) {
        Ok(m) => (m, true),
        Err(_) => {
            let m = elements
                .iter()
                .fold(rustler::types::map::map_new(env), |m, e| {
                    m.map_put(*e, empty).unwrap_or(m)
                });
            (m, false)
        }
    }
}

/// `MapSet`'s private layout in Elixir 1.14+: `%MapSet{map: %{e => []},
/// version: 2}` around the inner map `m`. Pinned by a test against the
/// running Elixir.
pub fn mapset_of<'a>(env: Env<'a>, m: Term<'a>) -> Term<'a> {
    let keys = [
        __struct__().encode(env),
        map().encode(env),
        version().encode(env),
    ];
    let vals = [mapset_module().encode(env), m, 2.encode(env)];
    Term::map_from_term_arrays(env, &keys, &vals).unwrap_or(m)
}

/// The elements of `s` decoded into `env` (undecodable ones left out) and
/// the number of present elements.
pub fn decode_elements<'a>(env: Env<'a>, s: &ORSet) -> (Vec<Term<'a>>, usize) {
    let mut present = 0;
    let terms = s
        .elements()
        .inspect(|_| present += 1)
        .filter_map(|b| tc::decode(env, b, Trust::Local).ok())
        .collect();
    (terms, present)
}

/// `{:ok, value}` of the state in `v`.
///
/// * `edited`: the element of the add or remove that made this version (an
///   update's reply), so a cached set is edited instead of rebuilt.
/// * `inline`: on a normal scheduler; work over the inline budget is
///   `Err(WouldBlock)`, which must only happen before anything changed (a
///   read, or an update the core already vetted: see `Store::update_with`).
pub fn value_term<'a>(
    env: Env<'a>,
    v: View<'_>,
    edited: Option<&[u8]>,
    inline: bool,
) -> Result<Term<'a>, Error> {
    let ok = crate::errors::ok();
    let View { crdt, version, ext } = v;
    if let Crdt::ORSet(s) = crdt {
        let m = match ext {
            Some(ext) => set_cache::value(env, s, version, ext, edited, inline)?,
            // Not hot (a warm item, decoded for this call): built, not kept.
            None => {
                if inline && crdt.size_hint() > INLINE_BYTES {
                    return Err(Error::WouldBlock);
                }
                let (terms, _) = decode_elements(env, s);
                set_map(env, &terms).0
            }
        };
        return Ok((ok, mapset_of(env, m)).encode(env));
    }
    if inline && crdt.size_hint() > INLINE_BYTES {
        return Err(Error::WouldBlock);
    }
    Ok(match crdt.value() {
        Value::Counter(n) => (ok, n).encode(env),
        Value::Register(None) => (ok, nil()).encode(env),
        Value::Register(Some(b)) => (ok, tc::decode(env, b, Trust::Local)?).encode(env),
        Value::Set(_) => return Err(Error::UnsupportedOperation),
    })
}

/// The Elixir name of a kind (`:g_counter`, ...): a fixed set of atoms.
pub fn kind_atom(env: Env, kind: vsmcp_crdt_core::Kind) -> Atom {
    Atom::from_str(env, kind.name()).unwrap_or_else(|_| nil())
}

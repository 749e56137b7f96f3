//! A set's value as the Elixir term `MapSet`: its inner map `%{e => []}`
//! built from decoded elements, and the `%MapSet{}` struct around it.
//! Shared by `value` (a set built per call) and `set_cache` (a set's map
//! kept and edited).

use crate::atoms;
use crate::term::{self as tc, Trust};
use rustler::{Encoder, Env, Term};
use vsmcp_crdt_core::orset::ORSet;

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
        atoms::__struct__().encode(env),
        atoms::map().encode(env),
        atoms::version().encode(env),
    ];
    let vals = [atoms::mapset_module().encode(env), m, 2.encode(env)];
    Term::map_from_term_arrays(env, &keys, &vals).unwrap_or(m)
}

/// The elements of `s` decoded into `env` (undecodable ones left out) and
/// the number of present elements.
pub fn decode_elements<'a>(env: Env<'a>, s: &ORSet, trust: Trust) -> (Vec<Term<'a>>, usize) {
    let mut present = 0;
    let terms = s
        .elements()
        .inspect(|_| present += 1)
        .filter_map(|b| tc::decode_shown(env, b, trust).ok())
        .collect();
    (terms, present)
}

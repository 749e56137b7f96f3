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

use crate::atoms;
use crate::set_cache::{self, ReplyTo, SetReply};
use crate::set_value::{decode_elements, mapset_of, set_map};
use crate::term::{self as tc, Trust};
use rustler::{Atom, Encoder, Env, Term};
use vsmcp_crdt_core::crdt::{Crdt, Value};
use vsmcp_crdt_core::store::{View, INLINE_BYTES};
use vsmcp_crdt_core::Error;

/// `{:ok, value}` of the state in `v`.
///
/// * `edited`: the element of the add or remove that made this version (an
///   update's reply), so a cached set is edited instead of rebuilt.
/// * `inline`: on a normal scheduler; work over the inline budget is
///   `Err(WouldBlock)`, which must only happen before anything changed (a
///   read, or an update the core already vetted: see `Store::update_with`).
/// * `reply_to`: how the caller takes a large hot set's value (see
///   `set_cache::ReplyTo` and "Replies by message" there).
pub fn value_term<'a>(
    env: Env<'a>,
    v: View<'_>,
    edited: Option<&[u8]>,
    inline: bool,
    trust: Trust,
    reply_to: ReplyTo<'a>,
) -> Result<Term<'a>, Error> {
    let ok = atoms::ok();
    let View { crdt, version, ext } = v;
    if let Crdt::ORSet(s) = crdt {
        let large = s.entry_count() >= set_cache::SEND_MIN_LEN;
        if let (ReplyTo::AskFirst, true, Some(_)) = (reply_to, large, &ext) {
            return Ok(atoms::by_message().encode(env));
        }
        let m = match ext {
            Some(ext) => {
                match set_cache::value(env, s, version, ext, edited, inline, trust, reply_to)? {
                    SetReply::Map(m) => m,
                    SetReply::Sent(tag) => return Ok(tag),
                }
            }
            // Not hot (a warm item, decoded for this call): built, not kept.
            None => {
                if inline && crdt.size_hint() > INLINE_BYTES {
                    return Err(Error::WouldBlock);
                }
                let (terms, _) = decode_elements(env, s, trust);
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
        Value::Register(None) => (ok, atoms::nil()).encode(env),
        Value::Register(Some(b)) => (ok, tc::decode_shown(env, b, trust)?).encode(env),
        Value::Set(_) => return Err(Error::UnsupportedOperation),
    })
}

/// The Elixir name of a kind (`:g_counter`, ...): a fixed set of atoms.
pub fn kind_atom(env: Env, kind: vsmcp_crdt_core::Kind) -> Atom {
    Atom::from_str(env, kind.name()).unwrap_or_else(|_| atoms::nil())
}

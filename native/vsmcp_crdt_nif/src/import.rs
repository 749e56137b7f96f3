//! NIFs of `Vsmcp.CRDT.Storage.DetsImport`: entries of the replaced
//! application (read from its DETS file by Elixir and normalised there)
//! converted to `vsmcp_crdt_core::store::import::LegacyEntry` and imported,
//! on a dirty IO scheduler, one batch per call.
//!
//! An entry is `{id, type, payload, created_at}` with `created_at` ms
//! since the epoch or `nil`, and `payload`:
//!
//! * `:g_counter` - `[{node_id, count}]`
//! * `:pn_counter` - `{[{node_id, count}], [{node_id, count}]}` (increments,
//!   decrements)
//! * `:or_set` - `[element]` (the live elements)
//! * `:lww_register` - `{:value, value}`, or `nil` when never set
//!
//! Counts are integers in `0..2^64-1`.

use crate::atoms::{
    entry, g_counter, invalid_entry, lww_register, migrated_from, nil, ok, or_set, pn_counter,
    remote, value,
};
use crate::errors::{answer, NifError};
use crate::handle::{resolve, StoreResource};
use crate::term as tc;
use rustler::types::tuple::get_tuple;
use rustler::{Atom, Binary, Encoder, Env, Term};
use vsmcp_crdt_core::store::import::{is_imported, LegacyEntry, LegacyState, NodeCount};
use vsmcp_crdt_core::store::record::Meta;
use vsmcp_crdt_core::store::Store;

/// An entry term that does not have the documented shape: `Elixir` checks
/// entries before, so this is a caller's bug, reported, never raised.
struct Invalid;

fn counts(t: Term) -> Result<Vec<NodeCount>, Invalid> {
    let list: Vec<Term> = t.decode().map_err(|_| Invalid)?;
    list.into_iter()
        .map(|pair| {
            let (node, n): (Term, u64) = pair.decode().map_err(|_| Invalid)?;
            Ok((tc::encode(node).map_err(|_| Invalid)?, n))
        })
        .collect()
}

fn legacy_state(kind: Atom, payload: Term) -> Result<LegacyState, Invalid> {
    if kind == g_counter() {
        return Ok(LegacyState::GCounter(counts(payload)?));
    }
    if kind == pn_counter() {
        let (p, n): (Term, Term) = payload.decode().map_err(|_| Invalid)?;
        return Ok(LegacyState::PNCounter {
            positive: counts(p)?,
            negative: counts(n)?,
        });
    }
    if kind == or_set() {
        let list: Vec<Term> = payload.decode().map_err(|_| Invalid)?;
        let elements = list
            .into_iter()
            .map(|e| tc::encode(e).map_err(|_| Invalid))
            .collect::<Result<_, _>>()?;
        return Ok(LegacyState::ORSet(elements));
    }
    if kind == lww_register() {
        if payload.decode::<Atom>().is_ok_and(|a| a == nil()) {
            return Ok(LegacyState::LwwRegister(None));
        }
        let (tag, v): (Atom, Term) = payload.decode().map_err(|_| Invalid)?;
        if tag != value() {
            return Err(Invalid);
        }
        return Ok(LegacyState::LwwRegister(Some(
            tc::encode(v).map_err(|_| Invalid)?,
        )));
    }
    Err(Invalid)
}

/// `(id term, entry)` of one entry term.
fn legacy_entry(t: Term) -> Result<(Term, LegacyEntry), Option<Term>> {
    let parts = get_tuple(t).map_err(|_| None)?;
    let [id, kind, payload, created_at] = parts[..] else {
        return Err(None);
    };
    let kind: Atom = kind.decode().map_err(|_| Some(id))?;
    let created_at_ms = if created_at.decode::<Atom>().is_ok_and(|a| a == nil()) {
        None
    } else {
        Some(created_at.decode::<u64>().map_err(|_| Some(id))?)
    };
    let state = legacy_state(kind, payload).map_err(|Invalid| Some(id))?;
    let id_bytes = tc::encode(id).map_err(|_| Some(id))?;
    Ok((
        id,
        LegacyEntry {
            id: id_bytes,
            state,
            created_at_ms,
        },
    ))
}

/// Import a batch of entries into the store behind `store` (its owner's
/// pid or its handle): `{:ok, changed}` (entries that changed the store),
/// `{:error, {:invalid_entry, id | nil}}` for an entry of another shape,
/// or `{:error, {:entry, id, reason}}` when the store refused one
/// (`reason` as the store's other calls give it). The entries before a
/// failing one are imported.
#[rustler::nif(schedule = "DirtyIo")]
fn store_import<'a>(
    env: Env<'a>,
    store: Term<'a>,
    entries: Term<'a>,
) -> Result<usize, NifError<'a>> {
    let h = resolve(store)?;
    let invalid = |id: Option<Term<'a>>| {
        let id = id.unwrap_or_else(|| nil().encode(env));
        NifError::Detail((invalid_entry(), id).encode(env))
    };
    let list = entries.decode::<Vec<Term>>().map_err(|_| invalid(None))?;
    let mut changed = 0usize;
    for t in list {
        let (id, e) = legacy_entry(t).map_err(invalid)?;
        match h.store.import_legacy(std::slice::from_ref(&e)) {
            Ok(n) => changed += n,
            Err(err) => {
                let reason = NifError::Core(err);
                return Err(NifError::Detail((entry(), id, reason).encode(env)));
            }
        }
    }
    Ok(changed)
}

/// Mark the import done, recording `source` (see
/// `Store::finish_import`): `:ok` or `{:error, reason}`.
#[rustler::nif(schedule = "DirtyIo")]
fn store_finish_import<'a>(env: Env<'a>, store: Term<'a>, source: Binary<'a>) -> Term<'a> {
    answer(env, || {
        resolve(store)?.store.finish_import(source.as_slice())?;
        Ok(ok().encode(env))
    })
}

/// `metadata` (the map of `store_metadata`) with `:migrated_from` added
/// for an imported id: the source this store imported, or `:remote` when
/// the id came from another node's import only as far as this store knows
/// (it imported nothing itself).
pub fn annotate_metadata<'a>(
    env: Env<'a>,
    h: &StoreResource,
    meta: &Meta,
    metadata: Term<'a>,
) -> Term<'a> {
    if !is_imported(meta) {
        return metadata;
    }
    let source = migrated_source(env, &h.store);
    metadata
        .map_put(migrated_from(), source)
        .unwrap_or(metadata)
}

fn migrated_source<'a>(env: Env<'a>, store: &Store) -> Term<'a> {
    match store.migrated_from() {
        Some(s) => tc::make_binary(env, &s),
        None => remote().encode(env),
    }
}

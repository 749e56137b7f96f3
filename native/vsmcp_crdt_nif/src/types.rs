//! The pure CRDT and clock functions behind `Vsmcp.CRDT.Types.*` and
//! `Vsmcp.CRDT.HLC`.
//!
//! A CRDT value crosses the boundary as its versioned wire encoding
//! (`Crdt::encode`), so Elixir holds ordinary binaries: every call decodes
//! its input, applies one core operation and re-encodes the result, O(size
//! of the state, 20-80 ns per state byte). Every CRDT function except
//! `crdt_new` has a `_dirty` twin on the dirty CPU scheduler; Elixir picks
//! the twin for states above 8 KiB (measured figures in
//! `Vsmcp.CRDT.Types.EncodedState`) so a normal scheduler is never held for
//! much more than a millisecond.
//!
//! Every argument arrives as a plain `Term` and is validated here: a
//! non-binary state, malformed bytes, a state of a kind the caller did not
//! expect, a bad operation or an integer out of range comes back as
//! `{:error, reason}` (reasons in `errors.rs`), never as a panic or `badarg`.
//!
//! `kinds` is the list of kind atoms the calling Elixir module accepts
//! (`[:or_set, :aw_set]` for `Vsmcp.CRDT.Types.ORSet`); a state of any other
//! kind is `{:error, :type_mismatch}`, checked on the header before the body
//! is decoded.
//!
//! Node ids and elements are decoded with `Trust::Local`: the states are
//! the application's own values, and an element must read back as the term
//! that was added even when its atom is not yet known on the reading node
//! (a state received from a peer). The cost is that such a state can add
//! atoms, at most those its sender put into it; ETF payloads are still
//! decoded with `[:safe]`.

use crate::errors::{error_term, result_term};
use crate::op::{self, OpError};
use crate::term::{self as tc, make_binary, Trust};
use rustler::{Binary, Encoder, Env, Term};
use std::cmp::Ordering;
use vsmcp_crdt_core::crdt::split_header;
use vsmcp_crdt_core::hlc::{self, Timestamp};
use vsmcp_crdt_core::{Crdt, Error, Kind, Op, ReplicaId, Result, Value};

mod atoms {
    rustler::atoms! {
        vv,
        cloud,
        timestamp,
        counter,
        node_id,
        invalid_amount,
        lt,
        eq,
        gt,
    }
}

// ---- argument decoding -----------------------------------------------------

fn kinds_arg(t: Term) -> Result<Vec<Kind>> {
    let items: Vec<Term> = t
        .decode()
        .map_err(|_| Error::InvalidArgument("kinds must be a list of atoms"))?;
    items.into_iter().map(kind_arg).collect()
}

fn kind_arg(t: Term) -> Result<Kind> {
    t.atom_to_string()
        .ok()
        .and_then(|name| Kind::from_name(&name))
        .ok_or(Error::InvalidArgument("unknown CRDT kind"))
}

/// Decode a state (or delta) binary, refusing kinds not in `kinds`.
fn state_arg(kinds: &[Kind], t: Term) -> Result<Crdt> {
    let bin = t
        .decode::<Binary>()
        .map_err(|_| Error::InvalidArgument("state must be a binary"))?;
    let (kind, _) = split_header(bin.as_slice())?;
    if !kinds.contains(&kind) {
        return Err(Error::TypeMismatch);
    }
    Crdt::decode(bin.as_slice())
}

fn replica_arg(t: Term) -> Result<ReplicaId> {
    Ok(ReplicaId::new(&tc::encode(t)?))
}

fn u64_arg(t: Term) -> Result<u64> {
    t.decode::<u64>()
        .map_err(|_| Error::InvalidArgument("expected an integer in 0..2^64-1"))
}

fn u32_arg(t: Term) -> Result<u32> {
    t.decode::<u32>()
        .map_err(|_| Error::InvalidArgument("expected an integer in 0..2^32-1"))
}

fn timestamp_arg(wall_ms: Term, counter: Term) -> Result<Timestamp> {
    Ok(Timestamp::new(u64_arg(wall_ms)?, u32_arg(counter)?))
}

// ---- results ---------------------------------------------------------------

fn binary_term<'a>(env: Env<'a>, c: &Crdt) -> Term<'a> {
    make_binary(env, &c.encode())
}

fn value_term<'a>(env: Env<'a>, c: &Crdt) -> Result<Term<'a>> {
    Ok(match c.value() {
        Value::Counter(n) => n.encode(env),
        Value::Set(elems) => elems
            .into_iter()
            .map(|e| tc::decode(env, e, Trust::Local))
            .collect::<Result<Vec<_>>>()?
            .encode(env),
        Value::Register(Some(v)) => tc::decode(env, v, Trust::Local)?,
        Value::Register(None) => rustler::types::atom::nil().encode(env),
    })
}

fn node_term<'a>(env: Env<'a>, r: &ReplicaId) -> Result<Term<'a>> {
    tc::decode(env, r.as_bytes(), Trust::Local)
}

/// A map from `(key, value)` pairs. Two replica ids of a crafted state may
/// decode to the same term (an integer written as ETF and as INT): that is
/// an invalid state, not a silent overwrite.
fn map_term<'a>(env: Env<'a>, pairs: Vec<(Term<'a>, Term<'a>)>) -> Result<Term<'a>> {
    let (keys, values): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    Term::map_from_term_arrays(env, &keys, &values)
        .map_err(|_| Error::Decode("two replica ids decode to the same term".into()))
}

fn counts_map<'a, 'r, N: Encoder>(
    env: Env<'a>,
    counts: impl IntoIterator<Item = (&'r ReplicaId, N)>,
) -> Result<Term<'a>> {
    let pairs = counts
        .into_iter()
        .map(|(r, n)| Ok((node_term(env, r)?, n.encode(env))))
        .collect::<Result<Vec<_>>>()?;
    map_term(env, pairs)
}

fn causal_context_term<'a>(env: Env<'a>, c: &Crdt) -> Result<Term<'a>> {
    match c {
        Crdt::GCounter(g) => counts_map(env, g.sorted_entries()),
        Crdt::PNCounter(pn) => counts_map(env, pn.causal_context()),
        Crdt::ORSet(s) => {
            let ctx = s.causal_context();
            let vv = ctx
                .vv
                .iter()
                .map(|(r, n)| Ok((node_term(env, r)?, n.encode(env))))
                .collect::<Result<Vec<_>>>()?;
            let cloud = ctx
                .cloud
                .iter()
                .map(|(r, n)| Ok((node_term(env, r)?, *n).encode(env)))
                .collect::<Result<Vec<_>>>()?;
            map_term(
                env,
                vec![
                    (atoms::vv().encode(env), map_term(env, vv)?),
                    (atoms::cloud().encode(env), cloud.encode(env)),
                ],
            )
        }
        Crdt::LwwRegister(r) => match r.entry() {
            None => map_term(env, vec![]),
            Some(e) => map_term(
                env,
                vec![
                    (atoms::timestamp().encode(env), e.ts.wall_ms.encode(env)),
                    (atoms::counter().encode(env), e.ts.counter.encode(env)),
                    (atoms::node_id().encode(env), node_term(env, &e.replica)?),
                ],
            ),
        },
    }
}

// ---- CRDT operations -------------------------------------------------------

fn do_mutate<'a>(
    env: Env<'a>,
    kinds: Term<'a>,
    state: Term<'a>,
    node: Term<'a>,
    op: Term<'a>,
) -> Term<'a> {
    let r = (|| {
        let mut crdt = state_arg(&kinds_arg(kinds)?, state)?;
        let replica = replica_arg(node)?;
        let mut buf = Vec::new();
        let m = match op::parse(op, &mut buf) {
            Ok(m) => m,
            Err(OpError::NotAnOperation) => return Err(Error::UnsupportedOperation),
            Err(OpError::InvalidAmount(n)) => return Ok(Err(n)),
            Err(OpError::Term(e)) => return Err(e),
        };
        let delta = match m.fit(crdt.kind())? {
            // A no-op (a G-Counter increment by n <= 0): the empty delta.
            None => Crdt::empty_delta(crdt.kind()),
            Some(Op::Set(v, _)) => {
                crdt.mutate(&replica, Op::Set(v, Timestamp::ZERO.tick(hlc::now_ms())))?
            }
            Some(o) => match crdt.mutate(&replica, o) {
                Err(Error::Overflow) => return Ok(Err(op::amount_term(op).unwrap_or(op))),
                other => other?,
            },
        };
        Ok(Ok(
            (binary_term(env, &crdt), binary_term(env, &delta)).encode(env)
        ))
    })();
    match r {
        Ok(Ok(t)) => (crate::errors::ok(), t).encode(env),
        Ok(Err(n)) => (crate::errors::error(), (atoms::invalid_amount(), n)).encode(env),
        Err(e) => error_term(env, &e),
    }
}

fn do_merge<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Term<'a> {
    let r = (|| {
        let kinds = kinds_arg(kinds)?;
        let mut a = state_arg(&kinds, a)?;
        a.join(&state_arg(&kinds, b)?)?;
        Ok(binary_term(env, &a))
    })();
    result_term(env, r)
}

fn do_value<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Term<'a> {
    result_term(
        env,
        (|| value_term(env, &state_arg(&kinds_arg(kinds)?, state)?))(),
    )
}

fn do_member<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>, elem: Term<'a>) -> Term<'a> {
    let r = (|| match state_arg(&kinds_arg(kinds)?, state)? {
        Crdt::ORSet(s) => Ok(s.contains(&tc::encode(elem)?).encode(env)),
        _ => Err(Error::UnsupportedOperation),
    })();
    result_term(env, r)
}

fn do_equal<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Term<'a> {
    let r = (|| {
        let kinds = kinds_arg(kinds)?;
        Ok((state_arg(&kinds, a)? == state_arg(&kinds, b)?).encode(env))
    })();
    result_term(env, r)
}

fn do_causal_context<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Term<'a> {
    result_term(
        env,
        (|| causal_context_term(env, &state_arg(&kinds_arg(kinds)?, state)?))(),
    )
}

/// `crdt_new(kind) -> {:ok, state} | {:error, :invalid_argument}`.
#[rustler::nif]
fn crdt_new<'a>(env: Env<'a>, kind: Term<'a>) -> Term<'a> {
    result_term(env, kind_arg(kind).map(|k| binary_term(env, &Crdt::new(k))))
}

/// `crdt_mutate(kinds, state, node_id, op) -> {:ok, {state, delta}} | {:error, reason}`.
#[rustler::nif]
fn crdt_mutate<'a>(
    env: Env<'a>,
    kinds: Term<'a>,
    state: Term<'a>,
    node: Term<'a>,
    op: Term<'a>,
) -> Term<'a> {
    do_mutate(env, kinds, state, node, op)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn crdt_mutate_dirty<'a>(
    env: Env<'a>,
    kinds: Term<'a>,
    state: Term<'a>,
    node: Term<'a>,
    op: Term<'a>,
) -> Term<'a> {
    do_mutate(env, kinds, state, node, op)
}

/// `crdt_merge(kinds, a, b) -> {:ok, state} | {:error, reason}`.
#[rustler::nif]
fn crdt_merge<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Term<'a> {
    do_merge(env, kinds, a, b)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn crdt_merge_dirty<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Term<'a> {
    do_merge(env, kinds, a, b)
}

/// `crdt_value(kinds, state) -> {:ok, integer | [term] | term | nil} | {:error, reason}`.
#[rustler::nif]
fn crdt_value<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Term<'a> {
    do_value(env, kinds, state)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn crdt_value_dirty<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Term<'a> {
    do_value(env, kinds, state)
}

/// `crdt_member(kinds, state, elem) -> {:ok, boolean} | {:error, reason}`.
#[rustler::nif]
fn crdt_member<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>, elem: Term<'a>) -> Term<'a> {
    do_member(env, kinds, state, elem)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn crdt_member_dirty<'a>(
    env: Env<'a>,
    kinds: Term<'a>,
    state: Term<'a>,
    elem: Term<'a>,
) -> Term<'a> {
    do_member(env, kinds, state, elem)
}

/// `crdt_equal(kinds, a, b) -> {:ok, boolean} | {:error, reason}`: equality
/// of replicated state (not of encodings).
#[rustler::nif]
fn crdt_equal<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Term<'a> {
    do_equal(env, kinds, a, b)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn crdt_equal_dirty<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Term<'a> {
    do_equal(env, kinds, a, b)
}

/// `crdt_causal_context(kinds, state) -> {:ok, map} | {:error, reason}`.
#[rustler::nif]
fn crdt_causal_context<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Term<'a> {
    do_causal_context(env, kinds, state)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn crdt_causal_context_dirty<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Term<'a> {
    do_causal_context(env, kinds, state)
}

// ---- HLC -------------------------------------------------------------------

/// `hlc_tick(wall_ms, counter, now_ms) -> {wall_ms, counter} | {:error, reason}`.
#[rustler::nif]
fn hlc_tick<'a>(env: Env<'a>, wall_ms: Term<'a>, counter: Term<'a>, now_ms: Term<'a>) -> Term<'a> {
    let r = (|| timestamp_arg(wall_ms, counter)?.tick_checked(u64_arg(now_ms)?))();
    match r {
        Ok(t) => (t.wall_ms, t.counter).encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// `hlc_receive(l_wall, l_counter, r_wall, r_counter, now_ms, max_offset_ms)
/// -> {:ok, {wall_ms, counter}} | {:error, {:clock_skew, ahead_ms}} | {:error, reason}`.
#[rustler::nif]
fn hlc_receive<'a>(
    env: Env<'a>,
    l_wall: Term<'a>,
    l_counter: Term<'a>,
    r_wall: Term<'a>,
    r_counter: Term<'a>,
    now_ms: Term<'a>,
    max_offset_ms: Term<'a>,
) -> Term<'a> {
    let r = (|| {
        let local = timestamp_arg(l_wall, l_counter)?;
        let remote = timestamp_arg(r_wall, r_counter)?;
        let t = local.receive_checked(remote, u64_arg(now_ms)?, u64_arg(max_offset_ms)?)?;
        Ok((t.wall_ms, t.counter).encode(env))
    })();
    result_term(env, r)
}

/// `hlc_compare(l_wall, l_counter, l_node, r_wall, r_counter, r_node) ->
/// :lt | :eq | :gt | {:error, reason}`: order by timestamp, then by the
/// canonical bytes of the node ids (the LWW-Register's tie-break).
#[rustler::nif]
fn hlc_compare<'a>(
    env: Env<'a>,
    l_wall: Term<'a>,
    l_counter: Term<'a>,
    l_node: Term<'a>,
    r_wall: Term<'a>,
    r_counter: Term<'a>,
    r_node: Term<'a>,
) -> Term<'a> {
    let r = (|| {
        let l = (timestamp_arg(l_wall, l_counter)?, tc::encode(l_node)?);
        let r = (timestamp_arg(r_wall, r_counter)?, tc::encode(r_node)?);
        Ok(l.cmp(&r))
    })();
    match r {
        Ok(Ordering::Less) => atoms::lt().encode(env),
        Ok(Ordering::Equal) => atoms::eq().encode(env),
        Ok(Ordering::Greater) => atoms::gt().encode(env),
        Err(e) => error_term(env, &e),
    }
}

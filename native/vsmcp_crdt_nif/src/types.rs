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

use crate::atoms;
use crate::errors::{answer, NifError};
use crate::op::{self, OpError};
use crate::term::{self as tc, make_binary, Trust};
use rustler::{Binary, Encoder, Env, Term};
use std::cmp::Ordering;
use vsmcp_crdt_core::crdt::split_header;
use vsmcp_crdt_core::hlc::{self, Timestamp};
use vsmcp_crdt_core::{Crdt, Error, Kind, Op, ReplicaId, Result, Value};

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
        Value::Register(None) => atoms::nil().encode(env),
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

/// What the CRDT functions answer: `{:ok, term}` or `{:error, reason}`.
type Reply<'a> = std::result::Result<Term<'a>, NifError<'a>>;

/// `{:ok, {state, delta}}`; `{:error, {:invalid_amount, n}}` for an amount
/// out of range or a counter that would overflow.
fn do_mutate<'a>(
    env: Env<'a>,
    kinds: Term<'a>,
    state: Term<'a>,
    node: Term<'a>,
    op: Term<'a>,
) -> Reply<'a> {
    let invalid_amount = |n: Term<'a>| NifError::Detail((atoms::invalid_amount(), n).encode(env));
    let mut crdt = state_arg(&kinds_arg(kinds)?, state)?;
    let replica = replica_arg(node)?;
    let mut buf = Vec::new();
    let m = match op::parse(op, &mut buf, usize::MAX) {
        Ok(m) => m,
        Err(OpError::NotAnOperation) => return Err(Error::UnsupportedOperation.into()),
        Err(OpError::InvalidAmount(n)) => return Err(invalid_amount(n)),
        Err(OpError::Term(e)) => return Err(e.into()),
    };
    let delta = match m.fit(crdt.kind())? {
        // A no-op (a G-Counter increment by n <= 0): the empty delta.
        None => Crdt::empty_delta(crdt.kind()),
        Some(Op::Set(v, _)) => {
            crdt.mutate(&replica, Op::Set(v, Timestamp::ZERO.tick(hlc::now_ms())))?
        }
        Some(o) => match crdt.mutate(&replica, o) {
            Err(Error::Overflow) => return Err(invalid_amount(op::amount_term(op).unwrap_or(op))),
            other => other?,
        },
    };
    Ok((binary_term(env, &crdt), binary_term(env, &delta)).encode(env))
}

fn do_merge<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Reply<'a> {
    let kinds = kinds_arg(kinds)?;
    let mut a = state_arg(&kinds, a)?;
    a.join(&state_arg(&kinds, b)?)?;
    Ok(binary_term(env, &a))
}

fn do_value<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Reply<'a> {
    Ok(value_term(env, &state_arg(&kinds_arg(kinds)?, state)?)?)
}

fn do_member<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>, elem: Term<'a>) -> Reply<'a> {
    match state_arg(&kinds_arg(kinds)?, state)? {
        Crdt::ORSet(s) => Ok(s.contains(&tc::encode(elem)?).encode(env)),
        _ => Err(Error::UnsupportedOperation.into()),
    }
}

fn do_equal<'a>(env: Env<'a>, kinds: Term<'a>, a: Term<'a>, b: Term<'a>) -> Reply<'a> {
    let kinds = kinds_arg(kinds)?;
    Ok((state_arg(&kinds, a)? == state_arg(&kinds, b)?).encode(env))
}

fn do_causal_context<'a>(env: Env<'a>, kinds: Term<'a>, state: Term<'a>) -> Reply<'a> {
    Ok(causal_context_term(
        env,
        &state_arg(&kinds_arg(kinds)?, state)?,
    )?)
}

/// Two NIFs per CRDT function: `$plain` on a normal scheduler, `$dirty`
/// on a dirty CPU scheduler (Elixir picks it for states above 8 KiB).
macro_rules! twin {
    ($(#[$doc:meta])* $plain:ident, $dirty:ident, $imp:ident, ($($arg:ident),*)) => {
        $(#[$doc])*
        #[rustler::nif]
        fn $plain<'a>(env: Env<'a>, $($arg: Term<'a>),*) -> Reply<'a> {
            $imp(env, $($arg),*)
        }

        #[rustler::nif(schedule = "DirtyCpu")]
        fn $dirty<'a>(env: Env<'a>, $($arg: Term<'a>),*) -> Reply<'a> {
            $imp(env, $($arg),*)
        }
    };
}

/// `crdt_new(kind) -> {:ok, state} | {:error, :invalid_argument}`.
#[rustler::nif]
fn crdt_new<'a>(env: Env<'a>, kind: Term<'a>) -> Reply<'a> {
    Ok(binary_term(env, &Crdt::new(kind_arg(kind)?)))
}

twin!(
    /// `crdt_mutate(kinds, state, node_id, op) -> {:ok, {state, delta}} | {:error, reason}`.
    crdt_mutate,
    crdt_mutate_dirty,
    do_mutate,
    (kinds, state, node, op)
);

twin!(
    /// `crdt_merge(kinds, a, b) -> {:ok, state} | {:error, reason}`.
    crdt_merge,
    crdt_merge_dirty,
    do_merge,
    (kinds, a, b)
);

twin!(
    /// `crdt_value(kinds, state) -> {:ok, integer | [term] | term | nil} | {:error, reason}`.
    crdt_value,
    crdt_value_dirty,
    do_value,
    (kinds, state)
);

twin!(
    /// `crdt_member(kinds, state, elem) -> {:ok, boolean} | {:error, reason}`.
    crdt_member,
    crdt_member_dirty,
    do_member,
    (kinds, state, elem)
);

twin!(
    /// `crdt_equal(kinds, a, b) -> {:ok, boolean} | {:error, reason}`: equality
    /// of replicated state (not of encodings).
    crdt_equal,
    crdt_equal_dirty,
    do_equal,
    (kinds, a, b)
);

twin!(
    /// `crdt_causal_context(kinds, state) -> {:ok, map} | {:error, reason}`.
    crdt_causal_context,
    crdt_causal_context_dirty,
    do_causal_context,
    (kinds, state)
);

// ---- HLC -------------------------------------------------------------------

/// `hlc_tick(wall_ms, counter, now_ms) -> {wall_ms, counter} | {:error, reason}`.
#[rustler::nif]
fn hlc_tick<'a>(env: Env<'a>, wall_ms: Term<'a>, counter: Term<'a>, now_ms: Term<'a>) -> Term<'a> {
    answer(env, || {
        let t = timestamp_arg(wall_ms, counter)?.tick_checked(u64_arg(now_ms)?)?;
        Ok((t.wall_ms, t.counter).encode(env))
    })
}

/// `hlc_receive(l_wall, l_counter, r_wall, r_counter, now_ms, max_offset_ms)
/// -> {:ok, {wall_ms, counter}} | {:error, {:clock_skew, ahead_ms}} | {:error, reason}`.
#[rustler::nif]
fn hlc_receive<'a>(
    l_wall: Term<'a>,
    l_counter: Term<'a>,
    r_wall: Term<'a>,
    r_counter: Term<'a>,
    now_ms: Term<'a>,
    max_offset_ms: Term<'a>,
) -> std::result::Result<(u64, u32), NifError<'a>> {
    let local = timestamp_arg(l_wall, l_counter)?;
    let remote = timestamp_arg(r_wall, r_counter)?;
    let t = local.receive_checked(remote, u64_arg(now_ms)?, u64_arg(max_offset_ms)?)?;
    Ok((t.wall_ms, t.counter))
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
    answer(env, || {
        let l = (timestamp_arg(l_wall, l_counter)?, tc::encode(l_node)?);
        let r = (timestamp_arg(r_wall, r_counter)?, tc::encode(r_node)?);
        let order = match l.cmp(&r) {
            Ordering::Less => atoms::lt(),
            Ordering::Equal => atoms::eq(),
            Ordering::Greater => atoms::gt(),
        };
        Ok(order.encode(env))
    })
}

//! NIFs of `Vsmcp.CRDT.ContextStore` over the store behind a pid or handle
//! (see `handle`).
//!
//! **Scheduling.** Every call that may block has two entry points, made by
//! one macro (`twin!`): the plain one runs on a normal scheduler with
//! `Access::MemoryOnly` and answers `:dirty` when the core says
//! `Error::WouldBlock` (a disk read, a strict WAL write, or O(n) work on an
//! item over `INLINE_BYTES`); Elixir then calls the `_dirty` twin, which
//! runs on a dirty IO scheduler. A mutation that answers `:dirty` has not
//! happened yet, so the twin's reply is the value right after it.

use crate::atoms::{self, atom_map, ok};
use crate::errors::{answer, answer_or_dirty, NifError};
use crate::handle::{self, resolve, with_store, Handle, StoreResource};
use crate::op::{self, OpError};
use crate::options::StoreOptions;
use crate::set_cache::{self, ReplyTo};
use crate::term::{self as tc, Trust};
use crate::value::{kind_atom, value_term};
use rustler::{Atom, Encoder, Env, LocalPid, NifMap, ResourceArc, Term};
use std::time::Duration;
use vsmcp_crdt_core::crdt::{Crdt, Kind};
use vsmcp_crdt_core::error::Error;
use vsmcp_crdt_core::store::{Access, Durability, Mutation, Store, Tier, INLINE_BYTES};

/// Two NIFs per operation: `$plain` on a normal scheduler (memory only),
/// `$dirty` on a dirty IO scheduler (may block). Both resolve the store;
/// `$imp` answers the whole reply (`Ok`) or the error.
macro_rules! twin {
    ($plain:ident, $dirty:ident, $imp:ident, ($($arg:ident),*)) => {
        #[rustler::nif]
        fn $plain<'a>(env: Env<'a>, store: Term<'a>, $($arg: Term<'a>),*) -> Term<'a> {
            #[cfg(feature = "fault-injection")]
            let probe = crate::probe::Probe::start();
            let r = answer_or_dirty(env, || {
                with_store(store, |h| $imp(env, h, $($arg,)* Access::MemoryOnly))?
            });
            #[cfg(feature = "fault-injection")]
            probe.finish(stringify!($plain), || {
                let mut d = String::new();
                $(d.push_str(&format!("{:.200?} ", $arg));)*
                d
            });
            r
        }

        #[rustler::nif(schedule = "DirtyIo")]
        fn $dirty<'a>(env: Env<'a>, store: Term<'a>, $($arg: Term<'a>),*) -> Term<'a> {
            answer_or_dirty(env, || $imp(env, &resolve(store)?, $($arg,)* Access::MayBlock))
        }
    };
}

/// `{:ok, handle}` or `{:error, reason}`; a malformed options map is
/// `badarg` (see `options`).
#[rustler::nif(schedule = "DirtyIo")]
fn store_open<'a>(env: Env<'a>, opts: StoreOptions) -> Result<Term<'a>, NifError<'a>> {
    let StoreOptions(cfg, trust) = opts;
    let store = Store::open(cfg)?;
    Ok(ResourceArc::new(StoreResource { store, trust }).encode(env))
}

/// Register `h` under its owner `pid` and close it when `pid` exits,
/// however it exits.
#[rustler::nif]
fn store_register(env: Env, h: Handle, owner: LocalPid) -> bool {
    handle::register(env, &h, owner)
}

/// Whether a store of this OS process has the directory `path` open.
#[rustler::nif(schedule = "DirtyIo")]
fn store_path_open(path: String) -> bool {
    vsmcp_crdt_core::store::cold::ColdTier::in_use(std::path::Path::new(&path))
}

/// Whether `pid` owns a registered store.
#[rustler::nif]
fn store_registered(pid: LocalPid) -> bool {
    handle::is_registered(&pid)
}

/// Close: write what is pending (retrying up to `deadline_ms`), release
/// RocksDB, drop the registry entry. `:ok` or
/// `{:error, {:unflushed, ids, reason}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn store_close<'a>(env: Env<'a>, h: Handle, deadline_ms: u64) -> Term<'a> {
    handle::unregister(&h);
    answer(env, || {
        h.store.close(Duration::from_millis(deadline_ms))?;
        Ok(ok().encode(env))
    })
}

/// Encoding budget of a term argument: bounded on a normal scheduler.
fn limit(a: Access) -> usize {
    match a {
        Access::MemoryOnly => INLINE_BYTES,
        Access::MayBlock => usize::MAX,
    }
}

fn id_bytes(id: Term, a: Access) -> Result<Vec<u8>, Error> {
    tc::encode_within(id, limit(a))
}

fn kind_of(t: Term) -> Option<Kind> {
    t.atom_to_string().ok().and_then(|s| Kind::from_name(&s))
}

/// A reply of the twins below: `Ok` is the whole reply.
type Reply<'a> = Result<Term<'a>, NifError<'a>>;

fn create_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, kind: Term<'a>, a: Access) -> Reply<'a> {
    let Some(k) = kind_of(kind) else {
        return Err(NifError::Detail((atoms::unknown_type(), kind).encode(env)));
    };
    h.store.create(&id_bytes(id, a)?, k, a)?;
    Ok(ok().encode(env))
}
twin!(store_create, store_create_dirty, create_impl, (id, kind));

/// `{:ok, value}`. `reply_to` (see `set_cache::ReplyTo`): `nil`; `:ask`,
/// to which a large hot set answers `:by_message`; or a reference, with
/// which a large set's reply may be sent as `{reply_to, {:ok, set}}` and
/// `reply_to` answered.
fn get_impl<'a>(
    env: Env<'a>,
    h: &Handle,
    id: Term<'a>,
    reply_to: Term<'a>,
    a: Access,
) -> Reply<'a> {
    let inline = a == Access::MemoryOnly;
    let reply_to = ReplyTo::from_term(reply_to);
    let r = tc::with_scratch(|id_buf, _| {
        tc::encode_append(id, id_buf, limit(a))?;
        h.store.read(id_buf, a, |v| {
            value_term(env, v, None, inline, h.trust, reply_to)
        })
    });
    Ok(r??)
}
twin!(store_get, store_get_dirty, get_impl, (id, reply_to));

fn member_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, elem: Term<'a>, a: Access) -> Reply<'a> {
    let id = id_bytes(id, a)?;
    let e = tc::encode_within(elem, limit(a))?;
    let member = h.store.read(&id, a, |c| match c.crdt {
        Crdt::ORSet(s) => Ok(s.contains(&e)),
        _ => Err(Error::UnsupportedOperation),
    })??;
    Ok((ok(), member).encode(env))
}
twin!(store_member, store_member_dirty, member_impl, (id, elem));

/// `{:unsupported_operation, type, op}`, reading the type with the
/// caller's access (so a normal scheduler never touches the disk).
fn unsupported<'a>(env: Env<'a>, h: &Handle, id: &[u8], op: Term<'a>, a: Access) -> NifError<'a> {
    match h.store.metadata(id, a) {
        Ok((meta, _)) => {
            let kind = kind_atom(env, meta.kind);
            NifError::Detail((atoms::unsupported_operation(), kind, op).encode(env))
        }
        Err(e) => e.into(),
    }
}

fn invalid_amount<'a>(env: Env<'a>, n: Term<'a>) -> NifError<'a> {
    NifError::Detail((atoms::invalid_amount(), n).encode(env))
}

fn update_impl<'a>(
    env: Env<'a>,
    h: &Handle,
    id: Term<'a>,
    op: Term<'a>,
    want_value: Term<'a>,
    a: Access,
) -> Reply<'a> {
    tc::with_scratch(|id_buf, op_buf| update_in(env, h, id, op, want_value, a, id_buf, op_buf))
}

#[allow(clippy::too_many_arguments)]
fn update_in<'a>(
    env: Env<'a>,
    h: &Handle,
    id: Term<'a>,
    op: Term<'a>,
    want_value: Term<'a>,
    a: Access,
    id_buf: &mut Vec<u8>,
    op_buf: &mut Vec<u8>,
) -> Reply<'a> {
    // `false`: answer `:ok`; `true` or a reference (a reply that may be
    // sent, as in `get_impl`): answer the value.
    let reply_to = ReplyTo::from_term(want_value);
    let want_value = want_value.decode::<bool>().unwrap_or(true);
    tc::encode_append(id, id_buf, limit(a))?;
    let id: &[u8] = id_buf;
    let m = match op::parse(op, op_buf, limit(a)) {
        Ok(m) => m,
        Err(OpError::NotAnOperation) => return Err(unsupported(env, h, id, op, a)),
        Err(OpError::InvalidAmount(n)) => return Err(invalid_amount(env, n)),
        Err(OpError::Term(e)) => return Err(e.into()),
    };
    let edited = match m {
        Mutation::Add(e) | Mutation::Remove(e) => Some(e),
        _ => None,
    };
    // The core refuses (`:dirty`) a value reply too large for this
    // scheduler before mutating; once mutated, the reply is built here
    // whatever it costs (answering `:dirty` now would repeat the mutation).
    // A register's new value is the caller's own term when the set took
    // effect (its bytes are the register's now): answered as is, without
    // decoding what was stored.
    let set = match m {
        Mutation::Set(enc) => op.decode::<(Atom, Term)>().ok().map(|(_, t)| (enc, t)),
        _ => None,
    };
    let r = h.store.update_with(id, m, a, want_value, |v| {
        if let (true, Some((enc, term)), Crdt::LwwRegister(r)) = (want_value, set, v.crdt) {
            if r.value() == Some(enc) {
                return Ok((ok(), term).encode(env));
            }
        }
        if want_value {
            value_term(env, v, edited, false, h.trust, reply_to)
        } else {
            if let (Crdt::ORSet(_), Some(ext)) = (v.crdt, v.ext) {
                set_cache::note_update(v.version, ext, edited);
            }
            Ok(ok().encode(env))
        }
    });
    match r.and_then(|t| t) {
        Err(Error::UnsupportedOperation) => Err(unsupported(env, h, id, op, a)),
        Err(Error::Overflow) => match op::amount_term(op) {
            Some(n) => Err(invalid_amount(env, n)),
            None => Err(Error::Overflow.into()),
        },
        other => Ok(other?),
    }
}
twin!(
    store_update,
    store_update_dirty,
    update_impl,
    (id, op, want_value)
);

fn metadata_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, a: Access) -> Reply<'a> {
    let (meta, tier) = h.store.metadata(&id_bytes(id, a)?, a)?;
    let created_by = tc::decode_shown(env, &meta.created_by, h.trust)?;
    let tier = match tier {
        Tier::Hot => atoms::hot(),
        Tier::Warm => atoms::warm(),
        Tier::Cold => atoms::cold(),
    };
    let pairs: [(&str, Term<'a>); 5] = [
        ("type", kind_atom(env, meta.kind).encode(env)),
        ("created_by", created_by),
        ("created_at", meta.created_at.encode(env)),
        ("updated_at", meta.updated_at.encode(env)),
        ("tier", tier.encode(env)),
    ];
    let map = crate::import::annotate_metadata(env, h, &meta, atom_map(env, &pairs));
    Ok((ok(), map).encode(env))
}
twin!(store_metadata, store_metadata_dirty, metadata_impl, (id));

fn delete_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, a: Access) -> Reply<'a> {
    h.store.delete(&id_bytes(id, a)?, a)?;
    Ok(ok().encode(env))
}
twin!(store_delete, store_delete_dirty, delete_impl, (id));

/// All ids. An id that no longer decodes is left out (and the rest listed).
#[rustler::nif(schedule = "DirtyIo")]
fn store_ids<'a>(env: Env<'a>, store: Term<'a>) -> Result<Vec<Term<'a>>, NifError<'a>> {
    let h = resolve(store)?;
    let ids = h.store.ids()?;
    Ok(ids
        .iter()
        .filter_map(|id| tc::decode_shown(env, id, h.trust).ok())
        .collect())
}

/// Approximate heap bytes of `id` in memory (diagnostics).
#[rustler::nif(schedule = "DirtyCpu")]
fn store_heap_bytes<'a>(store: Term<'a>, id: Term<'a>) -> Result<usize, NifError<'a>> {
    let h = resolve(store)?;
    Ok(h.store.heap_bytes(&tc::encode(id)?))
}

/// Elements of `id` holding a remove token, in memory (diagnostics).
#[rustler::nif(schedule = "DirtyCpu")]
fn store_remove_tokens<'a>(store: Term<'a>, id: Term<'a>) -> Result<usize, NifError<'a>> {
    let h = resolve(store)?;
    Ok(h.store.remove_tokens(&tc::encode(id)?))
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_flush<'a>(env: Env<'a>, store: Term<'a>) -> Term<'a> {
    answer_or_dirty(env, || {
        resolve(store)?.store.flush()?;
        Ok(ok().encode(env))
    })
}

#[rustler::nif(schedule = "DirtyCpu")]
fn store_decay<'a>(env: Env<'a>, store: Term<'a>) -> Term<'a> {
    answer(env, || {
        resolve(store)?.store.decay();
        Ok(ok().encode(env))
    })
}

/// The reply of `store_stats` (see `Vsmcp.CRDT.ContextStore.stats/1`).
#[derive(NifMap)]
struct Stats<'a> {
    hot: usize,
    warm: usize,
    cold_estimate: u64,
    pending_writes: usize,
    shards: usize,
    incarnation: u64,
    node_id: Term<'a>,
    hlc: (u64, u32),
    durability: Atom,
    path: String,
    closed: bool,
    write_error: Option<String>,
}

/// A bare map (not `{:ok, map}`), or `{:error, :noproc}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn store_stats<'a>(env: Env<'a>, store: Term<'a>) -> Term<'a> {
    answer(env, || {
        let h = resolve(store)?;
        let s = h.store.stats();
        let clock = h.store.clock();
        let stats = Stats {
            hot: s.hot,
            warm: s.warm,
            cold_estimate: s.cold_estimate,
            pending_writes: s.pending_writes,
            shards: s.shards,
            incarnation: s.incarnation,
            node_id: tc::decode(env, h.store.node_id(), Trust::Local)
                .unwrap_or_else(|_| atoms::nil().encode(env)),
            hlc: (clock.wall_ms, clock.counter),
            durability: match h.store.durability() {
                Durability::Strict => atoms::strict(),
                Durability::Relaxed => atoms::relaxed(),
            },
            path: h.store.path().to_string_lossy().into_owned(),
            closed: h.store.is_closed(),
            write_error: h.store.write_error(),
        };
        Ok(stats.encode(env))
    })
}

/// Test-only (built with the `fault-injection` feature under `MIX_ENV=test`).
#[cfg(feature = "fault-injection")]
#[rustler::nif]
fn store_fail_writes(h: Handle, on: bool) -> Atom {
    h.store.set_fail_writes(on);
    ok()
}

/// Test-only: skew the wall clock every store of this OS process reads by
/// `ms` (negative: behind; 0: the system clock again), to run a node of a
/// multi-node test with a bad clock (see `hlc::set_system_skew_ms`).
#[cfg(feature = "fault-injection")]
#[rustler::nif]
fn store_skew_clock(ms: i64) -> Atom {
    vsmcp_crdt_core::hlc::set_system_skew_ms(ms);
    ok()
}

/// Test-only: the worst normal-scheduler store NIF calls since the last
/// call (see `probe`), as a map of `{microseconds, nif}` pairs.
#[cfg(feature = "fault-injection")]
#[rustler::nif]
fn store_probe_take(env: Env) -> Term {
    let w = crate::probe::take();
    let over: Vec<(u64, &str, &str)> = w
        .over
        .iter()
        .map(|(c, n, a)| (*c, *n, a.as_str()))
        .collect();
    let pairs: [(&str, Term); 6] = [
        ("over", over.encode(env)),
        ("calls", w.calls.encode(env)),
        ("wall", (w.wall.0, w.wall.1, w.wall.2).encode(env)),
        ("cpu", (w.cpu.0, w.cpu.1, w.cpu.2.as_str()).encode(env)),
        ("blocked", (w.blocked.0, w.blocked.1).encode(env)),
        ("preempted", (w.preempted.0, w.preempted.1).encode(env)),
    ];
    atom_map(env, &pairs)
}

/// Test-only: the cached value of a hot set `id` (see `set_cache`):
/// `{:ok, nil}` or `{:ok, %{len: keys, pending: n, edits: n}}`. Reading it
/// counts as an access.
#[cfg(feature = "fault-injection")]
#[rustler::nif(schedule = "DirtyIo")]
fn store_value_cache<'a>(env: Env<'a>, store: Term<'a>, id: Term<'a>) -> Term<'a> {
    answer_or_dirty(env, || {
        let h = resolve(store)?;
        let id = id_bytes(id, Access::MayBlock)?;
        let cache = h.store.read(&id, Access::MayBlock, |v| {
            v.ext
                .and_then(set_cache::describe)
                .map(|(len, pending, edits)| {
                    let pairs: [(&str, Term<'a>); 3] = [
                        ("len", len.encode(env)),
                        ("pending", pending.encode(env)),
                        ("edits", edits.encode(env)),
                    ];
                    atom_map(env, &pairs)
                })
        })?;
        Ok((ok(), cache).encode(env))
    })
}

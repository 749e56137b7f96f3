//! NIFs of `Vsmcp.CRDT.ContextStore`: a `StoreResource` wraps
//! `vsmcp_crdt_core::store::Store`.
//!
//! Scheduling: every call that may touch the disk has two entry points.
//! The plain one runs on a normal scheduler with `Access::MemoryOnly` and
//! answers `:dirty` when it would need the disk (a cold id, or any write in
//! strict durability); the Elixir side then calls the `_dirty` twin, which
//! runs on a dirty IO scheduler. Values too large to build in about a
//! millisecond (sets over `MAX_INLINE_ELEMENTS`) also answer `:dirty`.
//!
//! The resource monitors the store's owner process: if it dies without
//! closing the store (e.g. `Process.exit(pid, :kill)`), pending writes are
//! flushed and the RocksDB handle is released on a background thread.

use crate::errors::{error_term, ok};
use crate::term::{self as tc, Trust};
use rustler::types::map::map_new;
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, NifResult, Resource, ResourceArc, Term};
use std::path::PathBuf;
use vsmcp_crdt_core::crdt::{Crdt, Kind, Value};
use vsmcp_crdt_core::error::Error;
use vsmcp_crdt_core::store::{Access, Durability, Mutation, Store, StoreConfig};

/// Largest set whose value is built on a normal scheduler.
const MAX_INLINE_ELEMENTS: usize = 2_000;

rustler::atoms! {
    dirty,
    unknown_type,
    value,
    not_found,
    unsupported_operation,
    increment,
    decrement,
    add,
    remove,
    set,
    relaxed,
    strict,
    nil,
    hot,
    warm,
    cold,
}

pub struct StoreResource {
    store: Store,
}

#[rustler::resource_impl]
impl Resource for StoreResource {
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        let store = self.store.clone();
        // Closing flushes to disk: not on a scheduler thread.
        let _ = std::thread::Builder::new()
            .name("vsmcp-crdt-close".into())
            .spawn(move || store.close());
    }
}

type Handle = ResourceArc<StoreResource>;

fn get<'a, T: rustler::Decoder<'a>>(map: Term<'a>, key: &str) -> NifResult<Option<T>> {
    let k = Atom::from_str(map.get_env(), key)?;
    match map.map_get(k) {
        Ok(v) => v.decode().map(Some),
        Err(_) => Ok(None),
    }
}

fn config_from(map: Term) -> NifResult<StoreConfig> {
    let path: String = get(map, "path")?.ok_or(rustler::Error::BadArg)?;
    let node: Term = get(map, "node_id")?.ok_or(rustler::Error::BadArg)?;
    let node_bytes = tc::encode(node).map_err(|_| rustler::Error::BadArg)?;
    let mut cfg = StoreConfig::new(PathBuf::from(path), &node_bytes);
    if let Some(v) = get(map, "ephemeral")? {
        cfg.ephemeral = v;
    }
    if let Some(v) = get::<usize>(map, "memory_limit")? {
        cfg.memory_limit = v.max(1);
    }
    if let Some(v) = get::<usize>(map, "ets_limit")? {
        cfg.ets_limit = v;
    }
    if let Some(v) = get::<u32>(map, "access_threshold")? {
        cfg.access_threshold = v.max(1);
    }
    if let Some(v) = get::<u64>(map, "flush_interval")? {
        cfg.flush_interval_ms = v.max(1);
    }
    if let Some(v) = get::<usize>(map, "max_value_bytes")? {
        cfg.max_value_bytes = v;
    }
    if let Some(v) = get::<u64>(map, "max_clock_offset")? {
        cfg.max_clock_offset_ms = v;
    }
    if let Some(v) = get::<usize>(map, "cache_bytes")? {
        cfg.cache_bytes = v;
    }
    if let Some(d) = get::<Atom>(map, "durability")? {
        cfg.durability = if d == strict() {
            Durability::Strict
        } else if d == relaxed() {
            Durability::Relaxed
        } else {
            return Err(rustler::Error::BadArg);
        };
    }
    Ok(cfg)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_open<'a>(env: Env<'a>, opts: Term<'a>) -> NifResult<Term<'a>> {
    let cfg = config_from(opts)?;
    Ok(match Store::open(cfg) {
        Ok(store) => (ok(), ResourceArc::new(StoreResource { store })).encode(env),
        Err(e) => error_term(env, &e),
    })
}

/// Close the store when `owner` exits, however it exits.
#[rustler::nif]
fn store_monitor(env: Env, h: Handle, owner: LocalPid) -> bool {
    h.monitor(Some(env), &owner).is_some()
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_close(h: Handle) -> Atom {
    h.store.close();
    ok()
}

fn id_bytes(id: Term) -> Result<Vec<u8>, Error> {
    tc::encode(id)
}

/// Run `f` and map `Ok(None)` to `:dirty`, `Ok(Some(t))` to `t`, errors to
/// `{:error, reason}`.
fn reply<'a>(env: Env<'a>, r: Result<Option<Term<'a>>, Error>) -> Term<'a> {
    match r {
        Ok(Some(t)) => t,
        Ok(None) => dirty().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// The Elixir name of a kind (`:g_counter`, ...): a fixed set of atoms.
fn kind_atom(env: Env, kind: Kind) -> Atom {
    Atom::from_str(env, kind.name()).unwrap_or_else(|_| nil())
}

fn kind_of(t: Term) -> Option<Kind> {
    t.atom_to_string().ok().and_then(|s| Kind::from_name(&s))
}

fn create_impl<'a>(
    env: Env<'a>,
    h: Handle,
    id: Term<'a>,
    kind: Term<'a>,
    access: Access,
) -> Term<'a> {
    let Some(kind) = kind_of(kind) else {
        return (crate::errors::error(), (unknown_type(), kind)).encode(env);
    };
    let r = id_bytes(id).and_then(|id| h.store.create(&id, kind, access));
    reply(env, r.map(|o| o.map(|()| ok().encode(env))))
}

#[rustler::nif]
fn store_create<'a>(env: Env<'a>, h: Handle, id: Term<'a>, kind: Term<'a>) -> Term<'a> {
    create_impl(env, h, id, kind, Access::MemoryOnly)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_create_dirty<'a>(env: Env<'a>, h: Handle, id: Term<'a>, kind: Term<'a>) -> Term<'a> {
    create_impl(env, h, id, kind, Access::MayUseDisk)
}

/// `{:ok, value}` of a CRDT, or `None` when too large for this scheduler.
fn value_term<'a>(env: Env<'a>, c: &Crdt, inline_only: bool) -> Option<Term<'a>> {
    Some(match c.value() {
        Value::Counter(n) => (ok(), n).encode(env),
        Value::Register(None) => (ok(), nil()).encode(env),
        Value::Register(Some(b)) => match tc::decode(env, b, Trust::Local) {
            Ok(t) => (ok(), t).encode(env),
            Err(e) => error_term(env, &e),
        },
        Value::Set(elems) => {
            if inline_only && elems.len() > MAX_INLINE_ELEMENTS {
                return None;
            }
            let mut out = Vec::with_capacity(elems.len());
            for b in elems {
                match tc::decode(env, b, Trust::Local) {
                    Ok(t) => out.push(t),
                    Err(e) => return Some(error_term(env, &e)),
                }
            }
            (ok(), (crate::errors::set_tag(), out)).encode(env)
        }
    })
}

fn get_impl<'a>(env: Env<'a>, h: Handle, id: Term<'a>, access: Access) -> Term<'a> {
    let inline = access == Access::MemoryOnly;
    let r = id_bytes(id).and_then(|id| h.store.read(&id, access, |c| value_term(env, c, inline)));
    reply(env, r.map(Option::flatten))
}

#[rustler::nif]
fn store_get<'a>(env: Env<'a>, h: Handle, id: Term<'a>) -> Term<'a> {
    get_impl(env, h, id, Access::MemoryOnly)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_get_dirty<'a>(env: Env<'a>, h: Handle, id: Term<'a>) -> Term<'a> {
    get_impl(env, h, id, Access::MayUseDisk)
}

fn member_impl<'a>(
    env: Env<'a>,
    h: Handle,
    id: Term<'a>,
    elem: Term<'a>,
    access: Access,
) -> Term<'a> {
    let r = id_bytes(id).and_then(|id| {
        let e = tc::encode(elem)?;
        h.store.read(&id, access, |c| match c {
            Crdt::ORSet(s) => Ok(s.contains(&e)),
            _ => Err(Error::UnsupportedOperation),
        })
    });
    match r {
        Ok(Some(Ok(b))) => (ok(), b).encode(env),
        Ok(Some(Err(e))) | Err(e) => error_term(env, &e),
        Ok(None) => dirty().encode(env),
    }
}

#[rustler::nif]
fn store_member<'a>(env: Env<'a>, h: Handle, id: Term<'a>, elem: Term<'a>) -> Term<'a> {
    member_impl(env, h, id, elem, Access::MemoryOnly)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_member_dirty<'a>(env: Env<'a>, h: Handle, id: Term<'a>, elem: Term<'a>) -> Term<'a> {
    member_impl(env, h, id, elem, Access::MayUseDisk)
}

/// Parse `{:increment, n}` etc. `Ok(None)`: not an operation of any type.
fn parse_op<'b>(op: Term<'_>, buf: &'b mut Vec<u8>) -> Result<Option<Mutation<'b>>, Error> {
    let Ok((tag, arg)) = op.decode::<(Atom, Term)>() else {
        return Ok(None);
    };
    let int = |t: Term| -> Result<i128, Error> {
        t.decode::<i128>().map_err(|_| {
            if t.is_integer() {
                Error::Overflow
            } else {
                Error::InvalidArgument("amount must be an integer")
            }
        })
    };
    Ok(Some(if tag == increment() {
        Mutation::Increment(int(arg)?)
    } else if tag == decrement() {
        Mutation::Decrement(int(arg)?)
    } else if tag == add() || tag == remove() || tag == set() {
        *buf = tc::encode(arg)?;
        let b: &'b [u8] = buf.as_slice();
        if tag == add() {
            Mutation::Add(b)
        } else if tag == remove() {
            Mutation::Remove(b)
        } else {
            Mutation::Set(b)
        }
    } else {
        return Ok(None);
    }))
}

fn unsupported<'a>(env: Env<'a>, h: &Handle, id: &[u8], op: Term<'a>) -> Term<'a> {
    match h.store.metadata(id, Access::MayUseDisk) {
        Ok(Some((meta, _))) => {
            let kind = kind_atom(env, meta.kind);
            (crate::errors::error(), (unsupported_operation(), kind, op)).encode(env)
        }
        Ok(None) | Err(Error::NotFound) => (crate::errors::error(), not_found()).encode(env),
        Err(e) => error_term(env, &e),
    }
}

fn update_impl<'a>(
    env: Env<'a>,
    h: Handle,
    id: Term<'a>,
    op: Term<'a>,
    want_value: bool,
    access: Access,
) -> Term<'a> {
    let id = match id_bytes(id) {
        Ok(id) => id,
        Err(e) => return error_term(env, &e),
    };
    let mut buf = Vec::new();
    let m = match parse_op(op, &mut buf) {
        Ok(Some(m)) => m,
        Ok(None) => return unsupported(env, &h, &id, op),
        Err(e) => return error_term(env, &e),
    };
    let inline = access == Access::MemoryOnly;
    let r = h.store.update(&id, m, access, |c| {
        if want_value {
            value_term(env, c, inline)
        } else {
            Some(ok().encode(env))
        }
    });
    match r {
        Err(Error::UnsupportedOperation) => unsupported(env, &h, &id, op),
        // Too large to build here: the mutation is done, fetch the value
        // from the dirty scheduler.
        Ok(Some(None)) => (dirty(), value()).encode(env),
        other => reply(env, other.map(Option::flatten)),
    }
}

#[rustler::nif]
fn store_update<'a>(
    env: Env<'a>,
    h: Handle,
    id: Term<'a>,
    op: Term<'a>,
    want_value: bool,
) -> Term<'a> {
    update_impl(env, h, id, op, want_value, Access::MemoryOnly)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_update_dirty<'a>(
    env: Env<'a>,
    h: Handle,
    id: Term<'a>,
    op: Term<'a>,
    want_value: bool,
) -> Term<'a> {
    update_impl(env, h, id, op, want_value, Access::MayUseDisk)
}

fn metadata_impl<'a>(env: Env<'a>, h: Handle, id: Term<'a>, access: Access) -> Term<'a> {
    let r = id_bytes(id).and_then(|id| h.store.metadata(&id, access));
    let r = r.and_then(|o| {
        o.map(|(meta, tier)| -> Result<Term<'a>, Error> {
            let created_by = tc::decode(env, &meta.created_by, Trust::Local)?;
            let tier = match tier {
                vsmcp_crdt_core::store::Tier::Hot => hot(),
                vsmcp_crdt_core::store::Tier::Warm => warm(),
                vsmcp_crdt_core::store::Tier::Cold => cold(),
            };
            let kind = kind_atom(env, meta.kind);
            let pairs: [(&str, Term<'a>); 5] = [
                ("type", kind.encode(env)),
                ("created_by", created_by),
                ("created_at", meta.created_at.encode(env)),
                ("updated_at", meta.updated_at.encode(env)),
                ("tier", tier.encode(env)),
            ];
            let mut map = map_new(env);
            for (k, v) in pairs {
                let key = Atom::from_str(env, k).map_err(|_| Error::InvalidArgument("atom"))?;
                map = map
                    .map_put(key, v)
                    .map_err(|_| Error::InvalidArgument("map"))?;
            }
            Ok((ok(), map).encode(env))
        })
        .transpose()
    });
    reply(env, r)
}

#[rustler::nif]
fn store_metadata<'a>(env: Env<'a>, h: Handle, id: Term<'a>) -> Term<'a> {
    metadata_impl(env, h, id, Access::MemoryOnly)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_metadata_dirty<'a>(env: Env<'a>, h: Handle, id: Term<'a>) -> Term<'a> {
    metadata_impl(env, h, id, Access::MayUseDisk)
}

fn delete_impl<'a>(env: Env<'a>, h: Handle, id: Term<'a>, access: Access) -> Term<'a> {
    let r = id_bytes(id).and_then(|id| h.store.delete(&id, access));
    reply(env, r.map(|o| o.map(|()| ok().encode(env))))
}

#[rustler::nif]
fn store_delete<'a>(env: Env<'a>, h: Handle, id: Term<'a>) -> Term<'a> {
    delete_impl(env, h, id, Access::MemoryOnly)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_delete_dirty<'a>(env: Env<'a>, h: Handle, id: Term<'a>) -> Term<'a> {
    delete_impl(env, h, id, Access::MayUseDisk)
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_ids<'a>(env: Env<'a>, h: Handle) -> Term<'a> {
    match h.store.ids() {
        Ok(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match tc::decode(env, &id, Trust::Local) {
                    Ok(t) => out.push(t),
                    Err(e) => return error_term(env, &e),
                }
            }
            (ok(), out).encode(env)
        }
        Err(e) => error_term(env, &e),
    }
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_flush<'a>(env: Env<'a>, h: Handle) -> Term<'a> {
    match h.store.flush() {
        Ok(()) => ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

#[rustler::nif(schedule = "DirtyCpu")]
fn store_decay(h: Handle) -> Atom {
    h.store.decay();
    ok()
}

#[rustler::nif]
fn store_stats<'a>(env: Env<'a>, h: Handle) -> NifResult<Term<'a>> {
    let s = h.store.stats();
    let node =
        tc::decode(env, h.store.node_id(), Trust::Local).unwrap_or_else(|_| nil().encode(env));
    let clock = h.store.clock();
    let durability = match h.store.durability() {
        Durability::Strict => strict(),
        Durability::Relaxed => relaxed(),
    };
    let pairs: Vec<(&str, Term<'a>)> = vec![
        ("hot", s.hot.encode(env)),
        ("warm", s.warm.encode(env)),
        ("cold_estimate", s.cold_estimate.encode(env)),
        ("pending_writes", s.pending_writes.encode(env)),
        ("shards", s.shards.encode(env)),
        ("incarnation", s.incarnation.encode(env)),
        ("node_id", node),
        ("hlc", (clock.wall_ms, clock.counter).encode(env)),
        ("durability", durability.encode(env)),
        ("path", h.store.path().to_string_lossy().encode(env)),
        ("closed", h.store.is_closed().encode(env)),
        ("write_error", h.store.write_error().encode(env)),
    ];
    let mut map = map_new(env);
    for (k, v) in pairs {
        map = map.map_put(Atom::from_str(env, k)?, v)?;
    }
    Ok(map)
}

#[rustler::nif]
fn store_fail_writes(h: Handle, on: bool) -> Atom {
    h.store.set_fail_writes(on);
    ok()
}

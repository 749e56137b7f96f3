//! NIFs of `Vsmcp.CRDT.ContextStore`: a `StoreResource` wraps
//! `vsmcp_crdt_core::store::Store`.
//!
//! **Scheduling.** Every call that may block has two entry points, made by
//! one macro (`twin!`): the plain one runs on a normal scheduler with
//! `Access::MemoryOnly` and answers `:dirty` when the core says
//! `Error::WouldBlock` (a disk read, a strict WAL write, or O(n) work on an
//! item over `INLINE_BYTES`); Elixir then calls the `_dirty` twin, which
//! runs on a dirty IO scheduler. A mutation that answers `:dirty` has not
//! happened yet, so the twin's reply is the value right after it.
//!
//! **Handles.** Stores are found by their owner's pid in a registry here
//! (`store_register/2`): a lookup is a read lock and a hash probe, and
//! starting or stopping a store costs nothing VM-wide (a
//! `:persistent_term` erase makes every process scan its heap). Every NIF
//! takes the pid (or the handle itself).
//!
//! **Lifecycle.** The resource monitors the owner: if it dies without
//! closing the store (`Process.exit(pid, :kill)`), the entry goes and the
//! store is closed on a background thread. A handle dropped unclosed is
//! closed on a background thread too, never on the scheduler that
//! collected it.

use crate::errors::{error, error_term, ok};
use crate::op::{self, OpError};
use crate::set_cache;
use crate::term::{self as tc, Trust};
use crate::value::{kind_atom, value_term};
use parking_lot::RwLock;
use rustler::types::map::map_new;
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, NifResult, Resource, ResourceArc, Term};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use vsmcp_crdt_core::crdt::{Crdt, Kind};
use vsmcp_crdt_core::error::Error;
use vsmcp_crdt_core::store::{
    Access, Durability, Mutation, Store, StoreConfig, Tier, INLINE_BYTES,
};

rustler::atoms! {
    dirty,
    noproc,
    unknown_type,
    not_found,
    unsupported_operation,
    invalid_amount,
    unflushed,
    relaxed,
    strict,
    nil,
    hot,
    warm,
    cold,
}

pub struct StoreResource {
    pub(crate) store: Store,
}

impl Drop for StoreResource {
    fn drop(&mut self) {
        if !self.store.is_closed() {
            close_in_background(self.store.clone());
        }
    }
}

fn close_in_background(store: Store) {
    let _ = std::thread::Builder::new()
        .name("vsmcp-crdt-close".into())
        .spawn(move || {
            let _ = store.close(Duration::from_secs(5));
        });
}

#[rustler::resource_impl]
impl Resource for StoreResource {
    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _mon: Monitor) {
        registry().write().remove(&pid);
        // Closing flushes to disk: not on a scheduler thread.
        close_in_background(self.store.clone());
    }
}

type Handle = ResourceArc<StoreResource>;

fn registry() -> &'static RwLock<HashMap<LocalPid, Handle>> {
    static REG: OnceLock<RwLock<HashMap<LocalPid, Handle>>> = OnceLock::new();
    REG.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Call `f` with the store behind `t` (a registered owner pid, or a
/// handle) without touching the resource's reference count: the registry's
/// read lock is held for the call. Only for calls of microseconds (normal
/// schedulers): registering a store waits for it.
fn with_store<R>(t: Term, f: impl FnOnce(&Handle) -> R) -> Result<R, Atom> {
    if let Ok(pid) = t.decode::<LocalPid>() {
        let reg = registry().read();
        return reg.get(&pid).map(f).ok_or_else(noproc);
    }
    t.decode::<Handle>().map(|h| f(&h)).map_err(|_| noproc())
}

/// The store behind `t`: a registered owner pid, or a handle.
pub(crate) fn resolve(t: Term) -> Result<Handle, Atom> {
    if let Ok(pid) = t.decode::<LocalPid>() {
        return registry().read().get(&pid).cloned().ok_or_else(noproc);
    }
    t.decode::<Handle>().map_err(|_| noproc())
}

pub(crate) fn get<'a, T: rustler::Decoder<'a>>(map: Term<'a>, key: &str) -> NifResult<Option<T>> {
    let k = Atom::from_str(map.get_env(), key)?;
    match map.map_get(k) {
        Ok(v) => v.decode().map(Some),
        Err(_) => Ok(None),
    }
}

/// The core configuration from the map `Vsmcp.CRDT.ContextStore.Options`
/// builds (already range-checked there; a bad value here is `badarg`).
fn config_from(map: Term) -> NifResult<StoreConfig> {
    let path: String = get(map, "path")?.ok_or(rustler::Error::BadArg)?;
    let node: Term = get(map, "node_id")?.ok_or(rustler::Error::BadArg)?;
    let node_bytes = tc::encode(node).map_err(|_| rustler::Error::BadArg)?;
    let mut cfg = StoreConfig::new(PathBuf::from(path), &node_bytes);
    if let Some(v) = get(map, "ephemeral")? {
        cfg.ephemeral = v;
    }
    // The legacy names of the replaced ETS/DETS tiers, translated here.
    if let Some(v) = get::<usize>(map, "memory_limit")? {
        cfg.hot_limit = v.max(1);
    }
    if let Some(v) = get::<usize>(map, "ets_limit")? {
        cfg.warm_limit = v;
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

/// Map a core result to a reply: `Error::WouldBlock` is `:dirty`.
fn reply<'a>(env: Env<'a>, r: Result<Term<'a>, Error>) -> Term<'a> {
    match r {
        Ok(t) => t,
        Err(Error::WouldBlock) => dirty().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Two NIFs per operation: `$plain` on a normal scheduler (memory only),
/// `$dirty` on a dirty IO scheduler (may block). Both resolve the store.
macro_rules! twin {
    ($plain:ident, $dirty:ident, $imp:ident, ($($arg:ident),*)) => {
        #[rustler::nif]
        fn $plain<'a>(env: Env<'a>, store: Term<'a>, $($arg: Term<'a>),*) -> Term<'a> {
            #[cfg(feature = "fault-injection")]
            let probe = crate::probe::Probe::start();
            let r = with_store(store, |h| $imp(env, h, $($arg,)* Access::MemoryOnly))
                .unwrap_or_else(|reason| (error(), reason).encode(env));
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
            match resolve(store) {
                Ok(h) => $imp(env, &h, $($arg,)* Access::MayBlock),
                Err(reason) => (error(), reason).encode(env),
            }
        }
    };
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_open<'a>(env: Env<'a>, opts: Term<'a>) -> NifResult<Term<'a>> {
    let cfg = config_from(opts)?;
    Ok(match Store::open(cfg) {
        Ok(store) => (ok(), ResourceArc::new(StoreResource { store })).encode(env),
        Err(e) => error_term(env, &e),
    })
}

/// Register `h` under its owner `pid` and close it when `pid` exits,
/// however it exits.
#[rustler::nif]
fn store_register(env: Env, h: Handle, owner: LocalPid) -> bool {
    registry().write().insert(owner, h.clone());
    let monitored = h.monitor(Some(env), &owner).is_some();
    if !monitored {
        // The owner is already gone: nothing would ever remove the entry.
        registry().write().remove(&owner);
    }
    monitored
}

/// Whether a store of this OS process has the directory `path` open.
#[rustler::nif(schedule = "DirtyIo")]
fn store_path_open(path: String) -> bool {
    vsmcp_crdt_core::store::cold::ColdTier::in_use(std::path::Path::new(&path))
}

/// Whether `pid` owns a registered store.
#[rustler::nif]
fn store_registered(pid: LocalPid) -> bool {
    registry().read().contains_key(&pid)
}

/// Close: write what is pending (retrying up to `deadline_ms`), release
/// RocksDB, drop the registry entry. `:ok` or
/// `{:error, {:unflushed, ids, reason}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn store_close<'a>(env: Env<'a>, h: Handle, deadline_ms: u64) -> Term<'a> {
    registry()
        .write()
        .retain(|_, v| !std::ptr::eq::<StoreResource>(&**v, &*h));
    match h.store.close(Duration::from_millis(deadline_ms)) {
        Ok(()) => ok().encode(env),
        Err(Error::Unflushed { ids, reason }) => {
            (error(), (unflushed(), ids, reason.as_str())).encode(env)
        }
        Err(e) => error_term(env, &e),
    }
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

fn create_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, kind: Term<'a>, a: Access) -> Term<'a> {
    let Some(k) = kind_of(kind) else {
        return (error(), (unknown_type(), kind)).encode(env);
    };
    let r = id_bytes(id, a).and_then(|id| h.store.create(&id, k, a));
    reply(env, r.map(|()| ok().encode(env)))
}
twin!(store_create, store_create_dirty, create_impl, (id, kind));

fn get_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, a: Access) -> Term<'a> {
    let inline = a == Access::MemoryOnly;
    let r = tc::with_scratch(|id_buf, _| {
        tc::encode_append(id, id_buf, limit(a))?;
        h.store
            .read(id_buf, a, |v| value_term(env, v, None, inline))
    });
    reply(env, r.and_then(|t| t))
}
twin!(store_get, store_get_dirty, get_impl, (id));

fn member_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, elem: Term<'a>, a: Access) -> Term<'a> {
    let r = id_bytes(id, a).and_then(|id| {
        let e = tc::encode_within(elem, limit(a))?;
        h.store.read(&id, a, |c| match c.crdt {
            Crdt::ORSet(s) => Ok(s.contains(&e)),
            _ => Err(Error::UnsupportedOperation),
        })
    });
    reply(env, r.and_then(|r| r).map(|b| (ok(), b).encode(env)))
}
twin!(store_member, store_member_dirty, member_impl, (id, elem));

/// `{:error, {:unsupported_operation, type, op}}`, reading the type with
/// the caller's access (so a normal scheduler never touches the disk).
fn unsupported<'a>(env: Env<'a>, h: &Handle, id: &[u8], op: Term<'a>, a: Access) -> Term<'a> {
    let r = h.store.metadata(id, a).map(|(meta, _)| {
        let kind = kind_atom(env, meta.kind);
        (error(), (unsupported_operation(), kind, op)).encode(env)
    });
    reply(env, r)
}

fn update_impl<'a>(
    env: Env<'a>,
    h: &Handle,
    id: Term<'a>,
    op: Term<'a>,
    want_value: Term<'a>,
    a: Access,
) -> Term<'a> {
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
) -> Term<'a> {
    let want_value = want_value.decode::<bool>().unwrap_or(true);
    if let Err(e) = tc::encode_append(id, id_buf, limit(a)) {
        return reply(env, Err(e));
    }
    let id: &[u8] = id_buf;
    let m = match op::parse(op, op_buf, limit(a)) {
        Ok(m) => m,
        Err(OpError::NotAnOperation) => return unsupported(env, h, id, op, a),
        Err(OpError::InvalidAmount(n)) => return (error(), (invalid_amount(), n)).encode(env),
        Err(OpError::Term(e)) => return reply(env, Err(e)),
    };
    let edited = match m {
        Mutation::Add(e) | Mutation::Remove(e) => Some(e),
        _ => None,
    };
    // The core refuses (`:dirty`) a value reply too large for this
    // scheduler before mutating; once mutated, the reply is built here
    // whatever it costs (answering `:dirty` now would repeat the mutation).
    let r = h.store.update_with(id, m, a, want_value, |v| {
        if want_value {
            value_term(env, v, edited, false)
        } else {
            if let (Crdt::ORSet(_), Some(ext)) = (v.crdt, v.ext) {
                set_cache::note_update(v.version, ext, edited);
            }
            Ok(ok().encode(env))
        }
    });
    match r.and_then(|t| t) {
        Err(Error::UnsupportedOperation) => unsupported(env, h, id, op, a),
        Err(Error::Overflow) => match op::amount_term(op) {
            Some(n) => (error(), (invalid_amount(), n)).encode(env),
            None => error_term(env, &Error::Overflow),
        },
        other => reply(env, other),
    }
}
twin!(
    store_update,
    store_update_dirty,
    update_impl,
    (id, op, want_value)
);

fn metadata_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, a: Access) -> Term<'a> {
    let r = id_bytes(id, a)
        .and_then(|id| h.store.metadata(&id, a))
        .and_then(|(meta, tier)| {
            let created_by = tc::decode(env, &meta.created_by, Trust::Local)?;
            let tier = match tier {
                Tier::Hot => hot(),
                Tier::Warm => warm(),
                Tier::Cold => cold(),
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
        });
    reply(env, r)
}
twin!(store_metadata, store_metadata_dirty, metadata_impl, (id));

/// A map with atom keys from a fixed list of names.
fn atom_map<'a>(env: Env<'a>, pairs: &[(&str, Term<'a>)]) -> Term<'a> {
    let mut map = map_new(env);
    for (k, v) in pairs {
        if let Ok(key) = Atom::from_str(env, k) {
            map = map.map_put(key, *v).unwrap_or(map);
        }
    }
    map
}

fn delete_impl<'a>(env: Env<'a>, h: &Handle, id: Term<'a>, a: Access) -> Term<'a> {
    let r = id_bytes(id, a).and_then(|id| h.store.delete(&id, a));
    reply(env, r.map(|()| ok().encode(env)))
}
twin!(store_delete, store_delete_dirty, delete_impl, (id));

/// All ids. An id that no longer decodes is left out (and the rest listed).
#[rustler::nif(schedule = "DirtyIo")]
fn store_ids<'a>(env: Env<'a>, store: Term<'a>) -> Term<'a> {
    let h = match resolve(store) {
        Ok(h) => h,
        Err(reason) => return (error(), reason).encode(env),
    };
    match h.store.ids() {
        Ok(ids) => {
            let out: Vec<Term<'a>> = ids
                .iter()
                .filter_map(|id| tc::decode(env, id, Trust::Local).ok())
                .collect();
            (ok(), out).encode(env)
        }
        Err(e) => error_term(env, &e),
    }
}

/// Approximate heap bytes of `id` in memory (diagnostics).
#[rustler::nif(schedule = "DirtyCpu")]
fn store_heap_bytes<'a>(env: Env<'a>, store: Term<'a>, id: Term<'a>) -> Term<'a> {
    let h = match resolve(store) {
        Ok(h) => h,
        Err(reason) => return (error(), reason).encode(env),
    };
    match tc::encode(id) {
        Ok(id) => (ok(), h.store.heap_bytes(&id)).encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Elements of `id` holding a remove token, in memory (diagnostics).
#[rustler::nif(schedule = "DirtyCpu")]
fn store_remove_tokens<'a>(env: Env<'a>, store: Term<'a>, id: Term<'a>) -> Term<'a> {
    let h = match resolve(store) {
        Ok(h) => h,
        Err(reason) => return (error(), reason).encode(env),
    };
    match tc::encode(id) {
        Ok(id) => (ok(), h.store.remove_tokens(&id)).encode(env),
        Err(e) => error_term(env, &e),
    }
}

#[rustler::nif(schedule = "DirtyIo")]
fn store_flush<'a>(env: Env<'a>, store: Term<'a>) -> Term<'a> {
    let r = resolve(store)
        .map_err(|reason| (error(), reason).encode(env))
        .map(|h| reply(env, h.store.flush().map(|()| ok().encode(env))));
    r.unwrap_or_else(|e| e)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn store_decay<'a>(env: Env<'a>, store: Term<'a>) -> Term<'a> {
    match resolve(store) {
        Ok(h) => {
            h.store.decay();
            ok().encode(env)
        }
        Err(reason) => (error(), reason).encode(env),
    }
}

#[rustler::nif(schedule = "DirtyCpu")]
fn store_stats<'a>(env: Env<'a>, store: Term<'a>) -> Term<'a> {
    let h = match resolve(store) {
        Ok(h) => h,
        Err(reason) => return (error(), reason).encode(env),
    };
    let s = h.store.stats();
    let node =
        tc::decode(env, h.store.node_id(), Trust::Local).unwrap_or_else(|_| nil().encode(env));
    let clock = h.store.clock();
    let durability = match h.store.durability() {
        Durability::Strict => strict(),
        Durability::Relaxed => relaxed(),
    };
    let pairs: [(&str, Term<'a>); 12] = [
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
    atom_map(env, &pairs)
}

/// Test-only (built with the `fault-injection` feature under `MIX_ENV=test`).
#[cfg(feature = "fault-injection")]
#[rustler::nif]
fn store_fail_writes(h: Handle, on: bool) -> Atom {
    h.store.set_fail_writes(on);
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
    let h = match resolve(store) {
        Ok(h) => h,
        Err(reason) => return (error(), reason).encode(env),
    };
    let r = id_bytes(id, Access::MayBlock).and_then(|id| {
        h.store.read(&id, Access::MayBlock, |v| {
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
        })
    });
    reply(
        env,
        r.map(|c| (ok(), c.unwrap_or_else(|| nil().encode(env))).encode(env)),
    )
}

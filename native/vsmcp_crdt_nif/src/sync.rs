//! NIFs of `Vsmcp.CRDT.Sync.Peer`: a `SyncResource` wraps the core's
//! `sync::Engine` of one store. The Elixir peer process owns it, moves the
//! bytes over the transport and drives the timers; every protocol decision
//! is made here, in the core.
//!
//! All calls that touch the store run on dirty IO schedulers: they merge
//! whole messages (up to 1 MiB, or one large entry) and may read the disk.
//! Peers are named by `key`: the lowercase hex of their replica id.
//!
//! Replies are `{outs, events}` with `outs` a list of `{key | nil, binary}`
//! (`nil`: broadcast) and `events` a list of
//! `{:peer_up, key, attrs}`, `{:peer_down, key}`,
//! `{:changed, id, :local | :remote}` (only when asked for),
//! `{:rejected, key | nil, kind, detail}` and `{:answered, key}`.
//! Remote ids are decoded with existing atoms only; an id naming an atom
//! unknown here is left out of `:changed` events.

use crate::errors::ok;
use crate::store::{get, resolve};
use crate::term::{self as tc, Trust};
use parking_lot::Mutex;
use rustler::types::map::map_new;
use rustler::{Atom, Binary, Encoder, Env, NifResult, OwnedBinary, Resource, ResourceArc, Term};
use vsmcp_crdt_core::store::Store;
use vsmcp_crdt_core::sync::{directory_of, Engine, EngineConfig, Event, Outbound};
use vsmcp_crdt_core::ReplicaId;

rustler::atoms! {
    peer_up,
    peer_down,
    changed,
    local,
    remote,
    rejected,
    answered,
    invalid_replica,
    closed,
}

pub struct SyncResource {
    store: Store,
    /// `None` once stopped.
    engine: Mutex<Option<Engine>>,
    /// The store's capture token of this engine.
    capture: u64,
}

#[rustler::resource_impl]
impl Resource for SyncResource {}

impl Drop for SyncResource {
    /// Runs wherever the resource is collected (a normal scheduler): the
    /// shard locks and freeing the log happen on a background thread. A
    /// newer engine of the same store keeps its capture (the token).
    fn drop(&mut self) {
        let store = self.store.clone();
        let engine = self.engine.lock().take();
        let token = self.capture;
        let _ = std::thread::Builder::new()
            .name("vsmcp-crdt-sync-drop".into())
            .spawn(move || {
                store.stop_capture(token);
                drop(engine);
            });
    }
}

/// Run `f` with the engine, or answer `{:error, :closed}` once stopped.
fn with_engine<'a>(env: Env<'a>, s: &Sync, f: impl FnOnce(&mut Engine) -> Term<'a>) -> Term<'a> {
    match s.engine.lock().as_mut() {
        Some(e) => f(e),
        None => (crate::errors::error(), closed()).encode(env),
    }
}

type Sync = ResourceArc<SyncResource>;

fn key(r: &ReplicaId) -> String {
    r.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn unkey(k: &[u8]) -> Option<ReplicaId> {
    if !k.len().is_multiple_of(2) || k.len() > 256 {
        return None;
    }
    let hex = std::str::from_utf8(k).ok()?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    Some(ReplicaId::new(&bytes?))
}

fn bin<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut b = OwnedBinary::new(bytes.len());
    b.as_mut_slice().copy_from_slice(bytes);
    b.release(env).encode(env)
}

fn outs_term<'a>(env: Env<'a>, outs: &[Outbound]) -> Term<'a> {
    let v: Vec<Term<'a>> = outs
        .iter()
        .map(|o| {
            let to = match &o.to {
                Some(r) => key(r).encode(env),
                None => rustler::types::atom::nil().encode(env),
            };
            (to, bin(env, &o.bytes)).encode(env)
        })
        .collect();
    v.encode(env)
}

fn events_term<'a>(env: Env<'a>, events: &[Event], want_changes: bool) -> Term<'a> {
    let mut v: Vec<Term<'a>> = Vec::with_capacity(events.len());
    for e in events {
        let t = match e {
            Event::PeerUp(r, attrs) => (peer_up(), key(r), bin(env, attrs)).encode(env),
            Event::PeerDown(r) => (peer_down(), key(r)).encode(env),
            Event::Changed(id) if want_changes => match tc::decode(env, id, Trust::Remote) {
                Ok(id) => (changed(), id, remote()).encode(env),
                Err(_) => continue,
            },
            Event::LocalChanged(id) if want_changes => match tc::decode(env, id, Trust::Local) {
                Ok(id) => (changed(), id, local()).encode(env),
                Err(_) => continue,
            },
            Event::Changed(_) | Event::LocalChanged(_) => continue,
            Event::Rejected(r, why, detail) => {
                let who = match r {
                    Some(r) => key(r).encode(env),
                    None => rustler::types::atom::nil().encode(env),
                };
                // Kind names are a fixed set, never from input.
                let kind = Atom::from_str(env, why.name()).unwrap_or_else(|_| rejected());
                (rejected(), who, kind, detail.as_str()).encode(env)
            }
            Event::Answered(r) => (answered(), key(r)).encode(env),
        };
        v.push(t);
    }
    v.encode(env)
}

/// Start syncing the store behind `store`: local changes are recorded from
/// now on. Options (a map): `versions` (list of wire versions),
/// `retransmit_ms`, `down_after_ms`, `max_log_bytes`, `attrs` (binary).
#[rustler::nif(schedule = "DirtyCpu")]
fn sync_start<'a>(env: Env<'a>, store: Term<'a>, opts: Term<'a>) -> NifResult<Term<'a>> {
    let h = match resolve(store) {
        Ok(h) => h,
        Err(reason) => return Ok((crate::errors::error(), reason).encode(env)),
    };
    let mut cfg = EngineConfig::default();
    if let Some(v) = get::<Vec<u8>>(opts, "versions")? {
        cfg.versions = v;
    }
    if let Some(v) = get::<u64>(opts, "retransmit_ms")? {
        cfg.retransmit_ms = v;
    }
    if let Some(v) = get::<u64>(opts, "down_after_ms")? {
        cfg.down_after_ms = v;
    }
    if let Some(v) = get::<usize>(opts, "max_log_bytes")? {
        cfg.max_log_bytes = v;
    }
    if let Some(v) = get::<u64>(opts, "collect_after_ms")? {
        cfg.collect_after_ms = v;
    }
    if let Some(v) = get::<u64>(opts, "member_expiry_ms")? {
        cfg.member_expiry_ms = v;
    }
    if let Some(v) = get::<Binary>(opts, "attrs")? {
        cfg.attrs = v.as_slice().to_vec();
    }
    let store = h.store.clone();
    let capture = store.start_capture();
    let engine = Engine::new(&store, cfg);
    let me = key(engine.me());
    let res = ResourceArc::new(SyncResource {
        store,
        engine: Mutex::new(Some(engine)),
        capture,
    });
    Ok((ok(), res, me).encode(env))
}

/// Stop: local changes are no longer recorded (unless a newer engine of
/// the store records them) and the engine is freed.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_stop(s: Sync) -> Atom {
    s.store.stop_capture(s.capture);
    drop(s.engine.lock().take());
    ok()
}

/// `{:ok, {outs, events}}`: local changes shipped, retransmissions.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_tick<'a>(env: Env<'a>, s: Sync, now_ms: u64, want_changes: bool) -> Term<'a> {
    with_engine(env, &s, |e| {
        let mut events = Vec::new();
        let outs = e.tick(&s.store, now_ms, &mut events);
        let r = (
            outs_term(env, &outs),
            events_term(env, &events, want_changes),
        );
        (ok(), r).encode(env)
    })
}

/// `{:ok, {hello, events}}`: the heartbeat to broadcast.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_hello<'a>(env: Env<'a>, s: Sync, want_changes: bool) -> Term<'a> {
    with_engine(env, &s, |e| {
        let mut events = Vec::new();
        let out = e.hello(&s.store, &mut events);
        let r = (
            bin(env, &out.bytes),
            events_term(env, &events, want_changes),
        );
        (ok(), r).encode(env)
    })
}

/// `{:ok, {outs, events}}`: one message from the transport handled.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_receive<'a>(
    env: Env<'a>,
    s: Sync,
    bytes: Binary<'a>,
    now_ms: u64,
    want_changes: bool,
) -> Term<'a> {
    with_engine(env, &s, |e| {
        let mut events = Vec::new();
        let outs = e.receive(&s.store, bytes.as_slice(), now_ms, &mut events);
        let r = (
            outs_term(env, &outs),
            events_term(env, &events, want_changes),
        );
        (ok(), r).encode(env)
    })
}

/// `{:ok, {peer_keys, outs, events}}`: an anti-entropy round started.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_round<'a>(env: Env<'a>, s: Sync, now_ms: u64, want_changes: bool) -> Term<'a> {
    with_engine(env, &s, |e| {
        let mut events = Vec::new();
        let (peers, outs) = e.round(&s.store, now_ms, &mut events);
        let peers: Vec<String> = peers.iter().map(key).collect();
        let r = (
            peers,
            outs_term(env, &outs),
            events_term(env, &events, want_changes),
        );
        (ok(), r).encode(env)
    })
}

/// Forget the replica named by `k` (any incarnation of its directory): a
/// peer's key, or a member's (its directory alone, for a member whose
/// session is gone).
#[rustler::nif(schedule = "DirtyIo")]
fn sync_forget<'a>(env: Env<'a>, s: Sync, k: Binary<'a>) -> Term<'a> {
    let Some(r) = unkey(k.as_slice()) else {
        return (crate::errors::error(), invalid_replica()).encode(env);
    };
    with_engine(env, &s, |e| {
        let mut events = Vec::new();
        let dir = if r.as_bytes().len() == vsmcp_crdt_core::store::record::DIRECTORY_BYTES {
            r.as_bytes()
        } else {
            directory_of(&r)
        };
        match e.forget(&s.store, dir, &mut events) {
            Ok(()) => (ok(), events_term(env, &events, false)).encode(env),
            // Not a peer directory (a key of the wrong shape, our own).
            Err(vsmcp_crdt_core::Error::InvalidArgument(_)) => {
                (crate::errors::error(), invalid_replica()).encode(env)
            }
            Err(err) => crate::errors::error_term(env, &err),
        }
    })
}

/// `{:ok, map}`: counters, peers and log size.
#[rustler::nif(schedule = "DirtyCpu")]
fn sync_info<'a>(env: Env<'a>, s: Sync) -> Term<'a> {
    let guard = s.engine.lock();
    let Some(e) = guard.as_ref() else {
        return (crate::errors::error(), closed()).encode(env);
    };
    let c = e.counters();
    let put = |m: Term<'a>, k: &str, v: Term<'a>| match Atom::from_str(env, k) {
        Ok(a) => m.map_put(a, v).unwrap_or(m),
        Err(_) => m,
    };
    let mut counters = map_new(env);
    for (k, v) in [
        ("msgs_sent", c.msgs_sent),
        ("bytes_sent", c.bytes_sent),
        ("msgs_received", c.msgs_received),
        ("bytes_received", c.bytes_received),
        ("deltas_recorded", c.deltas_recorded),
        ("entries_merged", c.entries_merged),
        ("states_sent", c.states_sent),
        ("digests_sent", c.digests_sent),
        ("retransmits", c.retransmits),
        ("collected_elements", c.collected_elements),
        ("collected_tombstones", c.collected_tombstones),
        ("dropped_stale", c.dropped_stale),
        ("state_proofs", c.state_proofs),
        ("members_removed", c.members_removed),
    ] {
        counters = put(counters, k, v.encode(env));
    }
    let mut rejected = map_new(env);
    for (k, v) in c.rejections() {
        rejected = put(rejected, k, v.encode(env));
    }
    let names: Vec<&'static str> = vsmcp_crdt_core::sync::Counters::default()
        .rejections()
        .map(|(n, _)| n)
        .collect();
    let peers: Vec<Term<'a>> = e
        .peer_info()
        .iter()
        .map(|p| {
            let mut rejected = map_new(env);
            for (n, v) in names.iter().zip(p.stats.rejected.iter()) {
                rejected = put(rejected, n, v.encode(env));
            }
            let mut m = map_new(env);
            for (k, v) in [
                ("key", key(&p.id).encode(env)),
                ("up", p.up.encode(env)),
                ("wire_version", p.version.encode(env)),
                ("node", bin(env, &p.attrs)),
                ("last_seen_ms", p.last_seen_ms.encode(env)),
                ("ack_lag", p.ack_lag.encode(env)),
                ("clock_offset_ms", p.clock_offset_ms.encode(env)),
                ("refused_ahead_ms", p.refused_ahead_ms.encode(env)),
                ("anchored", p.anchored.encode(env)),
                ("msgs_sent", p.stats.msgs_sent.encode(env)),
                ("bytes_sent", p.stats.bytes_sent.encode(env)),
                ("msgs_received", p.stats.msgs_received.encode(env)),
                ("bytes_received", p.stats.bytes_received.encode(env)),
                ("deltas_sent", p.stats.deltas_sent.encode(env)),
                ("entries_received", p.stats.entries_received.encode(env)),
                ("rejected", rejected),
            ] {
                m = put(m, k, v);
            }
            m
        })
        .collect();
    let members: Vec<Term<'a>> = e
        .member_info()
        .iter()
        .map(|mi| {
            let mut m = map_new(env);
            for (k, v) in [
                ("directory", bin(env, &mi.directory)),
                ("key", key(&ReplicaId::new(&mi.directory)).encode(env)),
                ("up", mi.up.encode(env)),
                ("frontier", mi.frontier.encode(env)),
                ("stable", mi.stable.encode(env)),
            ] {
                m = put(m, k, v);
            }
            m
        })
        .collect();
    let mut m = map_new(env);
    m = put(m, "replica", key(e.me()).encode(env));
    m = put(m, "peers", peers.encode(env));
    m = put(m, "members", members.encode(env));
    m = put(m, "collectable_sets", e.collectable_sets().encode(env));
    m = put(m, "queued_transfers", e.queued_transfers().encode(env));
    m = put(m, "counters", counters);
    m = put(m, "rejected", rejected);
    m = put(m, "log_entries", e.log().len().encode(env));
    m = put(m, "log_bytes", e.log().bytes().encode(env));
    (ok(), m).encode(env)
}

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
//! `{:rejected, key | nil, kind, detail}`, `{:answered, key}`,
//! `{:collected, tombstones, elements}` and, from `sync_receive`,
//! `{:merged, entries, bytes}` (a message that merged entries).
//! Remote ids are decoded with existing atoms only; an id naming an atom
//! unknown here reads as `%Vsmcp.CRDT.UnsafeTerm{}` (see `term`).

use crate::atoms::{self, atom_map, ok};
use crate::errors::{answer, NifError};
use crate::handle::resolve;
use crate::options;
use crate::term::{self as tc, make_binary, Trust};
use parking_lot::Mutex;
use rustler::{Atom, Binary, Encoder, Env, NifMap, NifResult, Resource, ResourceArc, Term};
use vsmcp_crdt_core::store::Store;
use vsmcp_crdt_core::sync::{directory_of, Engine, Event, Outbound};
use vsmcp_crdt_core::ReplicaId;

pub struct SyncResource {
    store: Store,
    /// `None` once stopped.
    engine: Mutex<Option<Engine>>,
    /// The store's capture token of this engine.
    capture: u64,
    /// How the store's ids are decoded (`decode: :safe`: `Remote`).
    trust: Trust,
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

/// Run `f` with the engine, or `{:error, :closed}` once stopped.
fn with_engine<'a, T>(s: &Sync, f: impl FnOnce(&mut Engine) -> T) -> Result<T, NifError<'a>> {
    let mut guard = s.engine.lock();
    let e = guard
        .as_mut()
        .ok_or_else(|| NifError::Reason(atoms::closed()))?;
    Ok(f(e))
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

fn outs_term<'a>(env: Env<'a>, outs: &[Outbound]) -> Term<'a> {
    let v: Vec<Term<'a>> = outs
        .iter()
        .map(|o| {
            let to = match &o.to {
                Some(r) => key(r).encode(env),
                None => atoms::nil().encode(env),
            };
            (to, make_binary(env, &o.bytes)).encode(env)
        })
        .collect();
    v.encode(env)
}

fn events_term<'a>(env: Env<'a>, events: &[Event], want_changes: bool, trust: Trust) -> Term<'a> {
    let mut v: Vec<Term<'a>> = Vec::with_capacity(events.len());
    for e in events {
        let t = match e {
            Event::PeerUp(r, attrs) => {
                (atoms::peer_up(), key(r), make_binary(env, attrs)).encode(env)
            }
            Event::PeerDown(r) => (atoms::peer_down(), key(r)).encode(env),
            Event::Changed(id) if want_changes => match tc::decode_shown(env, id, Trust::Remote) {
                Ok(id) => (atoms::changed(), id, atoms::remote()).encode(env),
                Err(_) => continue,
            },
            Event::LocalChanged(id) if want_changes => match tc::decode_shown(env, id, trust) {
                Ok(id) => (atoms::changed(), id, atoms::local()).encode(env),
                Err(_) => continue,
            },
            Event::Changed(_) | Event::LocalChanged(_) => continue,
            Event::Rejected(r, why, detail) => {
                let who = match r {
                    Some(r) => key(r).encode(env),
                    None => atoms::nil().encode(env),
                };
                // Kind names are a fixed set, never from input.
                let kind = Atom::from_str(env, why.name()).unwrap_or_else(|_| atoms::rejected());
                (atoms::rejected(), who, kind, detail.as_str()).encode(env)
            }
            Event::Answered(r) => (atoms::answered(), key(r)).encode(env),
            Event::Collected {
                tombstones,
                elements,
            } => (atoms::collected(), *tombstones, *elements).encode(env),
        };
        v.push(t);
    }
    v.encode(env)
}

/// Start syncing the store behind `store`: local changes are recorded from
/// now on. `{:ok, engine, key}`; options as `options::engine_config` (a
/// malformed map is `badarg`).
#[rustler::nif(schedule = "DirtyCpu")]
fn sync_start<'a>(env: Env<'a>, store: Term<'a>, opts: Term<'a>) -> NifResult<Term<'a>> {
    // The options are read once the store is found: an unknown store is
    // `{:error, :noproc}` whatever `opts` holds.
    let h = match resolve(store) {
        Ok(h) => h,
        Err(e) => return Ok(answer(env, || Err(e))),
    };
    let cfg = options::engine_config(opts)?;
    let store = h.store.clone();
    let capture = store.start_capture();
    let engine = Engine::new(&store, cfg);
    let me = key(engine.me());
    let res = ResourceArc::new(SyncResource {
        store,
        engine: Mutex::new(Some(engine)),
        capture,
        trust: h.trust,
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

/// `{:ok, {outs | hello, events}}` of one engine call (see the module
/// doc), or `{:error, :closed}`.
type EngineReply<'a> = Result<(Term<'a>, Term<'a>), NifError<'a>>;

/// `{:ok, {outs, events}}`: local changes shipped, retransmissions.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_tick<'a>(env: Env<'a>, s: Sync, now_ms: u64, want_changes: bool) -> EngineReply<'a> {
    with_engine(&s, |e| {
        let mut events = Vec::new();
        let outs = e.tick(&s.store, now_ms, &mut events);
        (
            outs_term(env, &outs),
            events_term(env, &events, want_changes, s.trust),
        )
    })
}

/// `{:ok, {hello, events}}`: the heartbeat to broadcast.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_hello<'a>(env: Env<'a>, s: Sync, want_changes: bool) -> EngineReply<'a> {
    with_engine(&s, |e| {
        let mut events = Vec::new();
        let out = e.hello(&s.store, &mut events);
        (
            make_binary(env, &out.bytes),
            events_term(env, &events, want_changes, s.trust),
        )
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
) -> EngineReply<'a> {
    with_engine(&s, |e| {
        let mut events = Vec::new();
        let before = e.counters().entries_merged;
        let outs = e.receive(&s.store, bytes.as_slice(), now_ms, &mut events);
        let merged = e.counters().entries_merged - before;
        let mut events = events_term(env, &events, want_changes, s.trust);
        if merged > 0 {
            let m = (atoms::merged(), merged, bytes.len()).encode(env);
            events = events.list_prepend(m);
        }
        (outs_term(env, &outs), events)
    })
}

/// `{:ok, {peer_keys, outs, events}}`: an anti-entropy round started.
#[rustler::nif(schedule = "DirtyIo")]
fn sync_round<'a>(
    env: Env<'a>,
    s: Sync,
    now_ms: u64,
    want_changes: bool,
) -> Result<(Vec<String>, Term<'a>, Term<'a>), NifError<'a>> {
    with_engine(&s, |e| {
        let mut events = Vec::new();
        let (peers, outs) = e.round(&s.store, now_ms, &mut events);
        (
            peers.iter().map(key).collect(),
            outs_term(env, &outs),
            events_term(env, &events, want_changes, s.trust),
        )
    })
}

/// Forget the replica named by `k` (any incarnation of its directory): a
/// peer's key, or a member's (its directory alone, for a member whose
/// session is gone). `{:ok, events}`; `:invalid_replica` for a key that
/// names no peer directory (or our own).
#[rustler::nif(schedule = "DirtyIo")]
fn sync_forget<'a>(env: Env<'a>, s: Sync, k: Binary<'a>) -> Result<Term<'a>, NifError<'a>> {
    let r = unkey(k.as_slice()).ok_or(NifError::Reason(atoms::invalid_replica()))?;
    let dir = if r.as_bytes().len() == vsmcp_crdt_core::store::record::DIRECTORY_BYTES {
        r.as_bytes()
    } else {
        directory_of(&r)
    };
    with_engine(&s, |e| {
        let mut events = Vec::new();
        match e.forget(&s.store, dir, &mut events) {
            Ok(()) => Ok(events_term(env, &events, false, s.trust)),
            Err(vsmcp_crdt_core::Error::InvalidArgument(_)) => {
                Err(NifError::Reason(atoms::invalid_replica()))
            }
            Err(err) => Err(err.into()),
        }
    })?
}

/// The map of `sync_info`; the keys are the fields' names.
#[derive(NifMap)]
struct SyncInfo<'a> {
    replica: String,
    peers: Vec<PeerInfo<'a>>,
    members: Vec<MemberInfo<'a>>,
    forgetting: Vec<Forgetting>,
    collectable_sets: usize,
    queued_transfers: usize,
    counters: Counters,
    /// Rejections by kind (names from the core, a fixed set).
    rejected: Term<'a>,
    log_entries: usize,
    log_bytes: usize,
    /// The digest holds every id (built page by page after a start).
    digest_ready: bool,
}

#[derive(NifMap)]
struct Counters {
    msgs_sent: u64,
    bytes_sent: u64,
    msgs_received: u64,
    bytes_received: u64,
    deltas_recorded: u64,
    entries_merged: u64,
    states_sent: u64,
    digests_sent: u64,
    retransmits: u64,
    collected_elements: u64,
    collected_tombstones: u64,
    dropped_stale: u64,
    state_proofs: u64,
    members_removed: u64,
}

#[derive(NifMap)]
struct PeerInfo<'a> {
    key: String,
    up: bool,
    wire_version: u8,
    node: Term<'a>,
    last_seen_ms: u64,
    ack_lag: u64,
    clock_offset_ms: i64,
    refused_ahead_ms: u64,
    anchored: bool,
    msgs_sent: u64,
    bytes_sent: u64,
    msgs_received: u64,
    bytes_received: u64,
    deltas_sent: u64,
    entries_received: u64,
    rejected: Term<'a>,
}

/// A forgetting not settled yet: the forgotten replica's key and the keys
/// of the members holding it back.
#[derive(NifMap)]
struct Forgetting {
    key: String,
    held_by: Vec<String>,
}

#[derive(NifMap)]
struct MemberInfo<'a> {
    directory: Term<'a>,
    /// Its directory as a key `forget_replica/2` takes.
    key: String,
    up: bool,
    frontier: u64,
    stable: u64,
}

/// `{:ok, map}`: counters, peers and log size.
#[rustler::nif(schedule = "DirtyCpu")]
fn sync_info<'a>(env: Env<'a>, s: Sync) -> Result<SyncInfo<'a>, NifError<'a>> {
    with_engine(&s, |e| {
        let c = e.counters();
        let rejected: Vec<(&str, Term<'a>)> =
            c.rejections().map(|(k, v)| (k, v.encode(env))).collect();
        let names: Vec<&'static str> = vsmcp_crdt_core::sync::Counters::default()
            .rejections()
            .map(|(n, _)| n)
            .collect();
        let peers = e
            .peer_info()
            .iter()
            .map(|p| {
                let rejected: Vec<(&str, Term<'a>)> = names
                    .iter()
                    .zip(p.stats.rejected.iter())
                    .map(|(n, v)| (*n, v.encode(env)))
                    .collect();
                PeerInfo {
                    key: key(&p.id),
                    up: p.up,
                    wire_version: p.version,
                    node: make_binary(env, &p.attrs),
                    last_seen_ms: p.last_seen_ms,
                    ack_lag: p.ack_lag,
                    clock_offset_ms: p.clock_offset_ms,
                    refused_ahead_ms: p.refused_ahead_ms,
                    anchored: p.anchored,
                    msgs_sent: p.stats.msgs_sent,
                    bytes_sent: p.stats.bytes_sent,
                    msgs_received: p.stats.msgs_received,
                    bytes_received: p.stats.bytes_received,
                    deltas_sent: p.stats.deltas_sent,
                    entries_received: p.stats.entries_received,
                    rejected: atom_map(env, &rejected),
                }
            })
            .collect();
        let members = e
            .member_info()
            .iter()
            .map(|m| MemberInfo {
                directory: make_binary(env, &m.directory),
                key: key(&ReplicaId::new(&m.directory)),
                up: m.up,
                frontier: m.frontier,
                stable: m.stable,
            })
            .collect();
        let forgetting = e
            .forgetting_info()
            .iter()
            .map(|f| Forgetting {
                key: key(&ReplicaId::new(&f.directory)),
                held_by: f.held_by.iter().map(|d| key(&ReplicaId::new(d))).collect(),
            })
            .collect();
        SyncInfo {
            replica: key(e.me()),
            peers,
            members,
            forgetting,
            collectable_sets: e.collectable_sets(),
            queued_transfers: e.queued_transfers(),
            counters: Counters {
                msgs_sent: c.msgs_sent,
                bytes_sent: c.bytes_sent,
                msgs_received: c.msgs_received,
                bytes_received: c.bytes_received,
                deltas_recorded: c.deltas_recorded,
                entries_merged: c.entries_merged,
                states_sent: c.states_sent,
                digests_sent: c.digests_sent,
                retransmits: c.retransmits,
                collected_elements: c.collected_elements,
                collected_tombstones: c.collected_tombstones,
                dropped_stale: c.dropped_stale,
                state_proofs: c.state_proofs,
                members_removed: c.members_removed,
            },
            rejected: atom_map(env, &rejected),
            log_entries: e.log().len(),
            log_bytes: e.log().bytes(),
            digest_ready: e.primed(),
        }
    })
}

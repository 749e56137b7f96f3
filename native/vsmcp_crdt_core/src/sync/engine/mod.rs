//! The sync engine of one store: the protocol state machine that turns the
//! store's local changes into messages, and peers' messages into merges.
//! No I/O and no timers: the caller (the NIF, driven by the Elixir peer
//! process) passes the time, moves the bytes and decides when to tick.
//!
//! * [`Engine::tick`] takes the store's local changes into the
//!   [`DeltaLog`], retransmits unacknowledged intervals after
//!   `retransmit_ms` (go-back-N), ships new intervals to every peer that is
//!   up, and marks silent peers down.
//! * [`Engine::hello`] is the heartbeat broadcast: replica id, the wire
//!   versions spoken and the digest root. A peer whose root differs twice
//!   in a row while our deltas to it are all acknowledged gets a digest
//!   (anti-entropy); so does a peer seen for the first time or again.
//! * [`Engine::receive`] handles one message: merges entries into the
//!   store by generation (`record`), acknowledges the contiguous
//!   prefix of a sender's intervals, answers digests with a push of our
//!   differing buckets plus a pull (`StateRequest`) of theirs.
//!
//! The code is laid out by concern, each file with its part of a peer
//! session (`Peer`) and the handlers of its messages: `peer.rs` (sessions,
//! hellos, liveness), `deltas.rs` (the delta link: shipping, `Deltas`,
//! `Ack`, merging entries), `anti_entropy.rs` (the digest, `DigestRequest`,
//! `StateRequest`, `States`, state transfers), `collect.rs` (membership,
//! frontiers and their proofs, `AnswerEnd`, `Frontier`, forgetting,
//! collection) and `api.rs` (the public types). This file holds the
//! engine, its checks of every message and the dispatch to the handlers.
//!
//! # Membership and stability
//!
//! What membership, frontiers, cuts, collection and forgetting mean, and
//! the guarantees they give, is described once, for users and for this
//! code, in `guides/distributed-sync.md` ("Membership, stability and
//! collection"). The invariants the code keeps for it:
//!
//! * membership is persisted (`store::membership`) and only `forget` or
//!   expiry removes a member; a member that is down still holds
//!   collection back;
//! * a member's frontier `F[d]` rises only by a *state* proof (a complete
//!   answer to our digest: every `States` message up to `AnswerEnd`
//!   merged) or, after one in the same session, a *log* proof (its log
//!   held contiguously up to the position a hello announced); a skipped
//!   part of its log voids the state proof; a frontier never passes our
//!   own wall clock; the frontier a collection used is persisted first as
//!   the directory's cut (`collect.rs`);
//! * remove tokens are dropped only when a set's snapshot, taken at `t`,
//!   is passed by every member's usable `Frontier` report (one that came
//!   with a hello our frontier of that member has passed).
//!
//! Every message from a peer is untrusted (see `guides/security.md`): it
//! is authenticated when a keyring is set (`sync::auth`), decoded and
//! validated in full, a clock too far ahead rejects it, and each rejection
//! is counted and reported as an [`Event::Rejected`] (the caller
//! rate-limits its logs). Entries stay encoded bytes throughout: nothing
//! here creates atoms or decodes terms.

mod anti_entropy;
mod api;
mod collect;
mod deltas;
mod peer;

use crate::causal::ReplicaId;
use crate::error::Error;
use crate::hash::{HashMap, HashSet};
use crate::hlc::Timestamp;
use crate::store::Store;
use crate::sync::auth::{ReplayWindow, FRAME_BYTES};
use crate::sync::digest::{stable_hash, Digest, BUCKETS};
use crate::sync::log::DeltaLog;
use crate::sync::wire::{
    Envelope, Message, MAX_MESSAGE_BYTES, MAX_SINGLE_ENTRY_MESSAGE_BYTES, MIN_WIRE_VERSION,
};

use anti_entropy::{Deferred, Transfer};
pub use api::{
    Counters, EngineConfig, Event, ForgettingInfo, MemberInfo, Outbound, PeerInfo, PeerStats,
    Reject, REJECT_KINDS,
};
use collect::{wall_stamp, Frontiers, Member, Snapshot};
use deltas::Interval;
use peer::{Hello, Peer};

/// Bytes at the end of a sync id that change on every start: the store's
/// incarnation (8) and the engine's session (8). The rest is the data
/// directory's id, which a restart keeps.
const VOLATILE_BYTES: usize = 16;

/// Members per hello between two stability reports (see
/// `Engine::report_every`): up to 8 members, every hello carries one.
pub const REPORT_FANOUT: usize = 8;

/// The first wire version whose speakers prove frontiers and report
/// stability (see "Membership and stability"); an older peer never does,
/// so while it is a member nothing is collected.
const STABILITY_VERSION: u8 = 4;

/// Longest sync id accepted from a peer.
const MAX_ID_BYTES: usize = 64;

/// The most sending sessions whose sequence numbers an engine remembers
/// (see `Engine::take_seq`): far more than sessions of real members over
/// an engine's life; without the secret no one can make more.
const MAX_REPLAY_WINDOWS: usize = 4096;

fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    stable_hash(&[&t.to_le_bytes(), &std::process::id().to_le_bytes()])
}

/// The sync state of one store. See the module docs.
pub struct Engine {
    me: ReplicaId,
    cfg: EngineConfig,
    log: DeltaLog,
    /// Sessions, by sync id (ordered: iteration is the same on every run).
    peers: std::collections::BTreeMap<ReplicaId, Peer>,
    /// Member directories (see `store::membership`).
    members: std::collections::BTreeMap<Box<[u8]>, Member>,
    /// Directory ids of forgotten replicas.
    forgotten: HashSet<Vec<u8>>,
    /// Those of `forgotten` whose cut is not raised yet (see
    /// [`Engine::forget`]).
    forgetting: HashSet<Vec<u8>>,
    digest: Digest,
    /// Item hashes, by digest bucket.
    hashes: Vec<HashMap<Box<[u8]>, u64>>,
    /// Stability snapshots of remove-wins sets holding remove tokens.
    collectable: HashMap<Box<[u8]>, Snapshot>,
    /// When collection last ran.
    collected_ms: Option<u64>,
    /// Which peer's transfer goes first at the next tick.
    transfer_turn: usize,
    /// The caller's clock at our first tick.
    started_ms: Option<u64>,
    /// Our frontier report, due to be sent with the next tick: `(at,
    /// frontiers)`.
    report: Option<(u64, Frontiers)>,
    /// Hellos made since the last one that carried our report (paces the
    /// reports, see `report_every`; `u64::MAX` before the first).
    unreported_hellos: u64,
    /// State transfers in progress, per peer.
    transfers: std::collections::BTreeMap<ReplicaId, std::collections::VecDeque<Transfer>>,
    /// Buckets whose states are queued for a peer (not queued twice).
    queued: std::collections::BTreeMap<ReplicaId, HashSet<u16>>,
    dirty: HashSet<Box<[u8]>>,
    /// While the digest is being built from the store's ids, page by page:
    /// the cursor of the next page (`Some(None)`: the first).
    prime_cursor: Option<Option<Box<[u8]>>>,
    /// Failed reads of a page of the digest's first build, in a row.
    prime_failures: u32,
    /// Digest exchanges put off until our digest holds every id (see
    /// `anti_entropy.rs`, [`Deferred`]).
    deferred: Deferred,
    counters: Counters,
    /// With authentication: the sequence number of our last message.
    sent_seq: u64,
    /// With authentication: the sequence numbers taken of each sending
    /// session heard since this engine started (by sync id), kept when
    /// its session is dropped, at most `MAX_REPLAY_WINDOWS` (the least
    /// recently used goes), with when each was last used.
    windows: HashMap<ReplicaId, (ReplayWindow, u64)>,
}

/// The directory part of a sync id (a replica id plus a session).
pub fn directory_of(r: &ReplicaId) -> &[u8] {
    let b = r.as_bytes();
    &b[..b.len().saturating_sub(VOLATILE_BYTES)]
}

impl Engine {
    /// An engine for `store`. Its sync id is the store's replica id plus a
    /// random session, so peers tell a restarted engine (same store) from
    /// the old one and never hold acknowledgements from a previous session.
    /// The store's members are loaded with their persisted cuts as
    /// frontiers: a member not heard since holds collection back.
    pub fn new(store: &Store, cfg: EngineConfig) -> Engine {
        let mut me = store.replica_id().as_bytes().to_vec();
        #[cfg(feature = "fault-injection")]
        let session = cfg.session.unwrap_or_else(random_u64);
        #[cfg(not(feature = "fault-injection"))]
        let session = random_u64();
        me.extend_from_slice(&session.to_be_bytes());
        let members = store
            .members()
            .into_iter()
            .map(|(dir, _)| {
                let m = Member {
                    frontier: store.member_cut(&dir).min(wall_stamp(store)),
                    ..Member::default()
                };
                (dir, m)
            })
            .collect();
        // A read error here would let a forgotten replica back in: the
        // store refuses its membership too (`Store::add_member`).
        let forgotten: Vec<Vec<u8>> = store
            .forgotten()
            .unwrap_or_default()
            .into_iter()
            .map(Vec::from)
            .collect();
        Engine {
            me: ReplicaId::new(&me),
            log: DeltaLog::new(cfg.max_log_bytes),
            cfg,
            peers: Default::default(),
            members,
            forgotten: forgotten.iter().cloned().collect(),
            forgetting: forgotten
                .into_iter()
                .filter(|d| store.member_cut(d) != u64::MAX)
                .collect(),
            digest: Digest::new(),
            hashes: (0..BUCKETS).map(|_| HashMap::default()).collect(),
            collectable: HashMap::default(),
            collected_ms: None,
            transfer_turn: 0,
            started_ms: None,
            report: None,
            unreported_hellos: u64::MAX,
            transfers: Default::default(),
            queued: Default::default(),
            dirty: HashSet::default(),
            prime_cursor: Some(None),
            prime_failures: 0,
            deferred: Deferred::default(),
            counters: Counters::default(),
            sent_seq: 0,
            windows: HashMap::default(),
        }
    }

    /// Our replica id.
    pub fn me(&self) -> &ReplicaId {
        &self.me
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The outgoing log (for inspection).
    pub fn log(&self) -> &DeltaLog {
        &self.log
    }

    /// The root of the digest as last refreshed (by a hello, a digest or a
    /// collection), for inspection.
    pub fn digest_root(&self) -> u64 {
        self.digest.root()
    }

    /// State transfer items queued, over every peer (for inspection).
    pub fn queued_transfers(&self) -> usize {
        self.transfers.values().map(|q| q.len()).sum()
    }

    /// Remove-wins sets waiting for their tokens to be stable.
    pub fn collectable_sets(&self) -> usize {
        self.collectable.len()
    }

    /// Peers that are up.
    pub fn up_peers(&self) -> Vec<ReplicaId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.live.up)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Every known peer session, for `info`.
    pub fn peer_info(&self) -> Vec<PeerInfo> {
        let last = self.log.next_seq() - 1;
        self.peers
            .iter()
            .map(|(r, p)| PeerInfo {
                id: r.clone(),
                up: p.live.up,
                version: p.version,
                attrs: p.attrs.clone(),
                last_seen_ms: p.live.last_seen_ms,
                ack_lag: last.saturating_sub(self.log.peer(r).map_or(0, |a| a.acked)),
                clock_offset_ms: p.live.clock_offset_ms,
                refused_ahead_ms: p.live.refused_ahead_ms,
                anchored: p.proof.anchored(),
                stats: p.stats.clone(),
            })
            .collect()
    }

    /// Every forgetting still pending, for `info`.
    pub fn forgetting_info(&self) -> Vec<ForgettingInfo> {
        self.forgetting
            .iter()
            .map(|f| ForgettingInfo {
                directory: f.clone(),
                held_by: self
                    .forgetting_held_by(f)
                    .into_iter()
                    .map(Vec::from)
                    .collect(),
            })
            .collect()
    }

    /// Every member directory, for `info`.
    pub fn member_info(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .map(|(dir, m)| MemberInfo {
                directory: dir.to_vec(),
                up: self.directory_up(dir),
                frontier: m.frontier,
                stable: m.stable_for(dir, &[], &HashSet::default()),
                last_seen_ms: m.last_seen_ms,
            })
            .collect()
    }

    /// Whether every id of the store is in the digest. Until then the
    /// digest is partial: an answer to a peer's digest proves nothing
    /// (no `AnswerEnd`), as it may miss what we hold.
    pub fn primed(&self) -> bool {
        self.prime_cursor.is_none()
    }

    fn out(&mut self, to: Option<&ReplicaId>, msg: &Message, clock: Timestamp) -> Outbound {
        let (version, seq) = match to.and_then(|r| self.peers.get_mut(r)) {
            Some(p) => {
                let seq = if matches!(msg, Message::States { .. }) && p.version >= 4 {
                    p.exchange.states_sent += 1;
                    p.exchange.states_sent
                } else {
                    0
                };
                (p.version, seq)
            }
            None => (MIN_WIRE_VERSION, 0),
        };
        let bytes = msg.encode_seq(version, clock, seq);
        let bytes = match &self.cfg.auth {
            Some(ring) => {
                self.sent_seq += 1;
                ring.seal(&bytes, self.sent_seq, to.map(ReplicaId::as_bytes))
            }
            None => bytes,
        };
        self.counters.msgs_sent += 1;
        self.counters.bytes_sent += bytes.len() as u64;
        if let Some(p) = to.and_then(|r| self.peers.get_mut(r)) {
            p.stats.msgs_sent += 1;
            p.stats.bytes_sent += bytes.len() as u64;
            if let Message::Deltas { entries, .. } = msg {
                p.stats.deltas_sent += entries.len() as u64;
            }
        }
        Outbound {
            to: to.cloned(),
            bytes,
        }
    }

    /// Take the store's local changes into the log, go on with state
    /// transfers, send our stability report after a hello, expire members
    /// long silent, mark silent sessions down (and drop those long down),
    /// and ship each session up the intervals it lacks (retransmitting
    /// what waited too long).
    pub fn tick(&mut self, store: &Store, now_ms: u64, events: &mut Vec<Event>) -> Vec<Outbound> {
        self.take_local(store, events);
        if !self.primed() {
            self.refresh_digest(store);
        }
        let clock = store.tick_clock();
        let mut out = self.take_deferred(store, clock, now_ms, events);
        out.extend(self.drain_transfers(store, clock));
        out.extend(self.send_report(clock));
        self.expire_members(store, now_ms, events);
        let ids: Vec<ReplicaId> = self.peers.keys().cloned().collect();
        for r in ids {
            if self.check_liveness(&r, now_ms, events) {
                out.extend(self.ship_deltas(store, &r, clock, now_ms));
            }
        }
        out
    }

    fn reject(&mut self, events: &mut Vec<Event>, from: Option<&ReplicaId>, why: Reject, e: &str) {
        self.counters.rejected[why as usize] += 1;
        if let Some(p) = from.and_then(|r| self.peers.get_mut(r)) {
            p.stats.rejected[why as usize] += 1;
        }
        events.push(Event::Rejected(from.cloned(), why, e.to_string()));
    }

    /// Count, decode and check a message from the transport: not our own,
    /// from an id of a sane length, of a replica not forgotten, in a
    /// version we speak. Its clock is taken into ours, or refused when too
    /// far ahead. The message, its version, and what its handler needs.
    fn accept(
        &mut self,
        store: &Store,
        bytes: &[u8],
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Option<(Message, u8, Inbound)> {
        self.counters.msgs_received += 1;
        self.counters.bytes_received += bytes.len() as u64;
        let outer_len = bytes.len();
        let (bytes, sealed) = match &self.cfg.auth {
            // Sizes first: a MAC is not computed over more than a message
            // may hold.
            Some(_) if bytes.len() > MAX_SINGLE_ENTRY_MESSAGE_BYTES + FRAME_BYTES => {
                self.reject(events, None, Reject::Oversized, "larger than any message");
                return None;
            }
            Some(ring) => match ring.open(bytes, self.me.as_bytes()) {
                Ok(o) => (o.msg, Some(o)),
                Err(e) => {
                    self.reject(events, None, Reject::Unauthenticated, e.describe());
                    return None;
                }
            },
            None => (bytes, None),
        };
        let Envelope {
            version,
            clock,
            seq,
            msg,
        } = match Message::decode_envelope(bytes) {
            Ok(env) => env,
            Err(e) => {
                let why = match e {
                    Error::UnsupportedVersion(_) => Reject::Version,
                    _ if bytes.len() > MAX_MESSAGE_BYTES => Reject::Oversized,
                    _ => Reject::Malformed,
                };
                self.reject(events, None, why, &e.to_string());
                return None;
            }
        };
        let from = msg.from().clone();
        if from == self.me {
            return None;
        }
        if let Some(o) = sealed {
            // Before anything is counted or changed: a replay does nothing.
            if let Err((why, e)) = self.take_seq(&from, o.seq, &msg) {
                self.reject(events, Some(&from), why, e);
                return None;
            }
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.stats.msgs_received += 1;
            p.stats.bytes_received += outer_len as u64;
        }
        if from.as_bytes().len() > MAX_ID_BYTES {
            self.reject(events, None, Reject::Malformed, "sender id too long");
            return None;
        }
        if self.forgotten.contains(directory_of(&from)) {
            self.reject(events, Some(&from), Reject::Forgotten, "forgotten replica");
            return None;
        }
        if !self.cfg.versions.contains(&version) {
            self.reject(events, Some(&from), Reject::Version, "version not spoken");
            return None;
        }
        if sealed.is_some_and(|o| o.broadcast) && !matches!(msg, Message::Hello { .. }) {
            // Sealed for everyone, while only its recipient may take it.
            self.reject(events, Some(&from), Reject::Stale, "sealed as a broadcast");
            return None;
        }
        // A clock more than `max_clock_offset` ahead is not taken into ours
        // (the HLC receive rule refuses it), but the message is handled: a
        // node whose clock ran ahead, or whose persisted clock is ahead
        // after its clock was fixed, stays known, acknowledged and a
        // member, and receives everything. What it sends that is stamped
        // beyond the offset (creates, register values, deletes) is refused
        // entry by entry (`merge_entries`) until our clock reaches it;
        // such a refusal voids its log as a proof, so collection that
        // depends on it waits. A hello is checked in `on_hello`.
        if let Some(c) = clock {
            if let Err(e) = store.receive_clock(c) {
                let hello = matches!(msg, Message::Hello { .. });
                if let (Error::ClockSkew { ahead_ms }, Some(p)) = (&e, self.peers.get_mut(&from)) {
                    p.live.refused_ahead_ms = *ahead_ms;
                }
                if !hello {
                    let why = format!("{e}: not taken into our clock");
                    self.reject(events, Some(&from), Reject::ClockAhead, &why);
                }
            }
        }
        let ctx = Inbound {
            from,
            now_ms,
            clock: store.tick_clock(),
            sent: clock,
            seq,
        };
        Some((msg, version, ctx))
    }

    /// With authentication: take sequence number `seq` of `from`'s
    /// session, or say why not. Messages sealed for us were made during
    /// this engine's life (its session is in the MAC), and every number
    /// of a session heard since is remembered, also once the session is
    /// dropped: a replay is refused whenever it comes. A session's window
    /// opens with its first hello (a hello, a broadcast, is the only
    /// message that can come from before our start); anything else from
    /// a session not heard is from no known peer.
    fn take_seq(
        &mut self,
        from: &ReplicaId,
        seq: u64,
        msg: &Message,
    ) -> std::result::Result<(), (Reject, &'static str)> {
        let use_n = self.sent_seq;
        match self.windows.get_mut(from) {
            Some((w, used)) => {
                *used = use_n;
                if w.take(seq) {
                    Ok(())
                } else {
                    Err((Reject::Stale, "a replayed message"))
                }
            }
            None if matches!(msg, Message::Hello { .. }) => {
                if self.windows.len() >= MAX_REPLAY_WINDOWS {
                    let oldest = self
                        .windows
                        .iter()
                        .min_by_key(|(_, (_, u))| *u)
                        .map(|(r, _)| r.clone());
                    if let Some(r) = oldest {
                        self.windows.remove(&r);
                    }
                }
                let mut w = ReplayWindow::above(seq.saturating_sub(1));
                w.take(seq);
                self.windows.insert(from.clone(), (w, use_n));
                Ok(())
            }
            None => Err((Reject::UnknownPeer, "no hello yet")),
        }
    }

    /// Handle one message from the transport: each kind has its handler.
    pub fn receive(
        &mut self,
        store: &Store,
        bytes: &[u8],
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        let Some((msg, version, ctx)) = self.accept(store, bytes, now_ms, events) else {
            return Vec::new();
        };
        if let Message::Hello {
            versions,
            root,
            log_pos,
            attrs,
            clock,
            ..
        } = msg
        {
            let hello = Hello {
                versions,
                root,
                log_pos,
                clock,
                attrs,
            };
            let out = self.on_hello(store, &ctx, hello, events);
            self.maybe_collect(store, now_ms, events);
            return out;
        }
        let from = &ctx.from;
        let Some(p) = self.peers.get_mut(from) else {
            self.reject(events, Some(from), Reject::UnknownPeer, "no hello yet");
            return Vec::new();
        };
        if version != p.version {
            // Only the negotiated version: a version 1 message carries no
            // clock, so it must not bypass the clock check.
            self.reject(
                events,
                Some(from),
                Reject::Version,
                "not the negotiated version",
            );
            return Vec::new();
        }
        p.live.last_seen_ms = now_ms;
        match msg {
            Message::Deltas {
                base,
                seq_start,
                seq_end,
                entries,
                ..
            } => {
                let interval = Interval {
                    base,
                    seq_start,
                    seq_end,
                };
                self.on_deltas(store, &ctx, interval, entries, events)
            }
            Message::Ack { upto, .. } => {
                self.on_ack(&ctx, upto, events);
                Vec::new()
            }
            Message::DigestRequest { buckets, .. } => {
                self.on_digest_request(store, &ctx, &buckets, events)
            }
            Message::StateRequest { buckets, .. } => {
                self.on_state_request(store, &ctx, &buckets, events)
            }
            Message::AnswerEnd {
                first,
                last,
                log_pos,
                ..
            } => {
                self.on_answer_end(store, &ctx, first, last, log_pos);
                Vec::new()
            }
            Message::Frontier { at, frontiers, .. } => {
                self.on_frontier(from, at, frontiers);
                Vec::new()
            }
            Message::States { entries, .. } => self.on_states(store, &ctx, entries, events),
            Message::Hello { .. } => Vec::new(),
        }
    }
}

/// A peer's message as received: who sent it, and when.
struct Inbound {
    from: ReplicaId,
    /// The caller's clock.
    now_ms: u64,
    /// Our clock, ticked on receipt: what we send in answer is stamped
    /// with it.
    clock: Timestamp,
    /// The sender's clock on the envelope (none before version 2).
    sent: Option<Timestamp>,
    /// The envelope's sequence number of a `States` message (0: none).
    seq: u64,
}

impl Inbound {
    /// The sender's clock, 0 when none.
    fn sent_at(&self) -> u64 {
        self.sent.map_or(0, Timestamp::to_u64)
    }
}

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
//!   store by generation (`store::record`), acknowledges the contiguous
//!   prefix of a sender's intervals, answers digests with a push of our
//!   differing buckets plus a pull (`StateRequest`) of theirs.
//!
//! Every message from a peer is untrusted: it is decoded and validated in
//! full, a clock too far ahead rejects it whole, and each rejection is
//! counted and reported as an [`Event::Rejected`] (the caller rate-limits
//! its logs). Entries stay encoded bytes throughout: nothing here creates
//! atoms or decodes terms.

use super::digest::{bucket_of, stable_hash, Digest, BUCKETS};
use super::log::{DeltaLog, NextBatch};
use super::wire::{
    batch_budget, check_payload, negotiate, states_messages, Entry, Envelope, Message,
    MAX_MESSAGE_BYTES, MIN_WIRE_VERSION, WIRE_VERSION,
};
use crate::causal::ReplicaId;
use crate::crdt::Crdt;
use crate::error::Error;
use crate::hash::{HashMap, HashSet};
use crate::hlc::Timestamp;
use crate::store::record::{decode_parts, encode_gen, encode_parts, Meta};
use crate::store::{Merged, Store};

/// Bytes at the end of a sync id that change on every start: the store's
/// incarnation (8) and the engine's session (8). The rest is the data
/// directory's id, which a restart keeps.
const VOLATILE_BYTES: usize = 16;

/// The first wire version whose speakers kill by `record::Tomb`'s rule and
/// collect tombstones (see `wire`).
const TOMB_RULE_VERSION: u8 = 3;

/// Longest sync id accepted from a peer.
const MAX_ID_BYTES: usize = 64;

/// A peer down for this many `down_after_ms` (an hour with the default 5 s)
/// is dropped: it no longer holds the log or blocks collection, and comes
/// back as a new peer, through a digest exchange.
const EXPIRE_AFTER_DOWNS: u64 = 720;

/// Hellos with a differing root before a digest is sent even while deltas
/// to the peer are in flight.
const FORCE_DIGEST_AFTER: u8 = 5;

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

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Bound of the outgoing delta log's retained bytes.
    pub max_log_bytes: usize,
    /// Wire versions this node speaks (tests use `[1]` for an old node).
    pub versions: Vec<u8>,
    /// Resend an unacknowledged interval after this long.
    pub retransmit_ms: u64,
    /// A peer not heard from for this long is down.
    pub down_after_ms: u64,
    /// Free-form bytes announced in `Hello` (the node label).
    pub attrs: Vec<u8>,
    /// Collect remove tokens and delete tombstones once the cluster has
    /// been quiescent (see [`Engine`]) for this long.
    pub collect_after_ms: u64,
    /// Tests only: the session part of the sync id (random when `None`),
    /// so that a seeded simulation replays exactly.
    #[cfg(feature = "fault-injection")]
    pub session: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_log_bytes: super::log::DEFAULT_MAX_BYTES,
            versions: (MIN_WIRE_VERSION..=WIRE_VERSION).collect(),
            retransmit_ms: 200,
            down_after_ms: 5_000,
            attrs: Vec::new(),
            collect_after_ms: 2_000,
            #[cfg(feature = "fault-injection")]
            session: None,
        }
    }
}

/// A message to send: to one peer, or to every member of the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// `None`: broadcast.
    pub to: Option<ReplicaId>,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

/// Why a message (or entry) from a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Undecodable or invalid bytes.
    Malformed,
    /// A wire version this node does not speak, or no common version.
    Version,
    /// Larger than the message limit.
    Oversized,
    /// The sender's clock is more than `max_offset` ahead.
    ClockAhead,
    /// An entry whose type loses to (or clashes with) the local one.
    TypeClash,
    /// A replica that was forgotten with `forget_replica`.
    Forgotten,
    /// Data from a replica that never said hello (e.g. an old incarnation).
    UnknownPeer,
    /// Not the peer's fault: merging failed here (disk full, closing).
    LocalError,
}

impl Reject {
    /// A stable name.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Version => "unsupported_version",
            Reject::Oversized => "oversized",
            Reject::ClockAhead => "clock_ahead",
            Reject::TypeClash => "type_clash",
            Reject::Forgotten => "forgotten_replica",
            Reject::UnknownPeer => "unknown_peer",
            Reject::LocalError => "local_error",
        }
    }

    const ALL: [Reject; 8] = [
        Reject::Malformed,
        Reject::Version,
        Reject::Oversized,
        Reject::ClockAhead,
        Reject::TypeClash,
        Reject::Forgotten,
        Reject::UnknownPeer,
        Reject::LocalError,
    ];
}

/// Something the caller may want to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer was seen for the first time, or again after being down.
    PeerUp(ReplicaId, Vec<u8>),
    /// A peer went silent, restarted (old incarnation) or was forgotten.
    PeerDown(ReplicaId),
    /// A peer's entry changed `id` here.
    Changed(Box<[u8]>),
    /// A local change of `id` was taken for shipping.
    LocalChanged(Box<[u8]>),
    /// Something from a peer was refused (peer unknown for bytes that did
    /// not decode).
    Rejected(Option<ReplicaId>, Reject, String),
    /// A peer answered our digest (a round with it is complete).
    Answered(ReplicaId),
}

/// Counters, for `info` and telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub msgs_sent: u64,
    pub bytes_sent: u64,
    pub msgs_received: u64,
    pub bytes_received: u64,
    /// Local delta groups recorded into the log.
    pub deltas_recorded: u64,
    /// Entries merged from peers (deltas and states).
    pub entries_merged: u64,
    /// States sent answering state requests.
    pub states_sent: u64,
    pub digests_sent: u64,
    pub retransmits: u64,
    /// Set elements dropped by causal-stability collection.
    pub collected_elements: u64,
    /// Delete tombstones dropped by causal-stability collection.
    pub collected_tombstones: u64,
    /// Entries dropped because a newer generation or a tombstone won.
    pub dropped_stale: u64,
    /// Rejections, by [`Reject`] (in `Reject::ALL` order).
    pub rejected: [u64; 8],
}

impl Counters {
    /// `(name, count)` of every rejection kind.
    pub fn rejections(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reject::ALL
            .iter()
            .zip(self.rejected.iter())
            .map(|(r, n)| (r.name(), *n))
    }
}

/// Traffic with one peer, for `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub msgs_sent: u64,
    pub bytes_sent: u64,
    pub msgs_received: u64,
    pub bytes_received: u64,
    /// Local delta groups sent (an interval resent counts again).
    pub deltas_sent: u64,
    /// Entries merged from it (deltas and states).
    pub entries_received: u64,
    /// Refused input from it, by [`Reject`] (in `Reject::ALL` order).
    pub rejected: [u64; 8],
}

/// What [`Engine::peer_info`] tells of one peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: ReplicaId,
    pub up: bool,
    pub version: u8,
    pub attrs: Vec<u8>,
    /// The caller's clock (`now_ms` of the calls) when it was last heard.
    pub last_seen_ms: u64,
    /// Our deltas it has not acknowledged yet.
    pub ack_lag: u64,
    pub stats: PeerStats,
}

#[derive(Debug, Clone)]
struct Peer {
    version: u8,
    up: bool,
    last_seen_ms: u64,
    /// Highest sequence number of ours sent to it.
    sent_upto: u64,
    /// Since when sent intervals wait for an acknowledgement.
    inflight_since: Option<u64>,
    /// Highest sequence number of *its* log received contiguously.
    recv_upto: u64,
    /// Consecutive hellos whose root differed from ours.
    root_mismatches: u8,
    /// Since when it is down.
    down_since: Option<u64>,
    /// Traffic with it.
    stats: PeerStats,
    /// Digest root and log position of its last hello.
    last_root: Option<u64>,
    last_log_pos: u64,
    /// The HLC its last hello carried (`Timestamp::to_u64`).
    hello_clock: u64,
    /// `last_log_pos` when we last sent it our digest.
    digest_log_pos: u64,
    /// Nothing it sent failed to merge or was dropped since our last
    /// digest.
    answer_clean: bool,
    /// Its log is known to be in up to here from its answers to our
    /// digests (collection only: acknowledgements use `recv_upto`).
    caught_up: u64,
    /// Every record its log held up to here is here or was deleted (set
    /// at a collection point): entries up to here merge tombstones only.
    records_in_upto: u64,
    attrs: Vec<u8>,
}

/// The sync state of one store. See the module docs.
pub struct Engine {
    me: ReplicaId,
    cfg: EngineConfig,
    log: DeltaLog,
    peers: HashMap<ReplicaId, Peer>,
    /// Directory ids of forgotten replicas.
    forgotten: HashSet<Vec<u8>>,
    digest: Digest,
    hashes: HashMap<Box<[u8]>, u64>,
    /// Remove-wins sets holding remove tokens, with the version digested.
    collectable: HashMap<Box<[u8]>, u64>,
    /// Since when every peer announced our digest root (see `quiescent`).
    quiescent_since: Option<u64>,
    /// When tombstones were last offered to collection.
    tombs_scanned_ms: u64,
    /// State transfers in progress, per peer.
    transfers: HashMap<ReplicaId, std::collections::VecDeque<Transfer>>,
    /// Buckets whose states are queued for a peer (not queued twice).
    queued: HashMap<ReplicaId, HashSet<u16>>,
    dirty: HashSet<Box<[u8]>>,
    primed: bool,
    counters: Counters,
}

/// Bytes of states encoded per peer per call: a large state transfer (a
/// late joiner, a long absence) is spread over ticks instead of being built
/// in memory at once.
const TRANSFER_BYTES_PER_CALL: usize = 4 << 20;

/// One item of a state transfer to a peer, in order.
#[derive(Debug)]
enum Transfer {
    /// Our state of this id.
    State(Box<[u8]>),
    /// A message to send once the states before it went.
    Then(Message),
}

/// The directory part of a sync id (a replica id plus a session).
pub fn directory_of(r: &ReplicaId) -> &[u8] {
    let b = r.as_bytes();
    &b[..b.len().saturating_sub(VOLATILE_BYTES)]
}

/// The digest hash of one item: id, generation, tombstone flag, kind and
/// state in its digest form (`canonical::digest_bytes`; times are left
/// out: they are labels, not state).
fn item_hash(id: &[u8], meta: &Meta, crdt: &Crdt) -> u64 {
    let gen = encode_gen(&meta.gen);
    if meta.deleted {
        return stable_hash(&[id, &gen, b"deleted"]);
    }
    let state = super::canonical::digest_bytes(crdt);
    stable_hash(&[id, &gen, &[meta.kind.code()], &state])
}

impl Engine {
    /// An engine for `store`. Its sync id is the store's replica id plus a
    /// random session, so peers tell a restarted engine (same store) from
    /// the old one and never hold acknowledgements from a previous session.
    pub fn new(store: &Store, cfg: EngineConfig) -> Engine {
        let mut me = store.replica_id().as_bytes().to_vec();
        #[cfg(feature = "fault-injection")]
        let session = cfg.session.unwrap_or_else(random_u64);
        #[cfg(not(feature = "fault-injection"))]
        let session = random_u64();
        me.extend_from_slice(&session.to_be_bytes());
        Engine {
            me: ReplicaId::new(&me),
            log: DeltaLog::new(cfg.max_log_bytes),
            cfg,
            peers: HashMap::default(),
            forgotten: HashSet::default(),
            digest: Digest::new(),
            hashes: HashMap::default(),
            collectable: HashMap::default(),
            quiescent_since: None,
            tombs_scanned_ms: 0,
            transfers: HashMap::default(),
            queued: HashMap::default(),
            dirty: HashSet::default(),
            primed: false,
            counters: Counters::default(),
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

    /// States queued for state transfers, over every peer (for inspection).
    pub fn transfers_queued(&self) -> usize {
        self.transfers.values().map(|q| q.len()).sum()
    }

    /// Peers that are up.
    pub fn up_peers(&self) -> Vec<ReplicaId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Every known peer, for `info`.
    pub fn peer_info(&self) -> Vec<PeerInfo> {
        let last = self.log.next_seq() - 1;
        self.peers
            .iter()
            .map(|(r, p)| PeerInfo {
                id: r.clone(),
                up: p.up,
                version: p.version,
                attrs: p.attrs.clone(),
                last_seen_ms: p.last_seen_ms,
                ack_lag: last.saturating_sub(self.log.peer(r).map_or(0, |a| a.acked)),
                stats: p.stats.clone(),
            })
            .collect()
    }

    fn out(&mut self, to: Option<&ReplicaId>, msg: &Message, clock: Timestamp) -> Outbound {
        let version = to
            .and_then(|r| self.peers.get(r))
            .map_or(MIN_WIRE_VERSION, |p| p.version);
        let bytes = msg.encode_with(version, clock);
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

    /// Take the store's local changes into the log, retransmit what waited
    /// too long, ship new intervals, and mark silent peers down.
    pub fn tick(&mut self, store: &Store, now_ms: u64, events: &mut Vec<Event>) -> Vec<Outbound> {
        self.take_local(store, events);
        let mut out = Vec::new();
        let clock = store.tick_clock();
        let pending: Vec<ReplicaId> = self
            .transfers
            .keys()
            .filter(|r| self.peers.get(*r).is_some_and(|p| p.up))
            .cloned()
            .collect();
        for r in pending {
            out.extend(self.drain_transfer(store, &r, clock));
        }
        let budget = batch_budget(&self.me);
        let ids: Vec<ReplicaId> = self.peers.keys().cloned().collect();
        for r in ids {
            let Some(p) = self.peers.get_mut(&r) else {
                continue;
            };
            if p.up && now_ms.saturating_sub(p.last_seen_ms) > self.cfg.down_after_ms {
                p.up = false;
                p.down_since = Some(now_ms);
                events.push(Event::PeerDown(r.clone()));
            }
            if !p.up {
                let expire = self.cfg.down_after_ms.saturating_mul(EXPIRE_AFTER_DOWNS);
                if p.down_since
                    .is_some_and(|t| now_ms.saturating_sub(t) > expire)
                {
                    self.peers.remove(&r);
                    self.log.remove_peer(&r);
                }
                continue;
            }
            let acked = self.log.peer(&r).map_or(0, |a| a.acked);
            if p.sent_upto < acked {
                p.sent_upto = acked;
            }
            if let Some(since) = p.inflight_since {
                if p.sent_upto > acked && now_ms.saturating_sub(since) > self.cfg.retransmit_ms {
                    p.sent_upto = acked;
                    p.inflight_since = None;
                    self.counters.retransmits += 1;
                }
            }
            // At most 8 messages per peer and tick: the rest goes next tick.
            for _ in 0..8 {
                let start = self.peers[&r].sent_upto + 1;
                match self.log.batch_from(start, budget) {
                    NextBatch::UpToDate => break,
                    NextBatch::NeedsAntiEntropy => {
                        // Deltas it never acknowledged were dropped: a
                        // digest exchange brings it up to date instead.
                        let upto = self.log.resync(&r).unwrap_or(0);
                        if let Some(p) = self.peers.get_mut(&r) {
                            p.sent_upto = upto;
                            p.inflight_since = None;
                        }
                        out.push(self.digest_to(store, &r, clock));
                        break;
                    }
                    NextBatch::Batch(b) => {
                        let end = b.seq_end;
                        let base = self.log.peer(&r).map_or(0, |a| a.acked);
                        let msg = b.into_message(self.me.clone(), base);
                        out.push(self.out(Some(&r), &msg, clock));
                        let p = self.peers.get_mut(&r).expect("peer present");
                        p.sent_upto = end;
                        p.inflight_since.get_or_insert(now_ms);
                    }
                }
            }
        }
        out
    }

    /// Take the store's local changes into the log.
    fn take_local(&mut self, store: &Store, events: &mut Vec<Event>) {
        for (id, entry) in store.take_outgoing() {
            self.log.record(&id, &entry);
            self.counters.deltas_recorded += 1;
            events.push(Event::LocalChanged(id.clone()));
            self.dirty.insert(id);
        }
    }

    /// The heartbeat to broadcast. Local changes are taken into the log
    /// first, so the announced log position covers every change made before
    /// the digest root was computed.
    pub fn hello(&mut self, store: &Store, events: &mut Vec<Event>) -> Outbound {
        // The clock first: a change made meanwhile has a later stamp than
        // the hello's, and is not claimed by its log position.
        let clock = store.tick_clock();
        // Writes stamped before it finish first (a strict write stamps,
        // then writes without the shard lock), and the clock is on disk:
        // a restart never stamps below a clock a peer may cut at. If the
        // flush failed, the hello announces no more than the clock on disk
        // (a lower clock only lowers a peer's cut).
        let clock = match store.flush() {
            Ok(()) => clock,
            Err(_) => clock.min(store.persisted_clock()),
        };
        self.take_local(store, events);
        self.refresh_digest(store);
        let msg = Message::Hello {
            from: self.me.clone(),
            versions: self.cfg.versions.clone(),
            clock,
            root: self.digest.root(),
            log_pos: self.log.next_seq() - 1,
            attrs: self.cfg.attrs.clone(),
        };
        self.out(None, &msg, Timestamp::ZERO)
    }

    /// Start an anti-entropy round with every peer that is up: flushes our
    /// changes first (like [`Engine::tick`]), then sends each our digest.
    /// Each peer's answer comes back as [`Event::Answered`].
    pub fn round(
        &mut self,
        store: &Store,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> (Vec<ReplicaId>, Vec<Outbound>) {
        let mut out = self.tick(store, now_ms, events);
        let clock = store.tick_clock();
        let peers = self.up_peers();
        for r in &peers {
            out.push(self.digest_to(store, r, clock));
        }
        (peers, out)
    }

    fn digest_to(&mut self, store: &Store, to: &ReplicaId, clock: Timestamp) -> Outbound {
        self.refresh_digest(store);
        self.counters.digests_sent += 1;
        if let Some(p) = self.peers.get_mut(to) {
            p.digest_log_pos = p.last_log_pos;
            p.answer_clean = true;
        }
        let msg = Message::DigestRequest {
            from: self.me.clone(),
            buckets: self.digest.buckets().to_vec(),
        };
        self.out(Some(to), &msg, clock)
    }

    /// Stop tracking replicas of `directory` (an id from [`directory_of`])
    /// and refuse them from now on.
    pub fn forget(&mut self, directory: &[u8], events: &mut Vec<Event>) {
        self.forgotten.insert(directory.to_vec());
        let gone: Vec<ReplicaId> = self
            .peers
            .keys()
            .filter(|r| directory_of(r) == directory)
            .cloned()
            .collect();
        for r in gone {
            self.peers.remove(&r);
            self.log.remove_peer(&r);
            events.push(Event::PeerDown(r));
        }
    }

    /// Something `from` sent failed to merge or was dropped: its answer to
    /// our digest no longer proves its log is in.
    fn unclean(&mut self, from: &ReplicaId) {
        if let Some(p) = self.peers.get_mut(from) {
            p.answer_clean = false;
        }
    }

    fn reject(&mut self, events: &mut Vec<Event>, from: Option<&ReplicaId>, why: Reject, e: &str) {
        self.counters.rejected[why as usize] += 1;
        if let Some(p) = from.and_then(|r| self.peers.get_mut(r)) {
            p.stats.rejected[why as usize] += 1;
        }
        events.push(Event::Rejected(from.cloned(), why, e.to_string()));
    }

    /// Handle one message from the transport.
    pub fn receive(
        &mut self,
        store: &Store,
        bytes: &[u8],
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        self.counters.msgs_received += 1;
        self.counters.bytes_received += bytes.len() as u64;
        let Envelope {
            version,
            clock,
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
                return Vec::new();
            }
        };
        let from = msg.from().clone();
        if from == self.me {
            return Vec::new();
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.stats.msgs_received += 1;
            p.stats.bytes_received += bytes.len() as u64;
        }
        if from.as_bytes().len() > MAX_ID_BYTES {
            self.reject(events, None, Reject::Malformed, "sender id too long");
            return Vec::new();
        }
        if self.forgotten.contains(directory_of(&from)) {
            self.reject(events, Some(&from), Reject::Forgotten, "forgotten replica");
            return Vec::new();
        }
        if !self.cfg.versions.contains(&version) {
            self.reject(events, Some(&from), Reject::Version, "version not spoken");
            return Vec::new();
        }
        if let Some(c) = clock {
            if let Err(e) = store.receive_clock(c) {
                self.reject(events, Some(&from), Reject::ClockAhead, &e.to_string());
                return Vec::new();
            }
        }
        let env_clock = clock;
        let sent_at = clock.map_or(0, Timestamp::to_u64);
        let clock = store.tick_clock();
        if let Message::Hello {
            versions,
            root,
            log_pos,
            attrs,
            ..
        } = msg
        {
            let announced = (root, log_pos);
            let out = self.on_hello(
                store,
                from.clone(),
                &versions,
                announced,
                attrs,
                now_ms,
                events,
                clock,
            );
            if let Some(p) = self.peers.get_mut(&from) {
                p.hello_clock = sent_at;
            }
            self.maybe_collect(store, now_ms);
            return out;
        }
        let Some(p) = self.peers.get_mut(&from) else {
            self.reject(events, Some(&from), Reject::UnknownPeer, "no hello yet");
            return Vec::new();
        };
        if version != p.version {
            // Only the negotiated version: a version 1 message carries no
            // clock, so it must not bypass the clock check.
            self.reject(
                events,
                Some(&from),
                Reject::Version,
                "not the negotiated version",
            );
            return Vec::new();
        }
        p.last_seen_ms = now_ms;
        let mut out = Vec::new();
        match msg {
            Message::Deltas {
                base,
                seq_start,
                seq_end,
                entries,
                ..
            } => {
                let mut stale = Vec::new();
                // An interval received already (a late duplicate) is only
                // acknowledged again: merging it is idempotent, but a copy
                // old enough may predate a collected tombstone.
                // So is the part of an interval received already (a resend
                // overlapping it): entry `i` has sequence `seq_start + i`.
                let (upto, records_in) = self
                    .peers
                    .get(&from)
                    .map_or((0, 0), |p| (p.recv_upto, p.records_in_upto));
                let seen = seq_end <= upto;
                let skip = upto.saturating_add(1).saturating_sub(seq_start);
                let entries = entries
                    .into_iter()
                    .enumerate()
                    .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                    .filter(|(i, (_, bytes))| {
                        let seq = seq_start.saturating_add(*i as u64);
                        seq > records_in || decode_parts(bytes).map_or(true, |(m, _)| m.deleted)
                    })
                    .map(|(_, e)| e)
                    .collect();
                let merged = seen || self.merge_entries(store, &from, entries, events, &mut stale);
                if !merged {
                    self.unclean(&from);
                }
                out.extend(self.tombstones_for(store, &from, stale, clock));
                let p = self.peers.get_mut(&from).expect("peer present");
                // A merge that failed here (disk full, closing) is not
                // acknowledged: the sender sends the interval again.
                if merged {
                    p.recv_upto = p.recv_upto.max(base);
                    if seq_start <= p.recv_upto.saturating_add(1) {
                        p.recv_upto = p.recv_upto.max(seq_end);
                    }
                }
                let ack = Message::Ack {
                    from: self.me.clone(),
                    upto: p.recv_upto,
                };
                out.push(self.out(Some(&from), &ack, clock));
            }
            Message::Ack { upto, .. } => {
                let before = self.log.peer(&from).map_or(0, |a| a.acked);
                if self.log.ack(&from, upto).is_err() {
                    self.reject(events, Some(&from), Reject::Malformed, "ack beyond the log");
                } else if upto > before {
                    let p = self.peers.get_mut(&from).expect("peer present");
                    p.inflight_since = (p.sent_upto > upto).then_some(now_ms);
                }
            }
            Message::DigestRequest { buckets, .. } => {
                // Push ours where they differ, and pull theirs. Changes made
                // since our last tick count too (the requester's `sync`
                // must see every write acknowledged before it).
                self.take_local(store, events);
                self.refresh_digest(store);
                let diff = self.digest.diff(&buckets);
                self.queue_states(&from, &diff);
                let req = Message::StateRequest {
                    from: self.me.clone(),
                    buckets: diff,
                };
                // After our states: the requester's round is over when it
                // has them.
                self.transfers
                    .entry(from.clone())
                    .or_default()
                    .push_back(Transfer::Then(req));
                out.extend(self.drain_transfer(store, &from, clock));
            }
            Message::StateRequest { buckets, .. } => {
                // The end of the peer's answer to our digest: its states
                // came first, and held every change it had logged when it
                // announced the position we digested after. So its log is
                // in up to there, also for a restarted engine that no
                // delta interval told. Used for collection only (which
                // also needs equal digests), never for acknowledgements,
                // so a duplicated or early answer cannot lose a delta.
                if let Some(p) = self.peers.get_mut(&from) {
                    if p.answer_clean {
                        p.caught_up = p.caught_up.max(p.digest_log_pos);
                    }
                }
                if !buckets.is_empty() {
                    self.queue_states(&from, &buckets);
                    out.extend(self.drain_transfer(store, &from, clock));
                }
                events.push(Event::Answered(from));
            }
            Message::States { entries, .. }
                if env_clock.is_some() && sent_at < store.tomb_cut() =>
            {
                // Sent before a tombstone collection here: it may hold a
                // record whose tombstone is gone. What it holds that we
                // lack is pushed again by the next digest exchange.
                self.counters.dropped_stale += entries.len() as u64;
                self.unclean(&from);
            }
            Message::States { entries, .. } => {
                // A failed state is repaired by the next digest exchange.
                let mut stale = Vec::new();
                if !self.merge_entries(store, &from, entries, events, &mut stale) {
                    self.unclean(&from);
                }
                out.extend(self.tombstones_for(store, &from, stale, clock));
            }
            Message::Hello { .. } => {}
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        store: &Store,
        from: ReplicaId,
        versions: &[u8],
        (root, log_pos): (u64, u64),
        attrs: Vec<u8>,
        now_ms: u64,
        events: &mut Vec<Event>,
        clock: Timestamp,
    ) -> Vec<Outbound> {
        let Some(version) = negotiate(&self.cfg.versions, versions) else {
            self.reject(
                events,
                Some(&from),
                Reject::Version,
                "no common wire version",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        let known = self.peers.contains_key(&from);
        if !known {
            // A restart of a known directory supersedes its old incarnation.
            let dir = directory_of(&from).to_vec();
            let old: Vec<ReplicaId> = self
                .peers
                .keys()
                .filter(|r| directory_of(r) == dir.as_slice())
                .cloned()
                .collect();
            for r in old {
                self.peers.remove(&r);
                self.log.remove_peer(&r);
                events.push(Event::PeerDown(r));
            }
            // It acknowledged nothing: it catches up by digest, not by
            // replaying the whole log.
            self.log.add_peer(from.clone());
            let upto = self.log.resync(&from).unwrap_or(0);
            self.peers.insert(
                from.clone(),
                Peer {
                    version,
                    up: false,
                    last_seen_ms: now_ms,
                    sent_upto: upto,
                    inflight_since: None,
                    recv_upto: 0,
                    root_mismatches: 0,
                    down_since: None,
                    stats: PeerStats::default(),
                    last_root: None,
                    last_log_pos: 0,
                    hello_clock: 0,
                    digest_log_pos: 0,
                    answer_clean: false,
                    caught_up: 0,
                    records_in_upto: 0,
                    attrs: attrs.clone(),
                },
            );
        }
        let p = self.peers.get_mut(&from).expect("peer present");
        p.last_seen_ms = now_ms;
        p.version = version;
        p.last_root = Some(root);
        p.last_log_pos = log_pos;
        p.down_since = None;
        let came_up = !p.up;
        p.up = true;
        if came_up {
            events.push(Event::PeerUp(from.clone(), attrs));
            // Introduce ourselves at once, and compare digests.
            let hello = self.hello(store, events);
            out.push(Outbound {
                to: Some(from.clone()),
                ..hello
            });
            out.push(self.digest_to(store, &from, clock));
            return out;
        }
        self.refresh_digest(store);
        let p = self.peers.get_mut(&from).expect("peer present");
        if root == self.digest.root() {
            p.root_mismatches = 0;
            return out;
        }
        p.root_mismatches = p.root_mismatches.saturating_add(1);
        let acked = self.log.peer(&from).map_or(0, |a| a.acked);
        let settled = acked + 1 >= self.log.next_seq();
        if (p.root_mismatches >= 2 && settled) || p.root_mismatches >= FORCE_DIGEST_AFTER {
            p.root_mismatches = 0;
            out.push(self.digest_to(store, &from, clock));
        }
        out
    }

    fn merge_entries(
        &mut self,
        store: &Store,
        from: &ReplicaId,
        entries: Vec<Entry>,
        events: &mut Vec<Event>,
        stale: &mut Vec<Box<[u8]>>,
    ) -> bool {
        let mut all_merged = true;
        let mut merged_here = 0u64;
        // Timestamps from the future would let a runaway clock win every
        // register write and drag our clock along.
        let horizon = store.now_ms().saturating_add(store.max_clock_offset_ms());
        for (id, bytes) in entries {
            let parsed = check_payload(&bytes)
                .and_then(|()| decode_parts(&bytes))
                .and_then(|(meta, crdt)| Ok((meta, Crdt::decode(crdt)?)));
            let (meta, crdt) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    self.reject(events, Some(from), Reject::Malformed, &e.to_string());
                    continue;
                }
            };
            let register_ts = match &crdt {
                Crdt::LwwRegister(r) => r.timestamp().map_or(0, |t| t.wall_ms),
                _ => 0,
            };
            if meta.gen.replica.len() > MAX_ID_BYTES {
                self.reject(events, Some(from), Reject::Malformed, "replica id too long");
                continue;
            }
            let stamp = Timestamp::wall_of_u64(meta.gen.stamp);
            // A tombstone's delete stamp too: one from the future would
            // never be collected and would kill every create before it.
            let deleted_at = if meta.deleted {
                Timestamp::wall_of_u64(meta.updated_at)
            } else {
                0
            };
            if register_ts > horizon || stamp > horizon || deleted_at > horizon {
                self.reject(
                    events,
                    Some(from),
                    Reject::ClockAhead,
                    "entry from the future",
                );
                continue;
            }
            match store.merge_remote(&id, &meta, &crdt) {
                Ok(Merged::Dropped { clash: true }) | Ok(Merged::Replaced { clash: true }) => {
                    // One of the two types lost: its data is dropped, never
                    // merged into the other.
                    self.reject(events, Some(from), Reject::TypeClash, "type clash resolved");
                    self.dirty.insert(id.clone().into());
                    events.push(Event::Changed(id.into()));
                }
                Ok(Merged::Dropped { clash: false }) => self.counters.dropped_stale += 1,
                Ok(Merged::Stale) => {
                    self.counters.dropped_stale += 1;
                    stale.push(id.into());
                }
                Ok(Merged::CutDeleted) => {
                    self.counters.dropped_stale += 1;
                    stale.push(id.clone().into());
                    self.dirty.insert(id.clone().into());
                    events.push(Event::Changed(id.into()));
                }
                Ok(Merged::Tombstone) => {
                    self.counters.entries_merged += 1;
                    merged_here += 1;
                    self.dirty.insert(id.into());
                }
                Ok(_) => {
                    self.counters.entries_merged += 1;
                    merged_here += 1;
                    self.dirty.insert(id.clone().into());
                    events.push(Event::Changed(id.into()));
                }
                Err(Error::TypeMismatch) => {
                    self.reject(
                        events,
                        Some(from),
                        Reject::TypeClash,
                        "two types, one generation",
                    );
                }
                Err(e @ (Error::Decode(_) | Error::UnsupportedVersion(_) | Error::Overflow)) => {
                    self.reject(events, Some(from), Reject::Malformed, &e.to_string());
                }
                Err(Error::ValueTooLarge { .. }) => {
                    self.reject(events, Some(from), Reject::Oversized, "id too large");
                }
                Err(e) => {
                    // Local trouble (disk full, closed): not the peer's
                    // fault; the interval is not acknowledged, so it comes
                    // again.
                    all_merged = false;
                    self.reject(events, Some(from), Reject::LocalError, &e.to_string());
                }
            }
        }
        if let Some(p) = self.peers.get_mut(from) {
            p.stats.entries_received += merged_here;
        }
        all_merged
    }

    /// `States` messages with our tombstones of `ids` for `to`, which sent
    /// us records of those deleted generations (it missed the delete).
    fn tombstones_for(
        &mut self,
        store: &Store,
        to: &ReplicaId,
        mut ids: Vec<Box<[u8]>>,
        clock: Timestamp,
    ) -> Vec<Outbound> {
        // Every tombstone of each id; ids are distinct within a message, so
        // the k-th tombstones of the ids go in the k-th layer of messages.
        let mut layers: Vec<Vec<Entry>> = Vec::new();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let Some(tombs) = store.tombstone(&id) else {
                continue;
            };
            for (k, t) in tombs.iter().enumerate() {
                let meta = t.entry_meta();
                let state = Crdt::new(meta.kind).encode();
                if layers.len() <= k {
                    layers.push(Vec::new());
                }
                layers[k].push((id.to_vec(), encode_parts(&meta, &state)));
            }
        }
        let msgs: Vec<Message> = layers
            .into_iter()
            .flat_map(|entries| states_messages(&self.me, entries))
            .collect();
        msgs.iter().map(|m| self.out(Some(to), m, clock)).collect()
    }

    /// Queue our states of every id in `buckets` for `to`.
    fn queue_states(&mut self, to: &ReplicaId, buckets: &[u16]) {
        if buckets.is_empty() {
            return;
        }
        let mut wanted = [false; BUCKETS];
        let queued = self.queued.entry(to.clone()).or_default();
        for b in buckets {
            if queued.insert(*b) {
                wanted[*b as usize] = true;
            }
        }
        let q = self.transfers.entry(to.clone()).or_default();
        q.extend(
            self.hashes
                .keys()
                .filter(|id| wanted[bucket_of(id) as usize])
                .map(|id| Transfer::State(id.clone())),
        );
    }

    /// Send the next part of the state transfer to `to`: states up to
    /// [`TRANSFER_BYTES_PER_CALL`], in `States` messages of at most 1 MiB,
    /// and the messages queued behind them.
    fn drain_transfer(&mut self, store: &Store, to: &ReplicaId, clock: Timestamp) -> Vec<Outbound> {
        let Some(mut q) = self.transfers.remove(to) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        let flush = |this: &mut Self, entries: &mut Vec<Entry>, out: &mut Vec<Outbound>| {
            if entries.is_empty() {
                return;
            }
            this.counters.states_sent += entries.len() as u64;
            for m in states_messages(&this.me, std::mem::take(entries)) {
                out.push(this.out(Some(to), &m, clock));
            }
        };
        while bytes < TRANSFER_BYTES_PER_CALL {
            match q.pop_front() {
                None => break,
                Some(Transfer::State(id)) => {
                    let enc = store
                        .with_sync_state(&id, |meta, crdt, _| encode_parts(meta, &crdt.encode()));
                    if let Ok(Some(b)) = enc {
                        bytes += b.len() + id.len();
                        entries.push((id.to_vec(), b));
                    }
                }
                Some(Transfer::Then(m)) => {
                    flush(self, &mut entries, &mut out);
                    out.push(self.out(Some(to), &m, clock));
                }
            }
        }
        flush(self, &mut entries, &mut out);
        // Paused while the peer is down; dropped with it.
        if !q.is_empty() && self.peers.contains_key(to) {
            self.transfers.insert(to.clone(), q);
        } else {
            self.queued.remove(to);
        }
        out
    }

    /// Whether the cluster is quiescent: there is at least one peer, every
    /// known peer (up or down, until forgotten) announced in its last hello
    /// the digest root we have now, and we received its log up to the
    /// position announced with it. Then every replica held the state we
    /// digested, and every operation made before is here: whatever a remove
    /// token or a tombstone of that state guards against cannot arrive any
    /// more (operations made later observed it).
    fn quiescent(&self) -> bool {
        let root = self.digest.root();
        !self.peers.is_empty()
            && self.peers.values().all(|p| {
                p.up && p.last_root == Some(root) && p.recv_upto.max(p.caught_up) >= p.last_log_pos
            })
    }

    /// Causal-stability collection: once the cluster has been quiescent for
    /// `collect_after_ms` (a margin for messages still in flight), drop the
    /// remove tokens of the digested state, with the adds they beat. Each
    /// set is collected only if it did not change since it was digested.
    /// Every replica collects the same at its own quiescent point; a replica
    /// that has not yet joins a collected state without bringing anything
    /// back (the collected dots stay in the context), and a late copy of a
    /// collected dot is recognised as removed for the same reason.
    ///
    /// Delete tombstones are collected at the same point (at most once per
    /// `collect_after_ms`): those whose delete came before the clock of
    /// every peer's last hello. Every replica then holds no record the
    /// tombstone kills (the digests agree), and every operation made before
    /// was received (the logs are in), so nothing it guards against can
    /// still arrive. A create made after the delete, here or on a replica
    /// that still holds the tombstone, survives it (`record::Tomb`), so
    /// replicas that collect at different times agree.
    fn maybe_collect(&mut self, store: &Store, now_ms: u64) {
        let tombs_due = now_ms.saturating_sub(self.tombs_scanned_ms) >= self.cfg.collect_after_ms;
        // Quiescence is judged at every hello, work or not, so that the
        // `collect_after_ms` margin restarts whenever it was broken.
        self.refresh_digest(store);
        if !self.quiescent() {
            self.quiescent_since = None;
            return;
        }
        let since = *self.quiescent_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) < self.cfg.collect_after_ms {
            return;
        }
        // Our root is the one each peer announced with its log position:
        // every record it logged up to there is here or was deleted. A
        // late resend of those intervals brings only their tombstones (the
        // digest does not cover deletes), never a record whose tombstone
        // may be collected now; it is acknowledged on receipt as usual.
        for p in self.peers.values_mut() {
            p.records_in_upto = p.records_in_upto.max(p.last_log_pos);
        }
        for (id, version) in std::mem::take(&mut self.collectable) {
            if let Ok(n) = store.collect(&id, version) {
                self.counters.collected_elements += n as u64;
            }
            self.dirty.insert(id);
        }
        // Only while every peer collects by the same rule (version 3), and
        // has acknowledged our whole log: nothing we wrote (an import, a
        // create a tombstone would not stop) is still on its way.
        let last = self.log.next_seq().saturating_sub(1);
        let all_acked = self
            .peers
            .keys()
            .all(|r| self.log.peer(r).is_some_and(|a| a.acked >= last));
        let same_rule = self.peers.values().all(|p| p.version >= TOMB_RULE_VERSION);
        if tombs_due && all_acked && same_rule {
            self.tombs_scanned_ms = now_ms;
            let cut = self
                .peers
                .values()
                .map(|p| p.hello_clock)
                .min()
                .unwrap_or(0);
            // Every replica in the agreement, by directory (see
            // `Store::collect_tombstones`).
            let members: Vec<&[u8]> = self
                .peers
                .keys()
                .chain(std::iter::once(&self.me))
                .map(directory_of)
                .collect();
            if let Ok(n) = store.collect_tombstones(cut, &members) {
                self.counters.collected_tombstones += n as u64;
            }
        }
        self.refresh_digest(store);
    }

    /// Bring the digest up to date with every changed id.
    fn refresh_digest(&mut self, store: &Store) {
        if !self.primed {
            self.primed = true;
            if let Ok(ids) = store.ids() {
                self.dirty.extend(ids);
            }
            self.dirty
                .extend(store.tombstones().into_iter().map(|(id, _)| id));
        }
        if self.dirty.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.dirty) {
            let read = store.with_sync_state(&id, |m, c, version| {
                // Tombstones stay out of the digest (see `collect`): a peer
                // that still holds the deleted record learns of the delete
                // when it pushes the record and we answer with the tombstone.
                if m.deleted {
                    return (None, None);
                }
                let collectable = c.has_collectable().then_some(version);
                (Some(item_hash(&id, m, c)), collectable)
            });
            let new = match read {
                Ok(Some((h, collectable))) => {
                    match collectable {
                        Some(c) => self.collectable.insert(id.clone(), c),
                        None => self.collectable.remove(&id),
                    };
                    h
                }
                Ok(None) => {
                    self.collectable.remove(&id);
                    None
                }
                // Unreadable now: try again at the next refresh.
                Err(_) => {
                    self.dirty.insert(id);
                    continue;
                }
            };
            let old = match new {
                Some(h) => self.hashes.insert(id.clone(), h),
                None => self.hashes.remove(&id),
            };
            if old != new {
                self.digest.replace_hash(&id, old, new);
            }
        }
    }
}

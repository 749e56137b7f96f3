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
//! # Membership and stability
//!
//! Remove tokens and delete tombstones guard against operations that have
//! not arrived yet; they may be dropped once nothing they guard against
//! can arrive any more. That is judged per *member*, not by who happens to
//! be up:
//!
//! * **Membership is persisted** (`store::membership`). A replica
//!   directory whose hello was accepted is a member until it is removed:
//!   by `forget` (`forget_replica`), or after `member_expiry_ms` without a
//!   hello heard by a running engine. A member that is down, refused, or
//!   not heard since a restart holds collection back.
//! * **A frontier per member**, `F[d]`, an HLC stamp of `d`'s clock:
//!   every change `d` made before its clock read `F[d]` is here (or was
//!   deleted or replaced here). It rises by two proofs. *State*: `d`
//!   answered our digest completely (`AnswerEnd`, with every `States`
//!   message of the answer received and merged): everything `d` held when
//!   it took its state is here. *Log*: after a state proof in the same
//!   session, `d` announced log position `p` in a hello stamped `h` and we
//!   hold its log up to `p` contiguously: everything it made before `h` is
//!   here. A skipped part of its log (a jump of `base`, an entry refused)
//!   voids the state proof until the next one. Frontiers never pass our
//!   own wall clock, and the frontier a collection used is persisted as
//!   the directory's cut.
//! * **Tombstones** whose delete came before every member's frontier are
//!   collected, each directory's frontier becoming its cut: a late copy of
//!   a record a member created before its cut, not held here, was deleted
//!   here and is deleted again with a tombstone (`Store::merge_remote`),
//!   whoever sends it and whenever.
//! * **Remove tokens** are collected when *stable*: every member has
//!   delivered them, and everything each member made before delivering
//!   them is here (Baquero, Almeida, Shoker, *Making Operation-based CRDTs
//!   Operation-based*; Antidote's stable vector). Each member reports its
//!   own global frontier (the least of its frontiers) in a `Frontier`
//!   message with each hello; a report counts once our frontier of that
//!   member passes the hello it came with. A set's tokens are snapshotted
//!   (its version vector) at a clock `t`; once every member's usable
//!   report passes `t`, the tokens the snapshot covers are dropped. No
//!   quiet moment is needed: collection keeps up with writes that never
//!   pause.
//!
//! Every message from a peer is untrusted: it is decoded and validated in
//! full, a clock too far ahead rejects it whole, and each rejection is
//! counted and reported as an [`Event::Rejected`] (the caller rate-limits
//! its logs). Entries stay encoded bytes throughout: nothing here creates
//! atoms or decodes terms.

mod anti_entropy;
mod api;
mod collect;
mod deltas;
mod peer;

use crate::causal::ReplicaId;
use crate::crdt::Crdt;
use crate::error::Error;
use crate::hash::{HashMap, HashSet};
use crate::hlc::Timestamp;
use crate::store::record::{decode_parts, encode_gen, encode_parts, Meta};
use crate::store::{Merged, Store};
use crate::sync::digest::{bucket_of, stable_hash, Digest, BUCKETS};
use crate::sync::log::{DeltaLog, NextBatch};
use crate::sync::wire::{
    batch_budget, check_payload, negotiate, states_messages, Entry, Envelope, Message,
    MAX_MESSAGE_BYTES, MIN_WIRE_VERSION,
};

use anti_entropy::{Transfer, TRANSFER_BYTES_PER_CALL};
pub use api::{Counters, EngineConfig, Event, MemberInfo, Outbound, PeerInfo, PeerStats, Reject};
use collect::{wall_stamp, Frontiers, Member, Snapshot};
use deltas::Merge;
use peer::{Announced, Peer};

/// Bytes at the end of a sync id that change on every start: the store's
/// incarnation (8) and the engine's session (8). The rest is the data
/// directory's id, which a restart keeps.
const VOLATILE_BYTES: usize = 16;

/// The first wire version whose speakers prove frontiers and report
/// stability (see "Membership and stability"); an older peer never does,
/// so while it is a member nothing is collected.
const STABILITY_VERSION: u8 = 4;

/// Longest sync id accepted from a peer.
const MAX_ID_BYTES: usize = 64;

/// A peer session down for this many `down_after_ms` (50 s with the
/// default 5 s) is dropped with everything kept for it (its part of the
/// log, its transfers); it comes back as a new session, through a digest
/// exchange. Its directory stays a member (see `member_expiry_ms`).
const EXPIRE_AFTER_DOWNS: u64 = 10;

/// Most sessions held at once of ids that name no member directory (a
/// member's directory has one session: a new one supersedes the old).
const MAX_OTHER_SESSIONS: usize = 16;

/// Hellos announcing a log position we do not hold before a state proof
/// is asked for instead.
const STALLED_HELLOS: u8 = 3;

/// `States` sequence numbers remembered per peer, to check that an answer
/// to our digest arrived whole.
const STATES_WINDOW: usize = 4096;

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
    /// State transfers in progress, per peer.
    transfers: std::collections::BTreeMap<ReplicaId, std::collections::VecDeque<Transfer>>,
    /// Buckets whose states are queued for a peer (not queued twice).
    queued: std::collections::BTreeMap<ReplicaId, HashSet<u16>>,
    dirty: HashSet<Box<[u8]>>,
    /// While the digest is being built from the store's ids, page by page:
    /// the cursor of the next page (`Some(None)`: the first).
    prime_cursor: Option<Option<Box<[u8]>>>,
    counters: Counters,
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
            transfers: Default::default(),
            queued: Default::default(),
            dirty: HashSet::default(),
            prime_cursor: Some(None),
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
            .filter(|(_, p)| p.up)
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
                up: p.up,
                version: p.version,
                attrs: p.attrs.clone(),
                last_seen_ms: p.last_seen_ms,
                ack_lag: last.saturating_sub(self.log.peer(r).map_or(0, |a| a.acked)),
                clock_offset_ms: p.clock_offset_ms,
                refused_ahead_ms: p.refused_ahead_ms,
                anchored: p.anchored(),
                stats: p.stats.clone(),
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
                    p.states_sent += 1;
                    p.states_sent
                } else {
                    0
                };
                (p.version, seq)
            }
            None => (MIN_WIRE_VERSION, 0),
        };
        let bytes = msg.encode_seq(version, clock, seq);
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
    /// too long, ship new intervals, send our stability report after a
    /// hello, drop sessions long down and expire members long silent.
    pub fn tick(&mut self, store: &Store, now_ms: u64, events: &mut Vec<Event>) -> Vec<Outbound> {
        self.take_local(store, events);
        if !self.primed() {
            self.refresh_digest(store);
        }
        let mut out = Vec::new();
        let clock = store.tick_clock();
        let pending: Vec<ReplicaId> = self
            .transfers
            .keys()
            .filter(|r| self.peers.get(*r).is_some_and(|p| p.up))
            .cloned()
            .collect();
        // One budget per tick over every peer, starting with a different
        // one each tick: many peers catching up at once (or forged ones)
        // cost no more per tick than one.
        let n = pending.len();
        let mut spent = 0usize;
        for k in 0..n {
            if spent >= TRANSFER_BYTES_PER_CALL {
                break;
            }
            let r = &pending[(self.transfer_turn + k) % n];
            let (o, bytes) = self.drain_transfer_bytes(store, r, clock);
            out.extend(o);
            spent += bytes;
        }
        self.transfer_turn = self.transfer_turn.wrapping_add(1);
        if let Some((at, frontiers)) = self.report.take() {
            let msg = Message::Frontier {
                from: self.me.clone(),
                at,
                frontiers,
            };
            let to: Vec<ReplicaId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.up && p.version >= STABILITY_VERSION)
                .map(|(r, _)| r.clone())
                .collect();
            for r in to {
                out.push(self.out(Some(&r), &msg, clock));
            }
        }
        self.expire_members(store, now_ms, events);
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
                    self.drop_peer(&r);
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
            let mut sent_upto = p.sent_upto;
            // At most 8 messages per peer and tick: the rest goes next tick.
            for _ in 0..8 {
                match self.log.batch_from(sent_upto + 1, budget) {
                    NextBatch::UpToDate => break,
                    NextBatch::NeedsAntiEntropy => {
                        // Deltas it never acknowledged were dropped: a
                        // digest exchange brings it up to date instead.
                        sent_upto = self.log.resync(&r).unwrap_or(0);
                        if let Some(p) = self.peers.get_mut(&r) {
                            p.sent_upto = sent_upto;
                            p.inflight_since = None;
                        }
                        out.push(self.digest_to(store, &r, clock, now_ms));
                        break;
                    }
                    NextBatch::Batch(b) => {
                        let end = b.seq_end;
                        let base = self.log.peer(&r).map_or(0, |a| a.acked);
                        let msg = b.into_message(self.me.clone(), base);
                        out.push(self.out(Some(&r), &msg, clock));
                        sent_upto = end;
                        if let Some(p) = self.peers.get_mut(&r) {
                            p.sent_upto = end;
                            p.inflight_since.get_or_insert(now_ms);
                        }
                    }
                }
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
                    p.refused_ahead_ms = *ahead_ms;
                }
                if !hello {
                    let why = format!("{e}: not taken into our clock");
                    self.reject(events, Some(&from), Reject::ClockAhead, &why);
                }
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
            clock: hello_clock,
            ..
        } = msg
        {
            let out = self.on_hello(
                store,
                from.clone(),
                &versions,
                Announced {
                    root,
                    log_pos,
                    clock: hello_clock,
                },
                attrs,
                now_ms,
                events,
                clock,
            );
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
                let (upto, records_in) = (p.recv_upto, p.records_in_upto);
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
                let merged = if seen {
                    Merge::default()
                } else {
                    self.merge_entries(store, &from, entries, events, &mut stale)
                };
                if !merged.all {
                    self.unclean(&from);
                }
                out.extend(self.tombstones_for(store, &from, stale, clock));
                let Some(p) = self.peers.get_mut(&from) else {
                    return out;
                };
                // A merge that failed here (disk full, closing) is not
                // acknowledged: the sender sends the interval again.
                if merged.all {
                    if base > p.recv_upto || merged.refused {
                        // Part of its log never reaches us (dropped by
                        // its bound, caught up by a digest instead), or an
                        // entry was refused: its log proves nothing until
                        // a state proof made after this.
                        p.jump_clock = p.jump_clock.max(sent_at);
                    }
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
                self.advance_by_log(store, &from);
            }
            Message::Ack { upto, .. } => {
                let before = self.log.peer(&from).map_or(0, |a| a.acked);
                if self.log.ack(&from, upto).is_err() {
                    self.reject(events, Some(&from), Reject::Malformed, "ack beyond the log");
                } else if upto > before {
                    if let Some(p) = self.peers.get_mut(&from) {
                        p.inflight_since = (p.sent_upto > upto).then_some(now_ms);
                    }
                }
            }
            Message::DigestRequest { buckets, .. } => {
                // One transfer per peer at a time: a request is answered
                // with work bounded by what we hold, once.
                if self.transfers.get(&from).is_some_and(|q| !q.is_empty()) {
                    self.reject(events, Some(&from), Reject::Busy, "transfer under way");
                    return out;
                }
                // Our state is taken now: writes stamped before it finish
                // first (see `hello`), and changes made since our last tick
                // count too (the requester's `sync` must see every write
                // acknowledged before it).
                let snap = store.tick_clock();
                let flushed = store.flush().is_ok();
                self.take_local(store, events);
                self.refresh_digest(store);
                let diff = self.digest.diff(&buckets);
                let first = self.peers.get(&from).map_or(0, |p| p.states_sent + 1);
                let version = self.peers.get(&from).map_or(0, |p| p.version);
                self.queue_states(&from, &diff);
                let req = Message::StateRequest {
                    from: self.me.clone(),
                    buckets: diff,
                };
                // After our states: the requester's round is over when it
                // has them.
                let proves = flushed && version >= STABILITY_VERSION && self.primed();
                let log_pos = self.log.next_seq() - 1;
                let q = self.transfers.entry(from.clone()).or_default();
                q.push_back(Transfer::Then(req, snap));
                if proves {
                    q.push_back(Transfer::AnswerEnd {
                        first,
                        clock: snap,
                        log_pos,
                    });
                }
                out.extend(self.drain_transfer(store, &from, clock));
            }
            Message::StateRequest { buckets, .. } => {
                if !buckets.is_empty() {
                    self.queue_states(&from, &buckets);
                    out.extend(self.drain_transfer(store, &from, clock));
                }
                events.push(Event::Answered(from));
            }
            Message::AnswerEnd {
                first,
                last,
                log_pos,
                ..
            } => {
                // The state proof: its answer to our digest came whole and
                // merged, so everything it held when it took its state
                // (`sent_at`, its clock) is here.
                let Some(p) = self.peers.get_mut(&from) else {
                    return out;
                };
                let whole = first > last
                    || (last - first < STATES_WINDOW as u64
                        && (first..=last).all(|s| p.states_seen.contains(&s)));
                if p.digest_sent_ms.is_some() && p.answer_clean && whole && sent_at > 0 {
                    p.digest_sent_ms = None;
                    p.anchor = Some(p.anchor.map_or(sent_at, |a| a.max(sent_at)));
                    // Its changes logged up to `log_pos` are in that state:
                    // a late copy of them brings only its deletes (a record
                    // it held then is here; one it no longer held was
                    // deleted or replaced, and must not come back).
                    p.records_in_upto = p.records_in_upto.max(log_pos);
                    self.counters.state_proofs += 1;
                    self.raise_frontier(store, directory_of(&from), sent_at);
                    self.advance_by_log(store, &from);
                }
            }
            Message::Frontier { at, frontiers, .. } => {
                if let Some(m) = self.members.get_mut(directory_of(&from)) {
                    for f in &self.forgetting {
                        let lists = frontiers.iter().any(|(d, _)| d == f);
                        match m.cleared.get(&f[..]).copied() {
                            None if !lists => {
                                m.cleared.insert(f[..].into(), at);
                            }
                            Some(c) if lists && at > c => {
                                m.cleared.remove(&f[..]);
                            }
                            _ => {}
                        }
                    }
                    m.report(at, frontiers);
                }
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
                let merged = self.merge_entries(store, &from, entries, events, &mut stale);
                if !merged.all || merged.refused {
                    self.unclean(&from);
                } else if seq > 0 {
                    if let Some(p) = self.peers.get_mut(&from) {
                        p.states_seen.insert(seq);
                        while p.states_seen.len() > STATES_WINDOW {
                            p.states_seen.pop_first();
                        }
                    }
                }
                out.extend(self.tombstones_for(store, &from, stale, clock));
            }
            Message::Hello { .. } => {}
        }
        out
    }
}

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
    /// Run collection (see "Membership and stability") at most this often.
    pub collect_after_ms: u64,
    /// A member directory not heard from (no hello accepted) by this engine
    /// for this long is removed from the membership (see
    /// [`Store::remove_member`]); 0: never.
    pub member_expiry_ms: u64,
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
            member_expiry_ms: 24 * 3_600_000,
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
    /// A digest request while a state transfer to the peer is still under
    /// way (each peer gets one at a time).
    Busy,
    /// A hello from a new directory beyond the membership bound.
    TooManyPeers,
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
            Reject::Busy => "busy",
            Reject::TooManyPeers => "too_many_peers",
        }
    }

    const ALL: [Reject; 10] = [
        Reject::Malformed,
        Reject::Version,
        Reject::Oversized,
        Reject::ClockAhead,
        Reject::TypeClash,
        Reject::Forgotten,
        Reject::UnknownPeer,
        Reject::LocalError,
        Reject::Busy,
        Reject::TooManyPeers,
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
    /// Frontier proofs by a complete answer to our digest.
    pub state_proofs: u64,
    /// Member directories removed (expired or forgotten).
    pub members_removed: u64,
    /// Rejections, by [`Reject`] (in `Reject::ALL` order).
    pub rejected: [u64; 10],
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
    pub rejected: [u64; 10],
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
    /// Its clock minus our wall clock at its last hello, in ms.
    pub clock_offset_ms: i64,
    /// How far ahead of ours its clock was when we last refused a message
    /// of it for that (0: never).
    pub refused_ahead_ms: u64,
    /// Whether a state proof holds in this session (see "Membership and
    /// stability").
    pub anchored: bool,
    pub stats: PeerStats,
}

/// What [`Engine::member_info`] tells of one member directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub directory: Vec<u8>,
    /// Whether a session of it is up.
    pub up: bool,
    /// Its frontier here (`Timestamp::to_u64`; see the module docs).
    pub frontier: u64,
    /// Its latest usable stability report.
    pub stable: u64,
    /// The caller's clock when it was last heard (0: not since start).
    pub last_seen_ms: u64,
}

/// One session of a peer (a directory's engine since its start).
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
    /// Digest root, log position and clock of its last hello.
    last_root: Option<u64>,
    last_log_pos: u64,
    hello_clock: u64,
    /// Its clock minus our wall clock at its last hello.
    clock_offset_ms: i64,
    /// How far ahead its clock was when we last refused it for that.
    refused_ahead_ms: u64,
    /// When we sent it our digest, while its answer is awaited.
    digest_sent_ms: Option<u64>,
    /// Nothing it sent failed to merge since our last digest.
    answer_clean: bool,
    /// Its clock at its latest complete answer to our digest (a state
    /// proof of this session; see "Membership and stability").
    anchor: Option<u64>,
    /// The latest clock of a message that skipped part of its log for us
    /// (a `base` jump, a refused entry): a state proof older than this no
    /// longer makes its log a proof.
    jump_clock: u64,
    /// Consecutive hellos whose log position we do not hold.
    stalled_hellos: u8,
    /// Its log up to here is in a state it proved (see `AnswerEnd`):
    /// entries up to here merge tombstones only.
    records_in_upto: u64,
    /// Our `States` messages to it so far (their sequence numbers).
    states_sent: u64,
    /// Sequence numbers of its `States` messages received and merged, the
    /// latest [`STATES_WINDOW`].
    states_seen: std::collections::BTreeSet<u64>,
    attrs: Vec<u8>,
}

impl Peer {
    fn new(version: u8, now_ms: u64, sent_upto: u64, attrs: Vec<u8>) -> Peer {
        Peer {
            version,
            up: false,
            last_seen_ms: now_ms,
            sent_upto,
            inflight_since: None,
            recv_upto: 0,
            root_mismatches: 0,
            down_since: None,
            stats: PeerStats::default(),
            last_root: None,
            last_log_pos: 0,
            hello_clock: 0,
            clock_offset_ms: 0,
            refused_ahead_ms: 0,
            digest_sent_ms: None,
            answer_clean: false,
            anchor: None,
            jump_clock: 0,
            stalled_hellos: 0,
            records_in_upto: 0,
            states_sent: 0,
            states_seen: std::collections::BTreeSet::new(),
            attrs,
        }
    }

    /// Whether its log, received contiguously, proves its changes.
    fn anchored(&self) -> bool {
        self.anchor.is_some_and(|a| a > self.jump_clock)
    }
}

/// A frontier report: `(directory, frontier)`.
type Frontiers = Vec<(Vec<u8>, u64)>;

/// What this engine knows of a member directory (its membership itself is
/// persisted by the store).
#[derive(Debug, Clone, Default)]
struct Member {
    /// `F[d]`, see the module docs.
    frontier: u64,
    /// Its reports that count (each one's hello is within our frontier of
    /// it), joined: its frontier of each directory it knows.
    report: std::collections::BTreeMap<Box<[u8]>, u64>,
    /// A newer report that does not count yet: `(at, frontiers)`.
    pending: Option<(u64, Frontiers)>,
    /// The caller's clock when a hello of it was last accepted (the
    /// engine's start for a member not heard since).
    last_seen_ms: u64,
    /// Per directory we are forgetting (see [`Engine::forget`]): the clock
    /// of its first report that no longer lists it (it forgot it too).
    cleared: HashMap<Box<[u8]>, u64>,
    /// The directories its latest report lists: `(at, dirs)`.
    listed: Option<(u64, Vec<Box<[u8]>>)>,
}

impl Member {
    /// Raise the frontier; a pending report may count now.
    fn raise(&mut self, frontier: u64) {
        self.frontier = self.frontier.max(frontier);
        if self
            .pending
            .as_ref()
            .is_some_and(|(at, _)| *at <= self.frontier)
        {
            if let Some((_, f)) = self.pending.take() {
                self.join_report(f);
            }
        }
    }

    fn report(&mut self, at: u64, frontiers: Vec<(Vec<u8>, u64)>) {
        if at <= self.frontier {
            self.join_report(frontiers);
        } else if self.pending.as_ref().is_none_or(|(a, _)| *a < at) {
            self.pending = Some((at, frontiers));
        }
    }

    /// Facts about the past only grow: each directory's frontier is the
    /// highest reported.
    fn join_report(&mut self, frontiers: Vec<(Vec<u8>, u64)>) {
        for (dir, f) in frontiers {
            let e = self.report.entry(dir.into_boxed_slice()).or_insert(0);
            *e = (*e).max(f);
        }
    }

    /// Its stability as far as we can judge it: the least frontier it
    /// reported, over every directory it knows and every one of `ours`
    /// (our members and us: a directory it does not report counts as 0),
    /// but itself. A directory it reports that we do not know (and did not
    /// forget) counts as 0 too: that one's operations may reach us only
    /// through others, and it never told us what it has (a partial
    /// partition), so nothing is stable until we hear it ourselves.
    fn stable_for(&self, itself: &[u8], ours: &[&[u8]], forgotten: &HashSet<Vec<u8>>) -> u64 {
        let missing = ours
            .iter()
            .any(|d| *d != itself && !self.report.contains_key(*d));
        let unknown = self
            .report
            .keys()
            .any(|d| &d[..] != itself && !ours.contains(&&d[..]) && !forgotten.contains(&d[..]));
        if missing || unknown {
            return 0;
        }
        self.report
            .iter()
            .filter(|(d, _)| &d[..] != itself && !forgotten.contains(&d[..]))
            .map(|(_, f)| *f)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// A remove-wins set's stability snapshot: its version vector read at our
/// clock `at`, in generation `gen`.
#[derive(Debug, Clone)]
struct Snapshot {
    at: u64,
    gen: crate::store::record::Gen,
    vv: Vec<(ReplicaId, u64)>,
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

/// Ids taken into the digest per engine call while it is first built: a
/// store of a million ids is primed over many calls, each bounded, instead
/// of one call of seconds that holds its caller (and anyone waiting on it).
const PRIME_PAGE: usize = 20_000;

/// Bytes of states encoded per peer per call: a large state transfer (a
/// late joiner, a long absence) is spread over ticks instead of being built
/// in memory at once.
const TRANSFER_BYTES_PER_CALL: usize = 4 << 20;

/// One item of a state transfer to a peer, in order.
#[derive(Debug)]
enum Transfer {
    /// Our states of every id in this digest bucket.
    Bucket(u16),
    /// A message to send, with the clock it was made at, once the states
    /// before it went.
    Then(Message, Timestamp),
    /// The end of an answer to the peer's digest (version 4): our states
    /// pushed since `first` went, and our state was taken at `clock`.
    AnswerEnd {
        first: u64,
        clock: Timestamp,
        log_pos: u64,
    },
}

/// The directory part of a sync id (a replica id plus a session).
pub fn directory_of(r: &ReplicaId) -> &[u8] {
    let b = r.as_bytes();
    &b[..b.len().saturating_sub(VOLATILE_BYTES)]
}

/// The digest hash of one live item: id, generation, kind and state in
/// its digest form (`canonical::digest_bytes`; times are left out: they
/// are labels, not state).
fn item_hash(id: &[u8], meta: &Meta, crdt: &Crdt) -> u64 {
    let gen = encode_gen(&meta.gen);
    let state = super::canonical::digest_bytes(crdt);
    stable_hash(&[id, &gen, &[meta.kind.code()], &state])
}

/// The ceiling of every frontier: our own HLC, which takes a peer's clock
/// only within `max_clock_offset` of our wall clock.
fn wall_stamp(store: &Store) -> u64 {
    store.clock().to_u64()
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

    /// Drop a session and everything kept for it.
    fn drop_peer(&mut self, r: &ReplicaId) {
        self.peers.remove(r);
        self.log.remove_peer(r);
        self.transfers.remove(r);
        self.queued.remove(r);
    }

    /// Drop every session of directory `dir` (each reported down).
    fn drop_sessions_of(&mut self, dir: &[u8], events: &mut Vec<Event>) {
        let sessions: Vec<ReplicaId> = self
            .peers
            .keys()
            .filter(|r| directory_of(r) == dir)
            .cloned()
            .collect();
        for r in sessions {
            self.drop_peer(&r);
            events.push(Event::PeerDown(r));
        }
    }

    /// Whether a session of directory `dir` is up.
    fn directory_up(&self, dir: &[u8]) -> bool {
        self.peers
            .iter()
            .any(|(r, p)| p.up && directory_of(r) == dir)
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

    /// Remove members not heard from for `member_expiry_ms`: their
    /// frontier becomes their cut (see [`Store::remove_member`]).
    fn expire_members(&mut self, store: &Store, now_ms: u64, events: &mut Vec<Event>) {
        let expiry = self.cfg.member_expiry_ms;
        let started = *self.started_ms.get_or_insert(now_ms);
        if expiry == 0 {
            return;
        }
        let gone: Vec<Box<[u8]>> = self
            .members
            .iter()
            .filter(|(dir, m)| {
                let up = self.directory_up(dir);
                // The engine's start counts as heard: a restart never
                // expires a member at once.
                let seen = m.last_seen_ms.max(started);
                !up && now_ms.saturating_sub(seen) > expiry
            })
            .map(|(d, _)| d.clone())
            .collect();
        // The frontiers become cuts: what they cover must be on disk first.
        if !gone.is_empty() && store.flush().is_err() {
            return;
        }
        for dir in gone {
            let frontier = self.members.get(&dir).map_or(0, |m| m.frontier);
            if store.remove_member(&dir, frontier).is_ok() {
                self.members.remove(&dir);
                self.counters.members_removed += 1;
                self.drop_sessions_of(&dir, events);
            }
        }
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
    /// the digest root was computed. Our stability report follows with the
    /// next tick, to each peer that reads it.
    pub fn hello(&mut self, store: &Store, events: &mut Vec<Event>) -> Outbound {
        // Every change of a member before our frontier of it is here, as of
        // now (before the clock of the hello): the report.
        let frontiers: Vec<(Vec<u8>, u64)> = self
            .members
            .iter()
            .map(|(d, m)| (d.to_vec(), m.frontier))
            .collect();
        // The clock first: a change made meanwhile has a later stamp than
        // the hello's, and is not claimed by its log position.
        let clock = store.tick_clock();
        // Writes stamped before it finish first (a strict write stamps,
        // then writes without the shard lock), and the clock is on disk:
        // a restart never stamps below a clock a peer may cut at. If the
        // flush failed, the hello announces no more than the clock on disk
        // (a lower clock only lowers a peer's frontier).
        let clock = match store.flush() {
            Ok(()) => clock,
            Err(_) => clock.min(store.persisted_clock()),
        };
        self.take_local(store, events);
        self.refresh_digest(store);
        self.report = Some((clock.to_u64(), frontiers));
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
            out.push(self.digest_to(store, r, clock, now_ms));
        }
        (peers, out)
    }

    fn digest_to(
        &mut self,
        store: &Store,
        to: &ReplicaId,
        clock: Timestamp,
        now_ms: u64,
    ) -> Outbound {
        self.refresh_digest(store);
        self.counters.digests_sent += 1;
        if let Some(p) = self.peers.get_mut(to) {
            p.digest_sent_ms = Some(now_ms);
            p.answer_clean = true;
        }
        let msg = Message::DigestRequest {
            from: self.me.clone(),
            buckets: self.digest.buckets().to_vec(),
        };
        self.out(Some(to), &msg, clock)
    }

    /// Stop tracking replicas of `directory` (an id from [`directory_of`])
    /// and refuse them from now on: the operator says it is gone for good.
    /// It leaves the membership at once (collection no longer waits for
    /// it), and its cut is raised to the end of time once every member has
    /// forgotten it too and then proved its state to us
    /// ([`Engine::settle_forgetting`]): from then on a record it created
    /// that is not here can only be a late copy (a restored backup, a
    /// replica that missed a delete) and is deleted again, whatever its
    /// stamp, so every tombstone of its records can be collected. Until
    /// then its records still merge as usual: a member may hold some we
    /// lack, and they must not be deleted.
    ///
    /// The forgetting is persisted before anything changes here: on a
    /// storage error nothing is forgotten and the error is returned, so
    /// that the caller can retry. `Error::InvalidArgument` for a directory
    /// id of the wrong length or our own.
    pub fn forget(
        &mut self,
        store: &Store,
        directory: &[u8],
        events: &mut Vec<Event>,
    ) -> crate::Result<()> {
        if directory.len() != crate::store::record::DIRECTORY_BYTES
            || directory == directory_of(&self.me)
        {
            return Err(Error::InvalidArgument("not a peer directory id"));
        }
        store.flush()?;
        store.forget_member(directory, 0)?;
        self.forgotten.insert(directory.to_vec());
        if store.member_cut(directory) != u64::MAX {
            self.forgetting.insert(directory.to_vec());
        }
        if self.members.remove(directory).is_some() {
            self.counters.members_removed += 1;
        }
        self.drop_sessions_of(directory, events);
        self.settle_forgetting(store);
        Ok(())
    }

    /// Raise the cut of each directory being forgotten to the end of time
    /// once it is safe: every member's report no longer lists it (it
    /// forgot it, so nothing new of it reaches that member), and that
    /// member answered our digest completely with a state taken after
    /// that report, so every record of it the member holds is here. A
    /// member that has not done both (down, not heard since a restart)
    /// keeps the cut where it is, and the tombstones of the forgotten
    /// replica's records with it. So does a member whose latest report
    /// lists a directory we do not know (a partial partition): that one
    /// may hold records of the forgotten replica and pass them on later.
    fn settle_forgetting(&mut self, store: &Store) {
        if self.forgetting.is_empty() {
            return;
        }
        let proved = |dir: &[u8]| {
            self.peers
                .iter()
                .filter(|(r, _)| directory_of(r) == dir)
                .filter_map(|(_, p)| p.anchor)
                .max()
                .unwrap_or(0)
        };
        let mine = directory_of(&self.me);
        let known =
            |d: &[u8]| d == mine || self.members.contains_key(d) || self.forgotten.contains(d);
        let closed = self.members.values().all(|m| {
            m.listed
                .as_ref()
                .is_some_and(|(_, ds)| ds.iter().all(|d| known(d)))
        });
        let settled: Vec<Vec<u8>> = self
            .forgetting
            .iter()
            .filter(|_| closed)
            .filter(|f| {
                self.members
                    .iter()
                    .all(|(d, m)| m.cleared.get(&f[..]).is_some_and(|at| proved(d) >= *at))
            })
            .cloned()
            .collect();
        for f in settled {
            if store.flush().is_ok() && store.forget_member(&f, u64::MAX).is_ok() {
                self.forgetting.remove(&f);
                for m in self.members.values_mut() {
                    m.cleared.remove(&f[..]);
                }
            }
        }
    }

    /// A member `dir` whose reports show it forgot a directory we are
    /// forgetting, and that has not proved a state taken since: ask it.
    fn wants_forget_proof(&self, dir: &[u8], anchor: Option<u64>) -> bool {
        self.members
            .get(dir)
            .is_some_and(|m| m.cleared.values().any(|at| anchor.is_none_or(|a| a < *at)))
    }

    /// Something `from` sent failed to merge or was dropped: its answer to
    /// our digest no longer proves its state is here.
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

    /// Raise the frontier of `dir` to `f` (never past our wall clock).
    fn raise_frontier(&mut self, store: &Store, dir: &[u8], f: u64) {
        let f = f.min(wall_stamp(store));
        if let Some(m) = self.members.get_mut(dir) {
            m.raise(f);
        }
    }

    /// The log proof: a session with a state proof whose log we hold up to
    /// the position of its last hello proves everything made before it.
    fn advance_by_log(&mut self, store: &Store, from: &ReplicaId) {
        let Some(p) = self.peers.get(from) else {
            return;
        };
        // Positions up to `records_in_upto` are in a state it proved.
        let held = p.recv_upto.max(p.records_in_upto);
        if p.anchored() && held >= p.last_log_pos && p.hello_clock > 0 {
            let h = p.hello_clock;
            self.raise_frontier(store, directory_of(from), h);
        }
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
                    if m.listed.as_ref().is_none_or(|(a, _)| *a < at) {
                        m.listed =
                            Some((at, frontiers.iter().map(|(d, _)| d[..].into()).collect()));
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

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        store: &Store,
        from: ReplicaId,
        versions: &[u8],
        announced: Announced,
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
        let dir: Box<[u8]> = directory_of(&from).into();
        // Taking part in sync makes a member, persisted before it counts.
        if !self.members.contains_key(&dir) {
            match store.add_member(&dir, store.now_ms()) {
                Ok(_) => {
                    let m = Member {
                        frontier: store.member_cut(&dir).min(wall_stamp(store)),
                        ..Member::default()
                    };
                    self.members.insert(dir.clone(), m);
                }
                Err(Error::InvalidArgument("too many members")) => {
                    self.reject(events, Some(&from), Reject::TooManyPeers, "membership full");
                    return Vec::new();
                }
                Err(Error::InvalidArgument("forgotten replica")) => {
                    self.forgotten.insert(dir.to_vec());
                    self.reject(events, Some(&from), Reject::Forgotten, "forgotten replica");
                    return Vec::new();
                }
                // A directory id that is not one (an old build's, a
                // test's): synced with, never a member.
                Err(Error::InvalidArgument(_)) => {}
                Err(e) => {
                    self.reject(events, Some(&from), Reject::LocalError, &e.to_string());
                    return Vec::new();
                }
            }
        }
        if let Some(m) = self.members.get_mut(&dir) {
            m.last_seen_ms = now_ms;
        }
        let mut out = Vec::new();
        if !self.peers.contains_key(&from) && !self.members.contains_key(&dir) {
            // Sessions of ids that name no member directory (an old build's,
            // a forger's) are bounded apart, so they never crowd members out.
            let others = self
                .peers
                .keys()
                .filter(|r| !self.members.contains_key(directory_of(r)))
                .count();
            if others >= MAX_OTHER_SESSIONS {
                self.reject(
                    events,
                    Some(&from),
                    Reject::TooManyPeers,
                    "too many sessions",
                );
                return out;
            }
        }
        if !self.peers.contains_key(&from) {
            // A restart of a known directory supersedes its old session.
            self.drop_sessions_of(&dir, events);
            // It acknowledged nothing: it catches up by digest, not by
            // replaying the whole log.
            self.log.add_peer(from.clone());
            let upto = self.log.resync(&from).unwrap_or(0);
            self.peers.insert(
                from.clone(),
                Peer::new(version, now_ms, upto, attrs.clone()),
            );
        }
        let wall = store.now_ms();
        let Some(p) = self.peers.get_mut(&from) else {
            return out;
        };
        p.last_seen_ms = now_ms;
        p.version = version;
        // The clock and log position of one hello go together (a log
        // proof claims what was made before the clock is in the log up to
        // the position): a late copy of an older hello changes neither.
        let h = announced.clock.to_u64();
        if h >= p.hello_clock {
            p.hello_clock = h;
            p.last_log_pos = announced.log_pos;
            p.last_root = Some(announced.root);
        }
        p.clock_offset_ms = i64::try_from(announced.clock.wall_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(wall).unwrap_or(i64::MAX));
        p.down_since = None;
        let ahead = announced
            .clock
            .wall_ms
            .saturating_sub(wall.saturating_add(store.max_clock_offset_ms()));
        if ahead > 0 {
            p.refused_ahead_ms = announced.clock.wall_ms - wall;
        }
        let came_up = !p.up;
        p.up = true;
        if ahead > 0 {
            // Known and a member (collection waits for it), but what it
            // sends is refused until its clock is back within the offset.
            let why = format!("hello clock {ahead} ms beyond the offset");
            self.reject(events, Some(&from), Reject::ClockAhead, &why);
        }
        self.advance_by_log(store, &from);
        if came_up {
            events.push(Event::PeerUp(from.clone(), attrs));
            // Introduce ourselves at once, and compare digests.
            let hello = self.hello(store, events);
            out.push(Outbound {
                to: Some(from.clone()),
                ..hello
            });
            out.push(self.digest_to(store, &from, clock, now_ms));
            return out;
        }
        self.refresh_digest(store);
        let root = self.digest.root();
        let forget_proof = self.wants_forget_proof(
            directory_of(&from),
            self.peers.get(&from).and_then(|p| p.anchor),
        );
        let acked = self.log.peer(&from).map_or(0, |a| a.acked);
        let settled = acked + 1 >= self.log.next_seq();
        let retry_after = self.cfg.retransmit_ms.saturating_mul(10);
        let Some(p) = self.peers.get_mut(&from) else {
            return out;
        };
        // Without a state proof in this session its log proves nothing:
        // ask for one (cheap when our digests agree), one at a time.
        let awaiting = p
            .digest_sent_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= retry_after);
        // A log that stays short of the announced position (part of it was
        // given up for a digest exchange the other way, and nothing newer
        // comes to carry the jump) proves nothing either: after a few
        // hellos, a state proof covers it.
        if p.recv_upto.max(p.records_in_upto) < p.last_log_pos {
            p.stalled_hellos = p.stalled_hellos.saturating_add(1);
        } else {
            p.stalled_hellos = 0;
        }
        let stalled = p.stalled_hellos >= STALLED_HELLOS;
        let want_proof = (!p.anchored() || stalled || forget_proof)
            && !awaiting
            && p.version >= STABILITY_VERSION;
        if want_proof {
            p.stalled_hellos = 0;
        }
        if announced.root == root {
            p.root_mismatches = 0;
        } else {
            p.root_mismatches = p.root_mismatches.saturating_add(1);
        }
        let repair = (p.root_mismatches >= 2 && settled) || p.root_mismatches >= FORCE_DIGEST_AFTER;
        if repair || want_proof {
            p.root_mismatches = 0;
            out.push(self.digest_to(store, &from, clock, now_ms));
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
    ) -> Merge {
        let mut all_merged = true;
        let mut refused = false;
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
                    refused = true;
                    self.reject(events, Some(from), Reject::Malformed, &e.to_string());
                    continue;
                }
            };
            let register_ts = match &crdt {
                Crdt::LwwRegister(r) => r.timestamp().map_or(0, |t| t.wall_ms),
                _ => 0,
            };
            if meta.gen.replica.len() > MAX_ID_BYTES {
                refused = true;
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
                refused = true;
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
                    refused = true;
                    self.reject(events, Some(from), Reject::Malformed, &e.to_string());
                }
                Err(Error::ValueTooLarge { .. }) => {
                    refused = true;
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
        Merge {
            all: all_merged,
            refused,
        }
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

    /// Queue our states of every id in `buckets` for `to`: one item per
    /// bucket, its ids read when it is sent (memory O(buckets), not
    /// O(ids), per request).
    fn queue_states(&mut self, to: &ReplicaId, buckets: &[u16]) {
        if buckets.is_empty() {
            return;
        }
        let queued = self.queued.entry(to.clone()).or_default();
        let fresh: Vec<u16> = buckets
            .iter()
            .copied()
            .filter(|b| queued.insert(*b))
            .collect();
        let q = self.transfers.entry(to.clone()).or_default();
        q.extend(fresh.into_iter().map(Transfer::Bucket));
    }

    /// Send the next part of the state transfer to `to`: whole buckets of
    /// states until [`TRANSFER_BYTES_PER_CALL`] is passed, in `States`
    /// messages of at most 1 MiB, and the messages queued behind them.
    fn drain_transfer(&mut self, store: &Store, to: &ReplicaId, clock: Timestamp) -> Vec<Outbound> {
        self.drain_transfer_bytes(store, to, clock).0
    }

    /// [`Engine::drain_transfer`], with the bytes of states it encoded.
    fn drain_transfer_bytes(
        &mut self,
        store: &Store,
        to: &ReplicaId,
        clock: Timestamp,
    ) -> (Vec<Outbound>, usize) {
        let Some(mut q) = self.transfers.remove(to) else {
            return (Vec::new(), 0);
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
                Some(Transfer::Bucket(b)) => {
                    if let Some(queued) = self.queued.get_mut(to) {
                        queued.remove(&b);
                    }
                    let mut ids: Vec<Box<[u8]>> = self.hashes[b as usize].keys().cloned().collect();
                    ids.sort_unstable();
                    for id in ids {
                        let enc = store.with_sync_state(&id, |meta, crdt, _| {
                            encode_parts(meta, &crdt.encode())
                        });
                        if let Ok(Some(b)) = enc {
                            bytes += b.len() + id.len();
                            entries.push((id.to_vec(), b));
                        }
                    }
                }
                Some(Transfer::Then(m, at)) => {
                    flush(self, &mut entries, &mut out);
                    out.push(self.out(Some(to), &m, at));
                }
                Some(Transfer::AnswerEnd {
                    first,
                    clock: at,
                    log_pos,
                }) => {
                    flush(self, &mut entries, &mut out);
                    let last = self.peers.get(to).map_or(0, |p| p.states_sent);
                    let m = Message::AnswerEnd {
                        from: self.me.clone(),
                        first,
                        last,
                        log_pos,
                    };
                    out.push(self.out(Some(to), &m, at));
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
        (out, bytes)
    }

    /// Collection (see "Membership and stability"), at most once per
    /// `collect_after_ms`: remove tokens that every member's report shows
    /// stable, and tombstones whose delete came before every member's
    /// frontier.
    fn maybe_collect(&mut self, store: &Store, now_ms: u64) {
        if self
            .collected_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.cfg.collect_after_ms)
        {
            return;
        }
        self.collected_ms = Some(now_ms);
        self.settle_forgetting(store);
        self.refresh_digest(store);
        // Tokens: stable below the least usable report (no member: nothing
        // else can hold a concurrent add).
        let mine: Vec<u8> = directory_of(&self.me).to_vec();
        let ours: Vec<&[u8]> = self
            .members
            .keys()
            .map(|d| &d[..])
            .chain(std::iter::once(&mine[..]))
            .collect();
        // A directory still being forgotten counts as unknown: a member
        // may still hold an add of it concurrent with a remove here.
        let forgotten: HashSet<Vec<u8>> = self
            .forgotten
            .difference(&self.forgetting)
            .cloned()
            .collect();
        let stable = self
            .members
            .iter()
            .map(|(d, m)| m.stable_for(d, &ours, &forgotten))
            .min()
            .unwrap_or(u64::MAX);
        let due: Vec<Box<[u8]>> = self
            .collectable
            .iter()
            .filter(|(_, s)| s.at < stable)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(snap) = self.collectable.remove(&id) else {
                continue;
            };
            if let Ok(n) = store.collect(&id, &snap.gen, &snap.vv) {
                self.counters.collected_elements += n as u64;
            }
            self.dirty.insert(id);
        }
        // Tombstones: every member's frontier is its cut, ours is now
        // (after a flush: writes stamped before it are in).
        let own = store.tick_clock().to_u64();
        if store.flush().is_err() {
            return;
        }
        let own = own.min(wall_stamp(store));
        let mut cuts: Vec<(&[u8], u64)> = self
            .members
            .iter()
            .map(|(d, m)| (&d[..], m.frontier))
            .collect();
        let cut = cuts.iter().map(|(_, f)| *f).fold(own, u64::min);
        cuts.push((&mine, own));
        if cut > 0 {
            if let Ok(n) = store.collect_tombstones(cut, &cuts) {
                self.counters.collected_tombstones += n as u64;
            }
        }
        self.refresh_digest(store);
    }

    /// Take the next page of the store's ids into the digest, until every
    /// id is in (see [`PRIME_PAGE`]). Ids written meanwhile are marked by
    /// their changes anyway.
    fn prime_step(&mut self, store: &Store) {
        let Some(cursor) = self.prime_cursor.take() else {
            return;
        };
        match store.ids_page(cursor.as_deref(), PRIME_PAGE) {
            Ok((ids, next)) => {
                self.dirty.extend(ids);
                // `None` from the store: the listing is complete.
                self.prime_cursor = next.map(Some);
            }
            // Unreadable now: the same page next time.
            Err(_) => self.prime_cursor = Some(cursor),
        }
    }

    /// Whether every id of the store is in the digest. Until then the
    /// digest is partial: an answer to a peer's digest proves nothing
    /// (no `AnswerEnd`), as it may miss what we hold.
    pub fn primed(&self) -> bool {
        self.prime_cursor.is_none()
    }

    /// Bring the digest up to date with every changed id, and take a
    /// stability snapshot of each remove-wins set holding tokens.
    fn refresh_digest(&mut self, store: &Store) {
        self.prime_step(store);
        if self.dirty.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.dirty) {
            let read = store.with_sync_state(&id, |m, c, _| {
                // Tombstones stay out of the digest: a peer that still
                // holds the deleted record learns of the delete when it
                // pushes the record and we answer with the tombstone.
                if m.deleted {
                    return None;
                }
                Some((item_hash(&id, m, c), c.stability_snapshot(), m.gen.clone()))
            });
            let new = match read {
                Ok(Some(Some((h, snapshot, gen)))) => {
                    match snapshot {
                        Some(vv) => {
                            // Every token read arrived before our clock now.
                            let at = store.clock().to_u64();
                            let keep = self.collectable.get(&id).is_some_and(|s| s.gen == gen);
                            if !keep {
                                self.collectable
                                    .insert(id.clone(), Snapshot { at, gen, vv });
                            }
                        }
                        None => {
                            self.collectable.remove(&id);
                        }
                    }
                    Some(h)
                }
                Ok(_) => {
                    self.collectable.remove(&id);
                    None
                }
                // Unreadable now: try again at the next refresh.
                Err(_) => {
                    self.dirty.insert(id);
                    continue;
                }
            };
            let bucket = &mut self.hashes[bucket_of(&id) as usize];
            let old = match new {
                Some(h) => bucket.insert(id.clone(), h),
                None => bucket.remove(&id),
            };
            if old != new {
                self.digest.replace_hash(&id, old, new);
            }
        }
    }
}

/// What a hello announced.
struct Announced {
    root: u64,
    log_pos: u64,
    clock: Timestamp,
}

/// How a batch of entries merged.
struct Merge {
    /// Every entry merged or was dropped by rule (nothing failed here).
    all: bool,
    /// Some entry was refused (malformed, too large, from the future).
    refused: bool,
}

impl Default for Merge {
    fn default() -> Self {
        Merge {
            all: true,
            refused: false,
        }
    }
}

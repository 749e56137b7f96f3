//! The engine's public vocabulary: its settings, the messages it hands
//! the caller, the events and rejections it reports, and what `info`
//! tells of it, its peers and its members.

use crate::causal::ReplicaId;
use crate::sync::auth::Keyring;
use crate::sync::wire::{MIN_WIRE_VERSION, WIRE_VERSION};

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
    /// While the digest is first built after a start, each engine call
    /// takes pages of ids into it for up to this long (at least one page),
    /// so a small store is primed by its first call and a large one holds
    /// no caller longer than this (see `PRIME_PAGE`).
    pub prime_budget_ms: u64,
    /// Message authentication (`sync::auth`): every message sent is
    /// sealed with the keyring's first secret for its recipient, and one
    /// received is refused unless it carries a valid MAC of one of its
    /// secrets for us, and is not a replay. `None`: none.
    pub auth: Option<Keyring>,
    /// Tests only: the session part of the sync id (random when `None`),
    /// so that a seeded simulation replays exactly.
    #[cfg(feature = "fault-injection")]
    pub session: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_log_bytes: crate::sync::log::DEFAULT_MAX_BYTES,
            versions: (MIN_WIRE_VERSION..=WIRE_VERSION).collect(),
            retransmit_ms: 200,
            down_after_ms: 5_000,
            attrs: Vec::new(),
            collect_after_ms: 2_000,
            member_expiry_ms: 24 * 3_600_000,
            prime_budget_ms: 50,
            auth: None,
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

/// How many kinds of [`Reject`] there are.
pub const REJECT_KINDS: usize = 12;

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
    /// With authentication on: no valid MAC of an accepted secret.
    Unauthenticated,
    /// With authentication on: a replay (a sequence number taken
    /// before, or too far below the highest taken), or a message only a
    /// recipient may take sealed as a broadcast.
    Stale,
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
            Reject::Unauthenticated => "unauthenticated",
            Reject::Stale => "stale",
        }
    }

    const ALL: [Reject; REJECT_KINDS] = [
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
        Reject::Unauthenticated,
        Reject::Stale,
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
    /// A collection dropped this many delete tombstones and remove-wins
    /// set elements (with their remove tokens); only when it dropped any.
    Collected { tombstones: u64, elements: u64 },
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
    pub rejected: [u64; REJECT_KINDS],
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
    pub rejected: [u64; REJECT_KINDS],
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

/// A forgotten directory whose cut is not raised yet (see
/// [`Engine::forget`]), and the member directories holding it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgettingInfo {
    pub directory: Vec<u8>,
    pub held_by: Vec<Vec<u8>>,
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

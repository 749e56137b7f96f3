//! Sessions of peers: what is kept per session, hellos sent and received,
//! liveness, and sessions superseded or dropped.

use super::anti_entropy::Exchange;
use super::collect::Proof;
use super::deltas::DeltaLink;
use super::{directory_of, Engine, Event, Inbound, Outbound, PeerStats, Reject};
use crate::hlc::Timestamp;
use crate::store::Store;
use crate::sync::wire::{negotiate, Message};

/// A peer session down for this many `down_after_ms` (50 s with the
/// default 5 s) is dropped with everything kept for it (its part of the
/// log, its transfers); it comes back as a new session, through a digest
/// exchange. Its directory stays a member (see `member_expiry_ms`).
const EXPIRE_AFTER_DOWNS: u64 = 10;

/// Most sessions held at once of ids that name no member directory (a
/// member's directory has one session: a new one supersedes the old).
const MAX_OTHER_SESSIONS: usize = 16;

/// One session of a peer (a directory's engine since its start), in one
/// part per concern.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// The negotiated wire version.
    pub(super) version: u8,
    /// The free-form bytes of its hello (its node label).
    pub(super) attrs: Vec<u8>,
    /// Traffic with it.
    pub(super) stats: PeerStats,
    pub(super) live: Liveness,
    pub(super) link: DeltaLink,
    pub(super) exchange: Exchange,
    pub(super) proof: Proof,
}

impl Peer {
    fn new(version: u8, now_ms: u64, sent_upto: u64, attrs: Vec<u8>) -> Peer {
        Peer {
            version,
            attrs,
            stats: PeerStats::default(),
            live: Liveness {
                up: false,
                last_seen_ms: now_ms,
                down_since: None,
                clock_offset_ms: 0,
                refused_ahead_ms: 0,
            },
            link: DeltaLink::new(sent_upto),
            exchange: Exchange::default(),
            proof: Proof::default(),
        }
    }
}

/// Whether a session is up, and how its clock compares with ours.
#[derive(Debug, Clone)]
pub(super) struct Liveness {
    pub(super) up: bool,
    /// The caller's clock when it was last heard.
    pub(super) last_seen_ms: u64,
    /// Since when it is down.
    pub(super) down_since: Option<u64>,
    /// Its clock minus our wall clock at its last hello.
    pub(super) clock_offset_ms: i64,
    /// How far ahead its clock was when we last refused it for that.
    pub(super) refused_ahead_ms: u64,
}

impl Liveness {
    /// A hello stamped `clock` came when our wall clock read `wall`: the
    /// session is up. Whether it came up now, and how far (ms) its clock
    /// is beyond `max_offset_ms` (0: within).
    fn hello(&mut self, clock: Timestamp, wall: u64, max_offset_ms: u64) -> (bool, u64) {
        self.clock_offset_ms = i64::try_from(clock.wall_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(wall).unwrap_or(i64::MAX));
        self.down_since = None;
        let ahead = clock
            .wall_ms
            .saturating_sub(wall.saturating_add(max_offset_ms));
        if ahead > 0 {
            self.refused_ahead_ms = clock.wall_ms - wall;
        }
        let came_up = !self.up;
        self.up = true;
        (came_up, ahead)
    }
}

/// What a hello carries besides its sender.
pub(super) struct Hello {
    pub(super) versions: Vec<u8>,
    pub(super) root: u64,
    pub(super) log_pos: u64,
    pub(super) clock: Timestamp,
    pub(super) attrs: Vec<u8>,
}

impl Engine {
    /// Drop a session and everything kept for it.
    pub(super) fn drop_peer(&mut self, r: &crate::causal::ReplicaId) {
        self.peers.remove(r);
        self.log.remove_peer(r);
        self.transfers.remove(r);
        self.queued.remove(r);
        self.deferred.forget(r);
    }

    /// Drop every session of directory `dir` (each reported down).
    pub(super) fn drop_sessions_of(&mut self, dir: &[u8], events: &mut Vec<Event>) {
        let sessions: Vec<crate::causal::ReplicaId> = self
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
    pub(super) fn directory_up(&self, dir: &[u8]) -> bool {
        self.peers
            .iter()
            .any(|(r, p)| p.live.up && directory_of(r) == dir)
    }

    /// Mark session `r` down when silent for `down_after_ms`, and drop it
    /// when down for long. Whether it is up.
    pub(super) fn check_liveness(
        &mut self,
        r: &crate::causal::ReplicaId,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> bool {
        let Some(p) = self.peers.get_mut(r) else {
            return false;
        };
        let live = &mut p.live;
        if live.up && now_ms.saturating_sub(live.last_seen_ms) > self.cfg.down_after_ms {
            live.up = false;
            live.down_since = Some(now_ms);
            events.push(Event::PeerDown(r.clone()));
        }
        if !live.up {
            let expire = self.cfg.down_after_ms.saturating_mul(EXPIRE_AFTER_DOWNS);
            if live
                .down_since
                .is_some_and(|t| now_ms.saturating_sub(t) > expire)
            {
                self.drop_peer(r);
            }
            return false;
        }
        true
    }

    /// The heartbeat to broadcast. Local changes are taken into the log
    /// first, so the announced log position covers every change made before
    /// the digest root was computed. Our stability report follows with the
    /// next tick, to each peer that reads it.
    pub fn hello(&mut self, store: &Store, events: &mut Vec<Event>) -> Outbound {
        // Every change of a member before our frontier of it is here, as of
        // now (before the clock of the hello): the report, with one hello
        // in `report_every` (see `REPORT_FANOUT`).
        let reports = self.unreported_hellos.saturating_add(1) >= self.report_every();
        self.unreported_hellos = if reports {
            0
        } else {
            self.unreported_hellos + 1
        };
        let frontiers: Option<Vec<(Vec<u8>, u64)>> = reports.then(|| {
            self.members
                .iter()
                .map(|(d, m)| (d.to_vec(), m.frontier))
                .collect()
        });
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
        if let Some(frontiers) = frontiers {
            self.report = Some((clock.to_u64(), frontiers));
        }
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

    /// A peer's hello: admit it (a member, a session), note what it
    /// announced, and compare digests when it came up or when they differ.
    pub(super) fn on_hello(
        &mut self,
        store: &Store,
        ctx: &Inbound,
        hello: Hello,
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        let from = &ctx.from;
        let now_ms = ctx.now_ms;
        let Some(version) = negotiate(&self.cfg.versions, &hello.versions) else {
            self.reject(
                events,
                Some(from),
                Reject::Version,
                "no common wire version",
            );
            return Vec::new();
        };
        let dir: Box<[u8]> = directory_of(from).into();
        if !self.admit_member(store, from, &dir, now_ms, events) {
            return Vec::new();
        }
        let out = Vec::new();
        if !self.peers.contains_key(from) && !self.members.contains_key(&dir) {
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
                    Some(from),
                    Reject::TooManyPeers,
                    "too many sessions",
                );
                return out;
            }
        }
        if !self.peers.contains_key(from) {
            // A restart of a known directory supersedes its old session.
            self.drop_sessions_of(&dir, events);
            // It acknowledged nothing: it catches up by digest, not by
            // replaying the whole log.
            self.log.add_peer(from.clone());
            let upto = self.log.resync(from).unwrap_or(0);
            self.peers.insert(
                from.clone(),
                Peer::new(version, now_ms, upto, hello.attrs.clone()),
            );
        }
        let wall = store.now_ms();
        let max_offset_ms = store.max_clock_offset_ms();
        let Some(p) = self.peers.get_mut(from) else {
            return out;
        };
        p.live.last_seen_ms = now_ms;
        p.version = version;
        p.proof.heard(hello.clock.to_u64(), hello.log_pos);
        let (came_up, ahead) = p.live.hello(hello.clock, wall, max_offset_ms);
        if ahead > 0 {
            // Known and a member (collection waits for it), but what it
            // sends is refused until its clock is back within the offset.
            let why = format!("hello clock {ahead} ms beyond the offset");
            self.reject(events, Some(from), Reject::ClockAhead, &why);
        }
        self.advance_by_log(store, from);
        if came_up {
            events.push(Event::PeerUp(from.clone(), hello.attrs));
            // Introduce ourselves at once, and compare digests (once ours
            // holds every id).
            let hello = self.hello(store, events);
            let mut out = vec![Outbound {
                to: Some(from.clone()),
                ..hello
            }];
            out.extend(self.digest_to(store, from, ctx.clock, now_ms));
            return out;
        }
        self.digest_after_hello(store, ctx, hello.root)
            .into_iter()
            .collect()
    }
}

//! Sessions of peers: what is kept per session, hellos sent and received,
//! and sessions superseded or dropped.

use super::*;

/// One session of a peer (a directory's engine since its start).
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub(super) version: u8,
    pub(super) up: bool,
    pub(super) last_seen_ms: u64,
    /// Highest sequence number of ours sent to it.
    pub(super) sent_upto: u64,
    /// Since when sent intervals wait for an acknowledgement.
    pub(super) inflight_since: Option<u64>,
    /// Highest sequence number of *its* log received contiguously.
    pub(super) recv_upto: u64,
    /// Consecutive hellos whose root differed from ours.
    pub(super) root_mismatches: u8,
    /// Since when it is down.
    pub(super) down_since: Option<u64>,
    /// Traffic with it.
    pub(super) stats: PeerStats,
    /// Digest root, log position and clock of its last hello.
    pub(super) last_root: Option<u64>,
    pub(super) last_log_pos: u64,
    pub(super) hello_clock: u64,
    /// Its clock minus our wall clock at its last hello.
    pub(super) clock_offset_ms: i64,
    /// How far ahead its clock was when we last refused it for that.
    pub(super) refused_ahead_ms: u64,
    /// When we sent it our digest, while its answer is awaited.
    pub(super) digest_sent_ms: Option<u64>,
    /// Nothing it sent failed to merge since our last digest.
    pub(super) answer_clean: bool,
    /// Its clock at its latest complete answer to our digest (a state
    /// proof of this session; see "Membership and stability").
    pub(super) anchor: Option<u64>,
    /// The latest clock of a message that skipped part of its log for us
    /// (a `base` jump, a refused entry): a state proof older than this no
    /// longer makes its log a proof.
    pub(super) jump_clock: u64,
    /// Consecutive hellos whose log position we do not hold.
    pub(super) stalled_hellos: u8,
    /// Its log up to here is in a state it proved (see `AnswerEnd`):
    /// entries up to here merge tombstones only.
    pub(super) records_in_upto: u64,
    /// Our `States` messages to it so far (their sequence numbers).
    pub(super) states_sent: u64,
    /// Sequence numbers of its `States` messages received and merged, the
    /// latest [`STATES_WINDOW`].
    pub(super) states_seen: std::collections::BTreeSet<u64>,
    pub(super) attrs: Vec<u8>,
}

impl Peer {
    pub(super) fn new(version: u8, now_ms: u64, sent_upto: u64, attrs: Vec<u8>) -> Peer {
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
    pub(super) fn anchored(&self) -> bool {
        self.anchor.is_some_and(|a| a > self.jump_clock)
    }
}

impl Engine {
    /// Drop a session and everything kept for it.
    pub(super) fn drop_peer(&mut self, r: &ReplicaId) {
        self.peers.remove(r);
        self.log.remove_peer(r);
        self.transfers.remove(r);
        self.queued.remove(r);
    }

    /// Drop every session of directory `dir` (each reported down).
    pub(super) fn drop_sessions_of(&mut self, dir: &[u8], events: &mut Vec<Event>) {
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
    pub(super) fn directory_up(&self, dir: &[u8]) -> bool {
        self.peers
            .iter()
            .any(|(r, p)| p.up && directory_of(r) == dir)
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_hello(
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
}

/// What a hello announced.
pub(super) struct Announced {
    pub(super) root: u64,
    pub(super) log_pos: u64,
    pub(super) clock: Timestamp,
}

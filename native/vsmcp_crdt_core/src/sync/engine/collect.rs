//! Collection: membership, frontiers and their proofs, stability
//! reports, forgetting, and dropping tokens and tombstones that nothing
//! can need any more (see "Membership and stability" in the engine docs).

use super::{
    directory_of, Engine, Event, Inbound, Outbound, Reject, REPORT_FANOUT, STABILITY_VERSION,
};
use crate::causal::ReplicaId;
use crate::error::Error;
use crate::hash::{HashMap, HashSet};
use crate::hlc::Timestamp;
use crate::store::Store;
use crate::sync::wire::Message;

/// Hellos announcing a log position we do not hold before a state proof
/// is asked for instead.
const STALLED_HELLOS: u8 = 3;

/// A frontier report: `(directory, frontier)`.
pub(super) type Frontiers = Vec<(Vec<u8>, u64)>;

/// What this engine knows of a member directory (its membership itself is
/// persisted by the store).
#[derive(Debug, Clone, Default)]
pub(super) struct Member {
    /// `F[d]`, see the module docs.
    pub(super) frontier: u64,
    /// Its reports that count (each one's hello is within our frontier of
    /// it), joined: its frontier of each directory it knows.
    pub(super) report: std::collections::BTreeMap<Box<[u8]>, u64>,
    /// A newer report that does not count yet: `(at, frontiers)`.
    pub(super) pending: Option<(u64, Frontiers)>,
    /// The caller's clock when a hello of it was last accepted (the
    /// engine's start for a member not heard since).
    pub(super) last_seen_ms: u64,
    /// Per directory we are forgetting (see [`Engine::forget`]): the clock
    /// of its first report that no longer lists it (it forgot it too).
    pub(super) cleared: HashMap<Box<[u8]>, u64>,
    /// The directories its latest report lists: `(at, dirs)`.
    pub(super) listed: Option<(u64, Vec<Box<[u8]>>)>,
}

impl Member {
    /// Raise the frontier; a pending report may count now.
    pub(super) fn raise(&mut self, frontier: u64) {
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

    pub(super) fn report(&mut self, at: u64, frontiers: Vec<(Vec<u8>, u64)>) {
        if at <= self.frontier {
            self.join_report(frontiers);
        } else if self.pending.as_ref().is_none_or(|(a, _)| *a < at) {
            self.pending = Some((at, frontiers));
        }
    }

    /// Facts about the past only grow: each directory's frontier is the
    /// highest reported.
    pub(super) fn join_report(&mut self, frontiers: Vec<(Vec<u8>, u64)>) {
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
    pub(super) fn stable_for(
        &self,
        itself: &[u8],
        ours: &[&[u8]],
        forgotten: &HashSet<Vec<u8>>,
    ) -> u64 {
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
pub(super) struct Snapshot {
    pub(super) at: u64,
    pub(super) gen: crate::record::Gen,
    pub(super) vv: Vec<(ReplicaId, u64)>,
}

/// What proves a session's changes are here (its part of [`Peer`]; see
/// "Membership and stability").
///
/// [`Peer`]: super::peer::Peer
#[derive(Debug, Clone, Default)]
pub(super) struct Proof {
    /// Log position and clock of its last hello.
    pub(super) last_log_pos: u64,
    pub(super) hello_clock: u64,
    /// Its clock at its latest complete answer to our digest (a state
    /// proof of this session).
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
}

impl Proof {
    /// Whether its log, received contiguously, proves its changes.
    pub(super) fn anchored(&self) -> bool {
        self.anchor.is_some_and(|a| a > self.jump_clock)
    }

    /// A hello stamped `h` announced log position `log_pos`. The two go
    /// together (a log proof claims what was made before the clock is in
    /// the log up to the position): a late copy of an older hello changes
    /// neither.
    pub(super) fn heard(&mut self, h: u64, log_pos: u64) {
        if h >= self.hello_clock {
            self.hello_clock = h;
            self.last_log_pos = log_pos;
        }
    }

    /// The log proof, with its log held contiguously up to `recv_upto`:
    /// the clock of its last hello when everything made before it is here.
    pub(super) fn by_log(&self, recv_upto: u64) -> Option<u64> {
        // Positions up to `records_in_upto` are in a state it proved.
        let held = recv_upto.max(self.records_in_upto);
        (self.anchored() && held >= self.last_log_pos && self.hello_clock > 0)
            .then_some(self.hello_clock)
    }

    /// Count a hello whose log position we do not hold (its log held up
    /// to `recv_upto`). A log that stays short of the announced position
    /// (part of it was given up for a digest exchange the other way, and
    /// nothing newer comes to carry the jump) proves nothing: whether a
    /// state proof should cover it now.
    pub(super) fn stalled(&mut self, recv_upto: u64) -> bool {
        if recv_upto.max(self.records_in_upto) < self.last_log_pos {
            self.stalled_hellos = self.stalled_hellos.saturating_add(1);
        } else {
            self.stalled_hellos = 0;
        }
        self.stalled_hellos >= STALLED_HELLOS
    }

    /// A message stamped `sent_at` skipped part of its log for us: its log
    /// proves nothing until a state proof made after it.
    pub(super) fn skipped(&mut self, sent_at: u64) {
        self.jump_clock = self.jump_clock.max(sent_at);
    }

    /// A state proof: everything it held at `sent_at` is here, its changes
    /// logged up to `log_pos` among them.
    fn proved(&mut self, sent_at: u64, log_pos: u64) {
        self.anchor = Some(self.anchor.map_or(sent_at, |a| a.max(sent_at)));
        // A late copy of them brings only its deletes (a record it held
        // then is here; one it no longer held was deleted or replaced,
        // and must not come back).
        self.records_in_upto = self.records_in_upto.max(log_pos);
    }
}

/// The ceiling of every frontier: our own HLC, which takes a peer's clock
/// only within `max_clock_offset` of our wall clock.
pub(super) fn wall_stamp(store: &Store) -> u64 {
    store.clock().to_u64()
}

impl Engine {
    /// Taking part in sync makes a member, persisted before it counts:
    /// admit the directory `dir` of `from`, whose hello came. Whether it
    /// may go on (refused: full, forgotten, a local error).
    pub(super) fn admit_member(
        &mut self,
        store: &Store,
        from: &ReplicaId,
        dir: &[u8],
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> bool {
        if !self.members.contains_key(dir) {
            match store.add_member(dir, store.now_ms()) {
                Ok(_) => {
                    let m = Member {
                        frontier: store.member_cut(dir).min(wall_stamp(store)),
                        ..Member::default()
                    };
                    self.members.insert(dir.into(), m);
                }
                Err(Error::InvalidArgument("too many members")) => {
                    self.reject(events, Some(from), Reject::TooManyPeers, "membership full");
                    return false;
                }
                Err(Error::InvalidArgument("forgotten replica")) => {
                    self.forgotten.insert(dir.to_vec());
                    self.reject(events, Some(from), Reject::Forgotten, "forgotten replica");
                    return false;
                }
                // A directory id that is not one (an old build's, a
                // test's): synced with, never a member.
                Err(Error::InvalidArgument(_)) => {}
                Err(e) => {
                    self.reject(events, Some(from), Reject::LocalError, &e.to_string());
                    return false;
                }
            }
        }
        if let Some(m) = self.members.get_mut(dir) {
            m.last_seen_ms = now_ms;
        }
        true
    }

    /// One hello in this many carries our stability report: 1 up to
    /// [`REPORT_FANOUT`] members, then one more per `REPORT_FANOUT`
    /// members. A report lists every member and goes to every peer, so
    /// sending one per hello costs each node O(members²) bytes a second;
    /// spaced this way it costs O(members), and collection follows
    /// `report_every` heartbeats behind instead of one for remove tokens
    /// and the settling of a forgotten replica (delete tombstones go by our
    /// own frontiers, not by reports). Fewer reports are never wrong: each
    /// is a fact as of its own hello, and a member's newest report replaces
    /// its older ones.
    pub(super) fn report_every(&self) -> u64 {
        self.members.len().div_ceil(REPORT_FANOUT).max(1) as u64
    }

    /// Our stability report, due after a hello, to each peer up that reads
    /// it; kept for a later tick while no peer is up (right after a
    /// start), since the next one may be `report_every` hellos away.
    pub(super) fn send_report(&mut self, clock: Timestamp) -> Vec<Outbound> {
        let to: Vec<ReplicaId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.live.up && p.version >= STABILITY_VERSION)
            .map(|(r, _)| r.clone())
            .collect();
        if to.is_empty() {
            return Vec::new();
        }
        let Some((at, frontiers)) = self.report.take() else {
            return Vec::new();
        };
        let msg = Message::Frontier {
            from: self.me.clone(),
            at,
            frontiers,
        };
        to.iter().map(|r| self.out(Some(r), &msg, clock)).collect()
    }

    /// The state proof: its answer to our digest came whole and merged,
    /// so everything it held when it took its state (`sent_at`, its clock)
    /// is here, and its changes logged up to `log_pos`.
    pub(super) fn on_answer_end(
        &mut self,
        store: &Store,
        ctx: &Inbound,
        first: u64,
        last: u64,
        log_pos: u64,
    ) {
        let sent_at = ctx.sent_at();
        let Some(p) = self.peers.get_mut(&ctx.from) else {
            return;
        };
        if sent_at > 0 && p.exchange.answered(first, last) {
            p.proof.proved(sent_at, log_pos);
            self.counters.state_proofs += 1;
            self.raise_frontier(store, directory_of(&ctx.from), sent_at);
            self.advance_by_log(store, &ctx.from);
        }
    }

    /// A member's stability report: its frontiers as of `at`, and which of
    /// the directories we are forgetting it no longer lists.
    pub(super) fn on_frontier(&mut self, from: &ReplicaId, at: u64, frontiers: Frontiers) {
        let Some(m) = self.members.get_mut(directory_of(from)) else {
            return;
        };
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
            m.listed = Some((at, frontiers.iter().map(|(d, _)| d[..].into()).collect()));
        }
        m.report(at, frontiers);
    }

    /// Remove members not heard from for `member_expiry_ms`: their
    /// frontier becomes their cut (see [`Store::remove_member`]).
    pub(super) fn expire_members(&mut self, store: &Store, now_ms: u64, events: &mut Vec<Event>) {
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
        if directory.len() != crate::record::DIRECTORY_BYTES || directory == directory_of(&self.me)
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
    pub(super) fn settle_forgetting(&mut self, store: &Store) {
        if self.forgetting.is_empty() {
            return;
        }
        let settled: Vec<Vec<u8>> = self
            .forgetting
            .iter()
            .filter(|f| self.forgetting_held_by(f).is_empty())
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

    /// The members that hold back the forgetting of `f` (see
    /// [`Engine::settle_forgetting`]): one whose latest report lists a
    /// directory we do not know (or that sent none), or that has not both
    /// dropped `f` from its reports and proved a state taken since.
    pub(super) fn forgetting_held_by(&self, f: &[u8]) -> Vec<Box<[u8]>> {
        let proved = |dir: &[u8]| {
            self.peers
                .iter()
                .filter(|(r, _)| directory_of(r) == dir)
                .filter_map(|(_, p)| p.proof.anchor)
                .max()
                .unwrap_or(0)
        };
        let mine = directory_of(&self.me);
        let known =
            |d: &[u8]| d == mine || self.members.contains_key(d) || self.forgotten.contains(d);
        self.members
            .iter()
            .filter(|(d, m)| {
                let open = m
                    .listed
                    .as_ref()
                    .is_none_or(|(_, ds)| ds.iter().any(|x| !known(x)));
                let cleared = m.cleared.get(f).is_some_and(|at| proved(d) >= *at);
                open || !cleared
            })
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// A member `dir` whose reports show it forgot a directory we are
    /// forgetting, and that has not proved a state taken since: ask it.
    pub(super) fn wants_forget_proof(&self, dir: &[u8], anchor: Option<u64>) -> bool {
        self.members
            .get(dir)
            .is_some_and(|m| m.cleared.values().any(|at| anchor.is_none_or(|a| a < *at)))
    }

    /// Raise the frontier of `dir` to `f` (never past our wall clock).
    pub(super) fn raise_frontier(&mut self, store: &Store, dir: &[u8], f: u64) {
        let f = f.min(wall_stamp(store));
        if let Some(m) = self.members.get_mut(dir) {
            m.raise(f);
        }
    }

    /// The log proof: a session with a state proof whose log we hold up to
    /// the position of its last hello proves everything made before it.
    pub(super) fn advance_by_log(&mut self, store: &Store, from: &ReplicaId) {
        let Some(h) = self
            .peers
            .get(from)
            .and_then(|p| p.proof.by_log(p.link.recv_upto))
        else {
            return;
        };
        self.raise_frontier(store, directory_of(from), h);
    }

    /// Collection (see "Membership and stability"), at most once per
    /// `collect_after_ms`: remove tokens that every member's report shows
    /// stable, and tombstones whose delete came before every member's
    /// frontier.
    pub(super) fn maybe_collect(&mut self, store: &Store, now_ms: u64, events: &mut Vec<Event>) {
        if self
            .collected_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.cfg.collect_after_ms)
        {
            return;
        }
        self.collected_ms = Some(now_ms);
        let before = (
            self.counters.collected_tombstones,
            self.counters.collected_elements,
        );
        self.collect_round(store);
        let tombstones = self.counters.collected_tombstones - before.0;
        let elements = self.counters.collected_elements - before.1;
        if tombstones > 0 || elements > 0 {
            events.push(Event::Collected {
                tombstones,
                elements,
            });
        }
    }

    /// One collection round of [`Engine::maybe_collect`].
    fn collect_round(&mut self, store: &Store) {
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
}

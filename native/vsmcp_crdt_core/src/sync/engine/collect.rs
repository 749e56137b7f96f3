//! Collection: membership, frontiers and their proofs, stability
//! reports, forgetting, and dropping tokens and tombstones that nothing
//! can need any more (see "Membership and stability" in the engine docs).

use super::*;

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
    pub(super) gen: crate::store::record::Gen,
    pub(super) vv: Vec<(ReplicaId, u64)>,
}

/// The ceiling of every frontier: our own HLC, which takes a peer's clock
/// only within `max_clock_offset` of our wall clock.
pub(super) fn wall_stamp(store: &Store) -> u64 {
    store.clock().to_u64()
}

impl Engine {
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
    /// replica's records with it.
    pub(super) fn settle_forgetting(&mut self, store: &Store) {
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
        let settled: Vec<Vec<u8>> = self
            .forgetting
            .iter()
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

    /// Collection (see "Membership and stability"), at most once per
    /// `collect_after_ms`: remove tokens that every member's report shows
    /// stable, and tombstones whose delete came before every member's
    /// frontier.
    pub(super) fn maybe_collect(&mut self, store: &Store, now_ms: u64) {
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
        let stable = self
            .members
            .iter()
            .map(|(d, m)| m.stable_for(d, &ours, &self.forgotten))
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

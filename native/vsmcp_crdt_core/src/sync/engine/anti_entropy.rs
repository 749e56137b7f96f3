//! Anti-entropy: the digest of our states, kept up to date, digests sent,
//! and state transfers answering a peer's digest, spread over ticks.

use super::{directory_of, Engine, Event, Inbound, Outbound, Reject, Snapshot, STABILITY_VERSION};
use crate::causal::ReplicaId;
use crate::crdt::Crdt;
use crate::hlc::Timestamp;
use crate::record::{encode_parts, Gen, Meta};
use crate::store::Store;
use crate::sync::digest::{bucket_of, item_hash};
use crate::sync::wire::{states_messages, Entry, Message};

/// `States` sequence numbers remembered per peer, to check that an answer
/// to our digest arrived whole.
const STATES_WINDOW: usize = 4096;

/// Hellos with a differing root before a digest is sent even while deltas
/// to the peer are in flight.
const FORCE_DIGEST_AFTER: u8 = 5;

/// Digest exchanges with one session (its part of [`Peer`]).
///
/// [`Peer`]: super::peer::Peer
#[derive(Debug, Clone, Default)]
pub(super) struct Exchange {
    /// Consecutive hellos whose root differed from ours.
    pub(super) root_mismatches: u8,
    /// When we sent it our digest, while its answer is awaited.
    pub(super) digest_sent_ms: Option<u64>,
    /// Nothing it sent failed to merge since our last digest.
    pub(super) answer_clean: bool,
    /// Our `States` messages to it so far (their sequence numbers).
    pub(super) states_sent: u64,
    /// Sequence numbers of its `States` messages received and merged, the
    /// latest [`STATES_WINDOW`].
    pub(super) states_seen: std::collections::BTreeSet<u64>,
}

impl Exchange {
    /// Its `States` message `seq` merged whole.
    fn seen(&mut self, seq: u64) {
        self.states_seen.insert(seq);
        while self.states_seen.len() > STATES_WINDOW {
            self.states_seen.pop_first();
        }
    }

    /// Its answer to our digest ended with its `States` messages
    /// `first..=last`: whether it answers the digest awaited, came whole
    /// and merged (then no answer is awaited any more).
    pub(super) fn answered(&mut self, first: u64, last: u64) -> bool {
        let whole = first > last
            || (last - first < STATES_WINDOW as u64
                && (first..=last).all(|s| self.states_seen.contains(&s)));
        let answered = self.digest_sent_ms.is_some() && self.answer_clean && whole;
        if answered {
            self.digest_sent_ms = None;
        }
        answered
    }

    /// A hello's root, equal to ours or not, with our deltas to it all
    /// acknowledged (`settled`) or not: whether our digests should be
    /// compared (twice different while settled, or for long).
    fn root_compared(&mut self, equal: bool, settled: bool) -> bool {
        if equal {
            self.root_mismatches = 0;
        } else {
            self.root_mismatches = self.root_mismatches.saturating_add(1);
        }
        (self.root_mismatches >= 2 && settled) || self.root_mismatches >= FORCE_DIGEST_AFTER
    }
}

/// Ids listed per page while the digest is first built. An engine call
/// takes pages until `EngineConfig::prime_budget_ms` (50 ms) has passed, so
/// a store of a few ten thousand ids is primed by its first call (its first
/// hello announces its real digest root), and a store of a million ids over
/// many calls, none of which holds its caller (the sync process, and a
/// `subscribe/3` or `info/1` waiting on it) much longer than the budget.
pub(super) const PRIME_PAGE: usize = 1_000;

/// Failed reads of a page in a row after which digests are exchanged
/// although ours is not complete (see [`Engine::exchanges_ready`]).
pub(super) const PRIME_FAILURES: u32 = 20;

/// Bytes of states encoded per peer per call: a large state transfer (a
/// late joiner, a long absence) is spread over ticks instead of being built
/// in memory at once.
pub(super) const TRANSFER_BYTES_PER_CALL: usize = 4 << 20;

/// One item of a state transfer to a peer, in order.
#[derive(Debug)]
pub(super) enum Transfer {
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

impl Engine {
    /// Start the next part of every state transfer to a session up: one
    /// budget per tick over every peer, starting with a different one each
    /// tick, so that many peers catching up at once (or forged ones) cost
    /// no more per tick than one.
    pub(super) fn drain_transfers(&mut self, store: &Store, clock: Timestamp) -> Vec<Outbound> {
        let mut out = Vec::new();
        let pending: Vec<ReplicaId> = self
            .transfers
            .keys()
            .filter(|r| self.peers.get(*r).is_some_and(|p| p.live.up))
            .cloned()
            .collect();
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
        out
    }

    /// After a hello announcing digest root `root` from a session already
    /// up: our digest, when our roots keep differing (a repair), or when
    /// its log proves nothing without a state proof of this session (one
    /// asked at a time; cheap when our digests agree).
    pub(super) fn digest_after_hello(
        &mut self,
        store: &Store,
        ctx: &Inbound,
        root: u64,
    ) -> Option<Outbound> {
        let from = &ctx.from;
        let now_ms = ctx.now_ms;
        self.refresh_digest(store);
        let ours = self.digest.root();
        let forget_proof = self.wants_forget_proof(
            directory_of(from),
            self.peers.get(from).and_then(|p| p.proof.anchor),
        );
        let acked = self.log.peer(from).map_or(0, |a| a.acked);
        let settled = acked + 1 >= self.log.next_seq();
        let retry_after = self.cfg.retransmit_ms.saturating_mul(10);
        let p = self.peers.get_mut(from)?;
        let awaiting = p
            .exchange
            .digest_sent_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= retry_after);
        let stalled = p.proof.stalled(p.link.recv_upto);
        let want_proof = (!p.proof.anchored() || stalled || forget_proof)
            && !awaiting
            && p.version >= STABILITY_VERSION;
        if want_proof {
            p.proof.stalled_hellos = 0;
        }
        let repair = p.exchange.root_compared(root == ours, settled);
        if !(repair || want_proof) {
            return None;
        }
        p.exchange.root_mismatches = 0;
        self.digest_to(store, from, ctx.clock, now_ms)
    }

    /// A peer's digest: queue our states of the buckets that differ, ask
    /// for its states of them, and (version 4) end the answer with the
    /// proof that it came whole.
    pub(super) fn on_digest_request(
        &mut self,
        store: &Store,
        ctx: &Inbound,
        buckets: &[u64],
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        let from = &ctx.from;
        // One transfer per peer at a time: a request is answered
        // with work bounded by what we hold, once.
        if self.refused_busy(from, events) {
            return Vec::new();
        }
        self.refresh_digest(store);
        if !self.exchanges_ready() {
            if self.peers.contains_key(from) {
                self.deferred.answers.insert(from.clone(), buckets.to_vec());
            }
            return Vec::new();
        }
        // This request supersedes one put off.
        self.deferred.answers.remove(from);
        let snap = store.tick_clock();
        let flushed = self.take_for_answer(store, events);
        self.queue_answer(from, buckets, flushed, snap);
        self.drain_transfer(store, from, ctx.clock)
    }

    /// One transfer per peer at a time: while our states still go to
    /// `from`, its digest is refused (counted `busy`).
    fn refused_busy(&mut self, from: &ReplicaId, events: &mut Vec<Event>) -> bool {
        let busy = self.transfers.get(from).is_some_and(|q| !q.is_empty());
        if busy {
            self.reject(events, Some(from), Reject::Busy, "transfer under way");
        }
        busy
    }

    /// Before answering digests (our state is taken at a clock read just
    /// before, the answer's `snap`): writes stamped
    /// before it finish first (see `hello`), and changes made since our
    /// last tick count too (the requester's `sync` must see every write
    /// acknowledged before it). Whether the flush succeeded.
    fn take_for_answer(&mut self, store: &Store, events: &mut Vec<Event>) -> bool {
        let flushed = store.flush().is_ok();
        self.take_local(store, events);
        self.refresh_digest(store);
        flushed
    }

    /// Queue the answer to `from`'s digest `buckets` (after
    /// [`Engine::take_for_answer`]): our states of the buckets that
    /// differ, our request for theirs, and (version 4, our digest complete
    /// and flushed) the proof that the answer came whole. Sent by the
    /// transfer drains, within their per-call byte budget.
    fn queue_answer(&mut self, from: &ReplicaId, buckets: &[u64], flushed: bool, snap: Timestamp) {
        let diff = self.digest.diff(buckets);
        let first = self
            .peers
            .get(from)
            .map_or(0, |p| p.exchange.states_sent + 1);
        let version = self.peers.get(from).map_or(0, |p| p.version);
        self.queue_states(from, &diff);
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
    }

    /// Whether digests are sent and answered: once our digest holds every
    /// id, or once building it failed [`PRIME_FAILURES`] times in a row (a
    /// store part of whose disk cannot be read is still repaired by
    /// exchanges of the digest it has, as before deferral; their answers
    /// carry no proof, see [`Engine::queue_answer`]).
    pub(super) fn exchanges_ready(&self) -> bool {
        self.primed() || self.prime_failures >= PRIME_FAILURES
    }

    /// Once digests are exchanged again: the digests put off and the
    /// answers to the peers' digests put off, to the sessions still up.
    /// Answers are only queued here: the transfer drains send them within
    /// their shared byte budget, so many peers cost no more per tick than
    /// one.
    pub(super) fn take_deferred(
        &mut self,
        store: &Store,
        clock: Timestamp,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        if self.deferred.is_empty() || !self.exchanges_ready() {
            return Vec::new();
        }
        let Deferred { answers, digests } = std::mem::take(&mut self.deferred);
        let up = |e: &Engine, r: &ReplicaId| e.peers.get(r).is_some_and(|p| p.live.up);
        let mut out = Vec::new();
        for to in digests {
            if up(self, &to) {
                out.extend(self.digest_to(store, &to, clock, now_ms));
            }
        }
        let answers: Vec<(ReplicaId, Vec<u64>)> =
            answers.into_iter().filter(|(r, _)| up(self, r)).collect();
        if answers.is_empty() {
            return out;
        }
        let snap = store.tick_clock();
        let flushed = self.take_for_answer(store, events);
        for (from, buckets) in answers {
            if !self.refused_busy(&from, events) {
                self.queue_answer(&from, &buckets, flushed, snap);
            }
        }
        out
    }

    /// A peer's answer to our digest: the buckets it wants our states of.
    pub(super) fn on_state_request(
        &mut self,
        store: &Store,
        ctx: &Inbound,
        buckets: &[u16],
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        if !buckets.is_empty() {
            self.queue_states(&ctx.from, buckets);
            out.extend(self.drain_transfer(store, &ctx.from, ctx.clock));
        }
        events.push(Event::Answered(ctx.from.clone()));
        out
    }

    /// A peer's states: merged (a failed one is repaired by the next
    /// digest exchange), and its records we hold deleted answered with
    /// our tombstones.
    pub(super) fn on_states(
        &mut self,
        store: &Store,
        ctx: &Inbound,
        entries: Vec<Entry>,
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        let from = &ctx.from;
        if ctx.sent.is_some() && ctx.sent_at() < store.tomb_cut() {
            // Sent before a tombstone collection here: it may hold a
            // record whose tombstone is gone. What it holds that we
            // lack is pushed again by the next digest exchange.
            self.counters.dropped_stale += entries.len() as u64;
            self.unclean(from);
            return Vec::new();
        }
        let mut stale = Vec::new();
        let merged = self.merge_entries(store, from, entries, events, &mut stale);
        if !merged.all || merged.refused {
            self.unclean(from);
        } else if ctx.seq > 0 {
            if let Some(p) = self.peers.get_mut(from) {
                p.exchange.seen(ctx.seq);
            }
        }
        self.tombstones_for(store, from, stale, ctx.clock)
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
        let put_off = self.deferred.digests.clone();
        let mut out = self.tick(store, now_ms, events);
        let clock = store.tick_clock();
        let peers = self.up_peers();
        for r in &peers {
            // The tick may just have sent it a digest put off: that one
            // was built after the tick took our changes, so it serves.
            let sent_by_tick = put_off.contains(r) && !self.deferred.digests.contains(r);
            if !sent_by_tick {
                out.extend(self.digest_to(store, r, clock, now_ms));
            }
        }
        (peers, out)
    }

    /// Our digest to `to`, or, while it is first built, a note to send it
    /// once it holds every id (see [`Deferred`]).
    pub(super) fn digest_to(
        &mut self,
        store: &Store,
        to: &ReplicaId,
        clock: Timestamp,
        now_ms: u64,
    ) -> Option<Outbound> {
        self.refresh_digest(store);
        if !self.exchanges_ready() {
            self.deferred.digests.insert(to.clone());
            return None;
        }
        self.deferred.digests.remove(to);
        self.counters.digests_sent += 1;
        if let Some(p) = self.peers.get_mut(to) {
            p.exchange.digest_sent_ms = Some(now_ms);
            p.exchange.answer_clean = true;
        }
        let msg = Message::DigestRequest {
            from: self.me.clone(),
            buckets: self.digest.buckets().to_vec(),
        };
        Some(self.out(Some(to), &msg, clock))
    }

    /// Something `from` sent failed to merge or was dropped: its answer to
    /// our digest no longer proves its state is here.
    pub(super) fn unclean(&mut self, from: &ReplicaId) {
        if let Some(p) = self.peers.get_mut(from) {
            p.exchange.answer_clean = false;
        }
    }

    /// Queue our states of every id in `buckets` for `to`: one item per
    /// bucket, its ids read when it is sent (memory O(buckets), not
    /// O(ids), per request).
    pub(super) fn queue_states(&mut self, to: &ReplicaId, buckets: &[u16]) {
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
    pub(super) fn drain_transfer_bytes(
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
                    let last = self.peers.get(to).map_or(0, |p| p.exchange.states_sent);
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

    /// Take the next page of the store's records into the digest, until
    /// every id is in (see [`PRIME_PAGE`]). A record read from disk is
    /// hashed as read (no tier is touched, so priming a large store neither
    /// promotes nor evicts anything); an id whose current value is a
    /// pending write is marked dirty and read through the store. Ids
    /// written meanwhile are marked by their changes anyway.
    ///
    /// False when the page could not be read (the same page is tried again
    /// at the next call, not within this one).
    pub(super) fn prime_step(&mut self, store: &Store) -> bool {
        let Some(cursor) = self.prime_cursor.take() else {
            return true;
        };
        let mut read = Vec::with_capacity(PRIME_PAGE);
        let page = store.records_page(cursor.as_deref(), PRIME_PAGE, |id, r| {
            read.push((Box::<[u8]>::from(id), hashed(id, &r.meta, &r.crdt)));
        });
        match page {
            Ok(page) => {
                self.prime_failures = 0;
                // Every token read arrived before our clock now.
                let clock = store.clock().to_u64();
                for (id, h) in read {
                    self.take_hash(id, h, clock);
                }
                self.dirty.extend(page.pending);
                // `None` from the store: the listing is complete.
                self.prime_cursor = page.next.map(Some);
                true
            }
            // Unreadable now: the same page next time.
            Err(_) => {
                self.prime_failures = self.prime_failures.saturating_add(1);
                self.prime_cursor = Some(cursor);
                false
            }
        }
    }

    /// Bring the digest up to date with every changed id, and take a
    /// stability snapshot of each remove-wins set holding tokens; while
    /// the digest is first built, take pages of ids into it for up to
    /// `prime_budget_ms` (at least one).
    pub(super) fn refresh_digest(&mut self, store: &Store) {
        let started = std::time::Instant::now();
        let budget = std::time::Duration::from_millis(self.cfg.prime_budget_ms);
        loop {
            let listed = self.prime_step(store);
            self.hash_dirty(store);
            if !listed || self.primed() || started.elapsed() >= budget {
                return;
            }
        }
    }

    /// Rehash every id marked dirty (changed, or pending when primed).
    fn hash_dirty(&mut self, store: &Store) {
        if self.dirty.is_empty() {
            return;
        }
        let mut read = Vec::with_capacity(self.dirty.len());
        for id in std::mem::take(&mut self.dirty) {
            match store.with_sync_state(&id, |m, c, _| hashed(&id, m, c)) {
                Ok(h) => read.push((id, h.flatten())),
                // Unreadable now: try again at the next refresh.
                Err(_) => {
                    self.dirty.insert(id);
                }
            }
        }
        // Every token read arrived before our clock now (a later time
        // only delays a collection).
        let clock = store.clock().to_u64();
        for (id, h) in read {
            self.take_hash(id, h, clock);
        }
    }

    /// Put `id`'s item hash (`None`: absent or deleted) into the digest,
    /// and keep or drop the stability snapshot of a set holding tokens,
    /// taken at `clock` (our HLC when the state was read).
    fn take_hash(&mut self, id: Box<[u8]>, read: Option<Hashed>, clock: u64) {
        let new = match read {
            Some((h, snapshot, gen)) => {
                match snapshot {
                    Some(vv) => {
                        let keep = self.collectable.get(&id).is_some_and(|s| s.gen == gen);
                        if !keep {
                            self.collectable
                                .insert(id.clone(), Snapshot { at: clock, gen, vv });
                        }
                    }
                    None => {
                        self.collectable.remove(&id);
                    }
                }
                Some(h)
            }
            None => {
                self.collectable.remove(&id);
                None
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

/// What the digest keeps of a live record: its item hash, the stability
/// snapshot of a set holding remove tokens, and its generation.
type Hashed = (u64, Option<Vec<(ReplicaId, u64)>>, Gen);

/// The digest's view of a record read: `None` for a tombstone, which stays
/// out of the digest (a peer that still holds the deleted record learns of
/// the delete when it pushes the record and we answer with the tombstone).
fn hashed(id: &[u8], meta: &Meta, crdt: &Crdt) -> Option<Hashed> {
    if meta.deleted {
        return None;
    }
    Some((
        item_hash(id, meta, crdt),
        crdt.stability_snapshot(),
        meta.gen.clone(),
    ))
}

/// Digest exchanges put off while our digest is first built after a start
/// (every digest we send goes through [`Engine::digest_to`], every one we
/// answer through `on_digest_request`). A digest still missing ids differs from a
/// peer's in every bucket: sent, it would pull the peer's whole store;
/// answered, it would ask for all of it and push only the part listed so
/// far (and end no round of the peer's `sync` with a proof). Neither is
/// refused: each is sent at the first tick once the digest holds every id,
/// so a peer's `sync` waits for it instead of failing. One of each per
/// peer at most (the latest request), dropped with the session.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    /// The peers' digests to answer, by peer.
    pub(super) answers: std::collections::BTreeMap<ReplicaId, Vec<u64>>,
    /// The peers to send our digest to.
    pub(super) digests: std::collections::BTreeSet<ReplicaId>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.digests.is_empty()
    }

    pub(super) fn forget(&mut self, r: &ReplicaId) {
        self.answers.remove(r);
        self.digests.remove(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Access, StoreConfig};
    use crate::sync::EngineConfig;
    use crate::Kind;

    /// A store of 3,000 ids on disk, reopened (writes kept pending for a
    /// minute), with an engine that takes one page of its digest per call.
    fn reopened() -> (tempfile::TempDir, Store, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(StoreConfig::new(dir.path(), b"n")).unwrap();
        for k in 0..3_000u32 {
            s.create(&k.to_be_bytes(), Kind::GCounter, Access::MayBlock)
                .unwrap();
        }
        s.close(std::time::Duration::from_secs(5)).unwrap();
        let mut c = StoreConfig::new(dir.path(), b"n");
        c.flush_interval_ms = 60_000;
        let s = Store::open(c).unwrap();
        s.start_capture();
        let cfg = EngineConfig {
            prime_budget_ms: 0,
            ..EngineConfig::default()
        };
        let e = Engine::new(&s, cfg);
        (dir, s, e)
    }

    #[test]
    fn digests_are_put_off_while_the_digest_is_built_unless_its_pages_keep_failing() {
        let (_dir, s, mut e) = reopened();
        let peer = ReplicaId::from("p");
        let clock = s.tick_clock();
        assert_eq!(e.digest_to(&s, &peer, clock, 1), None);
        assert!(!e.primed() && e.deferred.digests.contains(&peer));
        // Its pages can no longer be read (closed): after PRIME_FAILURES
        // failed reads in a row, digests go out with what the digest holds.
        s.close(std::time::Duration::from_secs(5)).unwrap();
        for _ in 1..PRIME_FAILURES {
            assert_eq!(e.digest_to(&s, &peer, clock, 1), None);
        }
        assert!(e.digest_to(&s, &peer, clock, 1).is_some());
        assert!(e.exchanges_ready() && !e.primed());
        assert!(e.deferred.is_empty(), "sent, so no longer put off");
    }

    #[test]
    fn a_page_names_at_most_its_limit_of_pending_writes() {
        let (_dir, s, _e) = reopened();
        for k in 10_000..10_500u32 {
            s.create(&k.to_be_bytes(), Kind::GCounter, Access::MayBlock)
                .unwrap();
        }
        let mut cursor: Option<Box<[u8]>> = None;
        let (mut read, mut named) = (0, 0);
        loop {
            let page = s
                .records_page(cursor.as_deref(), 7, |_, _| read += 1)
                .unwrap();
            assert!(page.pending.len() <= 7);
            named += page.pending.len();
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!((read, named), (3_000, 500));
    }
}

//! Anti-entropy: the digest of our states, kept up to date, digests sent,
//! and state transfers answering a peer's digest, spread over ticks.

use super::*;

/// Ids taken into the digest per engine call while it is first built: a
/// store of a million ids is primed over many calls, each bounded, instead
/// of one call of seconds that holds its caller (and anyone waiting on it).
pub(super) const PRIME_PAGE: usize = 20_000;

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

/// The digest hash of one live item: id, generation, kind and state in
/// its digest form (`canonical::digest_bytes`; times are left out: they
/// are labels, not state).
pub(super) fn item_hash(id: &[u8], meta: &Meta, crdt: &Crdt) -> u64 {
    let gen = encode_gen(&meta.gen);
    let state = crate::sync::canonical::digest_bytes(crdt);
    stable_hash(&[id, &gen, &[meta.kind.code()], &state])
}

impl Engine {
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

    pub(super) fn digest_to(
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

    /// Something `from` sent failed to merge or was dropped: its answer to
    /// our digest no longer proves its state is here.
    pub(super) fn unclean(&mut self, from: &ReplicaId) {
        if let Some(p) = self.peers.get_mut(from) {
            p.answer_clean = false;
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
    pub(super) fn drain_transfer(
        &mut self,
        store: &Store,
        to: &ReplicaId,
        clock: Timestamp,
    ) -> Vec<Outbound> {
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

    /// Take the next page of the store's ids into the digest, until every
    /// id is in (see [`PRIME_PAGE`]). Ids written meanwhile are marked by
    /// their changes anyway.
    pub(super) fn prime_step(&mut self, store: &Store) {
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

    /// Bring the digest up to date with every changed id, and take a
    /// stability snapshot of each remove-wins set holding tokens.
    pub(super) fn refresh_digest(&mut self, store: &Store) {
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

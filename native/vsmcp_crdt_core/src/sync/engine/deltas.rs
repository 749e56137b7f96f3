//! The delta link: local changes taken into the log, and peers' entries
//! merged into the store by generation.

use super::*;

impl Engine {
    /// Take the store's local changes into the log.
    pub(super) fn take_local(&mut self, store: &Store, events: &mut Vec<Event>) {
        for (id, entry) in store.take_outgoing() {
            self.log.record(&id, &entry);
            self.counters.deltas_recorded += 1;
            events.push(Event::LocalChanged(id.clone()));
            self.dirty.insert(id);
        }
    }

    pub(super) fn merge_entries(
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
    pub(super) fn tombstones_for(
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
}

/// How a batch of entries merged.
pub(super) struct Merge {
    /// Every entry merged or was dropped by rule (nothing failed here).
    pub(super) all: bool,
    /// Some entry was refused (malformed, too large, from the future).
    pub(super) refused: bool,
}

impl Default for Merge {
    fn default() -> Self {
        Merge {
            all: true,
            refused: false,
        }
    }
}

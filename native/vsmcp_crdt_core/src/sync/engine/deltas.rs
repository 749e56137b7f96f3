//! The delta link: local changes taken into the log, and peers' entries
//! merged into the store by generation.

use super::{Engine, Event, Inbound, Outbound, Reject, MAX_ID_BYTES};
use crate::causal::ReplicaId;
use crate::crdt::Crdt;
use crate::error::Error;
use crate::hlc::Timestamp;
use crate::record::{decode_parts, encode_parts};
use crate::store::{Merged, Store};
use crate::sync::log::NextBatch;
use crate::sync::wire::{check_payload, states_messages, Entry, Message};

/// The delta link with one session (its part of [`Peer`]): how far our
/// log went to it, and how far its log came to us.
///
/// [`Peer`]: super::peer::Peer
#[derive(Debug, Clone)]
pub(super) struct DeltaLink {
    /// Highest sequence number of ours sent to it.
    pub(super) sent_upto: u64,
    /// Since when sent intervals wait for an acknowledgement.
    pub(super) inflight_since: Option<u64>,
    /// Highest sequence number of *its* log received contiguously.
    pub(super) recv_upto: u64,
}

impl DeltaLink {
    pub(super) fn new(sent_upto: u64) -> DeltaLink {
        DeltaLink {
            sent_upto,
            inflight_since: None,
            recv_upto: 0,
        }
    }

    /// Go-back-N: with our log acknowledged up to `acked`, start again
    /// from there when the interval sent waited longer than
    /// `retransmit_ms`. Whether it did (a retransmit).
    fn rewind(&mut self, acked: u64, now_ms: u64, retransmit_ms: u64) -> bool {
        if self.sent_upto < acked {
            self.sent_upto = acked;
        }
        if let Some(since) = self.inflight_since {
            if self.sent_upto > acked && now_ms.saturating_sub(since) > retransmit_ms {
                self.sent_upto = acked;
                self.inflight_since = None;
                return true;
            }
        }
        false
    }

    /// Its interval `seq_start..=seq_end`, sent with its acknowledged
    /// `base`, merged here. Whether part of its log never reaches us (a
    /// `base` beyond what we hold: dropped by its bound, caught up by a
    /// digest instead).
    fn received(&mut self, base: u64, seq_start: u64, seq_end: u64) -> bool {
        let skipped = base > self.recv_upto;
        self.recv_upto = self.recv_upto.max(base);
        if seq_start <= self.recv_upto.saturating_add(1) {
            self.recv_upto = self.recv_upto.max(seq_end);
        }
        skipped
    }
}

/// An interval of a peer's log, as a `Deltas` message carries it.
pub(super) struct Interval {
    /// Its log acknowledged by us up to here, as far as it knows.
    pub(super) base: u64,
    pub(super) seq_start: u64,
    pub(super) seq_end: u64,
}

impl Engine {
    /// Ship session `r` the intervals of our log after what it
    /// acknowledged (at most 8 messages: the rest goes next tick), going
    /// back after `retransmit_ms` without an acknowledgement; a digest when
    /// what it lacks was dropped from the log.
    pub(super) fn ship_deltas(
        &mut self,
        store: &Store,
        r: &ReplicaId,
        clock: Timestamp,
        now_ms: u64,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        let budget = crate::sync::wire::batch_budget(&self.me);
        let acked = self.log.peer(r).map_or(0, |a| a.acked);
        let Some(p) = self.peers.get_mut(r) else {
            return out;
        };
        if p.link.rewind(acked, now_ms, self.cfg.retransmit_ms) {
            self.counters.retransmits += 1;
        }
        let mut sent_upto = p.link.sent_upto;
        for _ in 0..8 {
            match self.log.batch_from(sent_upto + 1, budget) {
                NextBatch::UpToDate => break,
                NextBatch::NeedsAntiEntropy => {
                    // Deltas it never acknowledged were dropped: a
                    // digest exchange brings it up to date instead.
                    sent_upto = self.log.resync(r).unwrap_or(0);
                    if let Some(p) = self.peers.get_mut(r) {
                        p.link.sent_upto = sent_upto;
                        p.link.inflight_since = None;
                    }
                    out.extend(self.digest_to(store, r, clock, now_ms));
                    break;
                }
                NextBatch::Batch(b) => {
                    let end = b.seq_end;
                    let base = self.log.peer(r).map_or(0, |a| a.acked);
                    let msg = b.into_message(self.me.clone(), base);
                    out.push(self.out(Some(r), &msg, clock));
                    sent_upto = end;
                    if let Some(p) = self.peers.get_mut(r) {
                        p.link.sent_upto = end;
                        p.link.inflight_since.get_or_insert(now_ms);
                    }
                }
            }
        }
        out
    }

    /// An interval of a peer's log: merge what is new, acknowledge the
    /// contiguous prefix, answer records it missed the delete of with our
    /// tombstones.
    pub(super) fn on_deltas(
        &mut self,
        store: &Store,
        ctx: &Inbound,
        interval: Interval,
        entries: Vec<Entry>,
        events: &mut Vec<Event>,
    ) -> Vec<Outbound> {
        let Interval {
            base,
            seq_start,
            seq_end,
        } = interval;
        let from = &ctx.from;
        let Some(p) = self.peers.get(from) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut stale = Vec::new();
        // An interval received already (a late duplicate) is only
        // acknowledged again: merging it is idempotent, but a copy
        // old enough may predate a collected tombstone.
        // So is the part of an interval received already (a resend
        // overlapping it): entry `i` has sequence `seq_start + i`.
        let (upto, records_in) = (p.link.recv_upto, p.proof.records_in_upto);
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
            self.merge_entries(store, from, entries, events, &mut stale)
        };
        if !merged.all {
            self.unclean(from);
        }
        out.extend(self.tombstones_for(store, from, stale, ctx.clock));
        let Some(p) = self.peers.get_mut(from) else {
            return out;
        };
        // A merge that failed here (disk full, closing) is not
        // acknowledged: the sender sends the interval again.
        if merged.all {
            // Part of its log never reaches us, or an entry was refused:
            // its log proves nothing until a state proof made after this.
            if p.link.received(base, seq_start, seq_end) || merged.refused {
                p.proof.skipped(ctx.sent_at());
            }
        }
        let ack = Message::Ack {
            from: self.me.clone(),
            upto: p.link.recv_upto,
        };
        out.push(self.out(Some(from), &ack, ctx.clock));
        self.advance_by_log(store, from);
        out
    }

    /// An acknowledgement of our log up to `upto`.
    pub(super) fn on_ack(&mut self, ctx: &Inbound, upto: u64, events: &mut Vec<Event>) {
        let from = &ctx.from;
        let before = self.log.peer(from).map_or(0, |a| a.acked);
        if self.log.ack(from, upto).is_err() {
            self.reject(events, Some(from), Reject::Malformed, "ack beyond the log");
        } else if upto > before {
            if let Some(p) = self.peers.get_mut(from) {
                p.link.inflight_since = (p.link.sent_upto > upto).then_some(ctx.now_ms);
            }
        }
    }

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

//! The outgoing delta log of one replica (Almeida et al., Algorithm 2).
//!
//! Every *local* delta is recorded with the next sequence number (from 1).
//! For each known peer the log keeps the highest sequence number the peer
//! acknowledged ([`PeerAck`]); [`DeltaLog::next_batch`] returns the
//! delta-interval after it, chunked by bytes, and [`DeltaLog::ack`] advances
//! it. Deltas joined from peers are never recorded, so nothing is echoed
//! back: what a replica learned from others reaches third parties through
//! their own logs or through anti-entropy.
//!
//! Invariants:
//!
//! * retained entries have consecutive sequence numbers
//!   `first_seq()..next_seq()`;
//! * an entry is dropped once every known peer acknowledged it, or, oldest
//!   first, when the retained bytes exceed the configured bound, so memory
//!   stays flat while a peer is down; [`DeltaLog::bytes`] never exceeds
//!   [`DeltaLog::max_bytes`] after a call returns;
//! * a batch always starts right after the peer's acknowledgement (so an
//!   acknowledgement of `upto` covers every sequence number up to `upto`,
//!   however messages are lost, duplicated or reordered); a peer whose
//!   acknowledgement is older than the first retained entry missed dropped
//!   deltas and gets [`NextBatch::NeedsAntiEntropy`] instead.

use crate::causal::ReplicaId;
use crate::error::{Error, Result};
use hashbrown::HashMap;
use std::collections::VecDeque;

use super::wire::{entry_size, Entry, Message};

/// Bytes charged per retained entry beyond its id and delta (the slot and
/// the two allocations' bookkeeping).
pub const ENTRY_COST: usize = 64;

/// Default bound of the retained bytes.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// What a peer acknowledged: every delta with a sequence number `<= acked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerAck {
    /// Highest acknowledged sequence number (0: none).
    pub acked: u64,
}

/// A delta-interval ready to send: `entries[i]` has sequence number
/// `seq_start + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sequence number of the first entry.
    pub seq_start: u64,
    /// Sequence number of the last entry.
    pub seq_end: u64,
    /// `(id, encoded delta)` in sequence order.
    pub entries: Vec<Entry>,
}

impl Batch {
    /// The `Deltas` message carrying this batch, sent to a peer whose
    /// acknowledgement (or resync point) is `base`.
    pub fn into_message(self, from: ReplicaId, base: u64) -> Message {
        Message::Deltas {
            from,
            base: base.min(self.seq_start - 1),
            seq_start: self.seq_start,
            seq_end: self.seq_end,
            entries: self.entries,
        }
    }
}

/// The answer of [`DeltaLog::next_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextBatch {
    /// The peer acknowledged everything recorded.
    UpToDate,
    /// The deltas after the peer's acknowledgement.
    Batch(Batch),
    /// Deltas the peer never acknowledged were dropped: only a state
    /// transfer (anti-entropy) can bring it up to date. See
    /// [`DeltaLog::resync`].
    NeedsAntiEntropy,
}

#[derive(Debug, Clone)]
struct LogEntry {
    id: Box<[u8]>,
    delta: Box<[u8]>,
}

impl LogEntry {
    fn cost(&self) -> usize {
        self.id.len() + self.delta.len() + ENTRY_COST
    }
}

/// The outgoing delta log. See the module docs.
#[derive(Debug, Clone)]
pub struct DeltaLog {
    entries: VecDeque<LogEntry>,
    /// Sequence number of `entries[0]` (`next_seq` when empty).
    first_seq: u64,
    next_seq: u64,
    bytes: usize,
    max_bytes: usize,
    peers: HashMap<ReplicaId, PeerAck>,
}

impl Default for DeltaLog {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BYTES)
    }
}

impl DeltaLog {
    /// An empty log retaining at most `max_bytes` (as charged by
    /// [`ENTRY_COST`] plus id and delta lengths).
    pub fn new(max_bytes: usize) -> Self {
        DeltaLog {
            entries: VecDeque::new(),
            first_seq: 1,
            next_seq: 1,
            bytes: 0,
            max_bytes,
            peers: HashMap::new(),
        }
    }

    /// Record a local delta; returns its sequence number.
    pub fn record(&mut self, id: &[u8], delta: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let e = LogEntry {
            id: id.into(),
            delta: delta.into(),
        };
        self.bytes += e.cost();
        self.entries.push_back(e);
        self.prune();
        seq
    }

    /// Start tracking `peer` (a no-op if known). A new peer has acknowledged
    /// nothing, so once the log dropped anything it needs anti-entropy first.
    pub fn add_peer(&mut self, peer: ReplicaId) {
        self.peers.entry(peer).or_default();
    }

    /// Stop tracking `peer`; entries only it was waiting for are dropped.
    pub fn remove_peer(&mut self, peer: &ReplicaId) {
        self.peers.remove(peer);
        self.prune();
    }

    /// The acknowledgement state of `peer`, if known.
    pub fn peer(&self, peer: &ReplicaId) -> Option<PeerAck> {
        self.peers.get(peer).copied()
    }

    /// The deltas after `peer`'s acknowledgement, as many as fit in
    /// `max_bytes` measured by [`entry_size`] (use
    /// [`batch_budget`](super::wire::batch_budget) for one message), but at
    /// least one: a delta larger than `max_bytes` is sent alone.
    pub fn next_batch(&self, peer: &ReplicaId, max_bytes: usize) -> Result<NextBatch> {
        let ack = self
            .peers
            .get(peer)
            .ok_or(Error::InvalidArgument("unknown peer"))?
            .acked;
        Ok(self.batch_from(ack + 1, max_bytes))
    }

    /// The deltas from sequence number `start` on, chunked as
    /// [`DeltaLog::next_batch`] does. A sender that pipelines (sends the
    /// next interval before the previous one is acknowledged) uses this;
    /// the receiver then acknowledges only the contiguous prefix it
    /// received, so an acknowledgement still covers everything before it.
    pub fn batch_from(&self, start: u64, max_bytes: usize) -> NextBatch {
        let ack = start.saturating_sub(1);
        if ack + 1 < self.first_seq {
            return NextBatch::NeedsAntiEntropy;
        }
        if ack + 1 >= self.next_seq {
            return NextBatch::UpToDate;
        }
        let skip = (ack + 1 - self.first_seq) as usize;
        let mut entries = Vec::new();
        let mut size = 0usize;
        for e in self.entries.range(skip..) {
            let s = entry_size(&e.id, &e.delta);
            if !entries.is_empty() && size + s > max_bytes {
                break;
            }
            size += s;
            entries.push((e.id.to_vec(), e.delta.to_vec()));
        }
        let seq_start = ack + 1;
        NextBatch::Batch(Batch {
            seq_start,
            seq_end: seq_start + entries.len() as u64 - 1,
            entries,
        })
    }

    /// `peer` acknowledged every delta up to `upto` (from an `Ack` message:
    /// duplicates and stale acknowledgements are harmless). An
    /// acknowledgement of a sequence number not yet recorded, or from an
    /// unknown peer, is `Error::InvalidArgument` and changes nothing.
    pub fn ack(&mut self, peer: &ReplicaId, upto: u64) -> Result<()> {
        if upto >= self.next_seq {
            return Err(Error::InvalidArgument("acknowledgement beyond the log"));
        }
        let p = self
            .peers
            .get_mut(peer)
            .ok_or(Error::InvalidArgument("unknown peer"))?;
        p.acked = p.acked.max(upto);
        self.prune();
        Ok(())
    }

    /// Treat `peer` as having everything recorded so far, because a state
    /// transfer covering the current state is being sent to it (after
    /// [`NextBatch::NeedsAntiEntropy`]). If that transfer is lost, periodic
    /// digest anti-entropy still repairs the difference. Returns the new
    /// acknowledgement.
    pub fn resync(&mut self, peer: &ReplicaId) -> Result<u64> {
        let upto = self.next_seq - 1;
        self.ack(peer, upto)?;
        Ok(upto)
    }

    /// Drop entries every known peer acknowledged, then the oldest while
    /// over the byte bound.
    fn prune(&mut self) {
        let min_ack = self
            .peers
            .values()
            .map(|p| p.acked)
            .min()
            .unwrap_or(u64::MAX);
        while self.first_seq <= min_ack && self.pop_front() {}
        while self.bytes > self.max_bytes && self.pop_front() {}
        // A log that grew while a peer lagged gives its room back once the
        // peer caught up (32 B per entry of capacity otherwise kept).
        let cap = self.entries.capacity();
        if cap > 4_096 && self.entries.len() < cap / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }

    fn pop_front(&mut self) -> bool {
        match self.entries.pop_front() {
            Some(e) => {
                self.bytes -= e.cost();
                self.first_seq += 1;
                true
            }
            None => false,
        }
    }

    /// Sequence number of the oldest retained entry (`next_seq()` if none).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number the next recorded delta gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Retained entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Retained bytes as charged against the bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bound of [`bytes`](Self::bytes).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: NextBatch) -> Batch {
        match n {
            NextBatch::Batch(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batches_acks_and_pruning() {
        let (a, b) = (ReplicaId::from("a"), ReplicaId::from("b"));
        let mut log = DeltaLog::new(1 << 20);
        log.add_peer(a.clone());
        log.add_peer(b.clone());
        for i in 0..10u8 {
            assert_eq!(log.record(&[i], &[0xC7, 1, 1, i]), u64::from(i) + 1);
        }
        let b1 = batch(log.next_batch(&a, 3 * entry_size(&[0], &[0; 4])).unwrap());
        assert_eq!((b1.seq_start, b1.seq_end, b1.entries.len()), (1, 3, 3));
        assert_eq!(b1.entries[2], (vec![2], vec![0xC7, 1, 1, 2]));
        // Nothing acknowledged yet: the same interval again.
        assert_eq!(
            batch(log.next_batch(&a, 3 * entry_size(&[0], &[0; 4])).unwrap()),
            b1
        );
        log.ack(&a, 3).unwrap();
        log.ack(&a, 2).unwrap(); // stale: harmless
        assert_eq!(log.peer(&a).unwrap().acked, 3);
        assert_eq!(log.len(), 10, "b has not acknowledged");
        log.ack(&b, 5).unwrap();
        assert_eq!((log.first_seq(), log.len()), (4, 7));
        let b2 = batch(log.next_batch(&a, 0).unwrap());
        assert_eq!((b2.seq_start, b2.seq_end), (4, 4), "at least one entry");
        assert!(log.ack(&a, 11).is_err());
        assert!(log.ack(&ReplicaId::from("c"), 1).is_err());
        log.ack(&a, 10).unwrap();
        assert_eq!(log.next_batch(&a, 100).unwrap(), NextBatch::UpToDate);
        log.remove_peer(&b);
        assert!(log.is_empty());
        assert_eq!(log.bytes(), 0);
    }

    #[test]
    fn room_of_a_lagging_peer_is_given_back_once_it_caught_up() {
        let a = ReplicaId::from("a");
        let mut log = DeltaLog::new(1 << 30);
        log.add_peer(a.clone());
        for i in 0..100_000u32 {
            log.record(&i.to_be_bytes(), &[0xC7, 1, 1, 0]);
        }
        assert!(log.entries.capacity() >= 100_000);
        log.ack(&a, 99_990).unwrap();
        assert_eq!(log.len(), 10);
        assert!(
            log.entries.capacity() <= 4_096,
            "{}",
            log.entries.capacity()
        );
        // Still a log: the rest acknowledged, then more recorded.
        log.ack(&a, 100_000).unwrap();
        assert!(log.is_empty());
        assert_eq!(log.record(b"x", &[0xC7, 1, 1, 0]), 100_001);
    }

    #[test]
    fn byte_bound_drops_oldest() {
        let a = ReplicaId::from("a");
        let cost = 1 + 100 + ENTRY_COST;
        let mut log = DeltaLog::new(10 * cost);
        log.add_peer(a.clone());
        for i in 0..1000u32 {
            log.record(&[1], &[i as u8; 100]);
            assert!(log.bytes() <= log.max_bytes());
        }
        assert_eq!(log.len(), 10);
        assert_eq!(
            log.next_batch(&a, 1 << 20).unwrap(),
            NextBatch::NeedsAntiEntropy
        );
        assert_eq!(log.resync(&a).unwrap(), 1000);
        assert!(log.is_empty());
        log.record(&[1], &[0; 100]);
        assert_eq!(batch(log.next_batch(&a, 1 << 20).unwrap()).seq_start, 1001);
        // A delta larger than the bound is not retained at all.
        log.record(&[2], &[0; 20_000]);
        assert!(log.bytes() <= log.max_bytes());
        assert_eq!(
            log.next_batch(&a, 1 << 20).unwrap(),
            NextBatch::NeedsAntiEntropy
        );
    }
}

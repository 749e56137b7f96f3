//! The two in-memory tiers of one shard, as CLOCK (second-chance) queues.
//!
//! * **Hot**: decoded CRDTs, mutated in place.
//! * **Warm**: encoded bytes (compact, no per-element allocations), decoded
//!   on access.
//!
//! Promotion happens when an item's access count reaches the threshold;
//! demotion pops the queue head, giving referenced items a second chance,
//! so both cost O(1) amortized per operation and never scan a tier on the
//! write path. An item too large to encode on a normal scheduler (see
//! `INLINE_BYTES`) is not re-encoded on demotion: it leaves memory at once
//! (its state is in RocksDB plus the pending writes), and its memory is
//! freed on a background thread.
//!
//! Every slot carries a `version`, bumped on every change of its state, and
//! an `ext` slot the NIF layer may use to cache a built value; both go when
//! the item leaves the hot tier.
//!
//! Bodies are reference-counted, so that a dirty-scheduler call can do O(n)
//! work on a large item (decode it, build its value) on a snapshot, without
//! the shard lock that normal schedulers take. A hot state is mutated in
//! place only while no such snapshot exists (`Arc::get_mut`); a normal
//! scheduler that finds one answers `Error::WouldBlock`, and the retry waits
//! for the snapshot's owner (both hold the shard's disk lock).

use super::config::{regrows_large, INLINE_BYTES};
use crate::crdt::Crdt;
use crate::error::{Error, Result};
use crate::record::Meta;
use hashbrown::HashMap;
use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;

pub(super) enum Body {
    Hot(Arc<Crdt>),
    Warm(Arc<[u8]>),
}

/// Where an id currently lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Hot,
    Warm,
    Cold,
}

/// Data the NIF layer keeps beside a hot item (a built value).
pub type Ext = Option<Box<dyn Any + Send>>;

pub(super) struct Slot {
    pub(super) meta: Meta,
    pub(super) body: Body,
    accesses: u32,
    referenced: bool,
    gen: u64,
    /// Bumped on every change of the state.
    pub(super) version: u64,
    pub(super) ext: Ext,
}

impl Slot {
    pub(super) fn tier(&self) -> Tier {
        match self.body {
            Body::Hot(_) => Tier::Hot,
            Body::Warm(_) => Tier::Warm,
        }
    }

    /// Estimated bytes of O(n) work on this item.
    pub(super) fn size_hint(&self) -> usize {
        match &self.body {
            Body::Hot(c) => c.size_hint(),
            Body::Warm(b) => b.len(),
        }
    }

    pub(super) fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }
}

pub(super) struct Tiers {
    map: HashMap<Box<[u8]>, Slot>,
    hot_q: VecDeque<(Box<[u8]>, u64)>,
    warm_q: VecDeque<(Box<[u8]>, u64)>,
    hot_len: usize,
    warm_len: usize,
    next_gen: u64,
    next_version: u64,
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers {
            map: HashMap::new(),
            hot_q: VecDeque::new(),
            warm_q: VecDeque::new(),
            hot_len: 0,
            warm_len: 0,
            next_gen: 0,
            next_version: 1,
        }
    }
}

impl Tiers {
    /// Whether inserting one more id would reallocate the map or a queue
    /// too large for a normal scheduler (see `config::regrows_large`).
    pub(super) fn insert_would_regrow(&self) -> bool {
        regrows_large(self.map.len(), self.map.capacity())
            || regrows_large(self.hot_q.len(), self.hot_q.capacity())
            || regrows_large(self.warm_q.len(), self.warm_q.capacity())
    }
}

/// Limits of one shard.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub(super) hot: usize,
    pub(super) warm: usize,
    pub(super) threshold: u32,
}

impl Tiers {
    pub(super) fn contains(&self, id: &[u8]) -> bool {
        self.map.contains_key(id)
    }

    pub(super) fn get(&self, id: &[u8]) -> Option<&Slot> {
        self.map.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &[u8]) -> Option<&mut Slot> {
        self.map.get_mut(id)
    }

    pub(super) fn hot_len(&self) -> usize {
        self.hot_len
    }

    pub(super) fn warm_len(&self) -> usize {
        self.warm_len
    }

    fn bump_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// Put `id` in the tier its `body` belongs to and make room; true if an
    /// item left memory for the cold tier.
    pub(super) fn insert(
        &mut self,
        id: &[u8],
        meta: Meta,
        body: Body,
        accesses: u32,
        limits: Limits,
    ) -> bool {
        let gen = self.bump_gen();
        match body {
            Body::Hot(_) => {
                self.hot_len += 1;
                self.hot_q.push_back((id.into(), gen));
            }
            Body::Warm(_) => {
                self.warm_len += 1;
                self.warm_q.push_back((id.into(), gen));
            }
        }
        // Versions are unique per shard, so a re-created or re-loaded id
        // never matches a value cached for an earlier state.
        let version = self.next_version;
        self.next_version += 1 << 20;
        let slot = Slot {
            meta,
            body,
            accesses,
            referenced: true,
            gen,
            version,
            ext: None,
        };
        if let Some(old) = self.map.insert(id.into(), slot) {
            self.forget(&old);
        }
        self.enforce_limits(id, limits)
    }

    fn forget(&mut self, old: &Slot) {
        match old.body {
            Body::Hot(_) => self.hot_len -= 1,
            Body::Warm(_) => self.warm_len -= 1,
        }
    }

    pub(super) fn remove(&mut self, id: &[u8]) -> Option<Slot> {
        let slot = self.map.remove(id)?;
        self.forget(&slot);
        Some(slot)
    }

    /// Count an access; promote a small warm item that reached the
    /// threshold. A large one is never decoded here (under the shard lock):
    /// `Touched::promote` says it is due, for a dirty-scheduler caller to
    /// decode it without the lock and install it with [`Tiers::promote`].
    pub(super) fn touch(&mut self, id: &[u8], limits: Limits) -> Result<Touched> {
        let gen = self.next_gen + 1;
        let slot = self.map.get_mut(id).ok_or(Error::NotFound)?;
        slot.accesses = slot.accesses.saturating_add(1);
        slot.referenced = true;
        let Body::Warm(bytes) = &slot.body else {
            return Ok(Touched::default());
        };
        if slot.accesses < limits.threshold {
            return Ok(Touched::default());
        }
        if bytes.len() > INLINE_BYTES {
            return Ok(Touched {
                to_cold: false,
                promote: true,
            });
        }
        slot.body = Body::Hot(Arc::new(decode_stored(bytes)?));
        slot.gen = gen;
        self.next_gen = gen;
        self.hot_q.push_back((id.into(), gen));
        self.hot_len += 1;
        self.warm_len -= 1;
        Ok(Touched {
            to_cold: self.enforce_limits(id, limits),
            promote: false,
        })
    }

    /// Make warm `id` hot with `crdt`, decoded from its bytes without the
    /// lock, if it is still warm at `version` (else `crdt` is freed in the
    /// background). True if an item left memory to make room.
    pub(super) fn promote(&mut self, id: &[u8], version: u64, crdt: Crdt, limits: Limits) -> bool {
        let gen = self.next_gen + 1;
        let Some(slot) = self
            .map
            .get_mut(id)
            .filter(|s| s.version == version && matches!(s.body, Body::Warm(_)))
        else {
            drop_in_background(crdt);
            return false;
        };
        let old = std::mem::replace(&mut slot.body, Body::Hot(Arc::new(crdt)));
        slot.gen = gen;
        self.next_gen = gen;
        self.hot_q.push_back((id.into(), gen));
        self.hot_len += 1;
        self.warm_len -= 1;
        drop_in_background(old);
        self.enforce_limits(id, limits)
    }

    /// Demote one hot item: encode it into the warm tier, or, when too
    /// large to encode here, drop it from memory (true).
    fn demote(&mut self, k: Box<[u8]>) -> bool {
        let gen = self.next_gen + 1;
        let Some(slot) = self.map.get_mut(&k) else {
            return false;
        };
        let Body::Hot(c) = &slot.body else {
            return false;
        };
        if c.size_hint() > INLINE_BYTES {
            // With its `ext` (a large built value, also slow to free).
            if let Some(slot) = self.map.remove(&k) {
                self.hot_len -= 1;
                drop_in_background(slot);
            }
            return true;
        }
        slot.ext = None;
        slot.body = Body::Warm(c.encode().into());
        slot.gen = gen;
        self.next_gen = gen;
        self.warm_q.push_back((k, gen));
        self.hot_len -= 1;
        self.warm_len += 1;
        false
    }

    /// CLOCK demotion until both tiers fit; `keep` is never demoted. True if
    /// an item left memory for the cold tier.
    pub(super) fn enforce_limits(&mut self, keep: &[u8], limits: Limits) -> bool {
        let mut to_cold = false;
        // Each queue entry is looked at no more than twice (a second chance,
        // then a decision), so a pass is bounded even when only `keep` is left.
        let mut budget = 2 * self.hot_q.len() + 2;
        while self.hot_len > limits.hot && budget > 0 {
            budget -= 1;
            let Some((k, g)) = self.hot_q.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get_mut(&k) else {
                continue;
            };
            if slot.gen != g || !matches!(slot.body, Body::Hot(_)) {
                continue;
            }
            if &*k == keep || slot.referenced {
                slot.referenced = false;
                self.hot_q.push_back((k, g));
                continue;
            }
            to_cold |= self.demote(k);
        }
        let mut budget = 2 * self.warm_q.len() + 2;
        while self.warm_len > limits.warm && budget > 0 {
            budget -= 1;
            let Some((k, g)) = self.warm_q.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get_mut(&k) else {
                continue;
            };
            if slot.gen != g || !matches!(slot.body, Body::Warm(_)) {
                continue;
            }
            if &*k == keep || slot.referenced {
                slot.referenced = false;
                self.warm_q.push_back((k, g));
                continue;
            }
            // Its state is in RocksDB or in this shard's pending writes.
            if let Some(slot) = self.map.remove(&k) {
                discard(slot);
            }
            self.warm_len -= 1;
            to_cold = true;
        }
        self.compact_queues();
        to_cold
    }

    /// First half of a decay pass (cheap, O(items) without encoding): halve
    /// access counts, clear reference bits, and list what to demote: hot
    /// items below the threshold and warm items, each untouched since the
    /// previous pass.
    pub(super) fn decay_candidates(&mut self, threshold: u32) -> Vec<(Box<[u8]>, u64)> {
        let mut out = Vec::new();
        for (k, slot) in self.map.iter_mut() {
            slot.accesses /= 2;
            if std::mem::replace(&mut slot.referenced, false) {
                continue;
            }
            match slot.body {
                Body::Hot(_) if slot.accesses >= threshold => {}
                _ => out.push((k.clone(), slot.gen)),
            }
        }
        out
    }

    /// Second half of a decay pass, one item at a time (the caller takes
    /// the lock per item): demote `k` by one tier if it was not touched
    /// since it was listed. True if it left memory.
    pub(super) fn decay_one(&mut self, k: Box<[u8]>, gen: u64) -> bool {
        let Some(slot) = self.map.get(&k) else {
            return false;
        };
        if slot.gen != gen || slot.referenced {
            return false;
        }
        match slot.body {
            Body::Hot(_) => self.demote(k),
            Body::Warm(_) => {
                if let Some(slot) = self.map.remove(&k) {
                    discard(slot);
                }
                self.warm_len -= 1;
                true
            }
        }
    }

    /// Drop stale queue entries (ids gone or moved to the other tier) once
    /// they outnumber the live ones, a bounded number per call: a full
    /// pass over a queue of a million entries would take tens of
    /// milliseconds on a normal scheduler. Live entries met on the way go
    /// to the back, as a CLOCK pass would move them.
    fn compact_queues(&mut self) {
        const STEP: usize = 1024;
        let map = &self.map;
        for (q, live, hot) in [
            (&mut self.hot_q, self.hot_len, true),
            (&mut self.warm_q, self.warm_len, false),
        ] {
            if q.len() <= 2 * live + 64 {
                continue;
            }
            for _ in 0..STEP.min(q.len()) {
                let Some((k, g)) = q.pop_front() else { break };
                let keep = map
                    .get(&k)
                    .is_some_and(|s| s.gen == g && matches!(s.body, Body::Hot(_)) == hot);
                if keep {
                    q.push_back((k, g));
                }
            }
        }
    }
}

/// What [`Tiers::touch`] found.
#[derive(Default)]
pub(super) struct Touched {
    /// An item left memory to make room.
    pub(super) to_cold: bool,
    /// A large warm item reached the access threshold.
    pub(super) promote: bool,
}

/// Drop a slot that left memory; a large one on a background thread.
pub(super) fn discard(slot: Slot) {
    if slot.size_hint() > INLINE_BYTES {
        drop_in_background(slot);
    }
}

pub(super) fn decode_stored(bytes: &[u8]) -> Result<Crdt> {
    Crdt::decode(bytes).map_err(|e| Error::Storage(format!("corrupt state in memory: {e}")))
}

/// Free a large value off the caller's thread: dropping a 200,000-element
/// set frees as many allocations (milliseconds). Also used by the NIF for
/// large built values.
pub fn drop_in_background<T: Send + 'static>(value: T) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};
    type Garbage = Box<dyn Send>;
    static REAPER: OnceLock<Mutex<Option<Sender<Garbage>>>> = OnceLock::new();
    let cell = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<Garbage>();
        let spawned = std::thread::Builder::new()
            .name("vsmcp-crdt-reaper".into())
            .spawn(move || {
                for garbage in rx {
                    drop(garbage)
                }
            });
        Mutex::new(spawned.ok().map(|_| tx))
    });
    let boxed: Garbage = Box::new(value);
    let rejected = match cell.lock() {
        Ok(tx) => match tx.as_ref() {
            Some(tx) => tx.send(boxed).err().map(|e| e.0),
            None => Some(boxed),
        },
        Err(_) => Some(boxed),
    };
    // No reaper thread: free it here rather than leak it.
    drop(rejected);
}

impl Tiers {
    /// Every item in memory, for a census (`Store::info`): O(items), under
    /// the shard lock.
    pub(super) fn slots(&self) -> impl Iterator<Item = (&[u8], &Slot)> {
        self.map.iter().map(|(k, s)| (&**k, s))
    }
}

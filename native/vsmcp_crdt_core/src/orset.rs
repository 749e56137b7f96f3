//! Observed-remove set as a delta-state dot store over a causal context
//! (Almeida, Shoker, Baquero 2018: `AWORSet` and `RWORSet`, §7), one kernel
//! for both flavours.
//!
//! Each element maps to the dots of the events that currently support it;
//! a dot is tagged *add* or *remove*. Join is the paper's dot-store join:
//! a dot survives if both sides hold it, or one side holds it and the other
//! side's context has not seen it.
//!
//! * **Remove-wins** (`Policy::RemoveWins`): `add` and `remove` both write a
//!   fresh dot (tagged add / remove) and retire every dot of the element they
//!   observed. The element is present iff it has dots and all are add dots,
//!   so a remove concurrent with an add wins, and an add that observed the
//!   remove makes the element present again.
//! * **Add-wins** (`Policy::AddWins`): `add` as above; `remove` retires the
//!   observed dots and writes none. Present iff it has any dot.
//!
//! A remove token (remove dot) is retired by the next add or remove of its
//! element that observes it, so no tombstone outlives a later operation.
//!
//! **Deltas are scoped.** A delta lists every element whose dots its context
//! covers (an element retired by the delta is listed with no dots), so
//! joining a delta costs O(size of delta), not O(size of state). A full
//! state (`is_delta() == false`) may cover dots of elements it no longer
//! lists, so joining one walks the local elements: O(n).
//!
//! **Memory.** Elements live in a dense `Vec` of `(bytes, dots)` with a
//! `u32` hash index over it; one dot is stored inline. At 1M elements this
//! is about 40 bytes per entry plus ~10 bytes of index, beyond the element's
//! own bytes (measured in `benches/crdt.rs`).

use crate::causal::{CausalContext, Dot, ReplicaId, ReplicaTable};
use crate::error::{Error, Result};
use hashbrown::HashTable;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use smallvec::{smallvec, SmallVec};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;

/// Which of two concurrent add and remove operations wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    RemoveWins,
    AddWins,
}

impl Policy {
    pub fn code(self) -> u8 {
        match self {
            Policy::RemoveWins => 0,
            Policy::AddWins => 1,
        }
    }
    pub fn from_code(c: u8) -> Result<Self> {
        match c {
            0 => Ok(Policy::RemoveWins),
            1 => Ok(Policy::AddWins),
            _ => Err(Error::Decode("unknown OR-Set policy".into())),
        }
    }
}

const REMOVE_BIT: u32 = 1 << 31;

/// A dot tagged add or remove, packed: the top bit of `replica_tag` is the
/// remove flag, so replica tables hold at most 2^31 ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaggedDot {
    counter: u64,
    replica_tag: u32,
}

impl TaggedDot {
    fn new(d: Dot, remove: bool) -> Self {
        TaggedDot {
            counter: d.counter,
            replica_tag: d.replica | if remove { REMOVE_BIT } else { 0 },
        }
    }
    pub fn dot(self) -> Dot {
        Dot {
            replica: self.replica_tag & !REMOVE_BIT,
            counter: self.counter,
        }
    }
    pub fn is_remove(self) -> bool {
        self.replica_tag & REMOVE_BIT != 0
    }
    fn remapped(self, remap: &[u32]) -> Self {
        let d = self.dot();
        TaggedDot::new(
            Dot {
                replica: remap[d.replica as usize],
                counter: d.counter,
            },
            self.is_remove(),
        )
    }
}

type Dots = SmallVec<[TaggedDot; 1]>;

/// Dot lists up to this long are searched by a linear scan; longer ones
/// (only hostile or pathological states hold them) through a sorted copy or
/// a hash set, so decoding and joining stay O(k log k) in the dots of an
/// element instead of O(k²).
const SCAN_MAX: usize = 16;

/// Membership in one element's dot list, built once per join of an element.
enum DotLookup<'a> {
    Scan(&'a [TaggedDot]),
    Sorted(Vec<TaggedDot>),
}

impl<'a> DotLookup<'a> {
    fn new(dots: &'a [TaggedDot]) -> Self {
        if dots.len() <= SCAN_MAX {
            DotLookup::Scan(dots)
        } else {
            let mut sorted = dots.to_vec();
            sorted.sort_unstable();
            DotLookup::Sorted(sorted)
        }
    }

    fn contains(&self, d: &TaggedDot) -> bool {
        match self {
            DotLookup::Scan(s) => s.contains(d),
            DotLookup::Sorted(s) => s.binary_search(d).is_ok(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    elem: Box<[u8]>,
    dots: Dots,
}

/// Dense element storage with a hash index of positions.
#[derive(Clone, Default)]
struct Elements {
    entries: Vec<Entry>,
    /// Sum of the element byte lengths: an O(1) size for scheduling choices.
    elem_bytes: usize,
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl std::fmt::Debug for Elements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter()).finish()
    }
}

impl Elements {
    fn hash(&self, e: &[u8]) -> u64 {
        self.hasher.hash_one(e)
    }

    fn find(&self, e: &[u8]) -> Option<usize> {
        let h = self.hash(e);
        self.index
            .find(h, |&i| &*self.entries[i as usize].elem == e)
            .map(|&i| i as usize)
    }

    fn insert_new(&mut self, e: &[u8], dots: Dots) -> usize {
        let h = self.hash(e);
        let i = self.entries.len();
        self.elem_bytes += e.len();
        self.entries.push(Entry {
            elem: e.into(),
            dots,
        });
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(h, i as u32, |&j| {
            hasher.hash_one(&*entries[j as usize].elem)
        });
        i
    }

    fn find_or_insert(&mut self, e: &[u8]) -> usize {
        match self.find(e) {
            Some(i) => i,
            None => self.insert_new(e, SmallVec::new()),
        }
    }

    /// O(1): swap the last entry into `i` and fix its index slot.
    fn remove_at(&mut self, i: usize) {
        let h = self.hash(&self.entries[i].elem);
        if let Ok(slot) = self.index.find_entry(h, |&j| j as usize == i) {
            slot.remove();
        }
        let last = self.entries.len() - 1;
        if i != last {
            let hl = self.hash(&self.entries[last].elem);
            if let Some(slot) = self.index.find_mut(hl, |&j| j as usize == last) {
                *slot = i as u32;
            }
        }
        let removed = self.entries.swap_remove(i);
        self.elem_bytes -= removed.elem.len();
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Give back the memory of dropped entries.
    fn shrink(&mut self) {
        self.entries.shrink_to_fit();
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index
            .shrink_to_fit(|&j| hasher.hash_one(&*entries[j as usize].elem));
    }

    /// [`Elements::shrink`] when at most a quarter of the capacity is used.
    fn shrink_if_sparse(&mut self) {
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.shrink();
        }
    }
}

/// An OR-Set state or delta. See the module documentation.
#[derive(Debug, Clone)]
pub struct ORSet {
    policy: Policy,
    replicas: ReplicaTable,
    elems: Elements,
    ctx: CausalContext,
    delta: bool,
}

impl ORSet {
    pub fn new(policy: Policy) -> Self {
        ORSet {
            policy,
            replicas: ReplicaTable::default(),
            elems: Elements::default(),
            ctx: CausalContext::default(),
            delta: false,
        }
    }

    /// The empty set as a (scoped) delta.
    pub fn empty_delta(policy: Policy) -> Self {
        ORSet {
            delta: true,
            ..ORSet::new(policy)
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn is_delta(&self) -> bool {
        self.delta
    }

    fn intern(&mut self, replica: &ReplicaId) -> Result<u32> {
        if self.replicas.lookup(replica).is_none() && self.replicas.len() as u32 >= REMOVE_BIT {
            return Err(Error::Overflow);
        }
        Ok(self.replicas.intern(replica))
    }

    /// The delta that writes `new` for `elem` and retires `old` (all dots in
    /// `self`'s index space).
    fn make_delta(&self, elem: &[u8], new: Option<TaggedDot>, old: &[TaggedDot]) -> ORSet {
        let mut delta = ORSet::empty_delta(self.policy);
        let mut dots = Dots::new();
        for (i, td) in new.iter().chain(old.iter()).enumerate() {
            let d = td.dot();
            let r = delta.replicas.intern(self.replicas.get(d.replica));
            let mapped = Dot {
                replica: r,
                counter: d.counter,
            };
            delta.ctx.insert(mapped);
            if i == 0 && new.is_some() {
                dots.push(TaggedDot::new(mapped, td.is_remove()));
            }
        }
        delta.elems.insert_new(elem, dots);
        delta
    }

    /// Write a fresh dot for `elem` (tagged remove or add) retiring all
    /// observed ones; returns the delta.
    fn write_dot(&mut self, replica: &ReplicaId, elem: &[u8], remove: bool) -> Result<ORSet> {
        let r = self.intern(replica)?;
        let d = self.ctx.next_dot(r)?;
        let td = TaggedDot::new(d, remove);
        let i = self.elems.find_or_insert(elem);
        let old = std::mem::replace(&mut self.elems.entries[i].dots, smallvec![td]);
        self.ctx.insert(d);
        Ok(self.make_delta(elem, Some(td), &old))
    }

    /// Add `elem` as `replica`; returns the delta.
    pub fn add(&mut self, replica: &ReplicaId, elem: &[u8]) -> Result<ORSet> {
        self.write_dot(replica, elem, false)
    }

    /// Remove `elem` as `replica`; returns the delta.
    pub fn remove(&mut self, replica: &ReplicaId, elem: &[u8]) -> Result<ORSet> {
        match self.policy {
            Policy::RemoveWins => self.write_dot(replica, elem, true),
            Policy::AddWins => match self.elems.find(elem) {
                None => Ok(ORSet::empty_delta(self.policy)),
                Some(i) => {
                    let old = self.elems.entries[i].dots.clone();
                    if self.delta {
                        self.elems.entries[i].dots.clear();
                    } else {
                        self.elems.remove_at(i);
                    }
                    Ok(self.make_delta(elem, None, &old))
                }
            },
        }
    }

    /// The delta that adding (`remove == false`) or removing `elem` as
    /// `replica` would produce, without changing `self`: the paper's delta
    /// mutator m^δ(X). Joining it into `self` gives the state [`ORSet::add`]
    /// or [`ORSet::remove`] would leave. The store uses it to write a delta
    /// durably before the in-memory state changes.
    pub fn delta_of_write(&self, replica: &ReplicaId, elem: &[u8], remove: bool) -> Result<ORSet> {
        let old: &[TaggedDot] = match self.elems.find(elem) {
            Some(i) => &self.elems.entries[i].dots,
            None => &[],
        };
        if remove && self.policy == Policy::AddWins {
            if old.is_empty() {
                return Ok(ORSet::empty_delta(self.policy));
            }
            return Ok(self.make_delta(elem, None, old));
        }
        let counter = match self.replicas.lookup(replica) {
            Some(r) => self.ctx.next_dot(r)?.counter,
            None if self.replicas.len() as u32 >= REMOVE_BIT => return Err(Error::Overflow),
            None => 1,
        };
        let mut delta = self.make_delta(elem, None, old);
        let r = delta.replicas.intern(replica);
        let d = Dot {
            replica: r,
            counter,
        };
        delta.ctx.insert(d);
        let i = delta.elems.find_or_insert(elem);
        delta.elems.entries[i].dots.push(TaggedDot::new(d, remove));
        Ok(delta)
    }

    /// `Some(entries)` when inserting one more element would reallocate the
    /// element vector or its hash index: amortized O(1), but that one insert
    /// is O(entries) (see `store::config::regrows_large`).
    pub fn next_insert_reallocates(&self) -> Option<usize> {
        let e = &self.elems;
        (e.entries.len() == e.entries.capacity() || e.index.len() == e.index.capacity())
            .then_some(e.len())
    }

    /// O(1) estimate of the encoded size in bytes: what the store uses to
    /// decide whether work on this set fits a normal scheduler.
    pub fn size_hint(&self) -> usize {
        self.elems.elem_bytes + self.elems.len() * 24
    }

    fn present(policy: Policy, dots: &[TaggedDot]) -> bool {
        match policy {
            Policy::RemoveWins => !dots.is_empty() && dots.iter().all(|d| !d.is_remove()),
            Policy::AddWins => dots.iter().any(|d| !d.is_remove()),
        }
    }

    pub fn contains(&self, elem: &[u8]) -> bool {
        self.elems
            .find(elem)
            .is_some_and(|i| Self::present(self.policy, &self.elems.entries[i].dots))
    }

    /// The elements present, in storage order.
    pub fn elements(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.elems
            .entries
            .iter()
            .filter(|e| Self::present(self.policy, &e.dots))
            .map(|e| &*e.elem)
    }

    /// Number of present elements (O(n)).
    pub fn len(&self) -> usize {
        self.elements().count()
    }

    pub fn is_empty(&self) -> bool {
        self.elements().next().is_none()
    }

    /// Number of stored entries, including remove tokens.
    pub fn entry_count(&self) -> usize {
        self.elems.len()
    }

    /// Join `other` into `self` (the paper's dot-store join). Fails only
    /// when the policies differ.
    pub fn join(&mut self, other: &ORSet) -> Result<()> {
        if self.policy != other.policy {
            return Err(Error::TypeMismatch);
        }
        if other.replicas.len() + self.replicas.len() > REMOVE_BIT as usize {
            return Err(Error::Overflow);
        }
        let remap = self.replicas.remap(&other.replicas);
        // local replica index -> other's index, to ask other's context.
        let mut inv = vec![u32::MAX; self.replicas.len()];
        for (o, &l) in remap.iter().enumerate() {
            inv[l as usize] = o as u32;
        }
        let other_sees = |d: Dot| -> bool {
            let o = inv[d.replica as usize];
            o != u32::MAX
                && other.ctx.contains(Dot {
                    replica: o,
                    counter: d.counter,
                })
        };
        let keep_empty = self.delta && other.delta;

        for oe in &other.elems.entries {
            let odots: Dots = oe.dots.iter().map(|d| d.remapped(&remap)).collect();
            match self.elems.find(&oe.elem) {
                Some(i) => {
                    let ldots = &self.elems.entries[i].dots;
                    let (in_other, in_local) = (DotLookup::new(&odots), DotLookup::new(ldots));
                    let mut merged: Dots = ldots
                        .iter()
                        .copied()
                        .filter(|d| in_other.contains(d) || !other_sees(d.dot()))
                        .collect();
                    for d in &odots {
                        if !in_local.contains(d) && !self.ctx.contains(d.dot()) {
                            merged.push(*d);
                        }
                    }
                    if merged.is_empty() && !keep_empty {
                        self.elems.remove_at(i);
                    } else {
                        self.elems.entries[i].dots = merged;
                    }
                }
                None => {
                    let fresh: Dots = odots
                        .into_iter()
                        .filter(|d| !self.ctx.contains(d.dot()))
                        .collect();
                    if !fresh.is_empty() || keep_empty {
                        self.elems.insert_new(&oe.elem, fresh);
                    }
                }
            }
        }

        if !other.delta {
            // A full state may have retired dots of elements it no longer
            // lists: drop every local dot it has seen but does not hold.
            for i in (0..self.elems.len()).rev() {
                let e = &self.elems.entries[i];
                if other.elems.find(&e.elem).is_some() {
                    continue;
                }
                let kept: Dots = e
                    .dots
                    .iter()
                    .copied()
                    .filter(|d| !other_sees(d.dot()))
                    .collect();
                if kept.is_empty() {
                    self.elems.remove_at(i);
                } else {
                    self.elems.entries[i].dots = kept;
                }
            }
        }

        if !other.delta {
            // A full state may have retired most of ours (e.g. a copy that
            // was collected): this join is O(n) anyway.
            self.elems.shrink_if_sparse();
        }
        if self.delta && !other.delta {
            // Becoming a full state: empty scope entries are not kept.
            for i in (0..self.elems.len()).rev() {
                if self.elems.entries[i].dots.is_empty() {
                    self.elems.remove_at(i);
                }
            }
        }
        self.ctx.join(&other.ctx, &remap);
        self.delta = self.delta && other.delta;
        Ok(())
    }

    /// Elements holding only remove tokens (remove-wins only): what causal
    /// stability has yet to collect (see [`ORSet::collect_stable_upto`]; a
    /// token beside the concurrent add it beat stays). O(elements).
    pub fn remove_token_count(&self) -> usize {
        if self.policy != Policy::RemoveWins {
            return 0;
        }
        self.elems
            .entries
            .iter()
            .filter(|e| Self::tokens_only(&e.dots))
            .count()
    }

    fn tokens_only(dots: &[TaggedDot]) -> bool {
        !dots.is_empty() && dots.iter().all(|d| d.is_remove())
    }

    /// Whether some element holds only remove tokens (remove-wins only):
    /// what [`ORSet::collect_stable_upto`] may drop.
    pub fn has_collectable_tokens(&self) -> bool {
        self.policy == Policy::RemoveWins
            && self
                .elems
                .entries
                .iter()
                .any(|e| Self::tokens_only(&e.dots))
    }

    /// Whether some element holds a remove token (remove-wins only).
    pub fn has_remove_tokens(&self) -> bool {
        self.policy == Policy::RemoveWins
            && self
                .elems
                .entries
                .iter()
                .any(|e| e.dots.iter().any(|d| d.is_remove()))
    }

    /// Causal-stability collection: drop every element that holds a remove
    /// token, with all its dots (its concurrent add dots, which the token
    /// beats, included); the context keeps every dot, so a copy of them
    /// arriving later is recognised as removed. Only correct when every
    /// token is stable (see [`ORSet::collect_stable_upto`], which the sync
    /// engine uses with a snapshot): then every later operation on the
    /// element is causally after the removes. Returns the elements
    /// dropped. A no-op for deltas and add-wins sets (their removes leave
    /// no tokens).
    pub fn collect_stable(&mut self) -> usize {
        if self.policy != Policy::RemoveWins || self.delta {
            return 0;
        }
        let mut dropped = 0;
        for i in (0..self.elems.len()).rev() {
            if self.elems.entries[i].dots.iter().any(|d| d.is_remove()) {
                self.elems.remove_at(i);
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.elems.shrink();
        }
        dropped
    }

    /// The contiguous part of the causal context (`replica => n`: dots
    /// `1..=n` seen): what a stability snapshot records (see
    /// [`ORSet::collect_stable_upto`]).
    pub fn version_vector(&self) -> Vec<(ReplicaId, u64)> {
        (0..self.replicas.len() as u32)
            .map(|i| (self.replicas.get(i).clone(), self.ctx.vv_at(i)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Causal-stability collection up to a snapshot: drop every element
    /// that holds only remove tokens, all covered by `stable` (a version
    /// vector taken when the set was read at a moment every member has
    /// since been shown to have delivered, see `sync::engine`). Stability
    /// means every add concurrent with those removes has arrived here; none
    /// is beside them, so none exists, and any add that arrives later
    /// observed the removes (the element is then present, as it should).
    /// An element with an add dot beside a token is kept: the add may be
    /// concurrent with the token (it loses, the element stays absent) or
    /// made after another replica collected the token (then it wins where
    /// the token is gone, and digest anti-entropy carries that state here);
    /// the two cannot be told apart locally. The context keeps every dot,
    /// so a late copy of a dropped token is recognised. Returns the
    /// elements dropped (0 for add-wins sets and deltas).
    pub fn collect_stable_upto(&mut self, stable: &[(ReplicaId, u64)]) -> usize {
        if self.policy != Policy::RemoveWins || self.delta {
            return 0;
        }
        // Stable counter per local replica index.
        let mut upto = vec![0u64; self.replicas.len()];
        for (r, n) in stable {
            if let Some(i) = self.replicas.lookup(r) {
                upto[i as usize] = *n;
            }
        }
        let covered = |d: TaggedDot| {
            let dot = d.dot();
            upto.get(dot.replica as usize)
                .is_some_and(|n| dot.counter <= *n)
        };
        let mut dropped = 0;
        for i in (0..self.elems.len()).rev() {
            let dots = &self.elems.entries[i].dots;
            if !dots.is_empty() && dots.iter().all(|d| d.is_remove() && covered(*d)) {
                self.elems.remove_at(i);
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.elems.shrink();
        }
        dropped
    }

    /// What the set reads as, folded order-independently: the sum of a
    /// stable hash of every present element. O(elements), no allocation;
    /// with the causal context it is the set's digest form
    /// (`sync::canonical::digest_bytes`).
    pub fn value_hash(&self) -> u64 {
        let mut sum = 0u64;
        for e in &self.elems.entries {
            let present = match self.policy {
                Policy::RemoveWins => !e.dots.is_empty() && e.dots.iter().all(|d| !d.is_remove()),
                Policy::AddWins => !e.dots.is_empty(),
            };
            if present {
                sum = sum.wrapping_add(crate::stable_hash::stable_hash(&[&e.elem]));
            }
        }
        sum
    }

    /// Order-independent form: equality of replicated state.
    pub fn normalized(&self) -> NormalizedORSet {
        let mut elems = BTreeMap::new();
        for e in &self.elems.entries {
            if e.dots.is_empty() {
                continue;
            }
            let dots: BTreeSet<(ReplicaId, u64, bool)> = e
                .dots
                .iter()
                .map(|d| {
                    let dd = d.dot();
                    (
                        self.replicas.get(dd.replica).clone(),
                        dd.counter,
                        d.is_remove(),
                    )
                })
                .collect();
            elems.insert(e.elem.to_vec(), dots);
        }
        NormalizedORSet {
            policy: self.policy.code(),
            elems,
            ctx: self.ctx.normalized(&self.replicas),
        }
    }

    pub fn causal_context(&self) -> crate::causal::NormalizedContext {
        self.ctx.normalized(&self.replicas)
    }

    /// Approximate heap bytes held (for store accounting).
    pub fn heap_bytes(&self) -> usize {
        let entries = self.elems.entries.capacity() * std::mem::size_of::<Entry>();
        let index = self.elems.index.capacity() * (std::mem::size_of::<u32>() + 1);
        let elem_bytes: usize = self
            .elems
            .entries
            .iter()
            .map(|e| {
                e.elem.len()
                    + if e.dots.spilled() {
                        e.dots.capacity() * 16
                    } else {
                        0
                    }
            })
            .sum();
        entries + index + elem_bytes + self.replicas.len() * 48
    }
}

impl PartialEq for ORSet {
    fn eq(&self, other: &Self) -> bool {
        self.normalized() == other.normalized()
    }
}
impl Eq for ORSet {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedORSet {
    pub policy: u8,
    pub elems: BTreeMap<Vec<u8>, BTreeSet<(ReplicaId, u64, bool)>>,
    pub ctx: crate::causal::NormalizedContext,
}

// ---- wire form -------------------------------------------------------------

struct EntriesSer<'a>(&'a [Entry]);
struct DotsSer<'a>(&'a [TaggedDot]);

impl Serialize for DotsSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for d in self.0 {
            let dd = d.dot();
            seq.serialize_element(&(dd.replica, dd.counter, d.is_remove()))?;
        }
        seq.end()
    }
}

impl Serialize for EntriesSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for e in self.0 {
            seq.serialize_element(&(serde_bytes::Bytes::new(&e.elem), DotsSer(&e.dots)))?;
        }
        seq.end()
    }
}

impl Serialize for ORSet {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let vv: Vec<(u32, u64)> = self.ctx.vector().collect();
        let cloud: Vec<(u32, u64)> = self.ctx.cloud().map(|d| (d.replica, d.counter)).collect();
        let mut st = s.serialize_struct("ORSet", 6)?;
        st.serialize_field("p", &self.policy.code())?;
        st.serialize_field("d", &self.delta)?;
        st.serialize_field("r", self.replicas.ids())?;
        st.serialize_field("e", &EntriesSer(&self.elems.entries))?;
        st.serialize_field("v", &vv)?;
        st.serialize_field("c", &cloud)?;
        st.end()
    }
}

/// An entry on the wire: element bytes and `(replica index, counter, remove)` dots.
type EntryWire = (serde_bytes::ByteBuf, Vec<(u32, u64, bool)>);

#[derive(Deserialize)]
struct ORSetWire {
    p: u8,
    d: bool,
    r: Vec<ReplicaId>,
    e: Vec<EntryWire>,
    v: Vec<(u32, u64)>,
    c: Vec<(u32, u64)>,
}

impl<'de> Deserialize<'de> for ORSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = ORSetWire::deserialize(d)?;
        ORSet::from_wire(wire).map_err(serde::de::Error::custom)
    }
}

impl ORSet {
    fn from_wire(w: ORSetWire) -> Result<ORSet> {
        let policy = Policy::from_code(w.p)?;
        let nrep = w.r.len();
        if nrep >= REMOVE_BIT as usize {
            return Err(Error::Decode("too many replicas".into()));
        }
        let replicas = ReplicaTable::from_ids(w.r)?;
        let mut ctx = CausalContext::from_parts(&w.v, &w.c, nrep)?;
        let mut elems = Elements::default();
        elems.entries.reserve(w.e.len());
        for (elem, dots) in w.e {
            if elems.find(&elem).is_some() {
                return Err(Error::Decode("duplicate OR-Set element".into()));
            }
            let mut ds = Dots::with_capacity(dots.len());
            // Past `SCAN_MAX` dots, duplicates are found through a hash set
            // (the same hasher that indexes the elements themselves).
            let mut seen: Option<hashbrown::HashSet<TaggedDot>> = None;
            for (r, c, remove) in dots {
                if r as usize >= nrep || c == 0 {
                    return Err(Error::Decode("invalid dot".into()));
                }
                let dot = Dot {
                    replica: r,
                    counter: c,
                };
                let td = TaggedDot::new(dot, remove);
                let duplicate = match &mut seen {
                    Some(set) => !set.insert(td),
                    None if ds.len() < SCAN_MAX => ds.contains(&td),
                    None => {
                        let mut set = hashbrown::HashSet::with_capacity(ds.capacity());
                        set.extend(ds.iter().copied());
                        let duplicate = !set.insert(td);
                        seen = Some(set);
                        duplicate
                    }
                };
                if duplicate {
                    return Err(Error::Decode("duplicate dot".into()));
                }
                if policy == Policy::AddWins && remove {
                    return Err(Error::Decode("remove token in add-wins set".into()));
                }
                // Invariant: every held dot is in the context.
                ctx.insert(dot);
                ds.push(td);
            }
            if ds.is_empty() && !w.d {
                continue;
            }
            elems.insert_new(&elem, ds);
        }
        Ok(ORSet {
            policy,
            replicas,
            elems,
            ctx,
            delta: w.d,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ReplicaId {
        ReplicaId::from(s)
    }

    #[test]
    fn remove_wins_contract() {
        let mut s1 = ORSet::new(Policy::RemoveWins);
        let mut s2 = ORSet::new(Policy::RemoveWins);
        s1.add(&r("n1"), b"item").unwrap();
        let d2 = s2.add(&r("n2"), b"item").unwrap();
        let drm = s1.remove(&r("n1"), b"item").unwrap();
        let mut m1 = s1.clone();
        m1.join(&d2).unwrap();
        let mut m2 = s2.clone();
        m2.join(&drm).unwrap();
        assert!(m1.is_empty());
        assert!(m2.is_empty());
        assert_eq!(m1, m2);
    }

    #[test]
    fn add_after_observed_remove_is_present_and_drops_token() {
        let mut s = ORSet::new(Policy::RemoveWins);
        s.add(&r("a"), b"x").unwrap();
        s.remove(&r("a"), b"x").unwrap();
        assert!(!s.contains(b"x"));
        assert_eq!(s.entry_count(), 1);
        s.add(&r("a"), b"x").unwrap();
        assert!(s.contains(b"x"));
        assert_eq!(s.normalized().elems[&b"x".to_vec()].len(), 1);
    }

    #[test]
    fn add_wins_concurrent_add_survives_remove() {
        let mut s1 = ORSet::new(Policy::AddWins);
        let mut s2 = ORSet::new(Policy::AddWins);
        let d1 = s1.add(&r("n1"), b"item").unwrap();
        s2.join(&d1).unwrap();
        let drm = s1.remove(&r("n1"), b"item").unwrap();
        let dadd = s2.add(&r("n2"), b"item").unwrap();
        s1.join(&dadd).unwrap();
        s2.join(&drm).unwrap();
        assert!(s1.contains(b"item"));
        assert!(s2.contains(b"item"));
        assert_eq!(s1, s2);
        assert_eq!(s1.entry_count(), 1);
    }

    #[test]
    fn remove_index_stays_consistent() {
        let mut s = ORSet::new(Policy::AddWins);
        for i in 0..100u32 {
            s.add(&r("a"), &i.to_be_bytes()).unwrap();
        }
        for i in (0..100u32).step_by(3) {
            s.remove(&r("a"), &i.to_be_bytes()).unwrap();
        }
        for i in 0..100u32 {
            assert_eq!(s.contains(&i.to_be_bytes()), i % 3 != 0, "{i}");
        }
    }

    #[test]
    fn policy_mismatch_is_an_error() {
        let mut a = ORSet::new(Policy::AddWins);
        let b = ORSet::new(Policy::RemoveWins);
        assert_eq!(a.join(&b), Err(Error::TypeMismatch));
    }
}

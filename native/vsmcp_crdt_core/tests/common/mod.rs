//! Random replicated histories shared by `tests/laws.rs` and `tests/codec.rs`,
//! and the seeded generator of the network simulations; [`net`] holds the
//! simulated network of `tests/sync_engine.rs`.
//!
//! A history runs on 2-4 replicas: each step either mutates one replica
//! (keeping the delta it produced in that replica's log) or delivers some of
//! one replica's deltas, a delta group of them, or its full state to another.
//! Elements come from a three-letter alphabet and LWW timestamps from a tiny
//! range, so concurrent writes to the same element or instant are common.

// Each test binary that declares `mod common` uses a part of it (and the
// sync-engine network in `net` is used by `tests/sync_engine.rs` only), so
// whatever one binary leaves unused is not dead code: allowed here, for this
// module and its submodules.
#![allow(dead_code)]

use proptest::prelude::*;
use std::fmt::Debug;
use vsmcp_crdt_core::gcounter::GCounter;
use vsmcp_crdt_core::lww::LwwRegister;
use vsmcp_crdt_core::orset::{ORSet, Policy};
use vsmcp_crdt_core::pncounter::PNCounter;
use vsmcp_crdt_core::{Crdt, Kind, Op, ReplicaId, Timestamp, Value};

pub mod net;

/// Element alphabet: canonical term bytes of three small binaries.
pub fn elem(i: u8) -> Vec<u8> {
    let mut out = Vec::new();
    vsmcp_crdt_core::term::write_binary(&mut out, &[b'a' + i % 3]);
    out
}

pub fn replica(i: usize) -> ReplicaId {
    ReplicaId::new(format!("r{i}").as_bytes())
}

/// One mutation; each type reads the fields it needs.
#[derive(Debug, Clone, Copy)]
pub struct MutOp {
    /// Low bit 0: add / increment / set; 1: remove / decrement / set.
    pub kind: u8,
    pub elem: u8,
    pub amount: u64,
    pub ts: Timestamp,
}

impl MutOp {
    /// Add / increment (else remove / decrement).
    pub fn is_add(&self) -> bool {
        self.kind & 1 == 0
    }
}

#[derive(Debug, Clone)]
pub enum Step {
    Mutate {
        at: usize,
        op: MutOp,
    },
    /// `to` joins the deltas of `from`'s log selected by `mask`, one by one,
    /// newest first when `reverse`.
    Deliver {
        from: usize,
        to: usize,
        mask: u64,
        reverse: bool,
    },
    /// `to` joins the selected deltas of `from` joined into one delta group.
    DeliverGroup {
        from: usize,
        to: usize,
        mask: u64,
    },
    /// `to` joins `from`'s full state.
    Sync {
        from: usize,
        to: usize,
    },
}

pub fn mut_op() -> impl Strategy<Value = MutOp> {
    (any::<u8>(), 0u8..3, 0u64..4, 0u64..4, 0u32..3).prop_map(
        |(kind, elem, amount, wall, counter)| MutOp {
            kind,
            elem,
            amount,
            ts: Timestamp::new(wall, counter),
        },
    )
}

pub fn step(replicas: usize) -> impl Strategy<Value = Step> {
    let r = 0..replicas;
    prop_oneof![
        5 => (r.clone(), mut_op()).prop_map(|(at, op)| Step::Mutate { at, op }),
        2 => (r.clone(), r.clone(), any::<u64>(), any::<bool>())
            .prop_map(|(from, to, mask, reverse)| Step::Deliver { from, to, mask, reverse }),
        1 => (r.clone(), r.clone(), any::<u64>()).prop_map(|(from, to, mask)| Step::DeliverGroup { from, to, mask }),
        1 => (r.clone(), r).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// `(replica count, steps)`.
pub fn history() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (2usize..=4).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 0..40)))
}

pub fn selected(mask: u64, i: usize) -> bool {
    mask >> (i % 64) & 1 == 1
}

/// A delta-state CRDT under test, through one uniform interface.
pub trait Replicated: Clone + PartialEq + Debug {
    fn fresh() -> Self;
    /// Apply `op` as `r`, returning the delta.
    fn mutate(&mut self, r: &ReplicaId, op: MutOp) -> Self;
    fn join_in(&mut self, other: &Self);
    /// The observable value, in a comparable form.
    fn observed(&self) -> String;
    /// Whether the value is a delta (only OR-Sets track this).
    fn is_delta(&self) -> bool {
        false
    }
    /// Whether `is_delta` is meaningful for this type.
    fn tracks_delta() -> bool {
        false
    }
    /// Extra invariants checked after each local mutation.
    fn after_mutate(&self, _op: MutOp) {}
}

pub fn joined<T: Replicated>(a: &T, b: &T) -> T {
    let mut x = a.clone();
    x.join_in(b);
    x
}

impl Replicated for GCounter {
    fn fresh() -> Self {
        GCounter::new()
    }
    fn mutate(&mut self, r: &ReplicaId, op: MutOp) -> Self {
        self.increment(r, op.amount).unwrap()
    }
    fn join_in(&mut self, other: &Self) {
        self.join(other)
    }
    fn observed(&self) -> String {
        self.value().to_string()
    }
}

impl Replicated for PNCounter {
    fn fresh() -> Self {
        PNCounter::new()
    }
    fn mutate(&mut self, r: &ReplicaId, op: MutOp) -> Self {
        if op.is_add() {
            self.increment(r, op.amount).unwrap()
        } else {
            self.decrement(r, op.amount).unwrap()
        }
    }
    fn join_in(&mut self, other: &Self) {
        self.join(other)
    }
    fn observed(&self) -> String {
        self.value().to_string()
    }
}

impl Replicated for LwwRegister {
    fn fresh() -> Self {
        LwwRegister::new()
    }
    fn mutate(&mut self, r: &ReplicaId, op: MutOp) -> Self {
        self.set(r, &elem(op.elem), op.ts)
    }
    fn join_in(&mut self, other: &Self) {
        self.join(other)
    }
    fn observed(&self) -> String {
        format!("{:?}", self.value())
    }
}

fn sorted_elements(s: &ORSet) -> String {
    let mut v: Vec<&[u8]> = s.elements().collect();
    v.sort();
    format!("{v:?}")
}

/// Remove-wins OR-Set.
#[derive(Debug, Clone, PartialEq)]
pub struct Rw(pub ORSet);
/// Add-wins OR-Set.
#[derive(Debug, Clone, PartialEq)]
pub struct Aw(pub ORSet);

fn set_mutate(s: &mut ORSet, r: &ReplicaId, op: MutOp) -> ORSet {
    let e = elem(op.elem);
    if op.is_add() {
        s.add(r, &e).unwrap()
    } else {
        s.remove(r, &e).unwrap()
    }
}

impl Replicated for Rw {
    fn fresh() -> Self {
        Rw(ORSet::new(Policy::RemoveWins))
    }
    fn mutate(&mut self, r: &ReplicaId, op: MutOp) -> Self {
        Rw(set_mutate(&mut self.0, r, op))
    }
    fn join_in(&mut self, other: &Self) {
        self.0.join(&other.0).unwrap()
    }
    fn observed(&self) -> String {
        sorted_elements(&self.0)
    }
    fn is_delta(&self) -> bool {
        self.0.is_delta()
    }
    fn tracks_delta() -> bool {
        true
    }
    /// Every remove-wins operation writes one dot and retires all dots it
    /// observed: afterwards the element holds exactly that dot, so any
    /// remove token this replica had seen is gone.
    fn after_mutate(&self, op: MutOp) {
        let n = self.0.normalized();
        let dots = &n.elems[&elem(op.elem)];
        assert_eq!(dots.len(), 1, "{dots:?}");
        let is_remove = dots.iter().next().unwrap().2;
        assert_eq!(is_remove, !op.is_add());
        assert_eq!(self.0.contains(&elem(op.elem)), op.is_add());
    }
}

impl Replicated for Aw {
    fn fresh() -> Self {
        Aw(ORSet::new(Policy::AddWins))
    }
    fn mutate(&mut self, r: &ReplicaId, op: MutOp) -> Self {
        Aw(set_mutate(&mut self.0, r, op))
    }
    fn join_in(&mut self, other: &Self) {
        self.0.join(&other.0).unwrap()
    }
    fn observed(&self) -> String {
        sorted_elements(&self.0)
    }
    fn is_delta(&self) -> bool {
        self.0.is_delta()
    }
    fn tracks_delta() -> bool {
        true
    }
    /// An add leaves exactly its own dot; a remove leaves no entry at all.
    fn after_mutate(&self, op: MutOp) {
        let n = self.0.normalized();
        match n.elems.get(&elem(op.elem)) {
            Some(dots) => {
                assert!(op.is_add(), "entry survived a remove: {dots:?}");
                assert_eq!(dots.len(), 1);
                assert!(
                    !dots.iter().next().unwrap().2,
                    "remove token in add-wins set"
                );
            }
            None => assert!(!op.is_add()),
        }
        assert_eq!(self.0.entry_count(), n.elems.len());
    }
}

/// `op` as an [`Op`] of `kind`, with `e` (the bytes of `op.elem`) as payload.
pub fn crdt_op(kind: Kind, op: MutOp, e: &[u8]) -> Op<'_> {
    match (kind, op.is_add()) {
        (Kind::GCounter, _) => Op::Increment(op.amount),
        (Kind::PNCounter, true) => Op::Increment(op.amount),
        (Kind::PNCounter, false) => Op::Decrement(op.amount),
        (Kind::ORSet | Kind::AWSet, true) => Op::Add(e),
        (Kind::ORSet | Kind::AWSet, false) => Op::Remove(e),
        (Kind::LwwRegister, _) => Op::Set(e, op.ts),
    }
}

/// A CRDT driven through the [`Crdt`] enum, of kind `Kind::from_code(CODE)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Via<const CODE: u8>(pub Crdt);

impl<const CODE: u8> Replicated for Via<CODE> {
    fn fresh() -> Self {
        Via(Crdt::new(Kind::from_code(CODE).unwrap()))
    }
    fn mutate(&mut self, r: &ReplicaId, op: MutOp) -> Self {
        let e = elem(op.elem);
        Via(self.0.mutate(r, crdt_op(self.0.kind(), op, &e)).unwrap())
    }
    fn join_in(&mut self, other: &Self) {
        self.0.join(&other.0).unwrap()
    }
    fn observed(&self) -> String {
        match self.0.value() {
            Value::Set(mut v) => {
                v.sort();
                format!("{v:?}")
            }
            v => format!("{v:?}"),
        }
    }
    fn is_delta(&self) -> bool {
        matches!(&self.0, Crdt::ORSet(s) if s.is_delta())
    }
    fn tracks_delta() -> bool {
        CODE == Kind::ORSet.code() || CODE == Kind::AWSet.code()
    }
}

/// The replicas of a history and the deltas each produced.
pub struct Run<T> {
    pub states: Vec<T>,
    pub logs: Vec<Vec<T>>,
}

impl<T: Replicated> Run<T> {
    pub fn all_deltas(&self) -> impl Iterator<Item = &T> {
        self.logs.iter().flatten()
    }
}

/// Join the deltas of `log` selected by `mask` into one delta group.
pub fn group<T: Replicated>(log: &[T], mask: u64) -> Option<T> {
    let mut it = log
        .iter()
        .enumerate()
        .filter(|(i, _)| selected(mask, *i))
        .map(|(_, d)| d);
    let mut g = it.next()?.clone();
    for d in it {
        g.join_in(d);
    }
    Some(g)
}

/// Play `steps` on `n` replicas. With `check`, every mutation also asserts
/// the delta laws against the other replicas' current states:
/// `before ⊔ d == after` and `(X ⊔ before) ⊔ d == X ⊔ after`.
pub fn play<T: Replicated>(n: usize, steps: &[Step], check: bool) -> Run<T> {
    let mut states: Vec<T> = (0..n).map(|_| T::fresh()).collect();
    let mut logs: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for s in steps {
        match *s {
            Step::Mutate { at, op } => {
                let before = states[at].clone();
                let d = states[at].mutate(&replica(at), op);
                if check {
                    assert!(!before.is_delta(), "a replica's state is never a delta");
                    states[at].after_mutate(op);
                    assert_eq!(joined(&before, &d), states[at], "before ⊔ delta != after");
                    for x in &states {
                        let lhs = joined(&joined(x, &before), &d);
                        let rhs = joined(x, &states[at]);
                        assert_eq!(lhs, rhs, "(X ⊔ Y) ⊔ d != X ⊔ Y'");
                        assert_eq!(lhs.observed(), rhs.observed());
                    }
                }
                logs[at].push(d);
            }
            Step::Deliver {
                from,
                to,
                mask,
                reverse,
            } => {
                let mut picked: Vec<T> = logs[from]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| selected(mask, *i))
                    .map(|(_, d)| d.clone())
                    .collect();
                if reverse {
                    picked.reverse();
                }
                for d in &picked {
                    states[to].join_in(d);
                }
            }
            Step::DeliverGroup { from, to, mask } => {
                if let Some(g) = group(&logs[from], mask) {
                    states[to].join_in(&g);
                }
            }
            Step::Sync { from, to } => {
                let s = states[from].clone();
                states[to].join_in(&s);
            }
        }
    }
    Run { states, logs }
}

// ---- hand-made wire bytes (codec and hostile-state tests) ------------------

/// A dot as the OR-Set wire body holds it: (replica index, counter, remove).
pub type WireDot = (u32, u64, bool);
/// The OR-Set wire body: (policy, delta?, replicas, elements with their
/// dots, version vector, dot cloud).
pub type WireORSet = (
    u8,
    bool,
    Vec<serde_bytes::ByteBuf>,
    Vec<(serde_bytes::ByteBuf, Vec<WireDot>)>,
    Vec<(u32, u64)>,
    Vec<(u32, u64)>,
);

/// `body` behind the versioned CRDT header of `kind`.
pub fn with_header(kind: Kind, body: &impl serde::Serialize) -> Vec<u8> {
    use vsmcp_crdt_core::crdt::{FORMAT_VERSION, MAGIC};
    let mut out = vec![MAGIC, FORMAT_VERSION, kind.code()];
    out.extend(rmp_serde::to_vec(body).unwrap());
    out
}

/// xorshift64*: a small, seeded, reproducible generator for the network
/// simulations (`tests/sync_sim.rs`, `tests/sync_engine.rs`).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

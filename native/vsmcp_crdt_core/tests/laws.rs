//! CRDT laws as property tests, for every type directly and through the
//! `Crdt` enum: join is a semilattice join (commutative, associative,
//! idempotent) over states and deltas alike; a delta does what the state it
//! came from does; a delta group does what its deltas do one by one;
//! replicas that exchanged everything converge. Then the OR-Set policies'
//! semantics and the HLC invariants.

mod common;

use common::*;
use proptest::prelude::*;
use vsmcp_crdt_core::error::Error;
use vsmcp_crdt_core::gcounter::GCounter;
use vsmcp_crdt_core::hlc::{Clock, Timestamp};
use vsmcp_crdt_core::lww::LwwRegister;
use vsmcp_crdt_core::orset::{ORSet, Policy};
use vsmcp_crdt_core::pncounter::PNCounter;
use vsmcp_crdt_core::Kind;

/// Every law, on one random history of type `T`.
fn check_laws<T: Replicated>(n: usize, steps: &[Step], mask: u64) {
    let run = play::<T>(n, steps, true);

    if T::tracks_delta() {
        assert!(
            run.all_deltas().all(|d| d.is_delta()),
            "a mutation returned a full state"
        );
        assert!(run.states.iter().all(|s| !s.is_delta()));
    }

    // Join laws over replica states and a few deltas.
    let mut pool: Vec<T> = run.states.clone();
    pool.extend(run.all_deltas().take(3).cloned());
    pool.push(T::fresh());
    for a in &pool {
        assert_eq!(&joined(a, a), a, "not idempotent");
        for b in &pool {
            let ab = joined(a, b);
            let ba = joined(b, a);
            assert_eq!(ab, ba, "not commutative");
            assert_eq!(ab.observed(), ba.observed());
            assert_eq!(joined(&ab, b), ab, "joining again changed the result");
            assert_eq!(ab.is_delta(), a.is_delta() && b.is_delta());
            for c in &pool {
                let l = joined(&ab, c);
                let r = joined(a, &joined(b, c));
                assert_eq!(l, r, "not associative");
                assert_eq!(l.observed(), r.observed());
            }
        }
    }

    // Delta groups: per replica log, and across all logs.
    let everything: Vec<T> = run.all_deltas().cloned().collect();
    let logs = run
        .logs
        .iter()
        .map(|l| &l[..])
        .chain(std::iter::once(&everything[..]));
    for (i, log) in logs.enumerate() {
        let Some(g) = group(log, mask) else { continue };
        if T::tracks_delta() {
            assert!(g.is_delta(), "a delta group must stay a delta");
        }
        for x in run.states.iter().chain(std::iter::once(&T::fresh())) {
            let mut one_by_one = x.clone();
            for (j, d) in log.iter().enumerate() {
                if selected(mask, j) {
                    one_by_one.join_in(d);
                }
            }
            let at_once = joined(x, &g);
            assert_eq!(at_once, one_by_one, "delta group != its deltas (log {i})");
            assert_eq!(at_once.observed(), one_by_one.observed());
        }
    }

    // Convergence: by all deltas (forwards and backwards) and by full states.
    let mut converged: Vec<T> = Vec::new();
    for (i, s) in run.states.iter().enumerate() {
        let mut by_deltas = s.clone();
        let mut ordered: Vec<&T> = everything.iter().collect();
        if i % 2 == 1 {
            ordered.reverse();
        }
        for d in ordered {
            by_deltas.join_in(d);
        }
        let mut by_states = s.clone();
        for o in &run.states {
            by_states.join_in(o);
        }
        converged.push(by_deltas);
        converged.push(by_states);
    }
    let mut all_deltas = T::fresh();
    for d in &everything {
        all_deltas.join_in(d);
    }
    for c in &converged {
        assert_eq!(c, &converged[0], "replicas did not converge");
        assert_eq!(c.observed(), converged[0].observed());
    }
    assert_eq!(
        converged[0], all_deltas,
        "a state is not the join of its deltas"
    );
}

proptest! {

    #[test]
    fn g_counter_laws((n, steps) in history(), mask in any::<u64>()) {
        check_laws::<GCounter>(n, &steps, mask);
    }

    #[test]
    fn pn_counter_laws((n, steps) in history(), mask in any::<u64>()) {
        check_laws::<PNCounter>(n, &steps, mask);
    }

    #[test]
    fn remove_wins_set_laws((n, steps) in history(), mask in any::<u64>()) {
        check_laws::<Rw>(n, &steps, mask);
    }

    #[test]
    fn add_wins_set_laws((n, steps) in history(), mask in any::<u64>()) {
        check_laws::<Aw>(n, &steps, mask);
    }

    #[test]
    fn lww_register_laws((n, steps) in history(), mask in any::<u64>()) {
        check_laws::<LwwRegister>(n, &steps, mask);
    }

    #[test]
    fn crdt_enum_laws((n, steps) in history(), mask in any::<u64>()) {
        check_laws::<Via<1>>(n, &steps, mask);
        check_laws::<Via<2>>(n, &steps, mask);
        check_laws::<Via<3>>(n, &steps, mask);
        check_laws::<Via<4>>(n, &steps, mask);
        check_laws::<Via<5>>(n, &steps, mask);
    }
}

// ---- OR-Set policies ---------------------------------------------------------

/// Two replicas that ran `steps` and then exchanged full states.
fn synced_pair(policy: Policy, steps: &[Step]) -> (ORSet, ORSet) {
    let (mut a, mut b) = match policy {
        Policy::RemoveWins => {
            let run = play::<Rw>(2, steps, false);
            (run.states[0].0.clone(), run.states[1].0.clone())
        }
        Policy::AddWins => {
            let run = play::<Aw>(2, steps, false);
            (run.states[0].0.clone(), run.states[1].0.clone())
        }
    };
    let b0 = b.clone();
    b.join(&a).unwrap();
    a.join(&b0).unwrap();
    assert_eq!(a, b);
    (a, b)
}

fn dots_of(s: &ORSet, e: &[u8]) -> Vec<bool> {
    s.normalized()
        .elems
        .get(e)
        .map(|d| d.iter().map(|x| x.2).collect())
        .unwrap_or_default()
}

fn pair_history() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(2), 0..30)
}

proptest! {

    /// Remove-wins: a remove concurrent with an add of the same element
    /// wins on both sides; an add that observed the remove brings the
    /// element back and retires the remove token everywhere.
    #[test]
    fn remove_wins_semantics(steps in pair_history(), e in 0u8..3, add_first in any::<bool>()) {
        let (mut a, mut b) = synced_pair(Policy::RemoveWins, &steps);
        let x = elem(e);
        let (ra, rb) = (replica(0), replica(1));
        let (da, db) = if add_first {
            (a.add(&ra, &x).unwrap(), b.remove(&rb, &x).unwrap())
        } else {
            let db = b.remove(&rb, &x).unwrap();
            (a.add(&ra, &x).unwrap(), db)
        };
        a.join(&db).unwrap();
        b.join(&da).unwrap();
        prop_assert!(!a.contains(&x));
        prop_assert!(!b.contains(&x));
        prop_assert_eq!(&a, &b);
        // Both dots survive: the concurrent add and the winning remove.
        prop_assert_eq!(dots_of(&a, &x).len(), 2);

        // b adds again, having observed the remove (and the add).
        let d = b.add(&rb, &x).unwrap();
        a.join(&d).unwrap();
        prop_assert!(a.contains(&x));
        prop_assert!(b.contains(&x));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(dots_of(&a, &x), vec![false], "remove token not retired");

        // And a remove observed by a later remove leaves one token.
        let d = a.remove(&ra, &x).unwrap();
        b.join(&d).unwrap();
        let d = b.remove(&rb, &x).unwrap();
        a.join(&d).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(dots_of(&a, &x), vec![true]);
        prop_assert_eq!(a.entry_count(), a.normalized().elems.len());
    }

    /// Add-wins: a concurrent add survives a remove; a remove that observed
    /// every add drops the entry entirely on every replica.
    #[test]
    fn add_wins_semantics(steps in pair_history(), e in 0u8..3) {
        let (mut a, mut b) = synced_pair(Policy::AddWins, &steps);
        let x = elem(e);
        let (ra, rb) = (replica(0), replica(1));
        let da = a.add(&ra, &x).unwrap();
        let db = b.remove(&rb, &x).unwrap();
        a.join(&db).unwrap();
        b.join(&da).unwrap();
        prop_assert!(a.contains(&x));
        prop_assert!(b.contains(&x));
        prop_assert_eq!(&a, &b);

        let present = a.len();
        let d = b.remove(&rb, &x).unwrap();
        a.join(&d).unwrap();
        prop_assert!(!a.contains(&x));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.len(), present - 1);
        prop_assert_eq!(a.entry_count(), a.len(), "entry left behind by remove");
        prop_assert_eq!(b.entry_count(), b.len());
    }

    /// Full states never hold empty entries; add-wins states hold only
    /// present elements.
    #[test]
    fn entries_are_live((n, steps) in history()) {
        for s in play::<Rw>(n, &steps, false).states {
            prop_assert_eq!(s.0.entry_count(), s.0.normalized().elems.len());
        }
        for s in play::<Aw>(n, &steps, false).states {
            prop_assert_eq!(s.0.entry_count(), s.0.len());
        }
    }
}

proptest! {
    /// `mutate_join` (mutate and fold the delta into a delta group in one
    /// step) equals `mutate` followed by joining the delta, and the group
    /// it accumulates does what its deltas do.
    #[test]
    fn crdt_mutate_join_equals_join_of_delta(
        ops in prop::collection::vec((0usize..3, mut_op()), 0..30),
        code in 1u8..=5,
    ) {
        use vsmcp_crdt_core::Crdt;
        let kind = Kind::from_code(code).unwrap();
        let (mut s1, mut s2) = (Crdt::new(kind), Crdt::new(kind));
        let (mut acc1, mut acc2) = (Crdt::empty_delta(kind), Crdt::empty_delta(kind));
        let mut other = Crdt::new(kind);
        other
            .mutate(&replica(9), crdt_op(kind, mut_op_zero(), &elem(0)))
            .unwrap();
        let mut one_by_one = other.clone();
        for (r, op) in &ops {
            let e = elem(op.elem);
            s1.mutate_join(&replica(*r), crdt_op(kind, *op, &e), &mut acc1).unwrap();
            let d = s2.mutate(&replica(*r), crdt_op(kind, *op, &e)).unwrap();
            acc2.join(&d).unwrap();
            one_by_one.join(&d).unwrap();
        }
        prop_assert_eq!(&s1, &s2);
        prop_assert_eq!(&acc1, &acc2);
        if matches!(kind, Kind::ORSet | Kind::AWSet) {
            prop_assert!(matches!(&acc1, vsmcp_crdt_core::Crdt::ORSet(s) if s.is_delta()));
        }
        let mut fresh = Crdt::new(kind);
        fresh.join(&acc1).unwrap();
        prop_assert_eq!(&fresh, &s1, "the group does not rebuild the state");
        other.join(&acc1).unwrap();
        prop_assert_eq!(&other, &one_by_one, "the group != its deltas one by one");
    }
}

proptest! {
    /// The delta mutator m^δ(X) (`Crdt::delta_of`, used by strict writes)
    /// leaves X unchanged, and X ⊔ m^δ(X) equals the state `mutate` leaves,
    /// with the same delta.
    #[test]
    fn delta_of_equals_mutate(
        ops in prop::collection::vec((0usize..3, mut_op()), 0..30),
        code in 1u8..=5,
    ) {
        use vsmcp_crdt_core::Crdt;
        let kind = Kind::from_code(code).unwrap();
        let mut s = Crdt::new(kind);
        for (r, op) in &ops {
            let e = elem(op.elem);
            let o = crdt_op(kind, *op, &e);
            let before = s.clone();
            let d1 = s.delta_of(&replica(*r), o).unwrap();
            prop_assert_eq!(&s, &before, "delta_of changed the state");
            let mut joined = s.clone();
            joined.join(&d1).unwrap();
            let d2 = s.mutate(&replica(*r), o).unwrap();
            prop_assert_eq!(&joined, &s);
            prop_assert_eq!(&d1, &d2);
        }
    }
}

fn mut_op_zero() -> MutOp {
    MutOp {
        kind: 0,
        elem: 0,
        amount: 1,
        ts: Timestamp::new(0, 0),
    }
}

#[test]
fn crdt_enum_rejects_mismatches() {
    use vsmcp_crdt_core::{Crdt, Op};
    let r = replica(0);
    let mut g = Crdt::new(Kind::GCounter);
    assert_eq!(
        g.mutate(&r, Op::Decrement(1)),
        Err(Error::UnsupportedOperation)
    );
    assert_eq!(
        g.mutate(&r, Op::Add(b"x")),
        Err(Error::UnsupportedOperation)
    );
    let mut rw = Crdt::new(Kind::ORSet);
    assert_eq!(rw.join(&Crdt::new(Kind::AWSet)), Err(Error::TypeMismatch));
    assert_eq!(
        rw.join(&Crdt::new(Kind::GCounter)),
        Err(Error::TypeMismatch)
    );
    for k in Kind::ALL {
        assert_eq!(Crdt::new(k).kind(), k);
        assert_eq!(Kind::from_name(k.name()), Some(k));
    }
}

#[test]
fn g_counter_overflow_is_an_error() {
    let mut c = GCounter::new();
    c.increment(&replica(0), u64::MAX).unwrap();
    assert_eq!(c.increment(&replica(0), 1), Err(Error::Overflow));
    assert_eq!(c.value(), u64::MAX as u128);
}

// ---- Hybrid logical clock ------------------------------------------------------

const MAX_TS: Timestamp = Timestamp {
    wall_ms: u64::MAX,
    counter: u32::MAX,
};

fn wall() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..20, any::<u64>(), (u64::MAX - 3)..=u64::MAX]
}

fn counter() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..3, any::<u32>(), (u32::MAX - 2)..=u32::MAX]
}

fn ts() -> impl Strategy<Value = Timestamp> {
    (wall(), counter()).prop_map(|(w, c)| Timestamp::new(w, c))
}

/// `next` is strictly after `prev`, or both are the largest timestamp.
fn advances(prev: Timestamp, next: Timestamp) -> bool {
    next > prev || (prev == MAX_TS && next == MAX_TS)
}

#[derive(Debug, Clone)]
enum ClockEvent {
    Tick(u64),
    Receive(Timestamp, u64),
    Observe(Timestamp),
}

fn clock_event() -> impl Strategy<Value = ClockEvent> {
    prop_oneof![
        wall().prop_map(ClockEvent::Tick),
        (ts(), wall()).prop_map(|(t, now)| ClockEvent::Receive(t, now)),
        ts().prop_map(ClockEvent::Observe),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn hlc_tick_strictly_increases(t in ts(), now in wall()) {
        let n = t.tick(now);
        prop_assert!(advances(t, n), "{t:?} -> {n:?}");
        prop_assert!(n.wall_ms >= now);
        prop_assert!(advances(t, t.successor()));
    }

    #[test]
    fn hlc_receive_exceeds_both_or_rejects(local in ts(), remote in ts(), now in wall(), max_offset in wall()) {
        match local.receive(remote, now, max_offset) {
            Ok(r) => {
                prop_assert!(remote.wall_ms <= now.saturating_add(max_offset));
                prop_assert!(advances(local, r), "{local:?} {remote:?} -> {r:?}");
                prop_assert!(advances(remote, r), "{local:?} {remote:?} -> {r:?}");
                prop_assert!(r.wall_ms >= now);
            }
            Err(e) => {
                prop_assert!(remote.wall_ms > now.saturating_add(max_offset));
                prop_assert_eq!(e, Error::ClockSkew { ahead_ms: remote.wall_ms - now });
            }
        }
    }

    #[test]
    fn hlc_rejects_far_future(now in 0u64..1 << 40, max_offset in 0u64..10_000, ahead in 1u64..1 << 20, c in counter()) {
        let remote = Timestamp::new(now + max_offset + ahead, c);
        prop_assert_eq!(
            Timestamp::new(now, 0).receive(remote, now, max_offset),
            Err(Error::ClockSkew { ahead_ms: max_offset + ahead })
        );
        // At exactly the bound the remote is accepted.
        let edge = Timestamp::new(now + max_offset, c);
        prop_assert!(Timestamp::new(now, 0).receive(edge, now, max_offset).is_ok());
    }

    /// A clock driven by any events never goes backwards and every issued
    /// timestamp is new.
    #[test]
    fn hlc_clock_is_monotone(start in ts(), max_offset in wall(), events in prop::collection::vec(clock_event(), 0..50)) {
        let mut clock = Clock::with_last(start, max_offset);
        for e in events {
            let prev = clock.last();
            match e {
                ClockEvent::Tick(now) => {
                    let t = clock.tick(now);
                    prop_assert!(advances(prev, t));
                }
                ClockEvent::Receive(remote, now) => match clock.receive(remote, now) {
                    Ok(t) => prop_assert!(advances(prev, t) && advances(remote, t)),
                    Err(_) => prop_assert_eq!(clock.last(), prev),
                },
                ClockEvent::Observe(t) => {
                    clock.observe(t);
                    prop_assert!(clock.last() >= prev && clock.last() >= t);
                }
            }
        }
    }
}

#[test]
fn hlc_saturates_at_the_largest_timestamp() {
    assert_eq!(MAX_TS.successor(), MAX_TS);
    assert_eq!(MAX_TS.tick(u64::MAX), MAX_TS);
    assert_eq!(MAX_TS.tick(0), MAX_TS);
    assert_eq!(MAX_TS.receive(MAX_TS, u64::MAX, 0), Ok(MAX_TS));
    assert_eq!(
        Timestamp::new(u64::MAX - 1, u32::MAX).tick(0),
        Timestamp::new(u64::MAX, 0)
    );
    let mut c = Clock::new(500);
    c.observe(MAX_TS);
    assert_eq!(c.tick(1), MAX_TS);
}

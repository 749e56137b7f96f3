//! Hostile states: a peer may send an OR-Set whose one element carries tens
//! of thousands of dots, or a causal context / counter with tens of
//! thousands of entries. Decoding and joining such a state must stay
//! O(k log k) in its size, not O(k²): with k = 50,000 each takes about
//! 10 ms in a release build on a quiet machine, while the quadratic versions
//! took seconds. The bound (500 ms) tells the two apart with room for a
//! loaded machine; it is not a speed target.
//!
//! States are built directly in the wire layout (as `tests/codec.rs` does),
//! since no sequence of operations produces many dots on one element.

mod common;

use common::{with_header, WireDot, WireORSet};
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};
use vsmcp_crdt_core::{Crdt, Kind, Op, ReplicaId};

const K: usize = 50_000;
const BOUND: Duration = Duration::from_millis(500);

const REPLICAS: u32 = 4;

fn replicas() -> Vec<ByteBuf> {
    (0..REPLICAS)
        .map(|i| ByteBuf::from(format!("r{i}").into_bytes()))
        .collect()
}

/// `k` distinct dots spread over the replicas, with gaps so most of them
/// land in the dot cloud rather than the version vector; `salt` shifts the
/// counters so two sets overlap in about half their dots.
fn distinct_dots(k: usize, salt: u64, remove: bool) -> Vec<WireDot> {
    (0..k as u64)
        .map(|i| {
            let i = i + salt;
            (
                (i % REPLICAS as u64) as u32,
                2 * (i / REPLICAS as u64) + 1,
                remove,
            )
        })
        .collect()
}

/// An OR-Set of `policy` code whose one element holds `dots`.
fn one_element(policy: u8, dots: Vec<WireDot>) -> Vec<u8> {
    let kind = if policy == 0 {
        Kind::ORSet
    } else {
        Kind::AWSet
    };
    let w: WireORSet = (
        policy,
        false,
        replicas(),
        vec![(ByteBuf::from(b"x".to_vec()), dots)],
        vec![],
        vec![],
    );
    with_header(kind, &w)
}

/// Best of up to three runs of `f` (stopping once one is under the bound),
/// so a loaded machine does not fail a linearithmic implementation.
fn timed<T>(what: &str, mut f: impl FnMut() -> T) -> T {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let r = f();
        let dt = t.elapsed();
        best = best.min(dt);
        out = Some(r);
        if best < BOUND {
            break;
        }
    }
    eprintln!("{what}: {best:?}");
    assert!(best < BOUND, "{what} took {best:?} (bound {BOUND:?})");
    out.unwrap()
}

fn decode_ok(bytes: &[u8]) -> Crdt {
    Crdt::decode(bytes).expect("hostile but valid state must decode")
}

#[test]
fn decode_50k_dots_on_one_element() {
    for policy in [0u8, 1] {
        let bytes = one_element(policy, distinct_dots(K, 0, false));
        let c = timed(&format!("decode 50k dots (policy {policy})"), || {
            decode_ok(&bytes)
        });
        // The decoder adds the held dots to the context; the result then
        // round-trips.
        let again = c.encode();
        assert!(
            decode_ok(&again).encode() == again,
            "round trip changed the bytes"
        );
        assert_eq!(c.value(), vsmcp_crdt_core::Value::Set(vec![b"x"]));
    }
}

#[test]
fn decode_rejects_duplicate_dots_quickly() {
    // One duplicate at the very end: the decoder has to look through all
    // 50,000 dots before it can tell.
    let mut dots = distinct_dots(K, 0, false);
    dots.push(dots[0]);
    let bytes = one_element(0, dots);
    let r = timed("reject 1 duplicate after 50k dots", || Crdt::decode(&bytes));
    assert!(r.is_err(), "duplicate dot accepted");

    // Many duplicates: every dot twice, second copies after the first.
    let mut dots = distinct_dots(K / 2, 0, false);
    dots.extend(dots.clone());
    let bytes = one_element(1, dots);
    let r = timed("reject 25k duplicated dots", || Crdt::decode(&bytes));
    assert!(r.is_err(), "duplicate dots accepted");

    // Many duplicates: the second half mirrors every other dot of the first.
    let mut dots = distinct_dots(K, 0, false);
    let n = dots.len();
    for i in (0..n / 2).step_by(2) {
        dots[n - 1 - i] = dots[i];
    }
    let bytes = one_element(0, dots);
    let r = timed("reject interleaved duplicates", || Crdt::decode(&bytes));
    assert!(r.is_err(), "duplicate dots accepted");
}

#[test]
fn join_50k_dots_on_one_element() {
    for policy in [0u8, 1] {
        // Two states that share about half of their 50,000 dots on `x`, and
        // each has seen only its own dots: the join keeps the union.
        let a = decode_ok(&one_element(policy, distinct_dots(K, 0, false)));
        let b = decode_ok(&one_element(policy, distinct_dots(K, K as u64 / 2, false)));
        let joined = timed(&format!("join 50k+50k dots (policy {policy})"), || {
            let mut m = a.clone();
            m.join(&b).unwrap();
            m
        });
        let Crdt::ORSet(s) = &joined else { panic!() };
        assert_eq!(s.normalized().elems[&b"x".to_vec()].len(), K + K / 2);
        // Join is commutative on the hostile state too.
        let mut other = b.clone();
        other.join(&a).unwrap();
        assert_eq!(joined, other);

        // Joining into an empty state and into a state that has seen and
        // retired all of them.
        timed(&format!("join 50k into empty (policy {policy})"), || {
            let mut m = Crdt::new(joined.kind());
            m.join(&a).unwrap();
            m
        });
        let mut retired = joined.clone();
        retired
            .mutate(&ReplicaId::from("r0"), Op::Remove(b"x"))
            .unwrap();
        let m = timed(&format!("join 75k into retired (policy {policy})"), || {
            let mut m = retired.clone();
            m.join(&joined).unwrap();
            m
        });
        assert_eq!(m, retired);
    }
}

#[test]
fn remove_of_element_with_50k_dots() {
    let a = decode_ok(&one_element(0, distinct_dots(K, 0, false)));
    let mut s = a.clone();
    let d = timed("remove element with 50k dots", || {
        let mut s2 = a.clone();
        s2.mutate(&ReplicaId::from("r1"), Op::Remove(b"x")).unwrap()
    });
    s.join(&d).unwrap();
    assert_eq!(s.value(), vsmcp_crdt_core::Value::Set(vec![]));
}

#[test]
fn decode_and_join_large_causal_context() {
    // 50,000 cloud dots and no elements, plus a context whose dots fill the
    // gaps: joining them compacts everything into the vector.
    let cloud: Vec<(u32, u64)> = (0..K as u64).map(|i| (0, 2 * i + 2)).collect();
    let fill: Vec<(u32, u64)> = (0..K as u64).map(|i| (0, 2 * i + 3)).collect();
    let mk = |cloud: Vec<(u32, u64)>| {
        let w: WireORSet = (0, false, replicas(), vec![], vec![], cloud);
        with_header(Kind::ORSet, &w)
    };
    let (ba, bb) = (mk(cloud), mk(fill));
    let a = timed("decode 50k cloud dots", || decode_ok(&ba));
    let b = decode_ok(&bb);
    timed("join 50k+50k cloud dots", || {
        let mut m = a.clone();
        m.join(&b).unwrap();
        m
    });
    // Filling the gap at 1 (reversed: the cloud arrives highest first).
    let mut rev: Vec<(u32, u64)> = (1..=K as u64).rev().map(|c| (0, c)).collect();
    rev.push((0, 1));
    let brev = mk(rev);
    let c = timed("decode 50k cloud dots, compacting", || decode_ok(&brev));
    let Crdt::ORSet(s) = &c else { panic!() };
    assert!(s.causal_context().cloud.is_empty());
}

#[test]
fn decode_and_join_large_counters() {
    let entries: Vec<(ByteBuf, u64)> = (0..K)
        .map(|i| (ByteBuf::from(format!("r{i}").into_bytes()), i as u64 + 1))
        .collect();
    let bytes = with_header(Kind::GCounter, &entries);
    let a = timed("decode 50k counter entries", || decode_ok(&bytes));
    let half = &entries[..K / 2];
    let pn = with_header(Kind::PNCounter, &(half, half));
    let p = timed("decode 25k+25k pn-counter entries", || decode_ok(&pn));
    let mut dup = entries.clone();
    dup.push(entries[0].clone());
    let bad = with_header(Kind::GCounter, &dup);
    assert!(timed("reject duplicate counter entry", || Crdt::decode(&bad)).is_err());
    timed("join 50k counter entries", || {
        let mut m = Crdt::new(Kind::GCounter);
        m.join(&a).unwrap();
        m.join(&a).unwrap();
        m
    });
    timed("join 25k+25k pn-counter entries", || {
        let mut m = Crdt::new(Kind::PNCounter);
        m.join(&p).unwrap();
        m
    });
}

// ---- the long-list paths agree with the definition -----------------------------

/// Tiny deterministic generator (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A random one-element OR-Set holding `k` dots (distinct `(replica,
/// counter)`) and having seen some more dots it does not hold.
fn random_state(g: &mut Lcg, policy: u8, k: usize) -> Vec<u8> {
    let mut held = std::collections::BTreeSet::new();
    while held.len() < k {
        held.insert((g.next(REPLICAS as u64) as u32, 1 + g.next(60)));
    }
    let dots: Vec<WireDot> = held
        .into_iter()
        .map(|(r, c)| (r, c, policy == 0 && g.next(4) == 0))
        .collect();
    let seen: Vec<(u32, u64)> = (0..g.next(40))
        .map(|_| (g.next(REPLICAS as u64) as u32, 1 + g.next(60)))
        .collect();
    let vv = vec![(g.next(REPLICAS as u64) as u32, g.next(8))];
    let w: WireORSet = (
        policy,
        false,
        replicas(),
        vec![(ByteBuf::from(b"x".to_vec()), dots)],
        vv,
        seen,
    );
    with_header(
        if policy == 0 {
            Kind::ORSet
        } else {
            Kind::AWSet
        },
        &w,
    )
}

/// The dot-store join by its definition, on the normalized forms.
fn reference_join(a: &Crdt, b: &Crdt) -> std::collections::BTreeSet<(ReplicaId, u64, bool)> {
    let (Crdt::ORSet(a), Crdt::ORSet(b)) = (a, b) else {
        panic!()
    };
    let (na, nb) = (a.normalized(), b.normalized());
    let sees = |ctx: &vsmcp_crdt_core::causal::NormalizedContext, r: &ReplicaId, c: u64| {
        ctx.vv.get(r).is_some_and(|&n| c <= n) || ctx.cloud.contains(&(r.clone(), c))
    };
    let empty = Default::default();
    let da = na.elems.get(b"x".as_slice()).unwrap_or(&empty);
    let db = nb.elems.get(b"x".as_slice()).unwrap_or(&empty);
    da.iter()
        .filter(|d| db.contains(d) || !sees(&nb.ctx, &d.0, d.1))
        .chain(db.iter().filter(|d| !sees(&na.ctx, &d.0, d.1)))
        .cloned()
        .collect()
}

#[test]
fn long_dot_lists_join_by_definition() {
    let mut g = Lcg(7);
    for policy in [0u8, 1] {
        for _ in 0..300 {
            let (ka, kb) = (g.next(45) as usize, g.next(45) as usize);
            let a = decode_ok(&random_state(&mut g, policy, ka));
            let b = decode_ok(&random_state(&mut g, policy, kb));
            let want = reference_join(&a, &b);
            let mut m = a.clone();
            m.join(&b).unwrap();
            let Crdt::ORSet(s) = &m else { panic!() };
            let got = s
                .normalized()
                .elems
                .get(b"x".as_slice())
                .cloned()
                .unwrap_or_default();
            assert_eq!(got, want, "policy {policy}, {ka} + {kb} dots");
            let mut n = b.clone();
            n.join(&a).unwrap();
            assert_eq!(m, n, "join not commutative at {ka} + {kb} dots");
        }
    }
}

#[test]
fn duplicate_found_at_every_position() {
    for k in 1..40 {
        for j in 0..k {
            let mut dots = distinct_dots(k, 0, false);
            dots.push(dots[j]);
            assert!(
                Crdt::decode(&one_element(0, dots.clone())).is_err(),
                "duplicate of dot {j} after {k} dots accepted"
            );
            // ... and anywhere in the list, not only at the end.
            let last = dots.pop().unwrap();
            dots.insert(k / 2, last);
            assert!(Crdt::decode(&one_element(1, dots)).is_err());
        }
        assert!(Crdt::decode(&one_element(0, distinct_dots(k, 0, false))).is_ok());
    }
}

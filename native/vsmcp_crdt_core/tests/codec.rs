//! The wire format: round trips of random states and deltas of every kind,
//! decoders that never panic on hostile bytes, golden byte vectors pinning
//! format version 1, and the two-replica contract the Elixir API documents.

mod common;

use common::*;
use proptest::prelude::*;
use serde_bytes::ByteBuf;
use vsmcp_crdt_core::crdt::{FORMAT_VERSION, MAGIC};
use vsmcp_crdt_core::term::{self, Value as T, ValueBuilder};
use vsmcp_crdt_core::{Crdt, Kind, Op, ReplicaId, Timestamp, Value};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_delta(c: &Crdt) -> bool {
    matches!(c, Crdt::ORSet(s) if s.is_delta())
}

/// `decode(encode(x)) == x`, kind and delta flag kept, bytes stable.
fn assert_round_trip(c: &Crdt) {
    let bytes = c.encode();
    assert_eq!(&bytes[..3], &[MAGIC, FORMAT_VERSION, c.kind().code()]);
    let d = Crdt::decode(&bytes).unwrap_or_else(|e| panic!("{e}: {}", hex(&bytes)));
    assert_eq!(&d, c);
    assert_eq!(d.kind(), c.kind());
    assert_eq!(is_delta(&d), is_delta(c));
    assert_eq!(d.value(), c.value());
    assert_eq!(d.encode(), bytes, "re-encoding changed the bytes");
}

fn round_trip_history<const CODE: u8>(n: usize, steps: &[Step]) {
    let run = play::<Via<CODE>>(n, steps, false);
    for x in run.states.iter().chain(run.all_deltas()) {
        assert_round_trip(&x.0);
    }
    if let Some(g) = group(&run.logs[0], u64::MAX) {
        assert_round_trip(&g.0);
    }
}

/// Encodings of every state and delta of a random history, of every kind.
fn encodings(n: usize, steps: &[Step]) -> Vec<Vec<u8>> {
    fn of<const CODE: u8>(n: usize, steps: &[Step], out: &mut Vec<Vec<u8>>) {
        let run = play::<Via<CODE>>(n, steps, false);
        out.extend(
            run.states
                .iter()
                .chain(run.all_deltas())
                .map(|x| x.0.encode()),
        );
    }
    let mut out = Vec::new();
    of::<1>(n, steps, &mut out);
    of::<2>(n, steps, &mut out);
    of::<3>(n, steps, &mut out);
    of::<4>(n, steps, &mut out);
    of::<5>(n, steps, &mut out);
    out
}

/// Whatever `Crdt::decode` accepts must behave: it round-trips, joins with
/// ordinary values of its kind in both directions and takes mutations,
/// returning `Ok` or `Err` but never panicking.
fn exercise_accepted(bytes: &[u8]) {
    let Ok(c) = Crdt::decode(bytes) else { return };
    assert_round_trip_loose(&c);
    let r = ReplicaId::from("r0");
    let mut plain = Crdt::new(c.kind());
    let e = elem(0);
    let ops = [
        Op::Increment(1),
        Op::Decrement(1),
        Op::Add(&e),
        Op::Remove(&e),
        Op::Set(&e, Timestamp::new(1, 0)),
    ];
    for op in ops {
        let _ = plain.mutate(&r, op);
    }
    let mut a = plain.clone();
    let _ = a.join(&c);
    let mut b = c.clone();
    let _ = b.join(&plain);
    for op in ops {
        let _ = a.mutate(&r, op);
        let _ = b.mutate(&r, op);
        let _ = b.mutate(&ReplicaId::from("fresh"), op);
    }
    let _ = a.value();
    let _ = b.value();
    assert_round_trip_loose(&a);
    assert_round_trip_loose(&b);
}

/// Round trip of a value that may have come from hostile bytes: its own
/// encoding decodes back to an equal value.
fn assert_round_trip_loose(c: &Crdt) {
    let bytes = c.encode();
    let d = Crdt::decode(&bytes).unwrap_or_else(|e| panic!("{e}: {}", hex(&bytes)));
    assert_eq!(&d, c);
    assert_eq!(is_delta(&d), is_delta(c));
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Overwrite(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        Just(0x00),
        Just(0xff),
        Just(0xcf),
        Just(0xc0),
        Just(0xc3),
        Just(0x90),
        Just(0x7f)
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), interesting_byte()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (any::<usize>(), interesting_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn mutate_bytes(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::FlipBit(i, b) if len > 0 => bytes[i % len] ^= 1 << b,
        Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
        Mutation::Overwrite(i, b) if len > 0 => bytes[i % len] = b,
        Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
        Mutation::Delete(i) if len > 0 => {
            bytes.remove(i % len);
        }
        _ => {}
    }
}

// ---- structure-aware wire values ------------------------------------------------

fn counter_value() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, (u64::MAX - 2)..=u64::MAX, any::<u64>()]
}

fn wire_replica() -> impl Strategy<Value = ByteBuf> {
    (0u8..3).prop_map(|i| ByteBuf::from(format!("r{i}").into_bytes()))
}

/// An OR-Set in the wire layout (policy, delta, replicas, entries, vector,
/// cloud) with small indices and counters near 0 and near `u64::MAX`.
fn wire_orset() -> impl Strategy<Value = WireORSet> {
    let idx = 0u32..4;
    let dot = (idx.clone(), counter_value(), any::<bool>());
    let entry = (
        (0u8..3).prop_map(|i| ByteBuf::from(elem(i))),
        prop::collection::vec(dot, 0..3),
    );
    (
        0u8..3,
        any::<bool>(),
        prop::collection::vec(wire_replica(), 0..4),
        prop::collection::vec(entry, 0..4),
        prop::collection::vec((idx.clone(), counter_value()), 0..3),
        prop::collection::vec((idx, counter_value()), 0..3),
    )
}

// ---- terms -------------------------------------------------------------------

fn term_value() -> impl Strategy<Value = T> {
    let leaf = prop_oneof![
        "[a-z_]{0,8}".prop_map(T::Atom),
        any::<i64>().prop_map(T::Int),
        prop::num::f64::NORMAL.prop_map(T::Float),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(T::Binary),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(T::Etf),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(T::List),
            prop::collection::vec(inner.clone(), 0..4).prop_map(T::Tuple),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(T::Map),
        ]
    })
}

fn encoded(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    term::encode_value(v, &mut out);
    out
}

proptest! {
    #[test]
    fn states_and_deltas_round_trip((n, steps) in history()) {
        round_trip_history::<1>(n, &steps);
        round_trip_history::<2>(n, &steps);
        round_trip_history::<3>(n, &steps);
        round_trip_history::<4>(n, &steps);
        round_trip_history::<5>(n, &steps);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Crdt::decode(&bytes);
        let _ = term::decode(&bytes, &mut ValueBuilder);
    }

    #[test]
    fn random_bodies_never_panic(kind in 0u8..7, version in prop_oneof![Just(FORMAT_VERSION), any::<u8>()], body in prop::collection::vec(interesting_byte(), 0..128)) {
        let mut bytes = vec![MAGIC, version, kind];
        bytes.extend(body);
        exercise_accepted(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic((n, steps) in history(), muts in prop::collection::vec(mutation(), 1..4)) {
        for mut bytes in encodings(n, &steps) {
            for m in &muts {
                mutate_bytes(&mut bytes, m);
            }
            exercise_accepted(&bytes);
        }
    }

    #[test]
    fn structured_or_sets_never_panic(w in wire_orset(), aw in any::<bool>()) {
        let kind = if aw { Kind::AWSet } else { Kind::ORSet };
        exercise_accepted(&with_header(kind, &w));
    }

    #[test]
    fn structured_counters_and_registers_never_panic(
        p in prop::collection::vec((wire_replica(), counter_value()), 0..4),
        n in prop::collection::vec((wire_replica(), counter_value()), 0..4),
        lww in prop::option::of((counter_value(), any::<u32>(), wire_replica(), prop::collection::vec(any::<u8>(), 0..4).prop_map(ByteBuf::from))),
    ) {
        exercise_accepted(&with_header(Kind::GCounter, &p));
        exercise_accepted(&with_header(Kind::PNCounter, &(&p, &n)));
        exercise_accepted(&with_header(Kind::LwwRegister, &lww));
    }

    #[test]
    fn terms_round_trip(v in term_value()) {
        let bytes = encoded(&v);
        let back = term::decode(&bytes, &mut ValueBuilder).unwrap();
        prop_assert_eq!(encoded(&back), bytes);
    }

    #[test]
    fn mutated_terms_never_panic(v in term_value(), muts in prop::collection::vec(mutation(), 1..4)) {
        let mut bytes = encoded(&v);
        for m in &muts {
            mutate_bytes(&mut bytes, m);
        }
        if let Ok(back) = term::decode(&bytes, &mut ValueBuilder) {
            // Accepted bytes are canonical up to map order.
            let again = encoded(&back);
            prop_assert_eq!(term::decode(&again, &mut ValueBuilder).map(|t| encoded(&t)), Ok(again));
        }
    }
}

/// Counters at `u64::MAX` in a causal context are accepted or rejected,
/// never an arithmetic overflow.
#[test]
fn saturated_causal_context_does_not_panic() {
    let r = || vec![ByteBuf::from(b"r0".to_vec())];
    let none: Vec<(ByteBuf, Vec<WireDot>)> = Vec::new();
    let cases: Vec<WireORSet> = vec![
        (0, false, r(), none.clone(), vec![(0, u64::MAX)], vec![]),
        (
            0,
            false,
            r(),
            none.clone(),
            vec![(0, u64::MAX - 1)],
            vec![(0, u64::MAX)],
        ),
        (
            0,
            false,
            r(),
            vec![(ByteBuf::from(elem(0)), vec![(0, u64::MAX, false)])],
            vec![(0, u64::MAX - 1)],
            vec![],
        ),
    ];
    for w in cases {
        let bytes = with_header(Kind::ORSet, &w);
        let c = Crdt::decode(&bytes).unwrap();
        // The replica is exhausted: a further write is an error, not a wrap.
        let mut m = c.clone();
        assert!(m.mutate(&ReplicaId::from("r0"), Op::Add(&elem(1))).is_err());
        let mut j = Crdt::new(Kind::ORSet);
        j.mutate(&ReplicaId::from("r0"), Op::Add(&elem(2))).unwrap();
        j.join(&c).unwrap();
        exercise_accepted(&bytes);
    }
}

// ---- golden vectors -------------------------------------------------------------

fn n1() -> ReplicaId {
    ReplicaId::from("n1")
}
fn n2() -> ReplicaId {
    ReplicaId::from("n2")
}

fn bin(s: &str) -> Vec<u8> {
    encoded(&T::Binary(s.as_bytes().to_vec()))
}

/// A fixed history per kind: `(state of n1, last delta, delta group)`.
fn golden_history(kind: Kind) -> (Crdt, Crdt, Crdt) {
    let mut a = Crdt::new(kind);
    let mut b = Crdt::new(kind);
    let (apple, pear, fig) = (bin("apple"), bin("pear"), bin("fig"));
    let mut deltas = Vec::new();
    match kind {
        Kind::GCounter | Kind::PNCounter => {
            deltas.push(a.mutate(&n1(), Op::Increment(5)).unwrap());
            deltas.push(b.mutate(&n2(), Op::Increment(3)).unwrap());
            a.join(&deltas[1]).unwrap();
            let op = if kind == Kind::GCounter {
                Op::Increment(2)
            } else {
                Op::Decrement(4)
            };
            deltas.push(a.mutate(&n1(), op).unwrap());
        }
        Kind::ORSet | Kind::AWSet => {
            deltas.push(a.mutate(&n1(), Op::Add(&apple)).unwrap());
            deltas.push(a.mutate(&n1(), Op::Add(&pear)).unwrap());
            b.join(&a).unwrap();
            let rm = b.mutate(&n2(), Op::Remove(&apple)).unwrap();
            deltas.push(a.mutate(&n1(), Op::Add(&fig)).unwrap());
            deltas.push(a.mutate(&n1(), Op::Add(&apple)).unwrap());
            a.join(&rm).unwrap();
            deltas.push(rm);
        }
        Kind::LwwRegister => {
            deltas.push(
                a.mutate(
                    &n1(),
                    Op::Set(&bin("v1"), Timestamp::new(1_700_000_000_000, 0)),
                )
                .unwrap(),
            );
            deltas.push(
                b.mutate(
                    &n2(),
                    Op::Set(&bin("v2"), Timestamp::new(1_700_000_000_000, 0)),
                )
                .unwrap(),
            );
            a.join(&deltas[1]).unwrap();
            deltas.push(
                a.mutate(
                    &n1(),
                    Op::Set(&bin("v3"), Timestamp::new(1_699_999_999_999, 7)),
                )
                .unwrap(),
            );
        }
    }
    let last = deltas.last().unwrap().clone();
    let mut g = deltas[deltas.len() - 2].clone();
    g.join(&last).unwrap();
    (a, last, g)
}

/// `(kind, state, last delta, group of the last two deltas)`, format 1.
const GOLDEN: &[(Kind, &str, &str, &str)] = &[
    (
        Kind::GCounter,
        "c701019292c4026e310792c4026e3203",
        "c701019192c4026e3107",
        "c701019292c4026e310792c4026e3203",
    ),
    (
        Kind::PNCounter,
        "c70102929292c4026e310592c4026e32039192c4026e3104",
        "c7010292909192c4026e3104",
        "c70102929192c4026e32039192c4026e3104",
    ),
    (
        Kind::ORSet,
        "c701039600c292c4026e31c4026e329392c40704056170706c6592930004c2930101c392c40604047065617291930002c2\
         92c405040366696791930003c29292000492010190",
        "c701039600c392c4026e32c4026e319192c40704056170706c6591930001c39292000192010190",
        "c701039600c392c4026e31c4026e329192c40704056170706c6592930004c2930101c39292000192010191920004",
    ),
    (
        Kind::AWSet,
        "c701049601c291c4026e319392c40704056170706c6591930004c292c40604047065617291930002c292c405040366696791\
         930003c29192000490",
        "c701049601c391c4026e319192c40704056170706c65909192000190",
        "c701049601c391c4026e319192c40704056170706c6591930004c29192000191920004",
    ),
    (
        Kind::LwwRegister,
        "c7010594cf0000018bcfe5680001c4026e31c40404027633",
        "c7010594cf0000018bcfe5680001c4026e31c40404027633",
        "c7010594cf0000018bcfe5680001c4026e31c40404027633",
    ),
];

#[test]
fn golden_crdt_bytes() {
    let mut mismatches = Vec::new();
    for &(kind, state, delta, group) in GOLDEN {
        let (s, d, g) = golden_history(kind);
        for (what, x, want) in [
            ("state", &s, state),
            ("delta", &d, delta),
            ("group", &g, group),
        ] {
            let got = hex(&x.encode());
            if got != want {
                mismatches.push(format!("{kind:?} {what}: \"{got}\""));
            }
            assert_round_trip(x);
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden bytes changed:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn golden_values_decode() {
    let (s, _, _) = golden_history(Kind::GCounter);
    assert_eq!(s.value(), Value::Counter(10));
    let (s, _, _) = golden_history(Kind::PNCounter);
    assert_eq!(s.value(), Value::Counter(4));
    let (s, _, g) = golden_history(Kind::ORSet);
    let mut v = match s.value() {
        Value::Set(v) => v,
        v => panic!("{v:?}"),
    };
    v.sort();
    // n2's remove of "apple" was concurrent with n1's re-add: remove wins.
    assert_eq!(v, vec![&bin("fig")[..], &bin("pear")[..]]);
    assert!(is_delta(&g));
    let (s, _, _) = golden_history(Kind::AWSet);
    let Value::Set(v) = s.value() else { panic!() };
    assert_eq!(v.len(), 3);
    let (s, _, _) = golden_history(Kind::LwwRegister);
    assert_eq!(s.value(), Value::Register(Some(&bin("v3"))));
}

const GOLDEN_TERMS: &[&str] = &[
    "0200",
    "0504020102ffffffffffffffffff0102feffffffffffffffff0102d804",
    "060301026f6b04046974656d03bff8000000000000",
    "070301016106000101620500020208058364000178",
    "048201070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707\
     070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707\
     07070707070707070707070707070707070707070707070707070707070707070707070707",
];

fn golden_terms() -> Vec<T> {
    vec![
        T::Int(0),
        T::List(vec![
            T::Int(-1),
            T::Int(i64::MIN),
            T::Int(i64::MAX),
            T::Int(300),
        ]),
        T::Tuple(vec![
            T::Atom("ok".into()),
            T::Binary(b"item".to_vec()),
            T::Float(-1.5),
        ]),
        T::Map(vec![
            (T::Atom("b".into()), T::List(vec![])),
            (T::Atom("a".into()), T::Tuple(vec![])),
            (T::Int(1), T::Etf(vec![131, 100, 0, 1, 120])),
        ]),
        T::Binary(vec![7; 130]),
    ]
}

#[test]
fn golden_term_bytes() {
    let got: Vec<String> = golden_terms().iter().map(|v| hex(&encoded(v))).collect();
    assert_eq!(got, GOLDEN_TERMS, "golden term bytes changed");
}

// ---- the documented two-replica contract ------------------------------------------

#[test]
fn contract_g_counter() {
    let mut a = Crdt::new(Kind::GCounter);
    let mut b = Crdt::new(Kind::GCounter);
    let da = a
        .mutate(&ReplicaId::from("node1"), Op::Increment(5))
        .unwrap();
    let db = b
        .mutate(&ReplicaId::from("node2"), Op::Increment(3))
        .unwrap();
    a.join(&db).unwrap();
    b.join(&da).unwrap();
    assert_eq!(a.value(), Value::Counter(8));
    assert_eq!(b.value(), Value::Counter(8));
    assert_eq!(a, b);
}

#[test]
fn contract_remove_wins_set() {
    let (r1, r2) = (ReplicaId::from("node1"), ReplicaId::from("node2"));
    let item = bin("item");
    let mut a = Crdt::new(Kind::ORSet);
    let mut b = Crdt::new(Kind::ORSet);
    a.mutate(&r1, Op::Add(&item)).unwrap();
    let db = b.mutate(&r2, Op::Add(&item)).unwrap();
    let drm = a.mutate(&r1, Op::Remove(&item)).unwrap();
    a.join(&db).unwrap();
    b.join(&drm).unwrap();
    assert_eq!(a.value(), Value::Set(vec![]));
    assert_eq!(b.value(), Value::Set(vec![]));
    assert_eq!(a, b);
}

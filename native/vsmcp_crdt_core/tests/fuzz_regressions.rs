//! Replays the fuzzers' committed inputs through the fuzz harness, on the
//! stable toolchain in every `cargo test`: the crashers found
//! (`fuzz/regressions/<target>/`, one file per defect, named after it) and
//! the seed corpus (`fuzz/seeds/<target>/`). Also checks that declared
//! lengths are bounded before anything is allocated: messages, records,
//! states and terms that announce 2^32 entries or a 4 GiB binary are
//! refused while the decoding thread allocates little.
//!
//! The seeds are valid encodings of every message, record, state and term
//! shape, written by `write_fuzz_seeds` (ignored; run it after a format
//! change: `cargo test --release --test fuzz_regressions -- --ignored`).

#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vsmcp_crdt_core::causal::ReplicaId;
use vsmcp_crdt_core::crdt::{Crdt, Kind, Op};
use vsmcp_crdt_core::hlc::Timestamp;
use vsmcp_crdt_core::record::{self, Gen, Meta, Record, Tomb, Tombs};
use vsmcp_crdt_core::sync::wire::Message;
use vsmcp_crdt_core::sync::BUCKETS;
use vsmcp_crdt_core::term::{self, Value, ValueBuilder};

// ---- allocation accounting --------------------------------------------------

/// The system allocator, counting the live bytes and their peak of the
/// thread that armed it (tests run on several threads at once).
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            LIVE.with(|l| {
                let now = l.get() + delta;
                l.set(now);
                PEAK.with(|p| p.set(p.get().max(now)));
            });
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The peak of the bytes `f` held allocated at once, on this thread.
fn peak_allocation(f: impl FnOnce()) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    PEAK.with(|p| p.get()).max(0) as usize
}

// ---- committed inputs -------------------------------------------------------

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

/// Every committed input of `kind` (`regressions`, `seeds`, `minimized`),
/// through its target, the targets on threads of their own; returns how
/// many.
fn replay(kind: &str) -> usize {
    std::thread::scope(|scope| {
        let runs: Vec<_> = harness::TARGETS
            .into_iter()
            .map(|(name, target)| {
                let dir = fuzz_dir().join(kind).join(name);
                scope.spawn(move || {
                    let inputs = files(&dir);
                    for path in &inputs {
                        let data = std::fs::read(path).unwrap();
                        let run = std::panic::catch_unwind(|| target(&data));
                        assert!(run.is_ok(), "{name}: {} panics", path.display());
                    }
                    inputs.len()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).sum()
    })
}

#[test]
fn committed_crashers_replay_without_panic() {
    replay("regressions");
}

#[test]
fn minimized_corpus_replays_without_panic() {
    // What the recorded campaign found, minimized (`bench/RESULTS-fuzz.md`).
    assert!(replay("minimized") > 1000);
}

#[test]
fn seed_corpus_replays_without_panic() {
    // The seeds are committed: an empty corpus means a lost directory.
    assert!(replay("seeds") > 50);
}

// ---- declared lengths are bounded before allocating --------------------------

/// MessagePack array header of `n` entries (array 32).
fn array32(n: u32) -> Vec<u8> {
    let mut v = vec![0xdd];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

/// MessagePack bin header of `n` bytes (bin 32).
fn bin32(n: u32) -> Vec<u8> {
    let mut v = vec![0xc6];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Whether a decoder accepts the bytes.
type Accepts = fn(&[u8]) -> bool;

/// Inputs that declare far more than they hold, each with the decoder that
/// must refuse it.
fn liars() -> Vec<(&'static str, Vec<u8>, Accepts)> {
    let huge = u32::MAX;
    let msg = |version: u8, tag: u8, body: &[u8]| cat(&[&[0xC9, version, tag], body]);
    let from = [0xc4, 1, b'a'];
    let wire_ok = |b: &[u8]| Message::decode(b).is_ok();
    let crdt_ok = |b: &[u8]| Crdt::decode(b).is_ok();
    let record_ok = |b: &[u8]| Record::decode(b).is_ok() || record::decode_parts(b).is_ok();
    let tombs_ok = |b: &[u8]| record::decode_tombs(b).is_ok();
    let term_ok = |b: &[u8]| term::decode(b, &mut ValueBuilder).is_ok();
    vec![
        (
            "deltas of 2^32 entries",
            msg(1, 1, &cat(&[&[0x95], &from, &[0, 1, 1], &array32(huge)])),
            wire_ok,
        ),
        (
            "states of 2^32 entries",
            msg(1, 5, &cat(&[&[0x93], &from, &array32(huge)])),
            wire_ok,
        ),
        (
            "state entry of a 4 GiB payload",
            msg(
                1,
                5,
                &cat(&[&[0x93], &from, &[0x91, 0x92, 0xc4, 1, b'x'], &bin32(huge)]),
            ),
            wire_ok,
        ),
        (
            "version 2 states of 2^32 entries",
            msg(2, 5, &cat(&[&[0x95], &from, &array32(huge)])),
            wire_ok,
        ),
        (
            "digest of 2^32 buckets",
            msg(1, 3, &cat(&[&[0x92], &from, &array32(huge)])),
            wire_ok,
        ),
        (
            "state request of 2^32 buckets",
            msg(1, 4, &cat(&[&[0x92], &from, &array32(huge)])),
            wire_ok,
        ),
        (
            "frontier of 2^32 directories",
            msg(4, 7, &cat(&[&[0x95], &from, &[1], &array32(huge)])),
            wire_ok,
        ),
        (
            "hello from a 4 GiB replica id",
            msg(1, 6, &cat(&[&[0x97], &bin32(huge)])),
            wire_ok,
        ),
        (
            "hello with 4 GiB of attributes",
            msg(
                1,
                6,
                &cat(&[&[0x97], &from, &[0xc4, 1, 1, 0, 0, 0, 0], &bin32(huge)]),
            ),
            wire_ok,
        ),
        (
            "g-counter of 2^32 entries",
            cat(&[&[0xC7, 1, 1], &array32(huge)]),
            crdt_ok,
        ),
        (
            "pn-counter of 2^32 entries",
            cat(&[&[0xC7, 1, 2, 0x92], &array32(huge)]),
            crdt_ok,
        ),
        (
            "or-set of 2^32 replicas",
            cat(&[&[0xC7, 1, 3, 0x96, 0, 0xc2], &array32(huge)]),
            crdt_ok,
        ),
        (
            "or-set of 2^32 elements",
            cat(&[&[0xC7, 1, 3, 0x96, 0, 0xc2, 0x90], &array32(huge)]),
            crdt_ok,
        ),
        (
            "or-set element of 2^32 dots",
            cat(&[
                &[
                    0xC7, 1, 3, 0x96, 0, 0xc2, 0x91, 0xc4, 1, b'r', 0x91, 0x92, 0xc4, 1, b'e',
                ],
                &array32(huge),
            ]),
            crdt_ok,
        ),
        (
            "or-set of 2^32 elements, the first of 2^32 dots",
            cat(&[
                &[0xC7, 1, 3, 0x96, 0, 0xc2, 0x91, 0xc4, 1, b'r'],
                &array32(huge),
                &[0x92, 0xc4, 1, b'e'],
                &array32(huge),
            ]),
            crdt_ok,
        ),
        (
            "or-set context of 2^32 dots",
            cat(&[&[0xC7, 1, 3, 0x96, 0, 0xc2, 0x90, 0x90], &array32(huge)]),
            crdt_ok,
        ),
        (
            "register of a 4 GiB value",
            cat(&[&[0xC7, 1, 5, 0x94, 1, 0, 0xc4, 1, b'r'], &bin32(huge)]),
            crdt_ok,
        ),
        (
            "record of a 4 GiB creator",
            cat(&[&[0xC8, 2, 0x99, 1], &bin32(huge)]),
            record_ok,
        ),
        (
            "record of a 4 GiB state",
            cat(&[&[0xC8, 2, 0x99, 1, 0xc4, 0, 0, 0], &bin32(huge)]),
            record_ok,
        ),
        ("2^32 tombstones", array32(huge), tombs_ok),
        (
            "tombstone of a 4 GiB replica",
            cat(&[&[0x94, 0, 0], &bin32(huge)]),
            tombs_ok,
        ),
        (
            "term list of 2^63 items",
            cat(&[&[5], &[0xff; 8], &[0x7f]]),
            term_ok,
        ),
        (
            "term binary of 2^35 bytes",
            vec![4, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            term_ok,
        ),
    ]
}

#[test]
fn declared_lengths_are_bounded_before_allocating() {
    for (what, bytes, decodes) in liars() {
        let mut accepted = false;
        let peak = peak_allocation(|| accepted = decodes(&bytes));
        assert!(!accepted, "{what}: accepted");
        // serde preallocates at most 1 MiB for a sequence whose length is
        // not yet backed by input (`size_hint::cautious`), and the shapes
        // nest few sequences: the bound is a few MiB whatever the input
        // declares, and the rest holds a few KiB.
        assert!(peak <= 4 << 20, "{what}: {peak} bytes allocated at once");
    }
}

// ---- the seed corpus ---------------------------------------------------------

fn r(s: &str) -> ReplicaId {
    ReplicaId::from(s)
}

/// States and deltas of every kind.
fn sample_crdts() -> Vec<Crdt> {
    let mut out = Vec::new();
    let (a, b) = (r("a"), r("b"));
    for kind in Kind::ALL {
        let (mut x, mut y) = (Crdt::new(kind), Crdt::new(kind));
        out.push(x.clone());
        let ops: Vec<Op> = match kind {
            Kind::GCounter => vec![Op::Increment(3), Op::Increment(u64::MAX / 4)],
            Kind::PNCounter => vec![Op::Increment(5), Op::Decrement(7)],
            Kind::ORSet | Kind::AWSet => {
                vec![
                    Op::Add(b"e1"),
                    Op::Add(b"e2"),
                    Op::Remove(b"e1"),
                    Op::Add(b""),
                ]
            }
            Kind::LwwRegister => vec![
                Op::Set(b"v1", Timestamp::new(10, 0)),
                Op::Set(b"", Timestamp::new(9, 3)),
            ],
        };
        let mut deltas = Vec::new();
        for op in ops {
            deltas.push(x.mutate(&a, op).unwrap());
            out.push(y.mutate(&b, op).unwrap());
        }
        out.extend(deltas.iter().cloned());
        out.push(x.clone());
        let mut joined = x.clone();
        joined.join(&y).unwrap();
        out.push(joined);
        // A delta group with a gap (all but the first delta): an OR-Set's
        // context then has a dot cloud.
        let mut gap = Crdt::empty_delta(kind);
        for d in &deltas[1..] {
            gap.join(d).unwrap();
        }
        out.push(gap);
    }
    out
}

fn meta(kind: Kind, deleted: bool) -> Meta {
    Meta {
        kind,
        created_by: Arc::from(&b"node@host"[..]),
        created_at: 1_700_000_000_000,
        updated_at: 1_700_000_000_500,
        gen: Gen {
            epoch: 1,
            stamp: 42 << 16,
            replica: Arc::from(&b"0123456789abcdef\0\0\0\0\0\0\0\x01"[..]),
        },
        deleted,
    }
}

fn sample_records() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = sample_crdts()
        .into_iter()
        .map(|c| {
            Record {
                meta: meta(c.kind(), false),
                crdt: c,
            }
            .encode()
        })
        .collect();
    out.push(record::encode_parts(
        &meta(Kind::GCounter, true),
        &Crdt::new(Kind::GCounter).encode(),
    ));
    // Version 1 (no generation).
    let mut v1 = vec![record::RECORD_MAGIC, 1];
    v1.extend(rmp_serde_like_v1(
        Kind::PNCounter.code(),
        b"n",
        1,
        2,
        &Crdt::new(Kind::PNCounter).encode(),
    ));
    out.push(v1);
    out
}

/// MessagePack `[kind, bin created_by, created_at, updated_at, bin state]`
/// (a version 1 record body), written by hand: the core has no encoder
/// for it any more.
fn rmp_serde_like_v1(kind: u8, by: &[u8], at: u8, upd: u8, state: &[u8]) -> Vec<u8> {
    let mut v = vec![0x95, kind, 0xc4, by.len() as u8];
    v.extend_from_slice(by);
    v.extend_from_slice(&[at, upd]);
    v.extend_from_slice(&[0xc5]);
    v.extend_from_slice(&(state.len() as u16).to_be_bytes());
    v.extend_from_slice(state);
    v
}

fn sample_tombs() -> Vec<Vec<u8>> {
    let t = |epoch, stamp, rep: &[u8], at| {
        Tomb::new(
            Gen {
                epoch,
                stamp,
                replica: Arc::from(rep),
            },
            at,
        )
    };
    let one = Tombs::one(t(0, 5, b"r1", 9));
    let many = (0..10).fold(one.clone(), |acc, i| {
        Tombs::join(
            Some(acc),
            Some(Tombs::one(t(i, 100 - i as u64, b"r2", 200 - i as u64))),
        )
        .unwrap()
    });
    vec![
        record::encode_tombs(&one),
        record::encode_tombs(&many),
        vec![0x94, 1, 20, 0xc4, 1, b'r', 25],
        vec![0x93, 1, 20, 0xc4, 1, b'r'],
    ]
}

/// Messages of every tag from `a`, as `(message, versions it is sent in)`.
fn message_samples(a: ReplicaId) -> Vec<(Message, &'static [u8])> {
    let recs = sample_records();
    let entries = |n: usize, skip: usize| -> Vec<(Vec<u8>, Vec<u8>)> {
        recs.iter()
            .skip(skip)
            .take(n)
            .enumerate()
            .map(|(i, rec)| (format!("id{i}").into_bytes(), rec.clone()))
            .collect()
    };
    let mut buckets = vec![0u64; BUCKETS];
    buckets[3] = 99;
    let msgs = vec![
        Message::Deltas {
            from: a.clone(),
            base: 0,
            seq_start: 1,
            seq_end: 3,
            entries: entries(3, 0),
        },
        Message::Deltas {
            from: a.clone(),
            base: 4,
            seq_start: 7,
            seq_end: 7,
            entries: entries(1, 9),
        },
        Message::Ack {
            from: a.clone(),
            upto: 300,
        },
        Message::DigestRequest {
            from: a.clone(),
            buckets,
        },
        Message::StateRequest {
            from: a.clone(),
            buckets: vec![0, 17, 255],
        },
        Message::States {
            from: a.clone(),
            entries: entries(4, 12),
            last: true,
        },
        Message::States {
            from: a.clone(),
            entries: Vec::new(),
            last: false,
        },
        Message::Hello {
            from: a.clone(),
            versions: vec![1, 2, 3, 4],
            clock: Timestamp::new(7, 1),
            root: 9,
            log_pos: 3,
            attrs: b"node".to_vec(),
        },
        Message::Frontier {
            from: a.clone(),
            at: 8,
            frontiers: vec![(b"dir-0123456789ab".to_vec(), 9), (b"d2".to_vec(), 1)],
        },
        Message::AnswerEnd {
            from: a,
            first: 3,
            last: 5,
            log_pos: 10,
        },
    ];
    msgs.into_iter()
        .map(|m| {
            let versions: &[u8] = match m {
                Message::Frontier { .. } | Message::AnswerEnd { .. } => &[4],
                Message::Hello { .. } => &[1],
                _ => &[1, 2, 3, 4],
            };
            (m, versions)
        })
        .collect()
}

const SEED_CLOCK: Timestamp = Timestamp {
    wall_ms: 1_700_000_000_000,
    counter: 2,
};

fn sample_messages() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (m, versions) in message_samples(r("a")) {
        for &v in versions {
            out.push(m.encode_seq(v, SEED_CLOCK, 5));
        }
    }
    out
}

/// Chunks as `harness::engine` reads them: each behind its 2-byte length.
fn chunks(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| harness::join2(p, &[])).collect()
}

/// Conversations with a store's engine: a peer's hello, then each of its
/// messages in version 4, or an import entry.
fn sample_conversations() -> Vec<Vec<u8>> {
    // A sync replica id: directory (16), incarnation (8), session (8).
    let peer = ReplicaId::new(b"0123456789abcdef\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x07");
    let msgs = message_samples(peer);
    let hello = msgs
        .iter()
        .find(|(m, _)| matches!(m, Message::Hello { .. }))
        .map(|(m, _)| m.encode())
        .unwrap();
    let mut out: Vec<Vec<u8>> = msgs
        .iter()
        .filter(|(m, _)| !matches!(m, Message::Hello { .. }))
        .map(|(m, _)| chunks(&[&hello, &m.encode_seq(4, SEED_CLOCK, 1)]))
        .collect();
    let all: Vec<Vec<u8>> = msgs
        .iter()
        .map(|(m, _)| m.encode_seq(4, SEED_CLOCK, 1))
        .collect();
    let all: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    out.push(chunks(&all));
    for entry in sample_imports().iter().take(5) {
        out.push(chunks(&[&hello, entry]));
    }
    out
}

fn sample_terms() -> Vec<Vec<u8>> {
    let values = [
        Value::Atom("ok".into()),
        Value::Int(-1),
        Value::Int(i64::MAX),
        Value::Float(1.5),
        Value::Binary(b"hi".to_vec()),
        Value::Tuple(vec![
            Value::Atom("node".into()),
            Value::List(vec![Value::Int(1), Value::Binary(vec![])]),
        ]),
        Value::Map(vec![
            (Value::Atom("b".into()), Value::Int(2)),
            (Value::Atom("a".into()), Value::Map(vec![])),
        ]),
        Value::Etf(vec![131, 100, 0, 2, b'o', b'k']),
    ];
    values
        .iter()
        .map(|v| {
            let mut out = Vec::new();
            term::encode_value(v, &mut out);
            out
        })
        .collect()
}

fn sample_imports() -> Vec<Vec<u8>> {
    // See `harness::legacy_entry`: id, kind selector, then the state.
    let mut out = vec![
        vec![
            2, b'i', b'd', 0, 2, 2, b'n', b'1', 5, 0, 0, 0, 0, 0, 0, 0, 2, b'n', b'2', 9, 0, 0, 0,
            0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0, 0, 0,
        ],
        vec![
            1, b'p', 1, 1, 1, b'n', 3, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'n', 1, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        vec![1, b's', 2, 3, 1, b'x', 1, b'y', 0],
        vec![1, b'r', 3, 1, 3, b'v', b'a', b'l'],
        vec![1, b'r', 3, 0],
    ];
    let pairs: Vec<Vec<u8>> = out
        .iter()
        .flat_map(|a| out.iter().map(move |b| harness::join2(a, b)))
        .collect();
    out.extend(pairs);
    out
}

#[test]
#[ignore = "writes fuzz/seeds; run after a format change"]
fn write_fuzz_seeds() {
    let crdts: Vec<Vec<u8>> = sample_crdts().iter().map(Crdt::encode).collect();
    let recs = sample_records();
    let tombs = sample_tombs();
    let mut crdt_seeds = crdts.clone();
    for a in &crdts {
        for b in &crdts {
            if Crdt::decode(a).unwrap().kind() == Crdt::decode(b).unwrap().kind() {
                crdt_seeds.push(harness::join2(a, b));
            }
        }
    }
    let mut record_seeds: Vec<Vec<u8>> = recs.iter().chain(&tombs).cloned().collect();
    for pair in recs.windows(2).chain(tombs.windows(2)) {
        record_seeds.push(harness::join2(&pair[0], &pair[1]));
    }
    let digest_seeds: Vec<Vec<u8>> = recs
        .iter()
        .enumerate()
        .map(|(i, rec)| harness::join2(format!("id{i}").as_bytes(), rec))
        .collect();
    let sets = [
        ("wire", sample_messages()),
        ("record", record_seeds),
        ("crdt", crdt_seeds),
        ("digest", digest_seeds),
        ("import", sample_imports()),
        ("term", sample_terms()),
        ("engine", sample_conversations()),
    ];
    for (name, seeds) in sets {
        let dir = fuzz_dir().join("seeds").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("{name}-{i:03}")), s).unwrap();
        }
    }
}

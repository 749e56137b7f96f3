//! Per-operation cost of every CRDT at 1, 1k, 100k and 1M elements (or
//! replicas), delta merge into a 1M-element OR-Set, delta codec, and the
//! memory an OR-Set spends per element.
//!
//! Run (see bench/RESULTS-core.md for recorded figures):
//!
//! ```text
//! cargo bench -p vsmcp_crdt_core --bench crdt -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Big states are built once per size, outside the timed loop. Mutations
//! that would change the size of a set (add of a new element, remove of a
//! member, merge of a delta) run on copies of the built set, at most N/10
//! operations per copy, so the set stays within 10% of N; copying and
//! dropping the copies is not timed, and each copy is given spare capacity
//! first (see `roomy_copy`). A counting global allocator tracks live
//! bytes for the memory figure; it counts only while the memory figure is
//! taken, so timings pay one relaxed load per allocation, not an atomic
//! read-modify-write.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use vsmcp_crdt_core::gcounter::GCounter;
use vsmcp_crdt_core::hlc::{Clock, Timestamp};
use vsmcp_crdt_core::lww::LwwRegister;
use vsmcp_crdt_core::orset::{ORSet, Policy};
use vsmcp_crdt_core::pncounter::PNCounter;
use vsmcp_crdt_core::{Crdt, Kind, Op, ReplicaId};

// ---- live-byte counting allocator --------------------------------------------

/// `System`, counting the bytes callers requested that are still allocated
/// while `COUNTING` is on. Arithmetic wraps: only differences taken within
/// one counting window are meaningful.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

fn count(add: usize, sub: usize) {
    if COUNTING.load(Relaxed) {
        LIVE_BYTES.fetch_add(add.wrapping_sub(sub), Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 0);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        count(0, layout.size());
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            count(new_size, layout.size());
        }
        q
    }
}

/// Live bytes allocated by `f`'s result (counted while `f` runs), and the result.
fn live_bytes_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    COUNTING.store(true, Relaxed);
    let before = LIVE_BYTES.load(Relaxed);
    let value = f();
    let after = LIVE_BYTES.load(Relaxed);
    COUNTING.store(false, Relaxed);
    (after.wrapping_sub(before), value)
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---- fixtures -------------------------------------------------------------------

const SIZES: [usize; 4] = [1, 1_000, 100_000, 1_000_000];

/// 8-byte element keys.
fn key(i: usize) -> [u8; 8] {
    (i as u64).to_be_bytes()
}

fn local() -> ReplicaId {
    ReplicaId::from("n1")
}

fn remote() -> ReplicaId {
    ReplicaId::from("n2")
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::RemoveWins => "or_set_remove_wins",
        Policy::AddWins => "or_set_add_wins",
    }
}

/// A set of `n` elements `key(0..n)`, all added by `local()`.
fn build_set(policy: Policy, n: usize) -> ORSet {
    let mut s = ORSet::new(policy);
    for i in 0..n {
        s.add(&local(), &key(i)).unwrap();
    }
    s
}

/// A counter with one entry for each of `n` replicas, `local()` among them.
fn build_counter(n: usize) -> (GCounter, Vec<ReplicaId>) {
    let mut ids: Vec<ReplicaId> = (1..n).map(|i| ReplicaId::new(&key(i))).collect();
    ids.push(local());
    let mut c = GCounter::new();
    for id in &ids {
        c.increment(id, 1).unwrap();
    }
    (c, ids)
}

/// Operations per copy of a size-`n` state: the state stays within 10% of `n`.
fn per_copy(n: usize) -> usize {
    (n / 10).max(1)
}

/// An element no benchmark touches, used to give copies spare capacity.
const SPARE: [u8; 9] = [0xff; 9];

/// A copy of `base` with room to grow, as a long-lived set has: `clone`
/// allocates exactly `len` entries, so without this the first insertion
/// into every copy would pay for reallocating all N entries.
fn roomy_copy(base: &ORSet) -> ORSet {
    let mut s = base.clone();
    s.add(&local(), &SPARE).unwrap();
    s.remove(&local(), &SPARE).unwrap();
    s
}

/// Time `iters` runs of `op(copy, k)`, where each copy of `base` serves
/// `per_copy` operations (`k` in `0..per_copy`). Copies are made and
/// dropped outside the timed region; each timed block covers at least
/// ~1000 operations so clock reads do not dominate small states.
fn on_copies<R>(
    b: &mut criterion::Bencher,
    base: &ORSet,
    per_copy: usize,
    mut op: impl FnMut(&mut ORSet, usize) -> R,
) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            let copies = (1024 / per_copy).max(1).min(left.div_ceil(per_copy));
            let mut states: Vec<ORSet> = (0..copies).map(|_| roomy_copy(base)).collect();
            let mut planned = Vec::with_capacity(copies);
            for _ in 0..copies {
                let n = left.min(per_copy);
                planned.push(n);
                left -= n;
            }
            let t = Instant::now();
            for (s, &n) in states.iter_mut().zip(&planned) {
                for k in 0..n {
                    black_box(op(s, k));
                }
            }
            total += t.elapsed();
            drop(states);
        }
        total
    });
}

fn configure_size(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
) {
    g.sample_size(if n >= 100_000 { 10 } else { 50 });
}

// ---- counters ------------------------------------------------------------------

fn counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("g_counter");
    for n in SIZES {
        configure_size(&mut g, n);
        let (mut counter, _ids) = build_counter(n);
        let me = local();
        g.bench_function(BenchmarkId::new("increment", n), |b| {
            b.iter(|| counter.increment(black_box(&me), 1).unwrap())
        });
        // The store's write path: fold the increment into a pending delta
        // group instead of building a one-entry delta counter.
        let mut state = Crdt::GCounter(counter.clone());
        let mut group = Crdt::empty_delta(Kind::GCounter);
        g.bench_function(BenchmarkId::new("mutate_join", n), |b| {
            b.iter(|| {
                state
                    .mutate_join(black_box(&me), Op::Increment(1), &mut group)
                    .unwrap()
            })
        });
        drop(state);
        g.bench_function(BenchmarkId::new("value", n), |b| {
            b.iter(|| black_box(&counter).value())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pn_counter");
    for n in SIZES {
        configure_size(&mut g, n);
        let (p, _) = build_counter(n);
        let (m, _) = build_counter(n);
        let mut counter = PNCounter::from_parts(p, m);
        let me = local();
        g.bench_function(BenchmarkId::new("increment", n), |b| {
            b.iter(|| counter.increment(black_box(&me), 1).unwrap())
        });
        g.bench_function(BenchmarkId::new("decrement", n), |b| {
            b.iter(|| counter.decrement(black_box(&me), 1).unwrap())
        });
    }
    g.finish();
}

// ---- OR-Sets -------------------------------------------------------------------

fn or_sets(c: &mut Criterion) {
    for policy in [Policy::RemoveWins, Policy::AddWins] {
        let mut g = c.benchmark_group(policy_name(policy));
        for n in SIZES {
            configure_size(&mut g, n);
            let base = build_set(policy, n);
            let me = local();
            g.bench_function(BenchmarkId::new("add_new", n), |b| {
                on_copies(b, &base, per_copy(n), |s, k| {
                    s.add(&me, &key(n + k)).unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("remove_member", n), |b| {
                on_copies(b, &base, per_copy(n), |s, k| {
                    s.remove(&me, &key(k)).unwrap()
                })
            });
            let mut i = 0;
            g.bench_function(BenchmarkId::new("contains_member", n), |b| {
                b.iter(|| {
                    i = if i + 1 >= n { 0 } else { i + 1 };
                    base.contains(black_box(&key(i)))
                })
            });
        }
        g.finish();
    }
}

/// Joining a one-element delta from another replica into a 1M-element set.
fn merges(c: &mut Criterion) {
    let n = 1_000_000;
    for policy in [Policy::RemoveWins, Policy::AddWins] {
        let mut g = c.benchmark_group(format!("{}_merge", policy_name(policy)));
        configure_size(&mut g, n);
        let base = build_set(policy, n);
        let per = per_copy(n);

        // n2 adds elements the set does not hold.
        let mut other = ORSet::new(policy);
        let adds: Vec<ORSet> = (0..per)
            .map(|k| other.add(&remote(), &key(n + k)).unwrap())
            .collect();
        g.bench_function(BenchmarkId::new("add_delta", n), |b| {
            on_copies(b, &base, per, |s, k| s.join(&adds[k]).unwrap())
        });
        drop(adds);

        // n2 has seen everything and removes members.
        let mut other = base.clone();
        let removes: Vec<ORSet> = (0..per)
            .map(|k| other.remove(&remote(), &key(k)).unwrap())
            .collect();
        drop(other);
        g.bench_function(BenchmarkId::new("remove_delta", n), |b| {
            on_copies(b, &base, per, |s, k| s.join(&removes[k]).unwrap())
        });
        g.finish();
    }
}

// ---- register, clock, codec -----------------------------------------------------

fn register_and_clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("lww_register");
    let mut r = LwwRegister::new();
    let me = local();
    let value = [7u8; 16];
    let mut wall = 1_700_000_000_000u64;
    g.bench_function("set", |b| {
        b.iter(|| {
            wall += 1;
            r.set(&me, black_box(&value), Timestamp::new(wall, 0))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hlc");
    let mut clock = Clock::new(500);
    let now = 1_700_000_000_000u64;
    g.bench_function("tick", |b| b.iter(|| clock.tick(black_box(now))));
    let mut clock = Clock::new(500);
    let remote_ts = Timestamp::new(now, 3);
    g.bench_function("receive", |b| {
        b.iter(|| clock.receive(black_box(remote_ts), black_box(now)).unwrap())
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let mut set = ORSet::new(Policy::RemoveWins);
    let delta = Crdt::ORSet(Box::new(set.add(&local(), &key(42)).unwrap()));
    let mut counter = GCounter::new();
    let gdelta = Crdt::GCounter(counter.increment(&local(), 3).unwrap());
    let mut reg = LwwRegister::new();
    let ldelta =
        Crdt::LwwRegister(reg.set(&local(), &[7u8; 16], Timestamp::new(1_700_000_000_000, 0)));
    for (name, d) in [
        ("or_set_delta", &delta),
        ("g_counter_delta", &gdelta),
        ("lww_delta", &ldelta),
    ] {
        let bytes = d.encode();
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(d).encode())
        });
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| Crdt::decode(black_box(&bytes)).unwrap())
        });
    }
    g.finish();
}

/// Sealing and opening a sync message with a MAC (`sync::auth`): a small
/// message (an increment's delta) and the largest multi-entry one.
fn auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth");
    let ring =
        vsmcp_crdt_core::sync::Keyring::new(&[b"a cluster secret of 32 bytes!!!!"], b"t").unwrap();
    for size in [64usize, 1 << 20] {
        let msg = vec![0xC9u8; size];
        let sealed = ring.seal(&msg, 1, Some(b"a recipient's sync id"));
        g.throughput(criterion::Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("seal", size), |b| {
            b.iter(|| ring.seal(black_box(&msg), 1, Some(b"a recipient's sync id")))
        });
        g.bench_function(BenchmarkId::new("open", size), |b| {
            b.iter(|| {
                ring.open(black_box(&sealed), b"a recipient's sync id")
                    .unwrap()
                    .msg
                    .len()
            })
        });
    }
    g.finish();
}

// ---- memory --------------------------------------------------------------------

/// Live bytes an OR-Set of 1M 8-byte elements holds beyond the elements'
/// own bytes, per element (and the same for a G-Counter's replica entries).
/// Printed, not timed.
fn memory(_c: &mut Criterion) {
    let n = 1_000_000;
    println!("memory: {n} elements / replicas of 8 bytes, live requested bytes");
    for policy in [Policy::RemoveWins, Policy::AddWins] {
        let (total, s) = live_bytes_of(|| build_set(policy, n));
        println!(
            "memory/{}/{n}: {total} bytes, {:.1} bytes/element beyond the element's 8 bytes \
             (ORSet::heap_bytes estimate {:.1})",
            policy_name(policy),
            (total - 8 * n) as f64 / n as f64,
            (s.heap_bytes() - 8 * n) as f64 / n as f64,
        );
    }
    let (total, counter) = live_bytes_of(|| build_counter(n).0);
    println!(
        "memory/g_counter/{n}: {total} bytes, {:.1} bytes/replica beyond the 8-byte id ({} entries)",
        (total - 8 * n) as f64 / n as f64,
        counter.len(),
    );
}

criterion_group!(
    benches,
    memory,
    counters,
    or_sets,
    merges,
    register_and_clock,
    codec,
    auth
);
criterion_main!(benches);

//! Operation counters and observed clock offsets of a store, which
//! `Store::info` reports. Counters are striped per thread (one relaxed
//! atomic add per call on a cache line no other scheduler writes), so
//! counting never contends.

use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Rates are computed over windows at least this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Operations since the store opened, and their recent rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ops {
    /// Value reads (`Store::read`: get, member?).
    pub reads: u64,
    /// Local writes: create, update, delete, merge.
    pub writes: u64,
    /// Entries merged from peers (`Store::merge_remote`).
    pub remote_merges: u64,
    /// Per second, over the window below.
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub remote_merges_per_sec: f64,
    /// The window the rates cover: the latest one of at least a second
    /// between two `info` calls (the first starts when the store opened).
    pub window_ms: u64,
}

/// Operation counters of a store and the clock offsets it observed.
pub(super) struct Telemetry {
    pub(super) opened: Instant,
    reads: Striped,
    writes: Striped,
    remote_merges: Striped,
    pub(super) max_remote_ahead_ms: AtomicI64,
    window: Mutex<RateWindow>,
}

struct RateWindow {
    start: Instant,
    totals: [u64; 3],
    /// The rates of the last complete window and its length.
    last: Option<([f64; 3], Duration)>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let now = Instant::now();
        Telemetry {
            opened: now,
            reads: Striped::default(),
            writes: Striped::default(),
            remote_merges: Striped::default(),
            max_remote_ahead_ms: AtomicI64::new(i64::MIN),
            window: Mutex::new(RateWindow {
                start: now,
                totals: [0; 3],
                last: None,
            }),
        }
    }
}

/// What a counted call did.
#[derive(Clone, Copy)]
pub(super) enum Counted {
    Read,
    Write,
    RemoteMerge,
}

impl Telemetry {
    /// Count a call that completed: `Error::WouldBlock` is not an
    /// operation (its dirty retry is).
    pub(super) fn note<T>(&self, what: Counted, r: Result<T>) -> Result<T> {
        if !matches!(r, Err(Error::WouldBlock)) {
            match what {
                Counted::Read => &self.reads,
                Counted::Write => &self.writes,
                Counted::RemoteMerge => &self.remote_merges,
            }
            .add();
        }
        r
    }

    /// A peer's clock reading `remote_wall_ms` arrived at local time
    /// `now_ms`.
    pub(super) fn observe_remote_clock(&self, remote_wall_ms: u64, now_ms: u64) {
        let ahead = (remote_wall_ms as i128 - now_ms as i128)
            .clamp(i64::MIN as i128 + 1, i64::MAX as i128) as i64;
        self.max_remote_ahead_ms.fetch_max(ahead, Ordering::Relaxed);
    }

    pub(super) fn ops(&self) -> Ops {
        let totals = [
            self.reads.sum(),
            self.writes.sum(),
            self.remote_merges.sum(),
        ];
        let now = Instant::now();
        let mut w = self.window.lock();
        let elapsed = now.saturating_duration_since(w.start);
        let per_sec = |since: &[u64; 3], over: Duration| {
            let secs = over.as_secs_f64();
            let mut r = [0.0; 3];
            if secs > 0.0 {
                for i in 0..3 {
                    r[i] = totals[i].saturating_sub(since[i]) as f64 / secs;
                }
            }
            r
        };
        let (rates, window) = if elapsed >= RATE_WINDOW {
            let rates = per_sec(&w.totals, elapsed);
            w.start = now;
            w.totals = totals;
            w.last = Some((rates, elapsed));
            (rates, elapsed)
        } else {
            match w.last {
                Some(last) => last,
                None => (per_sec(&w.totals, elapsed), elapsed),
            }
        };
        Ops {
            reads: totals[0],
            writes: totals[1],
            remote_merges: totals[2],
            reads_per_sec: rates[0],
            writes_per_sec: rates[1],
            remote_merges_per_sec: rates[2],
            window_ms: window.as_millis() as u64,
        }
    }
}

/// A counter split over cache lines, one per thread (modulo `STRIPES`).
#[derive(Default)]
struct Striped([Padded; STRIPES]);

const STRIPES: usize = 16;

#[derive(Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

impl Striped {
    fn add(&self) {
        self.0[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's stripe: threads take them in turn.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

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
    /// The window the rates cover: the last one closed by the store's
    /// flush thread, about a second long (the first starts when the store
    /// opened; see `Telemetry::sample`).
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

    fn totals(&self) -> [u64; 3] {
        [
            self.reads.sum(),
            self.writes.sum(),
            self.remote_merges.sum(),
        ]
    }

    /// Close the rate window if it is at least [`RATE_WINDOW`] old. The
    /// store's flush thread calls this every flush interval, so windows
    /// follow the clock, not the callers of `info`: two pollers read the
    /// same rates instead of cutting each other's windows short.
    pub(super) fn sample(&self) {
        self.sample_at(Instant::now(), self.totals());
    }

    fn sample_at(&self, now: Instant, totals: [u64; 3]) {
        self.window.lock().close_after(RATE_WINDOW, now, totals);
    }

    pub(super) fn ops(&self) -> Ops {
        self.ops_at(Instant::now(), self.totals())
    }

    /// The counters, and the rates of the last closed window. A window
    /// left open for two of its lengths (a store whose flush thread rarely
    /// runs: a long `flush_interval_ms`) is closed here instead.
    fn ops_at(&self, now: Instant, totals: [u64; 3]) -> Ops {
        let mut w = self.window.lock();
        w.close_after(2 * RATE_WINDOW, now, totals);
        let (rates, window) = match w.last {
            Some(last) => last,
            None => {
                let elapsed = now.saturating_duration_since(w.start);
                (per_sec(&totals, &w.totals, elapsed), elapsed)
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

impl RateWindow {
    /// Close the window at `now` if it is at least `age` old.
    fn close_after(&mut self, age: Duration, now: Instant, totals: [u64; 3]) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= age {
            let rates = per_sec(&totals, &self.totals, elapsed);
            self.start = now;
            self.totals = totals;
            self.last = Some((rates, elapsed));
        }
    }
}

/// Per second from `since` to `totals` over `over`.
fn per_sec(totals: &[u64; 3], since: &[u64; 3], over: Duration) -> [f64; 3] {
    let secs = over.as_secs_f64();
    let mut r = [0.0; 3];
    if secs > 0.0 {
        for i in 0..3 {
            r[i] = totals[i].saturating_sub(since[i]) as f64 / secs;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_sampler_not_the_readers() {
        let t = Telemetry::default();
        let t0 = t.opened;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // The sampler closes a window at 1 s: 100 writes in it.
        t.sample_at(at(1_000), [0, 100, 0]);
        // Readers at 1.2 s and 1.7 s, with more writes meanwhile, both see
        // that window, and reading does not close the next one.
        let a = t.ops_at(at(1_200), [0, 150, 0]);
        let b = t.ops_at(at(1_700), [0, 180, 0]);
        assert_eq!((a.writes_per_sec, a.window_ms), (100.0, 1_000));
        assert_eq!((b.writes_per_sec, b.window_ms), (100.0, 1_000));
        assert_eq!((a.writes, b.writes), (150, 180));
        // The next sample closes 1 s .. 2 s: 100 more writes.
        t.sample_at(at(2_000), [0, 200, 0]);
        assert_eq!(t.ops_at(at(2_100), [0, 200, 0]).writes_per_sec, 100.0);
        // Without a sampler for two windows, a reader closes the window.
        let c = t.ops_at(at(4_500), [0, 450, 0]);
        assert_eq!((c.writes_per_sec, c.window_ms), (100.0, 2_500));
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

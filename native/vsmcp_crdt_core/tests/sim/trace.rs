//! The trace of a run: every event is hashed (two runs of one seed must
//! give one hash: that is the replay test) and the last [`KEEP`] are kept
//! for the failure report. With `verbose` every event is printed as it
//! happens.

use std::collections::VecDeque;

/// Events kept for a failure report.
pub const KEEP: usize = 60;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a of `bytes`, continuing from `h`.
pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a of `bytes` from the standard offset.
pub fn fnv64(bytes: &[u8]) -> u64 {
    fnv(FNV_OFFSET, bytes)
}

pub struct Trace {
    hash: u64,
    events: u64,
    last: VecDeque<String>,
    verbose: bool,
}

impl Trace {
    pub fn new(verbose: bool) -> Trace {
        Trace {
            hash: FNV_OFFSET,
            events: 0,
            last: VecDeque::with_capacity(KEEP + 1),
            verbose,
        }
    }

    /// Record one event at simulated time `t` (ms).
    pub fn push(&mut self, t: u64, what: std::fmt::Arguments<'_>) {
        let line = format!("{t:>7} {what}");
        self.hash = fnv(self.hash, line.as_bytes());
        self.hash = fnv(self.hash, b"\n");
        self.events += 1;
        if self.verbose {
            println!("{line}");
        }
        if self.last.len() == KEEP {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The last events, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.last.iter().cloned().collect()
    }
}

/// Record an event in `$w.trace` at `$w.now`.
macro_rules! ev {
    ($w:expr, $($arg:tt)*) => {
        $w.trace.push($w.now, format_args!($($arg)*))
    };
}
pub(crate) use ev;

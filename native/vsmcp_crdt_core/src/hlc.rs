//! Hybrid Logical Clock (Kulkarni, Demirbas et al., "Logical Physical Clocks
//! and Consistent Snapshots in Globally Distributed Databases", 2014).
//!
//! A [`Timestamp`] is `(wall_ms, counter)`; the node that issued it is kept
//! beside it by the users that need a total order (the LWW-Register orders by
//! `(timestamp, replica, value)`). Invariants, checked by property tests:
//! `tick` is strictly greater than the previous timestamp; `receive` is
//! strictly greater than both the local and the remote timestamp; a remote
//! timestamp more than `max_offset_ms` ahead of local physical time is
//! rejected instead of adopted, so one bad clock cannot drag a cluster into
//! the future. The logical counter never wraps: when it is exhausted the
//! wall component advances by one millisecond.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Default bound on how far a remote clock may run ahead of ours.
pub const DEFAULT_MAX_OFFSET_MS: u64 = 500;

/// `(wall_ms, counter)`, ordered lexicographically.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub wall_ms: u64,
    pub counter: u32,
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp {
        wall_ms: 0,
        counter: 0,
    };

    pub fn new(wall_ms: u64, counter: u32) -> Self {
        Timestamp { wall_ms, counter }
    }

    /// A `u64` ordered as the timestamps are while `wall_ms < 2^44` (year
    /// 2527) and the counter below 2^20 (saturated above): the stamp of a
    /// create (see `record::Gen`).
    pub fn to_u64(self) -> u64 {
        (self.wall_ms.min((1 << 44) - 1) << 20) | u64::from(self.counter.min((1 << 20) - 1))
    }

    /// The wall time of a [`Timestamp::to_u64`] stamp.
    pub fn wall_of_u64(stamp: u64) -> u64 {
        stamp >> 20
    }

    /// The smallest timestamp strictly greater than `self` with the same wall
    /// time, or the next millisecond when the counter is exhausted. The
    /// largest timestamp has no successor and saturates (returns itself)
    /// rather than wrapping back to `(u64::MAX, 0)`.
    pub fn successor(self) -> Timestamp {
        match (self.counter.checked_add(1), self.wall_ms.checked_add(1)) {
            (Some(counter), _) => Timestamp {
                wall_ms: self.wall_ms,
                counter,
            },
            (None, Some(wall_ms)) => Timestamp {
                wall_ms,
                counter: 0,
            },
            (None, None) => self,
        }
    }

    /// Send/local event rule: `max(physical, last)`, counter bumped when the
    /// wall component did not advance.
    pub fn tick(self, now_ms: u64) -> Timestamp {
        if now_ms > self.wall_ms {
            Timestamp {
                wall_ms: now_ms,
                counter: 0,
            }
        } else {
            self.successor()
        }
    }

    /// [`Timestamp::tick`], or `Error::Overflow` when no later timestamp
    /// exists (only at `wall_ms == u64::MAX` with the counter saturated).
    pub fn tick_checked(self, now_ms: u64) -> Result<Timestamp> {
        let next = self.tick(now_ms);
        if next > self {
            Ok(next)
        } else {
            Err(Error::Overflow)
        }
    }

    /// [`Timestamp::receive`], or `Error::Overflow` when the result cannot
    /// exceed both inputs.
    pub fn receive_checked(
        self,
        remote: Timestamp,
        now_ms: u64,
        max_offset_ms: u64,
    ) -> Result<Timestamp> {
        let next = self.receive(remote, now_ms, max_offset_ms)?;
        if next > self && next > remote {
            Ok(next)
        } else {
            Err(Error::Overflow)
        }
    }

    /// Receive rule of the paper: the result is greater than both `self`
    /// and `remote`. Rejects a remote wall time more than `max_offset_ms`
    /// ahead of `now_ms`.
    pub fn receive(self, remote: Timestamp, now_ms: u64, max_offset_ms: u64) -> Result<Timestamp> {
        if remote.wall_ms > now_ms.saturating_add(max_offset_ms) {
            return Err(Error::ClockSkew {
                ahead_ms: remote.wall_ms - now_ms,
            });
        }
        let wall = now_ms.max(self.wall_ms).max(remote.wall_ms);
        let base = if wall == self.wall_ms && wall == remote.wall_ms {
            Some(self.counter.max(remote.counter))
        } else if wall == self.wall_ms {
            Some(self.counter)
        } else if wall == remote.wall_ms {
            Some(remote.counter)
        } else {
            None
        };
        Ok(match base {
            None => Timestamp {
                wall_ms: wall,
                counter: 0,
            },
            Some(counter) => Timestamp {
                wall_ms: wall,
                counter,
            }
            .successor(),
        })
    }
}

/// A stateful clock: the last timestamp issued plus the skew bound. The
/// store keeps one per replica and persists its high-water mark so time
/// never goes backwards across restarts.
#[derive(Debug, Clone)]
pub struct Clock {
    last: Timestamp,
    max_offset_ms: u64,
}

impl Clock {
    pub fn new(max_offset_ms: u64) -> Self {
        Clock {
            last: Timestamp::ZERO,
            max_offset_ms,
        }
    }

    /// Start from a persisted high-water mark.
    pub fn with_last(last: Timestamp, max_offset_ms: u64) -> Self {
        Clock {
            last,
            max_offset_ms,
        }
    }

    pub fn last(&self) -> Timestamp {
        self.last
    }

    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        self.last = self.last.tick(now_ms);
        self.last
    }

    pub fn receive(&mut self, remote: Timestamp, now_ms: u64) -> Result<Timestamp> {
        self.last = self.last.receive(remote, now_ms, self.max_offset_ms)?;
        Ok(self.last)
    }

    /// Advance past `ts` without the skew check (used for timestamps that
    /// are already part of local state, e.g. a register's current value).
    pub fn observe(&mut self, ts: Timestamp) {
        if ts > self.last {
            self.last = ts;
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a store reads physical time (the `now` of the HLC rules, the
/// times in metadata, the future horizon of incoming entries).
///
/// `System` in production. `Manual` is for deterministic tests (the
/// simulator in `tests/sim.rs`): the caller owns the value, in ms since the
/// epoch, and may skew, jump or stop it; nothing reads the system clock.
#[derive(Debug, Clone, Default)]
pub enum WallClock {
    #[default]
    System,
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl WallClock {
    /// Milliseconds since the Unix epoch by this source.
    pub fn now_ms(&self) -> u64 {
        match self {
            WallClock::System => system_skewed(now_ms()),
            WallClock::Manual(t) => t.load(std::sync::atomic::Ordering::Acquire),
        }
    }
}

/// Test builds only (`fault-injection`): milliseconds added to the system
/// clock as the stores of this OS process read it (`WallClock::System`), so
/// a multi-node test can run one node with a skewed clock (set through the
/// NIF `store_skew_clock/1`). 0 unless a test sets it.
#[cfg(feature = "fault-injection")]
static SYSTEM_SKEW_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Test builds only: skew `WallClock::System` by `ms` (negative: behind)
/// for every store of this OS process; 0 restores the system clock.
#[cfg(feature = "fault-injection")]
pub fn set_system_skew_ms(ms: i64) {
    SYSTEM_SKEW_MS.store(ms, std::sync::atomic::Ordering::Release);
}

#[cfg(feature = "fault-injection")]
fn system_skewed(now: u64) -> u64 {
    now.saturating_add_signed(SYSTEM_SKEW_MS.load(std::sync::atomic::Ordering::Acquire))
}

#[cfg(not(feature = "fault-injection"))]
fn system_skewed(now: u64) -> u64 {
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_takes_physical_time_when_ahead() {
        assert_eq!(Timestamp::new(5, 3).tick(10), Timestamp::new(10, 0));
        assert_eq!(Timestamp::new(10, 3).tick(10), Timestamp::new(10, 4));
        assert_eq!(Timestamp::new(12, 3).tick(10), Timestamp::new(12, 4));
    }

    #[test]
    fn counter_exhaustion_advances_wall_instead_of_wrapping() {
        let t = Timestamp::new(10, u32::MAX);
        let n = t.tick(10);
        assert!(n > t);
        assert_eq!(n, Timestamp::new(11, 0));
    }

    #[test]
    fn receive_follows_paper_rule() {
        let l = Timestamp::new(10, 2);
        assert_eq!(
            l.receive(Timestamp::new(10, 5), 9, 500).unwrap(),
            Timestamp::new(10, 6)
        );
        assert_eq!(
            l.receive(Timestamp::new(8, 5), 9, 500).unwrap(),
            Timestamp::new(10, 3)
        );
        assert_eq!(
            l.receive(Timestamp::new(11, 5), 9, 500).unwrap(),
            Timestamp::new(11, 6)
        );
        assert_eq!(
            l.receive(Timestamp::new(11, 5), 20, 500).unwrap(),
            Timestamp::new(20, 0)
        );
    }

    #[test]
    fn receive_rejects_far_future() {
        let l = Timestamp::new(10, 0);
        assert_eq!(
            l.receive(Timestamp::new(1_000, 0), 100, 500),
            Err(Error::ClockSkew { ahead_ms: 900 })
        );
        assert!(l.receive(Timestamp::new(600, 0), 100, 500).is_ok());
    }
}

//! Test builds only (`fault-injection` feature): what each store NIF call
//! on a normal scheduler cost, to tell a call that *works* or *blocks* too
//! long from one the OS merely descheduled.
//!
//! `:erlang.system_monitor(_, [{:long_schedule, ms}])` measures wall time,
//! and on a machine with more runnable threads than cores (RocksDB's flush
//! and compaction threads, dirty schedulers, the flush thread) the OS
//! preempts a scheduler thread in the middle of a short NIF for a whole
//! tick. So each plain NIF call records its wall time, its thread CPU time
//! and the thread's voluntary and involuntary context switches
//! (`getrusage(RUSAGE_THREAD)`): CPU time over the limit is work; a
//! voluntary switch during a long call is blocking (a lock, I/O); a long
//! call with neither was preempted.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Worst calls seen since the last [`take`], per kind.
#[derive(Default, Clone)]
pub struct Worst {
    pub calls: u64,
    /// (wall µs, cpu µs, nif) of the longest call by wall time.
    pub wall: (u64, u64, &'static str),
    /// (cpu µs, nif, arguments) of the call with the most CPU time.
    pub cpu: (u64, &'static str, String),
    /// The calls over 1 ms of CPU: (cpu µs, nif, arguments), at most 16.
    pub over: Vec<(u64, &'static str, String)>,
    /// (wall µs, nif) of the longest call that blocked (voluntary switch).
    pub blocked: (u64, &'static str),
    /// (wall µs, nif) of the longest call that was only preempted.
    pub preempted: (u64, &'static str),
}

static WORST: Mutex<Option<Worst>> = Mutex::new(None);

fn thread_usage() -> (Duration, i64, i64, u64) {
    // SAFETY: plain syscalls with valid out pointers.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        let cpu = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        let sys = ru.ru_stime.tv_sec as u64 * 1_000_000 + ru.ru_stime.tv_usec as u64;
        (cpu, ru.ru_nvcsw, ru.ru_minflt, sys)
    }
}

pub struct Probe {
    wall: Instant,
    cpu: Duration,
    voluntary: i64,
    faults: i64,
    sys: u64,
}

impl Probe {
    pub fn start() -> Probe {
        let (cpu, voluntary, faults, sys) = thread_usage();
        Probe {
            wall: Instant::now(),
            cpu,
            voluntary,
            faults,
            sys,
        }
    }

    /// Record the call; `args` describes it (only called for a new worst).
    pub fn finish(self, nif: &'static str, args: impl FnOnce() -> String) {
        let wall = self.wall.elapsed().as_micros() as u64;
        let (cpu, voluntary, faults, sys) = thread_usage();
        let cpu = cpu.saturating_sub(self.cpu).as_micros() as u64;
        let faults = faults - self.faults;
        let sys = sys.saturating_sub(self.sys);
        let blocked = voluntary > self.voluntary;
        let mut g = WORST.lock();
        let w = g.get_or_insert_with(Worst::default);
        w.calls += 1;
        if wall > w.wall.0 {
            w.wall = (wall, cpu, nif);
        }
        if cpu > w.cpu.0 || (cpu > 1000 && w.over.len() < 16) {
            let a = format!("{} [{faults} page faults, {sys} µs in the kernel]", args());
            if cpu > 1000 && w.over.len() < 16 {
                w.over.push((cpu, nif, a.clone()));
            }
            if cpu > w.cpu.0 {
                w.cpu = (cpu, nif, a);
            }
        }
        if blocked && wall > w.blocked.0 {
            w.blocked = (wall, nif);
        }
        if !blocked && wall.saturating_sub(cpu) > w.preempted.0 {
            w.preempted = (wall.saturating_sub(cpu), nif);
        }
    }
}

/// The worst calls since the previous call, and reset.
pub fn take() -> Worst {
    WORST.lock().take().unwrap_or_default()
}

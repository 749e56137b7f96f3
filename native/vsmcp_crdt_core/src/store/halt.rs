//! Process exit without a crash: the gate every RocksDB call passes, and
//! the exit hook that closes it. Imports nothing of the store, so every
//! store module may use it; the sweep that writes pending data at exit is
//! handed in by the process registry (`cold::registry`).
//!
//! The BEAM halts by calling `exit()` from one thread while its other
//! threads (schedulers, dirty schedulers, our flush threads) keep running.
//! `exit()` runs the C++ static destructors of the bundled RocksDB; any
//! RocksDB call still running, or starting, after that point touches
//! destroyed mutexes (`pthread lock: Invalid argument`, segfaults).
//!
//! So every RocksDB call passes a [`Gate`], and an `atexit` hook
//! ([`quiesce_for_exit`]) closes the gate, waits for the calls inside to
//! finish, writes every store's pending relaxed writes to the WAL (so a
//! `System.halt/0` loses nothing acknowledged), stops RocksDB's background
//! work and leaves the databases open: after the hook nothing of RocksDB
//! runs. `atexit` hooks run in reverse order of registration, and RocksDB
//! constructs some statics lazily (on first open), registering their
//! destructors then; so the hook is registered again after every fresh
//! open, which puts it ahead of them.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static HALTING: AtomicBool = AtomicBool::new(false);
static INSIDE: AtomicUsize = AtomicUsize::new(0);
static REGISTRATIONS: AtomicUsize = AtomicUsize::new(0);
/// What the exit hook runs once the gate is drained (the registry's sweep).
static SWEEP: OnceLock<fn()> = OnceLock::new();

/// Longest wait at exit for RocksDB calls already running.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Proof of being inside the gate; leaving drops it.
pub struct Gate(());

impl Gate {
    /// Enter, or `Error::Closed` once the process is exiting.
    pub fn enter() -> Result<Gate> {
        // SeqCst on both sides (here: add, then load; at exit: store, then
        // load): either this call sees HALTING, or the exit hook sees it
        // inside and waits.
        INSIDE.fetch_add(1, Ordering::SeqCst);
        if HALTING.load(Ordering::SeqCst) {
            INSIDE.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Closed);
        }
        Ok(Gate(()))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        INSIDE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// True once the exit hook has started: RocksDB must not be touched.
pub fn halting() -> bool {
    HALTING.load(Ordering::SeqCst)
}

extern "C" fn at_exit() {
    quiesce_for_exit();
}

/// (Re-)register the exit hook, after RocksDB's lazily built statics;
/// `sweep` writes every store's pending writes once the gate is drained.
pub(crate) fn register_exit_hook(sweep: fn()) {
    SWEEP.get_or_init(|| sweep);
    // Bounded: the statics are built by the first opens.
    if REGISTRATIONS.fetch_add(1, Ordering::Relaxed) < 256 {
        // SAFETY: `at_exit` is a plain function of this library, which the
        // BEAM never unloads while the process runs.
        unsafe {
            libc::atexit(at_exit);
        }
    }
}

/// Close the gate, wait for RocksDB calls in progress, then write every
/// open store's pending writes and stop background work. Idempotent; also
/// callable directly (tests).
pub fn quiesce_for_exit() {
    if HALTING.swap(true, Ordering::SeqCst) {
        return;
    }
    let deadline = Instant::now() + DRAIN_FOR;
    while INSIDE.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    if let Some(sweep) = SWEEP.get() {
        sweep();
    }
}

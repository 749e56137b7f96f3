//! The NIF's Rust heap: jemalloc with background purging, and a count of
//! the bytes live in it.
//!
//! **Why jemalloc.** With glibc malloc, freeing a large set leaves its
//! hundreds of thousands of small chunks in the allocating scheduler
//! thread's fastbins, and the next large allocation on that thread
//! consolidates all of them (`malloc_consolidate`): 8-15 ms inside a NIF
//! call that itself does microseconds of work. mimalloc (used before this
//! release) frees in O(1) but gives memory back to the OS (`madvise`)
//! inside whichever thread next allocates, a scheduler in the middle of a
//! NIF call, so it was told never to, and the VM's RSS became the
//! high-water mark of the Rust heap (`bench/RESULTS-soak.md`). jemalloc
//! frees without consolidating, and on Linux (glibc) its **background
//! threads** give freed pages back after `dirty_decay_ms`, so no
//! scheduler runs that `madvise`.
//!
//! **Configuration** ([`MALLOC_CONF`], read by jemalloc when it starts):
//! - `background_thread:true` on Linux with glibc, the one platform where
//!   jemalloc has background threads and where they are tested (on macOS
//!   jemalloc does not start with it; on musl it is not built);
//! - `dirty_decay_ms:1000` there: freed pages go back about a second after
//!   they were freed. Elsewhere (no background threads) the decay runs on
//!   the allocating threads and jemalloc's 10 s default is kept: it purges
//!   a little at a time along its decay curve;
//! - `muzzy_decay_ms:0`: purged pages leave the RSS at once (`MADV_DONTNEED`);
//! - `oversize_threshold:0`: no separate arena for allocations of 8 MiB or
//!   more, whose decay jemalloc forces to 0 (a purge on every free, on the
//!   freeing thread): large sets' tables decay like everything else.
//!
//! An operator overrides any of these, key by key, with jemalloc's own
//! `_RJEM_MALLOC_CONF` in the environment (the library's symbols are
//! prefixed, so it never replaces the VM's malloc). `background_thread:false`
//! there moves purging back onto the threads that allocate: schedulers.
//!
//! **Live bytes.** RSS alone cannot tell a leak from memory an allocator
//! keeps for reuse. [`live_bytes`] is the sum of the sizes of the
//! allocations not yet freed, counted here on every allocation and free:
//! one relaxed add on the thread's stripe, one of [`STRIPES`] cache lines
//! handed to threads in turn, so threads rarely share one. [`resident_bytes`]
//! is jemalloc's `stats.resident`: live allocations rounded up to their size
//! classes, partly used pages, per-thread caches, freed pages not yet
//! purged, and jemalloc's metadata; it stays above the live figure. Both
//! are per OS process: every store of the VM shares this heap.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Stripes of the live-bytes counter (about the threads of a 16-core VM:
/// schedulers, dirty schedulers, async threads, RocksDB's).
pub const STRIPES: usize = 64;

#[repr(align(128))]
struct Stripe(AtomicI64);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Stripe = Stripe(AtomicI64::new(0));
static LIVE: [Stripe; STRIPES] = [ZERO; STRIPES];

/// This thread's stripe, taken in turn on its first allocation. The
/// thread-local is a const-initialised `Cell` with no destructor, so using
/// it from the allocator never allocates and works during thread exit.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
                s.set(i);
            }
            i
        })
        .unwrap_or(0)
}

#[inline]
fn count(delta: i64) {
    LIVE[stripe()].0.fetch_add(delta, Ordering::Relaxed);
}

/// jemalloc, counting live bytes.
pub struct Counting;

// SAFETY: every method forwards to jemalloc's own `GlobalAlloc` with the
// same arguments; the counting has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = tikv_jemallocator::Jemalloc.alloc(layout);
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = tikv_jemallocator::Jemalloc.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        tikv_jemallocator::Jemalloc.dealloc(ptr, layout);
        count(-(layout.size() as i64));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Bytes of Rust allocations not yet freed, in this OS process.
pub fn live_bytes() -> u64 {
    let sum: i64 = LIVE.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
    sum.max(0) as u64
}

/// jemalloc's options (see the module doc), read when it starts: before
/// any Rust code of the library runs, so they are a static. jemalloc's own
/// default for this symbol is weak; this definition replaces it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const CONF: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,oversize_threshold:0\0";
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const CONF: &[u8] = b"muzzy_decay_ms:0,oversize_threshold:0\0";

/// A `const char *` for C: the pointer to a static, NUL-terminated string.
#[repr(transparent)]
pub struct ConfPtr(*const std::ffi::c_char);
// SAFETY: it points to an immutable static, shared read-only.
unsafe impl Sync for ConfPtr {}

/// jemalloc's `malloc_conf` (prefixed: `_rjem_malloc_conf`).
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: ConfPtr = ConfPtr(CONF.as_ptr() as *const std::ffi::c_char);

/// Bytes of physical memory jemalloc holds (`stats.resident`: live
/// allocations, pages kept for reuse until their decay, and its metadata),
/// in this OS process.
pub fn resident_bytes() -> u64 {
    // The statistics are a snapshot refreshed by advancing the epoch.
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0) as u64
}

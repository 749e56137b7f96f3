//! The NIF's Rust heap: jemalloc with background purging, and a count of
//! the bytes live in it.
//!
//! **Why jemalloc.** With glibc malloc, freeing a large set leaves its
//! hundreds of thousands of small chunks in the allocating scheduler
//! thread's fastbins, and the next large allocation on that thread
//! consolidates all of them (`malloc_consolidate`): 8-15 ms inside a NIF
//! call that itself does microseconds of work. mimalloc (used before) frees
//! in O(1) but gives memory back to the OS (`madvise`) inside whichever
//! thread next allocates, a scheduler in the middle of a NIF call, so it
//! was told never to, and the VM's RSS became the high-water mark of the
//! Rust heap: in the soak, 97-103 MiB committed for 4-5 MiB live. jemalloc
//! frees without consolidating and returns freed pages from its own
//! **background threads** (`background_thread:true`, built in), after
//! `dirty_decay_ms` (set to [`DECAY_MS`] at load): memory goes back within
//! seconds and the schedulers never run the `madvise`.
//!
//! An operator tunes it with jemalloc's own `_RJEM_MALLOC_CONF` (the
//! library's symbols are prefixed, so it never replaces the VM's malloc);
//! when that is set, the decay is left as configured there.
//!
//! **Live bytes.** RSS alone cannot tell a leak from memory an allocator
//! keeps for reuse. [`live_bytes`] is the sum of the sizes of the
//! allocations not yet freed, counted here on every allocation and free:
//! one relaxed add on a per-thread stripe (a cache line no other scheduler
//! writes), so counting never contends. [`resident_bytes`] is what
//! jemalloc holds resident (`stats.resident`). Both are per OS process:
//! every store of the VM shares this heap.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

const STRIPES: usize = 32;

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

/// Freed memory goes back to the OS after this long (jemalloc's
/// `dirty_decay_ms`, done by its background threads; `muzzy_decay_ms` is 0,
/// so purged pages leave the RSS at once).
pub const DECAY_MS: isize = 1000;

/// At load: the decay of every arena, unless `_RJEM_MALLOC_CONF` says
/// otherwise. Best effort: an arena not yet created takes the default set
/// here when it is.
pub fn configure() {
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return;
    }
    // SAFETY: jemalloc's documented controls, each with the type it reads
    // (`ssize_t`); names are NUL-terminated.
    unsafe {
        let _ = tikv_jemalloc_ctl::raw::write(b"arenas.dirty_decay_ms\0", DECAY_MS);
        let _ = tikv_jemalloc_ctl::raw::write(b"arenas.muzzy_decay_ms\0", 0isize);
        let n = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
        for i in 0..n {
            let _ = tikv_jemalloc_ctl::raw::write(
                format!("arena.{i}.dirty_decay_ms\0").as_bytes(),
                DECAY_MS,
            );
            let _ = tikv_jemalloc_ctl::raw::write(
                format!("arena.{i}.muzzy_decay_ms\0").as_bytes(),
                0isize,
            );
        }
    }
}

/// Bytes of physical memory jemalloc holds (`stats.resident`: live
/// allocations, pages kept for reuse until their decay, and its metadata),
/// in this OS process.
pub fn resident_bytes() -> u64 {
    // The statistics are a snapshot refreshed by advancing the epoch.
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0) as u64
}

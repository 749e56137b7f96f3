//! The NIF's Rust heap: mimalloc, with a count of the bytes live in it.
//!
//! Every Rust allocation of the NIF (CRDT states, elements, encoded
//! records, sync logs) comes from mimalloc instead of glibc malloc. With
//! glibc, freeing a large set leaves its hundreds of thousands of small
//! chunks in the allocating scheduler thread's fastbins, and the next large
//! allocation on that thread consolidates all of them
//! (`malloc_consolidate`): 8-15 ms inside a NIF call that itself does
//! microseconds of work. mimalloc frees are O(1) and never consolidate.
//!
//! **Live bytes.** RSS alone cannot tell a leak from memory an allocator
//! keeps for reuse. [`live_bytes`] is the sum of the sizes of the
//! allocations not yet freed, counted here on every allocation and free:
//! one relaxed add on a per-thread stripe (a cache line no other scheduler
//! writes), so counting never contends. [`committed_bytes`] is what
//! mimalloc holds from the OS; the difference is freed memory kept for
//! reuse (see `on_load` for why it is kept). Both are per OS process: every
//! store of the VM shares this heap.

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

/// mimalloc, counting live bytes.
pub struct Counting;

// SAFETY: every method forwards to mimalloc's own `GlobalAlloc` with the
// same arguments; the counting has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(layout);
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout);
        count(-(layout.size() as i64));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = mimalloc::MiMalloc.realloc(ptr, layout, new_size);
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

/// Bytes mimalloc holds from the OS (read-write memory it reserved and
/// committed), in this OS process.
pub fn committed_bytes() -> u64 {
    let mut out = [0usize; 8];
    let [elapsed, user, system, rss, peak_rss, commit, peak_commit, faults] = &mut out;
    // SAFETY: every pointer is to a distinct, live `usize`.
    unsafe {
        libmimalloc_sys::mi_process_info(
            elapsed,
            user,
            system,
            rss,
            peak_rss,
            commit,
            peak_commit,
            faults,
        )
    };
    out[5] as u64
}

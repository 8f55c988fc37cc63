//! Counts the process's heap allocations, for the benchmark's
//! "allocations per delivered webhook" (feature `count-allocations`, which
//! `scripts/bench` builds with; never in a release image). With the
//! feature, this module is the process's global allocator: it counts each
//! allocation (and reallocation) and hands it to Herald's allocator
//! ([`crate::allocator`], jemalloc), and `/metrics` shows the count as
//! `herald_allocations_total`. Allocations of the C libraries (librdkafka)
//! go to jemalloc directly, not through it, and are not counted.
//!
//! Counting must not change what it counts, so it is nearly free: each
//! thread adds to a counter of its own (on a cache line of its own, written
//! with a plain store: only its thread writes it), and `/metrics` sums them.
//! Threads past [`SLOTS`] share one atomic counter.
//!
//! Besides `allocator`'s export of jemalloc's options, this is the only
//! `unsafe` code in Herald: a global allocator can only be written as an
//! `unsafe impl`. It adds nothing to jemalloc's contract: every call is
//! passed on unchanged.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::allocator::BACKEND;

/// Counters of their own for this many threads.
const SLOTS: usize = 256;

/// One thread's count, alone on its cache line.
#[repr(align(64))]
struct Slot(AtomicU64);

static COUNTS: [Slot; SLOTS] = [const { Slot(AtomicU64::new(0)) }; SLOTS];
/// Shared by the threads past [`SLOTS`].
static SHARED: AtomicU64 = AtomicU64::new(0);
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot; `usize::MAX` until its first allocation.
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn count_one() {
    let slot = SLOT
        .try_with(|slot| {
            if slot.get() == usize::MAX {
                slot.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed));
            }
            slot.get()
        })
        .unwrap_or(usize::MAX);
    match COUNTS.get(slot) {
        // Only this thread writes its slot: a load and a store suffice.
        Some(Slot(count)) => count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
        None => {
            SHARED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Herald's allocator (jemalloc), counting.
#[derive(Debug)]
pub struct CountingAllocator;

// SAFETY: every call goes to `BACKEND` unchanged; counting allocates nothing
// (the thread-local is a `const`-initialised `Cell` with no destructor).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's guarantees are passed on.
        unsafe { BACKEND.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { BACKEND.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { BACKEND.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { BACKEND.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations (and reallocations) the process made so far.
pub fn allocations() -> u64 {
    COUNTS
        .iter()
        .map(|Slot(count)| count.load(Ordering::Relaxed))
        .sum::<u64>()
        + SHARED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn allocations_are_counted() {
        let before = super::allocations();
        let boxes: Vec<Box<u64>> = (0..100).map(Box::new).collect();
        assert!(super::allocations() - before >= 100, "one per box");
        drop(boxes);
    }
}

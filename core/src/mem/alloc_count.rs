//! A global allocator that counts heap allocations per OS thread, so that the rule "no
//! allocation per I/O in steady state" is checked by a test and visible to an operator
//! (`framework_get_reactors` reports each reactor's count) instead of taken on trust.
//!
//! It also keeps the bytes the process holds on the heap, so memory per connection can be
//! measured exactly (RSS over-counts: malloc keeps freed memory for reuse).
//!
//! It forwards every call to the system allocator unchanged; the count costs one
//! thread-local increment per allocation, and the byte total one relaxed atomic add per
//! allocation and free (neither happens per I/O in steady state). A binary opts in with
//! `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

thread_local! {
    // Const-initialised and without a destructor, so reading it never allocates (an
    // allocator that allocated to count would recurse).
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Set by the first counted allocation: a process without the counting allocator reports
/// no count rather than a misleading zero.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Bytes allocated and not yet freed, process-wide (requested sizes, not malloc's
/// rounding or bookkeeping).
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

pub struct CountingAllocator;

fn count_one() {
    let _ = THREAD_ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    // A load first: a store on every allocation would bounce the flag's cache line
    // between cores.
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; counting touches no memory
// the allocator hands out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `alloc`'s contract for `layout`; passed on as given.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as for `alloc`.
        let block = unsafe { System.alloc_zeroed(layout) };
        if !block.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator, hence from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growth may move the block: as much a cost on the data path as a fresh one.
        count_one();
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `new_size`'s
        // contract.
        let block = unsafe { System.realloc(ptr, layout, new_size) };
        // On failure the old block stays, and so does its size.
        if !block.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        block
    }
}

/// Heap allocations (and reallocations) made so far on the calling thread; None when the
/// process does not count (its global allocator is not `CountingAllocator`).
pub fn this_thread() -> Option<u64> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    THREAD_ALLOCATIONS.try_with(Cell::get).ok()
}

/// Heap bytes the process holds now (allocated through the counting allocator and not
/// freed); None when the process does not count.
pub fn live_bytes() -> Option<u64> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    Some(LIVE_BYTES.load(Ordering::Relaxed) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The unit tests run under the default allocator; the counting one is exercised by
    // calling it directly, as the global allocator would.
    #[test]
    fn counts_allocations_and_growths_on_the_calling_thread_only() {
        let before = THREAD_ALLOCATIONS.with(Cell::get);
        let layout = Layout::from_size_align(64, 8).expect("valid layout");
        // SAFETY: a non-zero-size layout; the block is freed below with the size it has.
        let grown = unsafe {
            let block = CountingAllocator.alloc(layout);
            assert!(!block.is_null());
            let grown = CountingAllocator.realloc(block, layout, 4096);
            assert!(!grown.is_null());
            grown
        };
        assert_eq!(THREAD_ALLOCATIONS.with(Cell::get), before + 2);
        assert_eq!(this_thread(), Some(before + 2));
        let other = std::thread::spawn(this_thread).join().expect("thread ran");
        assert_eq!(other, Some(0), "another thread's count is its own");
        // SAFETY: `grown` came from `realloc` with this size and alignment.
        unsafe { CountingAllocator.dealloc(grown, Layout::from_size_align(4096, 8).expect("valid layout")) };
        assert_eq!(THREAD_ALLOCATIONS.with(Cell::get), before + 2, "a free is not an allocation");
    }

    #[test]
    fn live_bytes_follow_allocations_growths_and_frees() {
        // Other tests of this binary may call the allocator directly at the same time, so
        // the figures are checked on a block large enough to stand out from theirs.
        const BIG: usize = 1 << 30;
        let start = LIVE_BYTES.load(Ordering::Relaxed);
        let small = Layout::from_size_align(4096, 8).expect("valid layout");
        // SAFETY: non-zero-size layouts; each block is freed with the size it has.
        unsafe {
            let block = CountingAllocator.alloc_zeroed(small);
            assert!(!block.is_null());
            let grown = CountingAllocator.realloc(block, small, BIG);
            assert!(!grown.is_null());
            let held = LIVE_BYTES.load(Ordering::Relaxed);
            assert!(held >= start + BIG - (1 << 20), "{held} after growing to 1 GiB from {start}");
            CountingAllocator.dealloc(grown, Layout::from_size_align(BIG, 8).expect("valid layout"));
        }
        let after = LIVE_BYTES.load(Ordering::Relaxed);
        assert!(after < start + (1 << 20), "{after} after freeing, from {start}");
    }
}

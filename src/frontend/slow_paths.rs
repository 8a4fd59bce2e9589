//! Counts of the slow paths, per thread heap: how often each path off the fast ones ran, so that
//! a workload's figures per million operations say which policy to look at (docs/BENCHMARKS.md).
//!
//! Each heap's counters are written by its own thread only (a plain load and store, no
//! read-modify-write, on paths that are already slow); readers sum every live heap's counters
//! and those of the heaps that are gone (added once, when a heap is given back). The sum is exact
//! at rest; while threads run it is a snapshot that may miss what a heap counts meanwhile.

use super::thread_heap::{tls_heap, Heap, HEAPS};
use crate::sync::{AtomicU64, Ordering};

/// One counter per slow path (see [`SlowPaths`] for their meaning).
#[derive(Clone, Copy)]
#[repr(usize)]
pub enum Slow {
    Malloc,
    StockRefill,
    RemoteTaken,
    Carve,
    SlabScanned,
    Adopted,
    FreshSlab,
    FreeTail,
    StockDrain,
    SlabReleased,
    RemoteFree,
    AbandonedFree,
    LargeAlloc,
    LargeFree,
    SharedAlloc,
    StubMade,
    Maintenance,
}

/// Counters in [`Slow`] order.
const N: usize = Slow::Maintenance as usize + 1;

/// A heap's counters (or the sum of the heaps that are gone).
pub struct Counts([AtomicU64; N]);

impl Counts {
    pub const fn new() -> Counts {
        Counts([const { AtomicU64::new(0) }; N])
    }

    /// Zeroes the counters of a heap being set up (its thread's only).
    pub fn clear(&self) {
        for c in &self.0 {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn bump(&self, what: Slow, n: u64) {
        // Owner-only writes: a plain load and store (readers load).
        let c = &self.0[what as usize];
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// Counts of the heaps given back so far.
static GONE: Counts = Counts::new();

/// Counts `n` runs of `what` for heap `h`, this thread's.
///
/// # Safety
/// `h` is this thread's live heap.
#[inline(always)]
pub(super) unsafe fn count_in(h: *mut Heap, what: Slow, n: u64) {
    // SAFETY: h is this thread's live heap (the contract); only this thread writes its counters.
    unsafe { (*h).slow.bump(what, n) }
}

/// Counts one run of `what` for the calling thread's heap (into the gone heaps' sum, with an
/// atomic add, for a thread that has no heap, such as one freeing before it ever allocated).
#[inline(always)]
pub(super) fn count(what: Slow) {
    let h = tls_heap();
    if h.is_null() {
        GONE.0[what as usize].fetch_add(1, Ordering::Relaxed);
    } else {
        // SAFETY: the TLS heap is this thread's live heap.
        unsafe { count_in(h, what, 1) }
    }
}

/// Adds the counts of heap `h`, being given back by its thread, to the sum of the heaps gone.
///
/// # Safety
/// `h` is this thread's heap (or that of a thread that no longer exists), still readable.
pub(super) unsafe fn retire(h: *mut Heap) {
    // SAFETY: h is readable (the contract).
    unsafe {
        for (gone, mine) in GONE.0.iter().zip((*h).slow.0.iter()) {
            gone.fetch_add(mine.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// How often each slow path ran, summed over every thread since the process started.
///
/// Exact at rest; while other threads run, a snapshot that may miss their latest counts. A fast
/// path's hits are not counted (they cost nothing extra): divide by the operations the program
/// made itself.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let before = scopealloc::slow_paths();
/// let v: Vec<Box<[u8; 100]>> = (0..10_000).map(|_| Box::new([0u8; 100])).collect();
/// drop(v);
/// let after = scopealloc::slow_paths();
/// assert!(after.malloc_slow > before.malloc_slow, "10 000 objects need new slabs");
/// assert!(after.fresh_slabs + after.adopted > before.fresh_slabs + before.adopted);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowPaths {
    /// Mallocs that missed the fast path (no free object in the current slab, or the stock short).
    pub malloc_slow: u64,
    /// Stock refills: batches charged to a scope's counters (one atomic add per ancestor).
    pub stock_refills: u64,
    /// Slabs whose remote frees were taken by their owner.
    pub remote_taken: u64,
    /// New objects carved into a slab's free list.
    pub carves: u64,
    /// Slabs a malloc slow path looked at before finding one with a free object.
    pub slabs_scanned: u64,
    /// Abandoned slabs (of an exited thread or closed table) adopted by a malloc.
    pub adopted: u64,
    /// Slabs made from fresh pages of the back end.
    pub fresh_slabs: u64,
    /// Local frees that left the fast path (a slab emptied, or the stock above its mark).
    pub free_tails: u64,
    /// Stocks drained back to their scope's counters by a free.
    pub stock_drains: u64,
    /// Empty slabs given back to the back end.
    pub slabs_released: u64,
    /// Frees of objects of another thread's slab (pushed onto its remote list).
    pub remote_frees: u64,
    /// Frees into abandoned slabs (under their cache's lock).
    pub abandoned_frees: u64,
    /// Large and huge allocations.
    pub large_allocs: u64,
    /// Frees of large and huge objects.
    pub large_frees: u64,
    /// Small scopes' objects allocated from shared slabs (`frontend::shared`).
    pub shared_allocs: u64,
    /// Stubs made: (thread, scope, class) that allocated from shared slabs.
    pub stubs_made: u64,
    /// Maintenance passes (every 256 malloc slow paths, and `trim`).
    pub maintenance: u64,
}

/// The sum of every heap's counters and the gone heaps'.
pub fn slow_paths() -> SlowPaths {
    let mut sum = [0u64; N];
    let mut add = |c: &Counts| {
        for (s, x) in sum.iter_mut().zip(c.0.iter()) {
            *s += x.load(Ordering::Relaxed);
        }
    };
    add(&GONE);
    HEAPS.for_each(|h, live| {
        if live {
            // SAFETY: heap slots stay mapped (pools never unmap their chunks; a trimmed page
            // reads as zero), so the counters are readable whatever the heap's state.
            add(unsafe { &(*h).slow });
        }
    });
    let [malloc_slow, stock_refills, remote_taken, carves, slabs_scanned, adopted, fresh_slabs, free_tails, stock_drains, slabs_released, remote_frees, abandoned_frees, large_allocs, large_frees, shared_allocs, stubs_made, maintenance] =
        sum;
    SlowPaths {
        malloc_slow,
        stock_refills,
        remote_taken,
        carves,
        slabs_scanned,
        adopted,
        fresh_slabs,
        free_tails,
        stock_drains,
        slabs_released,
        remote_frees,
        abandoned_frees,
        large_allocs,
        large_frees,
        shared_allocs,
        stubs_made,
        maintenance,
    }
}

//! The malloc fast path.
//!
//! ```text
//! alloc_small(class)
//!   t = TLS.table; s = t.arrays.current[class]; b = s.free
//!   b == null or t.stock.avail < size ──► refill::alloc_slow(class)   (cold; the C library's
//!                                          malloc: alloc_slow_or, which sets errno)
//!   pop: s.free = b.next; allocs += 1; used += 1; t.stock.avail -= size
//! ```

use super::refill::alloc_slow;
use super::table::{current_of, Table};
use super::thread_heap::tls_table;
use crate::objects::size_class::{NCLASSES, SIZES};
use crate::objects::slab::{Block, Slab};
use crate::platform::{cpu, valgrind};
use crate::sync::Ordering;
use core::ptr::null_mut;

// ---------------------------------------------------------------------------------------------
// Allocation.

/// Allocates an object of size class `class`. Null when out of memory or over a limit.
///
/// # Safety
/// `class < NCLASSES` (the tables are indexed without a bounds check).
#[inline(always)]
pub unsafe fn alloc_small(class: usize) -> *mut u8 {
    // SAFETY: the contract.
    let p = unsafe { alloc_fast(class) };
    if p.is_null() {
        return alloc_slow(class);
    }
    p
}

/// [`alloc_small`] for the C library's `malloc`, which keeps no stack frame on its fast path:
/// when out of memory or over a limit, the result of `failed()` (which sets `errno`), called
/// from the slow path.
///
/// # Safety
/// As [`alloc_small`].
#[cfg(not(feature = "secure"))]
#[inline(always)]
pub unsafe fn alloc_small_or(class: usize, failed: fn() -> *mut u8) -> *mut u8 {
    // SAFETY: the contract.
    let p = unsafe { alloc_fast(class) };
    if p.is_null() {
        return alloc_slow_or(class, failed);
    }
    p
}

#[cfg(not(feature = "secure"))]
#[cold]
#[inline(never)]
fn alloc_slow_or(class: usize, failed: fn() -> *mut u8) -> *mut u8 {
    let p = alloc_slow(class);
    if p.is_null() {
        return failed();
    }
    p
}

/// The fast path of [`alloc_small`]: null when it must take the slow path.
///
/// # Safety
/// As [`alloc_small`].
#[inline(always)]
unsafe fn alloc_fast(class: usize) -> *mut u8 {
    debug_assert!(class < NCLASSES);
    let t = tls_table();
    // SAFETY: class < NCLASSES (the contract) indexes both arrays in bounds; the TLS table is the
    // empty table, the refused table or a live table of this thread, and its current slabs are
    // the empty slab or slabs this thread owns, so only this thread writes them.
    unsafe {
        let s = current_of(t, class);
        let b = (*s).free;
        let size = *SIZES.get_unchecked(class) as i64;
        if b.is_null() || (*t).stock.avail < size {
            return null_mut();
        }
        pop(t, s, b, size)
    }
}

/// Hands out `b`, the head of `s`'s free list, charging `size` to `t`'s stock.
///
/// # Safety
/// `t` and `s` are this thread's; `b` is `s.free`, non-null; the stock covers `size`.
#[inline(always)]
pub(super) unsafe fn pop(t: *mut Table, s: *mut Slab, b: *mut Block, size: i64) -> *mut u8 {
    debug_assert!(!b.is_null());
    // SAFETY: t and s are this thread's (the contract), so only this thread writes the free list,
    // `used`, `allocs` and the stock; b is the head of s's free list, a free block of s.
    unsafe {
        debug_assert!((*t).stock.avail >= size);
        let next = Block::link(b);
        (*s).free = next;
        // The next malloc of this class reads `next`'s link: start bringing its line in now. A
        // block freed by another thread (a producer/consumer hand-off) sits in that thread's
        // cache, and the load would otherwise stall the next malloc (`prodcons`: 85 % of
        // malloc's samples on it).
        cpu::prefetch(next as *const u8);
        // Owner-only counters, read by statistics: `allocs` first, so that a reader (which loads
        // `allocs` before `used`) never sees more objects than allocations. Relaxed: the reader
        // clamps to that invariant on weakly ordered machines (see `objects::stats`).
        (*s).allocs
            .store((*s).allocs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        (*s).used
            .store((*s).used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        (*t).stock.avail -= size;
        valgrind::malloclike(b as *const u8, size as usize, false);
        #[cfg(feature = "secure")]
        {
            crate::objects::canary::check_free(b.cast(), size as usize);
            crate::objects::free_list::mark_live(b);
        }
        b as *mut u8
    }
}

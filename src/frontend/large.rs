//! Large and huge objects: charged exactly to the calling thread's scope (no stock), one cache
//! reference each; their descriptor records their cache, so they need no header.
//!
//! ```text
//! alloc_large: charge the scope ─► span (large) | huge mapping ─► lock_cache, tryget ─► publish
//! free_large:  lock cache ─► uncharge, forget ─► put ─► memory back ─► release the cache if last
//! ```

use super::refill::drain_stocks_except;
use super::slow_paths::{count, Slow};
use super::thread_heap::{current_scope, tls_heap};
use crate::backend::huge;
use crate::backend::segment::{segment_of, LARGE_MAX, PAGE_SIZE};
use crate::backend::span;
use crate::objects::cache::{self, CacheLookup};
use crate::objects::protocol;
use crate::objects::size_class::LARGE_CLASS;
#[cfg(not(feature = "secure"))]
use crate::objects::slab::free_slab_span;
use crate::objects::slab::{slab_at, Slab, KIND_HUGE, KIND_LARGE, OWNER_LARGE};
#[cfg(feature = "secure")]
use crate::platform::os;
use crate::platform::valgrind;
use crate::sync::Ordering;
use core::ptr::null_mut;

/// Maps the memory of a large (span) or huge (own mapping) object and sets up its descriptor;
/// null when the OS refuses.
fn map_large(size: usize, align: usize, usable: usize, in_segment: bool) -> *mut Slab {
    if in_segment {
        #[cfg(not(feature = "secure"))]
        let (npages, head) = (usable / PAGE_SIZE, 0);
        #[cfg(feature = "secure")]
        let (npages, head) = guarded_span(usable, align);
        // Secure build: a quarantined span of as many pages whose block start suits `align`,
        // its block's pages fitted to the new block, the rest of the span its guards.
        #[cfg(feature = "secure")]
        {
            let sl = super::quarantine::take(npages, usable, align);
            // SAFETY: the quarantine gave the descriptor to us; it is ours until published.
            if !sl.is_null() && unsafe { open_block(sl, usable) } {
                // SAFETY: as above.
                unsafe {
                    (*sl).kind = KIND_LARGE;
                    (*sl).zeroed = false;
                    (*sl).used.store(1, Ordering::Relaxed);
                }
                return sl;
            }
        }
        let Some(sp) = span::alloc_span(npages, (align / PAGE_SIZE).max(1)) else {
            return null_mut();
        };
        let span_start = crate::backend::segment::page_start(sp.seg, sp.idx);
        let start = span_start.wrapping_add(head);
        #[cfg(feature = "secure")]
        // SAFETY: the span is ours and holds nothing yet; the block lies in it (guarded_span).
        match unsafe { set_guards(span_start, npages * PAGE_SIZE, start, usable) } {
            Guards::Set => {}
            Guards::Refused => {
                // SAFETY: the span was just handed out, holds nothing and is left unprotected.
                unsafe { span::free_span(sp.seg, sp.idx, npages) };
                return null_mut();
            }
            Guards::Stuck => return null_mut(),
        }
        // SAFETY: the span is ours; its descriptor is ours until published through the cache.
        unsafe {
            let sl = slab_at(sp.seg, sp.idx);
            (*sl).kind = KIND_LARGE;
            (*sl).block_size = usable as u32;
            (*sl).start = start;
            (*sl).npages = npages as u32;
            (*sl).page_idx = sp.idx as u32;
            (*sl).zeroed = sp.zeroed;
            (*sl).used.store(1, Ordering::Relaxed);
            sl
        }
    } else {
        let Some(h) = huge::alloc_huge(size, align) else {
            return null_mut();
        };
        // SAFETY: the mapping is ours; descriptor 0 of its header describes the object, and is
        // ours until published (a reused mapping's descriptor is written through its atomics).
        unsafe {
            let sl = slab_at(h.seg, 0);
            (*sl).kind = KIND_HUGE;
            (*sl).start = h.start;
            (*sl).block_size = 0;
            (*sl).npages = (h.usable / huge::granule()) as u32;
            (*sl).zeroed = h.fresh;
            (*sl).used.store(1, Ordering::Relaxed);
            sl
        }
    }
}

/// Secure build: the layout of a large block's span, (pages, offset of the block in the span):
/// at least one inaccessible OS page before the block (its alignment before it, if larger: the
/// whole head of the span is the guard) and at least one after its usable bytes (the rest of the
/// span), so that a linear overflow or underflow of a large block faults (and the SIGSEGV
/// reporter names it).
#[cfg(feature = "secure")]
fn guarded_span(usable: usize, align: usize) -> (usize, usize) {
    let page = os::page_size();
    let head = align.max(page);
    ((head + usable + page).div_ceil(PAGE_SIZE), head)
}

/// Secure build: the bounds of the span of large descriptor `s`, (first byte, bytes).
///
/// # Safety
/// `s` describes a large block (live, quarantined or being released).
#[cfg(feature = "secure")]
pub(super) unsafe fn span_of(s: *const Slab) -> (*mut u8, usize) {
    // SAFETY: per the contract, the descriptor's fields are set; its block lies in its span.
    unsafe {
        let seg = segment_of((*s).start);
        (
            crate::backend::segment::page_start(seg, (*s).page_idx as usize),
            (*s).npages as usize * PAGE_SIZE,
        )
    }
}

/// Secure build: how setting a large block's guards went.
#[cfg(feature = "secure")]
enum Guards {
    /// Both guards are inaccessible.
    Set,
    /// The kernel refused; nothing is left protected (the span can go back).
    Refused,
    /// The kernel refused the second guard and then refused to lift the first: the span stays
    /// out of use (handed out, with no descriptor) for good.
    Stuck,
}

/// Secure build: makes the span `span_start..+span_len` inaccessible but for the block
/// `start..+usable`: a guard before it and one after it, to the span's ends.
///
/// # Safety
/// The span is ours and holds nothing; the block lies in it with at least one OS page on each
/// side (`guarded_span`).
#[cfg(feature = "secure")]
unsafe fn set_guards(
    span_start: *mut u8,
    span_len: usize,
    start: *mut u8,
    usable: usize,
) -> Guards {
    // SAFETY: both guards lie in the span (the contract).
    unsafe {
        let end = start.add(usable);
        let tail = span_start as usize + span_len - end as usize;
        if !os::protect(end, tail, true) {
            return Guards::Refused;
        }
        if os::protect(span_start, start as usize - span_start as usize, true) {
            return Guards::Set;
        }
        if os::protect(end, tail, false) {
            Guards::Refused
        } else {
            Guards::Stuck
        }
    }
}

/// Secure build: fits quarantined block `s`'s pages to a block of `usable` bytes at its start:
/// nothing to do for the same size; otherwise one `mprotect` opens the pages it gains or closes
/// those it gives back to its after-guard (its pages are open, its guards closed:
/// `quarantine::put`). False, with `s` released, if the kernel refused: the caller maps a fresh
/// span.
///
/// # Safety
/// `s` is a quarantined descriptor the caller took from the quarantine; `usable` is whole OS
/// pages and leaves at least one OS page of the span after the block (`quarantine::take`).
#[cfg(feature = "secure")]
unsafe fn open_block(s: *mut Slab, usable: usize) -> bool {
    // SAFETY: the block and its after-guard lie in the span (the contract), which nobody uses.
    unsafe {
        let old = (*s).block_size as usize;
        let start = (*s).start;
        let fitted = match usable.cmp(&old) {
            core::cmp::Ordering::Equal => true,
            core::cmp::Ordering::Greater => os::protect(start.add(old), usable - old, false),
            core::cmp::Ordering::Less => os::protect(start.add(usable), old - usable, true),
        };
        if fitted {
            (*s).block_size = usable as u32;
        } else {
            super::quarantine::release(s);
        }
        fitted
    }
}

/// Secure build: makes the whole span of large block `s` accessible again (its guards); false
/// if the kernel refused (the span must then never be handed out again).
///
/// # Safety
/// `s` describes a large block that nobody uses any more.
#[cfg(feature = "secure")]
pub(super) unsafe fn lift_span(s: *const Slab) -> bool {
    // SAFETY: the span is the block's (set_guards), and nobody uses it.
    unsafe {
        let (span_start, span_len) = span_of(s);
        os::protect(span_start, span_len, false)
    }
}

/// Allocates a large or huge object (charged exactly, no stock). Null when out of memory or
/// over a limit (and, in the secure build, above `huge::SECURE_MAX_REQUEST`).
pub fn alloc_large(size: usize, align: usize) -> *mut u8 {
    #[cfg(feature = "secure")]
    if size > huge::SECURE_MAX_REQUEST || align > huge::SECURE_MAX_REQUEST {
        return null_mut();
    }
    count(Slow::LargeAlloc);
    #[cfg(not(feature = "secure"))]
    let in_segment = size <= LARGE_MAX && align <= LARGE_MAX;
    // Secure build: at most half of LARGE_MAX of alignment, so that the guarded span (alignment,
    // block, guard) stays below a segment's free pages.
    #[cfg(feature = "secure")]
    let in_segment = size <= LARGE_MAX && align <= LARGE_MAX / 2;
    let usable = if in_segment {
        #[cfg(not(feature = "secure"))]
        let usable = size.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // Secure build: whole OS pages, so that the guard page starts right after the block.
        #[cfg(feature = "secure")]
        let usable = size.max(1).div_ceil(os::page_size()) * os::page_size();
        usable
    } else {
        match crate::platform::os::round_to_pages(size) {
            // The descriptor counts a huge object's pages in a u32.
            Some(s) if s / huge::granule() <= u32::MAX as usize => s,
            _ => return null_mut(),
        }
    };
    let heap = tls_heap();
    loop {
        let s = current_scope();
        // SAFETY: s is open or the root; this thread's table holds a reference on it (or it is
        // the root), so its counter is alive.
        let counter = unsafe { &(*s).counter };
        if let Err(hit) = counter.try_charge(usable as u64) {
            let mut ok = false;
            if !heap.is_null() {
                // SAFETY: heap is this thread's.
                unsafe { drain_stocks_except(heap, null_mut()) };
                ok = counter.try_charge(usable as u64).is_ok();
            }
            if !ok {
                hit.count_limit_hit();
                return null_mut();
            }
        }
        let slab = map_large(size, align, usable, in_segment);
        if slab.is_null() {
            counter.uncharge(usable as u64);
            return null_mut();
        }
        // SAFETY: the descriptor is ours until published through the cache below; the cache is
        // used under its lock.
        unsafe {
            let c = match cache::lock_cache(s, LARGE_CLASS) {
                CacheLookup::Locked(c) if (*c).refs.tryget_locked() => c,
                other => {
                    if let CacheLookup::Locked(c) = other {
                        (*c).refs.unlock();
                    }
                    release_large_memory(slab);
                    counter.uncharge(usable as u64);
                    if matches!(other, CacheLookup::Oom) {
                        return null_mut();
                    }
                    continue; // the scope closed meanwhile: charge its open ancestor
                }
            };
            (*slab).cache = c;
            // Publishes the descriptor: a free of the object (on any thread, after the pointer
            // reached it through the program's own synchronisation) sees it complete.
            (*slab).owner.store(OWNER_LARGE, Ordering::Release);
            (*c).add_large(usable as u64, (*slab).kind == KIND_HUGE);
            (*c).refs.unlock();
            let p = (*slab).start;
            Slab::hide_start(slab);
            valgrind::malloclike(p, usable, false);
            return p;
        }
    }
}

/// Usable size of a large or huge object.
///
/// # Safety
/// `s` describes a live large or huge object.
pub unsafe fn large_usable(s: *const Slab) -> usize {
    // SAFETY: s is a live large or huge descriptor (the contract): its fields are set.
    unsafe {
        if (*s).kind == KIND_HUGE {
            (*s).npages as usize * huge::granule()
        } else {
            (*s).block_size as usize
        }
    }
}

/// Gives the memory of a large or huge object back.
///
/// # Safety
/// `s` describes a large or huge object that nobody uses any more.
unsafe fn release_large_memory(s: *mut Slab) {
    // SAFETY: per the contract; a huge object's start lies in its own mapping's first segment.
    unsafe {
        Slab::reveal_start(s);
        if (*s).kind == KIND_HUGE {
            let seg = segment_of((*s).start);
            (*s).mark_free();
            huge::free_huge(seg);
        } else {
            // Secure build: the block waits in the quarantine, poisoned, guards up.
            #[cfg(feature = "secure")]
            super::quarantine::put(s);
            #[cfg(not(feature = "secure"))]
            free_slab_span(s);
        }
    }
}

/// Frees a large or huge object.
///
/// # Safety
/// `s` describes a live large or huge object, freed once.
pub(super) unsafe fn free_large(s: *mut Slab) {
    // SAFETY: s describes a live large object, which holds a reference on its cache: the cache
    // is alive until our put below.
    unsafe {
        let usable = large_usable(s);
        let huge = (*s).kind == KIND_HUGE;
        let c = (*s).cache;
        let last = protocol::drop_ref(c, |c| {
            // drop_ref holds c's lock, under which `Cache::scope` is stable (a close moves it
            // under the same lock) and the cache holds a reference on that scope.
            (*(*c).scope).counter.uncharge(usable as u64);
            (*c).remove_large(usable as u64, huge);
        });
        release_large_memory(s);
        if last {
            cache::release_cache(c);
        }
    }
}

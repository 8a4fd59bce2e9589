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
use crate::objects::slab::{free_slab_span, slab_at, Slab, KIND_HUGE, KIND_LARGE, OWNER_LARGE};
use crate::platform::valgrind;
use crate::sync::Ordering;
use core::ptr::null_mut;

/// Maps the memory of a large (span) or huge (own mapping) object and sets up its descriptor;
/// null when the OS refuses.
fn map_large(size: usize, align: usize, usable: usize, in_segment: bool) -> *mut Slab {
    if in_segment {
        let npages = usable / PAGE_SIZE;
        let Some(sp) = span::alloc_span(npages, (align / PAGE_SIZE).max(1)) else {
            return null_mut();
        };
        // SAFETY: the span is ours; its descriptor is ours until published through the cache.
        unsafe {
            let sl = slab_at(sp.seg, sp.idx);
            (*sl).kind = KIND_LARGE;
            (*sl).block_size = usable as u32;
            (*sl).start = crate::backend::segment::page_start(sp.seg, sp.idx);
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

/// Secure build: the largest request (size or alignment) served, 1 TiB. Anything bigger is
/// refused (null; `ENOMEM` in C) without asking the OS: no machine this runs on has that much
/// memory, and with `MAP_NORESERVE` the kernel would map far more than it could ever back, so a
/// size computed from an overflowed or attacker-chosen length (`malloc(n * m)`, `SIZE_MAX / 2`)
/// would otherwise succeed and be written into later. The normal build refuses only above
/// `PTRDIFF_MAX` (the C library) and what the OS refuses.
#[cfg(feature = "secure")]
pub const SECURE_MAX_REQUEST: usize = 1 << 40;

/// Allocates a large or huge object (charged exactly, no stock). Null when out of memory or
/// over a limit (and, in the secure build, above [`SECURE_MAX_REQUEST`]).
pub fn alloc_large(size: usize, align: usize) -> *mut u8 {
    #[cfg(feature = "secure")]
    if size > SECURE_MAX_REQUEST || align > SECURE_MAX_REQUEST {
        return null_mut();
    }
    count(Slow::LargeAlloc);
    let in_segment = size <= LARGE_MAX && align <= LARGE_MAX;
    let usable = if in_segment {
        size.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE
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

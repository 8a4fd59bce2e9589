//! The free paths: local (fast), remote, into an abandoned slab; releasing an empty slab.
//!
//! ```text
//! free(p): s = slab_of(p)                      (mask + page map)
//!   s.owner == this heap ──► push on s.free; used -= 1; stock of s's table += size
//!                             └─ used == release_at or stock > STOCK_HIGH ─► free_local_tail
//!   otherwise ─────────────► free_slow (cold): small ─► protocol::free_not_owned
//!                                                         (remote push | abandoned, locked)
//!                                              large / huge ─► large::free_large
//! ```

use super::abandon::sweep_abandoned_locked;
use super::large::free_large;
use super::shared::free_shared;
use super::slow_paths::{count, Slow};
use super::table::Table;
use super::table::{current_of, list_head, owner_table, SHARED_OWNER};
use super::table::{list_move_to_head, list_remove};
use super::thread_heap::tls_heap;
use crate::backend::registry;
use crate::backend::segment::segment_of;
use crate::objects::cache::{self};
use crate::objects::protocol::{self, NotOwnedFree};
use crate::objects::slab::{
    free_slab_span, in_span, slab_of, Block, Slab, KIND_HUGE, KIND_LARGE, KIND_SMALL,
};
use crate::platform::{os, valgrind};
use crate::sync::Ordering;

// ---------------------------------------------------------------------------------------------
// Free.

/// Frees an object of ours.
///
/// # Safety
/// `p` is a live object of this allocator.
#[inline(always)]
#[cfg(not(feature = "secure"))]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: p is a live object of ours (the contract), so its segment header and slab
    // descriptor are mapped and describe it.
    unsafe {
        let s = slab_of(p);
        if owns_slab(s) {
            free_local(s, p);
            return;
        }
        free_slow(s, p);
    }
}

/// Frees an object of ours; the secure build trusts no pointer: one that is not a live block of
/// ours (foreign, inside a block, freed) prints one line and aborts.
///
/// # Safety
/// None beyond the C `free`'s: any pointer is checked.
#[inline(always)]
#[cfg(feature = "secure")]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: free_untrusted checks p itself; a block it finds is live, or a double free it
    // aborts on (the secure checks in free_untrusted).
    if !unsafe { free_untrusted(p) } {
        os::fatal_at(
            b"free(): invalid pointer",
            p as usize,
            b": not a live block of scopealloc (foreign, inside a block, or freed)",
        );
    }
}

/// Frees `p`, a pointer that is not trusted (the C library's `free`): false, changing nothing,
/// when `p` is not in a block of ours (foreign, in a segment's header or free pages, past a
/// slab's last block, a large object's interior or a freed one). The interior of a small block
/// is not detected here (`slab::in_span` with `exact` is, at the cost of a division).
///
/// # Safety
/// If `p` is in a block of ours, that block is live. Null is refused like any foreign pointer
/// (its segment is not in the registry), so callers test for it only when this says false.
#[inline(always)]
pub unsafe fn free_untrusted(p: *mut u8) -> bool {
    // SAFETY: the contract; registry::LIMIT is the registry's own bound.
    match unsafe { free_untrusted_fast(p, registry::LIMIT) } {
        Untrusted::Freed => true,
        Untrusted::Refused => false,
        // SAFETY: s is slab_of(p) in a segment of ours.
        Untrusted::Slow(s) => unsafe { free_slow_untrusted(s, p) },
    }
}

/// [`free_untrusted`] for the C library's `free`, which keeps no stack frame on its fast path:
/// `refused(p)` is called, in tail position, for a pointer that is not in a block of ours, and
/// for every pointer at or above `limit` (less one: null wraps to the top). `limit` is
/// `registry::LIMIT`, or 0 to refuse every pointer (check mode, which `refused` then serves), so
/// that one comparison stands for the registry's bound, null and the mode.
///
/// # Safety
/// As [`free_untrusted`]; `limit <= registry::LIMIT`.
#[inline(always)]
pub unsafe fn free_untrusted_or(p: *mut u8, limit: usize, refused: unsafe fn(*mut u8)) {
    // SAFETY: the contract.
    match unsafe { free_untrusted_fast(p, limit) } {
        Untrusted::Freed => {}
        // SAFETY: refused's contract is the caller's.
        Untrusted::Refused => unsafe { refused(p) },
        // SAFETY: s is slab_of(p) in a segment of ours.
        Untrusted::Slow(s) => unsafe { free_slow_untrusted_or(s, p, refused) },
    }
}

/// What the fast half of an untrusted free did.
enum Untrusted {
    /// A local free: done.
    Freed,
    /// Not in a block of ours (or at or above the limit).
    Refused,
    /// In a segment of ours, not a local free: the slow path, with `slab_of(p)`.
    Slow(*mut Slab),
}

/// The fast half of [`free_untrusted`]: a local free of a block of this thread, or the verdict.
///
/// # Safety
/// As [`free_untrusted_or`].
#[inline(always)]
unsafe fn free_untrusted_fast(p: *mut u8, limit: usize) -> Untrusted {
    debug_assert!(limit <= registry::LIMIT);
    // Null's segment (p - 1 rounded down) is at the top of the address space: refused.
    let seg = segment_of(p);
    // SAFETY: seg < limit <= LIMIT, checked just before.
    if seg as usize >= limit || !unsafe { registry::contains_below(seg) } {
        return Untrusted::Refused;
    }
    // SAFETY: the registry says p's segment header is mapped and ours, so its descriptor is
    // readable; a local free happens only for a pointer within a live slab's blocks.
    unsafe {
        let s = slab_of(p);
        if owns_slab(s) {
            let off = (p as usize).wrapping_sub((*s).start as usize);
            if off >= (*s).blocks_bytes as usize {
                return Untrusted::Refused;
            }
            #[cfg(feature = "secure")]
            {
                // The owner may read `carved`: blocks past it were never handed out.
                if off >= (*s).carved as usize * (*s).block_size as usize {
                    not_handed_out(p);
                }
                check_small_free(s, p, off);
            }
            free_local(s, p);
            return Untrusted::Freed;
        }
        Untrusted::Slow(s)
    }
}

/// The slow half of [`free_untrusted_or`]: `refused(p)` if [`slow_half`] refuses `p`.
///
/// # Safety
/// As [`slow_half`]; `refused`'s contract is the caller's.
#[cold]
#[inline(never)]
unsafe fn free_slow_untrusted_or(s: *mut Slab, p: *mut u8, refused: unsafe fn(*mut u8)) {
    // SAFETY: the contract.
    unsafe {
        if !slow_half(s, p) {
            refused(p);
        }
    }
}

/// The slow half of [`free_untrusted`].
///
/// # Safety
/// As [`slow_half`].
#[cold]
#[inline(never)]
unsafe fn free_slow_untrusted(s: *mut Slab, p: *mut u8) -> bool {
    // SAFETY: the contract.
    unsafe { slow_half(s, p) }
}

/// The slow half of an untrusted free: `p` in a segment of ours, not a local free. False,
/// changing nothing, if `p` is not in a live block.
///
/// # Safety
/// `s` is `slab_of(p)`, `p` in a segment of ours; if `p` is in a block of ours, it is live.
#[inline(always)]
unsafe fn slow_half(s: *mut Slab, p: *mut u8) -> bool {
    // SAFETY: s is slab_of(p) in a segment of ours (caller); in_span says p is in a live block.
    unsafe {
        if !in_span(s, p, false) {
            return false;
        }
        #[cfg(feature = "secure")]
        if (*s).kind == KIND_SMALL {
            check_small_free(s, p, (p as usize).wrapping_sub((*s).start as usize));
        }
        free_slow(s, p);
    }
    true
}

/// Secure build: `p` is in a slab's blocks that were never carved.
#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
fn not_handed_out(p: *mut u8) -> ! {
    os::fatal_at(
        b"free(): invalid pointer",
        p as usize,
        b": a block of scopealloc that was never handed out",
    )
}

/// Secure build: aborts with one line unless `p`, at offset `off` of small slab `s`'s blocks,
/// is the start of a block that is not free (a double free, from any thread, at any distance)
/// and whose trailer and pad are intact (an overflow; `objects::canary`), and marks its trailer
/// free.
///
/// # Safety
/// `s` is `slab_of(p)`, a small slab of ours, and `off < s.blocks_bytes`.
#[cfg(feature = "secure")]
#[inline(always)]
unsafe fn check_small_free(s: *const Slab, p: *mut u8, off: usize) {
    // SAFETY: s is a mapped small slab (its class below NCLASSES) and p one of its blocks' bytes
    // (the contract); once p is known to be a block's start, the block's bytes are readable (at
    // least canary::MIN_BLOCK in this build), and it was handed out and armed unless it is free
    // (tagged, refused first).
    unsafe {
        // off < the slab's bytes (at most a few pages), so it fits the 32-bit check.
        if !crate::objects::size_class::is_multiple_of_class(off as u32, (*s).class as usize) {
            os::fatal_at(
                b"free(): invalid pointer",
                p as usize,
                b": inside a block of scopealloc, not at its start",
            );
        }
        if crate::objects::free_list::is_free(p as *const Block) {
            os::fatal_at(b"free(): double free of", p as usize, b"");
        }
        crate::objects::canary::retire(p, (*s).block_size as usize);
    }
}

/// Whether this thread owns slab `s`.
///
/// # Safety
/// `s` is a descriptor of a mapped segment of ours.
#[inline(always)]
unsafe fn owns_slab(s: *const Slab) -> bool {
    // Relaxed: only this thread stores its own heap in `owner` (at adoption or creation), so an
    // equal value was written by this thread; any other value sends us to the slow path, which
    // loads it again with Acquire.
    // SAFETY: s is mapped (the contract).
    unsafe { (*s).owner.load(Ordering::Relaxed) == tls_heap() as usize }
}

/// Frees `p` into slab `s`, which this thread owns.
///
/// # Safety
/// `p` is a live object of `s`, and `s` is owned by this thread.
#[inline(always)]
unsafe fn free_local(s: *mut Slab, p: *mut u8) {
    valgrind::freelike(p);
    // SAFETY: the contract is free_local_quiet's.
    unsafe { free_local_quiet(s, p) }
}

/// [`free_local`] without telling Valgrind (the caller did: a free that came through
/// `free_slow`, such as a shared object's).
///
/// # Safety
/// As [`free_local`].
#[inline(always)]
pub(super) unsafe fn free_local_quiet(s: *mut Slab, p: *mut u8) {
    // SAFETY: this thread owns s (the contract), so only it writes the slab's free list, `used`
    // and the table's stock.
    unsafe {
        debug_assert!(
            (*s).used.load(Ordering::Relaxed) > 0,
            "local free of a free slab"
        );
        debug_assert!(
            (p as usize - (*s).start as usize).is_multiple_of((*s).block_size as usize),
            "free of a pointer inside a block"
        );
        let b = p as *mut Block;
        Block::set_link(b, (*s).free);
        (*s).free = b;
        let used = (*s).used.load(Ordering::Relaxed) - 1;
        (*s).used.store(used, Ordering::Relaxed);
        let t = owner_table(s);
        (*t).stock.avail += (*s).block_size as i64;
        if used == (*s).release_at || (*t).stock.avail > (*t).stock.high {
            free_local_tail(t, s);
        }
    }
}

#[cold]
#[inline(never)]
pub(super) unsafe fn free_local_tail(t: *mut Table, s: *mut Slab) {
    // SAFETY: t and s are this thread's.
    unsafe {
        count(Slow::FreeTail);
        drain_if_high(t);
        let class = (*s).class as usize;
        if (*s).used.load(Ordering::Relaxed) == 0 && current_of(t, class) != s {
            // One empty slab per class stays, at the head of the list, for the next slow path:
            // a working set that empties and refills slabs would otherwise release a slab and
            // take a fresh one from the back end every few hundred operations. A second one
            // is released (and `trim`, thread exit and scope close release the spare).
            let head = list_head(t, class);
            if head != s
                && (*head).used.load(Ordering::Relaxed) == 0
                && current_of(t, class) != head
            {
                release_slab(t, s);
            } else {
                list_move_to_head(t, class, s);
            }
        }
    }
}

/// Drains `t`'s stock to its mark if frees raised it above (a free's tail).
///
/// # Safety
/// `t` is a live table of this thread.
#[inline]
pub(super) unsafe fn drain_if_high(t: *mut Table) {
    // SAFETY: t is this thread's, and holds a reference on its scope.
    unsafe {
        if (*t).stock.avail > (*t).stock.high {
            count(Slow::StockDrain);
            (*t).stock.drain_to_mark(&(*(*t).scope).counter);
        }
    }
}

/// Releases an empty slab of this thread: off its table and cache, pages to the back end.
pub(super) unsafe fn release_slab(t: *mut Table, s: *mut Slab) {
    // SAFETY: s is owned by this thread, empty, and not current.
    unsafe {
        count(Slow::SlabReleased);
        list_remove(t, (*s).class as usize, s);
        let c = (*s).cache;
        let last = protocol::drop_ref(c, |c| {
            // drop_ref holds c's lock, which guards its slab lists; s is attached to c.
            (*c).unlink_slab(s)
        });
        free_slab_span(s);
        if last {
            cache::release_cache(c);
        }
    }
}

#[cold]
#[inline(never)]
pub(super) unsafe fn free_slow(s: *mut Slab, p: *mut u8) {
    valgrind::freelike(p);
    // SAFETY: p is a live object of ours (caller's guarantee).
    unsafe {
        match (*s).kind {
            KIND_SMALL if !(*s).origins.is_null() => free_shared(s, p),
            KIND_SMALL => match protocol::free_not_owned(s, || (*s).cache, p as *mut Block) {
                NotOwnedFree::AbandonedLocked => {
                    count(Slow::AbandonedFree);
                    free_abandoned_locked(s, p);
                }
                NotOwnedFree::Pushed => count(Slow::RemoteFree),
            },
            KIND_LARGE | KIND_HUGE => {
                count(Slow::LargeFree);
                free_large(s)
            }
            _ => os::fatal(b"free(): pointer is not a live allocation (double free?)"),
        }
    }
}

/// Frees into a slab whose thread exited: under the cache lock (held, from
/// `protocol::free_not_owned`), uncharging the cache's scope; unlocks.
///
/// # Safety
/// `p` is a live object of abandoned slab `s`, and the caller holds the lock of `s`'s cache.
pub(super) unsafe fn free_abandoned_locked(s: *mut Slab, p: *mut u8) {
    // SAFETY: p is live, so s is attached and its cache alive; the cache lock makes us the
    // owner of the abandoned slab.
    unsafe {
        let c = (*s).cache;
        let b = p as *mut Block;
        Block::set_link(b, (*s).free);
        (*s).free = b;
        (*s).used
            .store((*s).used.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        (*(*c).scope).counter.uncharge((*s).block_size as u64);
        sweep_abandoned_locked(c, s, None);
    }
}

/// Whether `p` (ours) is on the free list of a slab this thread owns: a double free (check mode).
///
/// # Safety
/// `p` points into memory of ours (`slab::owns` said so).
pub unsafe fn is_double_free(p: *const u8) -> bool {
    // SAFETY: the caller checked that p is ours.
    unsafe {
        let s = slab_of(p);
        match (*s).kind {
            KIND_SMALL => {
                let owner = (*s).owner.load(Ordering::Relaxed);
                let me = tls_heap() as usize;
                if owner != me && owner != me + SHARED_OWNER {
                    return false;
                }
                let mut b = (*s).free;
                let mut n = 0;
                while !b.is_null() && n <= (*s).capacity {
                    if b as *const u8 == p {
                        return true;
                    }
                    b = Block::link(b);
                    n += 1;
                }
                false
            }
            KIND_LARGE | KIND_HUGE => false,
            _ => true,
        }
    }
}

//! The malloc slow path: a closed scope followed to its ancestor, the stock refilled, a slab
//! with a free object found, adopted or taken fresh.

use super::abandon::abandon_table;
use super::alloc::pop;
use super::maintenance::maintenance;
use super::shared::{alloc_shared, shares_class, take_all_stub_remote, SharedAlloc};
use super::slow_paths::{count, count_in, Slow};
use super::table::{as_owner, owner_table};
use super::table::{current_of, empty_slab, empty_table, list_head, Table};
use super::table::{ensure_arrays, list_move_to_tail, list_push, table_for};
use super::thread_heap::heap_or_init;
use super::thread_heap::refused_table;
use super::thread_heap::{set_refused, set_tls_table, take_refused, tls_table, Heap};
use crate::backend::segment::PAGE_SIZE;
use crate::backend::span;
use crate::objects::cache::{self, CacheLookup};
use crate::objects::protocol;
use crate::objects::scope;
use crate::objects::size_class::{NCLASSES, SIZES};
use crate::objects::slab::{slab_at, Slab, KIND_SMALL};
use crate::platform::valgrind;
use crate::sync::remote::remote_is_empty;
use crate::sync::Ordering;
use core::mem::size_of;
use core::ptr::null_mut;

/// Slabs looked at, per slow path, before taking a new slab.
const SCAN_LIMIT: usize = 16;
/// Slow paths between two maintenance passes of a heap.
const MAINTENANCE_EVERY: u32 = 256;

#[cold]
#[inline(never)]
pub(super) fn alloc_slow(class: usize) -> *mut u8 {
    let heap = heap_or_init();
    if heap.is_null() {
        return null_mut();
    }
    // SAFETY: heap is this thread's; tables come from current_table.
    unsafe {
        count_in(heap, Slow::Malloc, 1);
        (*heap).slow_count += 1;
        if (*heap).slow_count.is_multiple_of(MAINTENANCE_EVERY) {
            maintenance(heap, false);
        }
        // class < NCLASSES (alloc_small's contract): `get` only keeps a panic off this path.
        let Some(&size) = SIZES.get(class) else {
            return null_mut();
        };
        let size = size as i64;
        loop {
            let t = current_table(heap);
            if t.is_null() {
                return null_mut(); // no table for the thread's scope: refused, not elsewhere
            }
            if (*t).stock.avail < size && !refill(heap, t, size) {
                return null_mut();
            }
            if shares_class(t, class) {
                match alloc_shared(heap, t, class, size) {
                    SharedAlloc::Done(p) => return p,
                    SharedAlloc::Closed => continue,
                    SharedAlloc::Oom => return null_mut(),
                    SharedAlloc::Graduate => {}
                }
            }
            if !ensure_arrays(t) {
                return null_mut();
            }
            match find_slab(heap, t, class) {
                SlabSearch::Slab(s) => return pop(t, s, (*s).free, size),
                SlabSearch::Closed => continue,
                SlabSearch::Oom => return null_mut(),
            }
        }
    }
}

/// The thread's table to allocate in, after following closed scopes to their open ancestor.
/// Null when the thread's scope has no table and none can be made (metadata exhausted).
pub(super) unsafe fn current_table(heap: *mut Heap) -> *mut Table {
    // SAFETY: heap and its tables are this thread's; the refused state holds a reference on its
    // scope until it is given up here or by `leave`.
    unsafe {
        let mut t = tls_table();
        if t == refused_table() {
            let s = take_refused();
            let nt = table_for(heap, s);
            if nt.is_null() {
                set_refused(s); // still refused: the reference stays with the thread
                return null_mut();
            }
            scope::node_put(s);
            set_tls_table(nt);
            t = nt;
        }
        if t == empty_table() {
            t = (*heap).root;
            set_tls_table(t);
        }
        if (*t).dead || (*(*t).scope).is_closed() {
            if !(*t).dead {
                abandon_table(t);
            }
            let nt = table_for(heap, (*t).scope);
            set_tls_table(nt);
            t = nt;
        }
        t
    }
}

pub(super) enum SlabSearch {
    Slab(*mut Slab),
    Closed,
    Oom,
}

/// A slab of `t` for `class` with a free object, made current.
pub(super) unsafe fn find_slab(heap: *mut Heap, t: *mut Table, class: usize) -> SlabSearch {
    // SAFETY: t and its slabs belong to this thread.
    unsafe {
        let cur = current_of(t, class);
        if cur != empty_slab() {
            if ready(cur) {
                return SlabSearch::Slab(cur);
            }
            // Exhausted: move it to the tail so that the scan starts with older slabs, which
            // are the likeliest to have been freed into.
            list_move_to_tail(t, class, cur);
        }
        // Look at the oldest slabs first; a full one goes to the tail, so that successive slow
        // paths look at different slabs.
        let mut n = 0;
        while n < SCAN_LIMIT {
            let x = list_head(t, class);
            if x.is_null() || x == cur {
                break;
            }
            if ready(x) {
                count_in(heap, Slow::SlabScanned, n as u64 + 1);
                set_current(t, class, x);
                return SlabSearch::Slab(x);
            }
            list_move_to_tail(t, class, x);
            n += 1;
        }
        count_in(heap, Slow::SlabScanned, n as u64);
        match new_slab(heap, t, class) {
            SlabSearch::Slab(s) => {
                set_current(t, class, s);
                if ready(s) {
                    SlabSearch::Slab(s)
                } else {
                    SlabSearch::Oom
                }
            }
            other => other,
        }
    }
}

/// Makes `s` the slab the fast path of `t` pops for `class`; the previous one becomes eligible
/// for release when empty.
pub(super) unsafe fn set_current(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: t and its slabs are this thread's; the empty slab is never written.
    unsafe {
        let old = current_of(t, class);
        if old != empty_slab() {
            (*old).release_at = 0;
        }
        if s != empty_slab() {
            (*s).release_at = u32::MAX;
        }
        (*(*t).arrays).current[class] = s;
    }
}

/// Makes sure `s` has a free object if it can: takes remote frees, carves more objects.
pub(super) unsafe fn ready(s: *mut Slab) -> bool {
    // SAFETY: s is owned by this thread.
    unsafe {
        if !(*s).free.is_null() {
            return true;
        }
        if !remote_is_empty(&(*s).thread_free) {
            take_remote_frees(s);
            if !(*s).free.is_null() {
                return true;
            }
        }
        if (*s).carved < (*s).capacity {
            count(Slow::Carve);
            (*s).extend();
            return true;
        }
        false
    }
}

/// Takes the remote frees of a slab this thread owns: onto its free list, their bytes back into
/// the stock of the slab's table.
pub(super) unsafe fn take_remote_frees(s: *mut Slab) {
    // SAFETY: s is owned by this thread.
    unsafe {
        let n = (*s).take_remote();
        if n > 0 {
            count(Slow::RemoteTaken);
        }
        (*owner_table(s)).stock.avail += n as i64 * (*s).block_size as i64;
    }
}

/// Pages per slab of a class: at least 4 objects per slab. With 8, a class of 16–32 KiB had
/// slabs of 256 KiB, and a few live objects spread over them kept most of that committed and
/// free (`workingset` with log-uniform sizes up to 32 KiB: 3.8 MiB free in those slabs for 3.8
/// MiB live, peak RSS 16.6 MB; 12.6 MB with 4, for 0.2 % more instructions; tests/slab_size.rs).
pub(super) fn slab_pages(class: usize) -> usize {
    (4 * SIZES[class] as usize).div_ceil(PAGE_SIZE).max(1)
}

/// A slab for (`t.scope`, `class`): adopted from the cache's abandoned slabs, or fresh.
unsafe fn new_slab(heap: *mut Heap, t: *mut Table, class: usize) -> SlabSearch {
    // SAFETY: t is this thread's; cache pointers are used under their lock.
    unsafe {
        loop {
            let c = match cache::lock_cache((*t).scope, class) {
                CacheLookup::Locked(c) => c,
                CacheLookup::Closed => return SlabSearch::Closed,
                CacheLookup::Oom => return SlabSearch::Oom,
            };
            let s = (*c).pop_abandoned();
            if s.is_null() {
                (*c).refs.unlock();
                break;
            }
            // Adopt: the slab is ours from now on; a full one stays on our list and is
            // found again once frees come back to it.
            protocol::adopt_locked(s, (*t).owner_id);
            count_in(heap, Slow::Adopted, 1);
            (*s).table = as_owner(t);
            (*s).release_at = 0;
            (*c).refs.unlock();
            list_push(t, class, s);
            if ready(s) {
                return SlabSearch::Slab(s);
            }
        }
        let npages = slab_pages(class);
        let Some(span) = span::alloc_span(npages, 1) else {
            return SlabSearch::Oom;
        };
        count_in(heap, Slow::FreshSlab, 1);
        let s = slab_at(span.seg, span.idx);
        let size = SIZES[class];
        (*s).free = null_mut();
        (*s).used.store(0, Ordering::Relaxed);
        (*s).release_at = 0;
        (*s).block_size = size;
        (*s).table = as_owner(t);
        (*s).allocs.store(0, Ordering::Relaxed);
        (*s).thread_free.store(0, Ordering::Relaxed);
        (*s).carved = 0;
        // A shared slab keeps, after its blocks, the stub of each (see `frontend::shared`).
        let shared = (*t).owner_id != heap as usize;
        let per_block = size as usize + if shared { size_of::<*mut Slab>() } else { 0 };
        // per_block >= 16 (`max`: no division-by-zero panic on this path).
        (*s).capacity = (npages * PAGE_SIZE / per_block.max(1)) as u32;
        (*s).blocks_bytes = (*s).capacity * size;
        (*s).class = class as u16;
        (*s).kind = KIND_SMALL;
        (*s).start = (span.seg as *mut u8).add(span.idx * PAGE_SIZE);
        (*s).npages = npages as u32;
        (*s).page_idx = span.idx as u32;
        valgrind::make_noaccess((*s).start, npages * PAGE_SIZE);
        (*s).origins = if shared {
            let at = (*s)
                .start
                .add(((*s).blocks_bytes as usize).next_multiple_of(8));
            // Our metadata, written before each block is handed out: defined for memcheck.
            valgrind::make_defined(at, (*s).capacity as usize * size_of::<*mut Slab>());
            at.cast::<*mut Slab>()
        } else {
            null_mut()
        };
        (*s).anext = null_mut();
        (*s).aprev = null_mut();
        // Publishes the descriptor written above to the frees of other threads, which load
        // `owner` with Acquire in `protocol::free_not_owned` (a pointer to the slab's objects
        // reaches them through the program's own synchronisation after this store).
        (*s).owner.store((*t).owner_id, Ordering::Release);
        // Look the cache up again: it may have been killed (and released) meanwhile.
        let c = match cache::lock_cache((*t).scope, class) {
            CacheLookup::Locked(c) => c,
            other => {
                span::free_span(span.seg, span.idx, npages);
                return match other {
                    CacheLookup::Oom => SlabSearch::Oom,
                    _ => SlabSearch::Closed,
                };
            }
        };
        if !(*c).refs.tryget_locked() {
            // lock_cache returns live caches only; stay correct regardless.
            (*c).refs.unlock();
            span::free_span(span.seg, span.idx, npages);
            return SlabSearch::Closed;
        }
        (*s).cache = c;
        (*c).link_slab(s);
        (*c).refs.unlock();
        list_push(t, class, s);
        SlabSearch::Slab(s)
    }
}

/// Charges a new batch to the table's scope. On a refusal, first gives back this thread's other
/// stocks and takes its remote frees, then tries the exact amount; false = over a limit.
pub(super) unsafe fn refill(heap: *mut Heap, t: *mut Table, need: i64) -> bool {
    // SAFETY: t is this thread's table, which holds a reference on its scope.
    unsafe {
        count_in(heap, Slow::StockRefill, 1);
        let counter = &(*(*t).scope).counter;
        if (*t).stock.refill(counter, need).is_ok() {
            return true;
        }
        // Reclaim: this thread's stocks everywhere, and its remote frees.
        drain_stocks_except(heap, t);
        take_all_remote_frees(t);
        match (*t).stock.refill_exact(counter, need) {
            Ok(()) => true,
            Err(hit) => {
                hit.count_limit_hit();
                false
            }
        }
    }
}

/// Drains the stock of `t` above `keep` back to its scope's counter.
///
/// # Safety
/// `t` is a live table of this thread.
pub(super) unsafe fn drain_stock(t: *mut Table, keep: i64) {
    // SAFETY: t is this thread's, and holds a reference on its scope.
    unsafe { (*t).stock.drain(&(*(*t).scope).counter, keep) }
}

/// Returns the whole stock of every table of `heap` but `except` to the scope counters, before a
/// refusal is final.
pub(super) unsafe fn drain_stocks_except(heap: *mut Heap, except: *mut Table) {
    // SAFETY: heap and its tables are this thread's.
    unsafe {
        let mut x = (*heap).tables;
        while !x.is_null() {
            if x != except {
                drain_stock(x, 0);
            }
            x = (*x).next;
        }
    }
}

/// Takes the remote frees of every slab and stub of `t`.
pub(super) unsafe fn take_all_remote_frees(t: *mut Table) {
    // SAFETY: t and its slabs are this thread's.
    unsafe {
        take_all_stub_remote(t);
        for class in 0..NCLASSES {
            let mut s = list_head(t, class);
            while !s.is_null() {
                take_remote_frees(s);
                s = (*s).tnext;
            }
        }
    }
}

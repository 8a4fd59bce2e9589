//! Thread heaps and their per-scope tables: the fast paths.
//!
//! A thread's heap holds one *table* per scope the thread has allocated in. A table is the
//! fast path's whole world: per size class a current slab whose free list it pops, and a
//! *stock* of bytes pre-charged to the table's scope. Entering a scope swaps the thread-local
//! table pointer, so the malloc fast path is the same code in every scope:
//!
//! ```text
//! t = TLS.table; s = t.current[class]; b = s.free
//! if b == null || t.stock < size { slow }
//! s.free = b.next; s.used += 1; s.allocs += 1; t.stock -= size
//! ```
//! No atomic read-modify-write, no fence, no lock. A thread that has not allocated yet points
//! at `EMPTY_TABLE`, whose slabs are all the empty slab, so its first malloc takes the slow path,
//! which creates the heap: no separate initialisation test.
//!
//! Free finds the slab by masking (`segment::slab_of`). If this thread owns the slab, the object
//! goes on the slab's free list and its size back into the stock of the slab's table (which is
//! the table of the scope it was charged to: free returns to the origin, whatever scope the
//! freeing thread is in). Otherwise it is a remote free (`lifecycle::remote_push`), or, if the
//! owner exited, a free under the cache lock; large objects always go through their cache lock.
//!
//! Who touches what: a heap and its tables belong to their thread (`TLS`), except that
//! `Table::stock` is read by nobody else (charges are read from the scope counters) and slabs'
//! shared fields are documented in `segment::Slab`.

use crate::lifecycle::{
    list_tail, remote_is_empty, remote_pending, remote_push, remote_take, Linked,
};
use crate::os;
use crate::pool::Pool;
use crate::scope::{self, Attach, Cache, ScopeNode};
use crate::segment::{
    self, slab_of, Block, Slab, EMPTY_SLAB, KIND_HUGE, KIND_LARGE, KIND_SMALL, LARGE_MAX,
    OWNER_ABANDONED, OWNER_LARGE, PAGE_SIZE,
};
use crate::size_class::{LARGE_CLASS, NCLASSES, SIZES};
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use core::cell::{Cell, UnsafeCell};
use core::ptr::null_mut;

/// Bytes charged to a scope per refill of a table's stock: one atomic walk up the scope chain
/// per this many bytes allocated.
pub const STOCK_BATCH: i64 = 64 * 1024;
/// A stock above this (after frees) is partly returned to the scope counters, so that a thread
/// never sits on more than this much of a scope's limit.
pub const STOCK_HIGH: i64 = 2 * STOCK_BATCH;
/// Carve at most this many bytes of new objects into a slab's free list at a time, so that a
/// slab's untouched part stays uncommitted.
const EXTEND_BYTES: usize = 4096;
/// Slabs looked at, per slow path, before taking a new slab.
const SCAN_LIMIT: usize = 16;
/// Slow paths between two maintenance passes of a heap.
const MAINTENANCE_EVERY: u32 = 256;

/// A thread's table for one scope. Owned by its thread.
#[repr(C)]
pub struct Table {
    /// Per class, the slab the fast path pops from (`EMPTY_SLAB` when none).
    pub current: [*mut Slab; NCLASSES],
    /// Bytes charged to `scope` in advance and not yet handed out.
    pub stock: i64,
    pub heap: *mut Heap,
    /// The scope (holds a reference).
    pub scope: *mut ScopeNode,
    /// Per class, all slabs of this table (doubly linked through `tnext`/`tprev`).
    lists: [*mut Slab; NCLASSES],
    /// Guards that will restore this table (see `ScopeGuard`); a pinned table is not freed.
    pub pins: u32,
    /// Retired: its scope closed; it owns no slab and forwards to the ancestor's table.
    pub dead: bool,
    next: *mut Table,
}

/// A thread heap.
#[repr(C)]
pub struct Heap {
    tables: *mut Table,
    root: *mut Table,
    slow_count: u32,
}

struct EmptyTable(UnsafeCell<Table>);
// SAFETY: the empty table is never written: its slabs have no free object, so every path that
// would write it first takes the slow path, which replaces it.
unsafe impl Sync for EmptyTable {}
static EMPTY_TABLE: EmptyTable = EmptyTable(UnsafeCell::new(Table {
    current: [EMPTY_SLAB.0.get(); NCLASSES],
    stock: 0,
    heap: null_mut(),
    scope: null_mut(),
    lists: [null_mut(); NCLASSES],
    pins: 0,
    dead: false,
    next: null_mut(),
}));

fn empty_table() -> *mut Table {
    EMPTY_TABLE.0.get()
}

fn empty_slab() -> *mut Slab {
    EMPTY_SLAB.0.get()
}

static HEAPS: Pool<Heap> = Pool::new();
static TABLES: Pool<Table> = Pool::new();

struct ThreadState {
    table: Cell<*mut Table>,
    heap: Cell<*mut Heap>,
}

thread_local! {
    static TLS: ThreadState = const {
        ThreadState {
            table: Cell::new(EMPTY_TABLE.0.get()),
            heap: Cell::new(null_mut()),
        }
    };
}

impl Linked for Block {
    unsafe fn next(this: *mut Self) -> *mut Self {
        // SAFETY: guaranteed by the caller.
        unsafe { (*this).next }
    }
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        // SAFETY: guaranteed by the caller.
        unsafe { (*this).next = next }
    }
}

#[inline(always)]
fn tls_table() -> *mut Table {
    TLS.with(|t| t.table.get())
}

#[inline(always)]
fn tls_heap() -> *mut Heap {
    TLS.with(|t| t.heap.get())
}

fn set_tls_table(t: *mut Table) {
    TLS.with(|s| s.table.set(t));
}

// ---------------------------------------------------------------------------------------------
// Allocation.

/// Allocates an object of size class `class`. Null when out of memory or over a limit.
#[inline(always)]
pub fn alloc_small(class: usize) -> *mut u8 {
    let t = tls_table();
    // SAFETY: the TLS table is the empty table or a live table of this thread; its current slabs
    // are the empty slab or slabs this thread owns.
    unsafe {
        let s = *(*t).current.get_unchecked(class);
        let b = (*s).free;
        let size = *SIZES.get_unchecked(class) as i64;
        if b.is_null() || (*t).stock < size {
            return alloc_slow(class);
        }
        pop(t, s, b, size)
    }
}

/// Hands out `b`, the head of `s`'s free list, charging `size` to `t`'s stock.
///
/// # Safety
/// `t` and `s` are this thread's; `b` is `s.free`, non-null; the stock covers `size`.
#[inline(always)]
unsafe fn pop(t: *mut Table, s: *mut Slab, b: *mut Block, size: i64) -> *mut u8 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*s).free = (*b).next;
        (*s).used
            .store((*s).used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        (*s).allocs
            .store((*s).allocs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        (*t).stock -= size;
        b as *mut u8
    }
}

#[cold]
#[inline(never)]
fn alloc_slow(class: usize) -> *mut u8 {
    let heap = heap_or_init();
    if heap.is_null() {
        return null_mut();
    }
    // SAFETY: heap is this thread's; tables come from current_table.
    unsafe {
        (*heap).slow_count += 1;
        if (*heap).slow_count.is_multiple_of(MAINTENANCE_EVERY) {
            maintenance(heap, false);
        }
        let size = SIZES[class] as i64;
        loop {
            let t = current_table(heap);
            if (*t).stock < size && !refill(heap, t, size) {
                return null_mut();
            }
            match find_slab(heap, t, class) {
                Found::Slab(s) => return pop(t, s, (*s).free, size),
                Found::Closed => continue,
                Found::Oom => return null_mut(),
            }
        }
    }
}

/// The thread's table to allocate in, after following closed scopes to their open ancestor.
unsafe fn current_table(heap: *mut Heap) -> *mut Table {
    // SAFETY: heap and its tables are this thread's.
    unsafe {
        let mut t = tls_table();
        if t == empty_table() {
            t = (*heap).root;
            set_tls_table(t);
        }
        if (*t).dead || (*(*t).scope).is_closed() {
            if !(*t).dead {
                retire_table(t);
            }
            let nt = table_for(heap, (*t).scope);
            set_tls_table(nt);
            t = nt;
        }
        t
    }
}

enum Found {
    Slab(*mut Slab),
    Closed,
    Oom,
}

/// A slab of `t` for `class` with a free object, made current.
unsafe fn find_slab(heap: *mut Heap, t: *mut Table, class: usize) -> Found {
    // SAFETY: t and its slabs belong to this thread.
    unsafe {
        let cur = (*t).current[class];
        if cur != empty_slab() {
            if ready(cur) {
                return Found::Slab(cur);
            }
            // Exhausted: move it to the tail so that the scan starts with older slabs, which
            // are the likeliest to have been freed into.
            list_move_to_tail(t, class, cur);
        }
        // Look at the oldest slabs first; a full one goes to the tail, so that successive slow
        // paths look at different slabs.
        let mut n = 0;
        while n < SCAN_LIMIT {
            let x = (*t).lists[class];
            if x.is_null() || x == cur {
                break;
            }
            if ready(x) {
                set_current(t, class, x);
                return Found::Slab(x);
            }
            list_move_to_tail(t, class, x);
            n += 1;
        }
        match new_slab(heap, t, class) {
            Found::Slab(s) => {
                set_current(t, class, s);
                if ready(s) {
                    Found::Slab(s)
                } else {
                    Found::Oom
                }
            }
            other => other,
        }
    }
}

/// Makes `s` the slab the fast path of `t` pops for `class`; the previous one becomes eligible
/// for release when empty.
unsafe fn set_current(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: t and its slabs are this thread's; the empty slab is never written.
    unsafe {
        let old = (*t).current[class];
        if old != empty_slab() {
            (*old).retire_at = 0;
        }
        if s != empty_slab() {
            (*s).retire_at = u32::MAX;
        }
        (*t).current[class] = s;
    }
}

/// Makes sure `s` has a free object if it can: takes remote frees, carves more objects.
unsafe fn ready(s: *mut Slab) -> bool {
    // SAFETY: s is owned by this thread.
    unsafe {
        if !(*s).free.is_null() {
            return true;
        }
        if !remote_is_empty(&(*s).thread_free) {
            collect(s);
            if !(*s).free.is_null() {
                return true;
            }
        }
        if (*s).carved < (*s).capacity {
            extend(s);
            return true;
        }
        false
    }
}

/// Carves up to `EXTEND_BYTES` of never-used objects onto the free list.
unsafe fn extend(s: *mut Slab) {
    // SAFETY: s is owned by this thread; carved < capacity.
    unsafe {
        let size = (*s).block_size as usize;
        let n = ((EXTEND_BYTES / size).max(4) as u32).min((*s).capacity - (*s).carved) as usize;
        let first = (*s).start.add((*s).carved as usize * size);
        for i in 0..n {
            let b = first.add(i * size) as *mut Block;
            (*b).next = if i + 1 < n {
                first.add((i + 1) * size) as *mut Block
            } else {
                (*s).free
            };
        }
        (*s).free = first as *mut Block;
        (*s).carved += n as u32;
    }
}

/// Moves the remote frees of `s` onto its free list and out of its `used` count; returns how
/// many. The caller gives their bytes back (to a stock, or to the scope counters).
///
/// # Safety
/// The caller owns `s` (its thread, or its cache's lock for an abandoned slab).
unsafe fn take_remote(s: *mut Slab) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let (first, n) = remote_take::<Block>(&(*s).thread_free);
        if n > 0 {
            if !(*s).free.is_null() {
                (*list_tail(first, n)).next = (*s).free;
            }
            (*s).free = first;
            (*s).used
                .store((*s).used.load(Ordering::Relaxed) - n, Ordering::Relaxed);
        }
        n
    }
}

/// Takes the remote frees of an owned slab: onto its free list, their bytes back into the stock
/// of the slab's table.
unsafe fn collect(s: *mut Slab) {
    // SAFETY: s is owned by this thread.
    unsafe {
        let n = take_remote(s);
        (*(*s).table).stock += n as i64 * (*s).block_size as i64;
    }
}

/// Pages per slab of a class: at least 8 objects per slab.
fn slab_pages(class: usize) -> usize {
    (8 * SIZES[class] as usize).div_ceil(PAGE_SIZE).max(1)
}

/// A slab for (`t.scope`, `class`): adopted from the cache's abandoned slabs, or fresh.
unsafe fn new_slab(heap: *mut Heap, t: *mut Table, class: usize) -> Found {
    // SAFETY: t is this thread's; cache pointers are used under their lock.
    unsafe {
        loop {
            let c = match scope::lock_cache((*t).scope, class) {
                Attach::Locked(c) => c,
                Attach::Closed => return Found::Closed,
                Attach::Oom => return Found::Oom,
            };
            let s = (*c).pop_abandoned();
            if s.is_null() {
                (*c).life.unlock();
                break;
            }
            // Adopt: the slab is ours from now on; a full one stays on our list and is
            // found again once frees come back to it.
            (*s).owner.store(heap as usize, Ordering::Release);
            (*s).table = t;
            (*s).retire_at = 0;
            (*c).life.unlock();
            list_push(t, class, s);
            if ready(s) {
                return Found::Slab(s);
            }
        }
        let npages = slab_pages(class);
        let Some(span) = segment::alloc_span(npages, 1) else {
            return Found::Oom;
        };
        let s = (*span.seg).slabs.as_mut_ptr().add(span.idx);
        let size = SIZES[class];
        (*s).free = null_mut();
        (*s).used.store(0, Ordering::Relaxed);
        (*s).retire_at = 0;
        (*s).block_size = size;
        (*s).table = t;
        (*s).allocs.store(0, Ordering::Relaxed);
        (*s).thread_free.store(0, Ordering::Relaxed);
        (*s).carved = 0;
        (*s).capacity = (npages * PAGE_SIZE / size as usize) as u32;
        (*s).class = class as u16;
        (*s).kind = KIND_SMALL;
        (*s).start = (span.seg as *mut u8).add(span.idx * PAGE_SIZE);
        (*s).npages = npages as u32;
        (*s).page_idx = span.idx as u32;
        (*s).anext = null_mut();
        (*s).aprev = null_mut();
        (*s).owner.store(heap as usize, Ordering::Release);
        // Look the cache up again: it may have been killed (and released) meanwhile.
        let c = match scope::lock_cache((*t).scope, class) {
            Attach::Locked(c) => c,
            other => {
                segment::free_span(span.seg, span.idx, npages);
                return match other {
                    Attach::Oom => Found::Oom,
                    _ => Found::Closed,
                };
            }
        };
        if !(*c).life.try_get_locked() {
            // lock_cache returns live caches only; stay correct regardless.
            (*c).life.unlock();
            segment::free_span(span.seg, span.idx, npages);
            return Found::Closed;
        }
        (*s).cache = c;
        (*c).link_slab(s);
        (*c).life.unlock();
        list_push(t, class, s);
        Found::Slab(s)
    }
}

/// Charges a new batch to the table's scope. On a refusal, first gives back this thread's other
/// stocks and takes its remote frees, then tries the exact amount; false = over a limit.
unsafe fn refill(heap: *mut Heap, t: *mut Table, need: i64) -> bool {
    // SAFETY: t is this thread's table with a referenced scope.
    unsafe {
        let s = (*t).scope;
        let room = scope::headroom(s);
        let want = if room == u64::MAX {
            STOCK_BATCH
        } else {
            // Near a limit take smaller batches: at most an eighth of what is left.
            ((room / 8) as i64).clamp(0, STOCK_BATCH)
        }
        .max(need - (*t).stock);
        if scope::try_charge(s, want as u64).is_ok() {
            (*t).stock += want;
            return true;
        }
        // Reclaim: this thread's stocks everywhere, and its remote frees.
        flush_stocks_except(heap, t);
        collect_all(t);
        if (*t).stock >= need {
            return true;
        }
        match scope::try_charge(s, (need - (*t).stock) as u64) {
            Ok(()) => {
                (*t).stock = need;
                true
            }
            Err(hit) => {
                scope::count_limit_hit(hit);
                false
            }
        }
    }
}

/// Returns the stock above `keep` to the scope counters.
unsafe fn flush_stock(t: *mut Table, keep: i64) {
    // SAFETY: t is this thread's.
    unsafe {
        if (*t).stock > keep {
            scope::uncharge((*t).scope, ((*t).stock - keep) as u64);
            (*t).stock = keep;
        }
    }
}

/// Returns the whole stock of every table of `heap` but `except` to the scope counters, before a
/// refusal is final.
unsafe fn flush_stocks_except(heap: *mut Heap, except: *mut Table) {
    // SAFETY: heap and its tables are this thread's.
    unsafe {
        let mut x = (*heap).tables;
        while !x.is_null() {
            if x != except {
                flush_stock(x, 0);
            }
            x = (*x).next;
        }
    }
}

/// Takes the remote frees of every slab of `t`.
unsafe fn collect_all(t: *mut Table) {
    // SAFETY: t and its slabs are this thread's.
    unsafe {
        for class in 0..NCLASSES {
            let mut s = (*t).lists[class];
            while !s.is_null() {
                collect(s);
                s = (*s).tnext;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Free.

/// Frees an object of ours.
///
/// # Safety
/// `p` is a live object of this allocator.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: guaranteed by the caller: p is ours, so its segment header and slab exist.
    unsafe {
        let s = slab_of(p);
        if (*s).owner.load(Ordering::Relaxed) == tls_heap() as usize {
            let b = p as *mut Block;
            (*b).next = (*s).free;
            (*s).free = b;
            let used = (*s).used.load(Ordering::Relaxed) - 1;
            (*s).used.store(used, Ordering::Relaxed);
            let t = (*s).table;
            (*t).stock += (*s).block_size as i64;
            if used == (*s).retire_at || (*t).stock > STOCK_HIGH {
                free_local_tail(t, s);
            }
            return;
        }
        free_slow(s, p);
    }
}

#[cold]
#[inline(never)]
unsafe fn free_local_tail(t: *mut Table, s: *mut Slab) {
    // SAFETY: t and s are this thread's.
    unsafe {
        if (*t).stock > STOCK_HIGH {
            flush_stock(t, STOCK_BATCH);
        }
        if (*s).used.load(Ordering::Relaxed) == 0 && (*t).current[(*s).class as usize] != s {
            retire_slab(t, s);
        }
    }
}

/// Releases an empty slab of this thread: off its table and cache, pages to the back end.
unsafe fn retire_slab(t: *mut Table, s: *mut Slab) {
    // SAFETY: s is owned by this thread, empty, and not current.
    unsafe {
        list_remove(t, (*s).class as usize, s);
        let c = (*s).cache;
        (*c).life.lock();
        (*c).unlink_slab(s);
        let last = (*c).life.put_locked();
        (*c).life.unlock();
        segment::free_slab_span(s);
        if last {
            scope::release_cache(c);
        }
    }
}

#[cold]
#[inline(never)]
unsafe fn free_slow(s: *mut Slab, p: *mut u8) {
    // SAFETY: p is a live object of ours (caller's guarantee).
    unsafe {
        match (*s).kind {
            KIND_SMALL => {
                if (*s).owner.load(Ordering::Acquire) == OWNER_ABANDONED {
                    free_abandoned(s, p);
                } else {
                    remote_push(&(*s).thread_free, p as *mut Block);
                }
            }
            KIND_LARGE | KIND_HUGE => free_large(s),
            _ => os::fatal(b"free(): pointer is not a live allocation (double free?)"),
        }
    }
}

/// Frees into a slab whose thread exited: under the cache lock, uncharging the cache's scope.
unsafe fn free_abandoned(s: *mut Slab, p: *mut u8) {
    // SAFETY: p is live, so s is attached and its cache alive.
    unsafe {
        let c = (*s).cache;
        (*c).life.lock();
        if (*s).owner.load(Ordering::Acquire) != OWNER_ABANDONED {
            // Adopted meanwhile: an ordinary remote free.
            (*c).life.unlock();
            remote_push(&(*s).thread_free, p as *mut Block);
            return;
        }
        let b = p as *mut Block;
        (*b).next = (*s).free;
        (*s).free = b;
        (*s).used
            .store((*s).used.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        scope::uncharge((*c).scope, (*s).block_size as u64);
        sweep_abandoned_locked(c, s, false);
    }
}

/// With `c` locked: takes the remote frees of abandoned slab `s` (uncharging them), and releases
/// `s` if it is empty. Unlocks `c`; releases it if that was its last reference (`tree_locked`:
/// the caller holds the scope tree lock).
unsafe fn sweep_abandoned_locked(c: *mut Cache, s: *mut Slab, tree_locked: bool) {
    // SAFETY: the caller holds c's lock; s is abandoned in c, so the lock protects its lists.
    unsafe {
        let n = take_remote(s);
        if n > 0 {
            scope::uncharge((*c).scope, n as u64 * (*s).block_size as u64);
        }
        if (*s).used.load(Ordering::Relaxed) == 0 {
            (*c).unlink_slab(s);
            let last = (*c).life.put_locked();
            (*c).life.unlock();
            segment::free_slab_span(s);
            if last && tree_locked {
                scope::release_cache_tree_locked(c);
            } else if last {
                scope::release_cache(c);
            }
        } else {
            (*c).life.unlock();
        }
    }
}

/// Releases every abandoned slab that became empty through remote frees (periodic and on trim).
pub fn sweep_abandoned() {
    scope::for_each_cache_tree_locked(|c| {
        // SAFETY: under the tree lock no cache is released but by us, below; each cache's lists
        // are read under its lock.
        unsafe {
            loop {
                (*c).life.lock();
                let mut s = (*c).abandoned_head();
                while !s.is_null() {
                    let pending = remote_pending(&(*s).thread_free);
                    if pending > 0 && pending >= (*s).used.load(Ordering::Relaxed) {
                        break;
                    }
                    s = (*s).anext;
                }
                if s.is_null() {
                    (*c).life.unlock();
                    return;
                }
                let last = (*c).life.refs_locked() == 1 && (*c).life.is_dying_locked();
                sweep_abandoned_locked(c, s, true);
                if last {
                    return; // released: the cache is gone
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Large and huge objects.

/// Allocates a large or huge object (charged exactly, no stock).
pub fn alloc_large(size: usize, align: usize) -> *mut u8 {
    let in_segment = size <= LARGE_MAX && align <= LARGE_MAX;
    let usable = if in_segment {
        size.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE
    } else {
        size.div_ceil(segment::OS_PAGE) * segment::OS_PAGE
    };
    let heap = tls_heap();
    loop {
        // The calling thread's scope (no heap needed for large objects).
        let t = tls_table();
        // SAFETY: the TLS table is live or empty; its scope is referenced.
        let s = unsafe {
            if t == empty_table() || (*t).scope.is_null() {
                scope::root()
            } else {
                scope::nearest_live((*t).scope)
            }
        };
        if let Err(hit) = scope::try_charge(s, usable as u64) {
            let mut ok = false;
            if !heap.is_null() {
                // SAFETY: heap is this thread's.
                unsafe { flush_stocks_except(heap, null_mut()) };
                ok = scope::try_charge(s, usable as u64).is_ok();
            }
            if !ok {
                scope::count_limit_hit(hit);
                return null_mut();
            }
        }
        // SAFETY: the descriptor is ours until published through the cache below.
        unsafe {
            let slab = if in_segment {
                let npages = usable / PAGE_SIZE;
                let align_pages = (align / PAGE_SIZE).max(1);
                match segment::alloc_span(npages, align_pages) {
                    Some(span) => {
                        let sl = (*span.seg).slabs.as_mut_ptr().add(span.idx);
                        (*sl).kind = KIND_LARGE;
                        (*sl).block_size = usable as u32;
                        (*sl).start = (span.seg as *mut u8).add(span.idx * PAGE_SIZE);
                        (*sl).npages = npages as u32;
                        (*sl).page_idx = span.idx as u32;
                        (*sl).zeroed = span.zeroed;
                        (*sl).used.store(1, Ordering::Relaxed);
                        sl
                    }
                    None => null_mut(),
                }
            } else {
                segment::alloc_huge(size, align)
            };
            if slab.is_null() {
                scope::uncharge(s, usable as u64);
                return null_mut();
            }
            let c = match scope::lock_cache(s, LARGE_CLASS) {
                Attach::Locked(c) if (*c).life.try_get_locked() => c,
                Attach::Locked(c) => {
                    (*c).life.unlock();
                    release_large_memory(slab);
                    scope::uncharge(s, usable as u64);
                    continue;
                }
                Attach::Closed => {
                    release_large_memory(slab);
                    scope::uncharge(s, usable as u64);
                    continue;
                }
                Attach::Oom => {
                    release_large_memory(slab);
                    scope::uncharge(s, usable as u64);
                    return null_mut();
                }
            };
            (*slab).cache = c;
            (*slab).owner.store(OWNER_LARGE, Ordering::Release);
            (*c).add_large(usable as u64);
            (*c).life.unlock();
            return (*slab).start;
        }
    }
}

/// Usable size of a large or huge object.
///
/// # Safety
/// `s` describes a live large or huge object.
pub unsafe fn large_usable(s: *const Slab) -> usize {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if (*s).kind == KIND_HUGE {
            segment::huge_usable(s)
        } else {
            (*s).block_size as usize
        }
    }
}

unsafe fn release_large_memory(s: *mut Slab) {
    // SAFETY: s describes a large/huge object nobody uses any more.
    unsafe {
        if (*s).kind == KIND_HUGE {
            segment::free_huge(s);
        } else {
            segment::free_slab_span(s);
        }
    }
}

unsafe fn free_large(s: *mut Slab) {
    // SAFETY: s describes a live large object: its cache is alive (the object holds a reference).
    unsafe {
        let usable = large_usable(s);
        let c = (*s).cache;
        (*c).life.lock();
        scope::uncharge((*c).scope, usable as u64);
        (*c).remove_large(usable as u64);
        let last = (*c).life.put_locked();
        (*c).life.unlock();
        release_large_memory(s);
        if last {
            scope::release_cache(c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Heaps and tables.

static KEY_STATE: AtomicUsize = AtomicUsize::new(0);
static mut KEY: libc::pthread_key_t = 0;

/// This thread's heap, created on first use. Null when the OS refuses memory.
pub fn heap_or_init() -> *mut Heap {
    let h = tls_heap();
    if !h.is_null() {
        return h;
    }
    heap_init()
}

#[cold]
fn heap_init() -> *mut Heap {
    let h = HEAPS.alloc();
    if h.is_null() {
        return h;
    }
    // SAFETY: h is a fresh or recycled heap, ours alone.
    unsafe {
        (*h).tables = null_mut();
        (*h).root = null_mut();
        (*h).slow_count = 0;
        TLS.with(|s| s.heap.set(h));
        let root = new_table(h, scope::root());
        if root.is_null() {
            TLS.with(|s| s.heap.set(null_mut()));
            HEAPS.free(h);
            return null_mut();
        }
        (*root).pins = 1; // the root table lives as long as the heap
        (*h).root = root;
        if tls_table() == empty_table() {
            set_tls_table(root);
        }
        register_thread(h);
    }
    h
}

/// Arms the thread-exit destructor (and, once per process, the fork handlers). May call back into
/// malloc (glibc allocates in pthread_atfork and in pthread_setspecific for high keys); the heap
/// is complete by then.
unsafe fn register_thread(h: *mut Heap) {
    // SAFETY: KEY is written once, by the thread that wins the state transition 0 -> 1, before
    // the state becomes 2; other threads read it only after seeing 2.
    unsafe {
        if KEY_STATE.load(Ordering::Acquire) != 2 {
            if KEY_STATE
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let mut key: libc::pthread_key_t = 0;
                libc::pthread_key_create(&mut key, Some(on_thread_exit));
                KEY = key;
                KEY_STATE.store(2, Ordering::Release);
                crate::fork::install();
            } else {
                while KEY_STATE.load(Ordering::Acquire) != 2 {
                    core::hint::spin_loop();
                }
            }
        }
        libc::pthread_setspecific(KEY, h as *const libc::c_void);
    }
}

unsafe extern "C" fn on_thread_exit(arg: *mut libc::c_void) {
    let h = arg as *mut Heap;
    if h.is_null() || h != tls_heap() {
        return;
    }
    // SAFETY: h is this exiting thread's heap; nothing else touches it.
    unsafe { abandon_heap(h) };
}

/// Gives a heap back: every table retired (slabs released or abandoned to their caches, stocks
/// returned), the heap to the pool.
unsafe fn abandon_heap(h: *mut Heap) {
    // SAFETY: h is this thread's heap.
    unsafe {
        set_tls_table(empty_table());
        let mut t = (*h).tables;
        while !t.is_null() {
            let next = (*t).next;
            if !(*t).dead {
                retire_table(t);
            }
            scope::node_put((*t).scope);
            TABLES.free(t);
            t = next;
        }
        (*h).tables = null_mut();
        TLS.with(|s| s.heap.set(null_mut()));
        HEAPS.free(h);
    }
}

unsafe fn new_table(h: *mut Heap, s: *mut ScopeNode) -> *mut Table {
    let t = TABLES.alloc();
    if t.is_null() {
        return t;
    }
    // SAFETY: t is ours; s is referenced by the caller.
    unsafe {
        for c in 0..NCLASSES {
            (*t).current[c] = empty_slab();
            (*t).lists[c] = null_mut();
        }
        (*t).stock = 0;
        (*t).heap = h;
        scope::node_get(s);
        (*t).scope = s;
        (*t).pins = 0;
        (*t).dead = false;
        (*t).next = (*h).tables;
        (*h).tables = t;
    }
    t
}

/// The heap's table for the nearest open scope at or above `s`, created on first use; tables of
/// closed scopes met on the way are retired and, when unpinned, freed.
pub unsafe fn table_for(h: *mut Heap, s: *mut ScopeNode) -> *mut Table {
    let target = scope::nearest_live(s);
    // SAFETY: h is this thread's heap.
    unsafe {
        let current = tls_table();
        let mut prev: *mut Table = null_mut();
        let mut t = (*h).tables;
        while !t.is_null() {
            let next = (*t).next;
            if (*t).scope == target && !(*t).dead {
                if !prev.is_null() {
                    // Move to front: the scopes a thread enters most are found first.
                    (*prev).next = next;
                    (*t).next = (*h).tables;
                    (*h).tables = t;
                }
                return t;
            }
            if t != current && (*t).pins == 0 && ((*t).dead || (*(*t).scope).is_closed()) {
                if !(*t).dead {
                    retire_table(t);
                }
                if prev.is_null() {
                    (*h).tables = next;
                } else {
                    (*prev).next = next;
                }
                scope::node_put((*t).scope);
                TABLES.free(t);
            } else {
                prev = t;
            }
            t = next;
        }
        let t = new_table(h, target);
        if t.is_null() {
            return (*h).root;
        }
        t
    }
}

/// Retires a table: stock returned, empty slabs released, the others abandoned to their caches.
unsafe fn retire_table(t: *mut Table) {
    // SAFETY: t and its slabs are this thread's.
    unsafe {
        for class in 0..NCLASSES {
            set_current(t, class, empty_slab());
            loop {
                let s = (*t).lists[class];
                if s.is_null() {
                    break;
                }
                collect(s);
                if (*s).used.load(Ordering::Relaxed) == 0 {
                    retire_slab(t, s);
                    continue;
                }
                list_remove(t, class, s);
                let c = (*s).cache;
                (*c).life.lock();
                (*s).table = null_mut();
                (*s).owner.store(OWNER_ABANDONED, Ordering::Release);
                (*c).push_abandoned(s);
                // Remote frees that raced with the hand-over are taken now, under the lock.
                let n = take_remote(s);
                (*t).stock += n as i64 * (*s).block_size as i64;
                if (*s).used.load(Ordering::Relaxed) == 0 {
                    sweep_abandoned_locked(c, s, false);
                } else {
                    (*c).life.unlock();
                }
            }
        }
        flush_stock(t, 0);
        (*t).dead = true;
    }
}

/// Periodic and on-demand upkeep of this thread's heap: tables of closed scopes are retired and
/// freed, empty slabs released (`force`), abandoned slabs swept, the decay run.
unsafe fn maintenance(h: *mut Heap, force: bool) {
    // SAFETY: h is this thread's heap.
    unsafe {
        // table_for with the root reaps closed tables on its way.
        table_for(h, scope::root());
        if force {
            let mut t = (*h).tables;
            while !t.is_null() {
                if !(*t).dead {
                    collect_all(t);
                    for class in 0..NCLASSES {
                        let mut s = (*t).lists[class];
                        while !s.is_null() {
                            let next = (*s).tnext;
                            if (*s).used.load(Ordering::Relaxed) == 0 {
                                if (*t).current[class] == s {
                                    set_current(t, class, empty_slab());
                                }
                                retire_slab(t, s);
                            }
                            s = next;
                        }
                    }
                }
                t = (*t).next;
            }
        }
    }
    let now = os::now_ms();
    let due = NEXT_SWEEP.load(Ordering::Relaxed);
    if force
        || (now >= due
            && NEXT_SWEEP
                .compare_exchange(
                    due,
                    now + segment::DECAY_MS.load(Ordering::Relaxed).max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok())
    {
        sweep_abandoned();
    }
    segment::tick(force);
}

static NEXT_SWEEP: AtomicU64 = AtomicU64::new(0);

/// `trim()`: everything this thread can give back, now.
pub fn trim() {
    let h = tls_heap();
    if !h.is_null() {
        // SAFETY: h is this thread's heap.
        unsafe { maintenance(h, true) };
    } else {
        sweep_abandoned();
        segment::tick(true);
    }
}

/// Returns the pages of freed heaps and tables to the OS (`trim`).
pub fn trim_pools() {
    HEAPS.trim();
    TABLES.trim();
}

/// Reaps this thread's tables of closed scopes (for `global_stats`).
pub fn reap() {
    let h = tls_heap();
    if !h.is_null() {
        // SAFETY: h is this thread's heap.
        unsafe { table_for(h, scope::root()) };
    }
}

/// Heaps in use.
pub fn heaps_in_use() -> usize {
    HEAPS.in_use()
}

// A table's slab list per class: doubly linked through `tnext`/`tprev`, null-terminated forward;
// the head's `tprev` points at the tail, so moving a slab to the tail costs O(1).

fn list_push(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: t and s are this thread's; s is on no table list.
    unsafe {
        let head = (*t).lists[class];
        (*s).tnext = head;
        if head.is_null() {
            (*s).tprev = s;
        } else {
            (*s).tprev = (*head).tprev;
            (*head).tprev = s;
        }
        (*t).lists[class] = s;
    }
}

fn list_remove(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: s is on t's list for class.
    unsafe {
        let head = (*t).lists[class];
        let next = (*s).tnext;
        if s == head {
            if !next.is_null() {
                (*next).tprev = (*s).tprev;
            }
            (*t).lists[class] = next;
        } else {
            let prev = (*s).tprev;
            (*prev).tnext = next;
            if next.is_null() {
                (*head).tprev = prev;
            } else {
                (*next).tprev = prev;
            }
        }
        (*s).tnext = null_mut();
        (*s).tprev = null_mut();
    }
}

fn list_move_to_tail(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: s is on t's list for class.
    unsafe {
        if (*s).tnext.is_null() {
            return; // already the tail
        }
        list_remove(t, class, s);
        let head = (*t).lists[class]; // non-null: s had a successor
        let tail = (*head).tprev;
        (*tail).tnext = s;
        (*s).tprev = tail;
        (*s).tnext = null_mut();
        (*head).tprev = s;
    }
}

// ---------------------------------------------------------------------------------------------
// Scope entry for the public API.

/// Makes the table of `s` current; returns the previous table (pinned), or null if the heap
/// could not be created.
pub fn enter(s: *mut ScopeNode) -> *mut Table {
    let h = heap_or_init();
    if h.is_null() {
        return null_mut();
    }
    // SAFETY: h is this thread's heap.
    unsafe {
        let prev = tls_table();
        let t = table_for(h, s);
        if prev != empty_table() {
            (*prev).pins += 1;
        }
        set_tls_table(t);
        prev
    }
}

/// Restores the table returned by `enter`.
///
/// # Safety
/// `prev` came from `enter` on this thread and is restored once.
pub unsafe fn leave(prev: *mut Table) {
    if prev.is_null() {
        return;
    }
    // SAFETY: prev is pinned, so it was not freed; the empty table is never written.
    unsafe {
        if prev != empty_table() {
            (*prev).pins -= 1;
        }
    }
    set_tls_table(prev);
}

/// The scope the calling thread allocates in: the root when it has no table yet, the nearest open
/// ancestor when its scope was closed.
pub fn current_scope() -> *mut ScopeNode {
    let t = tls_table();
    // SAFETY: the TLS table is empty or live.
    unsafe {
        if t == empty_table() || (*t).scope.is_null() {
            scope::root()
        } else {
            scope::nearest_live((*t).scope)
        }
    }
}

/// Whether `p` (ours) is on the free list of a slab this thread owns: a double free (check mode).
pub fn is_double_free(p: *const u8) -> bool {
    // SAFETY: the caller checked that p is ours.
    unsafe {
        let s = slab_of(p);
        match (*s).kind {
            KIND_SMALL => {
                if (*s).owner.load(Ordering::Relaxed) != tls_heap() as usize {
                    return false;
                }
                let mut b = (*s).free;
                let mut n = 0;
                while !b.is_null() && n <= (*s).capacity {
                    if b as *const u8 == p {
                        return true;
                    }
                    b = (*b).next;
                    n += 1;
                }
                false
            }
            KIND_LARGE | KIND_HUGE => false,
            _ => true,
        }
    }
}

/// The fork child has only this thread: heaps of the other threads are lost (their memory stays
/// mapped but unused), as in every allocator.
pub fn pools_lock(on: bool) {
    if on {
        HEAPS.lock();
        TABLES.lock();
    } else {
        TABLES.unlock();
        HEAPS.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(t: *mut Table) -> Vec<*mut Slab> {
        let mut v = Vec::new();
        // SAFETY: the test's table and slabs are live.
        unsafe {
            let mut s = (*t).lists[0];
            while !s.is_null() {
                v.push(s);
                s = (*s).tnext;
            }
            if let Some(&tail) = v.last() {
                assert_eq!((*(*t).lists[0]).tprev, tail, "the head's prev is the tail");
            }
        }
        v
    }

    #[test]
    fn table_slab_lists_push_remove_and_rotate_in_constant_time() {
        // SAFETY: an all-zero Table is valid (null pointers, zero counters).
        let mut table: Box<Table> = Box::new(unsafe { core::mem::zeroed() });
        let t: *mut Table = &mut *table;
        let mut slabs: Vec<Slab> = (0..4).map(|_| Slab::empty()).collect();
        let s: Vec<*mut Slab> = slabs.iter_mut().map(|x| x as *mut Slab).collect();
        for &x in &s {
            list_push(t, 0, x);
        }
        assert_eq!(order(t), vec![s[3], s[2], s[1], s[0]]);
        list_move_to_tail(t, 0, s[3]);
        assert_eq!(order(t), vec![s[2], s[1], s[0], s[3]]);
        list_move_to_tail(t, 0, s[1]);
        assert_eq!(order(t), vec![s[2], s[0], s[3], s[1]]);
        list_move_to_tail(t, 0, s[1]); // already the tail
        assert_eq!(order(t), vec![s[2], s[0], s[3], s[1]]);
        list_remove(t, 0, s[1]); // the tail
        assert_eq!(order(t), vec![s[2], s[0], s[3]]);
        list_remove(t, 0, s[2]); // the head
        assert_eq!(order(t), vec![s[0], s[3]]);
        list_remove(t, 0, s[0]);
        list_remove(t, 0, s[3]);
        assert!(order(t).is_empty());
    }
}

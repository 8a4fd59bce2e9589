//! Thread heaps: the thread-local pointers of the fast paths, a heap's creation on first use,
//! its hand-over at thread exit, scope entry and exit, and the fork handlers.

use super::abandon::abandon_table;
use super::slow_paths::{self, Counts};
use super::table::{empty_table, Table};
use super::table::{
    free_index, new_table, table_for, DROP_AT_LEAST, EMPTY_TABLE, REFUSED_TABLE, TABLES,
};
use crate::backend::pool::Pool;
use crate::objects::scope::{self, ScopeNode};
use crate::objects::size_class::NCLASSES;
use crate::objects::slab::{Slab, KIND_SMALL};
use crate::sync::Ordering;
use core::cell::Cell;
use core::ptr::null_mut;

#[repr(C)]
pub struct Heap {
    /// All the heap's tables (linked through `next`).
    pub(super) tables: *mut Table,
    pub(super) root: *mut Table,
    /// The table of `scope::shared()`: the slabs that small scopes' first objects share (null if
    /// it could not be made: every table then has slabs of its own).
    pub(super) shared: *mut Table,
    pub(super) slow_count: u32,
    /// Tables on `tables`.
    pub(super) ntables: usize,
    /// The index of `tables` by scope (`table::table_for`): `nbuckets` (0 or a power of two)
    /// chains through `Table::hnext`, in an array mapped from the OS.
    pub(super) buckets: *mut *mut Table,
    pub(super) nbuckets: usize,
    /// `table_for` drops closed tables before making a new one once `ntables` reaches this.
    pub(super) drop_at: usize,
    /// How often each slow path ran on this heap (`slow_paths`).
    pub(super) slow: Counts,
    /// Per class, the stub `shared::stub_for` found or made last (null or a live stub of one of
    /// this heap's tables: a table's stubs leave it, in `shared::abandon_stubs`, only after
    /// their hint is cleared), so that a small scope's slow path finds its stub without walking
    /// its table's list.
    pub(super) stub_hint: [*mut Slab; NCLASSES],
    /// Released stubs kept for this heap's next ones (linked through `tnext`, at most
    /// `shared::SPARE_STUBS_MAX`): a request scope makes and releases a stub per class it
    /// touches, which the pool's lock and bitmap would otherwise see each time.
    pub(super) spare_stubs: *mut Slab,
    pub(super) nspare_stubs: u32,
}

pub(super) static HEAPS: Pool<Heap> = Pool::new();

crate::platform::tls::fast_tls! {
    tls_table, set_tls_table: Table = sym EMPTY_TABLE;
    tls_heap, set_tls_heap: Heap = null;
}

thread_local! {
    /// While the TLS table is the refused table: the scope entered (a reference held), else null.
    static REFUSED: Cell<*mut ScopeNode> = const { Cell::new(null_mut()) };
}

pub(super) fn refused_table() -> *mut Table {
    REFUSED_TABLE.get()
}

/// The scope a refused thread entered (a reference moves to the caller), or null.
pub(super) fn take_refused() -> *mut ScopeNode {
    REFUSED.with(|s| s.replace(null_mut()))
}

/// Makes the refused table current, for scope `s` (whose reference moves to the thread).
pub(super) fn set_refused(s: *mut ScopeNode) {
    REFUSED.with(|t| t.set(s));
    set_tls_table(refused_table());
}

// ---------------------------------------------------------------------------------------------
// Heaps and tables.

/// Retires this thread's table of `s`, a scope the calling thread just closed, unless it is the
/// current table or pinned (`table::retire_closed_table`). Nothing when the thread has no heap.
///
/// # Safety
/// `s` is a live node on which the caller holds a reference.
pub unsafe fn retire_closed(s: *mut ScopeNode) {
    let h = tls_heap();
    if h.is_null() {
        return;
    }
    // SAFETY: h is this thread's heap; the caller's reference keeps s alive.
    unsafe { super::table::retire_closed_table(h, s) };
}

/// This thread's heap, created on first use. Null when the OS refuses memory.
pub fn heap_or_init() -> *mut Heap {
    let h = tls_heap();
    if !h.is_null() {
        return h;
    }
    heap_init()
}

#[cold]
pub(super) fn heap_init() -> *mut Heap {
    let h = HEAPS.alloc();
    if h.is_null() {
        return h;
    }
    // SAFETY: h is a fresh or recycled heap, ours alone.
    unsafe {
        (*h).tables = null_mut();
        (*h).root = null_mut();
        (*h).shared = null_mut();
        (*h).slow_count = 0;
        (*h).ntables = 0;
        (*h).buckets = null_mut();
        (*h).nbuckets = 0;
        (*h).drop_at = DROP_AT_LEAST;
        (*h).slow.clear();
        (*h).stub_hint = [null_mut(); NCLASSES];
        (*h).spare_stubs = null_mut();
        (*h).nspare_stubs = 0;
        set_tls_heap(h);
        let root = new_table(h, scope::root());
        if root.is_null() {
            set_tls_heap(null_mut());
            HEAPS.free(h);
            return null_mut();
        }
        (*root).pins = 1; // the root table lives as long as the heap
        (*h).root = root;
        let shared = new_table(h, scope::shared());
        if !shared.is_null() {
            (*shared).pins = 1; // so does the shared table
        }
        (*h).shared = shared;
        if tls_table() == empty_table() {
            set_tls_table(root);
        }
        register_thread(h);
    }
    h
}

/// Arms the thread-exit hook (and, once per process, the fork handlers). May call back into
/// malloc (glibc allocates in pthread_atfork and in pthread_setspecific for high keys); the heap
/// is complete by then. If the OS refuses the key, the heap works but its thread's exit is not
/// seen: its slabs stay with the dead thread (memory is lost, nothing is corrupted).
///
/// # Safety
/// `h` is this thread's complete heap.
pub(super) unsafe fn register_thread(h: *mut Heap) {
    crate::platform::fork::install(fork_prepare, fork_after, fork_child);
    crate::platform::thread::arm_exit(h as *mut libc::c_void, on_thread_exit);
}

/// `fork` prepare handler: every allocator lock, in the lock order.
unsafe extern "C" fn fork_prepare() {
    scope::lock_for_fork();
    crate::backend::lock_for_fork();
    scope::pools_lock(true);
    pools_lock(true);
    #[cfg(feature = "secure")]
    super::quarantine::lock_for_fork();
}

/// `fork` parent and child handler: releases what `fork_prepare` took.
unsafe extern "C" fn fork_after() {
    #[cfg(feature = "secure")]
    super::quarantine::unlock_after_fork();
    pools_lock(false);
    scope::pools_lock(false);
    crate::backend::unlock_after_fork();
    scope::unlock_after_fork();
}

/// `fork` child handler: releases the locks, then gives back the heaps of the threads that do
/// not exist in the child, as their exit would have: their stocks go back to the scopes'
/// counters (or a limited scope would stay pinned near its limit for ever), their empty slabs
/// are released and the others abandoned to their caches, where frees and adoption find them.
unsafe extern "C" fn fork_child() {
    // SAFETY: called once, in the child, by the only thread (the one that forked), which took
    // the locks in `fork_prepare`.
    unsafe { fork_after() };
    let me = tls_heap();
    HEAPS.for_each(|h, live| {
        if live && h != me {
            // SAFETY: the heap's thread does not exist in the child: nothing else touches it,
            // and no `leave` will ever restore one of its tables.
            unsafe { release_dead_heap(h) };
        }
    });
}

/// Gives back the heap of a thread that no longer exists (a fork child's other threads): every
/// table abandoned and freed, pinned or not, then the heap.
///
/// # Safety
/// `h` is a live heap of a thread that will never run again; the caller is the only thread.
unsafe fn release_dead_heap(h: *mut Heap) {
    // SAFETY: per the contract, h and its tables are ours alone now.
    unsafe {
        let mut t = (*h).tables;
        while !t.is_null() {
            let next = (*t).next;
            if !(*t).dead {
                abandon_table(t);
            }
            scope::node_put((*t).scope);
            TABLES.free(t);
            t = next;
        }
        (*h).tables = null_mut();
        (*h).ntables = 0;
        free_index(h);
        (*h).root = null_mut();
        (*h).shared = null_mut();
        super::shared::free_spare_stubs(h);
        slow_paths::retire(h);
        HEAPS.free(h);
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
/// returned), the unpinned tables and the heap to their pools. A pinned table is kept, orphaned
/// (`heap` null): a `leave` may still restore it after this (from another library's key
/// destructor or a C++ `thread_local`), and the last such `leave` frees it.
pub(super) unsafe fn abandon_heap(h: *mut Heap) {
    // SAFETY: h is this thread's complete heap (its root is non-null); its tables are this
    // thread's, and a table with pins > 0 is not freed (a token of `enter` still refers to it).
    unsafe {
        if tls_table() == refused_table() {
            scope::node_put(take_refused());
        }
        set_tls_table(empty_table());
        (*(*h).root).pins -= 1; // the heap's own pins on its root and shared tables
        if !(*h).shared.is_null() {
            (*(*h).shared).pins -= 1;
        }
        let mut t = (*h).tables;
        while !t.is_null() {
            let next = (*t).next;
            if !(*t).dead {
                abandon_table(t);
            }
            if (*t).pins == 0 {
                scope::node_put((*t).scope);
                TABLES.free(t);
            } else {
                (*t).heap = null_mut();
                (*t).next = null_mut();
            }
            t = next;
        }
        (*h).tables = null_mut();
        (*h).ntables = 0;
        free_index(h);
        (*h).root = null_mut();
        (*h).shared = null_mut();
        super::shared::free_spare_stubs(h);
        set_tls_heap(null_mut());
        slow_paths::retire(h);
        HEAPS.free(h);
    }
}

// ---------------------------------------------------------------------------------------------
// Scope entry for the public API.

/// Makes the table of `s` current; returns a token for `leave`: the previous table (pinned), or
/// the refused scope tagged with bit 0 when the thread was refused; null if the heap could not
/// be created. When no table can be made for `s`, the refused table is made current: the thread
/// is in `s` but every allocation retries the table and is refused until it can be made.
///
/// # Safety
/// `s` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn enter(s: *mut ScopeNode) -> *mut Table {
    let h = heap_or_init();
    if h.is_null() {
        return null_mut();
    }
    // SAFETY: h is this thread's heap; prev is the empty, the refused or a live table of this
    // thread; scope nodes are at least 2-aligned, so bit 0 of a tagged token is free.
    unsafe {
        let prev = tls_table();
        let t = table_for(h, s);
        let token = if prev == refused_table() {
            (take_refused() as usize | 1) as *mut Table
        } else {
            if prev != empty_table() {
                (*prev).pins += 1;
            }
            prev
        };
        if t.is_null() {
            scope::node_get(s);
            set_refused(s);
        } else {
            set_tls_table(t);
        }
        token
    }
}

/// Restores what the token of `enter` names.
///
/// # Safety
/// `prev` came from `enter` on this thread and is restored once.
pub unsafe fn leave(prev: *mut Table) {
    if prev.is_null() {
        return;
    }
    if tls_table() == refused_table() {
        // SAFETY: the refused state holds a reference on its scope, given up here.
        unsafe { scope::node_put(take_refused()) };
    }
    if prev as usize & 1 != 0 {
        // The thread was refused when it entered: the token holds that scope's reference.
        set_refused((prev as usize & !1) as *mut ScopeNode);
        return;
    }
    // SAFETY: prev is pinned, so it was not freed (thread exit keeps pinned tables); the empty
    // table is never written. An orphaned table (`heap` null) is on no heap's list, so when its
    // last pin goes nothing else refers to it.
    unsafe {
        if prev != empty_table() {
            (*prev).pins -= 1;
            if (*prev).heap.is_null() && (*prev).pins == 0 {
                // Its thread's heap was given back: the next allocation makes a new heap.
                scope::node_put((*prev).scope);
                TABLES.free(prev);
                set_tls_table(empty_table());
                return;
            }
        }
    }
    set_tls_table(prev);
}

/// The scope the calling thread allocates in: the root when it has no table yet, the nearest open
/// ancestor when its scope was closed.
pub fn current_scope() -> *mut ScopeNode {
    let t = tls_table();
    if t == refused_table() {
        // SAFETY: the refused state holds a reference on its scope.
        return unsafe { scope::nearest_live(REFUSED.with(|s| s.get())) };
    }
    // SAFETY: the TLS table is empty or live.
    unsafe {
        if t == empty_table() || (*t).scope.is_null() {
            scope::root()
        } else {
            scope::nearest_live((*t).scope)
        }
    }
}

/// Heaps in use.
pub fn heaps_in_use() -> usize {
    HEAPS.in_use()
}

/// mapped but unused), as in every allocator.
pub fn pools_lock(on: bool) {
    if on {
        HEAPS.lock();
        TABLES.lock();
        super::table::ARRAYS.lock();
        super::shared::STUBS.lock();
    } else {
        super::shared::STUBS.unlock();
        super::table::ARRAYS.unlock();
        TABLES.unlock();
        HEAPS.unlock();
    }
}

/// Whether objects allocated now by this thread go where `s`'s objects are charged: `s` is a
/// small-object slab of this thread, of its current table (so a realloc need not look up the
/// origin).
///
/// # Safety
/// `s` describes a live object of ours.
#[inline]
pub unsafe fn charges_current_scope(s: *const Slab) -> bool {
    let heap = tls_heap();
    // SAFETY: s is live (the contract); its table is read only when this thread owns the slab
    // (this thread wrote it), and then it is a live table of this thread.
    unsafe {
        (*s).kind == KIND_SMALL
            && !heap.is_null()
            && (*s).owner.load(Ordering::Relaxed) == heap as usize
            && super::table::owner_table(s) == tls_table()
    }
}

//! Tables: a thread's per-scope fast-path state (current slab and slab list per size class,
//! and the stock), and the heap's lookup of its table for a scope.

use super::abandon::abandon_table;
use super::thread_heap::{tls_table, Heap};
use crate::accounting::stock::Stock;
use crate::backend::pool::{Pool, METADATA_MAPPED};
use crate::objects::scope::{self, ScopeNode};
use crate::objects::size_class::NCLASSES;
use crate::objects::slab::{OwnerTable, Slab, EMPTY_SLAB};
use crate::platform::os;
use crate::sync::Ordering;
use core::cell::{Cell, UnsafeCell};
use core::mem::size_of;
use core::ptr::null_mut;

thread_local! {
    /// Tables the calling thread's lookups (`table_for`) have looked at, for the tests.
    static LOOKUP_VISITS: Cell<u64> = const { Cell::new(0) };
}

/// Tables the calling thread's lookups have looked at so far (`testing::table_lookup_visits`).
pub fn lookup_visits() -> u64 {
    LOOKUP_VISITS.with(|v| v.get())
}

fn count_visit() {
    LOOKUP_VISITS.with(|v| v.set(v.get() + 1));
}

/// A table's per-class arrays, mapped only once the table allocates a class from slabs of its
/// own (`ensure_arrays`): until then the table points at [`EMPTY_ARRAYS`], and a table costs
/// memory in proportion to what it uses, not 81 entries (issue 10).
#[repr(C)]
pub struct ClassArrays {
    /// Per class, the slab the fast path pops from (`EMPTY_SLAB` when none).
    pub current: [*mut Slab; NCLASSES],
    /// Per class, all slabs of the table (doubly linked through `tnext`/`tprev`).
    pub(super) lists: [*mut Slab; NCLASSES],
}

/// The arrays of a table that has none of its own: every class empty. Never written.
pub(super) struct EmptyArrays(UnsafeCell<ClassArrays>);
// SAFETY: never written: its current slabs are the empty slab, whose free list is null, so the
// fast path leaves for the slow path, which gives the table arrays of its own before writing.
unsafe impl Sync for EmptyArrays {}
pub(super) static EMPTY_ARRAYS: EmptyArrays = EmptyArrays(UnsafeCell::new(ClassArrays {
    current: [EMPTY_SLAB.0.get(); NCLASSES],
    lists: [null_mut(); NCLASSES],
}));

pub(super) static ARRAYS: Pool<ClassArrays> = Pool::new();

/// Tables' class arrays in existence (`testing`: a table pays for them only once it has slabs).
pub fn class_arrays_in_use() -> usize {
    ARRAYS.in_use()
}

/// A thread's table for one scope. Owned by its thread.
#[repr(C)]
pub struct Table {
    /// The per-class arrays: [`EMPTY_ARRAYS`] until the table has slabs of its own. The fast
    /// path reads `arrays.current[class]`; this word shares its line with the stock.
    pub arrays: *mut ClassArrays,
    /// Bytes charged to `scope` in advance (`avail`, what the fast path consumes), the drain mark
    /// the free path compares with, and what the stock holds charged.
    pub stock: Stock,
    /// The heap whose list holds this table; null once orphaned (kept pinned past its thread's
    /// heap, see `abandon_heap`).
    pub heap: *mut Heap,
    /// The scope (holds a reference).
    pub scope: *mut ScopeNode,
    /// Guards that will restore this table (see `ScopeGuard`); a pinned table is not freed.
    pub pins: u32,
    /// Retired: its scope closed; it owns no slab and forwards to the ancestor's table.
    pub dead: bool,
    /// Whether the table allocates its first objects of each class from the heap's shared slabs
    /// (through a stub per class, see `frontend::shared`): every table but the heap's root
    /// table and its shared table.
    pub shares: bool,
    /// What its slabs' `owner` holds: the heap's address, or for the shared table the address
    /// plus [`SHARED_OWNER`], so that a free of a shared object never takes the local fast path.
    pub owner_id: usize,
    /// The table's stubs, one per class it allocated from shared slabs (linked through
    /// `tnext`/`tprev`; few: a class leaves them after `shared::GRADUATE_AT` objects).
    pub(super) stubs: *mut Slab,
    /// Bit `c` set: `stubs` holds the stub of class `c` (so a class's first shared object does
    /// not walk the list to learn that it has none).
    pub(super) stub_mask: u128,
    /// The heap's list of all its tables.
    pub(super) next: *mut Table,
    /// The next table in this table's chain of the heap's index (see `table_for`).
    pub(super) hnext: *mut Table,
}

/// A table that is never written (transparent: its address is the table's, for `fast_tls!`).
#[repr(transparent)]
pub(super) struct EmptyTable(UnsafeCell<Table>);
// SAFETY: the empty table is never written: its slabs have no free object, so every path that
// would write it first takes the slow path, which replaces it.
unsafe impl Sync for EmptyTable {}
pub(super) static EMPTY_TABLE: EmptyTable = EmptyTable::new();

/// The table of a thread whose scope's table could not be made (see `thread_heap::enter`): like
/// the empty table, never written, so every allocation takes the slow path, which retries.
pub(super) static REFUSED_TABLE: EmptyTable = EmptyTable::new();

impl EmptyTable {
    /// A table with no slab and no stock.
    const fn new() -> EmptyTable {
        EmptyTable(UnsafeCell::new(Table {
            arrays: EMPTY_ARRAYS.0.get(),
            stock: Stock::EMPTY,
            heap: null_mut(),
            scope: null_mut(),
            pins: 0,
            dead: false,
            shares: false,
            owner_id: 0,
            stubs: null_mut(),
            stub_mask: 0,
            next: null_mut(),
            hnext: null_mut(),
        }))
    }

    /// The table's address.
    pub(super) const fn get(&self) -> *mut Table {
        self.0.get()
    }
}

/// The table that owns slab `s` (its thread's table for the slab's scope).
///
/// # Safety
/// `s` is a live slab owned by a thread (not abandoned).
#[inline(always)]
pub(super) unsafe fn owner_table(s: *const Slab) -> *mut Table {
    // SAFETY: s is live (the contract); its `table` field is a `Table` of the owning thread.
    unsafe { (*s).table.cast::<Table>() }
}

/// `t` as the opaque owner pointer a slab stores.
pub(super) fn as_owner(t: *mut Table) -> *mut OwnerTable {
    t.cast::<OwnerTable>()
}

pub(super) fn empty_table() -> *mut Table {
    EMPTY_TABLE.0.get()
}

pub(super) fn empty_slab() -> *mut Slab {
    EMPTY_SLAB.0.get()
}

pub(super) fn empty_arrays() -> *mut ClassArrays {
    EMPTY_ARRAYS.0.get()
}

/// Whether `t` has class arrays of its own (it has, or had, slabs of its own).
///
/// # Safety
/// `t` is a table of this thread (or a static one).
#[inline]
pub(super) unsafe fn has_arrays(t: *const Table) -> bool {
    // SAFETY: t is readable (the contract).
    unsafe { (*t).arrays != empty_arrays() }
}

/// The slab `t`'s fast path pops for `class`.
///
/// # Safety
/// `t` is a table of this thread (or a static one) and `class < NCLASSES`.
#[inline(always)]
pub(super) unsafe fn current_of(t: *const Table, class: usize) -> *mut Slab {
    // SAFETY: the arrays are the table's or the empty ones (the contract), class in bounds.
    unsafe { *(*(*t).arrays).current.get_unchecked(class) }
}

/// The head of `t`'s slab list for `class` (null: none, always so without arrays).
///
/// # Safety
/// As [`current_of`].
#[inline]
pub(super) unsafe fn list_head(t: *const Table, class: usize) -> *mut Slab {
    // SAFETY: as in current_of.
    unsafe { (*(*t).arrays).lists[class] }
}

/// Gives `t` class arrays of its own, before its first slab. False when the OS refuses.
///
/// # Safety
/// `t` is a live table of this thread.
pub(super) unsafe fn ensure_arrays(t: *mut Table) -> bool {
    // SAFETY: t is this thread's (the contract); the new arrays are ours.
    unsafe {
        if has_arrays(t) {
            return true;
        }
        let a = ARRAYS.alloc();
        if a.is_null() {
            return false;
        }
        for c in 0..NCLASSES {
            (*a).current[c] = empty_slab();
            (*a).lists[c] = null_mut();
        }
        (*t).arrays = a;
        true
    }
}

/// Gives `t`'s class arrays back (its slabs are gone: it is dead or being freed).
///
/// # Safety
/// `t` is a table of this thread with no slab on its lists.
pub(super) unsafe fn free_arrays(t: *mut Table) {
    // SAFETY: t is this thread's; nothing points into its arrays once its slabs are gone.
    unsafe {
        if has_arrays(t) {
            ARRAYS.free((*t).arrays);
            (*t).arrays = empty_arrays();
        }
    }
}

pub(super) static TABLES: Pool<Table> = Pool::new();

/// Added to a heap's address to make the owner word of its shared slabs: not a heap address
/// (heaps are 16-byte aligned pool items), so `free`'s local test fails for them.
pub(super) const SHARED_OWNER: usize = 8;

/// Tables in existence, over all threads.
pub fn tables_in_use() -> usize {
    TABLES.in_use()
}

pub(super) unsafe fn new_table(h: *mut Heap, s: *mut ScopeNode) -> *mut Table {
    let t = TABLES.alloc();
    if t.is_null() {
        return t;
    }
    // SAFETY: t is ours; s is referenced by the caller.
    unsafe {
        (*t).arrays = empty_arrays();
        (*t).stock = Stock::EMPTY;
        (*t).heap = h;
        scope::node_get(s);
        (*t).scope = s;
        (*t).pins = 0;
        (*t).dead = false;
        // The secure build keeps every table on slabs of its own: its free-list checks assume a
        // list's blocks share a segment, which a stub's remote list does not.
        (*t).shares = cfg!(not(feature = "secure"))
            && s != scope::root()
            && s != scope::shared()
            && super::shared::SHARING.load(Ordering::Relaxed);
        (*t).owner_id = if s == scope::shared() {
            h as usize + SHARED_OWNER
        } else {
            h as usize
        };
        (*t).stubs = null_mut();
        (*t).stub_mask = 0;
        (*t).next = (*h).tables;
        (*t).hnext = null_mut();
        (*h).tables = t;
        (*h).ntables += 1;
        // Up to LIST_ONLY tables a lookup walks the list; past one table per bucket the index
        // doubles (rehashing the list, t included); if the OS refuses, the chains grow longer.
        if (*h).ntables <= (*h).nbuckets.max(LIST_ONLY) || !grow_index(h) {
            index_insert(h, t);
        }
    }
    t
}

// The heap's index of its tables: buckets of tables chained through `hnext`, keyed by scope
// address, at most one table per bucket on average (the array doubles past that). Its array is
// mapped from the OS, never from the global allocator, once the heap has more than `LIST_ONLY`
// tables. Invariant: when `nbuckets > 0`, every table on the heap's list is in the index; with no
// array (at most LIST_ONLY tables, or the OS refused the first one), a lookup walks the list.

/// Buckets of the first index array: one page.
const MIN_BUCKETS: usize = 4096 / size_of::<*mut Table>();
/// Tables a heap keeps without an index (a lookup walks them, newest first): a thread that
/// allocates in the root scope and a few others maps no index, so that starting and ending a
/// thread costs no `mmap` and no `munmap` for it (each `munmap` of a threaded process takes the
/// mmap lock and interrupts the other cores to flush their TLBs).
const LIST_ONLY: usize = 4;

/// The bucket of scope `s` in `h`'s index (`nbuckets > 0`).
///
/// # Safety
/// `h` is this thread's heap, with an index array.
unsafe fn bucket(h: *mut Heap, s: *mut ScopeNode) -> *mut *mut Table {
    // SAFETY: h is this thread's heap (the contract).
    unsafe {
        let bits = (*h).nbuckets.trailing_zeros();
        // Fibonacci hashing: the high bits of the product mix every bit of the address.
        let i = ((s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
        (*h).buckets.add(i)
    }
}

/// Adds `t` to `h`'s index, if it has an array.
///
/// # Safety
/// `t` is a table of this thread's heap `h`, not in the index.
unsafe fn index_insert(h: *mut Heap, t: *mut Table) {
    // SAFETY: h and t are this thread's (the contract); the bucket lies in h's array.
    unsafe {
        if (*h).nbuckets == 0 {
            return;
        }
        let b = bucket(h, (*t).scope);
        (*t).hnext = *b;
        *b = t;
    }
}

/// Maps an index array twice as large (at least `MIN_BUCKETS`), puts every table of `h`'s list
/// in it and unmaps the old one. False, changing nothing, when the OS refuses.
///
/// # Safety
/// `h` is this thread's heap.
unsafe fn grow_index(h: *mut Heap) -> bool {
    // SAFETY: h and its tables are this thread's; the old array is ours and unused after the swap.
    unsafe {
        let old = (*h).buckets;
        let old_n = (*h).nbuckets;
        let n = if old_n == 0 { MIN_BUCKETS } else { old_n * 2 };
        let Some(bytes) = n.checked_mul(size_of::<*mut Table>()) else {
            return false;
        };
        let array = os::map_aligned(bytes, 4096).cast::<*mut Table>();
        if array.is_null() {
            return false;
        }
        METADATA_MAPPED.fetch_add(
            os::round_to_pages(bytes).unwrap_or(bytes),
            Ordering::Relaxed,
        );
        // Fresh mappings read as zero: every bucket starts empty (null).
        (*h).buckets = array;
        (*h).nbuckets = n;
        let mut t = (*h).tables;
        while !t.is_null() {
            index_insert(h, t);
            t = (*t).next;
        }
        if !old.is_null() {
            unmap_index(old, old_n);
        }
        true
    }
}

/// Unmaps an index array of `n` buckets.
///
/// # Safety
/// `array` is an index array mapped by `grow_index` with `n` buckets, no longer used.
unsafe fn unmap_index(array: *mut *mut Table, n: usize) {
    let bytes = n * size_of::<*mut Table>();
    METADATA_MAPPED.fetch_sub(
        os::round_to_pages(bytes).unwrap_or(bytes),
        Ordering::Relaxed,
    );
    // SAFETY: the array is ours and unused (the contract).
    unsafe { os::unmap(array.cast::<u8>(), bytes) };
}

/// Unmaps `h`'s index array (its tables are gone or about to be).
///
/// # Safety
/// `h` is this thread's heap; nothing looks its tables up any more.
pub(super) unsafe fn free_index(h: *mut Heap) {
    // SAFETY: the array is h's own mapping and no longer used (the contract).
    unsafe {
        if !(*h).buckets.is_null() {
            unmap_index((*h).buckets, (*h).nbuckets);
        }
        (*h).buckets = null_mut();
        (*h).nbuckets = 0;
    }
}

/// Takes `t` out of `h`'s list (`prev`: its predecessor there, or null if it is the head) and
/// index, and frees it with its scope reference. Its slabs are gone (it is dead).
///
/// # Safety
/// `t` is a dead, unpinned table of this thread's heap `h`, not the thread's current table.
unsafe fn free_table(h: *mut Heap, t: *mut Table, prev: *mut Table) {
    // SAFETY: h, t and prev are this thread's (the contract).
    unsafe {
        if prev.is_null() {
            (*h).tables = (*t).next;
        } else {
            (*prev).next = (*t).next;
        }
        if (*h).nbuckets > 0 {
            let mut link = bucket(h, (*t).scope);
            while *link != t {
                count_visit();
                link = &raw mut (**link).hnext;
            }
            *link = (*t).hnext;
        }
        (*h).ntables -= 1;
        scope::node_put((*t).scope);
        TABLES.free(t);
    }
}

/// Retires and frees `h`'s tables of closed scopes, except the current and pinned ones. Walks
/// every table: run by maintenance, `global_stats`, and by `table_for` only when the heap's
/// tables have doubled since the last run (so its cost per new table is O(1) amortized).
///
/// # Safety
/// `h` is this thread's heap.
pub(super) unsafe fn drop_closed(h: *mut Heap) {
    // SAFETY: h and its tables are this thread's.
    unsafe {
        let current = tls_table();
        let mut prev: *mut Table = null_mut();
        let mut t = (*h).tables;
        while !t.is_null() {
            let next = (*t).next;
            if t != current && (*t).pins == 0 && ((*t).dead || (*(*t).scope).is_closed()) {
                if !(*t).dead {
                    abandon_table(t);
                }
                free_table(h, t, prev);
            } else {
                prev = t;
            }
            t = next;
        }
        (*h).drop_at = ((*h).ntables * 2).max(DROP_AT_LEAST);
    }
}

/// Retires `h`'s table of closed scope `s` now, unless it is the current table or pinned (an
/// `enter` token may restore it): its stock goes back, its stubs to the heap's spares or to the
/// ancestor's shared cache, its slabs to their caches, as `drop_closed` would do later. The
/// table, dead, stays on the heap's list until `drop_closed` frees it (freeing it here would
/// need its predecessor on the singly linked list).
///
/// # Safety
/// `h` is this thread's heap; the caller holds a reference on `s`.
pub(super) unsafe fn retire_closed_table(h: *mut Heap, s: *mut ScopeNode) {
    // SAFETY: h and its tables are this thread's; s is alive (the contract).
    unsafe {
        if !(*s).is_closed() {
            return;
        }
        let t = find_table(h, s);
        if !t.is_null() && t != tls_table() && (*t).pins == 0 {
            abandon_table(t);
        }
    }
}

/// `h`'s live (not dead) table of scope `s`, or null: one index chain, or the list when the heap
/// has no index array (the OS refused it).
///
/// # Safety
/// `h` is this thread's heap.
unsafe fn find_table(h: *mut Heap, s: *mut ScopeNode) -> *mut Table {
    // SAFETY: h and its tables are this thread's (the contract).
    unsafe {
        let mut t = if (*h).nbuckets > 0 {
            *bucket(h, s)
        } else {
            (*h).tables
        };
        while !t.is_null() {
            count_visit();
            if (*t).scope == s && !(*t).dead {
                return t;
            }
            t = if (*h).nbuckets > 0 {
                (*t).hnext
            } else {
                (*t).next
            };
        }
        null_mut()
    }
}

/// `table_for` drops closed tables before making a new one once the heap has this many tables.
pub(super) const DROP_AT_LEAST: usize = 64;

/// The heap's table for the nearest open scope at or above `s`, created on first use. O(1)
/// expected in the number of the heap's tables (one index chain); tables of closed scopes are
/// dropped by `drop_closed`.
pub unsafe fn table_for(h: *mut Heap, s: *mut ScopeNode) -> *mut Table {
    // SAFETY: the caller holds a reference on s (the contract of table_for).
    let target = unsafe { scope::nearest_live(s) };
    // SAFETY: h is this thread's heap.
    unsafe {
        let t = find_table(h, target);
        if !t.is_null() {
            return t;
        }
        if (*h).ntables >= (*h).drop_at {
            drop_closed(h);
        }
        // Null when the pool cannot grow: the caller refuses rather than allocate elsewhere.
        new_table(h, target)
    }
}

// A table's slab list per class: doubly linked through `tnext`/`tprev`, null-terminated forward;
// the head's `tprev` points at the tail, so moving a slab to the tail costs O(1).

/// Pushes `s` on `t`'s slab list for `class`.
///
/// # Safety
/// `t` is a live table of this thread and `s` a slab it owns, on no table list.
pub(super) unsafe fn list_push(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: t and s are this thread's; s is on no table list.
    unsafe {
        let head = (*(*t).arrays).lists[class];
        (*s).tnext = head;
        if head.is_null() {
            (*s).tprev = s;
        } else {
            (*s).tprev = (*head).tprev;
            (*head).tprev = s;
        }
        (*(*t).arrays).lists[class] = s;
    }
}

/// Takes `s` off `t`'s slab list for `class`.
///
/// # Safety
/// `t` is a live table of this thread and `s` is on its list for `class`.
pub(super) unsafe fn list_remove(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: s is on t's list for class, so class < NCLASSES.
    unsafe {
        let head = *(*(*t).arrays).lists.get_unchecked(class);
        let next = (*s).tnext;
        if s == head {
            if !next.is_null() {
                (*next).tprev = (*s).tprev;
            }
            (*(*t).arrays).lists[class] = next;
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

/// Moves `s` to the head of `t`'s slab list for `class`, where the next slow path looks first.
///
/// # Safety
/// `t` is a live table of this thread and `s` is on its list for `class`.
pub(super) unsafe fn list_move_to_head(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: s is on t's list for class.
    unsafe {
        if (*(*t).arrays).lists[class] != s {
            list_remove(t, class, s);
            list_push(t, class, s);
        }
    }
}

/// Moves `s` to the tail of `t`'s slab list for `class` (O(1): the head's `tprev` is the tail).
///
/// # Safety
/// `t` is a live table of this thread and `s` is on its list for `class`.
pub(super) unsafe fn list_move_to_tail(t: *mut Table, class: usize, s: *mut Slab) {
    // SAFETY: s is on t's list for class.
    unsafe {
        if (*s).tnext.is_null() {
            return; // already the tail
        }
        list_remove(t, class, s);
        let head = (*(*t).arrays).lists[class]; // non-null: s had a successor
        let tail = (*head).tprev;
        (*tail).tnext = s;
        (*s).tprev = tail;
        (*s).tnext = null_mut();
        (*head).tprev = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(t: *mut Table) -> Vec<*mut Slab> {
        let mut v = Vec::new();
        // SAFETY: the test's table and slabs are live.
        unsafe {
            let mut s = list_head(t, 0);
            while !s.is_null() {
                v.push(s);
                s = (*s).tnext;
            }
            if let Some(&tail) = v.last() {
                assert_eq!(
                    (*list_head(t, 0)).tprev,
                    tail,
                    "the head's prev is the tail"
                );
            }
        }
        v
    }

    #[test]
    fn table_slab_lists_push_remove_and_rotate_in_constant_time() {
        // SAFETY: an all-zero Table is valid (null pointers, zero counters).
        let mut table: Box<Table> = Box::new(unsafe { core::mem::zeroed() });
        // SAFETY: as above, for the arrays.
        let mut arrays: Box<ClassArrays> = Box::new(unsafe { core::mem::zeroed() });
        table.arrays = &mut *arrays;
        let t: *mut Table = &mut *table;
        let mut slabs: Vec<Slab> = (0..4).map(|_| Slab::empty()).collect();
        let s: Vec<*mut Slab> = slabs.iter_mut().map(|x| x as *mut Slab).collect();
        for &x in &s {
            // SAFETY: t is a live table and x a slab on no list.
            unsafe { list_push(t, 0, x) };
        }
        assert_eq!(order(t), vec![s[3], s[2], s[1], s[0]]);
        // SAFETY: the slab is on t's list 0.
        unsafe { list_move_to_tail(t, 0, s[3]) };
        assert_eq!(order(t), vec![s[2], s[1], s[0], s[3]]);
        // SAFETY: the slab is on t's list 0.
        unsafe { list_move_to_tail(t, 0, s[1]) };
        assert_eq!(order(t), vec![s[2], s[0], s[3], s[1]]);
        // SAFETY: the slab is on t's list 0. Here: already the tail
        unsafe { list_move_to_tail(t, 0, s[1]) };
        assert_eq!(order(t), vec![s[2], s[0], s[3], s[1]]);
        // SAFETY: the slab is on t's list 0. Here: the tail
        unsafe { list_remove(t, 0, s[1]) };
        assert_eq!(order(t), vec![s[2], s[0], s[3]]);
        // SAFETY: the slab is on t's list 0. Here: the head
        unsafe { list_remove(t, 0, s[2]) };
        assert_eq!(order(t), vec![s[0], s[3]]);
        // SAFETY: the slab is on t's list 0.
        unsafe { list_remove(t, 0, s[0]) };
        // SAFETY: the slab is on t's list 0.
        unsafe { list_remove(t, 0, s[3]) };
        assert!(order(t).is_empty());
    }
}

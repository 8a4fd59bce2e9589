//! Tables: a thread's per-scope fast-path state (current slab and slab list per size class,
//! and the stock), and the heap's lookup of its table for a scope.

use super::abandon::abandon_table;
use super::thread_heap::{tls_table, Heap};
use crate::backend::pool::Pool;
use crate::objects::scope::{self, ScopeNode};
use crate::objects::size_class::NCLASSES;
use crate::objects::slab::{OwnerTable, Slab, EMPTY_SLAB};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

/// A thread's table for one scope. Owned by its thread.
#[repr(C)]
pub struct Table {
    /// Per class, the slab the fast path pops from (`EMPTY_SLAB` when none).
    pub current: [*mut Slab; NCLASSES],
    /// Bytes charged to `scope` in advance and not yet handed out.
    pub stock: i64,
    /// The heap whose list holds this table; null once orphaned (kept pinned past its thread's
    /// heap, see `abandon_heap`).
    pub heap: *mut Heap,
    /// The scope (holds a reference).
    pub scope: *mut ScopeNode,
    /// Per class, all slabs of this table (doubly linked through `tnext`/`tprev`).
    pub(super) lists: [*mut Slab; NCLASSES],
    /// Guards that will restore this table (see `ScopeGuard`); a pinned table is not freed.
    pub pins: u32,
    /// Retired: its scope closed; it owns no slab and forwards to the ancestor's table.
    pub dead: bool,
    pub(super) next: *mut Table,
}

pub(super) struct EmptyTable(UnsafeCell<Table>);
// SAFETY: the empty table is never written: its slabs have no free object, so every path that
// would write it first takes the slow path, which replaces it.
unsafe impl Sync for EmptyTable {}
pub(super) static EMPTY_TABLE: EmptyTable = EmptyTable(UnsafeCell::new(Table {
    current: [EMPTY_SLAB.0.get(); NCLASSES],
    stock: 0,
    heap: null_mut(),
    scope: null_mut(),
    lists: [null_mut(); NCLASSES],
    pins: 0,
    dead: false,
    next: null_mut(),
}));

/// The table of a thread whose scope's table could not be made (see `thread_heap::enter`): like
/// the empty table, never written, so every allocation takes the slow path, which retries.
pub(super) static REFUSED_TABLE: EmptyTable = EmptyTable(UnsafeCell::new(Table {
    current: [EMPTY_SLAB.0.get(); NCLASSES],
    stock: 0,
    heap: null_mut(),
    scope: null_mut(),
    lists: [null_mut(); NCLASSES],
    pins: 0,
    dead: false,
    next: null_mut(),
}));

impl EmptyTable {
    /// The empty table's address.
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

pub(super) static TABLES: Pool<Table> = Pool::new();

pub(super) unsafe fn new_table(h: *mut Heap, s: *mut ScopeNode) -> *mut Table {
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
/// closed scopes met on the way are retired and, when unpinned, freed. Null when a new table is
/// needed and the metadata pool cannot grow.
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
                    abandon_table(t);
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
        // Null when the pool cannot grow: the caller refuses rather than allocate elsewhere.
        new_table(h, target)
    }
}

// A table's slab list per class: doubly linked through `tnext`/`tprev`, null-terminated forward;
// the head's `tprev` points at the tail, so moving a slab to the tail costs O(1).

pub(super) fn list_push(t: *mut Table, class: usize, s: *mut Slab) {
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

pub(super) fn list_remove(t: *mut Table, class: usize, s: *mut Slab) {
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

pub(super) fn list_move_to_tail(t: *mut Table, class: usize, s: *mut Slab) {
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

//! Caches: the pair (scope, size class) where a scope's objects of one class are charged, with
//! the slabs and large objects attached to it; found and locked under their scope's lock,
//! released once dying and unreferenced.

use super::protocol::{self, Counted, SlotLookup};
use super::scope::{node_get, node_put, tree_lock, ScopeNode, TreeGuard};
use super::slab::{Slab, KIND_STUB, OWNER_ABANDONED};
use crate::accounting::percpu_ref::PercpuRef;
use crate::backend::pool::Pool;
use crate::sync::{AtomicUsize, Ordering, SpinLock};
use core::ptr::null_mut;

/// A cache: where the objects of one (scope, size class) are charged.
#[repr(C)]
pub struct Cache {
    /// The cache lock and the shared half of its reference count (see `accounting::percpu_ref`).
    pub refs: PercpuRef,
    /// The scope that created it (holds a reference).
    pub(super) origin: *mut ScopeNode,
    /// Where charges go: the origin, or after close its nearest open ancestor (holds a
    /// reference). Under the cache lock and TREE_LOCK to change.
    pub scope: *mut ScopeNode,
    /// The size class (`LARGE_CLASS` for large and huge objects); immutable after creation.
    pub(super) class: u16,
    // Under the cache lock:
    pub(super) slabs: *mut Slab,
    abandoned: *mut Slab,
    /// Abandoned stubs (see `slab::KIND_STUB`): apart from the slabs, so that adoption never
    /// looks at them; the sweep walks both lists.
    abandoned_stubs: *mut Slab,
    pub(super) folded_allocs: u64,
    pub(super) large_bytes: u64,
    pub(super) large_objects: u64,
    pub(super) large_allocs: u64,
    /// The part of `large_bytes` / `large_objects` that is huge objects (own mappings).
    pub(super) huge_bytes: u64,
    pub(super) huge_objects: u64,
    // Under TREE_LOCK:
    pub(super) rnext: *mut Cache,
    pub(super) rprev: *mut Cache,
    // Under SWEEP_LIST's lock: the list of caches that have abandoned slabs.
    snext: *mut Cache,
    sprev: *mut Cache,
}

/// The caches that have abandoned slabs or stubs, in sweep order (the sweep rotates through
/// them): a cache is on it exactly while one of its two abandoned lists is not empty. Its lock comes after the cache
/// locks in the lock order (a cache joins and leaves it with its own lock held).
struct SweepList {
    head: *mut Cache,
    tail: *mut Cache,
    len: usize,
}

// SAFETY: the cache pointers are pool items reached only under the list's lock.
unsafe impl Send for SweepList {}

static SWEEP_LIST: SpinLock<SweepList> = SpinLock::new(SweepList {
    head: null_mut(),
    tail: null_mut(),
    len: 0,
});

impl SweepList {
    /// Appends `c`.
    ///
    /// # Safety
    /// `c` is a live cache on no sweep list.
    unsafe fn push_tail(&mut self, c: *mut Cache) {
        // SAFETY: c and the tail are live caches; the list is ours under its lock.
        unsafe {
            (*c).snext = null_mut();
            (*c).sprev = self.tail;
            if self.tail.is_null() {
                self.head = c;
            } else {
                (*self.tail).snext = c;
            }
        }
        self.tail = c;
        self.len += 1;
    }

    /// Takes `c` off the list.
    ///
    /// # Safety
    /// `c` is on this list.
    unsafe fn remove(&mut self, c: *mut Cache) {
        // SAFETY: c and its neighbours are live caches on the list, ours under its lock.
        unsafe {
            if (*c).sprev.is_null() {
                self.head = (*c).snext;
            } else {
                (*(*c).sprev).snext = (*c).snext;
            }
            if (*c).snext.is_null() {
                self.tail = (*c).sprev;
            } else {
                (*(*c).snext).sprev = (*c).sprev;
            }
            (*c).snext = null_mut();
            (*c).sprev = null_mut();
        }
        self.len -= 1;
    }
}

/// Caches with abandoned slabs now.
pub fn sweep_len() -> usize {
    SWEEP_LIST.lock().len
}

/// The next cache to sweep: the head of the sweep list, moved to its tail. Null when no cache
/// has abandoned slabs.
///
/// The caller holds the tree lock (`_tree`), so the cache returned cannot be released but by
/// the caller itself.
pub fn sweep_next(_tree: &TreeGuard) -> *mut Cache {
    let mut l = SWEEP_LIST.lock();
    let c = l.head;
    if !c.is_null() && l.len > 1 {
        // SAFETY: c heads the list.
        unsafe {
            l.remove(c);
            l.push_tail(c);
        }
    }
    c
}

/// Takes the sweep list's lock (fork prepare), after the cache locks.
pub fn sweep_list_lock_for_fork() {
    SWEEP_LIST.lock_for_fork();
}

/// Releases what [`sweep_list_lock_for_fork`] took.
pub fn sweep_list_unlock_after_fork() {
    SWEEP_LIST.force_unlock();
}

pub(crate) static CACHES: Pool<Cache> = Pool::new();
pub(super) static LIVE_CACHES: AtomicUsize = AtomicUsize::new(0);
pub(super) static DYING_CACHES: AtomicUsize = AtomicUsize::new(0);

/// (caches in existence, dying caches).
pub fn counts() -> (usize, usize) {
    (
        LIVE_CACHES.load(Ordering::Relaxed),
        DYING_CACHES.load(Ordering::Relaxed),
    )
}

/// refuses memory.
fn create_cache(s: *mut ScopeNode, class: usize) -> bool {
    let tree = tree_lock();
    // SAFETY: the caller holds a reference on s.
    let ok = unsafe { create_cache_tree_locked(&tree, s, class) };
    drop(tree);
    ok
}

/// [`create_cache`] for a caller that holds the tree lock.
///
/// # Safety
/// `s` is a live node on which the caller holds a reference, or which the tree lock keeps open.
unsafe fn create_cache_tree_locked(_tree: &TreeGuard, s: *mut ScopeNode, class: usize) -> bool {
    // SAFETY: the contract keeps s alive; the tree lock serialises creation with close.
    unsafe {
        if (*s).is_closed() {
            false
        } else if !(*s).caches[class].load(Ordering::Acquire).is_null() {
            true
        } else {
            let c = CACHES.alloc();
            if c.is_null() {
                false
            } else {
                (*c).refs.reset();
                (*c).origin = s;
                (*c).scope = s;
                (*c).slabs = null_mut();
                (*c).abandoned = null_mut();
                (*c).abandoned_stubs = null_mut();
                (*c).folded_allocs = 0;
                (*c).large_bytes = 0;
                (*c).large_objects = 0;
                (*c).large_allocs = 0;
                (*c).huge_bytes = 0;
                (*c).huge_objects = 0;
                (*c).class = class as u16;
                (*c).rnext = null_mut();
                (*c).rprev = null_mut();
                (*c).snext = null_mut();
                (*c).sprev = null_mut();
                node_get(s);
                node_get(s);
                LIVE_CACHES.fetch_add(1, Ordering::Relaxed);
                (*s).lock.lock();
                (*s).caches[class].store(c, Ordering::Release);
                (*s).cache_mask |= 1 << class;
                (*s).lock.unlock();
                true
            }
        }
    }
}

/// Outcome of looking up (and locking) a scope's cache.
pub enum CacheLookup {
    /// Locked, live and the right cache: the caller holds its lock.
    Locked(*mut Cache),
    /// The scope is closed: re-target to the nearest open ancestor.
    Closed,
    /// The OS refused memory for the cache itself.
    Oom,
}

/// Finds (creating it on first use) and locks the live cache of (`s`, `class`).
///
/// The lookup and the cache lock are taken under the scope's lock, and the close takes caches out
/// of the array under the same lock before killing them (`protocol::lock_live_cache` and
/// `protocol::close_slots`), so the cache found here cannot be released before we hold its lock;
/// after that, its `PercpuRef` says whether it is dying.
///
/// # Safety
/// `s` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn lock_cache(s: *mut ScopeNode, class: usize) -> CacheLookup {
    // SAFETY: the caller's contract; create_cache takes the tree lock itself.
    unsafe { lock_or_create(s, class, || create_cache(s, class)) }
}

/// The loop of [`lock_cache`]: the live cache of (`s`, `class`) locked, `create` making it
/// when the slot is empty (false: the OS refused, or `s` closed meanwhile).
///
/// # Safety
/// As [`lock_cache`].
unsafe fn lock_or_create(
    s: *mut ScopeNode,
    class: usize,
    create: impl Fn() -> bool,
) -> CacheLookup {
    loop {
        // SAFETY: the caller holds a reference on s, so the node is alive; its `caches` slots are
        // written under its lock, and emptied only by `close_node` under it.
        unsafe {
            match protocol::lock_live_cache(&(*s).lock, &(*s).caches[class]) {
                SlotLookup::Locked(c) => return CacheLookup::Locked(c),
                SlotLookup::Dying => return CacheLookup::Closed,
                SlotLookup::Empty => {}
            }
            if (*s).is_closed() {
                return CacheLookup::Closed;
            }
            if !create() {
                return if (*s).is_closed() {
                    CacheLookup::Closed
                } else {
                    CacheLookup::Oom
                };
            }
        }
    }
}

/// [`lock_cache`] for a caller that holds the tree lock (which keeps `s` open or closed
/// throughout).
///
/// # Safety
/// `s` is a live node on which the caller holds a reference, or which the tree lock keeps open.
pub unsafe fn lock_cache_tree_locked(
    tree: &TreeGuard,
    s: *mut ScopeNode,
    class: usize,
) -> CacheLookup {
    // SAFETY: the caller's contract; creation and close are serialised by the tree lock we hold.
    unsafe { lock_or_create(s, class, || create_cache_tree_locked(tree, s, class)) }
}

impl Counted for Cache {
    #[inline]
    fn refs(&self) -> &PercpuRef {
        &self.refs
    }
}

impl Cache {
    /// Attaches a slab (lock held, reference taken by the caller with `tryget_locked`).
    ///
    /// # Safety
    /// Cache lock held; `s` is on no cache list.
    pub unsafe fn link_slab(&mut self, s: *mut Slab) {
        // SAFETY: the cache lock is held (it guards the slab list) and `s` is on no list, so
        // linking it touches only s and the old head, both ours under the lock.
        unsafe {
            (*s).cprev = null_mut();
            (*s).cnext = self.slabs;
            if !self.slabs.is_null() {
                (*self.slabs).cprev = s;
            }
            self.slabs = s;
        }
    }

    /// Detaches a slab from the lists and folds its allocation count (lock held). The caller then
    /// calls `life.put_locked()`.
    ///
    /// # Safety
    /// Cache lock held; `s` is attached to this cache.
    pub unsafe fn unlink_slab(&mut self, s: *mut Slab) {
        // SAFETY: the contract is unlink_moving's.
        unsafe {
            self.unlink_moving(s);
            self.folded_allocs += (*s).allocs.load(Ordering::Relaxed);
        }
    }

    /// Detaches a slab (stub) that moves to another cache with its allocation count (lock
    /// held): see `protocol::move_owned`.
    ///
    /// # Safety
    /// As [`Cache::unlink_slab`].
    pub unsafe fn unlink_moving(&mut self, s: *mut Slab) {
        // SAFETY: the cache lock is held and `s` is on this cache's list: its neighbours are slabs
        // of this cache, whose list links the lock guards.
        unsafe {
            if !(*s).cprev.is_null() {
                (*(*s).cprev).cnext = (*s).cnext;
            } else {
                self.slabs = (*s).cnext;
            }
            if !(*s).cnext.is_null() {
                (*(*s).cnext).cprev = (*s).cprev;
            }
            if (*s).owner.load(Ordering::Relaxed) == OWNER_ABANDONED {
                self.unlink_abandoned(s);
            }
        }
    }

    /// Puts a slab whose thread is gone on the abandoned list (lock held).
    ///
    /// # Safety
    /// Cache lock held; `s` is attached and not abandoned.
    pub unsafe fn push_abandoned(&mut self, s: *mut Slab) {
        // SAFETY: the cache lock (held, per the contract) guards the abandoned lists; the sweep
        // list has its own lock, taken after the cache lock.
        unsafe {
            if self.abandoned.is_null() && self.abandoned_stubs.is_null() {
                SWEEP_LIST.lock().push_tail(self as *mut Cache);
            }
            let head = if (*s).kind == KIND_STUB {
                &mut self.abandoned_stubs
            } else {
                &mut self.abandoned
            };
            (*s).aprev = null_mut();
            (*s).anext = *head;
            if !head.is_null() {
                (**head).aprev = s;
            }
            *head = s;
        }
    }

    /// Takes `s` off its abandoned list; the cache leaves the sweep list when both are empty.
    ///
    /// # Safety
    /// Cache lock held; `s` is on an abandoned list of this cache.
    unsafe fn unlink_abandoned(&mut self, s: *mut Slab) {
        // SAFETY: s is on an abandoned list, which the held cache lock guards.
        unsafe {
            let head = if (*s).kind == KIND_STUB {
                &mut self.abandoned_stubs
            } else {
                &mut self.abandoned
            };
            if !(*s).aprev.is_null() {
                (*(*s).aprev).anext = (*s).anext;
            } else {
                *head = (*s).anext;
            }
            if !(*s).anext.is_null() {
                (*(*s).anext).aprev = (*s).aprev;
            }
            (*s).anext = null_mut();
            (*s).aprev = null_mut();
            if self.abandoned.is_null() && self.abandoned_stubs.is_null() {
                SWEEP_LIST.lock().remove(self as *mut Cache);
            }
        }
    }

    /// Takes an abandoned slab for adoption (lock held); the caller sets its owner.
    ///
    /// # Safety
    /// Cache lock held.
    pub unsafe fn pop_abandoned(&mut self) -> *mut Slab {
        let s = self.abandoned;
        if !s.is_null() {
            // SAFETY: s heads the abandoned list.
            unsafe { self.unlink_abandoned(s) };
        }
        s
    }

    /// The abandoned slabs (lock held), for sweeping.
    pub fn abandoned_head(&self) -> *mut Slab {
        self.abandoned
    }

    /// The abandoned stubs (lock held), for sweeping.
    pub fn abandoned_stubs_head(&self) -> *mut Slab {
        self.abandoned_stubs
    }

    /// Records a new large object (lock held); `huge`: it has a mapping of its own.
    pub fn add_large(&mut self, bytes: u64, huge: bool) {
        self.large_bytes += bytes;
        self.large_objects += 1;
        self.large_allocs += 1;
        if huge {
            self.huge_bytes += bytes;
            self.huge_objects += 1;
        }
    }

    /// Forgets a freed large object (lock held); `huge` as given to [`Cache::add_large`].
    pub fn remove_large(&mut self, bytes: u64, huge: bool) {
        self.large_bytes -= bytes;
        self.large_objects -= 1;
        if huge {
            self.huge_bytes -= bytes;
            self.huge_objects -= 1;
        }
    }
}

/// Releases a dying cache that just lost its last reference. The caller no longer holds its lock
/// and touches it no more after this call.
///
/// # Safety
/// `c` is a dying cache whose last reference the caller just dropped; nobody touches it afterwards.
pub unsafe fn release_cache(c: *mut Cache) {
    let tree = tree_lock();
    // SAFETY: the caller's contract is release_cache_tree_locked's; we hold the tree lock.
    unsafe { release_cache_tree_locked(&tree, c) };
}

/// `release_cache` for a caller that holds the tree lock.
///
/// # Safety
/// `c` is a dying cache whose last reference the caller just dropped; nobody touches it afterwards.
pub unsafe fn release_cache_tree_locked(_tree: &TreeGuard, c: *mut Cache) {
    // SAFETY: we hold the tree lock; c is dying with no reference, so only readers under the
    // tree lock (statistics) could reach it, and they cannot run now.
    unsafe {
        let target = (*c).scope;
        // Unlink from the target's reparented list.
        if !(*c).rprev.is_null() {
            (*(*c).rprev).rnext = (*c).rnext;
        } else if (*target).reparented == c {
            (*target).reparented = (*c).rnext;
        }
        if !(*c).rnext.is_null() {
            (*(*c).rnext).rprev = (*c).rprev;
        }
        (*c).refs.lock();
        let allocs = (*c).folded_allocs + (*c).large_allocs;
        (*c).refs.unlock();
        (*target).folded_allocs.fetch_add(allocs, Ordering::Relaxed);
        let origin = (*c).origin;
        LIVE_CACHES.fetch_sub(1, Ordering::Relaxed);
        DYING_CACHES.fetch_sub(1, Ordering::Relaxed);
        CACHES.free(c);
        node_put(target);
        node_put(origin);
    }
}

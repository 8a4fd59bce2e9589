//! The scope tree: nodes with their counter and caches, created, referenced, closed and
//! reparented here.
//!
//! # Who may touch what
//! - The tree (children lists, the `caches` arrays' writers, the `reparented` lists) is changed
//!   under `TREE_LOCK`: creating a scope, creating a cache, closing, releasing a cache, and
//!   reading statistics. Never on an allocation fast path; a slow path takes it once per
//!   (scope, size class) to create the cache.
//! - `charged` / `peak` / `limit` are atomics: charging walks from the scope to the root adding
//!   the amount to every counter and undoes it when one of them would pass its limit (the
//!   kernel's `page_counter_try_charge`). A thread charges in batches (its *stock*, see
//!   `frontend::table::Table::stock`), so this walk runs once per batch, not per object.
//! - A scope's `caches` array is read, and a cache found there locked, under the scope's `lock`;
//!   the close takes caches out of the array under the same lock before killing them, so a cache
//!   found in the array cannot be released before its finder holds its lock.
//! - A cache's slab lists and large-object figures are under the cache's lock (`Cache::refs`).
//!   `Cache::scope` (where its charges go) changes only under both the tree lock and the cache
//!   lock, so a path holding either sees a stable value.
//!
//! # Closing and reparenting
//! `close()` takes the tree lock and, for the scope and each open descendant (children first):
//! marks it closed, unlinks it from its parent, kills each of its caches (no new slab can be
//! attached, see `accounting::percpu_ref`) and points the cache at the nearest open ancestor, to whose
//! `reparented` list it moves. Charges need no moving: the counters are hierarchical, so the
//! ancestor's counter already holds them, and every later uncharge reads `Cache::scope` and so
//! uncharges the ancestor (the closed scope's own counter is stale and no longer reported).
//! A thread whose table belongs to a closed scope keeps allocating from the slab it holds until
//! its next slow path, which notices the closed scope, abandons the table's slabs to their caches
//! and re-targets the thread to the ancestor's table: those objects are charged, through the
//! cache, to the ancestor; no thread ever takes a new slab from a closed scope's cache.
//! A dying cache is released when its last slab or large object goes (`accounting::percpu_ref`); a
//! scope's node when its last handle, table, child and cache reference goes.

use super::cache::{Cache, CACHES};
use super::size_class::NSLOTS;
use super::stats::{self, ClassUsage, Usage};
use crate::accounting::counter::Counter;
use crate::backend::pool::Pool;
use crate::sync::{
    AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering, RawLock, SpinGuard, SpinLock,
};
use core::ptr::null_mut;

const LIVE: u8 = 0;
const CLOSED: u8 = 1;
// `ScopeNode::cache_mask` has a bit per slot.
const _: () = assert!(NSLOTS <= 128);
/// Longest name kept; longer names are truncated at a character boundary.
pub const NAME_MAX: usize = 63;

/// A node of the scope tree. Memory from `SCOPES`; the root is a static. Fields without a note
/// are immutable after creation or atomics.
#[repr(C)]
pub struct ScopeNode {
    /// Unique id (never reused); 0 once the node is released.
    pub id: AtomicU64,
    /// Internal references: one per handle, per child, per thread table, per cache (as origin
    /// and as target). The node is released at zero.
    refs: AtomicUsize,
    /// User handles (`Scope`); the scope closes when the last one goes.
    handles: AtomicUsize,
    state: AtomicU8,
    /// Guards the `caches` array against the close: a thread looks a cache up and locks it
    /// under this lock, and the close takes the cache out of the array under it.
    pub(super) lock: RawLock,
    /// Immutable after creation; a child holds a reference on its parent.
    pub parent: *mut ScopeNode,
    /// Bytes charged here and below, the limit, the peak (its parent is the parent's counter).
    pub counter: Counter,
    /// Allocations of released slabs and caches whose charges ended here (self).
    pub(super) folded_allocs: AtomicU64,
    /// Usage at close (closed scopes report these).
    pub(super) final_allocs: AtomicU64,
    pub(super) final_frees: AtomicU64,
    // Under TREE_LOCK:
    pub(super) first_child: *mut ScopeNode,
    pub(super) next_sibling: *mut ScopeNode,
    pub(super) prev_sibling: *mut ScopeNode,
    pub(super) reparented: *mut Cache,
    /// Scratch of a close: the subtree's usage before the close (see `close`).
    pub(super) scratch: Usage,
    /// The scope's caches by class (then `LARGE_CLASS` and `SHARED_CLASS`); written under
    /// TREE_LOCK and the node lock, read under the node lock.
    pub(super) caches: [AtomicPtr<Cache>; NSLOTS],
    /// Bit `k` set: `caches[k]` is not null (under TREE_LOCK), so that readers under the tree
    /// lock (statistics, reports) visit the caches a scope has without loading every slot.
    pub(super) cache_mask: u128,
    name_len: u8,
    name: [u8; NAME_MAX],
}

// SAFETY: shared fields are atomics or guarded by TREE_LOCK as documented.
unsafe impl Sync for ScopeNode {}

impl ScopeNode {
    const fn root() -> ScopeNode {
        let mut name = [0u8; NAME_MAX];
        name[0] = b'r';
        name[1] = b'o';
        name[2] = b'o';
        name[3] = b't';
        ScopeNode::top(1, name, 4)
    }

    /// The node of the shared slabs: outside the tree (no parent, nobody's child), never closed.
    const fn shared() -> ScopeNode {
        let mut name = [0u8; NAME_MAX];
        let label = b"shared slabs";
        let mut i = 0;
        while i < label.len() {
            name[i] = label[i];
            i += 1;
        }
        ScopeNode::top(u64::MAX, name, label.len() as u8)
    }

    const fn top(id: u64, name: [u8; NAME_MAX], name_len: u8) -> ScopeNode {
        ScopeNode {
            id: AtomicU64::new(id),
            refs: AtomicUsize::new(1),
            handles: AtomicUsize::new(1),
            state: AtomicU8::new(LIVE),
            lock: RawLock::new(),
            parent: null_mut(),
            counter: Counter::new(),
            folded_allocs: AtomicU64::new(0),
            final_allocs: AtomicU64::new(0),
            final_frees: AtomicU64::new(0),
            first_child: null_mut(),
            next_sibling: null_mut(),
            prev_sibling: null_mut(),
            reparented: null_mut(),
            scratch: Usage::ZERO,
            caches: [const { AtomicPtr::new(null_mut()) }; NSLOTS],
            cache_mask: 0,
            name_len,
            name,
        }
    }

    /// Whether the scope is closed.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// The name.
    pub fn name(&self) -> &str {
        let bytes = &self.name[..self.name_len as usize];
        core::str::from_utf8(bytes).unwrap_or("?")
    }
}

/// A static with interior mutability for the root node.
struct RootCell(core::cell::UnsafeCell<ScopeNode>);
// SAFETY: ScopeNode is Sync.
unsafe impl Sync for RootCell {}
static ROOT: RootCell = RootCell(core::cell::UnsafeCell::new(ScopeNode::root()));

/// The root node.
#[inline]
pub fn root() -> *mut ScopeNode {
    ROOT.0.get()
}

static SHARED: RootCell = RootCell(core::cell::UnsafeCell::new(ScopeNode::shared()));

/// The node that the shared slabs of small scopes belong to (see `frontend::shared`). It is not
/// in the tree: its counter holds the bytes of the objects in shared slabs (each also charged to
/// its own scope through its stub), and no statistics of the tree read it.
#[inline]
pub fn shared() -> *mut ScopeNode {
    SHARED.0.get()
}

/// The tree lock: the children lists, the `reparented` lists, cache creation and release, close,
/// and statistics. Never taken on a fast path.
static TREE_LOCK: SpinLock<()> = SpinLock::new(());
/// Proof that the tree lock is held.
pub type TreeGuard = SpinGuard<'static, ()>;
static SCOPES: Pool<ScopeNode> = Pool::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(2);
static OPEN_SCOPES: AtomicUsize = AtomicUsize::new(1);
static ALIVE_SCOPES: AtomicUsize = AtomicUsize::new(1);

/// Takes the tree lock.
pub fn tree_lock() -> TreeGuard {
    TREE_LOCK.lock()
}

/// Takes a reference on a node.
///
/// # Safety
/// `n` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn node_get(n: *mut ScopeNode) {
    // SAFETY: the caller holds a reference, so the node is alive.
    unsafe { (*n).refs.fetch_add(1, Ordering::Relaxed) };
}

/// Drops a reference; releases the node (and then its reference on its parent) at zero.
///
/// # Safety
/// `n` is a live node and the caller gives up one reference it holds on it.
pub unsafe fn node_put(mut n: *mut ScopeNode) {
    while !n.is_null() {
        // SAFETY: the caller holds the reference it drops.
        unsafe {
            if (*n).refs.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            let parent = (*n).parent;
            (*n).id.store(0, Ordering::Release);
            SCOPES.free(n);
            ALIVE_SCOPES.fetch_sub(1, Ordering::Relaxed);
            n = parent;
        }
    }
}

/// The nearest open scope at or above `n` (the root is always open).
///
/// # Safety
/// `n` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn nearest_live(mut n: *mut ScopeNode) -> *mut ScopeNode {
    // SAFETY: parents are kept alive by their children's references.
    unsafe {
        while (*n).is_closed() {
            n = (*n).parent;
        }
    }
    n
}

/// Creates an open child of `parent` (or of its nearest open ancestor). Returns it with one
/// handle, or null when the OS refuses memory for its metadata.
///
/// # Safety
/// `parent` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn create_child(parent: *mut ScopeNode, name: &str) -> *mut ScopeNode {
    let n = SCOPES.alloc();
    if n.is_null() {
        return n; // the OS refused the metadata
    }
    let tree = tree_lock();
    // SAFETY: the caller holds a reference on parent.
    let p = unsafe { nearest_live(parent) };
    // SAFETY: n is ours (fresh from the pool); p is open and we hold the tree lock, so it stays
    // open and linked while we link n under it.
    unsafe {
        (*n).id
            .store(NEXT_ID.fetch_add(1, Ordering::Relaxed), Ordering::Release);
        (*n).refs.store(1, Ordering::Relaxed);
        (*n).handles.store(1, Ordering::Relaxed);
        (*n).state.store(LIVE, Ordering::Release);
        (*n).parent = p;
        node_get(p);
        (*n).counter.reset(&(*p).counter);
        (*n).folded_allocs.store(0, Ordering::Relaxed);
        (*n).final_allocs.store(0, Ordering::Relaxed);
        (*n).final_frees.store(0, Ordering::Relaxed);
        (*n).first_child = null_mut();
        (*n).reparented = null_mut();
        for c in (*n).caches.iter() {
            c.store(null_mut(), Ordering::Relaxed);
        }
        (*n).cache_mask = 0;
        let mut len = name.len().min(NAME_MAX);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        (&mut (*n).name)[..len].copy_from_slice(&name.as_bytes()[..len]);
        (*n).name_len = len as u8;
        (*n).prev_sibling = null_mut();
        (*n).next_sibling = (*p).first_child;
        if !(*p).first_child.is_null() {
            (*(*p).first_child).prev_sibling = n;
        }
        (*p).first_child = n;
    }
    OPEN_SCOPES.fetch_add(1, Ordering::Relaxed);
    ALIVE_SCOPES.fetch_add(1, Ordering::Relaxed);
    drop(tree);
    n
}

/// Takes a user handle.
///
/// # Safety
/// `n` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn handle_get(n: *mut ScopeNode) {
    // SAFETY: the caller holds a reference, so the node is alive.
    unsafe { (*n).handles.fetch_add(1, Ordering::Relaxed) };
    // SAFETY: as above.
    unsafe { node_get(n) };
}

/// Drops a user handle; when it was the last, calls `on_last(n)` (which closes the scope) while
/// the handle's reference still keeps `n` alive.
///
/// # Safety
/// `n` is a live node and the caller gives up one user handle it holds on it.
pub unsafe fn handle_put_then(n: *mut ScopeNode, on_last: impl FnOnce(*mut ScopeNode)) {
    // SAFETY: the caller holds the handle it drops, so the node is alive.
    let last = unsafe { (*n).handles.fetch_sub(1, Ordering::AcqRel) == 1 };
    if last {
        on_last(n);
    }
    // SAFETY: the handle given up here was still a reference until now.
    unsafe { node_put(n) };
}

/// Closes `n` and its open descendants (idempotent; the root never closes).
///
/// Two passes over the subtree, both iterative and O(size of the subtree) under the tree lock:
/// the first records every node's usage before the close (what a closed scope reports), the
/// second closes the nodes children first, so that each node's children are gone (closed and
/// unlinked) when it closes.
///
/// # Safety
/// `n` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn close(n: *mut ScopeNode) {
    // SAFETY: the caller's contract.
    unsafe { close_collecting(n, None) };
}

/// [`close`], which also adds to `leaks` (when given) what the subtree still holds just before
/// it closes, by size class, read under the same hold of the tree lock (so without allocating).
/// True when this call closed the scope (false: it was closed already, or is the root).
///
/// # Safety
/// `n` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn close_collecting(n: *mut ScopeNode, leaks: Option<&mut ClassUsage>) -> bool {
    if n == root() {
        return false;
    }
    let tree = tree_lock();
    let mut closed = false;
    // SAFETY: we hold the tree lock and the caller holds a reference on n; every open node has a
    // handle or a child, so the subtree stays alive.
    unsafe {
        if !(*n).is_closed() {
            closed = true;
            let target = (*n).parent; // open: an open scope's ancestors are open
            if let Some(out) = leaks {
                stats::subtree_usage_by_class(&tree, n, out);
            }
            stats::record_subtree_usage(&tree, n);
            let mut x = n;
            loop {
                while !(*x).first_child.is_null() {
                    x = (*x).first_child;
                }
                let parent = (*x).parent;
                close_node(&tree, x, target);
                if x == n {
                    break;
                }
                // The parent's first child is now x's next sibling, if any: the loop descends
                // into it, or closes the parent.
                x = parent;
            }
        }
    }
    drop(tree);
    closed
}

/// Closes one node that has no open child: marks it closed, unlinks it, kills its caches and
/// reparents them (and those reparented into it) to `target`.
///
/// # Safety
/// `x` is open, alive and childless; `target` is an open ancestor of it.
unsafe fn close_node(_tree: &TreeGuard, x: *mut ScopeNode, target: *mut ScopeNode) {
    // SAFETY: the tree lock (`_tree`) guards the sibling links and reparented lists; caches are
    // taken out of the array under the node lock and changed under their own lock.
    unsafe {
        debug_assert!((*x).first_child.is_null());
        let fig = (*x).scratch;
        (*x).final_allocs.store(fig.allocs, Ordering::Relaxed);
        (*x).final_frees
            .store(fig.allocs - fig.objects, Ordering::Relaxed);
        (*x).state.store(CLOSED, Ordering::Release);
        let p = (*x).parent;
        if !(*x).prev_sibling.is_null() {
            (*(*x).prev_sibling).next_sibling = (*x).next_sibling;
        } else {
            (*p).first_child = (*x).next_sibling;
        }
        if !(*x).next_sibling.is_null() {
            (*(*x).next_sibling).prev_sibling = (*x).prev_sibling;
        }
        (*x).next_sibling = null_mut();
        (*x).prev_sibling = null_mut();
        // Each cache leaves the array under the node lock, then is killed and pointed at
        // `target` under its own lock; `target` gains the cache's reference that `x` loses.
        let in_use = (*x).cache_mask != 0;
        (*x).cache_mask = 0; // close_slots empties every slot
                             // A scope that never allocated has no cache: skip the node lock and the slots.
        if in_use {
            super::protocol::close_slots(
                &(*x).lock,
                &(*x).caches,
                |c| {
                    node_get(target);
                    // close_slots holds c's lock, and we hold the tree lock: the two locks that
                    // guard `Cache::scope`.
                    (*c).scope = target;
                },
                |c, release_now| {
                    super::cache::DYING_CACHES.fetch_add(1, Ordering::Relaxed);
                    // We hold the tree lock; c is dying and on no reparented list yet.
                    link_reparented(target, c);
                    node_put(x);
                    // The cache's reference on its origin goes too: a dying cache that objects
                    // keep (in the request-cache workload, one survivor per request) must not
                    // keep its closed scope, which nothing reads any more (issue 10).
                    (*c).origin = null_mut();
                    node_put(x);
                    if release_now {
                        super::cache::release_cache_tree_locked(_tree, c);
                    }
                },
            );
        }
        while !(*x).reparented.is_null() {
            let c = (*x).reparented;
            (*x).reparented = (*c).rnext;
            node_get(target);
            // c is on x's reparented list under the tree lock, so it is alive; retarget holds
            // its lock, and we hold the tree lock.
            super::protocol::retarget(c, |c| (*c).scope = target);
            link_reparented(target, c);
            node_put(x);
        }
        let folded = (*x).folded_allocs.swap(0, Ordering::Relaxed);
        (*target).folded_allocs.fetch_add(folded, Ordering::Relaxed);
    }
    OPEN_SCOPES.fetch_sub(1, Ordering::Relaxed);
}

/// The caches of `x`'s slots with their classes (its own caches, not those reparented into it).
///
/// # Safety
/// The tree lock is held (`_tree`); `x` is alive.
pub(super) unsafe fn own_caches(
    _tree: &TreeGuard,
    x: *mut ScopeNode,
) -> impl Iterator<Item = (usize, *mut Cache)> {
    // SAFETY: the tree lock guards `cache_mask` and the slots' writers; x is alive.
    let mut mask = unsafe { (*x).cache_mask };
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let class = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        // SAFETY: as above; a set bit means the slot holds a cache, alive under the tree lock.
        let c = unsafe { (*x).caches[class].load(Ordering::Acquire) };
        debug_assert!(!c.is_null());
        Some((class, c))
    })
}

/// Links `c` on `target`'s list of caches reparented into it.
///
/// # Safety
/// The tree lock is held; `c` is on no reparented list.
unsafe fn link_reparented(target: *mut ScopeNode, c: *mut Cache) {
    // SAFETY: the reparented lists are guarded by the tree lock, which the caller holds.
    unsafe {
        (*c).rprev = null_mut();
        (*c).rnext = (*target).reparented;
        if !(*target).reparented.is_null() {
            (*(*target).reparented).rprev = c;
        }
        (*target).reparented = c;
    }
}

/// Calls `f` with each open child of `x`, each with a new handle taken, up to `max` children;
/// returns how many open children there are.
///
/// # Safety
/// `x` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn for_children(
    x: *mut ScopeNode,
    max: usize,
    mut f: impl FnMut(*mut ScopeNode),
) -> usize {
    let tree = tree_lock();
    let mut n = 0;
    // SAFETY: the tree lock is held; open children are alive (they hold handles).
    unsafe {
        let mut ch = (*x).first_child;
        while !ch.is_null() {
            if n < max {
                handle_get(ch);
                f(ch);
            }
            n += 1;
            ch = (*ch).next_sibling;
        }
    }
    drop(tree);
    n
}

/// Counts for `global_stats`: (open scopes, closed scopes pending, caches, dying caches).
pub fn counts() -> (usize, usize, usize, usize) {
    let open = OPEN_SCOPES.load(Ordering::Relaxed);
    let alive = ALIVE_SCOPES.load(Ordering::Relaxed);
    let (live, dying) = super::cache::counts();
    (open, alive.saturating_sub(open), live, dying)
}

/// Returns the pages of released scope nodes and caches to the OS (`trim`).
pub fn trim_pools() {
    SCOPES.trim();
    CACHES.trim();
}

/// Takes every scope-side lock before `fork` (tree, every node, every cache), in the lock order.
pub fn lock_for_fork() {
    TREE_LOCK.lock_for_fork();
    // SAFETY: the root is static.
    unsafe {
        (*root()).lock.lock();
        (*shared()).lock.lock();
    }
    // Pool memory is never unmapped, and a free item's lock is just an unused lock.
    // SAFETY: as just said, every item of the pools is a valid node or cache.
    SCOPES.for_each(|n, _| unsafe { (*n).lock.lock() });
    // SAFETY: as above.
    CACHES.for_each(|c, _| unsafe { (*c).refs.lock() });
    super::cache::sweep_list_lock_for_fork();
}

/// Releases what `lock_for_fork` took (fork parent and child: the forking thread took them).
pub fn unlock_after_fork() {
    super::cache::sweep_list_unlock_after_fork();
    // SAFETY: as in lock_for_fork; this thread took every one of these locks in the prepare
    // handler.
    CACHES.for_each(|c, _| unsafe { (*c).refs.force_unlock() });
    // SAFETY: as above.
    SCOPES.for_each(|n, _| unsafe { (*n).lock.force_unlock() });
    // SAFETY: as above.
    unsafe {
        (*shared()).lock.force_unlock();
        (*root()).lock.force_unlock();
    }
    TREE_LOCK.force_unlock();
}

/// The pools of this layer, for fork handlers.
pub fn pools_lock(on: bool) {
    if on {
        SCOPES.lock();
        CACHES.lock();
    } else {
        CACHES.unlock();
        SCOPES.unlock();
    }
}

//! Accounting scopes: a tree of nodes, each with a hierarchical charge counter, an optional hard
//! limit, and one *cache* per size class where its objects are charged.
//!
//! # Who may touch what
//! - The tree (children lists, the `caches` arrays' writers, the `reparented` lists) is changed
//!   under `TREE_LOCK`: creating a scope, creating a cache, closing, releasing a cache, and
//!   reading statistics. Never on an allocation fast path; a slow path takes it once per
//!   (scope, size class) to create the cache.
//! - `charged` / `peak` / `limit` are atomics: charging walks from the scope to the root adding
//!   the amount to every counter and undoes it when one of them would pass its limit (the
//!   kernel's `page_counter_try_charge`). A thread charges in batches (its *stock*, see
//!   `heap::Table::stock`), so this walk runs once per batch, not per object.
//! - A scope's `caches` array is read, and a cache found there locked, under the scope's `lock`;
//!   the close takes caches out of the array under the same lock before killing them, so a cache
//!   found in the array cannot be released before its finder holds its lock.
//! - A cache's slab lists and large-object figures are under the cache's lock (`Cache::life`).
//!   `Cache::scope` (where its charges go) changes only under both the tree lock and the cache
//!   lock, so a path holding either sees a stable value.
//!
//! # Closing and reparenting
//! `close()` takes the tree lock and, for the scope and each open descendant (children first):
//! marks it closed, unlinks it from its parent, kills each of its caches (no new slab can be
//! attached, see `lifecycle`) and points the cache at the nearest open ancestor, to whose
//! `reparented` list it moves. Charges need no moving: the counters are hierarchical, so the
//! ancestor's counter already holds them, and every later uncharge reads `Cache::scope` and so
//! uncharges the ancestor (the closed scope's own counter is stale and no longer reported).
//! A thread whose table belongs to a closed scope keeps allocating from the slab it holds until
//! its next slow path, which notices the closed scope, abandons the table's slabs to their caches
//! and re-targets the thread to the ancestor's table: those objects are charged, through the
//! cache, to the ancestor; no thread ever takes a new slab from a closed scope's cache.
//! A dying cache is released when its last slab or large object goes (`lifecycle::Life`); a
//! scope's node when its last handle, table, child and cache reference goes.

use crate::lifecycle::Life;
use crate::os;
use crate::pool::Pool;
use crate::segment::Slab;
use crate::size_class::NCLASSES;
use crate::sync::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering, SpinLock};
use core::ptr::null_mut;

const LIVE: u8 = 0;
const CLOSED: u8 = 1;
/// Longest name kept; longer names are truncated at a character boundary.
pub const NAME_MAX: usize = 63;
const NO_LIMIT: u64 = u64::MAX;

/// A node of the scope tree. Memory from `SCOPES`; the root is a static.
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
    lock: SpinLock,
    /// Immutable after creation; a child holds a reference on its parent.
    pub parent: *mut ScopeNode,
    limit: AtomicU64,
    /// Bytes charged to this scope and its descendants: live objects plus stocks.
    pub charged: AtomicU64,
    peak: AtomicU64,
    limit_hits: AtomicU64,
    /// Allocations of released slabs and caches whose charges ended here (self).
    folded_allocs: AtomicU64,
    /// Figures at close (closed scopes report these).
    final_allocs: AtomicU64,
    final_frees: AtomicU64,
    // Under TREE_LOCK:
    first_child: *mut ScopeNode,
    next_sibling: *mut ScopeNode,
    prev_sibling: *mut ScopeNode,
    reparented: *mut Cache,
    /// The scope's caches by class (`LARGE_CLASS` last); written under TREE_LOCK, read by owners.
    caches: [AtomicPtr<Cache>; NCLASSES + 1],
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
        ScopeNode {
            id: AtomicU64::new(1),
            refs: AtomicUsize::new(1),
            handles: AtomicUsize::new(1),
            state: AtomicU8::new(LIVE),
            lock: SpinLock::new(),
            parent: null_mut(),
            limit: AtomicU64::new(NO_LIMIT),
            charged: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            limit_hits: AtomicU64::new(0),
            folded_allocs: AtomicU64::new(0),
            final_allocs: AtomicU64::new(0),
            final_frees: AtomicU64::new(0),
            first_child: null_mut(),
            next_sibling: null_mut(),
            prev_sibling: null_mut(),
            reparented: null_mut(),
            caches: [const { AtomicPtr::new(null_mut()) }; NCLASSES + 1],
            name_len: 4,
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

/// A cache: where the objects of one (scope, size class) are charged.
#[repr(C)]
pub struct Cache {
    /// Lock and reference state (see `lifecycle`).
    pub life: Life,
    /// The scope that created it (holds a reference).
    origin: *mut ScopeNode,
    /// Where charges go: the origin, or after close its nearest open ancestor (holds a
    /// reference). Under the cache lock and TREE_LOCK to change.
    pub scope: *mut ScopeNode,
    pub class: usize,
    // Under the cache lock:
    slabs: *mut Slab,
    abandoned: *mut Slab,
    folded_allocs: u64,
    large_bytes: u64,
    large_objects: u64,
    large_allocs: u64,
    // Under TREE_LOCK:
    rnext: *mut Cache,
    rprev: *mut Cache,
}

static TREE_LOCK: SpinLock = SpinLock::new();
static SCOPES: Pool<ScopeNode> = Pool::new();
pub(crate) static CACHES: Pool<Cache> = Pool::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(2);
static OPEN_SCOPES: AtomicUsize = AtomicUsize::new(1);
static ALIVE_SCOPES: AtomicUsize = AtomicUsize::new(1);
static LIVE_CACHES: AtomicUsize = AtomicUsize::new(0);
static DYING_CACHES: AtomicUsize = AtomicUsize::new(0);

/// Takes a reference on a node.
pub fn node_get(n: *mut ScopeNode) {
    // SAFETY: the caller holds a reference, so the node is alive.
    unsafe { (*n).refs.fetch_add(1, Ordering::Relaxed) };
}

/// Drops a reference; releases the node (and then its reference on its parent) at zero.
pub fn node_put(mut n: *mut ScopeNode) {
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
pub fn nearest_live(mut n: *mut ScopeNode) -> *mut ScopeNode {
    // SAFETY: parents are kept alive by their children's references.
    unsafe {
        while (*n).is_closed() {
            n = (*n).parent;
        }
    }
    n
}

/// Charges `bytes` to `s` and all its ancestors, unless that would pass a limit; then nothing is
/// charged and the scope whose limit refused is returned.
pub fn try_charge(s: *mut ScopeNode, bytes: u64) -> Result<(), *mut ScopeNode> {
    let mut a = s;
    // SAFETY: the chain is kept alive by child → parent references and the caller's reference.
    unsafe {
        while !a.is_null() {
            let new = (*a).charged.fetch_add(bytes, Ordering::Relaxed) + bytes;
            if new > (*a).limit.load(Ordering::Relaxed) {
                (*a).charged.fetch_sub(bytes, Ordering::Relaxed);
                let mut b = s;
                while b != a {
                    (*b).charged.fetch_sub(bytes, Ordering::Relaxed);
                    b = (*b).parent;
                }
                return Err(a);
            }
            a = (*a).parent;
        }
        // Peaks only once the whole chain accepted: a refused charge raises no peak.
        let mut a = s;
        while !a.is_null() {
            let now = (*a).charged.load(Ordering::Relaxed);
            let lim = (*a).limit.load(Ordering::Relaxed);
            let now = now.min(lim);
            if now > (*a).peak.load(Ordering::Relaxed) {
                (*a).peak.fetch_max(now, Ordering::Relaxed);
            }
            a = (*a).parent;
        }
    }
    Ok(())
}

/// Uncharges `bytes` from `s` and all its ancestors.
pub fn uncharge(s: *mut ScopeNode, bytes: u64) {
    let mut a = s;
    // SAFETY: as in try_charge.
    unsafe {
        while !a.is_null() {
            (*a).charged.fetch_sub(bytes, Ordering::Relaxed);
            a = (*a).parent;
        }
    }
}

/// Headroom left under the tightest limit on the chain from `s` to the root (u64::MAX: none).
pub fn headroom(s: *mut ScopeNode) -> u64 {
    let mut a = s;
    let mut room = u64::MAX;
    // SAFETY: as in try_charge.
    unsafe {
        while !a.is_null() {
            let lim = (*a).limit.load(Ordering::Relaxed);
            if lim != NO_LIMIT {
                room = room.min(lim.saturating_sub((*a).charged.load(Ordering::Relaxed)));
            }
            a = (*a).parent;
        }
    }
    room
}

/// Counts a refused allocation on the scope whose limit refused it.
pub fn count_limit_hit(s: *mut ScopeNode) {
    // SAFETY: the caller holds a reference on a descendant, which keeps s alive.
    unsafe { (*s).limit_hits.fetch_add(1, Ordering::Relaxed) };
}

/// Creates the cache of (`s`, `class`) if it does not exist; false when `s` is closed or the OS
/// refuses memory.
fn create_cache(s: *mut ScopeNode, class: usize) -> bool {
    TREE_LOCK.lock();
    // SAFETY: the caller holds a reference on s; TREE_LOCK serialises creation with close.
    let ok = unsafe {
        if (*s).is_closed() {
            false
        } else if !(*s).caches[class].load(Ordering::Acquire).is_null() {
            true
        } else {
            let c = CACHES.alloc();
            if c.is_null() {
                false
            } else {
                (*c).life.reset();
                (*c).origin = s;
                (*c).scope = s;
                (*c).class = class;
                (*c).slabs = null_mut();
                (*c).abandoned = null_mut();
                (*c).folded_allocs = 0;
                (*c).large_bytes = 0;
                (*c).large_objects = 0;
                (*c).large_allocs = 0;
                (*c).rnext = null_mut();
                (*c).rprev = null_mut();
                node_get(s);
                node_get(s);
                LIVE_CACHES.fetch_add(1, Ordering::Relaxed);
                (*s).lock.lock();
                (*s).caches[class].store(c, Ordering::Release);
                (*s).lock.unlock();
                true
            }
        }
    };
    TREE_LOCK.unlock();
    ok
}

/// Outcome of trying to attach to a scope's cache.
pub enum Attach {
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
/// of the array under the same lock before killing them, so the cache found here cannot be
/// released before we hold its lock; after that, `Life` says whether it is dying.
pub fn lock_cache(s: *mut ScopeNode, class: usize) -> Attach {
    loop {
        // SAFETY: the caller holds a reference on s.
        unsafe {
            (*s).lock.lock();
            let c = (*s).caches[class].load(Ordering::Acquire);
            if !c.is_null() {
                (*c).life.lock();
                (*s).lock.unlock();
                if !(*c).life.is_dying_locked() {
                    return Attach::Locked(c);
                }
                (*c).life.unlock();
                return Attach::Closed;
            }
            (*s).lock.unlock();
            if (*s).is_closed() {
                return Attach::Closed;
            }
            if !create_cache(s, class) {
                return if (*s).is_closed() {
                    Attach::Closed
                } else {
                    Attach::Oom
                };
            }
        }
    }
}

impl Cache {
    /// Attaches a slab (lock held, reference taken by the caller with `try_get_locked`).
    ///
    /// # Safety
    /// Cache lock held; `s` is on no cache list.
    pub unsafe fn link_slab(&mut self, s: *mut Slab) {
        // SAFETY: guaranteed by the caller.
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
        // SAFETY: guaranteed by the caller.
        unsafe {
            if !(*s).cprev.is_null() {
                (*(*s).cprev).cnext = (*s).cnext;
            } else {
                self.slabs = (*s).cnext;
            }
            if !(*s).cnext.is_null() {
                (*(*s).cnext).cprev = (*s).cprev;
            }
            if (*s).owner.load(Ordering::Relaxed) == crate::segment::OWNER_ABANDONED {
                self.unlink_abandoned(s);
            }
            self.folded_allocs += (*s).allocs.load(Ordering::Relaxed);
        }
    }

    /// Puts a slab whose thread is gone on the abandoned list (lock held).
    ///
    /// # Safety
    /// Cache lock held; `s` is attached and not abandoned.
    pub unsafe fn push_abandoned(&mut self, s: *mut Slab) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            (*s).aprev = null_mut();
            (*s).anext = self.abandoned;
            if !self.abandoned.is_null() {
                (*self.abandoned).aprev = s;
            }
            self.abandoned = s;
        }
    }

    unsafe fn unlink_abandoned(&mut self, s: *mut Slab) {
        // SAFETY: s is on the abandoned list; lock held.
        unsafe {
            if !(*s).aprev.is_null() {
                (*(*s).aprev).anext = (*s).anext;
            } else {
                self.abandoned = (*s).anext;
            }
            if !(*s).anext.is_null() {
                (*(*s).anext).aprev = (*s).aprev;
            }
            (*s).anext = null_mut();
            (*s).aprev = null_mut();
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

    /// Records a new large object (lock held).
    pub fn add_large(&mut self, bytes: u64) {
        self.large_bytes += bytes;
        self.large_objects += 1;
        self.large_allocs += 1;
    }

    /// Forgets a freed large object (lock held).
    pub fn remove_large(&mut self, bytes: u64) {
        self.large_bytes -= bytes;
        self.large_objects -= 1;
    }
}

/// Releases a dying cache that just lost its last reference. The caller no longer holds its lock
/// and touches it no more after this call.
pub fn release_cache(c: *mut Cache) {
    TREE_LOCK.lock();
    release_cache_tree_locked(c);
    TREE_LOCK.unlock();
}

/// `release_cache` for a caller that holds TREE_LOCK.
pub fn release_cache_tree_locked(c: *mut Cache) {
    // SAFETY: we hold TREE_LOCK; c is dying with no reference, so only readers under TREE_LOCK
    // (statistics) could reach it, and they cannot run now.
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
        (*c).life.lock();
        let allocs = (*c).folded_allocs + (*c).large_allocs;
        (*c).life.unlock();
        (*target).folded_allocs.fetch_add(allocs, Ordering::Relaxed);
        let origin = (*c).origin;
        LIVE_CACHES.fetch_sub(1, Ordering::Relaxed);
        DYING_CACHES.fetch_sub(1, Ordering::Relaxed);
        CACHES.free(c);
        node_put(target);
        node_put(origin);
    }
}

/// Creates an open child of `parent` (or of its nearest open ancestor). Returns it with one handle.
pub fn create_child(parent: *mut ScopeNode, name: &str) -> *mut ScopeNode {
    let n = SCOPES.alloc();
    if n.is_null() {
        os::fatal(b"out of memory for scope metadata");
    }
    TREE_LOCK.lock();
    let p = nearest_live(parent);
    // SAFETY: n is ours; p is open and we hold TREE_LOCK, so it stays open and linked.
    unsafe {
        (*n).id
            .store(NEXT_ID.fetch_add(1, Ordering::Relaxed), Ordering::Release);
        (*n).refs.store(1, Ordering::Relaxed);
        (*n).handles.store(1, Ordering::Relaxed);
        (*n).state.store(LIVE, Ordering::Release);
        (*n).parent = p;
        node_get(p);
        (*n).limit.store(NO_LIMIT, Ordering::Relaxed);
        (*n).charged.store(0, Ordering::Relaxed);
        (*n).peak.store(0, Ordering::Relaxed);
        (*n).limit_hits.store(0, Ordering::Relaxed);
        (*n).folded_allocs.store(0, Ordering::Relaxed);
        (*n).final_allocs.store(0, Ordering::Relaxed);
        (*n).final_frees.store(0, Ordering::Relaxed);
        (*n).first_child = null_mut();
        (*n).reparented = null_mut();
        for c in (*n).caches.iter() {
            c.store(null_mut(), Ordering::Relaxed);
        }
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
    TREE_LOCK.unlock();
    n
}

/// Takes a user handle.
pub fn handle_get(n: *mut ScopeNode) {
    // SAFETY: the caller holds a reference.
    unsafe { (*n).handles.fetch_add(1, Ordering::Relaxed) };
    node_get(n);
}

/// Drops a user handle; the last one closes the scope.
pub fn handle_put(n: *mut ScopeNode) {
    // SAFETY: the caller holds the handle it drops.
    let last = unsafe { (*n).handles.fetch_sub(1, Ordering::AcqRel) == 1 };
    if last {
        close(n);
    }
    node_put(n);
}

/// Closes `n` and its open descendants (idempotent; the root never closes).
pub fn close(n: *mut ScopeNode) {
    if n == root() {
        return;
    }
    TREE_LOCK.lock();
    // SAFETY: we hold TREE_LOCK and the caller holds a reference on n.
    unsafe {
        if !(*n).is_closed() {
            let target = (*n).parent; // open: an open scope's ancestors are open
            close_subtree(n, target);
        }
    }
    TREE_LOCK.unlock();
}

/// Closes `x` and its descendants, children first, re-targeting everything to `target`.
unsafe fn close_subtree(x: *mut ScopeNode, target: *mut ScopeNode) {
    // SAFETY: TREE_LOCK held by the caller; every open node has a handle, so it stays alive.
    unsafe {
        let fig = tree_figures(x);
        (*x).final_allocs.store(fig.1.allocs, Ordering::Relaxed);
        (*x).final_frees
            .store(fig.1.allocs - fig.1.objects, Ordering::Relaxed);
        while !(*x).first_child.is_null() {
            close_subtree((*x).first_child, target);
        }
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
        // Lock order: node lock, then cache lock (as in lock_cache).
        (*x).lock.lock();
        for slot in (*x).caches.iter() {
            if slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            let c = slot.swap(null_mut(), Ordering::AcqRel);
            node_get(target);
            (*c).life.lock();
            let release_now = (*c).life.kill_locked();
            (*c).scope = target;
            (*c).life.unlock();
            DYING_CACHES.fetch_add(1, Ordering::Relaxed);
            link_reparented(target, c);
            node_put(x);
            if release_now {
                release_cache_tree_locked(c);
            }
        }
        (*x).lock.unlock();
        while !(*x).reparented.is_null() {
            let c = (*x).reparented;
            (*x).reparented = (*c).rnext;
            node_get(target);
            (*c).life.lock();
            (*c).scope = target;
            (*c).life.unlock();
            link_reparented(target, c);
            node_put(x);
        }
        let folded = (*x).folded_allocs.swap(0, Ordering::Relaxed);
        (*target).folded_allocs.fetch_add(folded, Ordering::Relaxed);
    }
    OPEN_SCOPES.fetch_sub(1, Ordering::Relaxed);
}

unsafe fn link_reparented(target: *mut ScopeNode, c: *mut Cache) {
    // SAFETY: TREE_LOCK held by the caller.
    unsafe {
        (*c).rprev = null_mut();
        (*c).rnext = (*target).reparented;
        if !(*target).reparented.is_null() {
            (*(*target).reparented).rprev = c;
        }
        (*target).reparented = c;
    }
}

/// Live figures of a set of caches: (bytes, objects, allocs).
#[derive(Clone, Copy, Default)]
pub struct Figures {
    pub bytes: u64,
    pub objects: u64,
    pub allocs: u64,
}

impl Figures {
    fn add(&mut self, o: Figures) {
        self.bytes += o.bytes;
        self.objects += o.objects;
        self.allocs += o.allocs;
    }
}

unsafe fn cache_figures(c: *mut Cache) -> Figures {
    let mut f = Figures::default();
    // SAFETY: TREE_LOCK held by the caller keeps c from being released; its lists are read under
    // its lock.
    unsafe {
        (*c).life.lock();
        let mut s = (*c).slabs;
        while !s.is_null() {
            let live = (*s).live() as u64;
            f.bytes += live * (*s).block_size as u64;
            f.objects += live;
            f.allocs += (*s).allocs.load(Ordering::Relaxed);
            s = (*s).cnext;
        }
        f.bytes += (*c).large_bytes;
        f.objects += (*c).large_objects;
        f.allocs += (*c).folded_allocs + (*c).large_allocs;
        (*c).life.unlock();
    }
    f
}

unsafe fn self_figures(x: *mut ScopeNode) -> Figures {
    let mut f = Figures::default();
    // SAFETY: TREE_LOCK held by the caller.
    unsafe {
        for slot in (*x).caches.iter() {
            let c = slot.load(Ordering::Acquire);
            if !c.is_null() {
                f.add(cache_figures(c));
            }
        }
        let mut c = (*x).reparented;
        while !c.is_null() {
            f.add(cache_figures(c));
            c = (*c).rnext;
        }
        f.allocs += (*x).folded_allocs.load(Ordering::Relaxed);
    }
    f
}

/// (self, total) figures of an open scope, TREE_LOCK held.
unsafe fn tree_figures(x: *mut ScopeNode) -> (Figures, Figures) {
    // SAFETY: TREE_LOCK held by the caller.
    unsafe {
        let me = self_figures(x);
        let mut total = me;
        let mut ch = (*x).first_child;
        while !ch.is_null() {
            total.add(tree_figures(ch).1);
            ch = (*ch).next_sibling;
        }
        (me, total)
    }
}

/// Statistics of a scope; see `ScopeStats`.
pub fn stats(x: *mut ScopeNode) -> crate::ScopeStats {
    TREE_LOCK.lock();
    // SAFETY: TREE_LOCK held; the caller holds a reference on x.
    let st = unsafe {
        let peak = (*x).peak.load(Ordering::Relaxed);
        let limit_hits = (*x).limit_hits.load(Ordering::Relaxed);
        if (*x).is_closed() {
            crate::ScopeStats {
                peak_bytes: peak,
                limit_hits,
                allocs: (*x).final_allocs.load(Ordering::Relaxed),
                frees: (*x).final_frees.load(Ordering::Relaxed),
                ..Default::default()
            }
        } else {
            let (me, total) = tree_figures(x);
            crate::ScopeStats {
                bytes: total.bytes,
                self_bytes: me.bytes,
                objects: total.objects,
                self_objects: me.objects,
                peak_bytes: peak,
                charged_bytes: (*x).charged.load(Ordering::Relaxed),
                allocs: total.allocs,
                frees: total.allocs - total.objects,
                limit_hits,
            }
        }
    };
    TREE_LOCK.unlock();
    st
}

/// Sets or removes the hard limit.
pub fn set_limit(x: *mut ScopeNode, limit: Option<usize>) {
    let v = limit.map(|l| l as u64).unwrap_or(NO_LIMIT);
    // SAFETY: the caller holds a reference.
    unsafe { (*x).limit.store(v, Ordering::Relaxed) };
}

/// The hard limit.
pub fn limit(x: *mut ScopeNode) -> Option<usize> {
    // SAFETY: the caller holds a reference.
    let v = unsafe { (*x).limit.load(Ordering::Relaxed) };
    (v != NO_LIMIT).then_some(v as usize)
}

/// Restarts the high-water mark at the current charge.
pub fn reset_peak(x: *mut ScopeNode) {
    // SAFETY: the caller holds a reference.
    unsafe {
        (*x).peak
            .store((*x).charged.load(Ordering::Relaxed), Ordering::Relaxed)
    };
}

/// Calls `f` with each open child of `x`, each with a new handle taken, up to `max` children;
/// returns how many open children there are.
pub fn for_children(x: *mut ScopeNode, max: usize, mut f: impl FnMut(*mut ScopeNode)) -> usize {
    TREE_LOCK.lock();
    let mut n = 0;
    // SAFETY: TREE_LOCK held; children are open and alive.
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
    TREE_LOCK.unlock();
    n
}

/// Counts for `global_stats`.
pub fn counts() -> (usize, usize, usize, usize) {
    let open = OPEN_SCOPES.load(Ordering::Relaxed);
    let alive = ALIVE_SCOPES.load(Ordering::Relaxed);
    (
        open,
        alive.saturating_sub(open),
        LIVE_CACHES.load(Ordering::Relaxed),
        DYING_CACHES.load(Ordering::Relaxed),
    )
}

/// Returns the pages of released scope nodes to the OS (`trim`).
pub fn trim_pools() {
    SCOPES.trim();
    CACHES.trim();
}

/// Takes every scope-side lock before `fork` (tree, every cache, the scope pool).
pub fn lock_for_fork() {
    TREE_LOCK.lock();
    // SAFETY: the root is static; scope memory is never unmapped (a purged free node reads as
    // an unlocked lock).
    unsafe { (*root()).lock.lock() };
    SCOPES.for_each(|n, _| unsafe { (*n).lock.lock() });
    // SAFETY: pool memory is never unmapped; a free cache's lock is just an unused lock.
    CACHES.for_each(|c, _| unsafe { (*c).life.lock() });
}

/// Releases what `lock_for_fork` took.
pub fn unlock_after_fork() {
    // SAFETY: as in lock_for_fork.
    CACHES.for_each(|c, _| unsafe { (*c).life.force_unlock() });
    SCOPES.for_each(|n, _| unsafe { (*n).lock.force_unlock() });
    // SAFETY: as in lock_for_fork.
    unsafe { (*root()).lock.force_unlock() };
    TREE_LOCK.force_unlock();
}

/// The pools of this module, for fork handlers.
pub fn pools_lock(on: bool) {
    if on {
        SCOPES.lock();
        CACHES.lock();
    } else {
        CACHES.unlock();
        SCOPES.unlock();
    }
}

/// Calls `f` on every live cache under TREE_LOCK (for the abandoned-slab sweep): no cache can be
/// released meanwhile except by `f` itself, through `release_cache_tree_locked`.
pub fn for_each_cache_tree_locked(mut f: impl FnMut(*mut Cache)) {
    TREE_LOCK.lock();
    CACHES.for_each(|c, live| {
        if live {
            f(c)
        }
    });
    TREE_LOCK.unlock();
}

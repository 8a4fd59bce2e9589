//! Statistics of scopes: usage summed on read, under the tree lock, from the slabs' counts (the
//! per-thread halves) and the caches' large-object figures. Exact once threads are quiet.

use super::cache::Cache;
use super::scope::{own_caches, tree_lock, ScopeNode, TreeGuard};
use super::size_class::{class_of, LARGE_CLASS, NCLASSES, SHARED_CLASS};
use super::slab::{Slab, KIND_STUB};
use crate::accounting::counter::EventCounts;
use crate::sync::Ordering;

/// Figures of a scope. `bytes`/`objects` count usable sizes of live objects charged to the scope
/// and its descendants (open ones, and closed ones reparented into it); `self_*` exclude open
/// descendants. Closed scopes report zero for the live figures (they moved to the ancestor).
/// `#[repr(C)]`: the C library hands it out as `struct scopealloc_stats`.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let s = scopealloc::Scope::root().child("figures");
/// let v = s.run(|| vec![0u8; 1000]);
/// let st = s.stats();
/// assert_eq!((st.objects, st.allocs, st.frees), (1, 1, 0));
/// assert!(st.bytes >= 1000 && st.charged_bytes >= st.bytes && st.peak_bytes >= st.bytes);
/// drop(v);
/// assert_eq!(s.stats().frees, 1);
/// ```
/// With the `serde` feature it serialises with cgroup v2's names where they mean the same:
/// `current` (`bytes`), `peak` (`peak_bytes`), `charged` (`charged_bytes`).
#[repr(C)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeStats {
    /// Usable bytes of live objects, descendants included.
    #[cfg_attr(feature = "serde", serde(rename = "current"))]
    pub bytes: u64,
    /// Usable bytes of live objects charged to this scope itself.
    pub self_bytes: u64,
    /// Live objects, descendants included.
    pub objects: u64,
    /// Live objects of this scope itself.
    pub self_objects: u64,
    /// High-water mark of `charged_bytes` since creation or `Scope::reset_peak`: above the peak
    /// of live bytes by at most `max(4 KiB, live / 8)` plus one object per thread that
    /// allocated in the scope (stocks grow with the live bytes).
    #[cfg_attr(feature = "serde", serde(rename = "peak"))]
    pub peak_bytes: u64,
    /// Bytes held against the limit: live bytes plus what per-thread stocks hold in advance
    /// (at most `max(8 KiB, live / 4)`, 128 KiB at most, per thread that allocated in the scope)
    /// and remote frees not yet collected by their slab's thread.
    #[cfg_attr(feature = "serde", serde(rename = "charged"))]
    pub charged_bytes: u64,
    /// Allocations charged here since creation, descendants included.
    pub allocs: u64,
    /// Frees of those (`allocs - objects`).
    pub frees: u64,
    /// Allocations refused because they would have passed this scope's limit.
    pub limit_hits: u64,
}

/// Counts of a scope's events, as cgroup v2's `memory.events`: crossings of the soft limit
/// (`high`) and refusals by the hard limit (`max`). [`Scope::events`](crate::Scope::events)
/// gives the hierarchical figures (an event of a descendant's limit counts in every ancestor
/// too, and stays there after the descendant closes), [`Scope::events_local`](crate::Scope::events_local)
/// the events of this scope's own limits only (`memory.events.local`).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::Scope;
/// let tenant = Scope::root().child("tenant");
/// let req = tenant.child("request");
/// req.set_limit(Some(64 << 10));
/// assert!(req.run(|| Vec::<u8>::new().try_reserve_exact(1 << 20)).is_err());
/// assert_eq!(req.events_local().max, 1);
/// assert_eq!(tenant.events().max, 1); // hierarchical: the request's refusal counts here too
/// assert_eq!(tenant.events_local().max, 0); // but not as the tenant's own
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeEvents {
    /// Times `charged_bytes` passed the soft limit (`Scope::set_high`), once per crossing.
    pub high: u64,
    /// Allocations refused by the hard limit (`Scope::set_limit`); the local figure is
    /// [`ScopeStats::limit_hits`].
    pub max: u64,
}

impl ScopeEvents {
    /// Each event's name and count: the one list the report's exports read (text, Prometheus).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let r = scopealloc::Scope::root().child("events-iter-doc").report();
    /// let names: Vec<&str> = r.scopes[0].events.iter().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["high", "max"]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [("high", self.high), ("max", self.max)].into_iter()
    }

    /// A snapshot of `e` (each count read once; the two are not one atomic snapshot).
    pub(crate) fn read(e: &EventCounts) -> ScopeEvents {
        ScopeEvents {
            high: e.high.load(Ordering::Relaxed),
            max: e.max.load(Ordering::Relaxed),
        }
    }
}

/// Live usage of a set of caches.
#[derive(Clone, Copy, Default, Debug)]
pub struct Usage {
    /// Usable bytes of live objects.
    pub bytes: u64,
    /// Live objects.
    pub objects: u64,
    /// Allocations ever charged.
    pub allocs: u64,
}

impl Usage {
    /// Nothing.
    pub const ZERO: Usage = Usage {
        bytes: 0,
        objects: 0,
        allocs: 0,
    };

    fn add(&mut self, o: Usage) {
        self.bytes += o.bytes;
        self.objects += o.objects;
        self.allocs += o.allocs;
    }
}

/// Figures of one cache, read under its lock: what statistics sum and what a report shows per
/// size class.
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct CacheFigures {
    /// Live objects (small: in its slabs; large class: large and huge objects).
    pub objects: u64,
    /// Usable bytes of those.
    pub bytes: u64,
    /// Allocations ever charged to the cache.
    pub allocs: u64,
    /// Slabs attached (small classes).
    pub slabs: u64,
    /// Bytes of objects the slabs can hold: Σ capacity × object size (small classes).
    pub capacity_bytes: u64,
    /// The part of `objects` / `bytes` that is huge objects (large class).
    pub huge_objects: u64,
    pub huge_bytes: u64,
}

impl CacheFigures {
    /// Adds another cache's figures (of the same class).
    pub(super) fn add(&mut self, o: &CacheFigures) {
        self.objects += o.objects;
        self.bytes += o.bytes;
        self.allocs += o.allocs;
        self.slabs += o.slabs;
        self.capacity_bytes += o.capacity_bytes;
        self.huge_objects += o.huge_objects;
        self.huge_bytes += o.huge_bytes;
    }
}

/// Figures of one cache.
///
/// # Safety
/// The tree lock is held (it keeps `c` from being released).
pub(super) unsafe fn cache_figures(c: *mut Cache) -> CacheFigures {
    let mut f = CacheFigures::default();
    // SAFETY: the tree lock keeps c alive; its lists and figures are read under its own lock.
    unsafe {
        (*c).refs.lock();
        // `allocs` is read before `used` (through `live`), and the owner raises `allocs` before
        // `used` (see `frontend::alloc::pop`), so a racing pop never shows objects > allocs.
        let mut s = (*c).slabs;
        while !s.is_null() {
            add_slab(&mut f, s);
            s = (*s).cnext;
        }
        f.bytes += (*c).large_bytes;
        f.objects += (*c).large_objects;
        f.huge_bytes = (*c).huge_bytes;
        f.huge_objects = (*c).huge_objects;
        f.allocs += (*c).folded_allocs + (*c).large_allocs;
        (*c).refs.unlock();
    }
    f.objects = f.objects.min(f.allocs);
    f
}

/// Adds slab (or stub) `s`'s figures to `f`.
///
/// # Safety
/// `s` is attached to a cache whose lock the caller holds.
unsafe fn add_slab(f: &mut CacheFigures, s: *mut Slab) {
    // SAFETY: the cache lock keeps s attached (the contract); its counts are atomics.
    unsafe {
        f.allocs += (*s).allocs.load(Ordering::Relaxed);
        let live = (*s).live() as u64;
        let size = (*s).block_size as u64;
        f.bytes += live * size;
        f.objects += live;
        // A stub has no pages: its objects sit in shared slabs (slab::KIND_STUB).
        f.slabs += ((*s).kind != KIND_STUB) as u64;
        f.capacity_bytes += (*s).capacity as u64 * size;
    }
}

/// Adds the figures of a scope's shared cache (`SHARED_CLASS`: stubs of every class) to
/// `figs` by the stubs' classes, setting their bits in `seen`; returns the allocations of the
/// stubs already released (which have no class any more).
///
/// # Safety
/// The tree lock is held (it keeps `c` from being released); `c` is a `SHARED_CLASS` cache.
pub(super) unsafe fn shared_figures_by_class(
    c: *mut Cache,
    figs: &mut [CacheFigures; NCLASSES + 1],
    seen: &mut u128,
) -> u64 {
    // SAFETY: as in `cache_figures`.
    unsafe {
        debug_assert_eq!((*c).class as usize, SHARED_CLASS);
        (*c).refs.lock();
        let mut s = (*c).slabs;
        while !s.is_null() {
            let class = (*s).class as usize;
            add_slab(&mut figs[class], s);
            *seen |= 1 << class;
            s = (*s).cnext;
        }
        let folded = (*c).folded_allocs;
        (*c).refs.unlock();
        folded
    }
}

/// Live usage by size class: one row per class, [`LARGE_CLASS`] last (large and huge objects).
pub type ClassUsage = [Usage; NCLASSES + 1];

/// Adds the usage of cache `c` to `out`, by size class (a slab's class is its object size's).
///
/// # Safety
/// The tree lock is held (it keeps `c` from being released).
unsafe fn cache_usage_by_class(c: *mut Cache, out: &mut ClassUsage) {
    // SAFETY: as in `cache_usage`.
    unsafe {
        (*c).refs.lock();
        let mut s = (*c).slabs;
        while !s.is_null() {
            let size = (*s).block_size as usize;
            let row = &mut out[class_of(size)];
            let live = (*s).live() as u64;
            row.bytes += live * size as u64;
            row.objects += live;
            row.allocs += (*s).allocs.load(Ordering::Relaxed);
            s = (*s).cnext;
        }
        let large = &mut out[LARGE_CLASS];
        large.bytes += (*c).large_bytes;
        large.objects += (*c).large_objects;
        large.allocs += (*c).large_allocs;
        (*c).refs.unlock();
    }
}

/// Adds the live usage of the subtree of `top` to `out`, by size class (no allocation: `out`
/// is the caller's).
///
/// # Safety
/// The caller holds the tree lock (`_tree`); `top` is open and alive.
pub(super) unsafe fn subtree_usage_by_class(
    _tree: &TreeGuard,
    top: *mut ScopeNode,
    out: &mut ClassUsage,
) {
    // SAFETY: the tree lock guards the links, the caches arrays' writers and the reparented
    // lists; nodes in the tree are alive.
    unsafe {
        let mut x = top;
        while !x.is_null() {
            for slot in (*x).caches.iter() {
                let c = slot.load(Ordering::Acquire);
                if !c.is_null() {
                    cache_usage_by_class(c, out);
                }
            }
            let mut c = (*x).reparented;
            while !c.is_null() {
                cache_usage_by_class(c, out);
                c = (*c).rnext;
            }
            x = next_preorder(top, x);
        }
    }
}

/// Usage of one cache.
///
/// # Safety
/// The tree lock is held (it keeps `c` from being released).
unsafe fn cache_usage(c: *mut Cache) -> Usage {
    // SAFETY: per the contract.
    let f = unsafe { cache_figures(c) };
    Usage {
        bytes: f.bytes,
        objects: f.objects,
        allocs: f.allocs,
    }
}

/// Usage charged to `x` itself (its caches and the caches reparented into it).
///
/// # Safety
/// The tree lock is held (`tree`); `x` is alive.
unsafe fn self_usage(tree: &TreeGuard, x: *mut ScopeNode) -> Usage {
    let mut f = Usage::default();
    // SAFETY: the tree lock guards the caches array's writers and the reparented list.
    unsafe {
        for (_, c) in own_caches(tree, x) {
            f.add(cache_usage(c));
        }
        let mut c = (*x).reparented;
        while !c.is_null() {
            f.add(cache_usage(c));
            c = (*c).rnext;
        }
        f.allocs += (*x).folded_allocs.load(Ordering::Relaxed);
    }
    f
}

/// The next node of a pre-order walk of the subtree of `top` after `x`, or null at the end.
///
/// # Safety
/// The tree lock is held; `x` is in the subtree of `top`.
unsafe fn next_preorder(top: *mut ScopeNode, mut x: *mut ScopeNode) -> *mut ScopeNode {
    // SAFETY: the tree lock guards the links; nodes in the tree are alive.
    unsafe {
        if !(*x).first_child.is_null() {
            return (*x).first_child;
        }
        while x != top {
            if !(*x).next_sibling.is_null() {
                return (*x).next_sibling;
            }
            x = (*x).parent;
        }
        core::ptr::null_mut()
    }
}

/// (self, total) usage of an open scope: an iterative walk of its subtree.
///
/// # Safety
/// The tree lock is held (`tree`); `top` is open and alive.
unsafe fn subtree_usage(tree: &TreeGuard, top: *mut ScopeNode) -> (Usage, Usage) {
    // SAFETY: per the contract.
    unsafe {
        let me = self_usage(tree, top);
        let mut total = me;
        let mut x = next_preorder(top, top);
        while !x.is_null() {
            total.add(self_usage(tree, x));
            x = next_preorder(top, x);
        }
        (me, total)
    }
}

/// Records in each node's `scratch` the total usage of its subtree (for the close that follows):
/// one iterative post-order walk.
///
/// # Safety
/// `top` is open and alive, and the caller holds the tree lock (`_tree`).
pub(super) unsafe fn record_subtree_usage(tree: &TreeGuard, top: *mut ScopeNode) {
    // SAFETY: the tree lock guards the links and the scratch fields; nodes in the tree are alive.
    unsafe {
        let mut x = top;
        (*x).scratch = self_usage(tree, x);
        'down: loop {
            while !(*x).first_child.is_null() {
                x = (*x).first_child;
                (*x).scratch = self_usage(tree, x);
            }
            loop {
                // x's subtree is complete.
                if x == top {
                    return;
                }
                let p = (*x).parent;
                let done = (*x).scratch;
                (*p).scratch.add(done);
                if !(*x).next_sibling.is_null() {
                    x = (*x).next_sibling;
                    (*x).scratch = self_usage(tree, x);
                    continue 'down;
                }
                x = p;
            }
        }
    }
}

/// Statistics of a scope; see [`ScopeStats`].
///
/// # Safety
/// `x` is a live node on which the caller holds a reference (a handle, a table's, a child's or a cache's).
pub unsafe fn stats(x: *mut ScopeNode) -> ScopeStats {
    let tree = tree_lock();
    // SAFETY: the tree lock is held; the caller holds a reference on x.
    let st = unsafe {
        let c = &(*x).counter;
        let peak = c.peak.load(Ordering::Relaxed);
        let limit_hits = c.events_local.max.load(Ordering::Relaxed);
        if (*x).is_closed() {
            ScopeStats {
                peak_bytes: peak,
                limit_hits,
                allocs: (*x).final_allocs.load(Ordering::Relaxed),
                frees: (*x).final_frees.load(Ordering::Relaxed),
                ..Default::default()
            }
        } else {
            let (me, total) = subtree_usage(&tree, x);
            ScopeStats {
                bytes: total.bytes,
                self_bytes: me.bytes,
                objects: total.objects,
                self_objects: me.objects,
                peak_bytes: peak,
                charged_bytes: c.charged.load(Ordering::Relaxed),
                allocs: total.allocs,
                frees: total.allocs - total.objects,
                limit_hits,
            }
        }
    };
    drop(tree);
    st
}

//! Snapshots of a subtree of scopes, for reports: one hold of the tree lock copies every open
//! scope of the subtree and its per-size-class figures into a buffer mapped from the OS, so that
//! nothing is allocated under the lock; the caller builds its own values from the buffer once the
//! lock is released, and dropping the snapshot unmaps it.
//!
//! # Who may touch what
//! - The walk runs under the tree lock, which keeps the subtree's shape (children lists, the
//!   `reparented` lists, the caches' existence) still: every scope of the snapshot was open and in
//!   the subtree at one instant, and every parent's totals computed from it are exactly the sums of
//!   its children's. Each cache is read under its own lock, as `stats` does; the slabs' counts are
//!   written by their owners without locks, so a figure is a value that was current during the
//!   hold (exact once threads are quiet).
//! - The buffer is sized before the lock is taken, from the global counts of open scopes and of
//!   caches; if the subtree grew past them meanwhile, the walk stops, the lock is released, and
//!   the snapshot is taken again in a buffer twice as big.
//! - The buffer is the snapshot's own until it is dropped: no other thread ever sees it.

use super::cache::Cache;
use super::scope::{own_caches, tree_lock, ScopeNode, TreeGuard, NAME_MAX};
use super::size_class::{class_size, LARGE_CLASS, NCLASSES, SHARED_CLASS};
use super::stats::{cache_figures, shared_figures_by_class, CacheFigures, Usage};
use crate::accounting::counter::NO_LIMIT;
use crate::platform::os;
use crate::sync::{AtomicU64, Ordering};
use core::mem::size_of;

/// Longest hold of the tree lock by a snapshot since start, in ns, and the last one (for the
/// benchmark and tests: `testing::report_hold_ns`).
pub static LONGEST_HOLD_NS: AtomicU64 = AtomicU64::new(0);
pub static LAST_HOLD_NS: AtomicU64 = AtomicU64::new(0);

/// `NodeRecord::parent` of the subtree's top.
pub const NO_PARENT: u32 = u32::MAX;

/// What a [`ClassRecord`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RowKind {
    /// Small objects of one size class, in slabs.
    Small = 0,
    /// Large objects (page spans inside segments).
    Large = 1,
    /// Huge objects (a mapping each).
    Huge = 2,
}

/// One scope of a snapshot. Plain data.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NodeRecord {
    /// The scope's id.
    pub id: u64,
    /// Index of the parent's record (records are in pre-order), `NO_PARENT` for the top.
    pub parent: u32,
    /// Depth below the top (0 for the top).
    pub depth: u32,
    /// First of this scope's rows in [`Snapshot::rows`], and how many.
    pub first_row: u32,
    pub rows: u32,
    /// Usage charged to the scope itself (caches reparented into it included).
    pub own: Usage,
    /// The counter: `charged`, `peak`, `limit` (`NO_LIMIT`: none), `limit_hits`.
    pub charged: u64,
    pub peak: u64,
    pub limit: u64,
    pub limit_hits: u64,
    /// The soft limit (`NO_LIMIT`: none) and the hierarchical event counts.
    pub high: u64,
    pub events: super::stats::ScopeEvents,
    /// Closed scopes (only the top can be one): allocations and frees at close.
    pub final_allocs: u64,
    pub final_frees: u64,
    pub closed: bool,
    name_len: u8,
    name: [u8; NAME_MAX],
}

impl NodeRecord {
    /// The scope's name.
    pub fn name(&self) -> &str {
        core::str::from_utf8(&self.name[..self.name_len as usize]).unwrap_or("?")
    }

    /// The soft limit, if any.
    pub fn high(&self) -> Option<u64> {
        (self.high != NO_LIMIT).then_some(self.high)
    }

    /// The hard limit, if any.
    pub fn limit(&self) -> Option<u64> {
        (self.limit != NO_LIMIT).then_some(self.limit)
    }
}

/// The objects of one size class (or the large or huge objects) charged to one scope itself.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClassRecord {
    pub kind: RowKind,
    /// Object size of the class (small rows; 0 for large and huge rows).
    pub object_size: u32,
    /// Live objects and their usable bytes.
    pub objects: u64,
    pub bytes: u64,
    /// Bytes the rows' slabs can hold (Σ capacity × object size; small rows).
    pub capacity_bytes: u64,
    /// Slabs (small rows).
    pub slabs: u64,
}

/// A snapshot of a subtree, in a buffer of its own mapped from the OS (unmapped on drop).
pub struct Snapshot {
    base: *mut u8,
    len: usize,
    nodes: usize,
    rows: usize,
    rows_offset: usize,
}

/// Room for a walk: record arrays of fixed capacity in the snapshot's buffer.
struct Buffer {
    nodes: *mut NodeRecord,
    node_cap: usize,
    nnodes: usize,
    rows: *mut ClassRecord,
    row_cap: usize,
    nrows: usize,
    /// Scratch of `own_rows`: one scope's figures by class, all zero between scopes.
    figs: [CacheFigures; NCLASSES + 1],
}

impl Snapshot {
    /// Takes a snapshot of the subtree of `top`. None when the OS refuses memory for the buffer.
    ///
    /// # Safety
    /// `top` is a live node on which the caller holds a reference (a handle, a table's, a
    /// child's or a cache's).
    pub unsafe fn take(top: *mut ScopeNode) -> Option<Snapshot> {
        let (open, _, caches, _) = super::scope::counts();
        // A cache gives one row, the large-object cache at most two.
        // SAFETY: the caller's contract is take_sized's.
        unsafe { Snapshot::take_sized(top, open + 64, 2 * caches + 64) }
    }

    /// [`Snapshot::take`] into a buffer first sized for `node_cap` scopes and `row_cap` rows,
    /// doubled until the subtree fits.
    ///
    /// # Safety
    /// As for [`Snapshot::take`].
    unsafe fn take_sized(
        top: *mut ScopeNode,
        mut node_cap: usize,
        mut row_cap: usize,
    ) -> Option<Snapshot> {
        loop {
            let rows_offset = (node_cap * size_of::<NodeRecord>()).next_multiple_of(64);
            let len = rows_offset + row_cap * size_of::<ClassRecord>();
            let base = os::map_aligned(len, 4096);
            if base.is_null() {
                return None;
            }
            let mut buf = Buffer {
                nodes: base.cast::<NodeRecord>(),
                node_cap,
                nnodes: 0,
                // SAFETY: rows_offset < len: inside the mapping.
                rows: unsafe { base.add(rows_offset) }.cast::<ClassRecord>(),
                row_cap,
                nrows: 0,
                figs: [CacheFigures::default(); NCLASSES + 1],
            };
            let tree = tree_lock();
            let t0 = os::now_ns();
            // SAFETY: the tree lock is held; the caller holds a reference on top; the buffer is
            // ours, sized as `buf` says.
            let complete = unsafe { walk(&tree, top, &mut buf) };
            drop(tree);
            let held = os::now_ns().saturating_sub(t0);
            LAST_HOLD_NS.store(held, Ordering::Relaxed);
            LONGEST_HOLD_NS.fetch_max(held, Ordering::Relaxed);
            let snap = Snapshot {
                base,
                len,
                nodes: buf.nnodes,
                rows: buf.nrows,
                rows_offset,
            };
            if complete {
                return Some(snap);
            }
            drop(snap);
            node_cap *= 2;
            row_cap *= 2;
        }
    }

    /// The scopes, in pre-order (the top first; a scope's descendants follow it).
    pub fn nodes(&self) -> &[NodeRecord] {
        // SAFETY: the first `nodes` records were written by the walk; the buffer lives as long as
        // self and nobody else writes it.
        unsafe { core::slice::from_raw_parts(self.base.cast::<NodeRecord>(), self.nodes) }
    }

    /// The rows of every scope (a scope's are `first_row..first_row + rows`).
    pub fn rows(&self) -> &[ClassRecord] {
        // SAFETY: as in `nodes`.
        unsafe {
            core::slice::from_raw_parts(
                self.base.add(self.rows_offset).cast::<ClassRecord>(),
                self.rows,
            )
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // SAFETY: the buffer was mapped by `take` with this length; the slices handed out borrow
        // self, so nothing refers to it any more.
        unsafe { os::unmap_scratch(self.base, self.len) };
    }
}

/// Pre-order walk of the subtree of `top` into `buf`; false if the buffer is too small.
///
/// # Safety
/// The tree lock is held (`tree`); `top` is alive; `buf`'s arrays are writable for their
/// capacities.
unsafe fn walk(tree: &TreeGuard, top: *mut ScopeNode, buf: &mut Buffer) -> bool {
    // SAFETY: the tree lock guards the links; nodes in the tree are alive (open nodes hold
    // handles or children; the top is held by the caller).
    unsafe {
        let Some(mut cur) = record(tree, buf, top, NO_PARENT, 0) else {
            return false;
        };
        if (*top).is_closed() {
            return true;
        }
        let mut x = top;
        loop {
            if !(*x).first_child.is_null() {
                x = (*x).first_child;
                let depth = (*buf.nodes.add(cur)).depth + 1;
                match record(tree, buf, x, cur as u32, depth) {
                    Some(i) => cur = i,
                    None => return false,
                }
                continue;
            }
            loop {
                if x == top {
                    return true;
                }
                let parent = (*buf.nodes.add(cur)).parent;
                if !(*x).next_sibling.is_null() {
                    x = (*x).next_sibling;
                    let depth = (*buf.nodes.add(cur)).depth;
                    match record(tree, buf, x, parent, depth) {
                        Some(i) => cur = i,
                        None => return false,
                    }
                    break;
                }
                x = (*x).parent;
                cur = parent as usize;
            }
        }
    }
}

/// Appends the record of `x` and its rows; its index, or None when the buffer is full.
///
/// # Safety
/// As for `walk`; `x` is alive.
unsafe fn record(
    tree: &TreeGuard,
    buf: &mut Buffer,
    x: *mut ScopeNode,
    parent: u32,
    depth: u32,
) -> Option<usize> {
    if buf.nnodes == buf.node_cap || buf.nnodes >= NO_PARENT as usize {
        return None;
    }
    // SAFETY: per the contract.
    unsafe {
        let c = &(*x).counter;
        let closed = (*x).is_closed();
        let first_row = buf.nrows;
        let own = if closed {
            Usage::ZERO
        } else {
            own_rows(tree, x, buf)?
        };
        let mut name = [0u8; NAME_MAX];
        let n = (*x).name().as_bytes();
        name[..n.len()].copy_from_slice(n);
        let i = buf.nnodes;
        buf.nodes.add(i).write(NodeRecord {
            id: (*x).id.load(Ordering::Relaxed),
            parent,
            depth,
            first_row: first_row as u32,
            rows: (buf.nrows - first_row) as u32,
            own,
            charged: if closed {
                0
            } else {
                c.charged.load(Ordering::Relaxed)
            },
            peak: c.peak.load(Ordering::Relaxed),
            limit: c.limit.load(Ordering::Relaxed),
            limit_hits: c.events_local.max.load(Ordering::Relaxed),
            high: c.high.load(Ordering::Relaxed),
            events: super::stats::ScopeEvents::read(&c.events),
            final_allocs: (*x).final_allocs.load(Ordering::Relaxed),
            final_frees: (*x).final_frees.load(Ordering::Relaxed),
            closed,
            name_len: n.len() as u8,
            name,
        });
        buf.nnodes += 1;
        Some(i)
    }
}

/// Appends a row; false when the buffer is full.
fn push(buf: &mut Buffer, row: ClassRecord) -> bool {
    if buf.nrows == buf.row_cap {
        return false;
    }
    // SAFETY: nrows < row_cap: inside the buffer's rows array, which is ours.
    unsafe { buf.rows.add(buf.nrows).write(row) };
    buf.nrows += 1;
    true
}

/// Appends the rows of the caches charged to `x` itself (its own and those reparented into it,
/// summed by class); returns their total usage, or None when the buffer is full.
///
/// # Safety
/// As for `record`; `x` is open.
unsafe fn own_rows(tree: &TreeGuard, x: *mut ScopeNode, buf: &mut Buffer) -> Option<Usage> {
    let mut seen: u128 = 0;
    let mut released_stub_allocs = 0;
    let figs = &mut buf.figs;
    let mut add = |c: *mut Cache, class: usize| {
        if class == SHARED_CLASS {
            // Stubs of every class: their rows are their classes'.
            // SAFETY: the tree lock is held (the contract), which keeps c alive.
            released_stub_allocs += unsafe { shared_figures_by_class(c, figs, &mut seen) };
            return;
        }
        // SAFETY: the tree lock is held (the contract), which keeps c alive.
        let f = unsafe { cache_figures(c) };
        figs[class].add(&f);
        seen |= 1 << class;
    };
    // SAFETY: the tree lock guards the caches arrays' writers and the reparented lists.
    unsafe {
        for (class, c) in own_caches(tree, x) {
            add(c, class);
        }
        let mut c = (*x).reparented;
        while !c.is_null() {
            add(c, (*c).class as usize);
            c = (*c).rnext;
        }
    }
    let mut own = Usage::ZERO;
    // SAFETY: x is alive (the contract).
    own.allocs = unsafe { (*x).folded_allocs.load(Ordering::Relaxed) } + released_stub_allocs;
    while seen != 0 {
        let class = seen.trailing_zeros() as usize;
        seen &= seen - 1;
        let f = core::mem::take(&mut buf.figs[class]);
        own.bytes += f.bytes;
        own.objects += f.objects;
        own.allocs += f.allocs;
        if f.objects == 0 && f.slabs == 0 {
            continue;
        }
        let ok = if class < LARGE_CLASS {
            push(
                buf,
                ClassRecord {
                    kind: RowKind::Small,
                    object_size: class_size(class) as u32,
                    objects: f.objects,
                    bytes: f.bytes,
                    capacity_bytes: f.capacity_bytes,
                    slabs: f.slabs,
                },
            )
        } else {
            let large = ClassRecord {
                kind: RowKind::Large,
                object_size: 0,
                objects: f.objects.saturating_sub(f.huge_objects),
                bytes: f.bytes.saturating_sub(f.huge_bytes),
                capacity_bytes: 0,
                slabs: 0,
            };
            let huge = ClassRecord {
                kind: RowKind::Huge,
                objects: f.huge_objects,
                bytes: f.huge_bytes,
                ..large
            };
            (large.objects == 0 || push(buf, large)) && (huge.objects == 0 || push(buf, huge))
        };
        if !ok {
            return None;
        }
    }
    Some(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::scope::{close, create_child, handle_put_then, root};

    #[test]
    fn a_snapshot_that_does_not_fit_is_taken_again_in_a_bigger_buffer() {
        // SAFETY: the root is static; each child comes with the handle given back below.
        unsafe {
            let top = create_child(root(), "snap-grow");
            let kids: Vec<_> = (0..5).map(|_| create_child(top, "kid")).collect();
            let grand = create_child(kids[2], "grand");
            let snap = Snapshot::take_sized(top, 1, 1).expect("memory for the buffer");
            let nodes = snap.nodes();
            assert_eq!(nodes.len(), 7);
            assert_eq!(
                (nodes[0].name(), nodes[0].parent, nodes[0].depth),
                ("snap-grow", NO_PARENT, 0)
            );
            assert!(nodes[1..]
                .iter()
                .all(|n| n.parent != NO_PARENT && (n.parent as usize) < 7));
            let g = nodes.iter().position(|n| n.name() == "grand").unwrap();
            let p = nodes[g].parent as usize;
            assert_eq!(
                (nodes[g].depth, nodes[p].id),
                (2, (*kids[2]).id.load(Ordering::Relaxed))
            );
            assert_eq!(p + 1, g, "pre-order: a child follows its parent");
            drop(snap);
            let put = |n| handle_put_then(n, |n| close(n));
            put(grand);
            for k in kids {
                put(k);
            }
            put(top);
        }
    }
}

//! Reports of the scope tree: [`Report`] (a consistent snapshot of a subtree with the figures of
//! every scope and of its size classes, plus the allocator-wide figures), its text form
//! ([`Text`]), its Prometheus exposition ([`Metrics`]) and, with the `serde` feature, JSON.
//!
//! A report is taken in two steps: `objects::snapshot` copies the subtree under one hold of the
//! tree lock into a buffer mapped from the OS (nothing is allocated under the lock), then, with
//! the lock released, this module builds the Rust values (`Vec`s and `String`s, through the global
//! allocator, so charged to the caller's current scope) and the buffer is unmapped. The report's
//! own memory is allocated after the figures were read: it never appears in them. See
//! docs/REPORT.md.

use super::{heap_stats, HeapStats, Scope, ScopeEvents};
use crate::objects::snapshot::{RowKind, Snapshot, NO_PARENT};

mod prometheus;
#[cfg(feature = "svg")]
mod svg;
mod text;

#[cfg(feature = "prometheus-client")]
pub use prometheus::collector::ScopeCollector;
pub use prometheus::Metrics;
pub use text::Text;

/// What a [`ClassReport`] row counts.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::{ClassKind, Scope};
/// let s = Scope::root().child("kind-doc");
/// let v = s.run(|| vec![0u8; 100 << 10]); // 100 KiB: a large object
/// let r = s.report();
/// assert!(r.scopes[0].classes.iter().any(|c| c.kind == ClassKind::Large));
/// drop(v);
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClassKind {
    /// Small objects of one size class, in slabs.
    Small,
    /// Large objects (32 KiB – 2 MiB): page spans inside segments.
    Large,
    /// Huge objects (above 2 MiB): a mapping each.
    Huge,
}

/// The objects of one size class charged to a scope itself (not its descendants), or its large
/// or huge objects.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::{ClassKind, Scope};
/// let s = Scope::root().child("class-doc");
/// // A scope's first objects of a class sit in slabs shared with other small scopes: no slab
/// // of its own yet.
/// let few: Vec<Box<[u8; 64]>> = s.run(|| (0..10).map(|_| Box::new([0u8; 64])).collect());
/// let r = s.report();
/// let row = r.scopes[0].classes.iter().find(|c| c.object_size == 64).unwrap();
/// assert_eq!((row.kind, row.objects, row.bytes), (ClassKind::Small, 10, 640));
/// assert_eq!(row.slabs, 0);
/// // Past a few dozen objects the class gets slabs of its own.
/// let more: Vec<Box<[u8; 64]>> = s.run(|| (0..100).map(|_| Box::new([0u8; 64])).collect());
/// let r = s.report();
/// let row = r.scopes[0].classes.iter().find(|c| c.object_size == 64).unwrap();
/// assert_eq!((row.objects, row.bytes), (110, 110 * 64));
/// assert!(row.slabs >= 1 && row.free_bytes > 0); // the rest of the slab is free
/// drop((few, more));
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassReport {
    /// Small, large or huge.
    pub kind: ClassKind,
    /// Object size of the class (0 for large and huge rows, whose objects differ in size).
    pub object_size: u64,
    /// Live objects.
    pub objects: u64,
    /// Usable bytes of those.
    pub bytes: u64,
    /// Bytes free inside the scope's slabs of this class (capacity × object size − `bytes`):
    /// its fragmentation. 0 for large and huge rows.
    pub free_bytes: u64,
    /// Slabs of this class charged to the scope (0 for large and huge rows, and for objects in
    /// shared slabs: see `ARCHITECTURE.md`, "Shared slabs").
    pub slabs: u64,
}

/// One scope of a [`Report`]. The live figures are those of [`Scope::stats`], summed from the
/// same snapshot, so a scope's `bytes` is exactly its `self_bytes` plus its children's `bytes`.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::Scope;
/// let server = Scope::root().child("srv-doc");
/// let tenant = server.child("tenant-a");
/// tenant.set_limit(Some(1 << 20));
/// let v = tenant.run(|| vec![0u8; 1000]);
/// let r = server.report();
/// let t = r.get("srv-doc/tenant-a").unwrap();
/// assert_eq!((t.id, t.name.as_str(), t.limit), (tenant.id(), "tenant-a", Some(1 << 20)));
/// assert_eq!(t.bytes, tenant.stats().bytes);
/// assert_eq!(r.scopes[0].bytes, r.scopes[0].self_bytes + t.bytes);
/// drop(v);
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeReport {
    /// Names joined by `/` from the root's child (`server/tenant-a`); empty for the root.
    pub path: String,
    /// The scope's own name (`root` for the root).
    pub name: String,
    /// [`Scope::id`].
    pub id: u64,
    /// Index in [`Report::scopes`] of the parent; `None` for the report's top.
    pub parent: Option<usize>,
    /// Depth below the report's top (0 for the top).
    pub depth: usize,
    /// Closed (only the top of a report of a closed scope can be): live figures are zero.
    pub closed: bool,
    /// Usable bytes of live objects, descendants included (cgroup v2's `memory.current`).
    #[cfg_attr(feature = "serde", serde(rename = "current"))]
    pub bytes: u64,
    /// Live objects, descendants included.
    pub objects: u64,
    /// Usable bytes of live objects charged to this scope itself.
    pub self_bytes: u64,
    /// Live objects of this scope itself.
    pub self_objects: u64,
    /// [`crate::ScopeStats::peak_bytes`] (`memory.peak`).
    #[cfg_attr(feature = "serde", serde(rename = "peak"))]
    pub peak_bytes: u64,
    /// The hard limit (`memory.max`; `None`: no limit).
    #[cfg_attr(feature = "serde", serde(rename = "max"))]
    pub limit: Option<u64>,
    /// The soft limit (`memory.high`; `None`: none), see [`Scope::set_high`].
    #[cfg_attr(feature = "serde", serde(rename = "high"))]
    pub high: Option<u64>,
    /// [`crate::ScopeStats::charged_bytes`]: bytes held against the limit.
    #[cfg_attr(feature = "serde", serde(rename = "charged"))]
    pub charged_bytes: u64,
    /// Allocations charged here since creation, descendants included.
    pub allocs: u64,
    /// Frees of those.
    pub frees: u64,
    /// Event counts, hierarchical (`memory.events`): this scope's and its descendants'.
    pub events: ScopeEvents,
    /// The scope's own objects by size class, largest first; large and huge objects on rows of
    /// their own.
    pub classes: Vec<ClassReport>,
}

/// A report of a subtree of scopes (or the whole tree), taken by [`Scope::report`] or
/// [`crate::report`]: every open scope of it with its figures and size classes, in pre-order
/// with children largest first, and the allocator-wide figures.
///
/// Consistent: the subtree is copied under one hold of the tree lock, without allocating there;
/// see docs/REPORT.md for the guarantee and its cost.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::Scope;
/// let app = Scope::root().child("report-doc");
/// let big = app.child("big");
/// let small = app.child("small");
/// let a = big.run(|| vec![0u8; 64 << 10]);
/// let b = small.run(|| vec![0u8; 100]);
/// let r = app.report();
/// let names: Vec<&str> = r.scopes.iter().map(|s| s.path.as_str()).collect();
/// assert_eq!(names, ["report-doc", "report-doc/big", "report-doc/small"]);
/// println!("{r}"); // an indented tree, largest first
/// assert!(r.heap.mapped > 0);
/// drop((a, b));
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Allocator-wide figures, read just after the snapshot.
    pub heap: HeapStats,
    /// The scopes: the top first, then each scope followed by its descendants (pre-order),
    /// children largest first. Empty only if the OS refused memory for the snapshot.
    pub scopes: Vec<ScopeReport>,
}

/// A report of `top`'s subtree.
pub(super) fn of(top: &Scope) -> Report {
    // The snapshot first: nothing this function allocates is live when the figures are read.
    // SAFETY: the handle `top` holds a reference on its node.
    let snap = unsafe { Snapshot::take(top.node_ptr()) };
    let mut prefix: Vec<String> = Vec::new();
    let mut p = top.parent();
    while let Some(s) = p {
        p = s.parent();
        if p.is_some() {
            prefix.push(s.name().to_owned());
        }
    }
    prefix.reverse();
    let is_root = top.parent().is_none();
    let scopes = match &snap {
        Some(snap) => build(snap, &prefix, is_root),
        None => Vec::new(),
    };
    drop(snap);
    Report {
        heap: heap_stats(),
        scopes,
    }
}

/// The Rust values of a snapshot: totals summed up the tree, children sorted, paths joined.
fn build(snap: &Snapshot, prefix: &[String], is_root: bool) -> Vec<ScopeReport> {
    let nodes = snap.nodes();
    let rows = snap.rows();
    let n = nodes.len();
    // Pre-order: every descendant of i comes after i, so one backward pass sums the subtrees.
    let mut bytes: Vec<u64> = nodes.iter().map(|r| r.own.bytes).collect();
    let mut objects: Vec<u64> = nodes.iter().map(|r| r.own.objects).collect();
    let mut allocs: Vec<u64> = nodes.iter().map(|r| r.own.allocs).collect();
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (1..n).rev() {
        let p = nodes[i].parent as usize;
        debug_assert!(nodes[i].parent != NO_PARENT && p < i);
        bytes[p] += bytes[i];
        objects[p] += objects[i];
        allocs[p] += allocs[i];
        kids[p].push(i);
    }
    for k in kids.iter_mut() {
        k.sort_by(|&a, &b| bytes[b].cmp(&bytes[a]).then(nodes[a].id.cmp(&nodes[b].id)));
    }
    let mut out: Vec<ScopeReport> = Vec::with_capacity(n);
    // (snapshot index, parent's index in `out`)
    let mut stack: Vec<(usize, Option<usize>)> = Vec::new();
    if n > 0 {
        stack.push((0, None));
    }
    while let Some((i, parent)) = stack.pop() {
        let r = &nodes[i];
        let path = match parent {
            Some(p) => join(&out[p].path, r.name()),
            None if is_root => String::new(),
            None => {
                let mut s = prefix.join("/");
                if !s.is_empty() {
                    s.push('/');
                }
                s.push_str(r.name());
                s
            }
        };
        let mut classes: Vec<ClassReport> = rows
            [r.first_row as usize..(r.first_row + r.rows) as usize]
            .iter()
            .map(|c| ClassReport {
                kind: match c.kind {
                    RowKind::Small => ClassKind::Small,
                    RowKind::Large => ClassKind::Large,
                    RowKind::Huge => ClassKind::Huge,
                },
                object_size: c.object_size as u64,
                objects: c.objects,
                bytes: c.bytes,
                free_bytes: c.capacity_bytes.saturating_sub(c.bytes),
                slabs: c.slabs,
            })
            .collect();
        classes.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(a.object_size.cmp(&b.object_size))
        });
        let (allocs, frees) = if r.closed {
            (r.final_allocs, r.final_frees)
        } else {
            (allocs[i], allocs[i].saturating_sub(objects[i]))
        };
        let me = out.len();
        out.push(ScopeReport {
            path,
            name: r.name().to_owned(),
            id: r.id,
            parent,
            depth: r.depth as usize,
            closed: r.closed,
            bytes: bytes[i],
            objects: objects[i],
            self_bytes: r.own.bytes,
            self_objects: r.own.objects,
            peak_bytes: r.peak,
            limit: r.limit(),
            charged_bytes: r.charged,
            allocs,
            frees,
            high: r.high(),
            events: r.events,
            classes,
        });
        for &k in kids[i].iter().rev() {
            stack.push((k, Some(me)));
        }
    }
    out
}

/// `parent/name` (just `name` under the root, whose path is empty).
pub(super) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

impl Report {
    /// The scope of a path (`server/tenant-a`; `""` for the root), if the report holds it. The
    /// first one if siblings share a name.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let a = scopealloc::Scope::root().child("get-doc");
    /// let _b = a.child("b");
    /// let r = scopealloc::report();
    /// assert_eq!(r.get("").unwrap().name, "root");
    /// assert!(r.get("get-doc/b").is_some());
    /// ```
    pub fn get(&self, path: &str) -> Option<&ScopeReport> {
        self.scopes.iter().find(|s| s.path == path)
    }

    /// The children of `self.scopes[index]`, largest first, with their indices.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let a = scopealloc::Scope::root().child("children-doc");
    /// let (_x, _y) = (a.child("x"), a.child("y"));
    /// let r = a.report();
    /// assert_eq!(r.children(0).count(), 2);
    /// ```
    pub fn children(&self, index: usize) -> impl Iterator<Item = (usize, &ScopeReport)> {
        self.scopes
            .iter()
            .enumerate()
            .skip(index + 1)
            .take_while(move |(_, s)| s.depth > self.scopes[index].depth)
            .filter(move |(_, s)| s.parent == Some(index))
    }

    /// The text form, with options; `format!("{report}")` is `report.text()` with the defaults
    /// (10 children, depth 8, no size classes).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("text-doc");
    /// let r = s.report();
    /// let text = r.text().max_children(20).max_depth(4).classes(true).to_string();
    /// assert!(text.contains("text-doc"));
    /// ```
    pub fn text(&self) -> Text<'_> {
        Text {
            report: self,
            max_children: 10,
            max_depth: 8,
            classes: false,
        }
    }

    /// The Prometheus exposition, with options; [`Report::prometheus`] is this with the
    /// defaults (depth 3, 500 scopes).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("metrics-doc");
    /// let text = scopealloc::report().metrics().max_depth(1).max_series(100).to_string();
    /// assert!(text.contains("scopealloc_scope_bytes{scope=\"metrics-doc\"}"));
    /// ```
    pub fn metrics(&self) -> Metrics<'_> {
        Metrics {
            report: self,
            max_depth: 3,
            max_series: 500,
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of the report, with the default cap on
    /// label cardinality (see [`Report::metrics`]).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let tenant = scopealloc::Scope::root().child("prom-doc");
    /// let text = scopealloc::report().prometheus();
    /// assert!(text.contains("# TYPE scopealloc_scope_bytes gauge"));
    /// assert!(text.contains("scopealloc_scope_bytes{scope=\"prom-doc\"} 0"));
    /// ```
    pub fn prometheus(&self) -> String {
        self.metrics().to_string()
    }

    /// The report as JSON (compact); the schema is in docs/REPORT.md.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("json-doc");
    /// s.set_limit(Some(4096));
    /// let json = s.report().to_json();
    /// assert!(json.contains("\"path\":\"json-doc\""));
    /// assert!(json.contains("\"max\":4096"));
    /// ```
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serialises (strings and integers only)")
    }
}

/// `n` bytes in binary units with one decimal: `512 B`, `12.3 MiB`.
pub(super) fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `n` with thousands separators: `1,234`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units_and_thousands() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(12_900_000), "12.3 MiB");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

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
use std::collections::HashMap;
use std::fmt::{self, Write as _};

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
/// let v: Vec<Box<[u8; 64]>> = s.run(|| (0..10).map(|_| Box::new([0u8; 64])).collect());
/// let r = s.report();
/// let row = r.scopes[0].classes.iter().find(|c| c.object_size == 64).unwrap();
/// assert_eq!((row.kind, row.objects, row.bytes), (ClassKind::Small, 10, 640));
/// assert!(row.slabs >= 1 && row.free_bytes > 0); // the rest of the slab is free
/// drop(v);
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
    /// Slabs of this class charged to the scope (0 for large and huge rows).
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
fn join(parent: &str, name: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Text.

/// The text form of a [`Report`]: an indented tree like `tree --du`, largest first, with human
/// units and % of the parent; children past a count and scopes past a depth are folded into one
/// `(N others: size)` row. Made by [`Report::text`]; print it with `{}`.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::Scope;
/// let app = Scope::root().child("text-type-doc");
/// let reqs: Vec<Scope> = (0..5).map(|i| app.child(&format!("req-{i}"))).collect();
/// let r = app.report();
/// let text = r.text().max_children(2).to_string();
/// assert!(text.contains("(3 others: 0 B)"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Text<'a> {
    report: &'a Report,
    max_children: usize,
    max_depth: usize,
    classes: bool,
}

impl Text<'_> {
    /// Shows at most `n` children per scope (the largest); the rest are one row.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let a = scopealloc::Scope::root().child("max-children-doc");
    /// let (_x, _y) = (a.child("x"), a.child("y"));
    /// let text = a.report().text().max_children(0).to_string();
    /// assert!(text.contains("(2 others: 0 B)") && !text.contains("── x"));
    /// ```
    pub fn max_children(mut self, n: usize) -> Self {
        self.max_children = n;
        self
    }

    /// Shows scopes down to `depth` below the report's top; deeper ones are folded into one row
    /// per scope at that depth.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let a = scopealloc::Scope::root().child("max-depth-doc");
    /// let b = a.child("b");
    /// let _c = b.child("c");
    /// let text = a.report().text().max_depth(1).to_string();
    /// assert!(text.contains("── b") && text.contains("(1 others: 0 B)"));
    /// ```
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// Shows (`true`) or hides each scope's size-class rows.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let a = scopealloc::Scope::root().child("classes-doc");
    /// let v = a.run(|| vec![0u8; 48]);
    /// let text = a.report().text().classes(true).to_string();
    /// assert!(text.contains("[48 B]"));
    /// drop(v);
    /// ```
    pub fn classes(mut self, on: bool) -> Self {
        self.classes = on;
        self
    }
}

/// A line of the text form.
enum Line {
    Scope(usize),
    Class(usize, usize),
    Others {
        count: usize,
        bytes: u64,
        objects: u64,
    },
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        let h = &r.heap;
        writeln!(
            f,
            "heap: {} mapped, {} committed, {} in use, {} cached, {} returned, {} metadata",
            human(h.mapped as u64),
            human(h.committed as u64),
            human(h.in_use as u64),
            human(h.cached as u64),
            human(h.returned as u64),
            human(h.metadata as u64),
        )?;
        writeln!(f, "{:>10} {:>6} {:>10}  SCOPE", "BYTES", "%", "OBJECTS")?;
        if r.scopes.is_empty() {
            return writeln!(f, "(no snapshot: the OS refused memory)");
        }
        // (line, parent's bytes, prefix of the line, prefix of its children)
        let mut stack: Vec<(Line, Option<u64>, String, String)> =
            vec![(Line::Scope(0), None, String::new(), String::new())];
        while let Some((line, parent_bytes, lead, cont)) = stack.pop() {
            let (bytes, objects) = match line {
                Line::Scope(i) => (r.scopes[i].bytes, r.scopes[i].objects),
                Line::Class(i, k) => {
                    let c = &r.scopes[i].classes[k];
                    (c.bytes, c.objects)
                }
                Line::Others { bytes, objects, .. } => (bytes, objects),
            };
            let pct = match parent_bytes {
                None => "100.0%".to_owned(),
                Some(0) => "-".to_owned(),
                Some(p) => format!("{:.1}%", bytes as f64 * 100.0 / p as f64),
            };
            write!(
                f,
                "{:>10} {:>6} {:>10}  {lead}",
                human(bytes),
                pct,
                thousands(objects)
            )?;
            let i = match line {
                Line::Scope(i) => i,
                Line::Class(i, k) => {
                    let c = &r.scopes[i].classes[k];
                    match c.kind {
                        ClassKind::Small => writeln!(
                            f,
                            "[{}] {} free in {} slab{}",
                            human(c.object_size),
                            human(c.free_bytes),
                            thousands(c.slabs),
                            if c.slabs == 1 { "" } else { "s" }
                        )?,
                        ClassKind::Large => writeln!(f, "[large objects]")?,
                        ClassKind::Huge => writeln!(f, "[huge objects]")?,
                    }
                    continue;
                }
                Line::Others { count, bytes, .. } => {
                    writeln!(f, "({} others: {})", thousands(count as u64), human(bytes))?;
                    continue;
                }
            };
            let s = &r.scopes[i];
            f.write_str(if s.path.is_empty() { "root" } else { &s.name })?;
            let mut notes: Vec<String> = Vec::new();
            if s.closed {
                notes.push("closed".into());
            }
            if s.self_bytes != s.bytes {
                notes.push(format!("self {}", human(s.self_bytes)));
            }
            if let Some(l) = s.limit {
                notes.push(format!("limit {}", human(l)));
            }
            if s.peak_bytes > 0 {
                notes.push(format!("peak {}", human(s.peak_bytes)));
            }
            for (name, n) in s.events.iter().filter(|&(_, n)| n > 0) {
                notes.push(format!("{name} events {}", thousands(n)));
            }
            if notes.is_empty() {
                writeln!(f)?;
            } else {
                writeln!(f, "  ({})", notes.join(", "))?;
            }
            // The children lines, in display order; pushed reversed.
            let mut lines: Vec<Line> = Vec::new();
            if self.classes {
                lines.extend((0..s.classes.len()).map(|k| Line::Class(i, k)));
            }
            let kids: Vec<usize> = r.children(i).map(|(k, _)| k).collect();
            let shown = if s.depth >= self.max_depth {
                0
            } else {
                kids.len().min(self.max_children)
            };
            lines.extend(kids[..shown].iter().map(|&k| Line::Scope(k)));
            if shown < kids.len() {
                let rest = &kids[shown..];
                lines.push(Line::Others {
                    count: rest.len(),
                    bytes: rest.iter().map(|&k| r.scopes[k].bytes).sum(),
                    objects: rest.iter().map(|&k| r.scopes[k].objects).sum(),
                });
            }
            let last = lines.len();
            for (n, line) in lines.into_iter().enumerate().rev() {
                let end = n + 1 == last;
                let lead = format!("{cont}{}", if end { "└── " } else { "├── " });
                let next = format!("{cont}{}", if end { "    " } else { "│   " });
                stack.push((line, Some(s.bytes), lead, next));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    /// `self.text()` with its defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.text().fmt(f)
    }
}

/// `n` bytes in binary units with one decimal: `512 B`, `12.3 MiB`.
fn human(n: u64) -> String {
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
fn thousands(n: u64) -> String {
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

// ---------------------------------------------------------------------------------------------
// Prometheus.

/// The Prometheus text exposition (format 0.0.4) of a [`Report`], with a cap on label
/// cardinality: scopes deeper than `max_depth` below the report's top, and scopes past the first
/// `max_series` (shallowest, then largest, first), are folded into one series per parent,
/// `scope="<parent path>/(others)"`, so per-request scopes never become series of their own.
/// Siblings with the same name share one series. Made by [`Report::metrics`]; print it with
/// `{}`.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::Scope;
/// let tenant = Scope::root().child("metrics-type-doc");
/// let reqs: Vec<Scope> = (0..50).map(|i| tenant.child(&format!("req-{i}"))).collect();
/// let text = tenant.report().metrics().max_depth(0).to_string();
/// assert!(text.contains("scopealloc_scope_bytes{scope=\"metrics-type-doc/(others)\"} 0"));
/// assert!(!text.contains("req-1"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Metrics<'a> {
    report: &'a Report,
    max_depth: usize,
    max_series: usize,
}

impl Metrics<'_> {
    /// Scopes deeper than `depth` below the report's top are folded (default 3).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let a = scopealloc::Scope::root().child("metrics-depth-doc");
    /// let _b = a.child("b");
    /// let text = a.report().metrics().max_depth(0).to_string();
    /// assert!(text.contains("scope=\"metrics-depth-doc/(others)\""));
    /// ```
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// At most `n` scope series besides the folded ones (default 500); the report's top always
    /// has its series. There is at most one folded series per scope that has its own.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let a = scopealloc::Scope::root().child("metrics-series-doc");
    /// let (_x, _y) = (a.child("x"), a.child("y"));
    /// let text = a.report().metrics().max_series(2).to_string();
    /// assert_eq!(text.matches("scopealloc_scope_bytes{").count(), 3); // top, one child, others
    /// ```
    pub fn max_series(mut self, n: usize) -> Self {
        self.max_series = n;
        self
    }

    /// The series: one per label value, with the figures of the scopes it stands for.
    fn series(&self) -> Vec<Series> {
        let scopes = &self.report.scopes;
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Own,
            Folded,
            Covered,
        }
        let mut state = vec![State::Covered; scopes.len()];
        let mut order: Vec<usize> = (0..scopes.len()).collect();
        order.sort_by(|&a, &b| {
            (scopes[a].depth, scopes[b].bytes).cmp(&(scopes[b].depth, scopes[a].bytes))
        });
        let mut series: Vec<Series> = Vec::new();
        let mut by_label: HashMap<String, usize> = HashMap::new();
        let mut own_series = 0;
        for i in order {
            let s = &scopes[i];
            let parent = s.parent.map(|p| (p, state[p]));
            if matches!(parent, Some((_, State::Folded | State::Covered))) {
                continue; // counted in an ancestor's folded series
            }
            let own_label = if s.path.is_empty() {
                "/".to_owned()
            } else {
                s.path.clone()
            };
            let fold = parent.is_some()
                && (s.depth > self.max_depth
                    || (own_series >= self.max_series.max(1)
                        && !by_label.contains_key(&own_label)));
            let label = match parent {
                Some((p, _)) if fold => join(&scopes[p].path, "(others)"),
                _ => own_label,
            };
            let k = *by_label.entry(label.clone()).or_insert_with(|| {
                if !fold {
                    own_series += 1;
                }
                series.push(Series::new(label, fold));
                series.len() - 1
            });
            series[k].add(s);
            state[i] = if fold { State::Folded } else { State::Own };
        }
        series
    }
}

/// One label value of the scope metrics and the figures of the scopes it stands for.
struct Series {
    label: String,
    /// An `(others)` series: it stands for whichever scopes are folded, never for one scope.
    folded: bool,
    scopes: usize,
    bytes: u64,
    objects: u64,
    charged: u64,
    peak: u64,
    limit: Option<u64>,
    high: Option<u64>,
    events: Vec<(&'static str, u64)>,
}

impl Series {
    fn new(label: String, folded: bool) -> Series {
        Series {
            label,
            folded,
            scopes: 0,
            bytes: 0,
            objects: 0,
            charged: 0,
            peak: 0,
            limit: None,
            high: None,
            events: ScopeEvents::default().iter().collect(),
        }
    }

    fn add(&mut self, s: &ScopeReport) {
        self.scopes += 1;
        self.bytes += s.bytes;
        self.objects += s.objects;
        self.charged += s.charged_bytes;
        self.peak = s.peak_bytes;
        self.limit = s.limit;
        self.high = s.high;
        for (e, (_, n)) in self.events.iter_mut().zip(s.events.iter()) {
            e.1 += n;
        }
    }

    /// Peak and limit belong to one scope: a series that stands for several, or for the folded
    /// ones, has neither.
    fn single(&self) -> bool {
        self.scopes == 1 && !self.folded
    }
}

/// A gauge per scope series: name, help, value (None: no sample for that series).
type ScopeGauge = (&'static str, &'static str, fn(&Series) -> Option<u64>);

/// The scope gauges, in one place.
const SCOPE_GAUGES: &[ScopeGauge] = &[
    (
        "scopealloc_scope_bytes",
        "Usable bytes of live objects of the scope and its descendants.",
        |s| Some(s.bytes),
    ),
    (
        "scopealloc_scope_objects",
        "Live objects of the scope and its descendants.",
        |s| Some(s.objects),
    ),
    (
        "scopealloc_scope_peak_bytes",
        "High-water mark of the scope's charged bytes.",
        |s| s.single().then_some(s.peak),
    ),
    (
        "scopealloc_scope_limit_bytes",
        "Hard limit of the scope's charged bytes (scopes with a limit only).",
        |s| if s.single() { s.limit } else { None },
    ),
    (
        "scopealloc_scope_high_bytes",
        "Soft limit of the scope's charged bytes (scopes with one only): crossing it counts a high event.",
        |s| if s.single() { s.high } else { None },
    ),
    (
        "scopealloc_scope_charged_bytes",
        "Bytes held against the scope's limit: live bytes plus per-thread stocks.",
        |s| Some(s.charged),
    ),
];

/// The allocator-wide metrics: name, type, help, value.
fn heap_metrics(h: &HeapStats) -> [(&'static str, &'static str, &'static str, usize); 6] {
    [
        (
            "scopealloc_heap_mapped_bytes",
            "gauge",
            "Address space mapped from the OS.",
            h.mapped,
        ),
        (
            "scopealloc_heap_committed_bytes",
            "gauge",
            "Mapped bytes not given back with madvise: an upper bound of resident memory.",
            h.committed,
        ),
        (
            "scopealloc_heap_in_use_bytes",
            "gauge",
            "Bytes in pages handed to slabs and large objects.",
            h.in_use,
        ),
        (
            "scopealloc_heap_cached_bytes",
            "gauge",
            "Free pages kept committed for reuse.",
            h.cached,
        ),
        (
            "scopealloc_heap_returned_bytes_total",
            "counter",
            "Bytes given back to the OS since start.",
            h.returned,
        ),
        (
            "scopealloc_heap_metadata_bytes",
            "gauge",
            "Address space mapped for the allocator's own metadata.",
            h.metadata,
        ),
    ]
}

/// A label value escaped per the text format: backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl fmt::Display for Metrics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let series = self.series();
        let labels: Vec<String> = series.iter().map(|s| escape_label(&s.label)).collect();
        let mut out = String::new();
        for (name, help, value) in SCOPE_GAUGES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (s, l) in series.iter().zip(&labels) {
                if let Some(v) = value(s) {
                    let _ = writeln!(out, "{name}{{scope=\"{l}\"}} {v}");
                }
            }
        }
        let name = "scopealloc_scope_events_total";
        let _ = writeln!(
            out,
            "# HELP {name} Events of the scope (max: allocations refused by its hard limit).\n\
             # TYPE {name} counter"
        );
        for (s, l) in series.iter().zip(&labels) {
            for (event, n) in &s.events {
                let _ = writeln!(out, "{name}{{scope=\"{l}\",event=\"{event}\"}} {n}");
            }
        }
        for (name, kind, help, v) in heap_metrics(&self.report.heap) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        f.write_str(&out)
    }
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

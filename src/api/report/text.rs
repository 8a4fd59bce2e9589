//! The text form of a report: an indented tree, largest first.

use super::{human, thousands, ClassKind, Report};
use std::fmt;

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
    pub(super) report: &'a Report,
    pub(super) max_children: usize,
    pub(super) max_depth: usize,
    pub(super) classes: bool,
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

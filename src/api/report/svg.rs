//! A picture of a report: an icicle flame graph of the scope tree, each scope a box as wide as
//! its share of the top's bytes, children below their parent, largest first (`svg` feature).

use super::{human, Report};
use core::fmt::Write;

/// Pixel width of the picture.
const WIDTH: f64 = 1200.0;
/// Pixel height of one level.
const ROW: f64 = 22.0;

impl Report {
    /// The report as an SVG icicle graph: the top scope spans the width; below each scope, its
    /// children, as wide as their share of its bytes (what is left of the width is the scope's
    /// own bytes). Boxes are labelled with the scope's name and bytes where they fit, and carry
    /// the full path, bytes and objects in a tooltip.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let app = scopealloc::Scope::root().child("svg-doc");
    /// let a = app.child("a");
    /// let v = a.run(|| vec![0u8; 1 << 20]);
    /// let svg = app.report().svg();
    /// assert!(svg.starts_with("<svg") && svg.contains("svg-doc/a"));
    /// drop(v);
    /// ```
    pub fn svg(&self) -> String {
        let n = self.scopes.len();
        let depth = self.scopes.iter().map(|s| s.depth).max().unwrap_or(0);
        let height = (depth + 1) as f64 * ROW + 30.0;
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" font-size="12">"#
        );
        let _ = write!(
            out,
            r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="6" y="16">scopealloc: bytes by scope (mapped {}, in use {})</text>"##,
            human(self.heap.mapped as u64),
            human(self.heap.in_use as u64)
        );
        // x offset and width of each scope; children are laid out left to right in the report's
        // order (largest first) inside their parent's box.
        let mut x = vec![0.0f64; n];
        let mut w = vec![0.0f64; n];
        let mut next = vec![0.0f64; n]; // where the next child of a scope starts
        for (i, s) in self.scopes.iter().enumerate() {
            match s.parent {
                None => {
                    x[i] = 0.0;
                    w[i] = WIDTH;
                }
                Some(p) => {
                    let share = if self.scopes[p].bytes == 0 {
                        0.0
                    } else {
                        s.bytes as f64 / self.scopes[p].bytes as f64
                    };
                    x[i] = x[p] + next[p];
                    w[i] = w[p] * share;
                    next[p] += w[i];
                }
            }
            next[i] = 0.0;
            if w[i] < 0.5 && s.parent.is_some() {
                continue;
            }
            let y = 24.0 + s.depth as f64 * ROW;
            let hue = (s.id.wrapping_mul(47) % 60) as u32 + 10; // warm colours, stable per scope
            let _ = write!(
                out,
                r#"<g><title>{} — {} in {} objects</title><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="hsl({hue},80%,60%)" stroke="white"/>"#,
                escape(if s.path.is_empty() { &s.name } else { &s.path }),
                human(s.bytes),
                s.objects,
                x[i],
                y,
                w[i].max(0.5),
                ROW - 1.0
            );
            let label = format!("{} {}", s.name, human(s.bytes));
            if w[i] > 7.5 * label.len() as f64 {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                    x[i] + 3.0,
                    y + 15.0,
                    escape(&label)
                );
            }
            out.push_str("</g>");
        }
        out.push_str("</svg>\n");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

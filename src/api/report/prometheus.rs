//! The Prometheus text exposition of a report, with a cap on label cardinality.

use super::{join, Report, ScopeReport};

#[cfg(feature = "prometheus-client")]
pub mod collector;
use crate::api::{HeapStats, ScopeEvents};
use std::collections::HashMap;
use std::fmt::{self, Write as _};

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
    pub(super) report: &'a Report,
    pub(super) max_depth: usize,
    pub(super) max_series: usize,
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
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

//! The report's metrics as a [`prometheus_client`] collector (`prometheus-client` feature): the
//! same series, names and cardinality cap as [`super::Metrics`], taken afresh at each scrape.

use super::{heap_metrics, Metrics, SCOPE_GAUGES};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::fmt;

/// A collector of the official Prometheus Rust client: register it and every scrape takes a
/// report of the whole scope tree and encodes its series (folded past `max_depth` levels and
/// `max_series` series, as [`crate::Report::metrics`]).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use prometheus_client::registry::Registry;
/// let tenant = scopealloc::Scope::root().child("collector-doc");
/// let v = tenant.run(|| vec![0u8; 10_000]);
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(scopealloc::ScopeCollector::default()));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("scopealloc_scope_bytes{scope=\"collector-doc\"}"));
/// drop(v);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ScopeCollector {
    /// Levels below the root that get series of their own.
    pub max_depth: usize,
    /// Series at most; the rest are folded into one per parent.
    pub max_series: usize,
}

impl Default for ScopeCollector {
    fn default() -> Self {
        ScopeCollector {
            max_depth: 3,
            max_series: 500,
        }
    }
}

impl Collector for ScopeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let report = crate::report();
        let m: Metrics<'_> = report
            .metrics()
            .max_depth(self.max_depth)
            .max_series(self.max_series);
        let series = m.series();
        for (name, help, value) in SCOPE_GAUGES {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for s in &series {
                if let Some(v) = value(s) {
                    let labels = [("scope", s.label.as_str())];
                    ConstGauge::new(v as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        // The client appends `_total` to counters.
        let mut events = encoder.encode_descriptor(
            "scopealloc_scope_events",
            "Events of the scope (max: allocations refused by its hard limit).",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for s in &series {
            for &(event, n) in &s.events {
                let labels = [("scope", s.label.as_str()), ("event", event)];
                ConstCounter::new(n).encode(events.encode_family(&labels)?)?;
            }
        }
        for (name, kind, help, v) in heap_metrics(&report.heap) {
            if kind == "counter" {
                let name = name.trim_end_matches("_total");
                let c = ConstCounter::new(v as u64);
                c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
            } else {
                let g = ConstGauge::new(v as i64);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

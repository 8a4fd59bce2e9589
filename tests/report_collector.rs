//! The report's metrics through the official Rust client (`prometheus-client` feature): a
//! registered `ScopeCollector` encodes, at each scrape, the same figures as the scopes' stats.
#![cfg(feature = "prometheus-client")]

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use scopealloc::{Scope, ScopeAlloc, ScopeCollector};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

fn sample(text: &str, metric: &str, scope: &str) -> Option<u64> {
    let key = format!("{metric}{{scope=\"{scope}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_registered_collector_encodes_the_scopes_figures_at_each_scrape() {
    let tenant = Scope::root().child("collector-tenant");
    tenant.set_limit(Some(64 << 20));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScopeCollector::default()));
    let v = tenant.run(|| vec![7u8; 300_000]);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    let st = tenant.stats();
    assert_eq!(
        sample(&text, "scopealloc_scope_bytes", "collector-tenant"),
        Some(st.bytes)
    );
    assert_eq!(
        sample(&text, "scopealloc_scope_objects", "collector-tenant"),
        Some(st.objects)
    );
    assert_eq!(
        sample(&text, "scopealloc_scope_limit_bytes", "collector-tenant"),
        Some(64 << 20)
    );
    assert!(text.contains("# TYPE scopealloc_scope_events counter"));
    assert!(
        text.contains("scopealloc_scope_events_total{scope=\"collector-tenant\",event=\"max\"} 0")
    );
    assert!(text.contains("scopealloc_heap_mapped_bytes "));
    drop(v);
    // A new scrape sees the new figures.
    let mut again = String::new();
    encode(&mut again, &registry).unwrap();
    assert_eq!(
        sample(&again, "scopealloc_scope_bytes", "collector-tenant"),
        Some(0)
    );
}

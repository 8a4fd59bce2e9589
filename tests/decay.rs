//! Idle memory goes back to the OS: with the background decay thread, free pages are returned
//! even when the program makes no allocator call at all.

use scopealloc::{heap_stats, set_decay_ms, start_background_decay, ScopeAlloc};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn background_decay_returns_idle_free_pages_without_allocator_activity() {
    set_decay_ms(100);
    assert!(start_background_decay());
    assert!(!start_background_decay(), "starts once");
    // 64 large objects of 1 MiB: page spans in segments, freed back as dirty pages.
    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 20]).collect();
    let returned_before = heap_stats().returned;
    drop(v);
    let cached = heap_stats().cached;
    assert!(cached >= 32 << 20, "freed spans are cached first: {cached}");
    // No allocation from here on: only the background thread can return them.
    let start = Instant::now();
    while heap_stats().cached > 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = heap_stats();
    assert_eq!(st.cached, 0, "idle dirty pages were returned: {st:?}");
    assert!(st.returned >= returned_before + (32 << 20));
}

//! Idle memory goes back to the OS: with the background decay thread, free pages are returned
//! even when the program makes no allocator call at all.

use scopealloc::{heap_stats, set_decay_ms, start_background_decay, ScopeAlloc};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn background_decay_returns_idle_free_pages_without_allocator_activity() {
    set_decay_ms(100);
    // 64 large objects of 1 MiB: page spans in segments, freed back as dirty pages.
    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 20]).collect();
    assert!(v
        .iter()
        .enumerate()
        .all(|(i, x)| x.iter().all(|&b| b == i as u8)));
    let returned_before = heap_stats().returned;
    drop(v);
    // The decay thread starts only now, so nothing can have returned the spans before this
    // reading, however slowly the test runs.
    let cached = heap_stats().cached;
    assert!(cached >= 32 << 20, "freed spans are cached first: {cached}");
    assert!(start_background_decay());
    assert!(!start_background_decay(), "starts once");
    // No allocation from here on: only the background thread can return them. Wait for it
    // (60 s is a hang detector, not a timed assertion).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut st = heap_stats();
    while st.cached > 0 {
        assert!(
            Instant::now() < deadline,
            "the background decay returned nothing in 60 s: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        st = heap_stats();
    }
    assert!(
        st.returned >= returned_before + cached,
        "cached pages went away without being returned: {st:?}"
    );
}

//! The abandoned-slab sweep holds the tree lock for a bounded time whatever the number of
//! scopes: it looks only at the caches that have abandoned slabs, at most a batch of them per
//! hold. Before the fix it walked every cache of the process under one hold of the tree lock,
//! from any slow path and from the background thread.

use scopealloc::{global_stats, trim, Scope, ScopeAlloc};
use std::alloc::{alloc, dealloc, Layout};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_sweep_looks_only_at_caches_with_abandoned_slabs_a_batch_per_hold() {
    let scopes = count("SCOPEALLOC_TEST_SWEEP_SCOPES", 100_000);
    let exiting = count("SCOPEALLOC_TEST_SWEEP_THREADS", 300);
    eprintln!("{scopes} scopes with a cache each, {exiting} exiting threads");
    let top = Scope::root().child("sweep-top");
    // Many caches and no abandoned slab: a large object allocated and freed in each scope
    // leaves its cache and no slab.
    let big = Layout::from_size_align(40 << 10, 8).unwrap();
    let many: Vec<Scope> = (0..scopes)
        .map(|_| {
            let s = top.child("c");
            s.run(|| {
                // SAFETY: a non-zero layout; freed at once with the same layout.
                unsafe {
                    // black_box: an unused allocation may be elided in release builds.
                    let p = std::hint::black_box(alloc(big));
                    assert!(!p.is_null());
                    p.write(1);
                    dealloc(std::hint::black_box(p), big);
                }
            });
            s
        })
        .collect();
    // Abandoned slabs: threads that allocate in scopes of their own and exit, leaving their
    // objects alive.
    let kept: Vec<(usize, Scope)> = (0..exiting)
        .map(|_| {
            let s = top.child("t");
            let s2 = s.clone();
            let p =
                std::thread::spawn(move || s2.run(|| Box::into_raw(Box::new([3u8; 48])) as usize))
                    .join()
                    .unwrap();
            (p, s)
        })
        .collect();
    assert!(global_stats().live_caches >= scopes + exiting);
    trim(); // sweeps
    let (hold_ns, most) = scopealloc::testing::sweep_figures();
    eprintln!(
        "longest sweep hold of the tree lock: {:.1} µs; most caches looked at per hold: {most}",
        hold_ns as f64 / 1000.0
    );
    assert!(
        most <= 64,
        "a sweep looked at {most} caches under one hold of the tree lock"
    );
    assert!(most >= 1, "the sweep saw the caches with abandoned slabs");
    for (p, s) in kept {
        // SAFETY: p came from Box::into_raw above.
        drop(unsafe { Box::from_raw(p as *mut [u8; 48]) });
        assert_eq!(s.stats().objects, 0);
    }
    top.close();
    drop(many);
    trim();
    assert_eq!(top.stats().bytes, 0);
}

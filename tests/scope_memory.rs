//! Many open scopes on one thread (issue 10): 100 000 scopes under one parent, each holding one
//! object, all open at once. Every scope's `stats()` and the parent's must be exact (bytes are
//! the objects' usable sizes, read back with `usable_size`), and after the objects are freed and
//! the scopes closed, the figures and `global_stats()` must be back where they started.
//!
//! `SCOPE_MEMORY_SCOPES=N` sets the number of scopes (default 100 000). The sizes are fixed (no
//! randomness): each scope gets the next size of `SIZES`, so every small class in it is used by
//! many scopes, and every 1000th scope a large object.
//!
//! The memory this costs per scope is measured by `examples/scope_memory.rs`, not here.

use std::alloc::{alloc, dealloc, Layout};

use scopealloc::{global_stats, usable_size, Scope};

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

const DEFAULT_SCOPES: usize = 100_000;

/// Small sizes, one per scope in turn (several size classes, up to 1000 B).
const SIZES: [usize; 7] = [8, 24, 64, 100, 256, 512, 1000];
/// Every `LARGE_EVERY`th scope holds a large object (page spans, not a slab) of `LARGE` bytes.
const LARGE_EVERY: usize = 1000;
const LARGE: usize = 40_000;

fn scopes_from_env() -> usize {
    match std::env::var("SCOPE_MEMORY_SCOPES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("SCOPE_MEMORY_SCOPES={v:?} is not a number")),
        Err(_) => DEFAULT_SCOPES,
    }
}

fn size_of_scope(i: usize) -> usize {
    if i % LARGE_EVERY == LARGE_EVERY - 1 {
        LARGE
    } else {
        SIZES[i % SIZES.len()]
    }
}

#[test]
fn hundred_thousand_open_scopes_on_one_thread_keep_exact_stats() {
    let n = scopes_from_env();
    println!("scope_memory: {n} open scopes (SCOPE_MEMORY_SCOPES)");
    let mut scopes = Vec::with_capacity(n);
    // (pointer, layout, usable size) of each scope's object, in scope order.
    let mut objects: Vec<(usize, Layout, u64)> = Vec::with_capacity(n);
    // Small scopes' objects sit in the thread's shared slabs, whose caches (one per class, of
    // the shared slabs' own node) stay for the process, like the root's: a first scope makes
    // them before the start figures.
    let warm = Scope::root().child("warm-up");
    for &size in &SIZES {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size; freed at once with its layout. black_box: LTO would elide the
        // pair (and with it the shared slabs' caches this is for) in the release profile.
        warm.run(|| unsafe { dealloc(std::hint::black_box(alloc(layout)), layout) });
    }
    warm.close();
    drop(warm);
    // After the vectors: their blocks may create a cache of the root, which stays.
    let start = global_stats();
    let stubs_at_start = scopealloc::testing::stubs_in_use();
    let parent = Scope::root().child("many-open");
    for i in 0..n {
        let s = parent.child("s");
        let layout = Layout::from_size_align(size_of_scope(i), 8).unwrap();
        // SAFETY: non-zero size.
        let p = s.run(|| unsafe { alloc(layout) });
        assert!(!p.is_null(), "scope {i}: allocation of {layout:?} refused");
        // SAFETY: p is a live object of the global allocator, which is scopealloc.
        let usable = unsafe { usable_size(p) };
        assert!(
            usable >= layout.size(),
            "scope {i}: usable {usable} < {layout:?}"
        );
        objects.push((p as usize, layout, usable as u64));
        scopes.push(s);
    }

    let open = global_stats();
    assert_eq!(
        open.live_scopes,
        start.live_scopes + n + 1,
        "every scope is open: {open:?} (start {start:?})"
    );
    let mut total = 0;
    for (i, (s, &(_, _, usable))) in scopes.iter().zip(&objects).enumerate() {
        let st = s.stats();
        assert_eq!(
            (st.bytes, st.objects, st.self_bytes, st.self_objects),
            (usable, 1, usable, 1),
            "scope {i} holds one object of {usable} usable bytes: {st:?}"
        );
        total += usable;
    }
    let ps = parent.stats();
    assert_eq!(
        (ps.bytes, ps.objects, ps.self_bytes, ps.self_objects),
        (total, n as u64, 0, 0),
        "the parent counts its {n} children's objects and none of its own: {ps:?}"
    );

    // Free every other object first: the figures must follow each free exactly.
    for (p, layout, _) in objects.iter().step_by(2) {
        // SAFETY: live object with this layout, freed once (the odd ones are freed below).
        unsafe { dealloc(*p as *mut u8, *layout) };
    }
    let mut left = 0;
    for (i, (s, &(_, _, usable))) in scopes.iter().zip(&objects).enumerate() {
        let st = s.stats();
        let expect = if i % 2 == 0 { (0, 0) } else { (usable, 1) };
        assert_eq!(
            (st.bytes, st.objects),
            expect,
            "scope {i} after freeing the even ones: {st:?}"
        );
        left += expect.0;
    }
    let ps = parent.stats();
    assert_eq!(
        (ps.bytes, ps.objects),
        (left, n as u64 / 2),
        "parent after freeing the even objects: {ps:?}"
    );
    for (p, layout, _) in objects.iter().skip(1).step_by(2) {
        // SAFETY: the odd objects are still live; each freed once.
        unsafe { dealloc(*p as *mut u8, *layout) };
    }
    let ps = parent.stats();
    assert_eq!(
        (ps.bytes, ps.objects),
        (0, 0),
        "parent after all frees: {ps:?}"
    );

    for s in &scopes {
        s.close();
    }
    drop(scopes);
    parent.close();
    drop(parent);
    let end = global_stats();
    assert_eq!(
        scopealloc::testing::stubs_in_use(),
        stubs_at_start,
        "every stub released once its scope closed with no object left"
    );
    assert_eq!(
        (
            end.live_scopes,
            end.closed_scopes_pending,
            end.live_caches,
            end.dying_caches
        ),
        (
            start.live_scopes,
            start.closed_scopes_pending,
            start.live_caches,
            start.dying_caches
        ),
        "every scope and cache released: start {start:?}, end {end:?}"
    );
}

//! The OS refusing memory for small and large requests that need a new segment (huge requests,
//! which need their own mapping, are covered in `workloads.rs`).
//!
//! The failure hook (`scopealloc::testing::os_fail_after`) is global: while it is armed every
//! thread of the process is refused new mappings. So this binary holds one test, and nothing in
//! it allocates, prints or panics between arming and disarming: the figures are collected first
//! and asserted once the hook is off.

use scopealloc::{testing::os_fail_after, trim, usable_size, Scope, ScopeStats};
use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// One mapping of the back end: a segment of slabs and large objects.
const SEGMENT: usize = 4 * MIB;
/// A small size class (slabs of 64 KiB pages in segments).
const SMALL: usize = 2048;
/// A large object: a span of pages inside a segment.
const LARGE: usize = MIB;
/// Bound on the objects the test may hold (it fails if the allocator is never refused).
const MAX_OBJECTS: usize = 64 * SEGMENT / SMALL;

/// Disarms the hook even if the test panics.
struct HookOff;

impl Drop for HookOff {
    fn drop(&mut self) {
        os_fail_after(None);
    }
}

/// What happened while the hook was armed, asserted after it is off.
#[derive(Debug, Default)]
struct Armed {
    small_ok: usize,
    small_refused: bool,
    before_small_refusal: ScopeStats,
    after_small_refusal: ScopeStats,
    try_reserve_small_failed: bool,
    other_class_refused: bool,
    large_ok: usize,
    large_refused: bool,
    before_large_refusal: ScopeStats,
    after_large_refusal: ScopeStats,
    try_reserve_large_failed: bool,
    after_all: ScopeStats,
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

#[test]
fn os_refusing_a_new_segment_fails_small_and_large_allocations_charges_nothing_and_recovers() {
    let scope = Scope::root().child("os-refusal");
    // Everything the test needs while the hook is armed is reserved now: the object lists, the
    // Vecs whose try_reserve must fail, the thread's heap and its table and caches for the
    // scope (one warm-up object of each kind).
    let mut small: Vec<(usize, usize)> = Vec::with_capacity(MAX_OBJECTS);
    let mut large: Vec<(usize, usize)> = Vec::with_capacity(MAX_OBJECTS);
    let mut v_small: Vec<u8> = Vec::new();
    let mut v_large: Vec<u8> = Vec::new();
    let mut armed = Armed::default();
    scope.run(|| {
        // SAFETY: non-zero sizes.
        unsafe {
            small.push((black_box(alloc(layout(SMALL))) as usize, SMALL));
            small.push((black_box(alloc(layout(SMALL / 2))) as usize, SMALL / 2));
            large.push((black_box(alloc(layout(LARGE))) as usize, LARGE));
        }
    });
    assert!(small.iter().chain(&large).all(|&(p, _)| p != 0));
    // Free pages cached by the back end would serve requests without a new segment: give them
    // back, so the refusal comes after at most the pages still free in live segments.
    trim();

    let hook = HookOff;
    // One more segment may be mapped, then every mapping fails.
    os_fail_after(Some(1));
    scope.run(|| {
        // Small objects of one class until the back end needs a segment it cannot have.
        while small.len() < MAX_OBJECTS {
            let before = scope.stats();
            // SAFETY: non-zero size.
            let p = black_box(unsafe { alloc(layout(SMALL)) });
            if p.is_null() {
                armed.small_refused = true;
                armed.before_small_refusal = before;
                armed.after_small_refusal = scope.stats();
                break;
            }
            small.push((p as usize, SMALL));
            armed.small_ok += 1;
        }
        armed.try_reserve_small_failed = v_small.try_reserve_exact(SMALL).is_err();
        // A class this scope has no slab of needs a new slab too.
        // SAFETY: non-zero size.
        let p = black_box(unsafe { alloc(layout(5000)) });
        armed.other_class_refused = p.is_null();
        if !p.is_null() {
            small.push((p as usize, 5000));
        }
        // Large objects: page spans of segments. All are full now: allow one more again.
        os_fail_after(Some(1));
        while large.len() < MAX_OBJECTS {
            let before = scope.stats();
            // SAFETY: non-zero size.
            let p = black_box(unsafe { alloc(layout(LARGE)) });
            if p.is_null() {
                armed.large_refused = true;
                armed.before_large_refusal = before;
                armed.after_large_refusal = scope.stats();
                break;
            }
            large.push((p as usize, LARGE));
            armed.large_ok += 1;
        }
        armed.try_reserve_large_failed = v_large.try_reserve_exact(LARGE).is_err();
        armed.after_all = scope.stats();
    });
    drop(hook);

    let small_sizes: Vec<usize> = small
        .iter()
        // SAFETY: every address is a live block of scopealloc.
        .map(|&(p, _)| unsafe { usable_size(p as *const u8) })
        .collect();
    let large_sizes: Vec<usize> = large
        .iter()
        // SAFETY: as above.
        .map(|&(p, _)| unsafe { usable_size(p as *const u8) })
        .collect();
    let live = (small_sizes.iter().sum::<usize>() + large_sizes.iter().sum::<usize>()) as u64;
    let objects = (small.len() + large.len()) as u64;
    let a = &armed;
    eprintln!(
        "with one segment allowed: {} small and {} large objects, then refused",
        a.small_ok, a.large_ok
    );
    assert!(
        a.small_refused,
        "{MAX_OBJECTS} small objects were never refused: {a:?}"
    );
    assert!(
        a.small_ok * SMALL >= SEGMENT - 2 * 64 * KIB,
        "the one segment allowed was not used for small objects: {a:?}"
    );
    for (what, before, after) in [
        ("small", &a.before_small_refusal, &a.after_small_refusal),
        ("large", &a.before_large_refusal, &a.after_large_refusal),
    ] {
        assert_eq!(
            (after.bytes, after.objects, after.allocs, after.limit_hits),
            (
                before.bytes,
                before.objects,
                before.allocs,
                before.limit_hits
            ),
            "a refused {what} allocation changed the live figures"
        );
        assert!(
            after.charged_bytes <= before.charged_bytes.max(after.bytes + 128 * KIB as u64),
            "a refused {what} allocation charged more than a stock: {before:?} -> {after:?}"
        );
    }
    assert_eq!(
        a.after_large_refusal.charged_bytes, a.before_large_refusal.charged_bytes,
        "a refused large allocation is charged exactly, so nothing may stay charged"
    );
    assert!(
        a.try_reserve_small_failed,
        "Vec::try_reserve of {SMALL} B succeeded: {a:?}"
    );
    assert!(
        a.other_class_refused,
        "a new class's first object needed no new segment: {a:?}"
    );
    assert!(
        a.large_refused,
        "{MAX_OBJECTS} large objects were never refused: {a:?}"
    );
    assert!(
        a.large_ok >= 2,
        "the one segment allowed was not used for large objects: {a:?}"
    );
    assert!(
        a.try_reserve_large_failed,
        "Vec::try_reserve of {LARGE} B succeeded: {a:?}"
    );
    assert_eq!(
        (a.after_all.bytes, a.after_all.objects),
        (live, objects),
        "figures after the refusals are not the live objects"
    );
    assert_eq!(
        scope.stats().limit_hits,
        0,
        "an OS refusal counted as a limit hit"
    );

    // Disarmed: allocation works again, of every kind, and figures stay exact.
    scope.run(|| {
        // SAFETY: non-zero sizes.
        unsafe {
            small.push((black_box(alloc(layout(SMALL))) as usize, SMALL));
            small.push((black_box(alloc(layout(5000))) as usize, 5000));
            large.push((black_box(alloc(layout(LARGE))) as usize, LARGE));
        }
        v_small
            .try_reserve_exact(SMALL)
            .expect("try_reserve after the hook was disarmed");
        v_large
            .try_reserve_exact(LARGE)
            .expect("try_reserve after the hook was disarmed");
    });
    assert!(
        small.iter().chain(&large).all(|&(p, _)| p != 0),
        "allocation still fails after the hook was disarmed"
    );
    let live: u64 = small
        .iter()
        .chain(&large)
        .map(|&(p, _)| p)
        .chain([v_small.as_ptr() as usize, v_large.as_ptr() as usize])
        // SAFETY: live blocks of scopealloc.
        .map(|p| unsafe { usable_size(p as *const u8) } as u64)
        .sum();
    let st = scope.stats();
    assert_eq!(
        (st.bytes, st.objects),
        (live, objects + 5),
        "figures after recovery: {st:?}"
    );
    for (p, size) in small.drain(..).chain(large.drain(..)) {
        // SAFETY: each block is live with this layout and freed once.
        unsafe { dealloc(p as *mut u8, layout(size)) };
    }
    drop((v_small, v_large));
    let st = scope.stats();
    assert_eq!((st.bytes, st.objects), (0, 0), "{st:?}");
}

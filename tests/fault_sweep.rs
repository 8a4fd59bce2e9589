//! The OS refusing memory at every call a workload makes, one call at a time: every refusal ends
//! in a null allocation (or a clean degraded path), nothing is charged for a refused allocation,
//! the figures stay exact, and no memory is lost once everything is freed.
//!
//! The failure hook is process-wide, so this file holds a single test.

use scopealloc::testing::{os_fail_after, os_map_calls};
use scopealloc::{heap_stats, set_decay_ms, trim, usable_size, Scope, ScopeAlloc};
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// Requests of every kind: small objects over many classes (new slabs), large spans (new
/// segments) and huge mappings.
fn requests() -> Vec<Layout> {
    let mut v = Vec::new();
    for i in 0..3000usize {
        v.push(Layout::from_size_align(16 + (i * 37) % 4000, 8).unwrap());
    }
    for i in 0..24usize {
        v.push(Layout::from_size_align((64 << 10) + i * 4096, 8).unwrap());
    }
    for i in 0..3usize {
        v.push(Layout::from_size_align((3 << 20) + i * 4096, 8).unwrap());
    }
    v
}

/// Runs the requests inside `s`; returns the blocks that were given.
fn run(s: &Scope, reqs: &[Layout]) -> (Vec<(*mut u8, Layout)>, usize) {
    let mut got = Vec::with_capacity(reqs.len()); // in the caller's scope, before the window
    let _g = s.enter();
    let mut refused = 0;
    for &l in reqs {
        // SAFETY: non-zero layouts.
        let p = unsafe { GLOBAL.alloc(l) };
        if p.is_null() {
            refused += 1;
        } else {
            // SAFETY: p has l.size() bytes.
            unsafe { p.write_bytes(0x5a, l.size()) };
            got.push((p, l));
        }
    }
    (got, refused)
}

#[test]
fn every_refused_mapping_of_a_workload_ends_in_a_clean_refusal_with_exact_figures() {
    set_decay_ms(0);
    let reqs = requests();
    // The workload's own vector of results is allocated outside the armed window.
    let s = Scope::root().child("fault-sweep");
    trim();
    let base_in_use = heap_stats().in_use;
    let before = os_map_calls();
    let (got, refused) = run(&s, &reqs);
    let calls = os_map_calls() - before;
    assert_eq!(refused, 0);
    for (p, l) in got {
        // SAFETY: given by run() with this layout.
        unsafe { GLOBAL.dealloc(p, l) };
    }
    eprintln!("the workload maps {calls} times; sweeping a refusal over each");
    assert!(calls >= 3, "the workload needs new mappings");
    let mut failures = 0;
    for n in 0..=calls {
        trim();
        os_fail_after(Some(n));
        // Creating the scope needs metadata too: a refusal there is a clean `None`.
        let Some(s) = Scope::root().try_child("fault-sweep-n") else {
            os_fail_after(None);
            eprintln!("n = {n}: the scope's metadata was refused");
            continue;
        };
        let (got, refused) = run(&s, &reqs);
        os_fail_after(None);
        let live: u64 = got
            .iter()
            // SAFETY: live blocks of ours.
            .map(|&(p, _)| unsafe { usable_size(p) } as u64)
            .sum();
        let st = s.stats();
        let ok = st.bytes == live
            && st.objects == got.len() as u64
            // Nothing is charged for a refusal: beyond the live bytes, only this thread's stock
            // (at most 128 KiB) is charged.
            && st.charged_bytes >= st.bytes
            && st.charged_bytes - st.bytes <= 128 << 10
            && st.limit_hits == 0
            && got.len() + refused == reqs.len()
            && got.iter().all(|&(p, l)| {
                // SAFETY: each block holds l.size() bytes written by run().
                unsafe { core::slice::from_raw_parts(p, l.size()) }
                    .iter()
                    .all(|&b| b == 0x5a)
            });
        if !ok {
            eprintln!(
                "n = {n}: refused {refused}, {} given; {st:?}, live {live}",
                got.len()
            );
            failures += 1;
        }
        if n == 0 {
            assert!(
                refused > 0,
                "with every mapping refused, allocations were refused"
            );
        }
        for (p, l) in got {
            // SAFETY: given by run() with this layout.
            unsafe { GLOBAL.dealloc(p, l) };
        }
        let st = s.stats();
        assert_eq!((st.bytes, st.objects), (0, 0), "n = {n}: freed, {st:?}");
        s.close();
    }
    assert_eq!(
        failures, 0,
        "figures were wrong after some refusals (see above)"
    );
    trim();
    let in_use = heap_stats().in_use;
    assert!(
        in_use <= base_in_use + (1 << 20),
        "memory lost over the sweep: in use {in_use} B, was {base_in_use} B"
    );
}

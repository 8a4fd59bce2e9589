//! A slab of a large class holds four objects, not eight, so that a class with a few live
//! objects spread over its slabs keeps less free space committed. A working set of 1024 blocks of
//! log-uniform sizes up to 32 KiB (`bench/c/workingset.c`, exponent 1: 3.7 MiB live) had 3.8 MiB
//! free in the slabs of its classes of 4 KiB and more, peak RSS 16.6 MB against 12.6 MB with
//! four objects per slab (jemalloc 11.5, mimalloc 10.5). Alone in its binary: it turns the
//! shared slabs off for the tables it makes.

use scopealloc::{testing, ClassKind, Scope, ScopeAlloc};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn a_slab_of_a_large_class_holds_four_objects() {
    testing::set_sharing(false);
    let scope = Scope::root().child("slab-size");
    // 28 KiB and 1 KiB are classes of their own; a slab is whole 64 KiB pages.
    let big = scope.run(|| Box::new([1u8; 28 << 10]));
    let small = scope.run(|| Box::new([2u8; 1 << 10]));
    let r = scope.report();
    // (object size, free objects beside the live one, why)
    for (size, free, why) in [
        (
            28 << 10,
            3,
            "a slab of two 64 KiB pages: four objects of 28 KiB",
        ),
        (
            1 << 10,
            63,
            "a small class keeps one 64 KiB page: 64 objects of 1 KiB",
        ),
    ] {
        let c = (r.scopes[0].classes.iter())
            .find(|c| c.kind == ClassKind::Small && c.object_size == size)
            .unwrap_or_else(|| panic!("a row for {size} B"));
        assert_eq!((c.objects, c.slabs), (1, 1), "{size} B");
        assert_eq!(c.free_bytes, free * size, "{why}");
    }
    drop((big, small));
    scope.close();
}

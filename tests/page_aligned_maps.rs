//! Starting a thread costs the allocator no system call once the process has memory to give it,
//! and a mapping that needs no more than page alignment is one `mmap` of its own length. Every
//! new thread used to map an 8 KiB range for its table index (one page) and unmap the page
//! `os::map_aligned` trimmed off, then unmap the index when it ended; each `munmap` of a threaded
//! program takes the mmap lock and interrupts the other cores to flush their TLBs (`larson`, 100
//! rounds of 2 fresh threads: 411 `munmap` calls; 210 without the trim; 10 now that a heap with
//! few tables keeps no index). Alone in its binary, so that no other test's calls are counted.

use scopealloc::testing::{os_calls, OsCall};
use scopealloc::ScopeAlloc;

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

fn calls() -> (u64, u64) {
    (os_calls(OsCall::Map), os_calls(OsCall::Unmap))
}

#[test]
fn threads_and_page_aligned_mappings_cost_no_extra_system_calls() {
    for round in 0..4 {
        let (maps, unmaps) = std::thread::spawn(move || {
            let before = calls();
            let scope = scopealloc::Scope::root().child("page-aligned");
            let b = scope.run(|| Box::new([round as u8; 64]));
            let after = calls();
            drop(b);
            scope.close();
            (after.0 - before.0, after.1 - before.1)
        })
        .join()
        .unwrap();
        println!("thread {round}: {maps} mmap calls, {unmaps} munmap calls");
        // The first thread may map a segment or a metadata chunk (aligned to their size, so
        // trimmed at both ends); later ones find room in what is mapped.
        if round > 0 {
            assert_eq!(
                (maps, unmaps),
                (0, 0),
                "a new thread's first allocations, in the root scope and another"
            );
        }
    }
    // A report's buffer is page-aligned: each one mapped is one mmap and, when it goes, one
    // munmap, with nothing trimmed (two munmaps each before).
    let before = calls();
    let report = scopealloc::report();
    assert!(!report.scopes.is_empty());
    drop(report);
    let (maps, unmaps) = (calls().0 - before.0, calls().1 - before.1);
    println!("report: {maps} mmap calls, {unmaps} munmap calls");
    assert!(
        maps >= 1,
        "the report mapped its buffer: the test measures a mapping"
    );
    assert_eq!(unmaps, maps, "a page-aligned mapping trims nothing");
}

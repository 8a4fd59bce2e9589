//! A mapping that needs no more than page alignment is made by one `mmap` of its own length:
//! `os::map_aligned` used to map an extra `align` bytes and unmap the trimmed page even when the
//! alignment was the page's, so every new thread's first allocation (its table index, one
//! page) cost a `munmap`, which in a threaded program also interrupts the other cores to flush
//! their TLBs (`larson`: 411 `munmap` calls before, 210 after). Alone in its binary, so that no other
//! test's calls are counted.

use scopealloc::testing::{os_calls, OsCall};
use scopealloc::ScopeAlloc;

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn a_new_threads_first_allocation_unmaps_nothing() {
    for round in 0..4 {
        let (maps, unmaps) = std::thread::spawn(move || {
            // Whatever the thread start allocated, this thread's heap may already exist: make
            // one more thread-local structure appear by allocating in a fresh scope too.
            let (m0, u0) = (os_calls(OsCall::Map), os_calls(OsCall::Unmap));
            let scope = scopealloc::Scope::root().child("page-aligned");
            let b = scope.run(|| Box::new([round as u8; 64]));
            let (m1, u1) = (os_calls(OsCall::Map), os_calls(OsCall::Unmap));
            drop(b);
            scope.close();
            (m1 - m0, u1 - u0)
        })
        .join()
        .unwrap();
        println!("round {round}: {maps} mmap calls, {unmaps} munmap calls");
        if round == 0 {
            continue; // the first thread may also map a segment or a metadata chunk (trimmed)
        }
        assert!(
            maps >= 1,
            "the thread mapped its table index (one page): the test measures a mapping"
        );
        assert_eq!(unmaps, 0, "a page-aligned mapping trims nothing");
    }
}

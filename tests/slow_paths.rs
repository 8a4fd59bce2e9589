//! `slow_paths()`: every run of a counted path is counted once, on the thread that ran it, and
//! the counts of threads that exited stay in the sum.

use scopealloc::{slow_paths, ScopeAlloc};
use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// The checks read process-wide sums, so they run one after the other in one test: with a
/// second test, the harness would free the first one's result (a remote free) meanwhile.
#[test]
fn slow_paths_are_counted_once_each_on_the_thread_that_ran_them() {
    large_allocations_and_frees_are_counted_once_each_and_outlive_their_thread();
    frees_from_another_thread_count_as_remote_while_the_owner_lives_and_abandoned_after();
    a_fresh_thread_fills_new_slabs_by_the_slow_path_and_frees_locally_without_it();
}

/// Raw pointers sent between threads.
struct Ptrs(Vec<usize>);

fn large_allocations_and_frees_are_counted_once_each_and_outlive_their_thread() {
    let before = slow_paths();
    let layout = Layout::from_size_align(256 << 10, 16).unwrap();
    thread::spawn(move || {
        for _ in 0..37 {
            // SAFETY: a non-zero size; the block is freed once, right away.
            unsafe {
                // black_box: an optimiser may elide an allocation that is freed unused.
                let p = black_box(alloc(layout));
                assert!(!p.is_null());
                dealloc(p, layout);
            }
        }
    })
    .join()
    .unwrap();
    let after = slow_paths();
    assert_eq!(after.large_allocs - before.large_allocs, 37);
    assert_eq!(after.large_frees - before.large_frees, 37);
}

fn frees_from_another_thread_count_as_remote_while_the_owner_lives_and_abandoned_after() {
    let layout = Layout::from_size_align(48, 8).unwrap();
    let (to_owner, owner_rx) = mpsc::channel::<()>();
    let (to_main, main_rx) = mpsc::channel::<Ptrs>();
    let owner = thread::spawn(move || {
        let alloc_n = |n| {
            // SAFETY: a non-zero size; the blocks are freed once, by the main thread.
            Ptrs(
                (0..n)
                    .map(|_| black_box(unsafe { alloc(layout) }) as usize)
                    .collect(),
            )
        };
        to_main.send(alloc_n(1000)).unwrap();
        owner_rx.recv().unwrap(); // the first batch is freed while this thread lives
        to_main.send(alloc_n(500)).unwrap();
    });
    let first = main_rx.recv().unwrap();
    let before = slow_paths();
    for &p in &first.0 {
        // SAFETY: each block was allocated with `layout` and is freed once.
        unsafe { dealloc(p as *mut u8, layout) };
    }
    let after = slow_paths();
    assert_eq!(after.remote_frees - before.remote_frees, 1000);
    assert_eq!(after.abandoned_frees, before.abandoned_frees);

    to_owner.send(()).unwrap();
    let second = main_rx.recv().unwrap();
    owner.join().unwrap(); // its slabs are abandoned to their cache
    let before = slow_paths();
    for &p in &second.0 {
        // SAFETY: as above.
        unsafe { dealloc(p as *mut u8, layout) };
    }
    let after = slow_paths();
    assert_eq!(after.abandoned_frees - before.abandoned_frees, 500);
    assert_eq!(after.remote_frees, before.remote_frees);
}

fn a_fresh_thread_fills_new_slabs_by_the_slow_path_and_frees_locally_without_it() {
    let layout = Layout::from_size_align(200, 8).unwrap();
    let (before, during, after) = thread::spawn(move || {
        let before = slow_paths();
        // SAFETY: a non-zero size; every block is freed once below.
        let v: Vec<usize> = (0..4000)
            .map(|_| black_box(unsafe { alloc(layout) }) as usize)
            .collect();
        let during = slow_paths();
        for &p in &v {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { dealloc(p as *mut u8, layout) };
        }
        (before, during, slow_paths())
    })
    .join()
    .unwrap();
    // 4000 objects of 200 B (800 KB) need many slabs and stock refills, but far fewer slow
    // paths than mallocs.
    let slow = during.malloc_slow - before.malloc_slow;
    assert!(
        slow > 10 && slow < 1000,
        "{slow} slow paths for 4000 mallocs"
    );
    assert!(during.fresh_slabs + during.adopted > before.fresh_slabs + before.adopted + 10);
    assert!(during.carves > before.carves);
    assert!(during.stock_refills > before.stock_refills);
    // The frees were local: none went through the remote or abandoned paths.
    assert_eq!(after.remote_frees, during.remote_frees);
    assert_eq!(after.abandoned_frees, during.abandoned_frees);
    // Emptied slabs other than the current ones are given back as their last object goes.
    assert!(after.slabs_released > during.slabs_released);
}

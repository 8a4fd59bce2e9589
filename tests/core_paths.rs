//! Core paths of the allocator as the global allocator: local and remote frees, thread exit and
//! adoption, closing a scope while threads allocate in it.

use scopealloc::{global_stats, Scope, ScopeAlloc};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// The tests of this binary run one at a time: the close test reads process-wide cache counts.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `counter` reaches `target`; 60 s is only a hang detector, not a timed assertion.
fn wait_for(counter: &AtomicU64, target: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "{what}: no progress in 60 s");
        thread::yield_now();
    }
}

#[test]
fn objects_freed_by_another_thread_are_reused_by_their_owner() {
    let _serial = one_at_a_time();
    let (tx, rx) = mpsc::channel::<Vec<Box<[u8; 48]>>>();
    let consumer = thread::spawn(move || {
        let mut n = 0usize;
        for batch in rx {
            for b in batch {
                assert!(b.iter().all(|&x| x == 7));
                n += 1;
            }
        }
        n
    });
    for _ in 0..200 {
        let batch: Vec<Box<[u8; 48]>> = (0..500).map(|_| Box::new([7u8; 48])).collect();
        tx.send(batch).unwrap();
    }
    drop(tx);
    assert_eq!(consumer.join().unwrap(), 100_000);
}

#[test]
fn exiting_threads_leave_their_objects_valid_and_freeable() {
    let _serial = one_at_a_time();
    let scope = Scope::root().child("exiting-threads");
    let mut kept = Vec::new();
    for t in 0..20u8 {
        let s = scope.clone();
        let v = thread::spawn(move || {
            s.run(|| (0..300).map(|i| vec![t; 16 + i % 200]).collect::<Vec<_>>())
        })
        .join()
        .unwrap();
        kept.push(v);
    }
    let st = scope.stats();
    assert_eq!(
        st.objects,
        20 * 301,
        "300 vectors and the outer Vec per thread"
    );
    for (t, v) in kept.iter().enumerate() {
        assert!(v.iter().all(|x| x.iter().all(|&b| b == t as u8)));
    }
    drop(kept);
    let st = scope.stats();
    assert_eq!((st.bytes, st.objects), (0, 0));
}

#[test]
fn closing_a_scope_while_threads_allocate_in_it_moves_everything_to_the_parent() {
    let _serial = one_at_a_time();
    let parent = Scope::root().child("close-parent");
    let child = parent.child("close-child");
    let dying_before = global_stats().dying_caches;
    let stop = Arc::new(AtomicBool::new(false));
    // Allocations made by all workers, and those made after the close.
    let allocated = Arc::new(AtomicU64::new(0));
    let after_close = Arc::new(AtomicU64::new(0));
    let pre_close = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..4usize {
        let (c, stop) = (child.clone(), stop.clone());
        let (allocated, after_close, closed, pre_close) = (
            allocated.clone(),
            after_close.clone(),
            closed.clone(),
            pre_close.clone(),
        );
        handles.push(thread::spawn(move || {
            let mut keep: Vec<Vec<u8>> = Vec::with_capacity(128);
            // The first objects allocated before the close are kept to the end: survivors of
            // the closed child, whatever the random removals below take.
            let mut first: Vec<Vec<u8>> = Vec::with_capacity(8);
            c.run(|| {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) || i < 20_000 {
                    if first.len() < 8 && !closed.load(Ordering::SeqCst) {
                        first.push(vec![(t + i) as u8; 8 + (i * 37) % 3000]);
                        pre_close.fetch_add(1, Ordering::SeqCst);
                    }
                    keep.push(vec![(t + i) as u8; 8 + (i * 37) % 3000]);
                    if keep.len() > 64 {
                        let v = keep.swap_remove((i * 13) % keep.len());
                        assert!(v.iter().all(|&b| b == v[0]));
                    }
                    i += 1;
                    allocated.fetch_add(1, Ordering::SeqCst);
                    if closed.load(Ordering::SeqCst) {
                        after_close.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            keep.extend(first);
            keep
        }));
    }
    // Close while the workers are allocating: each has made some allocations, and they go on
    // after the close (asserted below), so the close overlapped their work.
    wait_for(&allocated, 4 * 1000, "the workers before the close");
    child.close();
    closed.store(true, Ordering::SeqCst);
    assert!(child.is_closed());
    wait_for(&after_close, 4 * 1000, "the workers after the close");
    stop.store(true, Ordering::Relaxed);
    let kept: Vec<Vec<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(after_close.load(Ordering::SeqCst) > 0);
    let live: u64 = kept
        .iter()
        .flat_map(|k| k.iter())
        .map(|v| unsafe { scopealloc::usable_size(v.as_ptr()) } as u64)
        .sum();
    let st = parent.stats();
    assert_eq!(
        st.bytes, live,
        "the closed child's objects are charged to the parent"
    );
    assert_eq!(child.stats().bytes, 0);
    // Objects allocated before the close live on (their caches dying, or for objects in shared
    // slabs their stubs moved to the parent's shared cache), and are in the parent's figure
    // above.
    assert!(
        pre_close.load(Ordering::SeqCst) > 0,
        "no object of the closed child outlived it"
    );
    drop(kept);
    let st = parent.stats();
    assert_eq!((st.bytes, st.objects), (0, 0));
    // The last free of each released the dying caches.
    let g = global_stats();
    assert_eq!(
        g.dying_caches, dying_before,
        "caches of the closed child outlive its objects: {g:?}"
    );
}

//! Core paths of the allocator as the global allocator: local and remote frees, thread exit and
//! adoption, closing a scope while threads allocate in it.

use scopealloc::{global_stats, Scope, ScopeAlloc};
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn objects_freed_by_another_thread_are_reused_by_their_owner() {
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
    let parent = Scope::root().child("close-parent");
    let child = parent.child("close-child");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..4usize {
        let c = child.clone();
        let stop = stop.clone();
        handles.push(thread::spawn(move || {
            c.run(|| {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 20_000 {
                    keep.push(vec![(t + i) as u8; 8 + (i * 37) % 3000]);
                    if keep.len() > 64 {
                        let v = keep.swap_remove((i * 13) % keep.len());
                        assert!(v.iter().all(|&b| b == v[0]));
                    }
                    i += 1;
                }
                keep
            })
        }));
    }
    thread::sleep(std::time::Duration::from_millis(50));
    child.close();
    assert!(child.is_closed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kept: Vec<Vec<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let live: u64 = kept
        .iter()
        .flat_map(|k| k.iter())
        .map(|v| unsafe { scopealloc::usable_size(v.as_ptr()) } as u64)
        .sum();
    let outer: u64 = kept
        .iter()
        .map(|k| unsafe { scopealloc::usable_size(k.as_ptr() as *const u8) } as u64)
        .sum();
    let st = parent.stats();
    assert_eq!(st.bytes, live + outer);
    assert_eq!(child.stats().bytes, 0);
    drop(kept);
    let st = parent.stats();
    assert_eq!((st.bytes, st.objects), (0, 0));
    let g = global_stats();
    assert!(g.dying_caches == 0 || g.live_caches > 0);
}

//! Shared slabs (issue 10, `frontend::shared`): a small scope's first objects of each class sit in
//! its thread's shared slabs, charged through a stub. These tests take each path an object of a
//! shared slab can take (freed by its thread, by another thread, after its scope closed, after
//! its thread exited, by the sweep) and check the figures, the limits and that stubs and caches
//! are released once their last object goes.
//!
//! The tests of one binary share the process's figures (stub and cache counts), so they run one
//! at a time, under `SERIAL`.

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::hint::black_box;
use std::sync::Mutex;
use std::thread;

use scopealloc::{global_stats, testing, trim, usable_size, Scope};

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

/// This test's turn (a failed test's poison does not stop the others).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `s` holds nothing any more; closes it.
fn assert_empty_and_close(s: &Scope, what: &str) {
    let st = s.stats();
    assert_eq!((st.bytes, st.objects), (0, 0), "{what}: {st:?}");
    s.close();
}

/// Objects a class takes from shared slabs before it gets slabs of its own (`shared::GRADUATE_AT`).
const GRADUATE_AT: usize = 32;

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Allocates `n` objects of `size` in `s`; returns them as addresses (Send). The vector is made
/// outside the scope, so that only the objects are charged to it.
fn fill(s: &Scope, size: usize, n: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(n);
    s.run(|| {
        for i in 0..n {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(lay(size)) };
            assert!(!p.is_null());
            // SAFETY: p holds `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            v.push(black_box(p) as usize);
        }
    });
    v
}

/// The figure of live stubs once earlier tests' leftovers are settled. The threads of earlier
/// tests may still be exiting (their stubs go then), so later figures are compared with `<=`.
fn settled_stubs() -> usize {
    trim();
    testing::stubs_in_use()
}

fn free_all(v: &[usize], size: usize) {
    for &p in v {
        // SAFETY: each a live object of this layout, freed once.
        unsafe { dealloc(black_box(p as *mut u8), lay(size)) };
    }
}

fn usable(p: usize) -> u64 {
    // SAFETY: p is a live object of ours.
    unsafe { usable_size(p as *mut u8) as u64 }
}

#[test]
fn a_small_scope_takes_no_slab_until_it_graduates() {
    let _g = serial();
    let s = Scope::root().child("small");
    let before = scopealloc::slow_paths();
    let few = fill(&s, 64, 5);
    let after = scopealloc::slow_paths();
    assert_eq!(after.shared_allocs - before.shared_allocs, 5, "{after:?}");
    assert_eq!(
        after.stubs_made - before.stubs_made,
        1,
        "one stub for the class"
    );
    let r = s.report();
    let row = r.scopes[0]
        .classes
        .iter()
        .find(|c| c.object_size == 64)
        .unwrap();
    assert_eq!((row.objects, row.bytes, row.slabs), (5, 5 * 64, 0));
    let st = s.stats();
    assert_eq!((st.bytes, st.objects, st.allocs), (320, 5, 5));
    let more = fill(&s, 64, 2 * GRADUATE_AT);
    let r = s.report();
    let row = r.scopes[0]
        .classes
        .iter()
        .find(|c| c.object_size == 64)
        .unwrap();
    assert_eq!(row.objects as usize, 5 + 2 * GRADUATE_AT);
    assert!(
        row.slabs >= 1,
        "past {GRADUATE_AT} objects a slab of its own: {row:?}"
    );
    free_all(&few, 64);
    free_all(&more, 64);
    assert_empty_and_close(&s, "after every free");
}

/// A small scope pays one cache for the stubs of every class it touches (`SHARED_CLASS`), not
/// one per class, and its report still has a row per class, also after it closed and its
/// survivors were reparented.
#[test]
fn a_small_scope_touching_many_classes_makes_one_cache_with_a_row_per_class() {
    let _g = serial();
    let sizes = [16, 24, 48, 100, 300, 1000, 3000];
    let parent = Scope::root().child("tenant-classes");
    // One object of each size in the parent first: the shared slabs' own caches (one per class,
    // for the process) and the parent's cache exist, so that only the child's cache is counted.
    let warm: Vec<Vec<usize>> = sizes.iter().map(|&n| fill(&parent, n, 1)).collect();
    let caches0 = global_stats().live_caches;
    let s = parent.child("many-classes");
    let objects: Vec<Vec<usize>> = sizes.iter().map(|&n| fill(&s, n, 2)).collect();
    assert_eq!(
        global_stats().live_caches - caches0,
        1,
        "one cache for {} classes",
        sizes.len()
    );
    // Each class's row holds `per_class` objects of it.
    let check = |r: &scopealloc::Report, per_class: u64, what: &str| {
        for (&n, v) in sizes.iter().zip(&objects) {
            let each = usable(v[0]);
            let row = r.scopes[0]
                .classes
                .iter()
                .find(|c| c.object_size == each)
                .unwrap_or_else(|| panic!("{what}: no row for {n} B: {r:?}"));
            assert_eq!(
                (row.objects, row.bytes),
                (per_class, per_class * each),
                "{what}: {n} B"
            );
        }
    };
    check(&s.report(), 2, "open");
    let st = s.stats();
    let total: u64 = objects.iter().map(|v| 2 * usable(v[0])).sum();
    assert_eq!((st.objects, st.bytes, st.allocs), (14, total, 14), "{st:?}");
    s.close();
    // The survivors are the parent's now, each in its class's row beside the parent's own.
    check(&parent.report(), 3, "closed, reparented");
    for ((&n, v), w) in sizes.iter().zip(&objects).zip(&warm) {
        free_all(v, n);
        free_all(w, n);
    }
    assert_empty_and_close(&parent, "after every free");
}

#[test]
fn objects_of_shared_slabs_freed_by_another_thread_leave_their_scope_at_once() {
    let _g = serial();
    let s = Scope::root().child("remote");
    let v = fill(&s, 100, 10);
    let each = usable(v[0]);
    assert_eq!(s.stats().bytes, 10 * each);
    let half = v[..5].to_vec();
    thread::spawn(move || free_all(&half, 100)).join().unwrap();
    // Pushed onto the stub's remote list, counted as freed before the owner takes them.
    let st = s.stats();
    assert_eq!((st.bytes, st.objects), (5 * each, 5), "{st:?}");
    // The owner takes them on its next slow path in the scope; the figures do not move.
    let w = fill(&s, 100, 3);
    assert_eq!(s.stats().objects, 8);
    free_all(&v[5..], 100);
    free_all(&w, 100);
    assert_eq!(s.stats().objects, 0);
    s.close();
}

#[test]
fn survivors_of_a_closed_scope_keep_no_scope_and_release_their_stubs_at_the_last_free() {
    let _g = serial();
    let parent = Scope::root().child("tenant");
    let stubs0 = settled_stubs();
    let mut kept = Vec::new();
    for _ in 0..1000 {
        let req = parent.child("request");
        let mut v = fill(&req, 48, 20);
        kept.push(v.pop().unwrap());
        free_all(&v, 48);
        req.close();
    }
    // Another scope on this thread makes the closed ones' tables go.
    let _ = fill(&parent.child("next"), 16, 0);
    trim();
    let g = global_stats();
    assert_eq!(
        g.closed_scopes_pending, 0,
        "no closed scope is kept by a survivor: {g:?}"
    );
    // The survivors' stubs moved to the parent's shared cache when their tables retired, so no
    // request's dying cache is kept either (a survivor costs its stub alone).
    assert_eq!(
        g.dying_caches, 0,
        "no dying cache is kept by a survivor: {g:?}"
    );
    let ps = parent.stats();
    let each = usable(kept[0]);
    assert_eq!(
        (ps.bytes, ps.objects),
        (1000 * each, 1000),
        "the survivors are charged to the parent: {ps:?}"
    );
    // Freed from another thread: through the abandoned stubs, under their caches' locks.
    let survivors = std::mem::take(&mut kept);
    thread::spawn(move || free_all(&survivors, 48))
        .join()
        .unwrap();
    let ps = parent.stats();
    assert_eq!((ps.bytes, ps.objects), (0, 0), "{ps:?}");
    trim();
    assert!(
        testing::stubs_in_use() <= stubs0,
        "every stub released at its last free"
    );
    let g = global_stats();
    assert_eq!(g.dying_caches, 0, "every dying cache released: {g:?}");
    parent.close();
}

#[test]
fn objects_of_an_exited_thread_in_shared_slabs_are_freed_and_released_elsewhere() {
    let _g = serial();
    let s = Scope::root().child("exited");
    let stubs0 = settled_stubs();
    let s2 = s.clone();
    let v = thread::spawn(move || {
        let mut v = fill(&s2, 24, 10);
        v.extend(fill(&s2, 300, 4));
        v
    })
    .join()
    .unwrap();
    let st = s.stats();
    assert_eq!(st.objects, 14, "{st:?}");
    // The thread exited: its stubs and shared slabs are abandoned; frees go under the locks.
    let before = scopealloc::slow_paths().abandoned_frees;
    free_all(&v[..10], 24);
    assert!(scopealloc::slow_paths().abandoned_frees >= before + 10);
    assert_eq!(s.stats().objects, 4);
    free_all(&v[10..], 300);
    let st = s.stats();
    assert_eq!((st.bytes, st.objects), (0, 0), "{st:?}");
    trim();
    assert!(testing::stubs_in_use() <= stubs0);
    s.close();
}

#[test]
fn remote_frees_racing_a_thread_exit_are_found_by_the_sweep() {
    let _g = serial();
    let stubs0 = settled_stubs();
    for round in 0..20 {
        let s = Scope::root().child("race");
        let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
        let s2 = s.clone();
        let owner = thread::spawn(move || {
            tx.send(fill(&s2, 64, 8)).unwrap();
            // Exit while the other thread frees.
        });
        let v = rx.recv().unwrap();
        let freer = thread::spawn(move || free_all(&v, 64));
        owner.join().unwrap();
        freer.join().unwrap();
        assert_empty_and_close(&s, &format!("round {round}"));
    }
    trim();
    assert!(
        testing::stubs_in_use() <= stubs0,
        "the sweep released every stub"
    );
}

#[test]
fn a_limit_holds_for_objects_in_shared_slabs() {
    let _g = serial();
    let s = Scope::root().child("limited");
    s.set_limit(Some(4096));
    // Made outside the scope: its buffer must not count against the limit.
    let mut v = Vec::with_capacity(200);
    let refused = s.run(|| loop {
        // SAFETY: non-zero size.
        let p = unsafe { alloc(lay(256)) };
        if p.is_null() {
            break true;
        }
        v.push(p as usize);
        if v.len() > 100 {
            break false;
        }
    });
    assert!(
        refused,
        "4 KiB of 256 B objects is 16; {} were given",
        v.len()
    );
    assert_eq!(v.len(), 16, "the limit's bytes, exactly");
    assert!(s.stats().peak_bytes <= 4096);
    free_all(&v, 256);
    s.close();
}

#[test]
fn realloc_of_a_shared_object_stays_in_its_scope() {
    let _g = serial();
    let s = Scope::root().child("realloc-origin");
    let v = fill(&s, 40, 1);
    // Outside the scope: the grown block is charged to the old one's scope.
    // SAFETY: v[0] is a live block of 40 bytes.
    let q = unsafe { realloc(v[0] as *mut u8, lay(40), 400) };
    assert!(!q.is_null());
    // SAFETY: q holds at least 40 bytes, written by fill with 0.
    assert_eq!(unsafe { *q.add(39) }, 0);
    let st = s.stats();
    assert_eq!(
        (st.objects, st.bytes),
        (1, usable(q as usize)),
        "the moved block is the scope's: {st:?}"
    );
    // SAFETY: q is live with this layout.
    unsafe { dealloc(q, lay(400)) };
    assert_eq!(s.stats().objects, 0);
    s.close();
}

#[test]
fn the_thread_that_closes_a_scope_retires_its_table_at_once() {
    let _g = serial();
    let parent = Scope::root().child("retire-tenant");
    let stubs0 = settled_stubs();
    let req = parent.child("request");
    let mut v = Vec::new();
    for size in [16, 48, 100, 300, 1000] {
        v.extend(fill(&req, size, 2).into_iter().map(|p| (p, size)));
    }
    assert_eq!(testing::stubs_in_use(), stubs0 + 5, "a stub per class");
    let (kept, size) = v.pop().unwrap();
    for &(p, size) in &v {
        free_all(&[p], size);
    }
    req.close();
    // No trim, no statistics, no other table made (each would retire closed tables anyway):
    // the close itself retired this thread's table, so the empty stubs went back and only the
    // survivor's stays, moved to the parent.
    assert_eq!(
        testing::stubs_in_use(),
        stubs0 + 1,
        "the closed scope's empty stubs are released by its close"
    );
    let ps = parent.stats();
    assert_eq!((ps.objects, ps.bytes), (1, usable(kept)), "{ps:?}");
    free_all(&[kept], size);
    assert_eq!(testing::stubs_in_use(), stubs0);
    assert_empty_and_close(&parent, "retire-tenant");
}

#[test]
fn realloc_on_another_thread_of_a_shared_object_stays_in_its_scope_while_its_stub_moves() {
    let _g = serial();
    let parent = Scope::root().child("realloc-tenant");
    let rounds = 200;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let (back, moved) = std::sync::mpsc::channel::<usize>();
    let p2 = parent.clone();
    // The owner allocates in short request scopes and closes them; each survivor goes to the
    // other thread, which grows it while the owner retires the closed tables (moving their
    // stubs to the parent's shared cache).
    let owner = thread::spawn(move || {
        for _ in 0..rounds {
            let req = p2.child("request");
            let v = fill(&req, 24, 1);
            req.close();
            tx.send(v[0]).unwrap();
            // Another request scope on this thread: the closed tables are dropped in time.
            let _ = fill(&p2.child("next"), 16, 0);
        }
    });
    let grower = thread::spawn(move || {
        for p in rx {
            // SAFETY: p is a live block of 24 bytes, written by fill.
            let q = unsafe { realloc(p as *mut u8, lay(24), 600) };
            assert!(!q.is_null());
            // SAFETY: q holds at least 24 bytes.
            assert_eq!(unsafe { *q.add(23) }, 0, "contents kept");
            back.send(q as usize).unwrap();
        }
    });
    owner.join().unwrap();
    grower.join().unwrap();
    let grown: Vec<usize> = moved.iter().collect();
    assert_eq!(grown.len(), rounds);
    let st = parent.stats();
    let bytes: u64 = grown.iter().map(|&q| usable(q)).sum();
    assert_eq!(
        (st.objects, st.bytes),
        (rounds as u64, bytes),
        "every grown block is charged to the request's ancestor: {st:?}"
    );
    free_all(&grown, 600);
    assert_empty_and_close(&parent, "realloc-tenant");
}

#[test]
fn many_threads_share_small_scopes_and_free_each_others_objects() {
    let _g = serial();
    let threads: usize = std::env::var("SHARED_SLABS_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let rounds: usize = std::env::var("SHARED_SLABS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = std::env::var("SHARED_SLABS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_u64);
    println!("shared_slabs: {threads} threads, {rounds} rounds, seed {seed}");
    let parent = Scope::root().child("ring");
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| std::sync::mpsc::channel::<Vec<(usize, usize)>>())
        .unzip();
    let mut handles = Vec::new();
    for (i, rx) in rxs.into_iter().enumerate() {
        let next = txs[(i + 1) % threads].clone();
        let parent = parent.clone();
        handles.push(thread::spawn(move || {
            let mut x = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for _ in 0..rounds {
                let req = parent.child("req");
                let mut mine = Vec::new();
                for _ in 0..10 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let size = 8 + (x % 2000) as usize;
                    mine.extend(fill(&req, size, 1).into_iter().map(|p| (p, size)));
                }
                // Half go to the next thread, which frees them; the rest are freed here, some
                // after the request scope closed.
                let theirs = mine.split_off(5);
                next.send(theirs).unwrap();
                let (early, late) = mine.split_at(2);
                for &(p, size) in early {
                    free_all(&[p], size);
                }
                req.close();
                for &(p, size) in late {
                    free_all(&[p], size);
                }
                while let Ok(v) = rx.try_recv() {
                    for (p, size) in v {
                        free_all(&[p], size);
                    }
                }
            }
            drop(next);
            rx
        }));
    }
    drop(txs);
    let rxs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for rx in rxs {
        while let Ok(v) = rx.try_recv() {
            for (p, size) in v {
                free_all(&[p], size);
            }
        }
    }
    let ps = parent.stats();
    assert_eq!((ps.bytes, ps.objects), (0, 0), "seed {seed}: {ps:?}");
    assert_eq!(ps.allocs, (threads * rounds * 10) as u64, "seed {seed}");
    parent.close();
    trim();
    let g = global_stats();
    assert_eq!(g.dying_caches, 0, "seed {seed}: {g:?}");
}

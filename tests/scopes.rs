//! Scope semantics: exact accounting at rest, free to origin, hierarchy, hard limits, close and
//! reparenting, enter/run, names, handles.
//!
//! The test harness allocates in the root scope (and so do other tests of this binary, running
//! in parallel), so every assertion is about child scopes a test creates itself. The only
//! allocations made while inside such a scope are the measured ones, done with
//! `std::alloc::alloc` into `Vec`s whose capacity was reserved beforehand in the root scope.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;

use scopealloc::{usable_size, Scope, ScopeStats};

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The early-refusal bound documented for per-thread stocks: with a limit L, a thread can hold at
/// least L - STOCK_MARGIN live bytes before the first refusal.
const STOCK_MARGIN: usize = 128 * KIB;

/// One live measured object.
#[derive(Clone, Copy, Debug)]
struct Obj {
    addr: usize,
    layout: Layout,
    usable: usize,
}

impl Obj {
    fn ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }
}

/// Allocates one object of `size` bytes (alignment `align`) in the calling thread's current
/// scope; `None` when the allocator refuses. Allocates nothing else.
fn try_obj(size: usize, align: usize) -> Option<Obj> {
    let layout = Layout::from_size_align(size, align).unwrap();
    // SAFETY: layout has a non-zero size (callers pass size >= 1).
    let p = unsafe { alloc(layout) };
    if p.is_null() {
        return None;
    }
    // SAFETY: p is a live block of this allocator; writing `size` bytes stays inside it.
    unsafe { p.write_bytes(0xA5, size) };
    // SAFETY: p comes from the global allocator, which is scopealloc.
    let usable = unsafe { usable_size(p) };
    Some(Obj {
        addr: p as usize,
        layout,
        usable,
    })
}

fn obj(size: usize) -> Obj {
    try_obj(size, 8).unwrap_or_else(|| std::process::abort())
}

fn free(o: Obj) {
    // SAFETY: o was allocated with o.layout and is freed once.
    unsafe { dealloc(o.ptr(), o.layout) }
}

/// Allocates one object per size in `sizes` inside `scope`; the result vector is reserved
/// before entering, so the only allocations charged to `scope` are the objects.
fn alloc_in(scope: &Scope, sizes: &[usize]) -> Vec<Obj> {
    let mut v = Vec::with_capacity(sizes.len());
    scope.run(|| {
        for &s in sizes {
            v.push(obj(s));
        }
    });
    v
}

fn usable_sum(objs: &[Obj]) -> u64 {
    objs.iter().map(|o| o.usable as u64).sum()
}

fn free_all(objs: Vec<Obj>) {
    for o in objs {
        free(o);
    }
}

/// A fresh scope under the root, created while the caller is in the root scope.
fn fresh(name: &str) -> Scope {
    Scope::root().child(name)
}

fn assert_live(scope: &Scope, bytes: u64, objects: u64) {
    let s = scope.stats();
    assert_eq!(
        (s.bytes, s.objects),
        (bytes, objects),
        "scope {:?}: {s:?}",
        scope.name()
    );
}

fn assert_self(scope: &Scope, bytes: u64, objects: u64) {
    let s = scope.stats();
    assert_eq!(
        (s.self_bytes, s.self_objects),
        (bytes, objects),
        "scope {:?}: {s:?}",
        scope.name()
    );
}

fn assert_empty(scope: &Scope) {
    let s = scope.stats();
    assert_eq!(
        (s.bytes, s.self_bytes, s.objects, s.self_objects),
        (0, 0, 0, 0),
        "scope {:?}: {s:?}",
        scope.name()
    );
}

/// A spread of sizes over the small classes, large page spans and huge mappings.
const SIZES: &[usize] = &[
    1,
    8,
    13,
    16,
    24,
    64,
    100,
    128,
    129,
    500,
    1000,
    1024,
    4000,
    4096,
    10_000,
    32 * KIB,
    32 * KIB + 1,
    100 * KIB,
    MIB,
    2 * MIB,
    2 * MIB + 1,
    5 * MIB,
];

// ---------------------------------------------------------------- usable sizes

#[test]
fn usable_size_covers_request_and_wastes_at_most_an_eighth_above_64_bytes() {
    let scope = fresh("usable");
    let sizes: Vec<usize> = (1..=32 * KIB)
        .step_by(37)
        .chain([64, 65, 128, 129, 1024, 1025, 32 * KIB])
        .collect();
    let objs = alloc_in(&scope, &sizes);
    for (o, &size) in objs.iter().zip(&sizes) {
        assert!(o.usable >= size, "usable {} < request {size}", o.usable);
        if size > 64 {
            assert!(
                o.usable <= size + size / 8 + 8,
                "usable {} wastes more than 12.5 % of {size}",
                o.usable
            );
        }
    }
    free_all(objs);
}

// ---------------------------------------------------------------- exact at rest

#[test]
fn new_scope_starts_empty_unlimited_and_open_under_its_parent() {
    let scope = fresh("empty");
    assert_eq!(scope.stats(), ScopeStats::default());
    assert_eq!(scope.limit(), None);
    assert!(!scope.is_closed());
    assert_eq!(scope.name(), "empty");
    assert_eq!(scope.parent().unwrap().id(), Scope::root().id());
}

#[test]
fn live_figures_equal_usable_sizes_of_live_objects_without_flush() {
    let scope = fresh("exact");
    let mut objs = alloc_in(&scope, SIZES);
    let n = objs.len() as u64;
    assert_live(&scope, usable_sum(&objs), n);
    assert_self(&scope, usable_sum(&objs), n);
    let s = scope.stats();
    assert_eq!((s.allocs, s.frees), (n, 0));
    assert!(s.charged_bytes >= s.bytes, "{s:?}");
    assert!(s.peak_bytes >= s.bytes, "{s:?}");

    // Free every other object, from the root scope.
    let mut kept = Vec::with_capacity(objs.len());
    for (i, o) in objs.drain(..).enumerate() {
        if i % 2 == 0 {
            free(o);
        } else {
            kept.push(o);
        }
    }
    assert_live(&scope, usable_sum(&kept), kept.len() as u64);
    let s = scope.stats();
    assert_eq!(s.allocs - s.frees, s.objects, "{s:?}");

    free_all(kept);
    assert_empty(&scope);
    let s = scope.stats();
    assert_eq!((s.allocs, s.frees), (n, n), "{s:?}");
}

#[test]
fn many_small_objects_of_one_class_are_counted_exactly() {
    let scope = fresh("many-small");
    let sizes = vec![48; 10_000];
    let objs = alloc_in(&scope, &sizes);
    assert_live(&scope, usable_sum(&objs), 10_000);
    free_all(objs);
    assert_empty(&scope);
}

#[test]
fn zeroed_and_aligned_allocations_are_charged_and_zeroed() {
    let scope = fresh("zeroed-aligned");
    let layouts = [
        Layout::from_size_align(100, 64).unwrap(),
        Layout::from_size_align(4096, 4096).unwrap(),
        Layout::from_size_align(10, 256).unwrap(),
        Layout::from_size_align(200 * KIB, 64 * KIB).unwrap(),
        Layout::from_size_align(3 * MIB, 2 * MIB).unwrap(),
    ];
    let mut objs = Vec::with_capacity(layouts.len());
    scope.run(|| {
        for l in layouts {
            // SAFETY: non-zero size.
            let p = unsafe { alloc_zeroed(l) };
            objs.push((p as usize, l));
        }
    });
    let mut total = 0;
    for &(p, l) in &objs {
        assert_ne!(p, 0, "{l:?} refused");
        assert_eq!(p % l.align(), 0, "{l:?} misaligned");
        // SAFETY: p is a live block of l.size() bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, l.size()) };
        assert!(bytes.iter().all(|&b| b == 0), "{l:?} not zeroed");
        // SAFETY: p comes from scopealloc.
        total += unsafe { usable_size(p as *const u8) } as u64;
    }
    assert_live(&scope, total, objs.len() as u64);
    for (p, l) in objs {
        // SAFETY: allocated above with l.
        unsafe { dealloc(p as *mut u8, l) };
    }
    assert_empty(&scope);
}

#[test]
fn realloc_within_a_scope_keeps_figures_exact_and_contents() {
    let scope = fresh("realloc");
    let sizes = [16usize, 100, 3000, 40 * KIB, 3 * MIB, 50, 8];
    let layout = Layout::from_size_align(8, 8).unwrap();
    let mut p = 0usize;
    scope.run(|| {
        // SAFETY: non-zero size.
        p = unsafe { alloc(layout) } as usize;
    });
    assert_ne!(p, 0);
    // SAFETY: 8-byte block.
    unsafe { (p as *mut u64).write(0x0123_4567_89AB_CDEF) };
    let mut cur_size = 8;
    for &new_size in &sizes {
        let mut q = 0usize;
        scope.run(|| {
            // SAFETY: p is live with Layout(cur_size, 8); new_size > 0.
            q = unsafe {
                realloc(
                    p as *mut u8,
                    Layout::from_size_align(cur_size, 8).unwrap(),
                    new_size,
                )
            } as usize;
        });
        assert_ne!(q, 0, "realloc to {new_size} refused");
        // SAFETY: the first 8 bytes were preserved by realloc (every size >= 8).
        assert_eq!(unsafe { (q as *const u64).read() }, 0x0123_4567_89AB_CDEF);
        p = q;
        cur_size = new_size;
        // SAFETY: p comes from scopealloc.
        let usable = unsafe { usable_size(p as *const u8) } as u64;
        assert_live(&scope, usable, 1);
    }
    // SAFETY: p is live with Layout(cur_size, 8).
    unsafe { dealloc(p as *mut u8, Layout::from_size_align(cur_size, 8).unwrap()) };
    assert_empty(&scope);
}

/// Reallocates `o` to `new_size` bytes from the calling thread's current scope; the new block
/// keeps `o`'s alignment. Aborts if refused (callers stay far from any limit).
fn realloc_obj(o: Obj, new_size: usize) -> Obj {
    // SAFETY: o is live with o.layout; new_size > 0.
    let q = unsafe { realloc(o.ptr(), o.layout, new_size) };
    if q.is_null() {
        std::process::abort();
    }
    Obj {
        addr: q as usize,
        layout: Layout::from_size_align(new_size, o.layout.align()).unwrap(),
        // SAFETY: q comes from scopealloc.
        usable: unsafe { usable_size(q) },
    }
}

/// (old size, new size) pairs that move the block: small to small of another class, small to
/// large, large to large, large to huge, huge to small.
const MOVES: &[(usize, usize)] = &[
    (100, 3000),
    (2000, 40 * KIB),
    (40 * KIB, 300 * KIB),
    (300 * KIB, 3 * MIB),
    (3 * MIB, 64),
];

#[test]
fn realloc_from_another_scope_keeps_the_blocks_origin() {
    for &(from, to) in MOVES {
        let origin = fresh("realloc-origin");
        let other = fresh("realloc-other");
        let o = alloc_in(&origin, &[from])[0];
        // SAFETY: o has `from` bytes.
        unsafe { o.ptr().write_bytes(0x5C, from) };
        let mut moved = None;
        other.run(|| moved = Some(realloc_obj(o, to)));
        let moved = moved.unwrap();
        assert_ne!(moved.addr, o.addr, "{from} -> {to} did not move");
        // SAFETY: the block keeps min(from, to) bytes of its contents.
        let kept = unsafe { std::slice::from_raw_parts(moved.ptr(), from.min(to)) };
        assert!(
            kept.iter().all(|&b| b == 0x5C),
            "{from} -> {to}: contents lost"
        );
        assert_live(&origin, moved.usable as u64, 1);
        assert_empty(&other);
        assert_eq!(
            other.stats().allocs,
            0,
            "{from} -> {to}: charged to the caller's scope"
        );
        free(moved);
        assert_empty(&origin);
    }
}

#[test]
fn vec_growing_in_another_scope_stays_charged_to_its_origin() {
    let origin = fresh("vec-origin");
    let other = fresh("vec-other");
    let mut v: Vec<u64> = origin.run(|| Vec::with_capacity(4));
    v.push(7);
    other.run(|| v.extend(0..100_000u64));
    // SAFETY: v's buffer comes from scopealloc.
    let usable = unsafe { usable_size(v.as_ptr() as *const u8) } as u64;
    assert_live(&origin, usable, 1);
    assert_empty(&other);
    assert_eq!(v[0], 7);
    assert_eq!(v[100_000], 99_999);
    drop(v);
    assert_empty(&origin);
}

#[test]
fn realloc_of_another_threads_block_keeps_its_origin() {
    let origin = fresh("realloc-xthread-origin");
    let here = fresh("realloc-xthread-here");
    let o = origin.clone();
    // The allocating thread stays alive (its slabs are not abandoned) until the realloc is done.
    let (to_main, objs_rx) = mpsc::channel::<Vec<Obj>>();
    let (done_tx, done) = mpsc::channel::<()>();
    let t = thread::spawn(move || {
        to_main.send(alloc_in(&o, &[100, 2000, 40 * KIB])).unwrap();
        done.recv().unwrap();
    });
    let objs = objs_rx.recv().unwrap();
    let mut moved = Vec::with_capacity(objs.len());
    here.run(|| {
        for (o, to) in objs.into_iter().zip([3000, 40 * KIB, 300 * KIB]) {
            moved.push(realloc_obj(o, to));
        }
    });
    assert_live(&origin, usable_sum(&moved), 3);
    assert_empty(&here);
    done_tx.send(()).unwrap();
    t.join().unwrap();
    free_all(moved);
    assert_empty(&origin);
}

#[test]
fn realloc_after_the_origin_closed_charges_the_nearest_open_ancestor() {
    for &(from, to) in MOVES {
        let grandparent = fresh("realloc-closed-gp");
        let parent = grandparent.child("realloc-closed-parent");
        let child = parent.child("realloc-closed-child");
        let other = fresh("realloc-closed-other");
        let o = alloc_in(&child, &[from])[0];
        // SAFETY: o has `from` bytes.
        unsafe { o.ptr().write_bytes(0x3E, from) };
        child.close();
        let moved = other.run(|| realloc_obj(o, to));
        // SAFETY: the block keeps min(from, to) bytes of its contents.
        let kept = unsafe { std::slice::from_raw_parts(moved.ptr(), from.min(to)) };
        assert!(
            kept.iter().all(|&b| b == 0x3E),
            "{from} -> {to}: contents lost"
        );
        assert_self(&parent, moved.usable as u64, 1);
        assert_live(&grandparent, moved.usable as u64, 1);
        assert_empty(&other);
        assert_eq!(
            other.stats().allocs,
            0,
            "{from} -> {to}: charged to the caller's scope"
        );
        // The ancestor closes too: the next move goes one level further up.
        parent.close();
        let again = other.run(|| realloc_obj(moved, from));
        assert_self(&grandparent, again.usable as u64, 1);
        assert_empty(&other);
        free(again);
        assert_empty(&grandparent);
    }
}

// ---------------------------------------------------------------- free returns to the origin

#[test]
fn free_from_inside_another_scope_uncharges_origin_not_current() {
    let origin = fresh("origin");
    let other = fresh("other");
    let objs = alloc_in(&origin, SIZES);
    let n = objs.len() as u64;
    other.run(|| free_all(objs));
    assert_empty(&origin);
    assert_empty(&other);
    assert_eq!((origin.stats().allocs, origin.stats().frees), (n, n));
    assert_eq!((other.stats().allocs, other.stats().frees), (0, 0));
}

#[test]
fn free_from_inside_a_child_scope_uncharges_the_parent_origin() {
    let parent = fresh("free-parent");
    let child = parent.child("free-child");
    let objs = alloc_in(&parent, &[64, 5000, 70 * KIB]);
    assert_self(&parent, usable_sum(&objs), 3);
    child.run(|| free_all(objs));
    assert_empty(&parent);
    assert_empty(&child);
    assert_eq!(child.stats().frees, 0);
}

#[test]
fn free_by_other_thread_in_other_scope_uncharges_origin() {
    let origin = fresh("xthread-origin");
    let freer_scope = fresh("xthread-freer");
    let objs = alloc_in(&origin, SIZES);
    assert_live(&origin, usable_sum(&objs), objs.len() as u64);
    let fs = freer_scope.clone();
    thread::spawn(move || fs.run(|| free_all(objs)))
        .join()
        .unwrap();
    assert_empty(&origin);
    assert_empty(&freer_scope);
    assert_eq!(freer_scope.stats().frees, 0);
}

#[test]
fn objects_allocated_by_other_thread_are_uncharged_when_this_thread_frees_them() {
    let origin = fresh("remote-origin");
    let here = fresh("remote-here");
    let o = origin.clone();
    let (objs, expected) = thread::spawn(move || {
        let objs = alloc_in(&o, SIZES);
        let expected = usable_sum(&objs);
        (objs, expected)
    })
    .join()
    .unwrap();
    // The allocating thread has exited: figures are exact without it.
    assert_live(&origin, expected, objs.len() as u64);
    here.run(|| free_all(objs));
    assert_empty(&origin);
    assert_empty(&here);
}

#[test]
fn figures_are_exact_while_the_allocating_thread_is_alive_but_idle() {
    let scope = fresh("idle-thread");
    let (to_main, from_worker) = mpsc::channel::<(Vec<Obj>, u64)>();
    let (to_worker, from_main) = mpsc::channel::<()>();
    let s = scope.clone();
    let worker = thread::spawn(move || {
        let objs = alloc_in(&s, &[8, 24, 24, 24, 512, 4096, 9000, 100 * KIB]);
        // Free half of them on this thread, keep the thread alive and idle.
        let mut keep = Vec::with_capacity(objs.len());
        for (i, o) in objs.into_iter().enumerate() {
            if i % 2 == 1 {
                s.run(|| free(o));
            } else {
                keep.push(o);
            }
        }
        let kept = usable_sum(&keep);
        to_main.send((keep, kept)).unwrap();
        from_main.recv().unwrap();
    });
    let (objs, sum) = from_worker.recv().unwrap();
    assert_live(&scope, sum, objs.len() as u64);
    free_all(objs);
    assert_empty(&scope);
    to_worker.send(()).unwrap();
    worker.join().unwrap();
}

// ---------------------------------------------------------------- hierarchy

#[test]
fn parent_figures_include_all_descendants() {
    let a = fresh("tree-a");
    let b = a.child("tree-b");
    let c = b.child("tree-c");
    let d = a.child("tree-d");
    let oa = alloc_in(&a, &[100, 200 * KIB]);
    let ob = alloc_in(&b, &[16, 16, 3000]);
    let oc = alloc_in(&c, &[40 * KIB, 8]);
    let od = alloc_in(&d, &[3 * MIB]);
    let (sa, sb, sc, sd) = (
        usable_sum(&oa),
        usable_sum(&ob),
        usable_sum(&oc),
        usable_sum(&od),
    );
    assert_live(&a, sa + sb + sc + sd, 8);
    assert_self(&a, sa, 2);
    assert_live(&b, sb + sc, 5);
    assert_self(&b, sb, 3);
    assert_live(&c, sc, 2);
    assert_self(&c, sc, 2);
    assert_live(&d, sd, 1);
    assert_eq!(a.stats().allocs, 8);
    assert_eq!(b.stats().allocs, 5);
    assert!(a.stats().peak_bytes >= sa + sb + sc + sd);

    free_all(oc);
    assert_live(&a, sa + sb + sd, 6);
    assert_live(&b, sb, 3);
    assert_empty(&c);
    assert_eq!(a.stats().frees, 2);
    free_all(oa);
    free_all(ob);
    free_all(od);
    for s in [&a, &b, &c, &d] {
        assert_empty(s);
    }
}

#[test]
fn parent_figures_still_include_a_closed_child() {
    let a = fresh("closed-child-a");
    let b = a.child("closed-child-b");
    let oa = alloc_in(&a, &[64]);
    let ob = alloc_in(&b, &[64, 1000, 300 * KIB]);
    let before = a.stats();
    b.close();
    let after = a.stats();
    assert_eq!(after.bytes, before.bytes);
    assert_eq!(after.objects, before.objects);
    assert_eq!(after.self_bytes, usable_sum(&oa) + usable_sum(&ob));
    assert_eq!(after.self_objects, 4);
    assert_eq!(after.allocs, before.allocs);
    free_all(ob);
    assert_live(&a, usable_sum(&oa), 1);
    assert_self(&a, usable_sum(&oa), 1);
    free_all(oa);
    assert_empty(&a);
}

// ---------------------------------------------------------------- hard limits

/// Allocates `size`-byte objects inside `scope` until the first refusal; returns the objects and
/// the stats read just before the refusing call.
fn fill_until_refused(scope: &Scope, size: usize, max: usize) -> (Vec<Obj>, ScopeStats) {
    let mut objs = Vec::with_capacity(max);
    let mut before = ScopeStats::default();
    let mut refused = false;
    scope.run(|| {
        for _ in 0..max {
            before = scope.stats();
            match try_obj(size, 8) {
                Some(o) => objs.push(o),
                None => {
                    refused = true;
                    break;
                }
            }
        }
    });
    assert!(refused, "{max} objects of {size} B were never refused");
    (objs, before)
}

#[test]
fn allocation_past_limit_returns_null_and_charges_nothing() {
    for size in [16usize, 1000, 20 * KIB, 64 * KIB, 300 * KIB] {
        let scope = fresh("limit-null");
        scope.set_limit(Some(MIB));
        assert_eq!(scope.limit(), Some(MIB));
        let (objs, before) = fill_until_refused(&scope, size, 2 * MIB / size + 10);
        let after = scope.stats();
        assert_eq!(
            after.bytes, before.bytes,
            "size {size}: a refusal charged bytes"
        );
        assert_eq!(after.objects, before.objects, "size {size}");
        assert_eq!(after.allocs, before.allocs, "size {size}");
        assert_eq!(after.limit_hits, before.limit_hits + 1, "size {size}");
        assert!(after.bytes <= MIB as u64, "size {size}: {after:?}");
        assert!(after.charged_bytes <= MIB as u64, "size {size}: {after:?}");
        assert!(after.peak_bytes <= MIB as u64, "size {size}: {after:?}");
        assert_eq!(after.bytes, usable_sum(&objs), "size {size}");
        free_all(objs);
        assert_empty(&scope);
    }
}

#[test]
fn a_thread_can_fill_a_limit_up_to_the_documented_stock_margin() {
    for size in [8usize, 100, 1000, 4000, 30 * KIB, 100 * KIB] {
        let scope = fresh("limit-margin");
        scope.set_limit(Some(MIB));
        let (objs, _) = fill_until_refused(&scope, size, 2 * MIB / size + 10);
        let live = usable_sum(&objs) as usize;
        let last = objs.last().map_or(size, |o| o.usable);
        assert!(
            live + STOCK_MARGIN + last >= MIB,
            "size {size}: refused at {live} live bytes, limit {MIB}, margin {STOCK_MARGIN}"
        );
        free_all(objs);
    }
}

#[test]
fn mixed_sizes_fill_a_limit_up_to_the_documented_stock_margin() {
    // Objects spread over many size classes: each class may hold a partly used slab, which
    // must be reclaimed near the limit.
    let scope = fresh("limit-mixed");
    scope.set_limit(Some(MIB));
    let sizes: Vec<usize> = (0..4000).map(|i| 8 + (i * 97) % 2000).collect();
    let mut objs = Vec::with_capacity(sizes.len());
    let mut refused_at = None;
    scope.run(|| {
        for &s in &sizes {
            match try_obj(s, 8) {
                Some(o) => objs.push(o),
                None => {
                    refused_at = Some(s);
                    break;
                }
            }
        }
    });
    let s = refused_at.expect("never refused");
    let live = usable_sum(&objs) as usize;
    assert!(
        live + STOCK_MARGIN + s >= MIB,
        "refused at {live} live bytes, limit {MIB}"
    );
    assert!(scope.stats().bytes <= MIB as u64);
    free_all(objs);
    assert_empty(&scope);
}

#[test]
fn stocks_held_by_other_threads_are_reclaimed_before_a_refusal() {
    let scope = fresh("limit-reclaim");
    scope.set_limit(Some(MIB));
    let (to_main, from_worker) = mpsc::channel::<Vec<Obj>>();
    let (to_worker, from_main) = mpsc::channel::<Vec<Obj>>();
    let s = scope.clone();
    // The worker takes stock in many classes (one small object each), then stays alive and idle:
    // its stocks must be reclaimed before the main thread's refill is refused.
    let worker = thread::spawn(move || {
        let sizes: Vec<usize> = (0..24).map(|i| 16 + i * 80).collect();
        let objs = alloc_in(&s, &sizes);
        to_main.send(objs).unwrap();
        let back = from_main.recv().unwrap();
        free_all(back);
    });
    let worker_objs = from_worker.recv().unwrap();
    let (objs, _) = fill_until_refused(&scope, 512, 4 * MIB / 512);
    let live = (usable_sum(&objs) + usable_sum(&worker_objs)) as usize;
    assert!(
        live + STOCK_MARGIN + 512 >= MIB,
        "refused at {live} live bytes with another thread's stocks, limit {MIB}"
    );
    assert_eq!(scope.stats().bytes as usize, live);
    free_all(objs);
    to_worker.send(worker_objs).unwrap();
    worker.join().unwrap();
    assert_empty(&scope);
}

#[test]
fn try_reserve_past_limit_returns_err_and_charges_nothing() {
    let scope = fresh("limit-try-reserve");
    scope.set_limit(Some(MIB));
    let mut v: Vec<u8> = Vec::new();
    let mut w: Vec<u64> = Vec::new();
    let before = scope.stats();
    let (big, small) = scope.run(|| {
        let big = v.try_reserve(2 * MIB).is_err();
        let small = w.try_reserve(1000).is_ok();
        (big, small)
    });
    assert!(big, "try_reserve of 2 MiB under a 1 MiB limit succeeded");
    assert!(small, "try_reserve of 8000 B under a 1 MiB limit failed");
    let after = scope.stats();
    assert_eq!(after.limit_hits, before.limit_hits + 1);
    assert_eq!(after.objects, 1);
    // SAFETY: w's buffer comes from scopealloc.
    assert_eq!(after.bytes, unsafe { usable_size(w.as_ptr() as *const u8) }
        as u64);
    drop(w);
    drop(v);
    assert_empty(&scope);
}

#[test]
fn huge_and_zeroed_and_realloc_requests_past_limit_are_refused() {
    let scope = fresh("limit-kinds");
    scope.set_limit(Some(MIB));
    let l4 = Layout::from_size_align(4 * MIB, 8).unwrap();
    let l64 = Layout::from_size_align(64, 8).unwrap();
    let mut small = 0usize;
    let (huge, zeroed, grown) = scope.run(|| {
        // SAFETY: non-zero sizes; small is live with l64 when realloc'd.
        unsafe {
            let huge = alloc(l4) as usize;
            let zeroed = alloc_zeroed(l4) as usize;
            small = alloc(l64) as usize;
            (small as *mut u8).write_bytes(7, 64);
            let grown = realloc(small as *mut u8, l64, 2 * MIB) as usize;
            (huge, zeroed, grown)
        }
    });
    assert_eq!((huge, zeroed, grown), (0, 0, 0));
    assert_ne!(small, 0);
    // A refused realloc leaves the block as it was, still charged.
    // SAFETY: small is still live (realloc failed).
    let kept = unsafe { std::slice::from_raw_parts(small as *const u8, 64) };
    assert!(kept.iter().all(|&b| b == 7));
    let s = scope.stats();
    assert_eq!(s.limit_hits, 3, "{s:?}");
    assert_eq!(s.objects, 1, "{s:?}");
    // SAFETY: small comes from scopealloc.
    assert_eq!(s.bytes, unsafe { usable_size(small as *const u8) } as u64);
    // SAFETY: small is live with l64.
    unsafe { dealloc(small as *mut u8, l64) };
    assert_empty(&scope);
}

#[test]
fn ancestor_limit_refuses_allocations_in_descendants() {
    let a = fresh("limit-ancestor");
    let b = a.child("limit-ancestor-b");
    let c = b.child("limit-ancestor-c");
    a.set_limit(Some(256 * KIB));
    assert_eq!(c.limit(), None);
    let (objs, _) = fill_until_refused(&c, 1000, MIB / 1000);
    assert!(a.stats().bytes <= 256 * KIB as u64);
    assert!(a.stats().peak_bytes <= 256 * KIB as u64);
    assert!(usable_sum(&objs) as usize + STOCK_MARGIN + 1000 >= 256 * KIB);
    assert_eq!(a.stats().limit_hits, 1);
    assert_eq!(c.stats().limit_hits, 0);
    // A sibling under the same ancestor shares its limit.
    let d = a.child("limit-ancestor-d");
    let mut got = None;
    d.run(|| got = try_obj(200 * KIB, 8));
    assert!(got.is_none(), "a sibling passed the ancestor's limit");
    assert_eq!(a.stats().limit_hits, 2);
    free_all(objs);
    d.run(|| got = try_obj(200 * KIB, 8));
    let o = got.expect("refused after the siblings' objects were freed");
    free(o);
    for s in [&a, &b, &c, &d] {
        assert_empty(s);
    }
}

#[test]
fn changing_or_removing_a_limit_takes_effect_at_once() {
    let scope = fresh("limit-change");
    scope.set_limit(Some(256 * KIB));
    let (mut objs, _) = fill_until_refused(&scope, 4000, MIB / 4000);
    let hits = scope.stats().limit_hits;

    // Raising the limit lets the very next allocation through.
    scope.set_limit(Some(MIB));
    assert_eq!(scope.limit(), Some(MIB));
    scope.run(|| objs.push(try_obj(4000, 8).expect("refused after raising the limit")));
    let (more, _) = fill_until_refused(&scope, 4000, MIB / 4000);
    assert!(scope.stats().bytes <= MIB as u64);
    assert!(scope.stats().bytes as usize + STOCK_MARGIN + 4000 >= MIB);

    // Lowering below the live bytes refuses the next allocation and keeps the objects.
    scope.set_limit(Some(64 * KIB));
    let mut got = None;
    scope.run(|| got = try_obj(16, 8));
    assert!(got.is_none(), "allocated past a lowered limit");
    assert_eq!(scope.stats().limit_hits, hits + 2);

    // Removing the limit lets a huge allocation through.
    scope.set_limit(None);
    assert_eq!(scope.limit(), None);
    scope.run(|| got = try_obj(8 * MIB, 8));
    let huge = got.expect("refused with no limit");
    assert_eq!(
        scope.stats().bytes,
        usable_sum(&objs) + usable_sum(&more) + huge.usable as u64
    );
    free(huge);
    free_all(objs);
    free_all(more);
    assert_empty(&scope);
}

#[test]
fn limit_set_on_a_scope_another_thread_is_filling_stops_it_at_once() {
    let scope = fresh("limit-live");
    let barrier = Arc::new(Barrier::new(2));
    let (to_main, from_worker) = mpsc::channel::<Vec<Obj>>();
    let (s, b) = (scope.clone(), barrier.clone());
    let worker = thread::spawn(move || {
        let first = alloc_in(&s, &[1000; 100]);
        b.wait(); // main sets the limit now
        b.wait();
        let mut objs = Vec::with_capacity(1000);
        let mut refused = false;
        s.run(|| {
            for _ in 0..1000 {
                match try_obj(1000, 8) {
                    Some(o) => objs.push(o),
                    None => {
                        refused = true;
                        break;
                    }
                }
            }
        });
        assert!(refused);
        objs.extend(first);
        to_main.send(objs).unwrap();
    });
    barrier.wait();
    let lim = scope.stats().bytes as usize + 200 * KIB;
    scope.set_limit(Some(lim));
    scope.reset_peak();
    let peak_at_set = scope.stats().peak_bytes as usize;
    barrier.wait();
    let objs = from_worker.recv().unwrap();
    worker.join().unwrap();
    let s = scope.stats();
    assert!(s.bytes as usize <= lim, "{s:?} limit {lim}");
    assert!(
        s.peak_bytes as usize <= lim.max(peak_at_set),
        "{s:?} limit {lim}"
    );
    free_all(objs);
    assert_empty(&scope);
}

// ---------------------------------------------------------------- close

#[test]
fn close_closes_all_descendants_and_moves_charges_to_nearest_open_ancestor() {
    let a = fresh("close-a");
    let b = a.child("close-b");
    let c = b.child("close-c");
    let d = c.child("close-d");
    let e = a.child("close-e");
    let ob = alloc_in(&b, &[64, 70 * KIB]);
    let oc = alloc_in(&c, &[1000]);
    let od = alloc_in(&d, &[24, 24, 3 * MIB]);
    let oe = alloc_in(&e, &[512]);
    let total = usable_sum(&ob) + usable_sum(&oc) + usable_sum(&od) + usable_sum(&oe);
    let allocs_b = b.stats().allocs;

    b.close();
    for s in [&b, &c, &d] {
        assert!(s.is_closed(), "{} still open", s.name());
        assert_empty(s);
        assert_eq!(s.stats().charged_bytes, 0);
    }
    assert!(!a.is_closed() && !e.is_closed());
    assert_eq!(b.stats().allocs, allocs_b, "closed scope lost its counters");
    assert_live(&a, total, 7);
    assert_self(&a, usable_sum(&ob) + usable_sum(&oc) + usable_sum(&od), 6);
    assert_live(&e, usable_sum(&oe), 1);
    let kids: Vec<u64> = a.children().iter().map(Scope::id).collect();
    assert_eq!(kids, vec![e.id()]);

    // Frees of objects charged before the close uncharge the ancestor.
    free_all(od);
    free_all(oc);
    assert_live(&a, usable_sum(&ob) + usable_sum(&oe), 3);
    free_all(ob);
    free_all(oe);
    for s in [&a, &b, &c, &d, &e] {
        assert_empty(s);
    }
}

#[test]
fn close_is_idempotent_and_a_closed_handle_stays_valid() {
    let a = fresh("closed-handle-a");
    let b = a.child("closed-handle-b");
    let objs = alloc_in(&b, &[100, 100]);
    b.close();
    b.close();
    assert!(b.is_closed());
    assert_eq!(b.name(), "closed-handle-b");
    assert_eq!(b.parent().unwrap().id(), a.id());
    let s = b.stats();
    assert_eq!((s.bytes, s.objects, s.allocs), (0, 0, 2));
    assert!(b.children().is_empty());
    free_all(objs);
    assert_empty(&a);
    let b2 = b.clone();
    drop(b);
    assert!(b2.is_closed());
    assert_eq!(b2.stats().allocs, 2);
}

#[test]
fn thread_inside_a_closed_scope_keeps_allocating_in_the_nearest_open_ancestor() {
    let a = fresh("inside-closed-a");
    let b = a.child("inside-closed-b");
    let c = b.child("inside-closed-c");
    let mut before = Vec::with_capacity(10);
    let mut after = Vec::with_capacity(10);
    // The close is done by a helper thread while this thread is inside `c`; the two meet on a
    // barrier, which does not allocate.
    let barrier = Arc::new(Barrier::new(2));
    let (bb, bar) = (b.clone(), barrier.clone());
    let closer = thread::spawn(move || {
        bar.wait();
        bb.close();
        bar.wait();
    });
    c.run(|| {
        for _ in 0..5 {
            before.push(obj(200));
        }
        barrier.wait();
        barrier.wait();
        for _ in 0..5 {
            after.push(obj(200));
        }
        after.push(obj(100 * KIB));
    });
    closer.join().unwrap();
    // Entering a closed scope enters its nearest open ancestor (documented on `Scope::enter`).
    c.run(|| assert_eq!(Scope::current().id(), a.id()));
    assert!(c.is_closed());
    assert_empty(&b);
    assert_empty(&c);
    assert_live(&a, usable_sum(&before) + usable_sum(&after), 11);
    assert_self(&a, usable_sum(&before) + usable_sum(&after), 11);
    free_all(before);
    free_all(after);
    assert_empty(&a);
}

#[test]
fn close_from_another_thread_while_a_thread_is_inside_moves_its_charges() {
    let a = fresh("remote-close-a");
    let b = a.child("remote-close-b");
    let barrier = Arc::new(Barrier::new(2));
    let (bb, bar) = (b.clone(), barrier.clone());
    let worker = thread::spawn(move || {
        let mut before = Vec::with_capacity(300);
        let mut after = Vec::with_capacity(300);
        let guard = bb.enter();
        for i in 0..300 {
            before.push(obj(16 + i % 700));
        }
        bar.wait(); // main closes b
        bar.wait();
        for i in 0..300 {
            after.push(obj(16 + i % 3000));
        }
        drop(guard);
        (before, after)
    });
    barrier.wait();
    b.close();
    barrier.wait();
    let (before, after) = worker.join().unwrap();
    assert!(b.is_closed());
    assert_empty(&b);
    let total = usable_sum(&before) + usable_sum(&after);
    assert_live(&a, total, 600);
    assert_self(&a, total, 600);
    free_all(before);
    assert_live(&a, usable_sum(&after), 300);
    free_all(after);
    assert_empty(&a);
}

#[test]
fn child_of_a_closed_scope_is_created_under_the_nearest_open_ancestor() {
    let a = fresh("late-child-a");
    let b = a.child("late-child-b");
    b.close();
    let c = b.child("late-child-c");
    assert!(!c.is_closed());
    assert_eq!(c.parent().unwrap().id(), a.id());
    let objs = alloc_in(&c, &[64]);
    assert_live(&a, usable_sum(&objs), 1);
    assert_live(&c, usable_sum(&objs), 1);
    free_all(objs);
    assert_empty(&a);
}

#[test]
fn closed_limited_child_charges_count_against_the_ancestor_limit() {
    let a = fresh("close-limit-a");
    a.set_limit(Some(MIB));
    let b = a.child("close-limit-b");
    let objs = alloc_in(&b, &[600 * KIB]);
    b.close();
    let mut got = None;
    a.run(|| got = try_obj(600 * KIB, 8));
    assert!(
        got.is_none(),
        "reparented charges were not counted against the limit"
    );
    free_all(objs);
    a.run(|| got = try_obj(600 * KIB, 8));
    free(got.expect("refused after the reparented object was freed"));
    assert_empty(&a);
}

// ---------------------------------------------------------------- handles, enter, run

#[test]
fn dropping_the_last_handle_closes_the_scope() {
    let a = fresh("last-handle-a");
    let b = a.child("last-handle-b");
    let b2 = b.clone();
    let id = b.id();
    let objs = alloc_in(&b, &[64, 64, 10 * KIB]);
    drop(b);
    assert_eq!(
        a.children().iter().map(Scope::id).collect::<Vec<_>>(),
        vec![id]
    );
    assert!(!b2.is_closed());
    drop(b2);
    assert!(
        a.children().is_empty(),
        "scope still open after its last handle"
    );
    assert_self(&a, usable_sum(&objs), 3);
    free_all(objs);
    assert_empty(&a);
}

#[test]
fn scope_handles_from_children_and_parent_keep_a_scope_open() {
    let a = fresh("handle-kinds-a");
    let b = a.child("handle-kinds-b");
    let via_children = a.children().pop().unwrap();
    assert_eq!(via_children.id(), b.id());
    drop(b);
    assert!(!via_children.is_closed());
    let c = via_children.child("handle-kinds-c");
    let via_parent = c.parent().unwrap();
    drop(via_children);
    assert!(!via_parent.is_closed());
    assert!(!c.is_closed());
    drop(via_parent);
    assert!(
        c.is_closed(),
        "closing by last handle must close descendants"
    );
}

#[test]
fn enter_guard_restores_the_previous_scope_when_dropped() {
    let root = Scope::root();
    let a = fresh("enter-a");
    let b = a.child("enter-b");
    assert_eq!(Scope::current().id(), root.id());
    {
        let _ga = a.enter();
        assert_eq!(Scope::current().id(), a.id());
        {
            let _gb = b.enter();
            assert_eq!(Scope::current().id(), b.id());
            {
                // Entering a scope that is not a child of the current one is allowed.
                let _gr = root.enter();
                assert_eq!(Scope::current().id(), root.id());
            }
            assert_eq!(Scope::current().id(), b.id());
        }
        assert_eq!(Scope::current().id(), a.id());
    }
    assert_eq!(Scope::current().id(), root.id());
}

#[test]
fn run_returns_the_closure_value_and_restores_the_previous_scope() {
    let a = fresh("run-a");
    let b = a.child("run-b");
    let got = a.run(|| {
        let inner = b.run(|| Scope::current().id());
        (inner, Scope::current().id())
    });
    assert_eq!(got, (b.id(), a.id()));
    assert_eq!(Scope::current().id(), Scope::root().id());
}

#[test]
fn run_restores_the_previous_scope_after_a_panic() {
    let a = fresh("panic-a");
    let b = a.child("panic-b");
    let guard = a.enter();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.run(|| -> u32 { panic!("deliberate panic inside Scope::run") })
    }));
    assert!(r.is_err());
    assert_eq!(Scope::current().id(), a.id());
    drop(r);
    drop(guard);
    assert_eq!(Scope::current().id(), Scope::root().id());
}

#[test]
fn allocations_follow_the_scope_entered_last() {
    let a = fresh("follow-a");
    let b = fresh("follow-b");
    let mut oa = Vec::with_capacity(2);
    let mut ob = Vec::with_capacity(1);
    {
        let _ga = a.enter();
        oa.push(obj(64));
        {
            let _gb = b.enter();
            ob.push(obj(64));
        }
        oa.push(obj(64));
    }
    assert_live(&a, usable_sum(&oa), 2);
    assert_live(&b, usable_sum(&ob), 1);
    free_all(oa);
    free_all(ob);
}

#[test]
fn new_thread_starts_in_the_root_scope() {
    let a = fresh("thread-start");
    let _g = a.enter();
    let id = thread::spawn(|| Scope::current().id()).join().unwrap();
    assert_eq!(id, Scope::root().id());
}

#[test]
fn scope_new_creates_a_child_of_the_current_scope() {
    let a = fresh("new-parent");
    let b = a.run(|| Scope::new("new-child"));
    assert_eq!(b.parent().unwrap().id(), a.id());
    assert_eq!(b.name(), "new-child");
    assert!(a.children().iter().any(|c| c.id() == b.id()));
}

#[test]
fn children_lists_open_children_only() {
    let a = fresh("children-a");
    let b = a.child("children-b");
    let c = a.child("children-c");
    let _grandchild = b.child("children-b1");
    let mut ids: Vec<u64> = a.children().iter().map(Scope::id).collect();
    ids.sort_unstable();
    let mut want = vec![b.id(), c.id()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert_eq!(
        a.children()
            .iter()
            .map(|s| s.name().to_owned())
            .collect::<std::collections::BTreeSet<_>>(),
        ["children-b", "children-c"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    b.close();
    let ids: Vec<u64> = a.children().iter().map(Scope::id).collect();
    assert_eq!(ids, vec![c.id()]);
    assert!(c.children().is_empty());
}

#[test]
fn root_has_no_parent_and_ids_are_unique() {
    let root = Scope::root();
    assert!(root.parent().is_none());
    assert!(!root.is_closed());
    assert_eq!(root.id(), Scope::root().id());
    let a = fresh("ids-a");
    let b = fresh("ids-b");
    let c = a.child("ids-c");
    let mut ids = vec![root.id(), a.id(), b.id(), c.id()];
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[test]
fn names_are_kept_and_truncated_to_63_bytes() {
    let long = "n".repeat(40) + &"x".repeat(60);
    let s = fresh(&long);
    assert_eq!(s.name().len(), 63);
    assert_eq!(s.name(), &long[..63]);
    let exact = "e".repeat(63);
    assert_eq!(fresh(&exact).name(), exact);
    assert_eq!(fresh("").name(), "");
    assert_eq!(fresh("tenant/äöü").name(), "tenant/äöü");
}

#[test]
fn reset_peak_brings_the_peak_down_to_the_current_charge() {
    let scope = fresh("peak");
    let big = alloc_in(&scope, &[MIB]);
    let small = alloc_in(&scope, &[64]);
    let peak = scope.stats().peak_bytes;
    assert!(peak >= usable_sum(&big) + usable_sum(&small));
    free_all(big);
    assert_eq!(
        scope.stats().peak_bytes,
        peak,
        "peak must not fall by itself"
    );
    scope.reset_peak();
    let s = scope.stats();
    assert!(s.peak_bytes < MIB as u64, "{s:?}");
    assert!(s.peak_bytes >= s.bytes, "{s:?}");
    assert!(s.peak_bytes <= s.charged_bytes, "{s:?}");
    let again = alloc_in(&scope, &[300 * KIB]);
    assert!(scope.stats().peak_bytes >= usable_sum(&again) + usable_sum(&small));
    free_all(again);
    free_all(small);
    assert_empty(&scope);
}

#[test]
fn parent_peak_follows_descendant_allocations() {
    let a = fresh("peak-parent");
    let b = a.child("peak-child");
    let objs = alloc_in(&b, &[500 * KIB]);
    assert!(a.stats().peak_bytes >= usable_sum(&objs));
    free_all(objs);
    a.reset_peak();
    assert!(a.stats().peak_bytes < 500 * KIB as u64);
}

#[test]
fn refused_allocation_does_not_raise_any_peak() {
    let a = fresh("refused-peak-a");
    a.set_limit(Some(MIB));
    let b = a.child("refused-peak-b");
    let c = b.child("refused-peak-c");
    let mut got = None;
    c.run(|| got = try_obj(64 * MIB, 8));
    assert!(got.is_none());
    for s in [&a, &b, &c] {
        let st = s.stats();
        assert!(
            st.peak_bytes <= MIB as u64,
            "a refused 64 MiB request raised the peak of {:?}: {st:?}",
            s.name()
        );
        assert_eq!(st.charged_bytes, 0, "{:?}: {st:?}", s.name());
    }
    assert_eq!(a.stats().limit_hits, 1);
}

/// Builds a chain `depth` deep under `top`; returns every handle (a dropped handle closes).
fn deep_chain(top: &Scope, depth: usize) -> Vec<Scope> {
    let mut all = Vec::with_capacity(depth);
    let mut parent = top.clone();
    for _ in 0..depth {
        let s = parent.child("d");
        parent = s.clone();
        all.push(s);
    }
    all
}

#[test]
fn stats_and_close_of_a_scope_100_000_levels_deep_walk_without_recursion() {
    // Before the fix, close and stats recursed once per level: 100 000 frames overflow a test
    // thread's 2 MiB stack.
    let depth: usize = std::env::var("SCOPEALLOC_TEST_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    eprintln!("depth {depth}");
    let top = Scope::root().child("deep-top");
    let all = deep_chain(&top, depth);
    let leaf = all.last().unwrap().clone();
    let v = leaf.run(|| vec![1u8; 100]);
    let usable = unsafe { scopealloc::usable_size(v.as_ptr()) } as u64;
    let st = top.stats();
    assert_eq!((st.bytes, st.objects, st.self_bytes), (usable, 1, 0));
    assert_eq!(all[depth / 2].stats().bytes, usable);
    top.close();
    assert!(leaf.is_closed() && all[0].is_closed());
    let root_self = Scope::root().stats();
    assert!(root_self.bytes >= usable, "the object moved to the root");
    assert_eq!(
        (leaf.stats().allocs, leaf.stats().frees),
        (1, 0),
        "a closed scope reports its usage at close"
    );
    drop(v);
    drop(all);
}

#[test]
fn a_scope_that_allocated_a_few_bytes_reports_a_peak_near_them() {
    // Before, the first refill charged a whole 64 KiB batch: a scope that allocated 100 bytes
    // reported a 64 KiB peak.
    let s = Scope::root().child("few-bytes");
    let v = s.run(|| vec![7u8; 100]);
    let st = s.stats();
    let usable = unsafe { scopealloc::usable_size(v.as_ptr()) } as u64;
    assert_eq!(st.bytes, usable);
    assert!(st.peak_bytes <= usable + 4096, "{st:?}");
    assert!(st.charged_bytes <= usable + 8192, "{st:?}");
    drop(v);
}

#[test]
fn the_peak_exceeds_the_live_peak_by_at_most_an_eighth_on_one_thread() {
    let s = Scope::root().child("peak-bound");
    let _g = s.enter();
    let mut v: Vec<Box<[u8; 64]>> = Vec::with_capacity(20_000);
    let mut live_peak = 0u64;
    for i in 0..20_000 {
        v.push(Box::new([i as u8; 64]));
        if i % 1000 == 999 {
            let st = s.stats();
            live_peak = live_peak.max(st.bytes);
            // The peak is taken at refill time: at most an eighth of the live bytes (at least
            // 4 KiB) plus one object beyond the live peak.
            assert!(
                st.peak_bytes <= live_peak + (live_peak / 8).max(4096) + 64,
                "{st:?}, live peak {live_peak}"
            );
            assert!(
                st.charged_bytes <= st.bytes + (st.bytes / 4).max(8192),
                "{st:?}"
            );
        }
    }
    v.truncate(10);
    let st = s.stats();
    assert!(
        st.charged_bytes <= st.bytes + (st.bytes / 4).max(8192),
        "after frees a stock drains: {st:?}"
    );
    drop(v);
    let st = s.stats();
    eprintln!("all freed: {st:?}");
    assert_eq!(st.bytes, 0);
    assert!(
        st.charged_bytes <= 8192,
        "a scope holding nothing keeps a small stock: {st:?}"
    );
}

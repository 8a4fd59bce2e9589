//! Scope costs: enter + leave, open + close of an empty scope, a 64 B malloc + free pair made
//! inside scopes of depth 1, 4 and 16 (with and without a limit on every level), against the same
//! pair in the root scope and against jemalloc, statistics and close of large trees, and a
//! request in its own scope (open, 20 allocations, close) against the same work unscoped. The allocators are called through their
//! `GlobalAlloc` impls; the benchmark binary keeps the system allocator as its global allocator,
//! so criterion's own allocations are not charged to any scope.
//!
//! scopealloc charges the calling thread's current scope, so each in-scope figure enters the
//! innermost scope (a guard held across the whole measurement) and then measures the bare pair.
//!
//! Run: `cargo bench --bench scopes` (quick: `cargo bench --bench scopes -- --warm-up-time 1
//! --measurement-time 2`). Figures and the command that produced them: notes/bench-rust.md.

use std::alloc::{GlobalAlloc, Layout};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use scopealloc::Scope;

static SCOPEALLOC: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A limit far above anything the pair loop holds, so it is checked but never reached.
const GENEROUS_LIMIT: usize = 1 << 30;

fn enter_leave(c: &mut Criterion) {
    let scope = Scope::root().child("bench-enter");
    let mut g = c.benchmark_group("scope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("enter_leave", |b| {
        b.iter(|| {
            let guard = black_box(&scope).enter();
            black_box(&guard);
            drop(guard);
        })
    });
    g.bench_function("open_close_empty", |b| {
        b.iter(|| {
            let s = Scope::root().child(black_box("x"));
            s.close();
            black_box(&s);
            // Dropping the last handle releases the scope: part of the measured cost.
            drop(s);
        })
    });
    g.finish();
    scope.close();
}

/// A chain of `depth` scopes under the root; the last one is the innermost.
fn chain(depth: usize, limit: Option<usize>) -> Vec<Scope> {
    let mut scopes = Vec::with_capacity(depth);
    let mut parent = Scope::root();
    for level in 0..depth {
        let s = parent.child(&format!("bench-depth-{level}"));
        s.set_limit(limit);
        parent = s.clone();
        scopes.push(s);
    }
    scopes
}

/// One malloc + free pair of `l` through `a`, timed by criterion.
fn bench_pair<A: GlobalAlloc>(b: &mut criterion::Bencher, a: &A, l: Layout) {
    b.iter(|| {
        // SAFETY: the layout has a non-zero size; p is freed once, with the same layout.
        unsafe {
            let p = a.alloc(black_box(l));
            black_box(p);
            a.dealloc(p, l);
        }
    })
}

fn pair_in_scope(c: &mut Criterion) {
    let l = Layout::from_size_align(64, 8).expect("valid layout");
    // A refusal would make the figures meaningless: check once, outside the measurement.
    // SAFETY: non-zero size; freed at once with the same layout.
    unsafe {
        let p = SCOPEALLOC.alloc(l);
        assert!(
            !p.is_null(),
            "scopealloc refused 64 bytes in the root scope"
        );
        SCOPEALLOC.dealloc(p, l);
    }
    let mut g = c.benchmark_group("pair_64B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("jemalloc", |b| bench_pair(b, &JEMALLOC, l));
    g.bench_function("root", |b| bench_pair(b, &SCOPEALLOC, l));
    for depth in [1usize, 4, 16] {
        for (label, limit) in [("no_limit", None), ("limit", Some(GENEROUS_LIMIT))] {
            let scopes = chain(depth, limit);
            let inner = scopes.last().expect("depth >= 1");
            // A filtered run (`cargo bench -- enter`) skips the closure: check only what ran.
            let mut ran = false;
            g.bench_function(BenchmarkId::new(format!("depth{depth}"), label), |b| {
                ran = true;
                let _inside = inner.enter();
                bench_pair(b, &SCOPEALLOC, l);
            });
            let stats = inner.stats();
            assert_eq!(
                stats.objects, 0,
                "pair loop left objects in the scope: {stats:?}"
            );
            assert_eq!(stats.limit_hits, 0, "the generous limit refused: {stats:?}");
            if ran {
                assert!(
                    stats.allocs > 0,
                    "the pair loop was not charged to the scope: {stats:?}"
                );
            }
            scopes[0].close();
        }
        g.bench_function(BenchmarkId::new("jemalloc", depth), |b| {
            bench_pair(b, &JEMALLOC, l)
        });
    }
    g.finish();
}

/// A tree under a fresh scope: `n` children of it (`wide`) or a chain `n` deep. Returns the top
/// and every handle (dropping a handle would close its scope).
fn big_tree(n: usize, wide: bool) -> (Scope, Vec<Scope>) {
    let top = Scope::root().child("bench-tree");
    let mut all = Vec::with_capacity(n);
    let mut parent = top.clone();
    for _ in 0..n {
        let s = parent.child("n");
        if !wide {
            parent = s.clone();
        }
        all.push(s);
    }
    (top, all)
}

/// Statistics and close of a scope with many descendants: both walk the subtree once,
/// iteratively, under the tree lock (issue 12, defect 7: milliseconds for 200 000 wide or
/// 100 000 deep).
fn large_trees(c: &mut Criterion) {
    let mut g = c.benchmark_group("tree");
    g.sample_size(10);
    for (label, n, wide) in [("wide", 200_000, true), ("deep", 100_000, false)] {
        let (top, all) = big_tree(n, wide);
        g.bench_function(BenchmarkId::new("stats", label), |b| {
            b.iter(|| black_box(top.stats()))
        });
        top.close();
        drop(all);
        g.bench_function(BenchmarkId::new("close", label), |b| {
            b.iter_batched(
                || big_tree(n, wide),
                |(top, all)| {
                    top.close();
                    (top, all)
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// The allocations of one request: 20 mixed sizes up to 4 KiB (those of
/// `examples/scope_memory.rs`'s cache mode, plus 1 KiB for the object a cache would keep).
const REQUEST_SIZES: [usize; 20] = [
    16, 24, 32, 48, 64, 100, 128, 200, 256, 300, 512, 700, 1000, 1500, 2000, 3000, 4000, 64, 128,
    1024,
];
/// The object of `request_keep_one`'s requests that outlives them is the last of the 20; a ring
/// of this many such objects frees the oldest, so that many closed request scopes still hold an
/// object at any time.
const KEPT_RING: usize = 1000;

/// The 20 allocations of a request through scopealloc, all freed unless `keep`, in which case the
/// last one is returned live.
fn request_allocs(keep: bool) -> Option<(*mut u8, Layout)> {
    let mut ptrs = [std::ptr::null_mut::<u8>(); REQUEST_SIZES.len()];
    for (p, &size) in ptrs.iter_mut().zip(&REQUEST_SIZES) {
        let l = Layout::from_size_align(size, 8).expect("valid layout");
        // SAFETY: non-zero size; freed below or by the caller, once, with the same layout.
        *p = unsafe { SCOPEALLOC.alloc(black_box(l)) };
        assert!(!p.is_null(), "scopealloc refused {size} bytes");
    }
    let kept = REQUEST_SIZES.len() - usize::from(keep);
    for (&p, &size) in ptrs[..kept].iter().zip(&REQUEST_SIZES) {
        let l = Layout::from_size_align(size, 8).expect("valid layout");
        // SAFETY: p was allocated above with this layout and is freed once.
        unsafe { SCOPEALLOC.dealloc(black_box(p), l) };
    }
    keep.then(|| {
        let size = REQUEST_SIZES[kept];
        (
            ptrs[kept],
            Layout::from_size_align(size, 8).expect("valid layout"),
        )
    })
}

/// A request in its own scope (issue 10): open a child of a tenant, enter it, 20 allocations of
/// mixed sizes, free them, close, against the same allocations with no scope. The `keep_one`
/// pair keeps the last object of each request alive in a ring of `KEPT_RING` (freed when it is
/// the oldest), as a cache of responses would: the closed scope then still has a live object.
fn request_scope(c: &mut Criterion) {
    let tenant = Scope::root().child("bench-tenant");
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("scoped", |b| {
        b.iter(|| {
            let req = tenant.child(black_box("request"));
            {
                let _inside = req.enter();
                request_allocs(false);
            }
            req.close();
            drop(req);
        })
    });
    g.bench_function("unscoped", |b| b.iter(|| request_allocs(false)));
    for scoped in [true, false] {
        let mut ring: std::collections::VecDeque<(*mut u8, Layout)> =
            std::collections::VecDeque::with_capacity(KEPT_RING);
        let label = if scoped { "scoped" } else { "unscoped" };
        g.bench_function(BenchmarkId::new("keep_one", label), |b| {
            b.iter(|| {
                let kept = if scoped {
                    let req = tenant.child(black_box("request"));
                    let kept = {
                        let _inside = req.enter();
                        request_allocs(true)
                    };
                    req.close();
                    kept
                } else {
                    request_allocs(true)
                };
                if ring.len() == KEPT_RING {
                    let (p, l) = ring.pop_front().expect("ring is full");
                    // SAFETY: a live object of the ring, allocated with l, freed once.
                    unsafe { SCOPEALLOC.dealloc(p, l) };
                }
                ring.push_back(kept.expect("keep_one keeps an object"));
            })
        });
        for (p, l) in ring.drain(..) {
            // SAFETY: the ring's objects are live, each freed once.
            unsafe { SCOPEALLOC.dealloc(p, l) };
        }
    }
    g.finish();
    let st = tenant.stats();
    assert_eq!(st.objects, 0, "the request loops left objects: {st:?}");
    tenant.close();
}

criterion_group!(
    benches,
    enter_leave,
    pair_in_scope,
    large_trees,
    request_scope
);
criterion_main!(benches);

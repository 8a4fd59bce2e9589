//! Scope costs: enter + leave, open + close of an empty scope, and a 64 B malloc + free pair made
//! inside scopes of depth 1, 4 and 16 (with and without a limit on every level), against the same
//! pair in the root scope and against jemalloc. The allocators are called through their
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

criterion_group!(benches, enter_leave, pair_in_scope, large_trees);
criterion_main!(benches);

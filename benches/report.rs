//! Reports: the time of a report of 10 000 scopes (each holding one object, so each has a cache
//! and a size-class row), and the longest pause a report imposes on a thread that allocates
//! while reports run back to back.
//!
//! The pause is measured by threads that record their longest single call, first with no report
//! running (the baseline), then while the main thread takes reports in a loop:
//! - `scope churn`: open a scope, allocate 64 B in it (its first allocation creates its cache,
//!   under the tree lock), free, close it: the path that waits for the tree lock;
//! - `stats`: `stats()` of a small scope (takes the tree lock);
//! - `malloc/free`: a 64 B pair in a scope of the report (the fast path, no tree lock), which a
//!   report should not disturb beyond the cache locks it takes one at a time.
//!
//! The allocators are called through `GlobalAlloc`, as in `benches/scopes.rs`; the binary's own
//! global allocator is the system's, so criterion's and the report's values are not charged.
//!
//! Run: `cargo bench --bench report` (quick: `cargo bench --bench report -- --warm-up-time 1
//! --measurement-time 3`). Figures: docs/REPORT.md.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, Criterion};
use scopealloc::Scope;

static SCOPEALLOC: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

/// Each report's hold of the tree lock (ns), from `testing::report_hold_ns`.
static HOLDS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

const TENANTS: usize = 100;
const PER_TENANT: usize = 99;

/// 10 000 scopes under `top` (100 tenants of 99 requests), each holding one 64 B object.
struct Tree {
    top: Scope,
    scopes: Vec<Scope>,
    objects: Vec<usize>,
}

fn layout() -> Layout {
    Layout::from_size_align(64, 8).expect("valid layout")
}

fn tree() -> Tree {
    let top = Scope::root().child("bench-report");
    let mut scopes = Vec::with_capacity(TENANTS * (PER_TENANT + 1));
    let mut objects = Vec::with_capacity(scopes.capacity());
    for t in 0..TENANTS {
        let tenant = top.child(&format!("tenant-{t}"));
        for r in 0..PER_TENANT {
            scopes.push(tenant.child(&format!("req-{r}")));
        }
        scopes.push(tenant);
    }
    for s in &scopes {
        let g = s.enter();
        // SAFETY: non-zero size; freed in `drop` with the same layout.
        let p = unsafe { SCOPEALLOC.alloc(layout()) };
        assert!(!p.is_null());
        objects.push(p as usize);
        drop(g);
    }
    Tree {
        top,
        scopes,
        objects,
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for &p in &self.objects {
            // SAFETY: allocated in `tree` with this layout, freed once.
            unsafe { SCOPEALLOC.dealloc(p as *mut u8, layout()) };
        }
        self.top.close();
    }
}

fn report_time(c: &mut Criterion) {
    let t = tree();
    let r = t.top.report();
    assert_eq!(r.scopes.len(), TENANTS * (PER_TENANT + 1) + 1);
    let mut g = c.benchmark_group("report");
    g.sample_size(20);
    g.bench_function("10000_scopes", |b| b.iter(|| black_box(t.top.report())));
    g.bench_function("10000_scopes_prometheus", |b| {
        b.iter(|| black_box(r.prometheus()))
    });
    g.bench_function("10000_scopes_text", |b| b.iter(|| black_box(r.to_string())));
    g.finish();
}

/// The longest and the 99.9th-percentile single call of `op`, run in a loop for `dur` on a
/// thread of its own, while `reports` (if set) takes reports of `tree` back to back.
fn pause(
    tree: &Tree,
    dur: Duration,
    reports: bool,
    op: Arc<dyn Fn() + Send + Sync>,
) -> (Duration, Duration, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut times: Vec<Duration> = Vec::with_capacity(1 << 20);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                op();
                times.push(t0.elapsed());
            }
            times.sort();
            let p999 = times[times.len() * 999 / 1000];
            (*times.last().expect("a call"), p999)
        })
    };
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < dur {
        if reports {
            black_box(tree.top.report());
            HOLDS
                .lock()
                .expect("holds")
                .push(scopealloc::testing::report_hold_ns().1);
            n += 1;
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (max, p999) = worker.join().expect("the worker");
    (max, p999, n)
}

fn pauses() {
    let t = tree();
    let churn_parent = t.scopes[0].clone();
    let churn: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let s = churn_parent.child("churn");
        let g = s.enter();
        // SAFETY: non-zero size; freed at once with the same layout.
        unsafe {
            let p = SCOPEALLOC.alloc(layout());
            SCOPEALLOC.dealloc(black_box(p), layout());
        }
        drop(g);
        s.close();
    });
    let small = Scope::root().child("bench-report-small");
    let stats: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        black_box(small.stats());
    });
    let in_tree = t.scopes[5].clone();
    let pair: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let g = in_tree.enter();
        for _ in 0..100 {
            // SAFETY: non-zero size; freed at once with the same layout.
            unsafe {
                let p = SCOPEALLOC.alloc(layout());
                SCOPEALLOC.dealloc(black_box(p), layout());
            }
        }
        drop(g);
    });
    let dur = Duration::from_secs(2);
    println!("\nlongest single call of an allocating thread, {dur:?} each (max / p99.9):");
    for (name, op) in [
        ("scope churn", churn),
        ("stats", stats),
        ("100 x malloc/free 64 B", pair),
    ] {
        let (base_max, base_p, _) = pause(&t, dur, false, op.clone());
        let (max, p, n) = pause(&t, dur, true, op);
        let mut holds = std::mem::take(&mut *HOLDS.lock().expect("holds"));
        holds.sort();
        println!(
            "  tree lock held by each report: median {:.2?}, max {:.2?}",
            Duration::from_nanos(holds[holds.len() / 2]),
            Duration::from_nanos(*holds.last().expect("a report")),
        );
        println!(
            "  {name:<24} no report: {base_max:>10.1?} / {base_p:>8.1?}   {n:>4} reports of 10 000 scopes: {max:>10.1?} / {p:>8.1?}"
        );
    }
}

criterion_group!(benches, report_time);

fn main() {
    benches();
    pauses();
    Criterion::default().configure_from_args().final_summary();
}

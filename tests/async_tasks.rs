//! Async tasks in scopes: `Scope::instrument` under tokio's multi-thread runtime (work stealing,
//! timers, spawns from inside a task) and with no executor at all (a destructor's allocations).

#![cfg(not(loom))]

use scopealloc::{usable_size, Scope, ScopeAlloc};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

const SCOPES: usize = 10;
const TASKS: usize = 100;

static HOLDING: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicBool = AtomicBool::new(false);
/// Usable bytes each scope's tasks hold, added by the tasks themselves.
static EXPECTED: [AtomicU64; SCOPES] = [const { AtomicU64::new(0) }; SCOPES];
static MIGRATED: AtomicU64 = AtomicU64::new(0);
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// A small id per thread (set on first use; reading it never allocates).
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

fn thread_no() -> u64 {
    THREAD.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

fn usable(v: &[u8]) -> u64 {
    // SAFETY: v's buffer is a live allocation of the global allocator.
    unsafe { usable_size(v.as_ptr()) as u64 }
}

/// Task `i`: allocates before its first `.await`, between yields and sleeps (where it may move
/// to another worker), in a child task it spawns (instrumented with the current scope), then
/// holds everything across more `.await`s until released, and returns it.
async fn task(i: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let first_thread = thread_no();
    let a = vec![1u8; 24 + 8 * i];
    tokio::task::yield_now().await;
    let b = vec![2u8; 1000 + 37 * i];
    tokio::time::sleep(Duration::from_millis(1)).await;
    let child = tokio::spawn(Scope::current().instrument(async move {
        tokio::task::yield_now().await;
        vec![3u8; 40_000 + 100 * i]
    }));
    let c = child.await.expect("child task");
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    EXPECTED[i % SCOPES].fetch_add(usable(&a) + usable(&b) + usable(&c), Ordering::SeqCst);
    HOLDING.fetch_add(1, Ordering::SeqCst);
    while !RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
    }
    if thread_no() != first_thread {
        MIGRATED.fetch_add(1, Ordering::Relaxed);
    }
    assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2) && c.iter().all(|&x| x == 3));
    (a, b, c)
}

#[test]
fn tasks_moving_between_worker_threads_are_charged_exactly_to_their_scopes() {
    let parent = Scope::root().child("async");
    let scopes: Vec<Scope> = (0..SCOPES)
        .map(|k| parent.child(&format!("s{k}")))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    let handles: Vec<_> = (0..TASKS)
        .map(|i| rt.spawn(scopes[i % SCOPES].instrument(task(i))))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while HOLDING.load(Ordering::SeqCst) < TASKS as u64 {
        assert!(Instant::now() < deadline, "tasks made no progress in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    // While the tasks hold their memory across `.await`s: each scope has its tasks' bytes. The
    // runtime's own list of deferred wakers (grown inside some task's poll by `yield_now`, and
    // kept until the runtime shuts down) may add a little to a scope; children's task cells
    // are freed once the children's results are taken.
    for (k, s) in scopes.iter().enumerate() {
        let want = EXPECTED[k].load(Ordering::SeqCst);
        let st = s.stats();
        assert!(
            st.bytes >= want && st.bytes <= want + 4096,
            "scope s{k} holds {} bytes, its tasks {want}",
            st.bytes
        );
        assert!(st.objects >= 3 * (TASKS / SCOPES) as u64);
    }

    RELEASE.store(true, Ordering::SeqCst);
    let held: Vec<_> = rt.block_on(async {
        let mut v = Vec::with_capacity(TASKS);
        for h in handles {
            v.push(h.await.expect("task"));
        }
        v
    });
    drop(rt); // joins the workers: the runtime's own memory goes away
    assert!(
        MIGRATED.load(Ordering::Relaxed) > 0,
        "no task moved between threads"
    );

    // Exact at the end: the buffers the tasks returned, and nothing else.
    let mut total = 0;
    for (k, s) in scopes.iter().enumerate() {
        let want = EXPECTED[k].load(Ordering::SeqCst);
        let st = s.stats();
        assert_eq!(st.bytes, want, "scope s{k}");
        assert_eq!(st.objects, 3 * (TASKS / SCOPES) as u64, "scope s{k}");
        total += want;
    }
    assert_eq!(parent.stats().bytes, total);
    drop(held);
    for s in &scopes {
        assert_eq!((s.stats().bytes, s.stats().objects), (0, 0));
    }
    assert_eq!(parent.stats().bytes, 0);
}

/// Keeps what a destructor allocates.
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

struct AllocatesOnDrop;

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        let v = vec![0u8; 50_000];
        KEPT.lock().unwrap().push(v);
    }
}

#[test]
fn an_instrumented_future_is_polled_and_dropped_inside_its_scope() {
    fn assert_send<T: Send>(_: &T) {}
    KEPT.lock().unwrap().reserve(4); // the keeper's own room, outside the scope
    let s = Scope::root().child("no-executor");
    let guard = AllocatesOnDrop;
    let mut fut = Box::pin(s.instrument(async move {
        let _guard = guard;
        let v = vec![0u8; 10_000];
        std::future::pending::<()>().await;
        drop(v);
    }));
    assert_send(&fut);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(
        Scope::current(),
        Scope::root(),
        "the scope is left after each poll"
    );
    let polled = s.stats();
    assert_eq!(polled.objects, 1);
    assert!(polled.bytes >= 10_000);
    drop(fut); // drops the inner future inside the scope: its destructor allocates there
    let dropped = s.stats();
    let kept = KEPT.lock().unwrap().pop().expect("the destructor ran");
    assert_eq!(
        dropped.objects, 1,
        "the 10 000 bytes freed, the destructor's 50 000 kept"
    );
    assert_eq!(dropped.bytes, usable(&kept));
    drop(kept);
    assert_eq!(s.stats().bytes, 0);
}

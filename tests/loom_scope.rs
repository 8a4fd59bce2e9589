//! Loom models of the scope protocol (`src/lifecycle.rs`), the code that makes the kernel's two
//! races impossible. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release --test loom_scope
//! ```
//!
//! Each model explores every interleaving of its threads. The "cache" of a model is a `PercpuRef` plus
//! a `released` flag; touching a released cache, releasing twice or never releasing a dying,
//! unreferenced cache fails the model.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use scopealloc::accounting::percpu_ref::PercpuRef as Life;
use scopealloc::sync::remote::{remote_pending, remote_push, remote_take, Linked};

/// The production code's pattern around each reference operation: lock, the `_locked` call,
/// unlock.
trait Locked {
    fn try_get(&self) -> bool;
    fn put(&self) -> bool;
    fn kill(&self) -> bool;
}

impl Locked for Life {
    fn try_get(&self) -> bool {
        self.lock();
        // SAFETY: locked just above.
        let got = unsafe { self.tryget_locked() };
        // SAFETY: this thread holds the lock.
        unsafe { self.unlock() };
        got
    }
    fn put(&self) -> bool {
        self.lock();
        // SAFETY: locked just above; the caller holds a reference.
        let last = unsafe { self.put_locked() };
        // SAFETY: this thread holds the lock.
        unsafe { self.unlock() };
        last
    }
    fn kill(&self) -> bool {
        self.lock();
        // SAFETY: locked just above.
        let last = unsafe { self.kill_locked() };
        // SAFETY: this thread holds the lock.
        unsafe { self.unlock() };
        last
    }
}

struct ModelCache {
    life: Life,
    released: AtomicBool,
    releases: AtomicUsize,
    /// Stands for `Cache::scope`: 0 = origin, 1 = ancestor (changed under the lock).
    target: AtomicUsize,
}

impl ModelCache {
    fn new() -> Arc<Self> {
        Arc::new(ModelCache {
            life: Life::new(),
            released: AtomicBool::new(false),
            releases: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        assert!(
            !self.released.load(Ordering::SeqCst),
            "a thread touched a released cache"
        );
    }

    fn release(&self) {
        self.touch();
        self.released.store(true, Ordering::SeqCst);
        self.releases.fetch_add(1, Ordering::SeqCst);
    }

    fn check_end(&self, expect_released: bool) {
        assert_eq!(
            self.releases.load(Ordering::SeqCst),
            expect_released as usize,
            "released exactly once when dying and unreferenced, never otherwise"
        );
    }
}

/// Race (a): a thread takes a new slab from a cache while another closes its scope. Either the
/// allocation wins (it holds a reference, the cache outlives its use, and its put releases it) or
/// the close wins (the allocation is refused and re-targets).
#[test]
fn allocate_vs_close() {
    loom::model(|| {
        let c = ModelCache::new();
        let a = {
            let c = c.clone();
            thread::spawn(move || {
                c.life.lock();
                let got = unsafe { c.life.tryget_locked() };
                unsafe { c.life.unlock() };
                if got {
                    c.touch(); // allocate from the new slab
                    if c.life.put() {
                        c.release();
                    }
                }
            })
        };
        if c.life.kill() {
            c.release();
        }
        a.join().unwrap();
        c.check_end(true);
    });
}

/// Race (b): the free of the last object, the close and a reparenting (of an ancestor's close)
/// run together. The freeing thread reads the target and uncharges under the lock, then drops
/// its reference; only the holder of the last reference of a dying cache releases it.
#[test]
fn free_of_last_object_vs_close_vs_reparent() {
    loom::model(|| {
        let c = ModelCache::new();
        assert!(c.life.try_get()); // the slab holding the last object
        let freer = {
            let c = c.clone();
            thread::spawn(move || {
                c.life.lock();
                let _uncharge_to = c.target.load(Ordering::SeqCst);
                let last = unsafe { c.life.put_locked() };
                unsafe { c.life.unlock() };
                if last {
                    c.release();
                }
                // Nothing touches `c` after its put: that is the whole point.
            })
        };
        let closer = {
            let c = c.clone();
            thread::spawn(move || {
                c.life.lock();
                let last = unsafe { c.life.kill_locked() };
                c.target.store(1, Ordering::SeqCst);
                unsafe { c.life.unlock() };
                if last {
                    c.release();
                }
            })
        };
        freer.join().unwrap();
        closer.join().unwrap();
        c.check_end(true);
    });
}

/// A parent and its child closed at once both kill the child's caches: exactly one release.
#[test]
fn concurrent_close_of_parent_and_child() {
    loom::model(|| {
        let c = ModelCache::new();
        let t = {
            let c = c.clone();
            thread::spawn(move || {
                if c.life.kill() {
                    c.release();
                }
            })
        };
        if c.life.kill() {
            c.release();
        }
        t.join().unwrap();
        c.check_end(true);
    });
}

/// Entering a scope while it closes: the entering thread checks the scope's state, then attaches;
/// whatever the order, it never holds a reference to a released cache and nothing leaks.
#[test]
fn enter_of_a_closing_scope() {
    loom::model(|| {
        let closed = Arc::new(AtomicBool::new(false));
        let c = ModelCache::new();
        let enterer = {
            let (c, closed) = (c.clone(), closed.clone());
            thread::spawn(move || {
                if closed.load(Ordering::Acquire) {
                    return; // re-target to the ancestor
                }
                if c.life.try_get() {
                    c.touch();
                    if c.life.put() {
                        c.release();
                    }
                }
            })
        };
        closed.store(true, Ordering::Release);
        if c.life.kill() {
            c.release();
        }
        enterer.join().unwrap();
        c.check_end(true);
    });
}

struct Node {
    next: *mut Node,
}

impl Linked for Node {
    unsafe fn next(this: *mut Self) -> *mut Self {
        unsafe { (*this).next }
    }
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        unsafe { (*this).next = next }
    }
}

struct ModelSlab {
    thread_free: AtomicU64,
    used: AtomicU32,
}

unsafe impl Send for ModelSlab {}
unsafe impl Sync for ModelSlab {}

/// A remote free of the slab's last object races with the owner, which frees its own object
/// locally and takes remote frees: the owner may release the slab only when every object is back,
/// and then no pusher is in flight.
#[test]
fn remote_free_of_last_object_vs_owner_release() {
    loom::model(|| {
        let slab = Arc::new(ModelSlab {
            thread_free: AtomicU64::new(0),
            used: AtomicU32::new(2),
        });
        let node = Box::into_raw(Box::new(Node {
            next: core::ptr::null_mut(),
        })) as usize;
        let pusher = {
            let s = slab.clone();
            thread::spawn(move || unsafe {
                remote_push(&s.thread_free, node as *mut Node);
            })
        };
        // The owner frees its own object, then takes remote frees until the slab is empty.
        slab.used.store(1, Ordering::Relaxed);
        loop {
            let (_first, n) = unsafe { remote_take::<Node>(&slab.thread_free) };
            let used = slab.used.load(Ordering::Relaxed) - n;
            slab.used.store(used, Ordering::Relaxed);
            if used == 0 {
                assert_eq!(
                    remote_pending(&slab.thread_free),
                    0,
                    "released while a pusher was in flight"
                );
                break;
            }
            thread::yield_now();
        }
        pusher.join().unwrap();
        unsafe { drop(Box::from_raw(node as *mut Node)) };
    });
}

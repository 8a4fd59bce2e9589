//! Loom models of the scope protocol: each model calls the production functions of
//! `src/objects/protocol.rs` (the ones `cache::lock_cache`, `scope::close_node`,
//! `free::release_slab`, `free::free_slow`, `large::free_large`, `abandon::abandon_table`,
//! `abandon::sweep_abandoned` and `refill::new_slab` call), over model caches and slabs that embed
//! the real `PercpuRef`, `RawLock` and `sync` atomics. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release --test loom_scope
//! ```
//!
//! What the models check, in every interleaving their preemption bound allows:
//! - no thread touches a released cache, and a cache is released exactly once when dying and
//!   unreferenced (never when live);
//! - an uncharge lands on a scope that is alive, and the root's charge ends at zero;
//! - no object is lost or taken twice: when a slab is released, its free list holds each of its
//!   objects exactly once, so no remote pusher still held it;
//! - the plain data guarded by the cache lock or owned by a slab's owner (model `UnsafeCell`s:
//!   `Cache::scope`, the abandoned list, the free list) is never touched by two threads at once.
//!
//! Run times (2 shared cores, release build, `finished in` of the test binary): the whole file
//! 0.2 s. `lookup_vs_close` and `last_free_vs_close_and_reparent` explore every interleaving (no
//! preemption bound); the two slab models, three threads each with spin-lock contention, run with
//! a preemption bound of 2 (a bound of 3 took over 5 minutes for `sweep_vs_remote_free`). Mutating
//! the protocol fails them: `free_not_owned` without its re-check under the cache lock is a
//! concurrent write of the free list (`abandon_vs_remote_free_vs_adopt`); `lock_live_cache`
//! unlocking the node before locking the cache reaches a released cache's lock
//! (`lookup_vs_close`, "exceeded maximum number of branches": see `release_cache`); reading a
//! moving stub's cache before its owner word, or without the tree lock while another thread
//! owns the stub, is a causality violation on the stub's cache (`stub_move_vs_shared_free`).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::model::Builder;
use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
use loom::sync::Arc;
use loom::thread;
use scopealloc::accounting::percpu_ref::PercpuRef;
use scopealloc::objects::protocol::{
    self, Counted, Moved, NotOwnedFree, SlabWords, SlotLookup, Swept, OWNER_ABANDONED,
};
use scopealloc::sync::remote::{remote_pending, Linked};
use scopealloc::sync::{AtomicPtr, AtomicU32, AtomicU64, Ordering, RawLock};
use std::ptr::null_mut;

const SEQ: Ordering = Ordering::SeqCst;

/// Runs `f` in every interleaving with at most `bound` preemptions (`None`: all of them).
fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = Builder::new();
    b.preemption_bound = bound;
    // The spin locks' contended loops (load, yield) make long paths.
    b.max_branches = 100_000;
    b.check(f);
}

// ---------------------------------------------------------------------------------------------
// Model caches and scopes.

/// A cache: the real `PercpuRef`, plus what production keeps under its lock.
struct Cache {
    refs: PercpuRef,
    /// `Cache::scope`: the index of the scope it charges (under the cache lock).
    target: UnsafeCell<usize>,
    /// The abandoned list, of one slab at most (under the cache lock).
    abandoned: UnsafeCell<bool>,
    released: AtomicBool,
    releases: AtomicUsize,
}

impl Counted for Cache {
    fn refs(&self) -> &PercpuRef {
        &self.refs
    }
}

fn new_cache(target: usize, refs: usize) -> *mut Cache {
    let c = Box::into_raw(Box::new(Cache {
        refs: PercpuRef::new(),
        target: UnsafeCell::new(target),
        abandoned: UnsafeCell::new(false),
        released: AtomicBool::new(false),
        releases: AtomicUsize::new(0),
    }));
    for _ in 0..refs {
        // SAFETY: c is ours; lock, take a reference, unlock.
        unsafe {
            (*c).refs.lock();
            assert!((*c).refs.tryget_locked());
            (*c).refs.unlock();
        }
    }
    c
}

/// Fails the model if `c` was released.
fn touch(c: *mut Cache) {
    // SAFETY: model caches are freed only at the end of the model; `released` is the check.
    assert!(
        !unsafe { &*c }.released.load(SEQ),
        "a thread touched a released cache"
    );
}

/// Marks `c` released (the model's `release_cache`), failing on a second release. The lock of a
/// released cache is taken for ever, as reused memory would be anything: a thread that locks it
/// after its release (inside a protocol function, where `touch` cannot look) spins until the
/// model fails.
fn release_cache(c: *mut Cache) {
    touch(c);
    // SAFETY: as in `touch`.
    let c = unsafe { &*c };
    c.refs.lock();
    c.released.store(true, SEQ);
    c.releases.fetch_add(1, SEQ);
}

fn releases(c: *mut Cache) -> usize {
    // SAFETY: as in `touch`.
    unsafe { &*c }.releases.load(SEQ)
}

/// A scope node: its references, its hierarchical charge, its parent.
struct Scope {
    refs: AtomicUsize,
    charged: AtomicI64,
    parent: Option<usize>,
    released: AtomicBool,
}

fn scope(refs: usize, charged: i64, parent: Option<usize>) -> Scope {
    Scope {
        refs: AtomicUsize::new(refs),
        charged: AtomicI64::new(charged),
        parent,
        released: AtomicBool::new(false),
    }
}

fn node_get(scopes: &[Scope], i: usize) {
    assert!(
        !scopes[i].released.load(SEQ),
        "node_get on a released scope"
    );
    scopes[i].refs.fetch_add(1, SEQ);
}

fn node_put(scopes: &[Scope], mut i: usize) {
    loop {
        assert!(
            !scopes[i].released.load(SEQ),
            "node_put on a released scope"
        );
        if scopes[i].refs.fetch_sub(1, SEQ) != 1 {
            return;
        }
        scopes[i].released.store(true, SEQ);
        match scopes[i].parent {
            Some(p) => i = p,
            None => return,
        }
    }
}

fn uncharge(scopes: &[Scope], mut i: usize, n: i64) {
    assert!(!scopes[i].released.load(SEQ), "uncharged a released scope");
    loop {
        scopes[i].charged.fetch_sub(n, SEQ);
        match scopes[i].parent {
            Some(p) => i = p,
            None => return,
        }
    }
}

/// A node of the tree with its cache slot, the tree lock, and the scopes the cache may charge.
struct Tree {
    tree_lock: RawLock,
    node_lock: RawLock,
    slots: [AtomicPtr<Cache>; 1],
    cache: *mut Cache,
    scopes: Vec<Scope>,
}

// SAFETY: the raw cache pointer is shared the way production shares caches: through the
// protocol under test; the model frees it only after every thread joined.
unsafe impl Send for Tree {}
// SAFETY: as above.
unsafe impl Sync for Tree {}

impl Drop for Tree {
    fn drop(&mut self) {
        // SAFETY: every thread has joined; the cache came from Box::into_raw.
        drop(unsafe { Box::from_raw(self.cache) });
    }
}

/// The release of a dying cache (`cache::release_cache_tree_locked`, tree lock held): drops its
/// reference on its target.
fn release_cache_tree_locked(w: &Tree, c: *mut Cache) {
    release_cache(c);
    // SAFETY: the tree lock orders this read after every retarget (all under it).
    let t = unsafe { &*c }.target.with(|t| unsafe { *t });
    node_put(&w.scopes, t);
}

// ---------------------------------------------------------------------------------------------
// Race (a): lookup vs close.

/// A thread looks a cache up and takes a new slab from it (`cache::lock_cache`, then
/// `tryget_locked` as in `refill::new_slab`), allocates, and frees the slab (`release_slab`'s
/// `drop_ref`), while the scope closes (`scope::close_node`'s `close_slots`). Either the
/// allocation wins (its reference keeps the cache alive, its put releases it) or the close does
/// (the slot is empty or the cache dying: the thread re-targets); the cache is released once.
#[test]
fn lookup_vs_close() {
    model(None, || {
        let c = new_cache(0, 0);
        let w = Arc::new(Tree {
            tree_lock: RawLock::new(),
            node_lock: RawLock::new(),
            slots: [AtomicPtr::new(c)],
            cache: c,
            scopes: Vec::new(),
        });
        let allocator = {
            let w = w.clone();
            thread::spawn(move || {
                // SAFETY: the slot is guarded by the node lock and emptied only by close_slots.
                if let SlotLookup::Locked(c) =
                    unsafe { protocol::lock_live_cache(&w.node_lock, &w.slots[0]) }
                {
                    touch(c);
                    // SAFETY: lock_live_cache returned with c's lock held.
                    let got = unsafe { (*c).refs.tryget_locked() };
                    // SAFETY: as above.
                    unsafe { (*c).refs.unlock() };
                    assert!(got, "lock_live_cache returns live caches only");
                    touch(c); // allocates from the new slab
                              // SAFETY: we hold the slab's reference on c.
                    let last = unsafe {
                        protocol::drop_ref(c, |c| {
                            touch(c);
                            (*c).target.with(|t| assert!(*t <= 1));
                        })
                    };
                    if last {
                        release_cache(c);
                    }
                }
            })
        };
        // SAFETY: this thread is the closer.
        unsafe {
            protocol::close_slots(
                &w.node_lock,
                &w.slots,
                |c| (*c).target.with_mut(|t| *t = 1),
                |c, release_now| {
                    if release_now {
                        release_cache(c);
                    }
                },
            )
        };
        allocator.join().unwrap();
        assert_eq!(releases(c), 1, "a dying cache is released exactly once");
    });
}

// ---------------------------------------------------------------------------------------------
// Race (b): the free of a cache's last object vs close and reparent.

const X: usize = 0;
const P: usize = 1;
const R: usize = 2;

/// Scope X (child of P, child of the root R) holds a cache whose last slab (or large object) is
/// freed (`release_slab` / `free_large`: `drop_ref`, uncharging the cache's target under its
/// lock) while X closes and then P closes too (one tree-lock hold, as `close(P)`: `close_slots`
/// on X moves the cache to P, the `reparented` loop's `retarget` moves it to R). The uncharge
/// always lands on a live scope, the cache is released once, its scope references are dropped
/// exactly: at the end X and P are released and the root is back to its own reference and zero
/// charge.
#[test]
fn last_free_vs_close_and_reparent() {
    model(None, || {
        let c = new_cache(X, 1);
        let w = Arc::new(Tree {
            tree_lock: RawLock::new(),
            node_lock: RawLock::new(),
            slots: [AtomicPtr::new(c)],
            cache: c,
            // X: the cache's target reference; P: X's; R: its own and P's. One object charged.
            scopes: vec![
                scope(1, 1, Some(P)),
                scope(1, 1, Some(R)),
                scope(2, 1, None),
            ],
        });
        let freer = {
            let w = w.clone();
            thread::spawn(move || {
                // SAFETY: the slab holds a reference on c, given up here.
                let last = unsafe {
                    protocol::drop_ref(c, |c| {
                        touch(c);
                        let t = (*c).target.with(|t| *t);
                        uncharge(&w.scopes, t, 1);
                    })
                };
                if last {
                    w.tree_lock.lock();
                    release_cache_tree_locked(&w, c);
                    w.tree_lock.unlock();
                }
                // Nothing touches `c` after its put.
            })
        };
        w.tree_lock.lock();
        let mut released = false;
        // SAFETY: this thread closes X, under the tree lock.
        unsafe {
            protocol::close_slots(
                &w.node_lock,
                &w.slots,
                |c| {
                    node_get(&w.scopes, P);
                    (*c).target.with_mut(|t| *t = P);
                },
                |c, release_now| {
                    node_put(&w.scopes, X);
                    if release_now {
                        release_cache_tree_locked(&w, c);
                        released = true;
                    }
                },
            )
        };
        if !released {
            // P closes: the cache, on P's reparented list, moves to R.
            node_get(&w.scopes, R);
            // SAFETY: c is not released: only a release under the tree lock, which we hold,
            // could.
            unsafe { protocol::retarget(c, |c| (*c).target.with_mut(|t| *t = R)) };
            node_put(&w.scopes, P);
        }
        w.tree_lock.unlock();
        freer.join().unwrap();
        assert_eq!(releases(c), 1, "a dying cache is released exactly once");
        assert!(w.scopes[X].released.load(SEQ) && w.scopes[P].released.load(SEQ));
        assert_eq!(
            w.scopes[R].refs.load(SEQ),
            1,
            "scope references dropped exactly"
        );
        assert_eq!(
            w.scopes[R].charged.load(SEQ),
            0,
            "the uncharge reached the root"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Model slabs: abandon, adopt, remote free, sweep.

struct Node {
    next: *mut Node,
}

impl Linked for Node {
    unsafe fn next(this: *mut Self) -> *mut Self {
        // SAFETY: `this` is a valid node (the trait's contract).
        unsafe { (*this).next }
    }
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        // SAFETY: `this` is a valid node owned by the caller (the trait's contract).
        unsafe { (*this).next = next }
    }
}

/// A slab of two objects: the real owner word, remote-free list and `used`, and a free list
/// owned by the slab's owner (or the cache lock while abandoned).
struct Slab {
    owner: AtomicUsize,
    thread_free: AtomicU64,
    used: AtomicU32,
    free: UnsafeCell<*mut Node>,
    released: AtomicBool,
}

impl SlabWords for Slab {
    type Node = Node;
    fn owner(&self) -> &AtomicUsize {
        &self.owner
    }
    fn thread_free(&self) -> &AtomicU64 {
        &self.thread_free
    }
    fn used(&self) -> &AtomicU32 {
        &self.used
    }
    unsafe fn take_remote(this: *mut Self) -> u32 {
        // SAFETY: the caller owns the slab (the trait's contract); `free` is a loom cell, which
        // checks that claim.
        unsafe {
            (*this).free.with_mut(|f| {
                protocol::take_remote_into(&(*this).thread_free, &(*this).used, &mut *f)
            })
        }
    }
}

/// The owner's free of an object (the local branch of `free::free`, or
/// `free::free_abandoned_locked` under the cache lock): onto the free list, `used -= 1`.
///
/// # Safety
/// The caller owns the slab and `n` is one of its objects in use.
unsafe fn free_local(s: &Slab, n: *mut Node) {
    // SAFETY: the caller owns the slab; `free` is a loom cell, which checks that claim.
    s.free.with_mut(|f| unsafe {
        (*n).next = *f;
        *f = n;
    });
    s.used
        .store(s.used.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
}

const CAPACITY: usize = 2;
const HEAP_T: usize = 0x100;
const HEAP_A: usize = 0x200;

/// One cache, one slab of it, its two objects.
struct SlabWorld {
    cache: *mut Cache,
    slab: *mut Slab,
    nodes: [*mut Node; CAPACITY],
}

// SAFETY: shared through the protocol under test; freed only after every thread joined.
unsafe impl Send for SlabWorld {}
// SAFETY: as above.
unsafe impl Sync for SlabWorld {}

impl SlabWorld {
    /// A slab owned by heap T, with object 0 handed out and object 1 on its free list.
    fn new() -> Arc<Self> {
        Arc::new(Self::build())
    }

    fn build() -> Self {
        let nodes = [(); CAPACITY].map(|_| Box::into_raw(Box::new(Node { next: null_mut() })));
        let slab = Box::into_raw(Box::new(Slab {
            owner: AtomicUsize::new(HEAP_T),
            thread_free: AtomicU64::new(0),
            used: AtomicU32::new(CAPACITY as u32),
            free: UnsafeCell::new(null_mut()),
            released: AtomicBool::new(false),
        }));
        // SAFETY: the slab is ours (T's) until the threads start.
        unsafe { free_local(&*slab, nodes[1]) };
        SlabWorld {
            cache: new_cache(0, 1),
            slab,
            nodes,
        }
    }

    fn s(&self) -> &Slab {
        // SAFETY: freed only in drop.
        unsafe { &*self.slab }
    }

    /// The release of the empty slab (`free_slab_span`): every object is back on its free list,
    /// once, and no remote free is pending (no pusher still holds the slab).
    fn release_slab(&self) {
        let s = self.s();
        assert!(!s.released.load(SEQ), "a slab released twice");
        assert_eq!(s.used.load(SEQ), 0);
        assert_eq!(remote_pending(&s.thread_free), 0, "released under a pusher");
        let mut seen = Vec::new();
        // SAFETY: the releaser owns the slab; the nodes are live.
        s.free.with(|f| unsafe {
            let mut n = *f;
            while !n.is_null() {
                assert!(!seen.contains(&n), "an object on the free list twice");
                seen.push(n);
                n = (*n).next;
            }
        });
        assert_eq!(seen.len(), CAPACITY, "an object was lost");
        s.released.store(true, SEQ);
    }

    /// `abandon::sweep_abandoned_locked`: the cache lock is held, the slab abandoned.
    fn sweep_locked(&self) {
        let c = self.cache;
        // SAFETY: the cache lock is held and the slab is abandoned in the cache.
        let swept = unsafe {
            protocol::sweep_locked(
                c,
                self.slab,
                |_n| touch(c),
                || (*c).abandoned.with_mut(|a| *a = false),
            )
        };
        if let Swept::Emptied { last } = swept {
            self.release_slab();
            assert!(!last, "a live cache is never released");
        }
    }

    /// `abandon::abandon_table` for this slab (thread T exits).
    fn abandon(&self) {
        let c = self.cache;
        // SAFETY: T owns the slab; the cache is alive (the slab's reference).
        unsafe {
            (*c).refs.lock();
            (*c).abandoned.with_mut(|a| *a = true);
            protocol::abandon_locked(self.slab);
            if self.s().used.load(Ordering::Relaxed) == 0 {
                self.sweep_locked();
            } else {
                (*c).refs.unlock();
            }
        }
    }

    /// `free::free_slow` of object 0 by a thread that does not own the slab.
    fn free_remote(&self) {
        // SAFETY: object 0 is live and freed once, here.
        match unsafe { protocol::free_not_owned(self.slab, || self.cache, self.nodes[0]) } {
            NotOwnedFree::Pushed => {}
            NotOwnedFree::AbandonedLocked => {
                // SAFETY: the cache lock makes us the owner of the abandoned slab.
                unsafe { free_local(self.s(), self.nodes[0]) };
                self.sweep_locked();
            }
        }
    }

    /// `abandon::sweep_abandoned` for this cache: one pass.
    fn sweep(&self) {
        let c = self.cache;
        // SAFETY: the cache is alive (the slab's reference, or it is live).
        unsafe {
            (*c).refs.lock();
            let abandoned = (*c).abandoned.with(|a| *a);
            if abandoned && protocol::sweep_candidate(self.s()) {
                self.sweep_locked();
            } else {
                (*c).refs.unlock();
            }
        }
    }

    /// The owner's slow path (`refill::ready` then `free_local_tail`): takes remote frees, and
    /// releases the slab if that emptied it (`release_slab`'s `drop_ref`).
    fn owner_takes_remote(&self) {
        // SAFETY: the calling thread owns the slab.
        unsafe { Slab::take_remote(self.slab) };
        if self.s().used.load(Ordering::Relaxed) == 0 {
            // SAFETY: the slab holds a reference on the cache, given up here.
            let last = unsafe { protocol::drop_ref(self.cache, touch) };
            assert!(!last, "a live cache is never released");
            self.release_slab();
        }
    }

    /// After every thread joined: the last owner (adopter or sweep) finishes; the slab must end
    /// released, and the cache with no reference.
    fn finish(&self) {
        if !self.s().released.load(SEQ) {
            if self.s().owner.load(SEQ) == OWNER_ABANDONED {
                self.sweep();
            } else {
                self.owner_takes_remote();
            }
        }
        assert!(
            self.s().released.load(SEQ),
            "an empty slab was never released"
        );
        // SAFETY: every thread joined; lock, read, unlock.
        unsafe {
            (*self.cache).refs.lock();
            assert_eq!(
                (*self.cache).refs.count_locked(),
                0,
                "the slab's reference was put once"
            );
            (*self.cache).refs.unlock();
        }
    }
}

impl Drop for SlabWorld {
    fn drop(&mut self) {
        // SAFETY: every thread joined; all came from Box::into_raw.
        unsafe {
            for n in self.nodes {
                drop(Box::from_raw(n));
            }
            drop(Box::from_raw(self.slab));
            drop(Box::from_raw(self.cache));
        }
    }
}

/// Thread T exits and abandons its slab (`abandon_locked`) while F frees T's last object from
/// another thread (`free_not_owned`: pushed if it read T as the owner, freed under the cache lock
/// if it read the slab abandoned, pushed again if adopted meanwhile) and A adopts the slab
/// (`adopt_locked`) and takes its remote frees. Every object comes back once, the slab is
/// released once, with no pusher in flight, and the free list is only touched by its owner of
/// the moment.
#[test]
fn abandon_vs_remote_free_vs_adopt() {
    model(Some(2), || {
        let w = SlabWorld::new();
        let t = {
            let w = w.clone();
            thread::spawn(move || w.abandon())
        };
        let f = {
            let w = w.clone();
            thread::spawn(move || w.free_remote())
        };
        let c = w.cache;
        let mut adopted = false;
        // A: `refill::new_slab`'s adoption, under the cache lock.
        // SAFETY: the cache is live and alive.
        unsafe {
            (*c).refs.lock();
            if (*c).abandoned.with(|a| *a) {
                (*c).abandoned.with_mut(|a| *a = false);
                protocol::adopt_locked(w.slab, HEAP_A);
                adopted = true;
            }
            (*c).refs.unlock();
        }
        if adopted {
            w.owner_takes_remote();
        }
        t.join().unwrap();
        f.join().unwrap();
        w.finish();
    });
}

/// The sweep's candidate test (`sweep_candidate`: `pending > 0 && pending >= used`) and
/// `sweep_locked` race a remote free of the slab's last object, pushed by a thread that read
/// the owner before T abandoned the slab. The slab is released once, when every object is back,
/// never under the pusher.
#[test]
fn sweep_vs_remote_free() {
    model(Some(2), || {
        let w = SlabWorld::new();
        let t = {
            let w = w.clone();
            thread::spawn(move || w.abandon())
        };
        let f = {
            let w = w.clone();
            thread::spawn(move || w.free_remote())
        };
        w.sweep();
        t.join().unwrap();
        f.join().unwrap();
        w.finish();
    });
}

// ---------------------------------------------------------------------------------------------
// Model stubs: an object of a shared slab, charged through a stub (`frontend::shared`).

const HEAP_F: usize = 0x300;
const HEAP_M: usize = 0x400;

/// A stub (`slab::KIND_STUB`: the model `Slab`, with no objects of its own) counting object 0,
/// which lives in shared slab `phys` beside object 1 (free). Both owned by heap T; each has its
/// cache (the stub's: the scope's; the slab's: `scope::shared()`'s).
struct StubWorld {
    stub_cache: *mut Cache,
    stub: *mut Slab,
    slab: SlabWorld,
}

// SAFETY: as for SlabWorld.
unsafe impl Send for StubWorld {}
// SAFETY: as above.
unsafe impl Sync for StubWorld {}

impl StubWorld {
    fn new() -> Arc<Self> {
        let slab = SlabWorld::build();
        let stub = Box::into_raw(Box::new(Slab {
            owner: AtomicUsize::new(HEAP_T),
            thread_free: AtomicU64::new(0),
            used: AtomicU32::new(1),
            free: UnsafeCell::new(null_mut()),
            released: AtomicBool::new(false),
        }));
        Arc::new(StubWorld {
            stub_cache: new_cache(0, 1),
            stub,
            slab,
        })
    }

    fn stub(&self) -> &Slab {
        // SAFETY: freed only in drop.
        unsafe { &*self.stub }
    }

    /// `shared::free_physically` of `n` (uncharged already) by heap `me`.
    fn free_physically(&self, me: usize, n: *mut Node) {
        let w = &self.slab;
        if w.s().owner.load(Ordering::Relaxed) == me {
            // SAFETY: `me` owns the shared slab.
            unsafe { free_local(w.s(), n) };
            return;
        }
        // SAFETY: n is counted in the slab's `used`, freed once, here.
        match unsafe { protocol::free_not_owned(w.slab, || w.cache, n) } {
            NotOwnedFree::Pushed => {}
            NotOwnedFree::AbandonedLocked => {
                // SAFETY: the cache lock makes us the abandoned slab's owner.
                unsafe { free_local(w.s(), n) };
                w.sweep_locked();
            }
        }
    }

    /// Takes the nodes off the stub's free list (they came from its remote list).
    ///
    /// # Safety
    /// The caller owns the stub (its thread, or the stub's cache lock while abandoned).
    unsafe fn detach(&self) -> Vec<*mut Node> {
        let mut v = Vec::new();
        // SAFETY: the caller owns the stub (the contract); the cell checks it.
        self.stub().free.with_mut(|f| unsafe {
            let mut n = *f;
            while !n.is_null() {
                v.push(n);
                n = (*n).next;
            }
            *f = null_mut();
        });
        v
    }

    /// `shared::sweep_stub_locked`: stub cache locked, stub abandoned. Returns the nodes taken,
    /// to be freed physically after the unlock.
    fn sweep_stub_locked(&self) -> Vec<*mut Node> {
        let c = self.stub_cache;
        let mut taken = Vec::new();
        // SAFETY: the lock is held and the stub abandoned in c: we own it.
        let swept = unsafe {
            protocol::sweep_locked(
                c,
                self.stub,
                |_n| {
                    touch(c);
                    taken = self.detach();
                },
                || (*c).abandoned.with_mut(|a| *a = false),
            )
        };
        if let Swept::Emptied { last } = swept {
            let s = self.stub();
            assert!(!s.released.load(SEQ), "a stub released twice");
            assert_eq!(s.used.load(SEQ), 0);
            assert_eq!(
                remote_pending(&s.thread_free),
                0,
                "stub released under a pusher"
            );
            s.released.store(true, SEQ);
            assert!(!last, "a live cache is never released");
        }
        taken
    }

    /// Thread T exits: `shared::abandon_stubs`, then `abandon_table` of its shared table.
    fn exit_t(&self) {
        let c = self.stub_cache;
        // SAFETY: T owns the stub; its cache is alive (the stub's reference).
        let taken = unsafe {
            (*c).refs.lock();
            (*c).abandoned.with_mut(|a| *a = true);
            protocol::abandon_locked(self.stub);
            let taken = self.detach();
            if self.stub().used.load(Ordering::Relaxed) == 0 {
                let mut more = self.sweep_stub_locked();
                more.extend(&taken);
                more
            } else {
                (*c).refs.unlock();
                taken
            }
        };
        for n in taken {
            self.free_physically(HEAP_T, n);
        }
        self.slab.abandon();
    }

    /// `shared::free_shared` of object 0 by heap F.
    fn free_f(&self) {
        let n = self.slab.nodes[0];
        // SAFETY: object 0 is live and freed once, here.
        match unsafe { protocol::free_not_owned(self.stub, || self.stub_cache, n) } {
            NotOwnedFree::Pushed => {}
            NotOwnedFree::AbandonedLocked => {
                let s = self.stub();
                s.used
                    .store(s.used.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                for m in self.sweep_stub_locked() {
                    self.free_physically(HEAP_F, m);
                }
                self.free_physically(HEAP_F, n);
            }
        }
    }

    /// `abandon::sweep_cache` of the stub's cache, by heap `me`.
    fn sweep_stub(&self, me: usize) {
        let c = self.stub_cache;
        // SAFETY: the cache is alive.
        let taken = unsafe {
            (*c).refs.lock();
            let abandoned = (*c).abandoned.with(|a| *a);
            if abandoned && protocol::sweep_candidate(self.stub()) {
                self.sweep_stub_locked()
            } else {
                (*c).refs.unlock();
                Vec::new()
            }
        };
        for n in taken {
            self.free_physically(me, n);
        }
    }

    fn finish(&self) {
        if !self.stub().released.load(SEQ) {
            self.sweep_stub(HEAP_M);
        }
        assert!(
            self.stub().released.load(SEQ),
            "an empty stub was never released"
        );
        self.slab.finish();
    }
}

impl Drop for StubWorld {
    fn drop(&mut self) {
        // SAFETY: every thread joined; both came from Box::into_raw.
        unsafe {
            drop(Box::from_raw(self.stub));
            drop(Box::from_raw(self.stub_cache));
        }
    }
}

/// The seed's race (b) for shared slabs: thread T exits, abandoning its stub and then its
/// shared slab, while F frees T's object (the logical half on the stub: pushed if F read T as
/// its owner, else under the stub's cache lock; then the physical half on the slab) and the
/// sweep runs. The stub is released once, with no pusher in flight and nothing counted; the
/// object comes back to its slab exactly once, and the slab is released once.
#[test]
fn stub_abandon_vs_shared_free_vs_sweep() {
    model(Some(2), || {
        let w = StubWorld::new();
        let t = {
            let w = w.clone();
            thread::spawn(move || w.exit_t())
        };
        let f = {
            let w = w.clone();
            thread::spawn(move || w.free_f())
        };
        w.sweep_stub(HEAP_M);
        t.join().unwrap();
        f.join().unwrap();
        w.finish();
    });
}

// ---------------------------------------------------------------------------------------------
// A stub moved to its scope's ancestor (`shared::abandon_stubs`, `shared::move_to_ancestor`).

/// A stub of heap T counting object `node`, attached to dying cache `from` (its closed scope's
/// shared cache, whose only reference is the stub's), which T's table retirement moves to live
/// cache `to` (the ancestor's shared cache) and abandons there. `cache` is the stub's
/// `Slab::cache`: a loom cell, so that a read not ordered after T's write fails the model.
struct MoveWorld {
    from: *mut Cache,
    to: *mut Cache,
    stub: *mut Slab,
    cache: UnsafeCell<*mut Cache>,
    node: *mut Node,
    /// Times `node` came back (physically freed): once, at the end.
    returned: AtomicUsize,
    /// The tree lock: T's move holds it, and so does a reader of a stub another thread owns.
    tree: loom::sync::Mutex<()>,
}

// SAFETY: shared through the protocol under test; freed only after every thread joined.
unsafe impl Send for MoveWorld {}
// SAFETY: as above.
unsafe impl Sync for MoveWorld {}

impl MoveWorld {
    fn new() -> Arc<Self> {
        let from = new_cache(0, 1);
        // SAFETY: ours until the threads start: the close killed it; the stub holds its reference.
        unsafe {
            (*from).refs.lock();
            assert!(!(*from).refs.kill_locked());
            (*from).refs.unlock();
        }
        Arc::new(MoveWorld {
            from,
            to: new_cache(0, 1),
            stub: Box::into_raw(Box::new(Slab {
                owner: AtomicUsize::new(HEAP_T),
                thread_free: AtomicU64::new(0),
                used: AtomicU32::new(1),
                free: UnsafeCell::new(null_mut()),
                released: AtomicBool::new(false),
            })),
            cache: UnsafeCell::new(from),
            node: Box::into_raw(Box::new(Node { next: null_mut() })),
            returned: AtomicUsize::new(0),
            tree: loom::sync::Mutex::new(()),
        })
    }

    fn stub(&self) -> &Slab {
        // SAFETY: freed only in drop.
        unsafe { &*self.stub }
    }

    /// The stub's cache as its owner or a reader after the Acquire of `ABANDONED` sees it.
    fn stub_cache(&self) -> *mut Cache {
        // SAFETY: the cell checks that no write races with this read.
        self.cache.with(|c| unsafe { *c })
    }

    /// The physical free of the nodes taken off the stub (the model's `free_blocks_physically`).
    ///
    /// # Safety
    /// The caller owns the stub.
    unsafe fn detach_and_return(&self) {
        // SAFETY: the caller owns the stub (the contract); the cell checks it.
        self.stub().free.with_mut(|f| unsafe {
            let mut n = *f;
            while !n.is_null() {
                assert_eq!(n, self.node);
                self.returned.fetch_add(1, SEQ);
                n = (*n).next;
            }
            *f = null_mut();
        });
    }

    /// `shared::sweep_stub_locked` on cache `c` (locked; the stub abandoned there).
    fn sweep_stub_locked(&self, c: *mut Cache) {
        // SAFETY: the lock is held and the stub abandoned in c: we own it.
        let swept = unsafe {
            protocol::sweep_locked(
                c,
                self.stub,
                |_n| {
                    touch(c);
                    self.detach_and_return();
                },
                || (*c).abandoned.with_mut(|a| *a = false),
            )
        };
        if let Swept::Emptied { last } = swept {
            let s = self.stub();
            assert!(!s.released.load(SEQ), "a stub released twice");
            assert_eq!(
                remote_pending(&s.thread_free),
                0,
                "stub released under a pusher"
            );
            s.released.store(true, SEQ);
            assert!(!last, "the live cache is never released");
        }
    }

    /// T: `abandon_stubs` of its retired table, the stub moved first (`move_to_ancestor`).
    fn retire_t(&self) {
        let tree = self.tree.lock().unwrap();
        let (from, to) = (self.from, self.to);
        // SAFETY: T owns the stub, which holds from's reference; `to` is alive (its own).
        let moved = unsafe {
            (*to).refs.lock();
            protocol::move_owned(from, to, |c| touch(c), |c| self.cache.with_mut(|x| *x = c))
        };
        let Moved::Done { from_last } = moved else {
            panic!("the live cache refused the stub");
        };
        assert!(from_last, "the stub held the dying cache's last reference");
        // SAFETY: `to` is locked (move_owned) and T still owns the stub.
        unsafe {
            (*to).abandoned.with_mut(|a| *a = true);
            protocol::abandon_locked(self.stub);
            // Taken remote frees are uncharged under the lock (in production) and freed after.
            self.detach_and_return();
            if self.stub().used.load(Ordering::Relaxed) == 0 {
                self.sweep_stub_locked(to);
            } else {
                (*to).refs.unlock();
            }
        }
        release_cache(from);
        drop(tree);
    }

    /// F: `shared::uncharge_from_stub` of `node` by another thread.
    fn free_f(&self) {
        let mut c = null_mut();
        // SAFETY: node is live and freed once, here.
        let how = unsafe {
            protocol::free_not_owned(
                self.stub,
                || {
                    c = self.stub_cache();
                    c
                },
                self.node,
            )
        };
        if let NotOwnedFree::AbandonedLocked = how {
            touch(c);
            assert_eq!(
                c, self.to,
                "a free of an abandoned stub reached its old cache"
            );
            let s = self.stub();
            s.used
                .store(s.used.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
            self.returned.fetch_add(1, SEQ);
            self.sweep_stub_locked(c);
        }
    }

    /// R: `shared::charged_scope` by a third thread (a realloc of the object): reads the stub's
    /// cache as soon as it sees the stub abandoned, else under the tree lock; locks it.
    fn read_r(&self) {
        let read = |c: *mut Cache| {
            touch(c);
            // SAFETY: the object is live (R does not free it in this model), so its stub holds
            // a reference on the cache it reads.
            unsafe {
                (*c).refs.lock();
                (*c).target.with(|_| ());
                (*c).refs.unlock();
            }
        };
        if self.stub().owner.load(Ordering::Acquire) == OWNER_ABANDONED {
            read(self.stub_cache());
        } else {
            let tree = self.tree.lock().unwrap();
            read(self.stub_cache());
            drop(tree);
        }
    }

    fn finish(&self) {
        if !self.stub().released.load(SEQ) {
            // The free was pushed after the hand-over took nothing: the sweep of `to`.
            let to = self.to;
            // SAFETY: `to` is alive; its lock is held for sweep_candidate, the stub abandoned.
            unsafe {
                (*to).refs.lock();
                assert!(protocol::sweep_candidate(self.stub()));
            }
            self.sweep_stub_locked(to);
        }
        assert!(
            self.stub().released.load(SEQ),
            "an empty stub was never released"
        );
        assert_eq!(self.returned.load(SEQ), 1, "the object came back once");
        assert_eq!(releases(self.from), 1, "the dying cache was released once");
        assert_eq!(releases(self.to), 0);
    }
}

impl Drop for MoveWorld {
    fn drop(&mut self) {
        // SAFETY: every thread joined; all came from Box::into_raw.
        unsafe {
            drop(Box::from_raw(self.node));
            drop(Box::from_raw(self.stub));
            drop(Box::from_raw(self.from));
            drop(Box::from_raw(self.to));
        }
    }
}

/// The seed's race (b) when a stub moves: T retires the table of a closed scope and moves its
/// stub from the closed scope's dying cache (releasing it: the stub held its last reference) to
/// the ancestor's shared cache, abandoning it there, while F frees the stub's object and R reads
/// the object's cache (a realloc). F and R never read the stub's cache before T's write is
/// ordered before them, so neither reaches the released cache; the stub is released once and
/// the object comes back once. Reading the cache before the owner word (the order before
/// `free_not_owned` took a getter) fails the model: F's read races with T's write.
#[test]
fn stub_move_vs_shared_free() {
    model(Some(2), || {
        let w = MoveWorld::new();
        let t = {
            let w = w.clone();
            thread::spawn(move || w.retire_t())
        };
        let f = {
            let w = w.clone();
            thread::spawn(move || w.free_f())
        };
        w.read_r();
        t.join().unwrap();
        f.join().unwrap();
        w.finish();
    });
}

//! The scope protocol's concurrent steps, written once over the few fields they touch, so that
//! production calls them and the loom models in `tests/loom_scope.rs` check them.
//!
//! Everything here depends on `sync` and `accounting::percpu_ref` only and is compiled under
//! `cfg(loom)` too: the rest of the allocator touches mmap'ed pools, statics and TLS, and zeroed
//! mmap'ed memory is no valid loom atomic. A cache is any [`Counted`] type (`objects::cache::Cache`
//! in production), a slab any [`SlabWords`] type (`objects::slab::Slab`); the plain-data work a
//! step does under a lock (unlinking, uncharging, moving `Cache::scope`) is the caller's closure.
//!
//! | step | production caller | model |
//! |---|---|---|
//! | [`lock_live_cache`] | `cache::lock_cache` | `lookup_vs_close` |
//! | [`close_slots`], [`retarget`] | `scope::close_node` | `lookup_vs_close`, `last_free_vs_close_and_reparent` |
//! | [`drop_ref`] | `free::release_slab`, `large::free_large` | `lookup_vs_close`, `last_free_vs_close_and_reparent` |
//! | [`abandon_locked`], [`adopt_locked`] | `abandon::abandon_table`, `refill::new_slab` | `abandon_vs_remote_free_vs_adopt` |
//! | [`free_not_owned`] | `free::free_slow`, `shared::free_shared` | `abandon_vs_remote_free_vs_adopt`, `sweep_vs_remote_free`, `stub_abandon_vs_shared_free_vs_sweep`, `stub_move_vs_shared_free` |
//! | [`move_owned`] | `shared::abandon_stubs` | `stub_move_vs_shared_free` |
//! | [`sweep_candidate`], [`sweep_locked`] | `abandon::sweep_abandoned(_locked)`, `free::free_abandoned_locked` | `sweep_vs_remote_free`, `abandon_vs_remote_free_vs_adopt` |
//! | [`take_remote_into`] | `Slab::take_remote` | every slab model |
//!
//! ## Lookup vs close (race (a))
//! ```text
//! T1: lock_live_cache                  T2: close_slots
//! node.lock; c = slot
//! c.lock; node.unlock
//!                                      node.lock; c = slot.swap(null)
//!                                      c.lock ... waits
//! live: tryget (nrefs 1); c.unlock
//!                                      kill: dying, nrefs 1: keep; retarget; c.unlock
//! (allocates from its new slab)        node.unlock
//! drop_ref: nrefs 0, dying -> "last": T1 releases c, once
//! ```
//! Had T2 swapped first, T1 finds the slot empty (it re-targets to the ancestor); had T2 killed
//! between T1's node unlock and its dying check, T1 cannot: it holds `c`'s lock from before the
//! node unlock. The cache lock is taken under the node lock, the swap is done under it, so no
//! thread holds a pointer to a cache that a close could release.
//!
//! ## Last free vs close and reparent (race (b))
//! ```text
//! T1: drop_ref (release_slab / free_large)   T2: close_slots(X), then X's parent P closes
//! c.lock; uncharge c.scope (= X)
//!                                            c.lock ... waits
//! put: nrefs 1 -> 0, live: keep; c.unlock
//!                                            kill: dying, nrefs 0 -> "release now"
//!                                            c.scope = P (node_get P, node_put X); c.unlock
//!                                            T2 releases c; nothing reparents it any more
//! ```
//! Had T2 come first, T1 reads `c.scope` under the lock, so it uncharges P (or, after P's close
//! reparented `c`, P's parent), which `c` holds a reference on: never a released scope; its put
//! returns "last" and T1 releases. Nobody touches `c` after its put.
//!
//! ## Abandon vs remote free vs adopt (thread exit)
//! ```text
//! T (exits, owner)        F (frees o remotely)              A (adopts)
//!                         owner == T: not abandoned
//! c.lock
//! owner = ABANDONED (Rel)
//! take_remote: none yet
//! c.unlock                remote_push(o): pending 1
//!                                                           c.lock; pop s; owner = A (Rel)
//!                                                           c.unlock; take_remote: gets o
//! ```
//! An owner word read as a thread is only a hint: F's push lands on the list whoever owns the
//! slab by then, and every owner (T before its hand-over, the holder of the cache lock while the
//! slab is abandoned, A after adopting) takes the list, so each pushed object is taken once. A
//! word read as `ABANDONED` is checked again under the cache lock (the slab may have been
//! adopted meanwhile); only then does F free into the slab's free list itself, under the lock
//! that every change of owner takes. The Release stores publish the slab's free list and `used`
//! to the next owner, which reads them after the Acquire of the cache lock.
//!
//! ## Sweep vs remote free
//! ```text
//! sweeper (c locked)                           F (frees the last object o remotely)
//! pending = 0, used = 1: not a candidate
//!                                              remote_push(o): pending 1 (o still in used)
//! c.unlock
//! next sweep: pending 1 >= used 1: candidate
//! sweep_locked: take_remote (used 0): release the slab
//! ```
//! `pending` counts pushed objects, each still counted in `used` until taken, so `pending ≤ used`;
//! for an abandoned slab `used` changes only under the cache lock, so `pending ≥ used` (with
//! `pending > 0`) means every object is on the remote list: taking it empties the slab. A pusher
//! in flight still counts in `used` (its CAS has not landed), so the slab cannot be found empty
//! under it, and after its CAS it touches nothing.
//!
//! ## A stub moved to its scope's ancestor vs a free of its object (race (b), shared slabs)
//! ```text
//! T (owner; its table's scope X closed)     F (frees o, counted in the stub)
//! tree lock; P = shared cache of C.scope
//! move_owned(C -> P):
//!   P.lock; tryget; P.unlock                owner == T: remote_push(o)  (touches no cache)
//!   drop_ref(C): unlink; put: last
//!   P.lock; stub.cache = P; link
//! push_abandoned; owner = ABANDONED (Rel)
//! take_remote: o (uncharged under P's lock)
//! P.unlock; release C; tree unlock
//!                                           -- or, had F come after the Release --
//!                                           owner == ABANDONED (Acq): c = stub.cache (= P)
//!                                           P.lock; re-check; used -= 1; sweep
//! ```
//! `stub.cache` is written only by the owner, before its Release of `ABANDONED`, and read by
//! another thread only after the Acquire of it ([`free_not_owned`]), or under the tree lock
//! (`alloc_in_origin`, for a stub another thread owns); so no thread reaches the dying cache C
//! once the stub has left it, and C's release at its last reference touches nothing of the stub.

use crate::accounting::percpu_ref::PercpuRef;
use crate::sync::remote::{list_tail, remote_pending, remote_push, remote_take, Linked};
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, RawLock};
use core::ptr::null_mut;

/// `Slab::owner` of a slab whose thread exited: frees go through its cache's lock.
pub const OWNER_ABANDONED: usize = 1;

/// A cache: something with a [`PercpuRef`] (its lock and its slab count).
pub trait Counted {
    /// The cache lock and reference count.
    fn refs(&self) -> &PercpuRef;
}

/// The words of a slab that other threads race on.
pub trait SlabWords {
    /// An object on the slab's free lists.
    type Node: Linked;
    /// The owner: a heap's address, [`OWNER_ABANDONED`], or a descriptor kind's marker. Written
    /// by the owner, or under the cache lock when it hands the slab over.
    fn owner(&self) -> &AtomicUsize;
    /// The remote-free list head (see `sync::remote`).
    fn thread_free(&self) -> &AtomicU64;
    /// Objects handed out and not yet taken back (owner-only writes).
    fn used(&self) -> &AtomicU32;
    /// Moves the remote frees onto the owner's free list (with [`take_remote_into`]); returns
    /// how many.
    ///
    /// # Safety
    /// `this` is a live slab and the caller owns it: its thread, or the cache lock while it is
    /// abandoned.
    unsafe fn take_remote(this: *mut Self) -> u32;
}

/// Moves the remote frees of a slab onto its free list `free` and out of `used`; returns how
/// many. The caller gives their bytes back (to a stock, or to the scope counters).
///
/// # Safety
/// The caller owns the slab (its thread, or the cache lock for an abandoned slab): it is the
/// list's only taker and the only writer of `used` and `free`, whose nodes are valid.
#[inline]
pub unsafe fn take_remote_into<N: Linked>(
    thread_free: &AtomicU64,
    used: &AtomicU32,
    free: &mut *mut N,
) -> u32 {
    // SAFETY: the caller owns the slab, so it is the list's only taker.
    let (first, n) = unsafe { remote_take::<N>(thread_free) };
    if n > 0 {
        if !free.is_null() {
            // SAFETY: the taken nodes are ours now; the count says how many there are.
            unsafe { N::set_next(list_tail(first, n), *free) };
        }
        *free = first;
        let u = used.load(Ordering::Relaxed);
        debug_assert!(u >= n, "more remote frees than objects in use");
        // Owner-only write; Relaxed: readers (statistics, the sweep) need only a recent value,
        // and the sweep reads it under the cache lock, which orders it for an abandoned slab.
        used.store(u - n, Ordering::Relaxed);
    }
    n
}

// ---------------------------------------------------------------------------------------------
// A node's caches: lookup vs close.

/// What [`lock_live_cache`] found in a node's cache slot.
pub enum SlotLookup<C> {
    /// A live cache, whose lock the caller now holds.
    Locked(*mut C),
    /// A dying cache (its scope is closing): re-target to the ancestor.
    Dying,
    /// No cache in the slot (none created yet, or the close took it out).
    Empty,
}

/// Looks the cache in `slot` up under `node_lock` and locks it before dropping the node lock;
/// then checks that it is live.
///
/// # Safety
/// `slot` is guarded by `node_lock`: a non-null pointer in it is a live cache, taken out of the
/// slot only under `node_lock` (by [`close_slots`]) before it can be killed and released.
#[inline]
pub unsafe fn lock_live_cache<C: Counted>(
    node_lock: &RawLock,
    slot: &AtomicPtr<C>,
) -> SlotLookup<C> {
    node_lock.lock();
    // Acquire: pairs with the Release store that published the new cache (`create_cache`).
    let c = slot.load(Ordering::Acquire);
    if c.is_null() {
        node_lock.unlock();
        return SlotLookup::Empty;
    }
    // SAFETY: c is in the slot and we hold the node lock, so the close has not taken it out and
    // it cannot be released before we hold its lock (the function's contract).
    let refs = unsafe { (*c).refs() };
    refs.lock();
    node_lock.unlock();
    // SAFETY: we hold the cache lock (taken just above).
    if unsafe { refs.is_dying_locked() } {
        // SAFETY: locked above, on this thread.
        unsafe { refs.unlock() };
        return SlotLookup::Dying;
    }
    SlotLookup::Locked(c)
}

/// The close of a node's caches: under `node_lock`, each cache is taken out of its slot, then
/// killed and re-targeted (`retarget`, run under the cache lock) and handed to `after` with
/// "release now" (it had no reference: the caller releases it), still under `node_lock`.
///
/// # Safety
/// As [`lock_live_cache`]; the caller closes the node (it holds the tree lock, so no cache is
/// created in the slots meanwhile).
#[inline]
pub unsafe fn close_slots<C: Counted>(
    node_lock: &RawLock,
    slots: &[AtomicPtr<C>],
    mut retarget: impl FnMut(*mut C),
    mut after: impl FnMut(*mut C, bool),
) {
    // Lock order: node lock, then cache lock (as in `lock_live_cache`).
    node_lock.lock();
    for slot in slots {
        if slot.load(Ordering::Relaxed).is_null() {
            continue;
        }
        let c = slot.swap(null_mut(), Ordering::AcqRel);
        // SAFETY: c was in the slot, taken out under the node lock: nobody else can kill it, so
        // it is alive until our kill says it may go.
        let refs = unsafe { (*c).refs() };
        refs.lock();
        // SAFETY: we hold the cache lock (just above).
        let release_now = unsafe { refs.kill_locked() };
        retarget(c);
        // SAFETY: locked above, on this thread.
        unsafe { refs.unlock() };
        after(c, release_now);
    }
    node_lock.unlock();
}

/// Runs `f` (which moves the cache's charge target) under the cache lock: the reparenting of a
/// dying cache when the scope it was moved to closes too.
///
/// # Safety
/// `c` is alive for the call (in production: the tree lock is held and the cache is on a
/// `reparented` list, so only a release under the tree lock could free it).
#[inline]
pub unsafe fn retarget<C: Counted>(c: *mut C, f: impl FnOnce(*mut C)) {
    // SAFETY: c is alive (the contract).
    let refs = unsafe { (*c).refs() };
    refs.lock();
    f(c);
    // SAFETY: locked above, on this thread.
    unsafe { refs.unlock() };
}

/// Drops one of `c`'s references (an empty slab or a freed large object): `f` runs first, under
/// the cache lock (unlink, uncharge `c`'s current target). `true`: that was the last reference
/// of a dying cache, and the caller must release it; either way the caller touches `c` no more.
///
/// # Safety
/// `c` is alive and the caller holds one of its references, which it gives up here.
#[inline]
pub unsafe fn drop_ref<C: Counted>(c: *mut C, f: impl FnOnce(*mut C)) -> bool {
    // SAFETY: our reference keeps c alive until the put below.
    let refs = unsafe { (*c).refs() };
    refs.lock();
    f(c);
    // SAFETY: we hold the lock and a reference.
    let last = unsafe { refs.put_locked() };
    // SAFETY: locked above, on this thread.
    unsafe { refs.unlock() };
    last
}

// ---------------------------------------------------------------------------------------------
// A slab's owner word: abandon, adopt, free by another thread, sweep.

/// Hands slab `s` over to its cache (thread exit, or the table's scope closed): with the cache
/// lock held, marks it abandoned and takes the remote frees that raced with the hand-over;
/// returns how many (the caller gives their bytes back). The caller keeps the lock: if the slab
/// is now empty it sweeps it ([`sweep_locked`]), else it unlocks.
///
/// # Safety
/// The calling thread owns `s` and holds the lock of `s`'s cache; `s` is on the cache's
/// abandoned list (or about to be, under the same lock).
#[inline]
pub unsafe fn abandon_locked<S: SlabWords>(s: *mut S) -> u32 {
    // SAFETY: s is live and ours (the contract).
    unsafe {
        // Release: publishes our last writes of the free list and `used` to a free that reads
        // `OWNER_ABANDONED` with Acquire (then takes the cache lock, which orders them anyway).
        (*s).owner().store(OWNER_ABANDONED, Ordering::Release);
        S::take_remote(s)
    }
}

/// Adopts abandoned slab `s` for heap `heap` (taken off the cache's abandoned list under its
/// lock). After the caller unlocks the cache, the slab is `heap`'s thread's.
///
/// # Safety
/// The caller holds the lock of `s`'s cache and took `s` off its abandoned list.
#[inline]
pub unsafe fn adopt_locked<S: SlabWords>(s: *mut S, heap: usize) {
    debug_assert!(heap > OWNER_ABANDONED);
    // Release: the adopter's own later frees test `owner == heap` (same thread); other threads
    // that see it push remotely, which needs nothing published.
    // SAFETY: s is live: abandoned slabs are attached to their cache, whose lock we hold.
    unsafe { (*s).owner().store(heap, Ordering::Release) };
}

/// How [`free_not_owned`] freed the object.
pub enum NotOwnedFree {
    /// Pushed on the slab's remote-free list; the caller touches the slab no more.
    Pushed,
    /// The slab is abandoned: the caller holds the cache lock, frees the object into the slab
    /// itself, and then calls [`sweep_locked`] (which unlocks).
    AbandonedLocked,
}

/// Frees `node`, an object of small slab `s`, on a thread that does not own `s`. `cache` reads
/// the slab's cache: only once `s` is seen abandoned, because a stub's cache may change while
/// its owner holds it ([`move_owned`]) and is final from its abandonment on.
///
/// # Safety
/// `node` is a live object of `s` (so `s` is attached to its cache, which is alive), freed once;
/// an abandoned `s` is never adopted into another cache.
#[inline]
pub unsafe fn free_not_owned<S: SlabWords, C: Counted>(
    s: *mut S,
    cache: impl FnOnce() -> *mut C,
    node: *mut S::Node,
) -> NotOwnedFree {
    // SAFETY: node is live, so its slab and the slab's cache are (the contract).
    unsafe {
        // Acquire: pairs with `abandon_locked`'s Release, which publishes the owner's last
        // writes, its slab's cache among them (the hand-over is re-checked under the cache lock).
        if (*s).owner().load(Ordering::Acquire) == OWNER_ABANDONED {
            let c = cache();
            let refs = (*c).refs();
            refs.lock();
            if (*s).owner().load(Ordering::Acquire) == OWNER_ABANDONED {
                return NotOwnedFree::AbandonedLocked;
            }
            // Adopted meanwhile: an ordinary remote free.
            refs.unlock();
        }
        remote_push((*s).thread_free(), node);
    }
    NotOwnedFree::Pushed
}

/// What [`move_owned`] did.
pub enum Moved {
    /// `to` was dying: nothing changed, nothing is held.
    Refused,
    /// The slab is on `to`, whose lock the caller holds; `from_last`: `from` lost its last
    /// reference, and the caller releases it (after unlocking `to`).
    Done {
        /// `from` was dying and is unreferenced now.
        from_last: bool,
    },
}

/// Moves slab (stub) `s`, which the calling thread owns, from cache `from` to cache `to`, whose
/// lock the caller holds: `to` takes a reference for it; `detach` unlinks it under `from`'s
/// lock, and `from` loses its reference; `attach` points `s` at `to` and links it under `to`'s
/// lock. The two locks are never held together. Readers that find `s` through a cache's lists
/// must not see it on neither (production: the tree lock is held, which statistics take); a
/// thread freeing an object of `s` reads `s`'s cache only after seeing `s` abandoned
/// ([`free_not_owned`]), which its owner does after the move, so it never reaches `from`.
///
/// # Safety
/// The caller owns `s`, which is attached to `from` and holds one of its references; it holds
/// `to`'s lock.
#[inline]
pub unsafe fn move_owned<C: Counted>(
    from: *mut C,
    to: *mut C,
    detach: impl FnOnce(*mut C),
    attach: impl FnOnce(*mut C),
) -> Moved {
    // SAFETY: the caller holds `to`'s lock and a reference on `from` (the contract).
    unsafe {
        let to_refs = (*to).refs();
        if !to_refs.tryget_locked() {
            to_refs.unlock();
            return Moved::Refused;
        }
        to_refs.unlock();
        let from_last = drop_ref(from, detach);
        // `to` is alive: the reference taken above.
        to_refs.lock();
        attach(to);
        Moved::Done { from_last }
    }
}

/// Whether abandoned slab `s` may have been emptied by remote frees: every object it holds is on
/// its remote-free list (see the module essay, "sweep vs remote free").
///
/// # Safety
/// The caller holds the lock of `s`'s cache and `s` is abandoned (so `used` does not move).
#[inline]
pub unsafe fn sweep_candidate<S: SlabWords>(s: &S) -> bool {
    let pending = remote_pending(s.thread_free());
    pending > 0 && pending >= s.used().load(Ordering::Relaxed)
}

/// What [`sweep_locked`] did with the slab.
pub enum Swept {
    /// The slab still holds objects; it stays abandoned.
    Kept,
    /// The slab was empty: unlinked and its reference dropped; the caller gives its span back
    /// and, if `last`, releases the cache (the last reference of a dying cache).
    Emptied {
        /// The caller releases the cache.
        last: bool,
    },
}

/// With `c` locked and `s` abandoned in `c`: takes `s`'s remote frees (`uncharge(n)` gives their
/// bytes back, under the lock), and if `s` is then empty, `unlink`s it and drops its reference.
/// Unlocks `c` in every case.
///
/// # Safety
/// The caller holds `c`'s lock and `s` is an abandoned slab of `c`.
#[inline]
pub unsafe fn sweep_locked<S: SlabWords, C: Counted>(
    c: *mut C,
    s: *mut S,
    uncharge: impl FnOnce(u32),
    unlink: impl FnOnce(),
) -> Swept {
    // SAFETY: c's lock is held and s is abandoned in c, so the lock makes us its owner; the slab
    // holds a reference on c, so c is alive until the put.
    unsafe {
        let refs = (*c).refs();
        let n = S::take_remote(s);
        uncharge(n);
        if (*s).used().load(Ordering::Relaxed) == 0 {
            unlink();
            let last = refs.put_locked();
            refs.unlock();
            Swept::Emptied { last }
        } else {
            refs.unlock();
            Swept::Kept
        }
    }
}

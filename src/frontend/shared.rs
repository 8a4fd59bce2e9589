//! Shared slabs: a small scope's objects live in its thread's shared slabs, charged through a
//! stub per (table, class), so that a scope costs what it holds (issue 10).
//!
//! ```text
//! alloc in a small scope S, class c (slow path: the table has no slab of class c)
//!   stub = t.stubs[c] (made on first use: a slab::KIND_STUB descriptor on the cache of
//!          (S, SHARED_CLASS), one per scope for the stubs of every class)
//!   b = pop from the heap's shared table (scope::shared(), slabs with an origin array)
//!   origins[b] = stub; stub.used += 1; stub.allocs += 1; t.stock -= size      (S charged)
//!   after GRADUATE_AT objects the class gets slabs of its own: today's fast path
//!
//! free(b) of a shared slab (owner word = heap + SHARED_OWNER: never the local fast path)
//!   stub = origins[b]
//!   logical:  stub's thread ──► stub.used -= 1, its table's stock += size
//!             other thread ──► protocol::free_not_owned(stub): push b on the stub's remote
//!                              list (its owner frees it physically when it takes the list), or,
//!                              stub abandoned, under its cache lock: used -= 1, uncharge
//!   physical: b back to its shared slab, as any object of scope::shared() (local, remote push,
//!             or into an abandoned slab under the shared cache's lock)
//! ```
//!
//! A stub is the accounting half of a slab: it sits on its cache's slab list, so statistics,
//! reports, reparenting at close and the release of a dying cache at its last reference treat it
//! as a slab with no pages; it is abandoned and swept as a slab is (`abandon`). The seed's race
//! (b) is the slabs' one: a free touches a stub only while its object is counted in `used`
//! (a remote push is counted until its owner takes it), and the stub is released only once `used`
//! is zero, by its owner or under its cache lock, so no free can touch a released stub; the
//! origin array lives in the shared slab's own span, kept by the object being freed.
//!
//! Lock order: a stub's cache, then a shared slab's cache (physical frees never take a stub's).
//! Blocks taken from a stub's remote list are detached under the lock and freed after it.

use super::abandon::release_last;
use super::alloc::pop;
use super::free::{drain_if_high, free_abandoned_locked, free_local_quiet};
use super::refill::{find_slab, refill, SlabSearch};
use super::slow_paths::{count, Slow};
use super::table::{as_owner, current_of, ensure_arrays, owner_table, Table, SHARED_OWNER};
use super::thread_heap::{tls_heap, Heap};
use crate::backend::pool::Pool;
use crate::objects::cache::{self, Cache, CacheLookup};
use crate::objects::protocol::{self, Moved, NotOwnedFree, Swept};
use crate::objects::scope::{self, ScopeNode, TreeGuard};
use crate::objects::size_class::{SHARED_CLASS, SIZES};
use crate::objects::slab::{origin_stub, set_origin, slab_of, Block, Slab, KIND_STUB};
use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use core::ptr::null_mut;

/// Objects a table allocates of one class from shared slabs before the class gets slabs of its
/// own. Small enough that a scope allocating steadily reaches today's fast path quickly, large
/// enough that a request scope (the request-cache workload: about 20 allocations over a few
/// classes) never takes a slab.
pub const GRADUATE_AT: u64 = 32;

/// Whether new tables share (`testing::set_sharing`, for the before/after measurements).
pub static SHARING: AtomicBool = AtomicBool::new(true);

pub(super) static STUBS: Pool<Slab> = Pool::new();

/// Released stubs a heap keeps for its next ones (`Heap::spare_stubs`).
pub(super) const SPARE_STUBS_MAX: u32 = 32;

/// Stubs on the heaps' spare lists (counted in `STUBS.in_use()`, but in no one's use).
static SPARE_STUBS: AtomicUsize = AtomicUsize::new(0);

/// Stubs in existence (`testing::stubs_in_use`): the heaps' spares are not.
pub fn stubs_in_use() -> usize {
    STUBS.in_use() - SPARE_STUBS.load(Ordering::Relaxed)
}

/// A stub to make: one of `heap`'s spares, or one from the pool (null when the OS refuses).
///
/// # Safety
/// `heap` is this thread's heap.
unsafe fn new_stub(heap: *mut Heap) -> *mut Slab {
    // SAFETY: the spare list is the heap's, this thread's.
    unsafe {
        let stub = (*heap).spare_stubs;
        if stub.is_null() {
            return STUBS.alloc();
        }
        (*heap).spare_stubs = (*stub).tnext;
        (*heap).nspare_stubs -= 1;
        SPARE_STUBS.fetch_sub(1, Ordering::Relaxed);
        stub
    }
}

/// Releases `stub`, which nothing refers to any more: onto `heap`'s spares (null: an orphaned
/// table's, straight to the pool) or, past `SPARE_STUBS_MAX`, to the pool.
///
/// # Safety
/// `heap` is null or the heap of the calling thread (or of a dead thread whose heap the caller
/// releases); `stub` is unreferenced.
unsafe fn release_stub(heap: *mut Heap, stub: *mut Slab) {
    // SAFETY: the spare list is the heap's (the contract); the stub is nobody's.
    unsafe {
        if heap.is_null() || (*heap).nspare_stubs >= SPARE_STUBS_MAX {
            STUBS.free(stub);
            return;
        }
        (*stub).tnext = (*heap).spare_stubs;
        (*heap).spare_stubs = stub;
        (*heap).nspare_stubs += 1;
        SPARE_STUBS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Gives `heap`'s spare stubs back to the pool (the heap is being released).
///
/// # Safety
/// `heap` is being released by the caller, the only thread that touches it.
pub(super) unsafe fn free_spare_stubs(heap: *mut Heap) {
    // SAFETY: per the contract.
    unsafe {
        while !(*heap).spare_stubs.is_null() {
            let stub = (*heap).spare_stubs;
            (*heap).spare_stubs = (*stub).tnext;
            STUBS.free(stub);
            SPARE_STUBS.fetch_sub(1, Ordering::Relaxed);
        }
        (*heap).nspare_stubs = 0;
    }
}

/// What [`alloc_shared`] did.
pub(super) enum SharedAlloc {
    /// The object, charged to the table's scope.
    Done(*mut u8),
    /// The class has slabs of its own from now on (or sharing is unavailable): the caller takes
    /// today's path.
    Graduate,
    /// The table's scope closed: follow it to its ancestor.
    Closed,
    /// Out of memory.
    Oom,
}

/// Whether `t` takes class `class` from shared slabs: it shares and has no slab of that class.
///
/// # Safety
/// `t` is a live table of this thread.
#[inline]
pub(super) unsafe fn shares_class(t: *const Table, class: usize) -> bool {
    // SAFETY: t is this thread's (the contract).
    unsafe { (*t).shares && super::table::list_head(t, class).is_null() }
}

/// Allocates an object of `class` for `t` from the heap's shared slabs. The caller has made
/// `t`'s stock cover `size`.
///
/// # Safety
/// `heap` is this thread's heap and `t` one of its live tables, which shares.
pub(super) unsafe fn alloc_shared(
    heap: *mut Heap,
    t: *mut Table,
    class: usize,
    size: i64,
) -> SharedAlloc {
    // SAFETY: heap, t, their slabs and stubs are this thread's.
    unsafe {
        let st = (*heap).shared;
        if st.is_null() {
            return SharedAlloc::Graduate;
        }
        let stub = match stub_for(heap, t, class) {
            Ok(stub) => stub,
            Err(other) => return other,
        };
        take_stub_remote(stub);
        if (*stub).allocs.load(Ordering::Relaxed) >= GRADUATE_AT {
            return SharedAlloc::Graduate;
        }
        if (*st).stock.avail < size && !refill(heap, st, size) {
            return SharedAlloc::Oom;
        }
        // The shared table's current slab, when it has a free block (the usual case), or the
        // table's search (arrays made, remote frees taken, a slab carved or made).
        let cur = current_of(st, class);
        let s = if !(*cur).free.is_null() {
            cur
        } else {
            if !ensure_arrays(st) {
                return SharedAlloc::Oom;
            }
            match find_slab(heap, st, class) {
                SlabSearch::Slab(s) => s,
                _ => return SharedAlloc::Oom,
            }
        };
        count(Slow::SharedAlloc);
        let b = pop(st, s, (*s).free, size);
        set_origin(s, b, stub);
        // Owner-only counters, in the order statistics expect (see `alloc::pop`).
        (*stub).allocs.store(
            (*stub).allocs.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        (*stub)
            .used
            .store((*stub).used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        (*t).stock.avail -= size;
        SharedAlloc::Done(b)
    }
}

/// `t`'s stub for `class`, made (and attached to the shared cache of `t.scope`, which holds the
/// stubs of every class: `SHARED_CLASS`) on first use.
unsafe fn stub_for(heap: *mut Heap, t: *mut Table, class: usize) -> Result<*mut Slab, SharedAlloc> {
    // SAFETY: t and its stubs are this thread's; the cache is used under its lock.
    unsafe {
        let hint = (*heap).stub_hint[class];
        if !hint.is_null() && (*hint).table == as_owner(t) {
            return Ok(hint);
        }
        let mut x = if (*t).stub_mask & (1 << class) != 0 {
            (*t).stubs
        } else {
            null_mut()
        };
        while !x.is_null() {
            if (*x).class as usize == class {
                (*heap).stub_hint[class] = x;
                return Ok(x);
            }
            x = (*x).tnext;
        }
        let stub = new_stub(heap);
        if stub.is_null() {
            return Err(SharedAlloc::Oom);
        }
        // The table's other stubs are on the cache already (each holds a reference on it).
        let c = if (*t).stubs.is_null() {
            match cache::lock_cache((*t).scope, SHARED_CLASS) {
                CacheLookup::Locked(c) => c,
                CacheLookup::Closed => {
                    release_stub(heap, stub);
                    return Err(SharedAlloc::Closed);
                }
                CacheLookup::Oom => {
                    release_stub(heap, stub);
                    return Err(SharedAlloc::Oom);
                }
            }
        } else {
            let c = (*(*t).stubs).cache;
            (*c).refs.lock();
            c
        };
        if !(*c).refs.tryget_locked() {
            (*c).refs.unlock();
            release_stub(heap, stub);
            return Err(SharedAlloc::Closed);
        }
        stub.write(Slab::empty());
        (*stub).kind = KIND_STUB;
        (*stub).class = class as u16;
        (*stub).block_size = SIZES[class];
        (*stub).table = as_owner(t);
        (*stub).cache = c;
        // Only this thread's frees compare with it before the objects are published.
        (*stub).owner.store(heap as usize, Ordering::Release);
        (*c).link_slab(stub);
        (*c).refs.unlock();
        (*stub).tnext = (*t).stubs;
        (*t).stubs = stub;
        (*t).stub_mask |= 1 << class;
        (*heap).stub_hint[class] = stub;
        count(Slow::StubMade);
        Ok(stub)
    }
}

/// The scope that live object `p` of small slab or large object `s` is charged to (its cache's
/// `scope`: the origin, or after it closed its nearest open ancestor), with a node reference
/// for the caller to drop. A shared object's cache is its stub's, which may move while another
/// thread owns the stub (`abandon_stubs`): it is read then under the tree lock, which every
/// move holds.
///
/// # Safety
/// `s` is `slab_of(p)` and `p` a live object of ours (its stub and cache are alive while it is).
pub unsafe fn charged_scope(s: *const Slab, p: *const u8) -> *mut ScopeNode {
    // SAFETY: p is live (the contract): its slab or stub holds a reference on its cache, and
    // `Cache::scope` is read under the cache lock, as every change of it holds that lock.
    unsafe {
        let scope_of = |c: *mut Cache| {
            (*c).refs.lock();
            let origin = (*c).scope;
            scope::node_get(origin);
            (*c).refs.unlock();
            origin
        };
        if (*s).origins.is_null() {
            return scope_of((*s).cache);
        }
        let stub = origin_stub(s, p);
        // Acquire: a stub seen abandoned has its final cache (see `protocol::free_not_owned`).
        let owner = (*stub).owner.load(Ordering::Acquire);
        if owner == tls_heap() as usize || owner == protocol::OWNER_ABANDONED {
            return scope_of((*stub).cache);
        }
        let tree = scope::tree_lock();
        let origin = scope_of((*stub).cache);
        drop(tree);
        origin
    }
}

/// Takes the remote frees of `stub` (this thread's): their bytes back into its table's stock,
/// the blocks back into their shared slabs.
///
/// # Safety
/// `stub` is a live stub of a table of this thread.
pub(super) unsafe fn take_stub_remote(stub: *mut Slab) {
    // SAFETY: this thread owns the stub (the contract), so it is its list's only taker.
    unsafe {
        let n = (*stub).take_remote();
        if n == 0 {
            return;
        }
        count(Slow::RemoteTaken);
        (*owner_table(stub)).stock.avail += n as i64 * (*stub).block_size as i64;
        let list = core::mem::replace(&mut (*stub).free, null_mut());
        free_blocks_physically(list);
    }
}

/// Takes the remote frees of every stub of `t` (before a refusal, at trim).
///
/// # Safety
/// `t` is a live table of this thread.
pub(super) unsafe fn take_all_stub_remote(t: *mut Table) {
    // SAFETY: t's stubs are this thread's.
    unsafe {
        let mut x = (*t).stubs;
        while !x.is_null() {
            take_stub_remote(x);
            x = (*x).tnext;
        }
    }
}

/// Frees `p`, a live object of shared slab `s`, from any thread.
///
/// # Safety
/// `s` is `slab_of(p)`, a shared slab, and `p` a live object of it, freed once.
pub(super) unsafe fn free_shared(s: *mut Slab, p: *mut u8) {
    // SAFETY: p is live, so its stub counts it and is alive, and so is its slab.
    unsafe {
        if uncharge_from_stub(origin_stub(s, p), p) {
            free_physically(s, p);
        }
    }
}

/// The logical half of a free: `p` leaves its stub's figures. False when `p` went onto the
/// stub's remote list instead (its owner frees it physically when it takes the list).
unsafe fn uncharge_from_stub(stub: *mut Slab, p: *mut u8) -> bool {
    // SAFETY: p is counted in the stub's `used`, which keeps the stub and its cache alive.
    unsafe {
        let size = (*stub).block_size as i64;
        if (*stub).owner.load(Ordering::Relaxed) == tls_heap() as usize {
            // Our stub (only this thread stores its heap in the word): owner-only writes.
            let used = (*stub).used.load(Ordering::Relaxed);
            debug_assert!(used > 0, "free of an object its stub does not count");
            (*stub).used.store(used - 1, Ordering::Relaxed);
            let t = owner_table(stub);
            (*t).stock.avail += size;
            drain_if_high(t);
            return true;
        }
        // The stub's cache is read only once the stub is seen abandoned: until then its owner
        // may move it to its scope's ancestor (`abandon_stubs`).
        let mut c = null_mut();
        match protocol::free_not_owned(
            stub,
            || {
                c = (*stub).cache;
                c
            },
            p as *mut Block,
        ) {
            NotOwnedFree::Pushed => {
                count(Slow::RemoteFree);
                false
            }
            NotOwnedFree::AbandonedLocked => {
                count(Slow::AbandonedFree);
                // The cache lock makes us the abandoned stub's owner.
                (*stub)
                    .used
                    .store((*stub).used.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                (*(*c).scope).counter.uncharge(size as u64);
                sweep_stub_locked(c, stub, None);
                true
            }
        }
    }
}

/// The physical half: `p`, uncharged from its stub, goes back to shared slab `s` as an object
/// of `scope::shared()`.
///
/// # Safety
/// `s` is `slab_of(p)`, a shared slab, `p` one of its handed-out blocks, no longer counted by
/// any stub.
unsafe fn free_physically(s: *mut Slab, p: *mut u8) {
    // SAFETY: p is still counted in s's `used`, so s is attached to its (never dying) cache.
    unsafe {
        if (*s).owner.load(Ordering::Relaxed) == tls_heap() as usize + SHARED_OWNER {
            free_local_quiet(s, p);
            return;
        }
        match protocol::free_not_owned(s, || (*s).cache, p as *mut Block) {
            NotOwnedFree::AbandonedLocked => free_abandoned_locked(s, p),
            NotOwnedFree::Pushed => {}
        }
    }
}

/// Frees a detached list of blocks (taken from a stub: uncharged, each still in its slab's
/// `used`) back to their shared slabs.
unsafe fn free_blocks_physically(mut b: *mut Block) {
    // SAFETY: the list is ours (detached from the stub under its owner's right to it).
    unsafe {
        while !b.is_null() {
            let next = Block::link(b);
            free_physically(slab_of(b as *const u8), b as *mut u8);
            b = next;
        }
    }
}

/// With `c` locked and `stub` abandoned in `c`: takes the stub's remote frees (uncharging them),
/// releases the stub if it is then empty, unlocks `c` (releasing it if that was its last
/// reference; `tree`: the caller holds the tree lock), and frees the taken blocks physically.
///
/// # Safety
/// The caller holds `c`'s lock and `stub` is an abandoned stub of `c`.
pub(super) unsafe fn sweep_stub_locked(c: *mut Cache, stub: *mut Slab, tree: Option<&TreeGuard>) {
    // SAFETY: the lock makes us the abandoned stub's owner; its reference keeps c alive until
    // the put in sweep_locked.
    unsafe {
        let mut taken: *mut Block = null_mut();
        let swept = protocol::sweep_locked(
            c,
            stub,
            |n| {
                if n > 0 {
                    // c's lock is held, so `Cache::scope` is stable and referenced.
                    (*(*c).scope)
                        .counter
                        .uncharge(n as u64 * (*stub).block_size as u64);
                    taken = core::mem::replace(&mut (*stub).free, null_mut());
                }
            },
            || (*c).unlink_slab(stub),
        );
        if let Swept::Emptied { last } = swept {
            STUBS.free(stub);
            if last {
                release_last(c, tree);
            }
        }
        free_blocks_physically(taken);
    }
}

/// Retires `t`'s stubs (its scope closed, or its thread exits): remote frees taken, empty stubs
/// released, the others abandoned to their caches (where frees and the sweep find them).
///
/// # Safety
/// `t` is a live table of this thread.
pub(super) unsafe fn abandon_stubs(t: *mut Table) {
    // SAFETY: t and its stubs are this thread's; caches are used under their locks.
    unsafe {
        loop {
            let stub = (*t).stubs;
            if stub.is_null() {
                break;
            }
            (*t).stubs = (*stub).tnext;
            (*t).stub_mask &= !(1 << (*stub).class);
            (*stub).tnext = null_mut();
            let heap = (*t).heap;
            if !heap.is_null() {
                // A stub's class is a small class: `get_mut` finds its hint (no panic path).
                if let Some(h) = (*heap).stub_hint.get_mut((*stub).class as usize) {
                    if *h == stub {
                        *h = null_mut();
                    }
                }
            }
            take_stub_remote(stub);
            let c = (*stub).cache;
            if (*stub).used.load(Ordering::Relaxed) == 0 {
                let last = protocol::drop_ref(c, |c| (*c).unlink_slab(stub));
                release_stub(heap, stub);
                if last {
                    cache::release_cache(c);
                }
                continue;
            }
            // The table's scope closed: its shared cache is dying, and the stub goes to the
            // shared cache of the scope its charges went to, so that the dying cache is released
            // now and a survivor costs its stub alone (issue 10). Under the tree lock, which
            // keeps both caches' scope, and statistics, still.
            let tree = if (*(*t).scope).is_closed() {
                Some(scope::tree_lock())
            } else {
                None
            };
            let (c, dead) = match &tree {
                Some(tree) => move_to_ancestor(tree, stub, c),
                None => {
                    (*c).refs.lock();
                    (c, null_mut())
                }
            };
            (*stub).table = null_mut();
            (*c).push_abandoned(stub);
            // Remote frees that raced with the hand-over are taken now, under the lock.
            let n = protocol::abandon_locked(stub);
            (*t).stock.avail += n as i64 * (*stub).block_size as i64;
            let taken = core::mem::replace(&mut (*stub).free, null_mut());
            if (*stub).used.load(Ordering::Relaxed) == 0 {
                sweep_stub_locked(c, stub, tree.as_ref());
            } else {
                (*c).refs.unlock();
            }
            if let Some(tree) = &tree {
                if !dead.is_null() {
                    cache::release_cache_tree_locked(tree, dead);
                }
            }
            drop(tree);
            free_blocks_physically(taken);
        }
    }
}

/// With the tree lock held: moves `stub`, owned by this thread and attached to `c`, the dying
/// shared cache of its closed scope, to the shared cache of `c`'s scope (the nearest open
/// ancestor, which its charges already go to): `protocol::move_owned`. Returns the cache the
/// stub is on, locked, and `c` if it lost its last reference (the caller releases it after
/// unlocking), else null. The stub stays on `c` (locked) when the ancestor's cache cannot be
/// had (the OS refuses memory for it).
///
/// # Safety
/// `stub` is a stub of a table of this thread, with objects, on `c`; the tree lock is held.
unsafe fn move_to_ancestor(
    tree: &TreeGuard,
    stub: *mut Slab,
    c: *mut Cache,
) -> (*mut Cache, *mut Cache) {
    // SAFETY: the stub holds a reference on c; `Cache::scope` changes only under the tree lock,
    // which we hold, and is an open scope (a close re-targets the caches reparented into it).
    unsafe {
        let target = (*c).scope;
        if let CacheLookup::Locked(p) = cache::lock_cache_tree_locked(tree, target, SHARED_CLASS) {
            let moved = protocol::move_owned(
                c,
                p,
                // Under c's lock; the stub keeps its allocation count, which p now reports.
                |c| (*c).unlink_moving(stub),
                // Under p's lock, before the stub's abandonment publishes it.
                |p| {
                    (*stub).cache = p;
                    (*p).link_slab(stub);
                },
            );
            if let Moved::Done { from_last } = moved {
                return (p, if from_last { c } else { null_mut() });
            }
        }
        (*c).refs.lock();
        (c, null_mut())
    }
}

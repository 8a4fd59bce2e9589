//! Abandoning: a table whose scope closed, or whose thread exits, gives its slabs to their
//! caches; the sweep releases abandoned slabs that remote frees emptied.

use super::free::release_slab;
use super::refill::{drain_stock, set_current, take_remote_frees};
use super::shared::{abandon_stubs, sweep_stub_locked};
use super::table::list_remove;
use super::table::{empty_slab, free_arrays, has_arrays, list_head, Table};
use crate::objects::cache::{self, Cache};
use crate::objects::protocol::{self, Swept};
use crate::objects::scope::{self, TreeGuard};
use crate::objects::size_class::NCLASSES;
use crate::objects::slab::{free_slab_span, Slab, KIND_STUB};
use crate::platform::os;
use crate::sync::{AtomicU64, Ordering};
use core::ptr::null_mut;

/// Retires a table: stock returned, empty slabs released, the others abandoned to their caches.
pub(super) unsafe fn abandon_table(t: *mut Table) {
    // SAFETY: t and its slabs are this thread's.
    unsafe {
        abandon_stubs(t);
        for class in 0..NCLASSES {
            if !has_arrays(t) {
                break;
            }
            set_current(t, class, empty_slab());
            loop {
                let s = list_head(t, class);
                if s.is_null() {
                    break;
                }
                take_remote_frees(s);
                if (*s).used.load(Ordering::Relaxed) == 0 {
                    release_slab(t, s);
                    continue;
                }
                list_remove(t, class, s);
                let c = (*s).cache;
                (*c).refs.lock();
                (*s).table = null_mut();
                (*c).push_abandoned(s);
                // Remote frees that raced with the hand-over are taken now, under the lock.
                let n = protocol::abandon_locked(s);
                (*t).stock.avail += n as i64 * (*s).block_size as i64;
                if (*s).used.load(Ordering::Relaxed) == 0 {
                    sweep_abandoned_locked(c, s, None);
                } else {
                    (*c).refs.unlock();
                }
            }
        }
        free_arrays(t);
        drain_stock(t, 0);
        (*t).dead = true;
    }
}

/// With `c` locked: takes the remote frees of abandoned slab or stub `s` (uncharging them), and
/// releases `s` if it is empty. Unlocks `c`; releases `c` if that was its last reference (`tree`: the
/// caller holds the tree lock).
///
/// # Safety
/// The caller holds `c`'s lock and `s` is an abandoned slab of `c`.
pub(super) unsafe fn sweep_abandoned_locked(c: *mut Cache, s: *mut Slab, tree: Option<&TreeGuard>) {
    // SAFETY: the caller holds c's lock; s is abandoned in c, so the lock protects its lists and
    // makes us the slab's owner; the slab's reference keeps c alive until its put.
    unsafe {
        if (*s).kind == KIND_STUB {
            return sweep_stub_locked(c, s, tree);
        }
        let swept = protocol::sweep_locked(
            c,
            s,
            |n| {
                if n > 0 {
                    // c's lock is held, so `Cache::scope` is stable and referenced.
                    (*(*c).scope)
                        .counter
                        .uncharge(n as u64 * (*s).block_size as u64);
                }
            },
            // c's lock is held and s is attached to c.
            || (*c).unlink_slab(s),
        );
        if let Swept::Emptied { last } = swept {
            free_slab_span(s);
            if last {
                release_last(c, tree);
            }
        }
    }
}

/// Releases dying cache `c`, whose last reference a sweep just dropped (`tree`: the caller
/// holds the tree lock).
///
/// # Safety
/// As `cache::release_cache`.
pub(super) unsafe fn release_last(c: *mut Cache, tree: Option<&TreeGuard>) {
    // SAFETY: the caller's contract is release_cache's.
    unsafe {
        match tree {
            Some(tree) => cache::release_cache_tree_locked(tree, c),
            None => cache::release_cache(c),
        }
    }
}

/// Caches swept per hold of the tree lock: the sweep lets go of the lock between batches, so
/// that a process with many caches never stalls scope creation, close or statistics for long.
const SWEEP_BATCH: usize = 64;
/// Abandoned slabs looked at per cache per sweep.
const SWEEP_SLABS: usize = 64;

/// Longest hold of the tree lock by a sweep batch, in ns, and most caches looked at in one hold
/// (for tests and benchmarks: `testing::sweep_figures`).
pub static SWEEP_LONGEST_HOLD_NS: AtomicU64 = AtomicU64::new(0);
/// See [`SWEEP_LONGEST_HOLD_NS`].
pub static SWEEP_MOST_CACHES_PER_HOLD: AtomicU64 = AtomicU64::new(0);

/// Releases the abandoned slabs that became empty through remote frees (periodic and on trim).
/// Looks only at the caches that have abandoned slabs (the sweep list), each once, in batches of
/// [`SWEEP_BATCH`] per hold of the tree lock.
pub fn sweep_abandoned() {
    let mut left = cache::sweep_len();
    while left > 0 {
        let start = os::now_ns();
        let tree = scope::tree_lock();
        let mut n = 0;
        while n < SWEEP_BATCH && left > 0 {
            let c = cache::sweep_next(&tree);
            if c.is_null() {
                left = 0;
                break;
            }
            // SAFETY: under the tree lock no cache is released but by us (sweep_cache).
            unsafe { sweep_cache(&tree, c) };
            n += 1;
            left -= 1;
        }
        drop(tree);
        let held = os::now_ns().saturating_sub(start);
        SWEEP_LONGEST_HOLD_NS.fetch_max(held, Ordering::Relaxed);
        SWEEP_MOST_CACHES_PER_HOLD.fetch_max(n as u64, Ordering::Relaxed);
    }
}

/// Releases the abandoned slabs of `c` that remote frees emptied (at most [`SWEEP_SLABS`] looked
/// at). `c` may be released on the way.
///
/// # Safety
/// The caller holds the tree lock (`tree`) and `c` is a live cache.
unsafe fn sweep_cache(tree: &TreeGuard, c: *mut Cache) {
    // SAFETY: the tree lock keeps c alive but for our own release below; its lists are read
    // under its lock.
    unsafe {
        let mut looked = 0;
        loop {
            (*c).refs.lock();
            let mut s = (*c).abandoned_head();
            let mut found = core::ptr::null_mut();
            while !s.is_null() && looked < SWEEP_SLABS {
                looked += 1;
                // Racy with remote pushers, and safe: see `protocol::sweep_candidate`.
                if protocol::sweep_candidate(&*s) {
                    found = s;
                    break;
                }
                s = (*s).anext;
            }
            let mut stub = (*c).abandoned_stubs_head();
            while found.is_null() && !stub.is_null() && looked < SWEEP_SLABS {
                looked += 1;
                // As for a slab (see `protocol::sweep_candidate`).
                if protocol::sweep_candidate(&*stub) {
                    found = stub;
                }
                stub = (*stub).anext;
            }
            if found.is_null() {
                (*c).refs.unlock();
                return;
            }
            let s = found;
            let last = (*c).refs.count_locked() == 1 && (*c).refs.is_dying_locked();
            sweep_abandoned_locked(c, s, Some(tree));
            if last {
                return; // released: the cache is gone
            }
        }
    }
}

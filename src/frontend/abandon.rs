//! Abandoning: a table whose scope closed, or whose thread exits, gives its slabs to their
//! caches; the sweep releases abandoned slabs that remote frees emptied.

use super::free::release_slab;
use super::refill::{drain_stock, set_current, take_remote_frees};
use super::table::list_remove;
use super::table::{empty_slab, Table};
use crate::objects::cache::{self, Cache};
use crate::objects::protocol::{self, Swept};
use crate::objects::scope::TreeGuard;
use crate::objects::size_class::NCLASSES;
use crate::objects::slab::{free_slab_span, Slab};
use crate::sync::Ordering;
use core::ptr::null_mut;

/// Retires a table: stock returned, empty slabs released, the others abandoned to their caches.
pub(super) unsafe fn abandon_table(t: *mut Table) {
    // SAFETY: t and its slabs are this thread's.
    unsafe {
        for class in 0..NCLASSES {
            set_current(t, class, empty_slab());
            loop {
                let s = (*t).lists[class];
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
                (*t).stock += n as i64 * (*s).block_size as i64;
                if (*s).used.load(Ordering::Relaxed) == 0 {
                    sweep_abandoned_locked(c, s, None);
                } else {
                    (*c).refs.unlock();
                }
            }
        }
        drain_stock(t, 0);
        (*t).dead = true;
    }
}

/// With `c` locked: takes the remote frees of abandoned slab `s` (uncharging them), and releases
/// `s` if it is empty. Unlocks `c`; releases `c` if that was its last reference (`tree`: the
/// caller holds the tree lock).
///
/// # Safety
/// The caller holds `c`'s lock and `s` is an abandoned slab of `c`.
pub(super) unsafe fn sweep_abandoned_locked(c: *mut Cache, s: *mut Slab, tree: Option<&TreeGuard>) {
    // SAFETY: the caller holds c's lock; s is abandoned in c, so the lock protects its lists and
    // makes us the slab's owner; the slab's reference keeps c alive until its put.
    unsafe {
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
                match tree {
                    Some(tree) => cache::release_cache_tree_locked(tree, c),
                    None => cache::release_cache(c),
                }
            }
        }
    }
}

/// Releases every abandoned slab that became empty through remote frees (periodic and on trim).
pub fn sweep_abandoned() {
    cache::for_each_cache_tree_locked(|tree, c| {
        // SAFETY: under the tree lock no cache is released but by us, below; each cache's lists
        // are read under its lock.
        unsafe {
            loop {
                (*c).refs.lock();
                let mut s = (*c).abandoned_head();
                while !s.is_null() {
                    if protocol::sweep_candidate(&*s) {
                        break;
                    }
                    s = (*s).anext;
                }
                if s.is_null() {
                    (*c).refs.unlock();
                    return;
                }
                let last = (*c).refs.count_locked() == 1 && (*c).refs.is_dying_locked();
                sweep_abandoned_locked(c, s, Some(tree));
                if last {
                    return; // released: the cache is gone
                }
            }
        }
    });
}

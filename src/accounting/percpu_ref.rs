//! A cache's reference count: the per-thread half is each slab's `used` count, the shared half
//! is [`PercpuRef`], and killing it is the close of the cache's scope.
//!
//! Written against [`crate::sync`] only, so that the loom models in `tests/loom_scope.rs` check
//! this code (called by the protocol steps of `objects::protocol`).
//!
//! A cache (scope × size class) holds one reference per attached slab or large object. Object
//! references are counted per slab, by the slab's owner thread, without atomics (the `used` field,
//! the per-thread half of a per-CPU reference); the cache counts the slabs, under its lock (the
//! shared half, touched once per slab). While the scope is open the scope itself keeps the cache:
//! `nrefs == 0` does not release it. Closing the scope *kills* the cache: from then on no new
//! reference can be taken (`tryget` fails, the thread re-targets to the nearest open ancestor),
//! and whoever brings the count to zero in the dying state, the killer or the last `put`, is told
//! so exactly once and releases the cache.
//!
//! Race (a) of the kernel's 2014 thread: a thread obtains a cache of a scope being destroyed and
//! allocates from it after it is gone. Here a thread gets a new slab from a cache only through
//! `tryget`, under the cache lock, which fails once `kill` ran; a slab it already holds keeps the
//! cache alive by its own reference, so the cache cannot go away under it. A thread finds a cache
//! and takes its lock under the lock of the cache's scope, and the close takes the cache out of
//! the scope under that same lock before killing it (`objects::protocol::lock_live_cache` and
//! `close_slots`): no thread can hold a pointer to a released cache.
//!
//! Race (b): the free path touches the cache after dropping its last reference. `put` returns
//! `true` to exactly one caller, after which the caller releases the cache and touches it no more;
//! every other path that drops a reference returns `false` and its holder is no longer allowed to
//! touch the cache, but it does not need to: everything it needed it did under the lock, before
//! `put`.
//!
//! ## The two timelines
//! ```text
//! race (a), allocate vs close            | race (b), free of the last object vs close
//! T1 (allocating in S)   T2 (closing S)  | T1 (freeing)              T2 (closing S)
//! S.lock; c = S.caches[k]                | c.lock; uncharge c.scope
//! c.lock; S.unlock                       |                           c.lock ... waits
//!                        S.lock; take c  | put: nrefs 1 -> 0, not dying: keep
//!                        c.lock ... waits| c.unlock
//! try_get: not dying, nrefs += 1         |                           kill: dying, nrefs == 0
//! c.unlock; use new slab                 |                           -> T2 releases c (once)
//!                        kill: dying;    | (T1 never touches c after its put; had T2's kill
//!                        nrefs > 0: keep |  come first, T1's put would return "last" and T1
//! ...last free: put -> "last": release   |  would release, T2 would not)
//! ```
//! Had T2 taken `c` out of `S` first, T1 would not have found it (it re-targets to the
//! ancestor); had T2's kill come before T1's `tryget`, the `tryget` fails. No order lets a
//! thread use a released cache or release one twice; `tests/loom_scope.rs` checks every order,
//! through the production steps in `objects::protocol` (whose essay has the other timelines).
//!
use crate::sync::RawLock;
use core::cell::UnsafeCell;

/// The shared half of a cache's reference count, and the cache lock; see the module essay.
///
/// The lock also guards the cache's slab lists and large-object figures (`objects::cache`).
/// The `_locked` calls are `unsafe`: their caller holds the lock, which is what makes their
/// plain reads and writes of the state race-free.
pub struct PercpuRef {
    lock: RawLock,
    state: UnsafeCell<RefState>,
}

struct RefState {
    dying: bool,
    count: usize,
}

// SAFETY: `state` is only reached by the `_locked` calls, whose callers hold `lock`.
unsafe impl Sync for PercpuRef {}
// SAFETY: no thread affinity: the state is plain data.
unsafe impl Send for PercpuRef {}

impl PercpuRef {
    /// A live count with no references.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        PercpuRef {
            lock: RawLock::new(),
            state: UnsafeCell::new(RefState {
                dying: false,
                count: 0,
            }),
        }
    }

    /// A live count with no references.
    #[cfg(loom)]
    pub fn new() -> Self {
        PercpuRef {
            lock: RawLock::new(),
            state: UnsafeCell::new(RefState {
                dying: false,
                count: 0,
            }),
        }
    }

    /// Re-arms the count of a released cache for reuse (live, no references).
    pub fn reset(&self) {
        self.lock.lock();
        // SAFETY: we hold the lock.
        unsafe {
            *self.state.get() = RefState {
                dying: false,
                count: 0,
            };
        }
        self.lock.unlock();
    }

    /// Takes the cache lock; the caller may then use the `_locked` calls and must call
    /// [`PercpuRef::unlock`].
    pub fn lock(&self) {
        self.lock.lock();
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The calling thread holds the lock (from [`PercpuRef::lock`]).
    pub unsafe fn unlock(&self) {
        self.lock.unlock();
    }

    /// Releases the lock in a fork handler.
    ///
    /// # Safety
    /// The forking thread took the lock in the prepare handler; in the child it is the only
    /// thread.
    pub unsafe fn force_unlock(&self) {
        self.lock.force_unlock();
    }

    /// Takes a reference unless the count is dying (the kernel's `percpu_ref_tryget_live`).
    ///
    /// # Safety
    /// The calling thread holds the lock.
    pub unsafe fn tryget_locked(&self) -> bool {
        // SAFETY: the caller holds the lock, so nobody else reaches the state.
        let st = unsafe { &mut *self.state.get() };
        if st.dying {
            return false;
        }
        st.count += 1;
        true
    }

    /// Drops a reference; `true` means the caller dropped the last one of a dying cache and must
    /// release it (after unlocking), and nobody else will.
    ///
    /// # Safety
    /// The calling thread holds the lock and one of the references.
    pub unsafe fn put_locked(&self) -> bool {
        // SAFETY: the caller holds the lock.
        let st = unsafe { &mut *self.state.get() };
        debug_assert!(st.count > 0, "put without a reference");
        st.count -= 1;
        st.dying && st.count == 0
    }

    /// Marks the count dying; `true` means it holds no reference and the caller must release the
    /// cache. Only the first kill can return `true`.
    ///
    /// # Safety
    /// The calling thread holds the lock.
    pub unsafe fn kill_locked(&self) -> bool {
        // SAFETY: the caller holds the lock.
        let st = unsafe { &mut *self.state.get() };
        let first = !st.dying;
        st.dying = true;
        first && st.count == 0
    }

    /// Whether the count is dying.
    ///
    /// # Safety
    /// The calling thread holds the lock.
    pub unsafe fn is_dying_locked(&self) -> bool {
        // SAFETY: the caller holds the lock.
        unsafe { (*self.state.get()).dying }
    }

    /// References held.
    ///
    /// # Safety
    /// The calling thread holds the lock.
    pub unsafe fn count_locked(&self) -> usize {
        // SAFETY: the caller holds the lock.
        unsafe { (*self.state.get()).count }
    }
}

impl Default for PercpuRef {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The production pattern: lock, one `_locked` call, unlock.
    fn locked<R>(r: &PercpuRef, f: unsafe fn(&PercpuRef) -> R) -> R {
        r.lock();
        // SAFETY: `f` is one of the `_locked` calls, and we hold the lock (taken just above).
        let v = unsafe { f(r) };
        // SAFETY: locked above, on this thread.
        unsafe { r.unlock() };
        v
    }

    #[test]
    fn a_dying_cache_is_released_exactly_once_by_the_last_reference() {
        let r = PercpuRef::new();
        assert!(locked(&r, PercpuRef::tryget_locked));
        assert!(locked(&r, PercpuRef::tryget_locked));
        assert!(
            !locked(&r, PercpuRef::kill_locked),
            "references remain: the killer does not release"
        );
        assert!(
            !locked(&r, PercpuRef::tryget_locked),
            "no new reference once dying"
        );
        assert!(!locked(&r, PercpuRef::put_locked));
        assert!(
            locked(&r, PercpuRef::put_locked),
            "the last put of a dying cache releases it"
        );
        let idle = PercpuRef::new();
        assert!(
            locked(&idle, PercpuRef::kill_locked),
            "killing an unreferenced cache releases it at once"
        );
        assert!(!locked(&idle, PercpuRef::kill_locked), "and only once");
    }
}

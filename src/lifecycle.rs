//! The two small protocols on which the scope design rests, written once, against [`crate::sync`]
//! only, so that the loom models in `tests/loom_scope.rs` check exactly this code.
//!
//! # 1. Cache life: `Life`
//! A cache (scope × size class) holds one reference per attached slab or large object. Object
//! references are counted per slab, by the slab's owner thread, without atomics (the `used` field,
//! the per-thread half of a per-CPU reference); the cache counts the slabs, under its lock (the
//! shared half, touched once per slab). While the scope is open the scope itself keeps the cache:
//! `nrefs == 0` does not release it. Closing the scope *kills* the cache: from then on no new
//! reference can be taken (`try_get` fails, the thread re-targets to the nearest open ancestor),
//! and whoever brings the count to zero in the dying state, the killer or the last `put`, is told
//! so exactly once and releases the cache.
//!
//! Race (a) of the kernel's 2014 thread: a thread obtains a cache of a scope being destroyed and
//! allocates from it after it is gone. Here a thread gets a new slab from a cache only through
//! `try_get`, under the cache lock, which fails once `kill` ran; a slab it already holds keeps the
//! cache alive by its own reference, so the cache cannot go away under it. A thread finds a cache
//! and takes its lock under the lock of the cache's scope, and the close takes the cache out of
//! the scope under that same lock before killing it (see `scope::lock_cache`): no thread can hold
//! a pointer to a released cache.
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
//! ancestor); had T2's kill come before T1's `try_get`, the `try_get` fails. No order lets a
//! thread use a released cache or release one twice; `tests/loom_scope.rs` checks every order.
//!
//! # 2. Remote free: `remote_push` / `remote_take`
//! A thread that frees an object of a slab it does not own pushes it onto the slab's
//! `thread_free` list: a lock-free stack with many pushers and one taker, which takes the whole
//! list, so there is no ABA. The list head is one 64-bit word holding the first node's address
//! (48 bits) and the number of nodes on the list (16 bits), so one CAS both pushes and counts:
//! statistics read the count (`remote_pending`) to know, exactly, how many objects of the slab are
//! freed but not yet taken. While the pusher works, the slab's `used` still counts its object, so
//! the owner cannot find the slab empty and release it; after its successful CAS the pusher
//! touches nothing: that is race (b) again, on the slab.

use crate::sync::{AtomicU64, Ordering, SpinLock};
use core::cell::UnsafeCell;

/// Reference state of a cache; see the module essay.
pub struct Life {
    lock: SpinLock,
    state: UnsafeCell<LifeState>,
}

struct LifeState {
    dying: bool,
    nrefs: usize,
}

// SAFETY: `state` is only accessed under `lock`.
unsafe impl Sync for Life {}
// SAFETY: no thread affinity.
unsafe impl Send for Life {}

impl Life {
    /// A live cache with no references.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Life {
            lock: SpinLock::new(),
            state: UnsafeCell::new(LifeState {
                dying: false,
                nrefs: 0,
            }),
        }
    }

    /// A live cache with no references.
    #[cfg(loom)]
    pub fn new() -> Self {
        Life {
            lock: SpinLock::new(),
            state: UnsafeCell::new(LifeState {
                dying: false,
                nrefs: 0,
            }),
        }
    }

    /// Re-arms a released cache for reuse.
    pub fn reset(&self) {
        self.lock.lock();
        // SAFETY: we hold the lock.
        unsafe {
            *self.state.get() = LifeState {
                dying: false,
                nrefs: 0,
            };
        }
        self.lock.unlock();
    }

    /// Takes the cache lock; the caller may then use [`Life::try_get_locked`] and the other
    /// `_locked` calls and must call [`Life::unlock`].
    pub fn lock(&self) {
        self.lock.lock();
    }

    /// Releases the lock taken by [`Life::lock`].
    pub fn unlock(&self) {
        self.lock.unlock();
    }

    /// Releases the lock in a fork child.
    pub fn force_unlock(&self) {
        self.lock.force_unlock();
    }

    /// Takes a reference unless the cache is dying. Lock held.
    pub fn try_get_locked(&self) -> bool {
        // SAFETY: the caller holds the lock.
        let st = unsafe { &mut *self.state.get() };
        if st.dying {
            return false;
        }
        st.nrefs += 1;
        true
    }

    /// Drops a reference; `true` means the caller dropped the last one of a dying cache and must
    /// release it (after unlocking). Lock held.
    pub fn put_locked(&self) -> bool {
        // SAFETY: the caller holds the lock.
        let st = unsafe { &mut *self.state.get() };
        st.nrefs -= 1;
        st.dying && st.nrefs == 0
    }

    /// Marks the cache dying; `true` means it holds no reference and the caller must release it.
    /// Lock held.
    pub fn kill_locked(&self) -> bool {
        // SAFETY: the caller holds the lock.
        let st = unsafe { &mut *self.state.get() };
        let first = !st.dying;
        st.dying = true;
        first && st.nrefs == 0
    }

    /// Whether the cache is dying. Lock held.
    pub fn is_dying_locked(&self) -> bool {
        // SAFETY: the caller holds the lock.
        unsafe { (*self.state.get()).dying }
    }

    /// References held. Lock held.
    pub fn refs_locked(&self) -> usize {
        // SAFETY: the caller holds the lock.
        unsafe { (*self.state.get()).nrefs }
    }

    /// `try_get_locked` under the lock.
    pub fn try_get(&self) -> bool {
        self.lock();
        let ok = self.try_get_locked();
        self.unlock();
        ok
    }

    /// `put_locked` under the lock.
    pub fn put(&self) -> bool {
        self.lock();
        let last = self.put_locked();
        self.unlock();
        last
    }

    /// `kill_locked` under the lock.
    pub fn kill(&self) -> bool {
        self.lock();
        let last = self.kill_locked();
        self.unlock();
        last
    }
}

impl Default for Life {
    fn default() -> Self {
        Self::new()
    }
}

/// Something that can be linked into a remote-free list through its first word.
pub trait Linked {
    /// Reads the link.
    ///
    /// # Safety
    /// `this` points to a valid node.
    unsafe fn next(this: *mut Self) -> *mut Self;
    /// Writes the link.
    ///
    /// # Safety
    /// `this` points to a valid node owned by the caller.
    unsafe fn set_next(this: *mut Self, next: *mut Self);
}

/// Bits of a remote-free list head that hold the first node's address.
const ADDR_BITS: u32 = 48;
const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;

/// Objects on a remote-free list (pushed and not yet taken).
pub fn remote_pending(head: &AtomicU64) -> u32 {
    (head.load(Ordering::Relaxed) >> ADDR_BITS) as u32
}

/// Whether a remote-free list is empty.
pub fn remote_is_empty(head: &AtomicU64) -> bool {
    head.load(Ordering::Relaxed) == 0
}

/// Pushes `node` onto a remote-free list. After this returns the caller must not touch the slab
/// that owns the list: the owner may take the node and release the slab at once.
///
/// # Safety
/// `node` is a valid node owned by the caller, not on any list, at an address below 2^48; the
/// list holds fewer than 65 535 nodes (a slab holds at most 8 192 objects).
pub unsafe fn remote_push<T: Linked>(head: &AtomicU64, node: *mut T) {
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        // SAFETY: we own node until the CAS publishes it.
        unsafe { T::set_next(node, (cur & ADDR_MASK) as *mut T) };
        let new = ((cur >> ADDR_BITS) + 1) << ADDR_BITS | node as u64;
        match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(h) => cur = h,
        }
    }
}

/// Takes the whole remote-free list: returns (first, count); the caller, the owner, now owns the
/// nodes, a null-terminated list (the first node pushed onto an empty list links to null). The
/// nodes are not touched here: a caller whose free list is empty adopts the list as it is.
///
/// # Safety
/// Only the owner of the list calls this.
pub unsafe fn remote_take<T: Linked>(head: &AtomicU64) -> (*mut T, u32) {
    let word = head.swap(0, Ordering::Acquire);
    ((word & ADDR_MASK) as *mut T, (word >> ADDR_BITS) as u32)
}

/// The last node of a null-terminated list of `n ≥ 1` nodes taken by [`remote_take`].
///
/// # Safety
/// `first` heads such a list, owned by the caller.
pub unsafe fn list_tail<T: Linked>(first: *mut T, n: u32) -> *mut T {
    let mut last = first;
    for _ in 1..n {
        // SAFETY: nodes published by remote_push were fully written before the Release CAS that
        // the taker's Acquire swap synchronises with; the count says how many there are.
        last = unsafe { T::next(last) };
    }
    last
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Node {
        next: *mut Node,
    }

    impl Linked for Node {
        unsafe fn next(this: *mut Self) -> *mut Self {
            // SAFETY: guaranteed by the caller.
            unsafe { (*this).next }
        }
        unsafe fn set_next(this: *mut Self, next: *mut Self) {
            // SAFETY: guaranteed by the caller.
            unsafe { (*this).next = next }
        }
    }

    #[test]
    fn remote_list_counts_its_nodes_and_hands_them_over_whole() {
        let head = AtomicU64::new(0);
        let mut nodes: Vec<Node> = (0..3)
            .map(|_| Node {
                next: core::ptr::null_mut(),
            })
            .collect();
        let ptrs: Vec<*mut Node> = nodes.iter_mut().map(|n| n as *mut Node).collect();
        assert!(remote_is_empty(&head));
        for (i, &p) in ptrs.iter().enumerate() {
            // SAFETY: p is a live node on no list.
            unsafe { remote_push(&head, p) };
            assert_eq!(remote_pending(&head), i as u32 + 1);
        }
        // SAFETY: this test is the list's only taker; the nodes are live.
        let (first, n) = unsafe { remote_take::<Node>(&head) };
        assert_eq!((first, n), (ptrs[2], 3), "a stack: last pushed first");
        // SAFETY: as above.
        assert_eq!(unsafe { list_tail(first, n) }, ptrs[0]);
        // SAFETY: as above.
        assert!(unsafe { Node::next(ptrs[0]) }.is_null(), "null-terminated");
        assert!(remote_is_empty(&head));
        assert_eq!(remote_pending(&head), 0);
        // SAFETY: as above.
        let (first, n) = unsafe { remote_take::<Node>(&head) };
        assert!(first.is_null() && n == 0);
    }

    #[test]
    fn a_dying_cache_is_released_exactly_once_by_the_last_reference() {
        let life = Life::new();
        assert!(life.try_get());
        assert!(life.try_get());
        assert!(
            !life.kill(),
            "references remain: the killer does not release"
        );
        assert!(!life.try_get(), "no new reference once dying");
        assert!(!life.put());
        assert!(life.put(), "the last put of a dying cache releases it");
        let idle = Life::new();
        assert!(
            idle.kill(),
            "killing an unreferenced cache releases it at once"
        );
        assert!(!idle.kill(), "and only once");
    }
}

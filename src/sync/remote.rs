//! The remote-free list: where other threads push the objects they free into a slab they do not
//! own.
//!
//! A thread that frees an object of a slab it does not own pushes it onto the slab's
//! `thread_free` list: a lock-free stack with many pushers and one taker, which takes the whole
//! list, so there is no ABA. The list head is one 64-bit word holding the first node's address
//! (48 bits) and the number of nodes on the list (16 bits), so one CAS both pushes and counts:
//! statistics read the count (`remote_pending`) to know, exactly, how many objects of the slab are
//! freed but not yet taken. While the pusher works, the slab's `used` still counts its object, so
//! the owner cannot find the slab empty and release it; after its successful CAS the pusher
//! touches nothing: that is race (b) again, on the slab.

use crate::sync::{AtomicU64, Ordering};

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
pub const ADDR_BITS: u32 = 48;
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
            // SAFETY: `this` points to a valid node (the trait's contract).
            unsafe { (*this).next }
        }
        unsafe fn set_next(this: *mut Self, next: *mut Self) {
            // SAFETY: `this` is a valid node owned by the caller (the trait's contract).
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
}

//! `fork()` support: every allocator lock is taken in the prepare handler, in the lock order,
//! and released in parent and child, so the child never inherits a lock held by a thread that
//! does not exist in it. The child's other threads' heaps are simply never used again.

use crate::{heap, scope, segment};

/// Registers the handlers (once per process, from the first thread heap's creation).
pub fn install() {
    // SAFETY: the handlers are plain functions valid for the life of the process.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(after), Some(after));
    }
}

extern "C" fn prepare() {
    scope::lock_for_fork();
    segment::lock_for_fork();
    scope::pools_lock(true);
    heap::pools_lock(true);
}

extern "C" fn after() {
    heap::pools_lock(false);
    scope::pools_lock(false);
    segment::unlock_after_fork();
    scope::unlock_after_fork();
}

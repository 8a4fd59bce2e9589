//! `fork()` hooks: the handlers are registered once; what they lock is the caller's business (the
//! thread heap layer takes every allocator lock in the global lock order, see `frontend::fork`).

use crate::sync::{AtomicBool, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A fork handler.
pub type ForkFn = unsafe extern "C" fn();

/// Registers the handlers, once per process (later calls do nothing).
pub fn install(prepare: ForkFn, parent: ForkFn, child: ForkFn) {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handlers are plain functions valid for the life of the process.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
}

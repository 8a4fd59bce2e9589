//! The atomics and the one lock of the allocator, in one place, so that `cfg(loom)` can swap in
//! loom's model-checked types (`RUSTFLAGS="--cfg loom" cargo test --release --test loom_scope`).
//!
//! Under loom only the protocol modules ([`crate::lifecycle`]) are compiled: they are written
//! against these names and nothing else.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};

pub use core::sync::atomic::Ordering;

/// A test-and-test-and-set spin lock that yields the CPU after a short spin.
///
/// It is not re-entrant: the allocator never takes a lock it may already hold (it never calls
/// back into itself while holding one), and never allocates while holding one. Every lock is taken
/// in `fork`'s prepare handler and released in parent and child, so a child never inherits a held
/// lock. Lock order (outer to inner): scope tree lock → cache lock → backend lock → pool lock.
pub struct SpinLock {
    locked: AtomicBool,
}

impl SpinLock {
    /// An unlocked lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// An unlocked lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock, spinning and then yielding while another thread holds it.
    #[inline]
    pub fn lock(&self) {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        self.lock_contended();
    }

    #[cold]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                spins += 1;
                backoff(spins);
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Releases the lock taken by [`SpinLock::lock`] on this thread.
    #[inline]
    pub fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Releases the lock in a `fork` child, where the thread that took it in the prepare handler
    /// is the only thread left.
    pub fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl Default for SpinLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
#[inline]
fn backoff(spins: u32) {
    if spins < 64 {
        core::hint::spin_loop();
    } else {
        // SAFETY: sched_yield has no preconditions and does not allocate.
        unsafe {
            libc::sched_yield();
        }
    }
}

#[cfg(loom)]
fn backoff(_spins: u32) {
    loom::thread::yield_now();
}

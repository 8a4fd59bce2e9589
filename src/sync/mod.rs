//! The atomics and the locks of the allocator, in one place, so that `cfg(loom)` can swap in
//! loom's model-checked types (`RUSTFLAGS="--cfg loom" cargo test --release --test loom_scope`),
//! and the remote-free list built on them.
//!
//! Two locks: [`RawLock`], a bare spin lock for locks whose holder is a protocol state (a cache
//! lock is taken in one function and released in another, see `objects::protocol::lock_live_cache`),
//! and [`SpinLock<T>`], which owns the data it guards and hands it out only through a guard, so
//! that holding the guard is the proof that the lock is held.
//!
//! Lock order (outer to inner), the same everywhere and in `fork`'s prepare handler: scope tree
//! lock → scope node lock → cache lock → sweep-list lock → back-end lock → huge-cache lock →
//! pool locks. The
//! allocator never takes a lock it may already hold, and never allocates or calls back into
//! itself while holding one.

pub mod remote;

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};

pub use core::sync::atomic::Ordering;

/// A test-and-test-and-set spin lock that yields the CPU after a short spin.
///
/// It is not re-entrant. Every lock is taken in `fork`'s prepare handler and released in parent
/// and child, so a child never inherits a held lock.
pub struct RawLock {
    locked: AtomicBool,
}

impl RawLock {
    /// An unlocked lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawLock {
            locked: AtomicBool::new(false),
        }
    }

    /// An unlocked lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawLock {
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

    /// Releases the lock taken by [`RawLock::lock`] on this thread.
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

impl Default for RawLock {
    fn default() -> Self {
        Self::new()
    }
}

/// A spin lock that owns the `T` it guards: the data is reached only through the guard that
/// [`SpinLock::lock`] returns, and the lock is released when the guard is dropped.
pub struct SpinLock<T> {
    raw: RawLock,
    /// No system call may run while this lock is held (checked in debug builds: the platform
    /// layer asserts [`syscalls_allowed`]).
    #[cfg_attr(not(all(debug_assertions, not(loom))), allow(dead_code))]
    no_syscalls: bool,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, and one guard exists at a time (the lock).
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above; moving the lock moves the data.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock around `data`.
    #[cfg(not(loom))]
    pub const fn new(data: T) -> Self {
        SpinLock {
            raw: RawLock::new(),
            no_syscalls: false,
            data: UnsafeCell::new(data),
        }
    }

    /// An unlocked lock around `data` under which no system call may run (the back end's:
    /// every other thread that needs it would spin through the call).
    #[cfg(not(loom))]
    pub const fn new_no_syscalls(data: T) -> Self {
        SpinLock {
            raw: RawLock::new(),
            no_syscalls: true,
            data: UnsafeCell::new(data),
        }
    }

    /// An unlocked lock around `data`.
    #[cfg(loom)]
    pub fn new(data: T) -> Self {
        SpinLock {
            raw: RawLock::new(),
            no_syscalls: false,
            data: UnsafeCell::new(data),
        }
    }

    /// Takes the lock; the guard gives access to the data and releases the lock when dropped.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.raw.lock();
        #[cfg(all(debug_assertions, not(loom)))]
        if self.no_syscalls {
            NO_SYSCALLS.with(|d| d.set(d.get() + 1));
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock for `fork`'s prepare handler and keeps it until [`SpinLock::force_unlock`].
    pub fn lock_for_fork(&self) {
        self.raw.lock();
    }

    /// Releases the lock in `fork`'s parent and child handlers (taken by
    /// [`SpinLock::lock_for_fork`] on the forking thread).
    pub fn force_unlock(&self) {
        self.raw.force_unlock();
    }
}

/// Proof that a [`SpinLock`] is held; derefs to the data.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held, so no other reference to the
        // data exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(all(debug_assertions, not(loom)))]
        if self.lock.no_syscalls {
            NO_SYSCALLS.with(|d| d.set(d.get() - 1));
        }
        self.lock.raw.unlock();
    }
}

#[cfg(all(debug_assertions, not(loom)))]
thread_local! {
    /// Debug builds: how many locks under which no system call may run this thread holds.
    static NO_SYSCALLS: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// Whether this thread may make a system call: it holds no lock made with
/// [`SpinLock::new_no_syscalls`]. Always true in release builds (the check is for debug builds).
#[inline]
pub fn syscalls_allowed() -> bool {
    #[cfg(all(debug_assertions, not(loom)))]
    return NO_SYSCALLS.with(|d| d.get() == 0);
    #[cfg(not(all(debug_assertions, not(loom))))]
    true
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

//! A wake-up event for a thread outside the allocator: the allocation path *signals* it (one
//! atomic add, and a `futex` wake only when a thread is waiting), a notifier thread *waits* on
//! it. Signalling never allocates, never takes a lock and never calls back into the allocator,
//! so it may run anywhere, with any allocator state held.
//!
//! # Who may touch what
//! - `seq` is raised by every signaller; a waiter sleeps while it still holds the value the
//!   waiter last saw (the kernel checks that atomically with going to sleep).
//! - `waiters` counts the threads inside [`Event::wait`]. A signaller that reads 0 skips the
//!   system call. Both sides use `SeqCst` in the order "write mine, then read theirs" (the
//!   signaller raises `seq` then reads `waiters`; a waiter raises `waiters` then reads `seq`), so
//!   at least one of them sees the other: either the signaller wakes the waiter, or the waiter
//!   sees the new `seq` and does not sleep.

use crate::sync::{AtomicU32, Ordering};

/// A sequence that signallers raise and one waiter sleeps on (a futex word).
pub struct Event {
    seq: AtomicU32,
    waiters: AtomicU32,
}

impl Event {
    /// An event nobody has signalled.
    pub const fn new() -> Self {
        Event {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        }
    }

    /// The current sequence: pass it to [`Event::wait`] after looking at what it guards.
    pub fn seq(&self) -> u32 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Raises the sequence and wakes the waiters, if any.
    pub fn signal(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            // SAFETY: FUTEX_WAKE on a word of ours takes no user-space lock, does not allocate
            // and only reads the address it is given.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.seq.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    i32::MAX,
                );
            }
        }
    }

    /// Sleeps until the sequence differs from `seen` or `timeout_ms` passes (spurious wake-ups
    /// return early too: callers re-check what they wait for).
    pub fn wait(&self, seen: u32, timeout_ms: u64) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if self.seq.load(Ordering::SeqCst) == seen {
            let ts = libc::timespec {
                tv_sec: (timeout_ms / 1000) as libc::time_t,
                tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
            };
            // SAFETY: FUTEX_WAIT reads our word and the timespec on our stack; it returns at
            // once if the word no longer holds `seen`.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.seq.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    seen,
                    &ts as *const libc::timespec,
                );
            }
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for Event {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_wakes_a_waiting_thread_and_a_stale_sequence_does_not_sleep() {
        static E: Event = Event::new();
        let seen = E.seq();
        E.signal();
        let t0 = std::time::Instant::now();
        E.wait(seen, 10_000); // the sequence moved: returns at once
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        let seen = E.seq();
        let waiter = std::thread::spawn(move || {
            while E.seq() == seen {
                E.wait(seen, 10_000);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        E.signal();
        waiter.join().unwrap();
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    }
}

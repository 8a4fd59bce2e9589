//! The failure hook: tests make the platform's calls fail on demand.
//!
//! Each kind of call has a countdown: `Some(k)` lets the next k calls of that kind succeed and
//! makes every later one fail, until the countdown is disarmed with `None`. Only tests arm it
//! ([`crate::testing`]); disarmed, a check costs one relaxed load. A refused call does not reach
//! the OS: the caller sees the same error as if the kernel had said no.

use crate::sync::{AtomicU64, Ordering};

/// The platform calls that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `mmap` of fresh memory (segments, huge objects, metadata chunks).
    Map,
    /// `munmap` (segments, huge objects, the trimmed ends of an aligned mapping, scratch
    /// buffers).
    Unmap,
    /// `madvise(MADV_DONTNEED)` (the decay's purge of free pages, metadata pools' trim).
    Purge,
    /// `pthread_key_create` (the thread-exit key).
    KeyCreate,
}

/// Number of [`Call`] kinds.
const CALLS: usize = 4;

impl Call {
    fn index(self) -> usize {
        match self {
            Call::Map => 0,
            Call::Unmap => 1,
            Call::Purge => 2,
            Call::KeyCreate => 3,
        }
    }
}

const OFF: u64 = u64::MAX;
/// Per call kind: successes left before every call fails (`OFF`: disarmed).
static AFTER: [AtomicU64; CALLS] = [const { AtomicU64::new(OFF) }; CALLS];
/// Per call kind: calls made so far (refused ones included).
static MADE: [AtomicU64; CALLS] = [const { AtomicU64::new(0) }; CALLS];

/// Calls of this kind made so far (refused ones included), for tests that sweep a failure over
/// every call a workload makes.
pub fn calls(call: Call) -> u64 {
    MADE[call.index()].load(Ordering::Relaxed)
}

/// Arms (`Some(k)`: the next k calls succeed, then all fail) or disarms (`None`) the hook.
pub fn set_fail_after(call: Call, n: Option<u64>) {
    AFTER[call.index()].store(n.unwrap_or(OFF), Ordering::SeqCst);
}

/// Whether this call must fail (and, if it may succeed, one fewer success remains).
pub fn refuses(call: Call) -> bool {
    MADE[call.index()].fetch_add(1, Ordering::Relaxed);
    let c = &AFTER[call.index()];
    let mut cur = c.load(Ordering::Relaxed);
    loop {
        if cur == OFF {
            return false;
        }
        if cur == 0 {
            return true;
        }
        match c.compare_exchange(cur, cur - 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return false,
            Err(v) => cur = v,
        }
    }
}

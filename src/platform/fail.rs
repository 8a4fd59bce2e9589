//! The failure hook: tests make the platform's calls fail on demand.
//!
//! Each kind of call has a countdown: `Some(k)` lets the next k calls of that kind succeed and
//! makes every later one fail, until the countdown is disarmed with `None`; and a chance: each
//! call fails with probability `p`, drawn from one seeded generator shared by every kind (a
//! counter stepped with an atomic add and mixed by splitmix64: no lock, and the same sequence of
//! calls from one thread gives the same refusals for the same seed). Only tests arm them
//! ([`crate::testing`], or `SCOPEALLOC_FAIL` in a `fault-injection` build of the C library);
//! disarmed, a check costs two relaxed loads. A refused call does not reach the OS: the caller
//! sees the same error as if the kernel had said no.

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
    /// Secure build: `mprotect` (guard pages made inaccessible, or accessible again).
    #[cfg(feature = "secure")]
    Protect,
}

/// Number of [`Call`] kinds.
const CALLS: usize = if cfg!(feature = "secure") { 5 } else { 4 };

impl Call {
    fn index(self) -> usize {
        match self {
            Call::Map => 0,
            Call::Unmap => 1,
            Call::Purge => 2,
            Call::KeyCreate => 3,
            #[cfg(feature = "secure")]
            Call::Protect => 4,
        }
    }
}

const OFF: u64 = u64::MAX;
/// Per call kind: successes left before every call fails (`OFF`: disarmed).
static AFTER: [AtomicU64; CALLS] = [const { AtomicU64::new(OFF) }; CALLS];
/// Per call kind: calls made so far (refused ones included).
static MADE: [AtomicU64; CALLS] = [const { AtomicU64::new(0) }; CALLS];
/// Per call kind: a call fails when the next random draw is below this (0: never).
static CHANCE: [AtomicU64; CALLS] = [const { AtomicU64::new(0) }; CALLS];
/// The random generator's counter (splitmix64's state).
static DRAWS: AtomicU64 = AtomicU64::new(0);
/// The splitmix64 increment.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Calls of this kind made so far (refused ones included), for tests that sweep a failure over
/// every call a workload makes.
pub fn calls(call: Call) -> u64 {
    MADE[call.index()].load(Ordering::Relaxed)
}

/// Arms (`Some(k)`: the next k calls succeed, then all fail) or disarms (`None`) the hook.
pub fn set_fail_after(call: Call, n: Option<u64>) {
    AFTER[call.index()].store(n.unwrap_or(OFF), Ordering::SeqCst);
}

/// Makes every call of this kind fail with probability `per_million / 1_000_000` (0 disarms),
/// and restarts the shared generator from `seed`.
pub fn set_fail_randomly(call: Call, seed: u64, per_million: u32) {
    let p = u64::from(per_million.min(1_000_000));
    // The draw is uniform over u64: fail below p / 10^6 of its range (all of it at 10^6).
    let threshold = if p == 1_000_000 {
        u64::MAX
    } else {
        ((u128::from(p) << 64) / 1_000_000) as u64
    };
    DRAWS.store(seed, Ordering::SeqCst);
    CHANCE[call.index()].store(threshold, Ordering::SeqCst);
}

/// The next draw of the shared generator (splitmix64 over an atomic counter).
fn draw() -> u64 {
    let mut z = DRAWS
        .fetch_add(GOLDEN, Ordering::Relaxed)
        .wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether this call must fail (and, if it may succeed, one fewer success remains).
pub fn refuses(call: Call) -> bool {
    MADE[call.index()].fetch_add(1, Ordering::Relaxed);
    let chance = CHANCE[call.index()].load(Ordering::Relaxed);
    if chance != 0 && draw() < chance {
        return true;
    }
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

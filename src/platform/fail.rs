//! The failure hook: tests make the platform's calls fail on demand.
//!
//! Each kind of call has a countdown: `Some(k)` lets the next k calls of that kind succeed and
//! makes every later one fail, until the countdown is disarmed with `None`. Only tests arm it
//! ([`crate::testing`]); disarmed, a check costs one relaxed load.

use crate::sync::{AtomicU64, Ordering};

/// The platform calls that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `mmap` of fresh memory (segments, huge objects, metadata chunks).
    Map,
    /// `pthread_key_create` (the thread-exit key).
    KeyCreate,
}

const OFF: u64 = u64::MAX;
static MAP_AFTER: AtomicU64 = AtomicU64::new(OFF);
static KEY_AFTER: AtomicU64 = AtomicU64::new(OFF);

static MAP_CALLS: AtomicU64 = AtomicU64::new(0);
static KEY_CALLS: AtomicU64 = AtomicU64::new(0);

/// Calls of this kind made so far (refused ones included), for tests that sweep a failure over
/// every call a workload makes.
pub fn calls(call: Call) -> u64 {
    match call {
        Call::Map => &MAP_CALLS,
        Call::KeyCreate => &KEY_CALLS,
    }
    .load(Ordering::Relaxed)
}

fn counter(call: Call) -> &'static AtomicU64 {
    match call {
        Call::Map => &MAP_AFTER,
        Call::KeyCreate => &KEY_AFTER,
    }
}

/// Arms (`Some(k)`: the next k calls succeed, then all fail) or disarms (`None`) the hook.
pub fn set_fail_after(call: Call, n: Option<u64>) {
    counter(call).store(n.unwrap_or(OFF), Ordering::SeqCst);
}

/// Whether this call must fail (and, if it may succeed, one fewer success remains).
pub fn refuses(call: Call) -> bool {
    match call {
        Call::Map => &MAP_CALLS,
        Call::KeyCreate => &KEY_CALLS,
    }
    .fetch_add(1, Ordering::Relaxed);
    let c = counter(call);
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

//! Maintenance: the periodic upkeep of a thread heap, `trim`, and dropping closed tables.

use super::abandon::sweep_abandoned;
use super::free::release_slab;
use super::refill::{set_current, take_all_remote_frees};
use super::slow_paths::{count_in, Slow};
use super::table::{current_of, empty_slab, list_head};
use super::table::{drop_closed, TABLES};
use super::thread_heap::HEAPS;
use super::thread_heap::{tls_heap, Heap};
use crate::backend::decay;
use crate::objects::size_class::NCLASSES;
use crate::platform::os;
use crate::sync::{AtomicU64, Ordering};

/// freed, empty slabs released (`force`), abandoned slabs swept, the decay run.
pub(super) unsafe fn maintenance(h: *mut Heap, force: bool) {
    // SAFETY: h is this thread's heap.
    unsafe {
        count_in(h, Slow::Maintenance, 1);
        drop_closed(h);
        if force {
            let mut t = (*h).tables;
            while !t.is_null() {
                if !(*t).dead {
                    take_all_remote_frees(t);
                    for class in 0..NCLASSES {
                        let mut s = list_head(t, class);
                        while !s.is_null() {
                            let next = (*s).tnext;
                            if (*s).used.load(Ordering::Relaxed) == 0 {
                                if current_of(t, class) == s {
                                    set_current(t, class, empty_slab());
                                }
                                release_slab(t, s);
                            }
                            s = next;
                        }
                    }
                }
                t = (*t).next;
            }
        }
    }
    let now = os::now_ms();
    let due = NEXT_SWEEP.load(Ordering::Relaxed);
    if force
        || (now >= due
            && NEXT_SWEEP
                .compare_exchange(
                    due,
                    now + decay::DECAY_MS.load(Ordering::Relaxed).max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok())
    {
        sweep_abandoned();
    }
    #[cfg(feature = "secure")]
    super::quarantine::expire(force);
    decay::tick(force);
}

pub(super) static NEXT_SWEEP: AtomicU64 = AtomicU64::new(0);

/// `trim()`: everything this thread can give back, now.
pub fn trim() {
    let h = tls_heap();
    if !h.is_null() {
        // SAFETY: h is this thread's heap.
        unsafe { maintenance(h, true) };
    } else {
        sweep_abandoned();
        #[cfg(feature = "secure")]
        super::quarantine::expire(true);
        decay::tick(true);
    }
}

/// Returns the pages of freed heaps and tables to the OS (`trim`).
pub fn trim_pools() {
    HEAPS.trim();
    TABLES.trim();
}

/// Drops this thread's tables of closed scopes (for `global_stats`).
pub fn drop_closed_tables() {
    let h = tls_heap();
    if !h.is_null() {
        // SAFETY: h is this thread's heap.
        unsafe { drop_closed(h) };
    }
}

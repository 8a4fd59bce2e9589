//! The public API: the `GlobalAlloc`, scope handles, statistics and controls, the raw C-shaped
//! entry points and test hooks. The top layer: imports every layer below.

mod events;
mod global_alloc;
mod handle;
mod instrument;
mod leaks;
pub mod raw;
mod report;
#[doc(hidden)]
pub mod testing;

pub use crate::frontend::slow_paths::{slow_paths, SlowPaths};
pub use crate::objects::stats::{ScopeEvents, ScopeStats};
pub use global_alloc::{usable_size, ScopeAlloc};
pub use handle::{Scope, ScopeGuard};
pub use instrument::Instrumented;
pub use leaks::{ClassLeaks, CloseLeaks};
#[cfg(feature = "prometheus-client")]
pub use report::ScopeCollector;
pub use report::{ClassKind, ClassReport, Metrics, Report, ScopeReport, Text};

use crate::backend::decay;
use crate::frontend::{abandon, maintenance, thread_heap};
use crate::objects::scope;
use crate::platform::os;
use crate::sync::Ordering;

/// Returns to the OS all the free memory it can, now: this thread's empty slabs, empty slabs of
/// exited threads, every free page, and the pages of released scope, table and heap metadata.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let v = vec![0u8; 8 << 20];
/// drop(v);
/// scopealloc::trim();
/// assert_eq!(scopealloc::heap_stats().cached, 0, "no free page stays committed");
/// ```
pub fn trim() {
    maintenance::trim();
    scope::trim_pools();
    maintenance::trim_pools();
}

/// How long free pages stay committed before the decay gives them back (default 1000 ms; 0 =
/// at once). The decay runs on allocator activity (slab and large-object traffic) and at
/// [`trim`].
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// scopealloc::set_decay_ms(0); // return free pages at once
/// let v = vec![1u8; 1 << 20];
/// drop(v);
/// assert!(scopealloc::heap_stats().returned > 0);
/// scopealloc::set_decay_ms(1000);
/// ```
pub fn set_decay_ms(ms: u64) {
    decay::DECAY_MS.store(ms, Ordering::Relaxed);
}

/// Starts (once per process) a background thread that runs the decay every `decay/2` ms even
/// when the program makes no allocator calls, so that idle memory goes back to the OS; without
/// it, the decay runs on allocator activity and at [`trim`]. Returns false if it was already
/// running or the thread could not be spawned.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// assert!(scopealloc::start_background_decay());
/// assert!(!scopealloc::start_background_decay(), "once per process");
/// ```
pub fn start_background_decay() -> bool {
    use std::sync::atomic::AtomicBool;
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return false;
    }
    std::thread::Builder::new()
        .name("scopealloc-decay".into())
        .spawn(|| loop {
            let ms = decay::DECAY_MS.load(Ordering::Relaxed).max(2);
            std::thread::sleep(std::time::Duration::from_millis(ms / 2));
            abandon::sweep_abandoned();
            decay::tick(false);
        })
        .is_ok()
}

/// Figures of the allocator's memory, for tests and benchmarks.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let v = vec![0u8; 1 << 20];
/// let st = scopealloc::heap_stats();
/// assert!(st.in_use >= 1 << 20 && st.mapped >= st.committed);
/// drop(v);
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Address space mapped from the OS now (segments, huge objects, metadata).
    pub mapped: usize,
    /// `mapped` less what was given back with `madvise`: an upper bound of the resident memory.
    pub committed: usize,
    /// Bytes in pages handed to slabs and large objects.
    pub in_use: usize,
    /// Free pages kept committed for reuse, given back by the decay or [`trim`].
    pub cached: usize,
    /// Bytes given back to the OS since start (madvise and munmap).
    pub returned: usize,
    /// Address space mapped for the allocator's own metadata (scopes, caches, thread heaps,
    /// tables, their indexes); part of `mapped`.
    pub metadata: usize,
}

/// Current [`HeapStats`].
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let st = scopealloc::heap_stats();
/// assert!(st.committed <= st.mapped);
/// ```
pub fn heap_stats() -> HeapStats {
    let (in_use, cached) = crate::backend::figures();
    let mapped = os::MAPPED.load(Ordering::Relaxed);
    HeapStats {
        mapped,
        committed: mapped.saturating_sub(os::PURGED.load(Ordering::Relaxed)),
        in_use,
        cached,
        returned: os::RETURNED.load(Ordering::Relaxed),
        metadata: crate::backend::pool::METADATA_MAPPED.load(Ordering::Relaxed),
    }
}

/// A report of the whole scope tree: [`Scope::report`] of the root.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let tenant = scopealloc::Scope::root().child("whole-tree-doc");
/// let r = scopealloc::report();
/// assert_eq!(r.scopes[0].path, ""); // the root
/// assert!(r.get("whole-tree-doc").is_some());
/// ```
pub fn report() -> Report {
    Scope::root().report()
}

/// Process-wide counts, to check that nothing leaks.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let before = scopealloc::global_stats();
/// let s = scopealloc::Scope::root().child("short-lived");
/// s.run(|| drop(vec![1u8; 100]));
/// drop(s); // the last handle: the scope closes and, holding nothing, is released
/// let after = scopealloc::global_stats();
/// assert_eq!(after.live_scopes, before.live_scopes);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Open scopes, the root included.
    pub live_scopes: usize,
    /// Closed scopes whose memory is not yet released (objects, handles or threads' tables
    /// still refer to them).
    pub closed_scopes_pending: usize,
    /// Caches (scope × size class) in existence, dying ones included.
    pub live_caches: usize,
    /// Caches of closed scopes that still hold objects.
    pub dying_caches: usize,
    /// Thread heaps in use.
    pub thread_heaps: usize,
}

/// Current [`GlobalStats`] First drops the calling thread's tables of closed scopes (other
/// threads retire theirs on their next allocator slow path, scope entry or exit).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// assert!(scopealloc::global_stats().live_scopes >= 1, "the root is always open");
/// ```
pub fn global_stats() -> GlobalStats {
    maintenance::drop_closed_tables();
    let (live_scopes, closed_scopes_pending, live_caches, dying_caches) = scope::counts();
    GlobalStats {
        live_scopes,
        closed_scopes_pending,
        live_caches,
        dying_caches,
        thread_heaps: thread_heap::heaps_in_use(),
    }
}

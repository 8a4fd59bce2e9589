//! Hooks for tests.

/// The OS calls the failure hook can refuse ([`fail_after`]).
pub use crate::platform::fail::Call as OsCall;

/// `Some(k)`: the next k calls of this kind succeed, then every one fails (as if the OS had
/// said no) until `fail_after(call, None)`.
pub fn fail_after(call: OsCall, n: Option<u64>) {
    crate::platform::fail::set_fail_after(call, n);
}

/// Makes each call of this kind fail with probability `per_million / 1_000_000` (0 disarms),
/// drawn from a generator shared by all kinds and restarted from `seed`: one thread making the
/// same calls sees the same refusals for the same seed.
pub fn fail_randomly(call: OsCall, seed: u64, per_million: u32) {
    crate::platform::fail::set_fail_randomly(call, seed, per_million);
}

/// Calls of this kind made since start (refused ones included).
pub fn os_calls(call: OsCall) -> u64 {
    crate::platform::fail::calls(call)
}

/// Where the address space mapped from the OS is, as the allocator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedCensus {
    /// Bytes mapped and not unmapped, counted at the system calls (`heap_stats().mapped`).
    pub mapped: usize,
    /// Bytes the back end holds: segments, huge mappings (cached ones included), metadata.
    pub held: usize,
    /// Bytes whose `munmap` failed, waiting to be unmapped again (the next decay tick or
    /// `trim`).
    pub deferred: usize,
}

/// The census of mapped memory: at rest (no report being built by another thread),
/// `mapped == held + deferred`, or memory was lost.
pub fn mapped_census() -> MappedCensus {
    MappedCensus {
        mapped: crate::platform::os::MAPPED.load(crate::sync::Ordering::Relaxed),
        held: crate::backend::census(),
        deferred: crate::platform::os::deferred_bytes(),
    }
}

/// `Some(k)`: the next k OS mappings succeed, then every mapping fails until
/// `os_fail_after(None)`.
pub fn os_fail_after(n: Option<u64>) {
    crate::platform::fail::set_fail_after(crate::platform::fail::Call::Map, n);
}

/// OS mappings asked for since start (refused ones included).
pub fn os_map_calls() -> u64 {
    crate::platform::fail::calls(crate::platform::fail::Call::Map)
}

/// `Some(k)`: the next k `pthread_key_create` calls succeed, then every one fails until
/// `key_create_fail_after(None)`.
pub fn key_create_fail_after(n: Option<u64>) {
    crate::platform::fail::set_fail_after(crate::platform::fail::Call::KeyCreate, n);
}

/// Tables the calling thread's scope lookups (entering a scope, following a closed one) have
/// looked at since it started: a lookup in constant time adds a bounded number per lookup.
pub fn table_lookup_visits() -> u64 {
    crate::frontend::table::lookup_visits()
}

/// Thread tables in existence, over all threads (freed tables excluded).
pub fn tables_in_use() -> usize {
    crate::frontend::table::tables_in_use()
}

/// Tables' per-class arrays in existence: a table maps them only once it has slabs of its own,
/// so a table whose objects all sit in shared slabs costs no arrays.
pub fn class_arrays_in_use() -> usize {
    crate::frontend::table::class_arrays_in_use()
}

/// Stubs in existence: one per (thread, scope, size class) whose objects sit in shared slabs.
pub fn stubs_in_use() -> usize {
    crate::frontend::shared::stubs_in_use()
}

/// Whether tables made from now on allocate their first objects of each class from shared
/// slabs (on by default; off gives every scope slabs of its own, for comparisons).
pub fn set_sharing(on: bool) {
    crate::frontend::shared::SHARING.store(on, crate::sync::Ordering::Relaxed);
}

/// (longest hold of the tree lock by an abandoned-slab sweep batch in ns, most caches looked at
/// in one hold) since start.
pub fn sweep_figures() -> (u64, u64) {
    use crate::frontend::abandon::{SWEEP_LONGEST_HOLD_NS, SWEEP_MOST_CACHES_PER_HOLD};
    use crate::sync::Ordering;
    (
        SWEEP_LONGEST_HOLD_NS.load(Ordering::Relaxed),
        SWEEP_MOST_CACHES_PER_HOLD.load(Ordering::Relaxed),
    )
}

/// (longest hold of the tree lock by a report's snapshot in ns since start, the last one).
pub fn report_hold_ns() -> (u64, u64) {
    use crate::objects::snapshot::{LAST_HOLD_NS, LONGEST_HOLD_NS};
    use crate::sync::Ordering;
    (
        LONGEST_HOLD_NS.load(Ordering::Relaxed),
        LAST_HOLD_NS.load(Ordering::Relaxed),
    )
}

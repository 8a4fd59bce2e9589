//! The accounting layer: the hierarchical charge counter of a scope, the per-thread stocks that
//! charge it in batches, and the split reference count that decides when a cache is released.
//! Imports only `sync` (and `platform`).

#[cfg(not(loom))]
pub mod counter;
pub mod percpu_ref;
#[cfg(not(loom))]
pub mod stock;

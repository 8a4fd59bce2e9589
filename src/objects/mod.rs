//! The object layer: size classes, slabs (the descriptor laid over a back-end span and what a
//! slab does with its objects), caches (scope × size class), the scope tree (create, close,
//! reparent) and statistics. Imports `accounting`, `backend`, `sync` and `platform`; knows
//! nothing of threads' tables or heaps (a slab's owner table is an opaque pointer here). Under
//! `cfg(loom)` only `protocol` (the protocol's concurrent steps) is compiled.

#[cfg(not(loom))]
pub mod cache;
#[cfg(all(feature = "secure", not(loom)))]
pub mod canary;
#[cfg(all(feature = "secure", not(loom)))]
pub mod free_list;
pub mod protocol;
#[cfg(not(loom))]
pub mod scope;
#[cfg(not(loom))]
pub mod size_class;
#[cfg(not(loom))]
pub mod slab;
#[cfg(not(loom))]
pub mod snapshot;
#[cfg(not(loom))]
pub mod stats;

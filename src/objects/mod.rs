//! The object layer: size classes, slabs (the descriptor laid over a back-end span and what a
//! slab does with its objects), caches (scope × size class), the scope tree (create, close,
//! reparent) and statistics. Imports `accounting`, `backend`, `sync` and `platform`; knows
//! nothing of threads' tables or heaps (a slab's owner table is an opaque pointer here).

pub mod cache;
pub mod scope;
pub mod size_class;
pub mod slab;
pub mod stats;

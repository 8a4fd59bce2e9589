//! The front end: per-thread heaps and their per-scope tables, the malloc and free paths, large
//! objects, abandonment at thread exit and scope close, and maintenance. Imports every layer
//! below; nothing below imports it.
//!
//! ```text
//! malloc: alloc::alloc_small ──(miss)──► refill::alloc_slow ─► refill::find_slab ─► new_slab
//!                                                └► stock refill (accounting::stock)
//! free:   free::free ──(local)──► push, used -= 1, stock += size ─(slab empty)─► release_slab
//!              └─(other thread)─► free_slow ─► protocol::free_not_owned: remote_push | free_abandoned_locked
//!                                          └─(large)─► large::free_large
//! ```

pub mod abandon;
pub mod alloc;
pub mod free;
pub mod large;
pub mod maintenance;
#[cfg(feature = "secure")]
mod quarantine;
pub mod refill;
pub mod shared;
pub mod slow_paths;
pub mod table;
pub mod thread_heap;

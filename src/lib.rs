//! # scopealloc
//!
//! A fast general-purpose memory allocator with **hierarchical accounting scopes**: every
//! allocation is charged to the calling thread's current scope, scopes form a tree, each knows its
//! bytes and objects exactly (descendants included) and may carry a hard limit that live memory
//! never passes. Closing a scope moves its charges to the nearest open ancestor while its objects
//! live on.
//!
//! ```
//! use scopealloc::{Scope, ScopeAlloc};
//!
//! #[global_allocator]
//! static GLOBAL: ScopeAlloc = ScopeAlloc::new();
//!
//! let tenant = Scope::root().child("tenant-a");
//! tenant.set_limit(Some(64 << 20));
//! let request = tenant.child("request-1");
//! let v = request.run(|| vec![0u8; 1 << 20]);
//! assert!(request.stats().bytes >= 1 << 20);
//! assert!(tenant.stats().bytes >= 1 << 20); // parents include their descendants
//! request.close(); // charges move to `tenant`; `v` stays valid
//! assert!(tenant.stats().self_bytes >= 1 << 20);
//! drop(v);
//! assert_eq!(tenant.stats().bytes, 0);
//! ```
//!
//! Nothing unsound is reachable from safe code: the reference state of a cache, once public as
//! `lifecycle::Life` with safe `_locked` calls that mutated its state without the lock, is
//! private, and its `_locked` calls are `unsafe fn`s whose contract is that the lock is held:
//!
//! ```compile_fail
//! let r = scopealloc::lifecycle::Life::new(); // no such public item any more
//! r.try_get_locked();
//! ```
//!
//! See `docs/ARCHITECTURE.md` for the design and the protocol essays at the top of the
//! modules (`accounting::percpu_ref`, `objects::scope`, `frontend`).

#![cfg_attr(loom, allow(dead_code, unused_imports))]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

// Layers, bottom to top; each imports only from the layers above it in this list (see
// docs/ARCHITECTURE.md).
#[cfg(not(loom))]
mod accounting;
#[cfg(loom)]
pub mod accounting;
#[cfg(not(loom))]
mod api;
#[cfg(not(loom))]
mod backend;
#[cfg(not(loom))]
mod frontend;
#[cfg(not(loom))]
mod objects;
#[cfg(loom)]
pub mod objects;
#[cfg(not(loom))]
mod platform;
#[cfg(not(loom))]
mod sync;
#[cfg(loom)]
pub mod sync;

#[cfg(not(loom))]
pub use api::*;
#[cfg(not(loom))]
pub use objects::size_class;

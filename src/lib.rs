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
//! See `docs/ARCHITECTURE.md` for the design and the protocol essays at the top of the
//! `lifecycle`, `scope` and `heap` modules.

#![cfg_attr(loom, allow(dead_code, unused_imports))]

pub mod lifecycle;
pub mod sync;

#[cfg(not(loom))]
mod fork;
#[cfg(not(loom))]
mod heap;
#[cfg(not(loom))]
mod os;
#[cfg(not(loom))]
mod pool;
#[cfg(not(loom))]
mod scope;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
pub mod size_class;

#[cfg(not(loom))]
mod api;
#[cfg(not(loom))]
pub use api::*;

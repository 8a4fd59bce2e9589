//! `libscopealloc.so` / `libscopealloc.a`: the C ABI of scopealloc.
//!
//! * [`malloc`] — the malloc family under glibc's names and semantics, so that
//!   `LD_PRELOAD=libscopealloc.so program` runs any program on scopealloc;
//! * [`scopes`] — scopes from C (`include/scopealloc.h`);
//! * [`options`] — `SCOPEALLOC_*` environment variables, read by a constructor;
//! * [`report`] — the statistics report (`SCOPEALLOC_STATS`, `scopealloc_print_stats`,
//!   `scopealloc_report`);
//! * [`signal`] — a report of a running process on `SCOPEALLOC_STATS_SIGNAL`;
//! * [`out`] — lines formatted on the stack and written with `write(2)`;
//! * `faults` — `SCOPEALLOC_FAIL`, the OS refusing calls on demand (only with the
//!   `fault-injection` feature, for tests; see `tests/ffi_faults.rs`).
//!
//! Nothing reachable from the allocation functions allocates, formats with `core::fmt`, or
//! unwinds: the release profile builds with `panic = "abort"`, and a panic can never cross an
//! `extern "C"` function anyway (Rust aborts the process when one tries).
//!
//! The library's own Rust allocations (the vector of `Scope::children` in the report) go to
//! the core directly through the global allocator below, not through the exported `malloc`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

// In the crate's unit tests the test harness is a normal program on glibc's malloc: exporting
// `malloc` and `free` there would mix the two allocators.
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(not(test))]
pub mod malloc;
pub mod options;
pub mod out;
pub mod report;
pub mod scopes;
pub mod signal;

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

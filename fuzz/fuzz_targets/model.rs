//! The model harness of tests/model.rs driven by the fuzzer's bytes on one thread: every
//! operation's choice (size, alignment, scope, free, realloc, open, close, limit) comes from the
//! input, and the figures, contents and limits are checked after every few operations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scopealloc::{Scope, ScopeAlloc};
use std::sync::OnceLock;

#[path = "../../tests/harness/model.rs"]
mod harness;

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// The scopes every run lives under: `top` for the model's scopes, `book` for its own memory.
fn scopes() -> &'static (Scope, Scope) {
    static S: OnceLock<(Scope, Scope)> = OnceLock::new();
    S.get_or_init(|| {
        (
            Scope::root().child("fuzz-top"),
            Scope::root().child("fuzz-book"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (top, book) = scopes();
    harness::run_bytes(data, top, book);
});

//! What the tests that build the C library share (tests/ffi.rs, ffi_faults.rs, valgrind.rs):
//! the repository's root, the check of a command's outcome, and a nested cargo run in a target
//! directory of its own (so that it never waits for the lock of the cargo running the tests).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails with the command's output unless it succeeded.
pub fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cargo ARGS` in the repository with `CARGO_TARGET_DIR=target`; fails unless it succeeds.
pub fn cargo_in(target: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .current_dir(root())
        .output()
        .expect("run cargo");
    check(&out, &format!("cargo {}", args.join(" ")));
    out
}

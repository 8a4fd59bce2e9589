//! What the tests that build the C library share (tests/ffi.rs, ffi_faults.rs, valgrind.rs,
//! secure.rs, no_panic.rs): the repository's root, the check of a command's outcome, a nested
//! cargo run in a target directory of its own (so that it never waits for the lock of the cargo
//! running the tests), and the two release libraries built so.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
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

/// libscopealloc.so and libscopealloc_secure.so, built by one cargo command (as
/// `cargo build --release --workspace` does) unless given.
pub fn libraries() -> (PathBuf, PathBuf) {
    if let (Some(plain), Some(secure)) = (
        std::env::var_os("SCOPEALLOC_SO"),
        std::env::var_os("SCOPEALLOC_SECURE_SO"),
    ) {
        let (plain, secure) = (PathBuf::from(plain), PathBuf::from(secure));
        assert!(plain.is_file() && secure.is_file(), "libraries not found");
        return (plain, secure);
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-build");
    cargo_in(
        &target,
        &[
            "build",
            "--release",
            "-p",
            "scopealloc-ffi",
            "-p",
            "scopealloc-ffi-secure",
        ],
    );
    let dir = target.join("release");
    (
        dir.join("libscopealloc.so"),
        dir.join("libscopealloc_secure.so"),
    )
}

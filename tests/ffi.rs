//! The C library end to end: builds `libscopealloc.so` (`cargo build -p scopealloc-ffi
//! --release`), compiles the C test program and the C example against it with `cc`, runs them,
//! and runs `scripts/preload-tests.sh` (real programs under `LD_PRELOAD`, compared with plain
//! runs). Each fails the test if it fails.
//!
//! The library is built in its own target directory (`<target>/tmp/ffi-build`), so the nested
//! cargo never waits for the lock of the outer one; set `SCOPEALLOC_SO` to test a library built
//! elsewhere. Needs `cc`, `python3`, `git` and coreutils.
#![cfg(not(loom))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi")
}

/// The directory holding `libscopealloc.so`, built once for all the tests of this file.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(so) = std::env::var_os("SCOPEALLOC_SO") {
            let so = PathBuf::from(so);
            assert!(so.is_file(), "SCOPEALLOC_SO={} is not a file", so.display());
            return so.parent().unwrap().canonicalize().unwrap();
        }
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-build");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-p", "scopealloc-ffi", "--release"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(root())
            .output()
            .expect("run cargo");
        check(&out, "cargo build -p scopealloc-ffi --release");
        let dir = target.join("release");
        assert!(dir.join("libscopealloc.so").is_file());
        dir
    })
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles `source` (relative to the repository) against the library; returns the program.
fn compile(source: &str, name: &str, extra: &[&str]) -> PathBuf {
    let lib = lib_dir();
    std::fs::create_dir_all(scratch()).unwrap();
    let exe = scratch().join(name);
    let out = Command::new("cc")
        .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .args(extra)
        .arg("-I")
        .arg(root().join("ffi/include"))
        .arg(root().join(source))
        .arg("-L")
        .arg(lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lscopealloc", "-ldl", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    check(&out, &format!("cc {source}"));
    exe
}

/// The last line of a program's output must read `N passed, 0 failed`.
fn assert_all_passed(out: &Output, what: &str) {
    check(out, what);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let ok = last
        .strip_suffix(" passed, 0 failed")
        .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0));
    assert!(ok, "{what}: last line {last:?}\n{stdout}");
}

#[test]
fn c_test_program_passes_every_check() {
    // -fno-builtin: the compiler must not drop malloc/free pairs the test counts on.
    let exe = compile("tests/c/test_ffi.c", "test_ffi", &["-fno-builtin"]);
    let out = Command::new(&exe).output().unwrap();
    assert_all_passed(&out, "tests/c/test_ffi.c");
}

#[test]
fn c_example_refuses_the_request_over_its_limit_and_prints_stats() {
    let exe = compile("examples/c/request_scopes.c", "request_scopes", &[]);
    let out = Command::new(&exe).output().unwrap();
    check(&out, "examples/c/request_scopes.c");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "beta  request-3  refused 3145728 bytes",
        "1 request(s) refused",
        "tenant   alpha      live   524288 bytes in   1 objects",
        "limit hits 1",
        "scopealloc: scope root id=1 ",
        "scopealloc:   scope server id=",
        "scopealloc:     scope beta id=",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn real_programs_under_ld_preload_match_plain_runs() {
    let so = lib_dir().join("libscopealloc.so");
    let out = Command::new("bash")
        .arg(root().join("scripts/preload-tests.sh"))
        .arg(&so)
        .output()
        .unwrap();
    assert_all_passed(&out, "scripts/preload-tests.sh");
}

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
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    // The example's own lines ("tenant alpha live N bytes in N objects, peak N, allocs N, frees
    // N, limit hits N") and the allocator's report printed right after them must agree, figure
    // by figure; and a few figures are known exactly.
    let printed = |label: &str, name: &str| -> [u64; 6] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().take(2).eq([label, name]))
            .unwrap_or_else(|| panic!("no {label} {name} line in:\n{stdout}"));
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(|w| w.parse().unwrap())
            .collect();
        nums.try_into()
            .unwrap_or_else(|_| panic!("not six figures: {line:?}"))
    };
    let reported = |name: &str, depth: usize| -> [u64; 6] {
        let head = format!("scopealloc: {}scope {name} id=", " ".repeat(2 * depth));
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&head))
            .unwrap_or_else(|| panic!("no report line {head:?} in:\n{stdout}"));
        let field = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        };
        ["bytes", "objects", "peak", "allocs", "frees", "limit_hits"].map(field)
    };
    let alpha = printed("tenant", "alpha");
    let beta = printed("tenant", "beta");
    let server = printed("total", "server");
    assert_eq!(
        alpha,
        reported("alpha", 2),
        "alpha: the example's figures vs the report"
    );
    assert_eq!(
        beta,
        reported("beta", 2),
        "beta: the example's figures vs the report"
    );
    assert_eq!(
        server,
        reported("server", 1),
        "server: the example's figures vs the report"
    );
    // Each tenant keeps one 512 KiB cache block; beta refused one request; the server is the
    // sum of its tenants.
    assert_eq!(
        (alpha[0], alpha[1], alpha[5]),
        (524_288, 1, 0),
        "alpha {alpha:?}"
    );
    assert_eq!(
        (beta[0], beta[1], beta[5]),
        (524_288, 1, 1),
        "beta {beta:?}"
    );
    assert_eq!(server[0], alpha[0] + beta[0]);
    assert_eq!(server[1], alpha[1] + beta[1]);
    assert_eq!(server[3], alpha[3] + beta[3]);
    assert_eq!(server[4], alpha[4] + beta[4]);
    let root = reported("root", 0);
    assert!(
        root[0] >= server[0] && root[1] == root[3] - root[4],
        "root {root:?}"
    );
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

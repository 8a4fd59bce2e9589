//! The C library end to end: builds `libscopealloc.so` (`cargo build -p scopealloc-ffi
//! --release`), compiles the C test program and the C example against it with `cc`, runs them,
//! and runs `scripts/preload-tests.sh` (real programs under `LD_PRELOAD`, compared with plain
//! runs). Each fails the test if it fails.
//!
//! The library is built in its own target directory (`<target>/tmp/ffi-build`), so the nested
//! cargo never waits for the lock of the outer one; set `SCOPEALLOC_SO` to test a library built
//! elsewhere. Needs `cc`, `python3`, `git` and coreutils.
#![cfg(not(loom))]

#[path = "common/clib.rs"]
mod clib;

use clib::{cargo_in, check, root};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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
        cargo_in(&target, &["build", "-p", "scopealloc-ffi", "--release"]);
        let dir = target.join("release");
        assert!(dir.join("libscopealloc.so").is_file());
        dir
    })
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
        // RPATH, not RUNPATH: cargo puts its own library directories (which may hold another
        // libscopealloc.so) in LD_LIBRARY_PATH, which RUNPATH yields to and RPATH does not.
        .arg("-Wl,--disable-new-dtags")
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
fn the_shipped_library_cannot_be_made_to_fail() {
    // SCOPEALLOC_FAIL is read only by a `fault-injection` build (tests/ffi_faults.rs).
    let so = std::fs::read(lib_dir().join("libscopealloc.so")).unwrap();
    assert!(
        !so.windows(15).any(|w| w == b"SCOPEALLOC_FAIL"),
        "the release library reads SCOPEALLOC_FAIL"
    );
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
fn a_dlopen_after_start_up_works_with_the_initial_exec_tls_words() {
    // Not linked against the library: the program opens it itself, threads already running.
    std::fs::create_dir_all(scratch()).unwrap();
    let exe = scratch().join("dlopen");
    let out = Command::new("cc")
        .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
        .arg(root().join("ffi/include"))
        .arg(root().join("tests/c/dlopen.c"))
        .args(["-ldl", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    check(&out, "cc tests/c/dlopen.c");
    let so = lib_dir().join("libscopealloc.so");
    let out = Command::new(&exe).arg(&so).output().unwrap();
    assert_all_passed(&out, "tests/c/dlopen.c");
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

// ---------------------------------------------------------------------------------------------
// The report from C: scopealloc_report() and SCOPEALLOC_STATS=json|prometheus|text at exit and
// on SCOPEALLOC_STATS_SIGNAL (tests/c/report.c).

/// The `bytes N` lines a run of tests/c/report.c printed.
fn printed_bytes(out: &Output) -> Vec<u64> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("bytes ")?.parse().ok())
        .collect()
}

/// For each JSON document of `text` (one per line), the `current` bytes of each scope of
/// `paths`, parsed by Python's json module (which fails on invalid JSON).
fn json_current(text: &str, paths: &[&str]) -> Vec<Vec<u64>> {
    let script = r#"
import json, sys
paths = sys.argv[1:]
for line in sys.stdin.read().splitlines():
    if not line.strip():
        continue
    d = json.loads(line)
    assert isinstance(d["heap"], dict) and d["heap"]["mapped"] > 0, d["heap"]
    by = {s["path"]: s for s in d["scopes"]}
    print(" ".join(str(by[p]["current"]) for p in paths))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(paths)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    check(&out, &format!("python3 json.loads of:\n{text}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(' ').map(|w| w.parse().unwrap()).collect())
        .collect()
}

/// The value of the sample `name{scope="scope"}` in a Prometheus exposition.
fn prometheus_sample(text: &str, name: &str, scope: &str) -> Option<u64> {
    let head = format!("{name}{{scope=\"{scope}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head)?.trim().parse().ok())
}

/// `bytes=` of the flat text report's line for scope `name` at `depth`, one per report.
fn text_bytes(text: &str, name: &str, depth: usize) -> Vec<u64> {
    let head = format!("scopealloc: {}scope {name} id=", " ".repeat(2 * depth));
    text.lines()
        .filter(|l| l.starts_with(&head))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("bytes=")?.parse().ok())
                .unwrap()
        })
        .collect()
}

fn report_program() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("tests/c/report.c", "report", &["-fno-builtin"]))
}

/// A fresh directory for one test's files.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const TENANT: &str = "c-report/tenant-x";

#[test]
fn c_report_writes_text_json_and_prometheus_into_a_buffer() {
    let exe = report_program();
    let dir = fresh_dir("report-api");
    let out = Command::new(exe).arg("api").arg(&dir).output().unwrap();
    assert_all_passed(&out, "tests/c/report.c api");
    let bytes = printed_bytes(&out);
    assert_eq!(bytes.len(), 1, "{out:?}");
    let n = bytes[0];
    assert!(n >= 5000, "{n}");

    let json = std::fs::read_to_string(dir.join("api.json")).unwrap();
    assert_eq!(json.lines().count(), 1, "one line of JSON");
    assert_eq!(
        json_current(&json, &[TENANT, "c-report"]),
        [[n, n]],
        "the tenant's bytes, and its parent's (which holds nothing itself)"
    );

    let prom = std::fs::read_to_string(dir.join("api.prom")).unwrap();
    assert_eq!(
        prometheus_sample(&prom, "scopealloc_scope_bytes", TENANT),
        Some(n),
        "{prom}"
    );
    assert_eq!(
        prometheus_sample(&prom, "scopealloc_scope_objects", TENANT),
        Some(1),
        "{prom}"
    );
    assert!(
        prom.contains("# TYPE scopealloc_scope_bytes gauge"),
        "{prom}"
    );

    let text = std::fs::read_to_string(dir.join("api.txt")).unwrap();
    assert_eq!(text_bytes(&text, "tenant-x", 2), [n], "{text}");
}

#[test]
fn stats_json_and_prometheus_at_exit_go_to_the_stats_file() {
    let exe = report_program();
    let dir = fresh_dir("report-exit");
    let file = dir.join("stats.json");
    let out = Command::new(exe)
        .arg("exit")
        .env("SCOPEALLOC_STATS", "json")
        .env("SCOPEALLOC_STATS_FILE", &file)
        .output()
        .unwrap();
    check(&out, "report exit, SCOPEALLOC_STATS=json");
    assert!(out.stderr.is_empty(), "{out:?}");
    let n = printed_bytes(&out)[0];
    let json = std::fs::read_to_string(&file).unwrap();
    assert_eq!(json_current(&json, &[TENANT]), [[n]], "{json}");

    let file = dir.join("stats.prom");
    let out = Command::new(exe)
        .arg("exit")
        .env("SCOPEALLOC_STATS", "prometheus")
        .env("SCOPEALLOC_STATS_FILE", &file)
        .output()
        .unwrap();
    check(&out, "report exit, SCOPEALLOC_STATS=prometheus");
    let n = printed_bytes(&out)[0];
    let prom = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        prometheus_sample(&prom, "scopealloc_scope_bytes", TENANT),
        Some(n),
        "{prom}"
    );

    // `text` is today's `1`.
    let out = Command::new(exe)
        .arg("exit")
        .env("SCOPEALLOC_STATS", "text")
        .output()
        .unwrap();
    check(&out, "report exit, SCOPEALLOC_STATS=text");
    let n = printed_bytes(&out)[0];
    assert_eq!(
        text_bytes(&String::from_utf8_lossy(&out.stderr), "tenant-x", 2),
        [n],
        "{out:?}"
    );
}

#[test]
fn stats_signal_writes_a_report_of_the_running_process() {
    let exe = report_program();
    let dir = fresh_dir("report-signal");

    // JSON: one line per signal while the program runs (figures of that moment), one at exit.
    let file = dir.join("signal.json");
    let out = Command::new(exe)
        .arg("signal")
        .arg(&file)
        .env("SCOPEALLOC_STATS", "json")
        .env("SCOPEALLOC_STATS_SIGNAL", "USR2")
        .env("SCOPEALLOC_STATS_FILE", &file)
        .output()
        .unwrap();
    check(&out, "report signal, json");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("seen 2"),
        "{out:?}"
    );
    assert!(out.stderr.is_empty(), "{out:?}");
    let n = printed_bytes(&out);
    assert_eq!(n.len(), 2);
    assert!(n[1] > n[0] + 60_000, "{n:?}");
    let json = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        json_current(&json, &[TENANT]),
        [[n[0]], [n[1]], [n[1]]],
        "two reports on the signal, one at exit:\n{json}"
    );

    // Without SCOPEALLOC_STATS: text, and nothing at exit.
    let file = dir.join("signal.txt");
    let out = Command::new(exe)
        .arg("signal")
        .arg(&file)
        .env("SCOPEALLOC_STATS_SIGNAL", "SIGUSR2")
        .env("SCOPEALLOC_STATS_FILE", &file)
        .output()
        .unwrap();
    check(&out, "report signal, text");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("seen 2"),
        "{out:?}"
    );
    let n = printed_bytes(&out);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text_bytes(&text, "tenant-x", 2), n, "{text}");

    // An unknown signal name: one warning line, no handler (SIGUSR2 would then kill it).
    let out = Command::new(exe)
        .arg("exit")
        .env("SCOPEALLOC_STATS_SIGNAL", "KILL")
        .output()
        .unwrap();
    check(&out, "report exit, SCOPEALLOC_STATS_SIGNAL=KILL");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("scopealloc: warning: ignoring SCOPEALLOC_STATS_SIGNAL=\"KILL\"")
            && err.lines().count() == 1,
        "{err}"
    );
}

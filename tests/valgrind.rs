//! Valgrind's memcheck over programs running on scopealloc built with the `valgrind` feature
//! (client requests, `src/platform/valgrind.rs`): it must find each bug of
//! `tests/c/valgrind_bugs.c` (a leak, a read after free, a heap overrun, a double free) and
//! nothing in `tests/c/valgrind_clean.c` (threads, scopes, realloc, calloc, memalign) or in the
//! Rust integration test `tests/core_paths.rs` built with the feature.
//!
//! Builds the annotated `libscopealloc.so` (`cargo build -p scopealloc-ffi --release --features
//! valgrind`) and the Rust test in their own target directory (`<target>/tmp/valgrind-build`),
//! so the nested cargo never waits for the outer one's lock; set `SCOPEALLOC_VALGRIND_SO` to
//! test a library built elsewhere, and `SCOPEALLOC_VALGRIND_CORE_PATHS` to a `core_paths` test
//! binary built with `--features valgrind` (CI does, reusing its release dependencies; `skip`
//! leaves that test to such a run). Needs `valgrind` and `cc` on PATH: without valgrind each
//! test prints why and passes, unless `SCOPEALLOC_REQUIRE_VALGRIND=1` (CI sets it), which
//! makes a missing valgrind a failure. `SCOPEALLOC_VALGRIND_ROUNDS` sizes the clean program's
//! run (default 3) and `VALGRIND_CLEAN_SEED` seeds it (printed).
#![cfg(not(loom))]

#[path = "common/clib.rs"]
mod clib;

use clib::{cargo_in, check, root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("valgrind-build")
}

fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("valgrind")
}

/// Whether valgrind can run here; false (and why, on stderr) lets a test pass without it.
fn have_valgrind() -> bool {
    let found = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("SCOPEALLOC_REQUIRE_VALGRIND").is_none(),
            "SCOPEALLOC_REQUIRE_VALGRIND is set but valgrind is not on PATH"
        );
        eprintln!("valgrind is not on PATH: skipping (set SCOPEALLOC_REQUIRE_VALGRIND=1 to fail)");
    }
    found
}

/// The nested cargo builds run one at a time (they share a target directory).
static CARGO: Mutex<()> = Mutex::new(());

fn cargo(args: &[&str]) -> Output {
    let _one = CARGO.lock().unwrap_or_else(|e| e.into_inner());
    cargo_in(&build_dir(), args)
}

/// The directory holding the annotated `libscopealloc.so`, built once for the tests here.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(so) = std::env::var_os("SCOPEALLOC_VALGRIND_SO") {
            let so = PathBuf::from(so);
            assert!(
                so.is_file(),
                "SCOPEALLOC_VALGRIND_SO={} is not a file",
                so.display()
            );
            return so.parent().unwrap().canonicalize().unwrap();
        }
        cargo(&[
            "build",
            "-p",
            "scopealloc-ffi",
            "--release",
            "--features",
            "valgrind",
        ]);
        let dir = build_dir().join("release");
        assert!(dir.join("libscopealloc.so").is_file());
        dir
    })
}

/// Compiles a C program of `tests/c` against the annotated library.
fn compile(name: &str) -> PathBuf {
    let lib = lib_dir();
    std::fs::create_dir_all(scratch()).unwrap();
    let exe = scratch().join(name);
    let out = Command::new("cc")
        // -fno-builtin: the compiler must not drop the malloc/free calls whose bugs are the test.
        .args([
            "-O1",
            "-g",
            "-fno-builtin",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-I",
        ])
        .arg(root().join("ffi/include"))
        .arg(root().join(format!("tests/c/{name}.c")))
        .arg("-L")
        .arg(lib)
        .arg("-Wl,--disable-new-dtags")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lscopealloc", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    check(&out, &format!("cc tests/c/{name}.c"));
    exe
}

/// Runs `exe args` under memcheck the way README.md tells users to (LD_PRELOAD, and
/// `--soname-synonyms=somalloc=nouserintercepts`, without which valgrind would replace
/// scopealloc's malloc with its own); returns the program's exit status and memcheck's report.
fn memcheck(exe: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new("valgrind")
        .args([
            "--tool=memcheck",
            "--leak-check=full",
            "--soname-synonyms=somalloc=nouserintercepts",
        ])
        .arg(exe)
        .args(args)
        .env("LD_PRELOAD", lib_dir().join("libscopealloc.so"))
        .output()
        .expect("run valgrind");
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, report)
}

/// The figure after `key` on memcheck's report line containing it: `ERROR SUMMARY: 3 errors`
/// gives 3 for "ERROR SUMMARY:", `definitely lost: 112 bytes in 1 blocks` gives 112.
fn figure(report: &str, key: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key:?} in the report:\n{report}"));
    let rest = &line[line.find(key).unwrap() + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no figure after {key:?} in {line:?}"))
}

/// The blocks of a leak kind (`definitely lost: 112 bytes in 1 blocks` → 1); 0 when memcheck
/// says no block was left at all.
fn blocks(report: &str, kind: &str) -> u64 {
    if report.contains("All heap blocks were freed -- no leaks are possible") {
        return 0;
    }
    let line = report
        .lines()
        .find(|l| l.contains(&format!("{kind}: ")))
        .unwrap_or_else(|| panic!("no {kind:?} line in the report:\n{report}"));
    figure(line, "bytes in ")
}

/// Runs one mode of the buggy program; asserts it ran to its end and returns memcheck's report.
fn bug(mode: &str) -> Option<String> {
    if !have_valgrind() {
        return None;
    }
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let exe = EXE.get_or_init(|| compile("valgrind_bugs"));
    let (out, report) = memcheck(exe, &[mode]);
    check(&out, &format!("valgrind_bugs {mode} under memcheck"));
    Some(report)
}

/// The loss records of `kind` (`"definitely"` or `"possibly"`) as (bytes per block, blocks):
/// `224 bytes in 2 blocks are definitely lost in loss record 1 of 3` → (112, 2); each checked to
/// come from `leak_one`.
fn lost(report: &str, kind: &str) -> Vec<(u64, u64)> {
    let mut records = Vec::new();
    let lines: Vec<&str> = report.lines().collect();
    let phrase = format!("are {kind} lost in loss record");
    for (i, line) in lines.iter().enumerate() {
        if !line.contains(&phrase) {
            continue;
        }
        let stack = lines[i + 1..(i + 8).min(lines.len())].join("\n");
        assert!(
            stack.contains("leak_one (valgrind_bugs.c"),
            "a {kind} lost block not leaked by the program:\n{line}\n{stack}\n---\n{report}"
        );
        // "==PID==    224 bytes in 2 blocks ...": the figure after the PID prefix.
        let body = line.splitn(3, "==").nth(2).unwrap_or(line);
        let bytes = figure(body, "");
        let blocks = figure(line, "bytes in ");
        assert!(blocks > 0 && bytes.is_multiple_of(blocks), "{line}");
        records.push((bytes / blocks, blocks));
    }
    records
}

#[test]
fn memcheck_reports_leaked_small_large_and_huge_blocks_as_definitely_lost() {
    let Some(report) = bug("leak") else { return };
    let records = lost(&report, "definitely");
    // A leaked block memcheck finds an interior pointer to is "possibly lost": still a leak it
    // reports (an error too), of a block the program leaked. Seen for one 3 MiB block in about
    // one run in three, on the library of before 2026-12-03's changes as well; where the
    // interior pointer sits (a stale word of the program's or ours) is not known.
    let possibly = lost(&report, "possibly");
    // The program leaks 3 small (112-byte class), 2 large and 2 huge blocks; memcheck sees them
    // at their usable sizes.
    let small = |n: u64| n == 112;
    let large = |n: u64| (100 << 10..=2 << 20).contains(&n);
    let huge = |n: u64| n >= 3 << 20;
    let count = |recs: &[(u64, u64)], kind: &dyn Fn(u64) -> bool| -> u64 {
        recs.iter()
            .filter(|(size, _)| kind(*size))
            .map(|(_, n)| n)
            .sum()
    };
    let (s, l, h) = (
        count(&records, &small),
        count(&records, &large),
        count(&records, &huge),
    );
    assert!(
        s >= 1 && l >= 1 && h >= 1,
        "definitely lost: {s} small, {l} large, {h} huge ({records:?}):\n{report}"
    );
    // Definitely and possibly lost together: every block of a leaked size, none beyond them.
    let both: Vec<(u64, u64)> = records.iter().chain(&possibly).copied().collect();
    assert_eq!(
        count(&both, &|_| true),
        count(&both, &|n| small(n) || large(n) || huge(n)),
        "a lost block of another size: {records:?}, possibly {possibly:?}"
    );
    assert!(
        count(&both, &small) <= 3 && count(&both, &large) <= 2 && count(&both, &huge) <= 2,
        "more lost than leaked: {records:?}, possibly {possibly:?}"
    );
    assert!(!report.contains("Invalid "), "an access error:\n{report}");
    // With --leak-check=full each definitely or possibly lost record is an error; nothing else
    // is.
    assert_eq!(
        figure(&report, "ERROR SUMMARY:"),
        (records.len() + possibly.len()) as u64,
        "errors other than the leaks:\n{report}"
    );
}

#[test]
fn memcheck_reports_a_read_after_free() {
    let Some(report) = bug("read-after-free") else {
        return;
    };
    assert!(report.contains("Invalid read of size 1"), "{report}");
    assert!(
        report.contains("is 8 bytes inside a block of size 64 free'd"),
        "{report}"
    );
    assert_eq!(figure(&report, "ERROR SUMMARY:"), 1, "{report}");
}

#[test]
fn memcheck_reports_a_heap_overrun_into_a_free_block() {
    let Some(report) = bug("overrun") else { return };
    assert!(report.contains("Invalid write of size 1"), "{report}");
    assert!(
        report.contains("is 0 bytes after a block of size 48 alloc'd"),
        "{report}"
    );
    assert_eq!(figure(&report, "ERROR SUMMARY:"), 1, "{report}");
}

#[test]
fn memcheck_reports_a_double_free() {
    let Some(report) = bug("double-free") else {
        return;
    };
    assert!(report.contains("Invalid free()"), "{report}");
    assert_eq!(figure(&report, "ERROR SUMMARY:"), 1, "{report}");
}

#[test]
fn memcheck_finds_nothing_wrong_in_a_clean_threaded_program_with_scopes() {
    if !have_valgrind() {
        return;
    }
    let rounds: u64 = std::env::var("SCOPEALLOC_VALGRIND_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let exe = compile("valgrind_clean");
    let (out, report) = memcheck(&exe, &[&rounds.to_string()]);
    check(&out, "valgrind_clean under memcheck");
    print!("{}", String::from_utf8_lossy(&out.stdout)); // the seed
    assert_eq!(figure(&report, "ERROR SUMMARY:"), 0, "{report}");
    assert!(
        report.contains("All heap blocks were freed -- no leaks are possible"),
        "{report}"
    );
    // The annotations are live: memcheck saw at least the workers' blocks (4 threads × 256
    // per round), which it learns of only through the client requests.
    let allocs = figure(&report, "total heap usage:");
    assert!(
        allocs >= rounds * 4 * 256,
        "memcheck saw {allocs} blocks:\n{report}"
    );
}

/// The test binary of tests/core_paths.rs built with the feature (scopealloc is its global
/// allocator), from `SCOPEALLOC_VALGRIND_CORE_PATHS` (CI builds it in its release step, so its
/// dependencies are built once); `skip` there defers the test to that step. Unset: built here,
/// a release build of every dev-dependency in the nested target directory (minutes, once).
fn core_paths_exe() -> Option<PathBuf> {
    match std::env::var_os("SCOPEALLOC_VALGRIND_CORE_PATHS") {
        Some(v) if v == "skip" => {
            eprintln!("SCOPEALLOC_VALGRIND_CORE_PATHS=skip: tests/core_paths.rs under memcheck runs elsewhere");
            return None;
        }
        Some(exe) => {
            let exe = PathBuf::from(exe);
            assert!(
                exe.is_file(),
                "SCOPEALLOC_VALGRIND_CORE_PATHS={} is not a file",
                exe.display()
            );
            return Some(exe);
        }
        None => {}
    }
    let out = cargo(&[
        "test",
        "--release",
        "--features",
        "valgrind",
        "--test",
        "core_paths",
        "--no-run",
        "--message-format=json",
    ]);
    let json = String::from_utf8_lossy(&out.stdout);
    let exe = json
        .lines()
        .filter(|l| l.contains("\"name\":\"core_paths\"") && l.contains("\"executable\":\""))
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            Some(PathBuf::from(&l[start..start + l[start..].find('"')?]))
        })
        .unwrap_or_else(|| panic!("no core_paths executable in cargo's output:\n{json}"));
    Some(exe)
}

#[test]
fn rust_core_paths_run_clean_under_memcheck_with_the_feature() {
    if !have_valgrind() {
        return;
    }
    let Some(exe) = core_paths_exe() else { return };
    let out = Command::new("valgrind")
        .args([
            "--tool=memcheck",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(&exe)
        .arg("--test-threads=1")
        .output()
        .expect("run valgrind");
    let report = String::from_utf8_lossy(&out.stderr);
    check(&out, "tests/core_paths.rs under memcheck");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("test result: ok"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(figure(&report, "ERROR SUMMARY:"), 0, "{report}");
    assert_eq!(blocks(&report, "definitely lost"), 0, "{report}");
    // The Rust objects reach memcheck only through the client requests.
    let allocs = figure(&report, "total heap usage:");
    assert!(allocs >= 10_000, "memcheck saw {allocs} blocks:\n{report}");
}

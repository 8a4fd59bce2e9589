//! The C library while the OS says no: a `fault-injection` build of `libscopealloc.so`
//! (`cargo build -p scopealloc-ffi --features fault-injection`, the debug profile, in its own
//! target directory) runs the C programs of `tests/c` under `SCOPEALLOC_FAIL` (see
//! `ffi/src/faults.rs`), under `ulimit -v` (the address-space limit, `RLIMIT_AS`), and, where
//! the machine lets the test make a memory cgroup inside its own (v1 or v2), under a 48 MiB
//! cgroup limit (skipped, saying so, elsewhere).
//!
//! * `tests/c/faults.c` must pass every check under every setting: each refusal is a NULL with
//!   errno ENOMEM, a refused realloc keeps its block, calloc returns zeroes, and the scope's
//!   figures equal the live blocks, then zero.
//! * Refused `munmap` and `madvise` never refuse an allocation (the memory is kept, counted, and
//!   given back later), so under them the C test program must pass every check as usual.
//! * Under refused `mmap` the other programs may fail their own checks (they do not expect
//!   NULL), but must not crash in the library: an exit, the programs' own `abort()` on a NULL
//!   they cannot handle (`threads.c`), or their own use of the NULL (`strlen`, `memset` on it:
//!   `tests/c/segv_where.c`, preloaded, names the faulting instruction's object and its
//!   caller's, and neither may be the library); never a line of the library's own
//!   (`scopealloc: fatal`, a Rust panic).
#![cfg(not(loom))]

#[path = "common/clib.rs"]
mod clib;

use clib::{cargo_in, check, root};

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-faults")
}

/// The directory holding the fault-injection `libscopealloc.so`, built once.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-faults-build");
        cargo_in(
            &target,
            &[
                "build",
                "-p",
                "scopealloc-ffi",
                "--features",
                "fault-injection",
            ],
        );
        let dir = target.join("debug");
        assert!(dir.join("libscopealloc.so").is_file());
        dir
    })
}

/// Compiles `source` against the library (`shared`: as a shared library); returns the output.
fn compile(source: &str, name: &str, shared: bool) -> PathBuf {
    // Each program is compiled once per run of this binary (its tests share them).
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap();
    let lib = lib_dir();
    std::fs::create_dir_all(scratch()).unwrap();
    let out_path = scratch().join(name);
    if done.iter().any(|n| n == name) {
        return out_path;
    }
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-g", "-Wall", "-Wextra", "-pthread", "-fno-builtin"]);
    if shared {
        cc.args(["-shared", "-fPIC"]);
    }
    let out = cc
        .arg("-I")
        .arg(root().join("ffi/include"))
        .arg(root().join(source))
        .arg("-L")
        .arg(lib)
        .arg("-Wl,--disable-new-dtags")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lscopealloc", "-ldl", "-o"])
        .arg(&out_path)
        .output()
        .expect("run cc");
    check(&out, &format!("cc {source}"));
    done.push(name.to_string());
    out_path
}

/// `tests/c/segv_where.c` as a library to preload: it names where a SIGSEGV or SIGBUS hit.
fn segv_where() -> &'static Path {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        std::fs::create_dir_all(scratch()).unwrap();
        let so = scratch().join("libsegv_where.so");
        let out = Command::new("cc")
            .args(["-O1", "-Wall", "-Wextra", "-shared", "-fPIC"])
            .arg(root().join("tests/c/segv_where.c"))
            .args(["-ldl", "-o"])
            .arg(&so)
            .output()
            .expect("run cc");
        check(&out, "cc tests/c/segv_where.c");
        so
    })
}

/// Runs `exe args` under `SCOPEALLOC_FAIL=spec` (and `bash -c 'ulimit -v KIB; exec ...'` when
/// `ulimit_kib` is set).
fn run(exe: &Path, args: &[&str], spec: Option<&str>, ulimit_kib: Option<u64>) -> Output {
    run_preloading(exe, args, spec, ulimit_kib, None)
}

/// [`run`], with `preload` in `LD_PRELOAD`.
fn run_preloading(
    exe: &Path,
    args: &[&str],
    spec: Option<&str>,
    ulimit_kib: Option<u64>,
    preload: Option<&Path>,
) -> Output {
    let mut cmd = match ulimit_kib {
        Some(kib) => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
                .arg(exe)
                .args(args);
            c
        }
        None => {
            let mut c = Command::new(exe);
            c.args(args);
            c
        }
    };
    if let Some(spec) = spec {
        cmd.env("SCOPEALLOC_FAIL", spec);
    }
    if let Some(so) = preload {
        cmd.env("LD_PRELOAD", so);
    }
    cmd.env("SCOPEALLOC_DECAY_MS", "0");
    cmd.output().expect("run a C program")
}

fn describe(out: &Output, what: &str) -> String {
    format!(
        "{what}: {}\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    )
}

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The library said nothing of its own: no fatal line, no panic.
fn library_quiet(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    !err.contains("scopealloc: fatal") && !err.contains("panicked")
}

/// `tests/c/faults.c` passed every check.
fn faults_ok(out: &Output) -> bool {
    out.status.success()
        && library_quiet(out)
        && String::from_utf8_lossy(&out.stderr).contains("faults: ok")
}

/// Exited (any status), or aborted by the program itself, or the program's own use of a NULL
/// (a SIGSEGV or SIGBUS whose instruction and caller `segv_where` found outside the library);
/// no other signal, no library line.
fn no_crash(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    let fault_outside_library = |sig: i32| {
        out.status.code() == Some(128 + sig)
            && err
                .lines()
                .find(|l| l.starts_with("segv-where: "))
                // Both objects known (an unknown one may be the library), neither the library.
                .is_some_and(|l| !l.contains("libscopealloc") && !l.contains(" in ?"))
    };
    library_quiet(out)
        && match out.status.signal() {
            None => {
                out.status.code().is_some_and(|c| c < 128)
                    || fault_outside_library(libc::SIGSEGV)
                    || fault_outside_library(libc::SIGBUS)
            }
            Some(sig) => sig == libc::SIGABRT,
        }
}

/// The settings of `SCOPEALLOC_FAIL` the programs run under: mmap refused from the n-th call
/// (a spread of n), each kind at random, and all kinds at once.
fn specs() -> Vec<String> {
    let mut v: Vec<String> = [0u64, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
        .iter()
        .map(|n| format!("mmap:{n}"))
        .collect();
    for n in [0u64, 1, 3, 10] {
        v.push(format!("munmap:{n}"));
        v.push(format!("madvise:{n}"));
    }
    for seed in 1..=4u64 {
        v.push(format!("mmap:random:{seed}:100"));
        v.push(format!(
            "mmap:random:{seed}:20,munmap:random:{seed}:300,madvise:random:{seed}:300"
        ));
    }
    v.push("key:0".into());
    v
}

#[test]
fn every_refusal_in_c_is_null_with_enomem_and_the_figures_stay_exact() {
    let so = std::fs::read(lib_dir().join("libscopealloc.so")).unwrap();
    assert!(
        so.windows(15).any(|w| w == b"SCOPEALLOC_FAIL"),
        "the fault-injection build reads SCOPEALLOC_FAIL"
    );
    let exe = compile("tests/c/faults.c", "faults", false);
    let plain = run(&exe, &[], None, None);
    assert!(
        faults_ok(&plain),
        "{}",
        describe(&plain, "faults, no refusal")
    );
    let mut bad = Vec::new();
    let mut refusals_seen = 0;
    for spec in specs() {
        let out = run(&exe, &[], Some(&spec), None);
        if !faults_ok(&out) {
            bad.push(describe(&out, &format!("SCOPEALLOC_FAIL={spec}")));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains(" 0 refused,") {
            refusals_seen += 1;
        }
        eprintln!(
            "SCOPEALLOC_FAIL={spec}: {}",
            err.lines().next().unwrap_or("")
        );
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
    assert!(refusals_seen >= 10, "most settings refused some allocation");
}

#[test]
fn refused_munmap_and_madvise_change_nothing_the_c_test_program_sees() {
    let exe = compile("tests/c/test_ffi.c", "test_ffi", false);
    for spec in [
        "munmap:0,madvise:0",
        "munmap:random:5:500,madvise:random:5:500",
    ] {
        let out = run(&exe, &[], Some(spec), None);
        let last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        assert!(
            out.status.success() && last.ends_with(" passed, 0 failed") && library_quiet(&out),
            "{}",
            describe(&out, &format!("test_ffi under SCOPEALLOC_FAIL={spec}"))
        );
    }
}

#[test]
fn the_c_programs_never_crash_when_mmap_is_refused() {
    let programs: Vec<(PathBuf, Vec<&str>)> = vec![
        (compile("tests/c/test_ffi.c", "test_ffi", false), vec![]),
        (
            compile("tests/c/threads.c", "threads", false),
            vec!["2", "2", "3000", "1"],
        ),
        (
            compile("tests/c/forkexec.c", "forkexec", false),
            vec!["6", "2"],
        ),
        (compile("tests/c/faults.c", "faults", false), vec![]),
    ];
    let mut bad = Vec::new();
    for spec in [
        "mmap:0",
        "mmap:4",
        "mmap:12",
        "mmap:random:9:200",
        "mmap:random:3:30",
    ] {
        for (exe, args) in &programs {
            let out = run_preloading(exe, args, Some(spec), None, Some(segv_where()));
            let name = exe.file_name().unwrap().to_string_lossy().into_owned();
            if !no_crash(&out) {
                bad.push(describe(
                    &out,
                    &format!("{name} under SCOPEALLOC_FAIL={spec}"),
                ));
            }
            eprintln!("{name} under SCOPEALLOC_FAIL={spec}: {}", out.status);
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

/// Address-space limits (KiB) for `ulimit -v`: from below what the programs need to start
/// their threads to above what `faults.c` maps at its peak.
const ULIMITS_KIB: [u64; 5] = [40 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10];

#[test]
fn under_ulimit_v_every_refusal_is_null_with_enomem_and_nothing_crashes() {
    // jemalloc#2289: jemalloc segfaulted under `ulimit -Sv`. Here the kernel refuses mmap by
    // itself (RLIMIT_AS), no injected failure.
    let faults = compile("tests/c/faults.c", "faults", false);
    let others: Vec<(PathBuf, Vec<&str>)> = vec![
        (compile("tests/c/test_ffi.c", "test_ffi", false), vec![]),
        (
            compile("tests/c/threads.c", "threads", false),
            vec!["2", "2", "3000", "1"],
        ),
    ];
    let mut bad = Vec::new();
    let mut refused_somewhere = false;
    for kib in ULIMITS_KIB {
        let out = run(&faults, &[], None, Some(kib));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "ulimit -v {kib}: {}: {}",
            out.status,
            err.lines().next().unwrap_or("")
        );
        refused_somewhere |= err.contains("faults: ") && !err.contains(" 0 refused,");
        if !faults_ok(&out) {
            bad.push(describe(&out, &format!("faults under ulimit -v {kib}")));
        }
        for (exe, args) in &others {
            let out = run_preloading(exe, args, None, Some(kib), Some(segv_where()));
            let name = exe.file_name().unwrap().to_string_lossy().into_owned();
            eprintln!("  {name}: {}", out.status);
            if !no_crash(&out) {
                bad.push(describe(&out, &format!("{name} under ulimit -v {kib}")));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
    assert!(refused_somewhere, "some limit made the OS refuse memory");
}

/// A memory cgroup (v1 or v2) of our own, inside the one this process is in, with `limit`
/// bytes; None (and why) where the machine does not let us make one.
fn make_cgroup(limit: u64) -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let name = format!("scopealloc-test-{}", std::process::id());
    // v1: a `memory` hierarchy; v2: the unified one (`0::`).
    let (dir, limit_file) = if let Some(path) = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
    {
        (
            PathBuf::from(format!("/sys/fs/cgroup/memory{path}")).join(&name),
            "memory.limit_in_bytes",
        )
    } else if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
        (
            PathBuf::from(format!("/sys/fs/cgroup{path}")).join(&name),
            "memory.max",
        )
    } else {
        return Err("no memory cgroup in /proc/self/cgroup".into());
    };
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    if let Err(e) = std::fs::write(dir.join(limit_file), limit.to_string()) {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("{limit_file}: {e}"));
    }
    Ok(dir)
}

#[test]
fn in_a_low_memory_cgroup_the_c_programs_finish_or_are_oom_killed_never_crash() {
    // Within a cgroup's memory limit, mmap succeeds and the page faults past the limit bring
    // the kernel's OOM killer (SIGKILL): that is the kernel's documented way out. The library
    // must not crash before that (no SIGSEGV, SIGBUS, abort or fatal line).
    let limit = 48u64 << 20;
    let dir = match make_cgroup(limit) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: cannot make a memory cgroup here ({why}); ulimit -v runs instead");
            return;
        }
    };
    /// Removes the cgroup (empty once its processes have exited), even if the test panics.
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(self.0);
        }
    }
    let _remove = Remove(&dir);
    let programs: Vec<(PathBuf, Vec<&str>)> = vec![
        (compile("tests/c/faults.c", "faults", false), vec![]),
        (compile("tests/c/test_ffi.c", "test_ffi", false), vec![]),
        (
            compile("tests/c/threads.c", "threads", false),
            vec!["2", "2", "3000", "1"],
        ),
    ];
    let procs = dir.join("cgroup.procs");
    let mut bad = Vec::new();
    for (exe, args) in &programs {
        let out = Command::new("bash")
            .arg("-c")
            .arg("echo $$ > \"$1\" && shift && exec \"$@\"")
            .arg("bash")
            .arg(&procs)
            .arg(exe)
            .args(args)
            .env("LD_PRELOAD", segv_where())
            .output()
            .expect("run a C program in the cgroup");
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        eprintln!("{name} in a {} MiB cgroup: {}", limit >> 20, out.status);
        let oom_killed = out.status.signal() == Some(libc::SIGKILL);
        if !(oom_killed || no_crash(&out)) {
            bad.push(describe(&out, &format!("{name} in the cgroup")));
        }
    }
    let failcnt = std::fs::read_to_string(dir.join("memory.failcnt")).unwrap_or_default();
    eprintln!("the cgroup's memory.failcnt: {}", failcnt.trim());
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

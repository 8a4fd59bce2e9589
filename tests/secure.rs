//! The secure build against a suite of heap bugs (`tests/c/secure_bugs.c`, one bug per mode),
//! run under glibc's malloc, Debian's jemalloc and mimalloc (where installed), libscopealloc.so
//! (plain and with `SCOPEALLOC_CHECK=1`) and libscopealloc_secure.so. Prints the table that
//! docs/SECURE.md shows and asserts what the secure library must catch, and that the plain
//! library is really built without the secure checks (Cargo unifies features in a workspace).
//!
//! Outcomes: **caught** (the process ended abnormally and wrote a line on stderr), **crashed**
//! (killed by a signal with nothing on stderr), **missed** (it reached its end), **hung** (killed
//! after `TIMEOUT`). Both libraries are built in `<target>/tmp/ffi-build`, the directory
//! tests/ffi.rs builds in; set `SCOPEALLOC_SO` and `SCOPEALLOC_SECURE_SO` to test libraries built
//! elsewhere. Needs `cc` and `timeout`.
#![cfg(not(loom))]

#[path = "common/clib.rs"]
mod clib;

use clib::{check, libraries, root};

use std::path::{Path, PathBuf};
use std::process::Command;

// With `--features secure` this test binary runs on the secure core too (the Rust side).
#[cfg(feature = "secure")]
#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

/// Regression: the link check once required 16-byte aligned links, and aborted on the Rust
/// path's classes that are multiples of 8 bytes only (24, 40, ... bytes), as soon as a freed
/// block of one was handed out again (the C library's report thread hit it).
#[cfg(feature = "secure")]
#[test]
fn secure_rust_blocks_of_classes_aligned_to_8_bytes_are_reused_without_alarm() {
    for size in [8usize, 24, 40, 56, 72, 88, 104, 120] {
        for round in 0..3u8 {
            let blocks: Vec<Box<[u8]>> = (0..500)
                .map(|i| vec![round ^ i as u8; size].into_boxed_slice())
                .collect();
            assert!(blocks.iter().all(|b| b.len() == size));
            drop(blocks);
        }
    }
}

/// The Rust path refuses absurd sizes too (above 1 TiB), with null, and serves a large one.
#[cfg(feature = "secure")]
#[test]
fn secure_rust_requests_above_a_tebibyte_are_refused() {
    use std::alloc::{GlobalAlloc, Layout};
    for (size, align) in [(1usize << 42, 8usize), (1 << 41, 4096), (1 << 40, 1 << 41)] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a non-zero layout; a refused request returns null.
        assert!(
            unsafe { GLOBAL.alloc(l) }.is_null(),
            "{size} aligned to {align}"
        );
    }
    let l = Layout::from_size_align(8 << 20, 8).unwrap();
    // SAFETY: a non-zero layout; the block is freed with it.
    unsafe {
        let p = GLOBAL.alloc(l);
        assert!(!p.is_null());
        GLOBAL.dealloc(p, l);
    }
}

/// The secure build's small blocks report exactly what was asked as their usable size (C's
/// `malloc_usable_size` too), all of it writable, also after a resize in place (the trailer
/// moves with the length).
#[cfg(feature = "secure")]
#[test]
fn secure_rust_usable_sizes_are_exact_and_writable_after_resizing_in_place() {
    use std::alloc::{GlobalAlloc, Layout};
    for size in (1usize..3000).step_by(13) {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero layouts; each block is written within its usable size, resized with
        // its current layout and freed with the last one.
        unsafe {
            let p = GLOBAL.alloc(l);
            assert_eq!(scopealloc::usable_size(p), size);
            p.write_bytes(0x5a, size);
            let smaller = size / 2 + 1;
            let q = GLOBAL.realloc(p, l, smaller);
            assert_eq!(scopealloc::usable_size(q), smaller);
            q.write_bytes(0x5b, smaller);
            let bigger = smaller + 5;
            let r = GLOBAL.realloc(q, Layout::from_size_align(smaller, 8).unwrap(), bigger);
            assert_eq!(scopealloc::usable_size(r), bigger);
            assert!((0..smaller).all(|i| *r.add(i) == 0x5b), "contents kept");
            r.write_bytes(0x5c, bigger);
            GLOBAL.dealloc(r, Layout::from_size_align(bigger, 8).unwrap());
        }
    }
}

/// Eight large blocks of layout `l` allocated, then freed: they return the blocks they were
/// given, so that the blocks quarantined before them leave the protected window (the
/// quarantine's `AGE`: a span is handed out again only with eight younger ones behind it).
#[cfg(feature = "secure")]
fn age_quarantine(l: std::alloc::Layout) -> Vec<*mut u8> {
    use std::alloc::GlobalAlloc;
    // SAFETY: a non-zero layout; each block is freed once with it.
    unsafe {
        let more: Vec<*mut u8> = (0..8).map(|_| GLOBAL.alloc(l)).collect();
        for &p in &more {
            GLOBAL.dealloc(p, l);
        }
        more
    }
}

/// A zeroed block of layout `l`, which must be `first` (a span the quarantine hands out again),
/// all of it zero (the span was written before it waited).
///
/// # Safety
/// `l` is a non-zero layout; the caller frees the block with it.
#[cfg(feature = "secure")]
unsafe fn reused_zeroed(l: std::alloc::Layout, first: *mut u8, what: &str) -> *mut u8 {
    use std::alloc::GlobalAlloc;
    // SAFETY: per the contract; the block holds l.size() bytes.
    unsafe {
        let p = GLOBAL.alloc_zeroed(l);
        assert_eq!(p, first, "{what}");
        assert!(
            (0..l.size()).all(|i| *p.add(i) == 0),
            "zeroed memory from a reused span"
        );
        p
    }
}

/// The quarantine is one per process: its tests take turns.
#[cfg(feature = "secure")]
static QUARANTINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Freed large blocks wait in the quarantine (`frontend::quarantine`): the block just freed is
/// not handed out again at once (a stale pointer to it stays refused), while one freed 8 or
/// more large frees ago is, as it was: same address, guard pages still up, its whole usable size
/// writable, and zeroed when asked for zeroed memory.
#[cfg(feature = "secure")]
#[test]
fn secure_rust_large_blocks_wait_in_the_quarantine_and_are_reused_after_it() {
    use std::alloc::{GlobalAlloc, Layout};
    let _one_at_a_time = QUARANTINE.lock().unwrap_or_else(|e| e.into_inner());
    let l = Layout::from_size_align(256 << 10, 8).unwrap();
    // SAFETY: non-zero layouts; every block is written within its size and freed once.
    unsafe {
        let first = GLOBAL.alloc(l);
        first.write_bytes(0x11, l.size());
        GLOBAL.dealloc(first, l);
        let next = GLOBAL.alloc(l);
        assert_ne!(
            next, first,
            "the block just freed is still in the quarantine"
        );
        GLOBAL.dealloc(next, l);
        // Eight more large frees age `first` out of the protected window.
        assert!(!age_quarantine(l).contains(&first));
        let again = reused_zeroed(
            l,
            first,
            "a block old enough in the quarantine is handed out again",
        );
        again.write_bytes(0x22, l.size());
        GLOBAL.dealloc(again, l);
    }
    scopealloc::trim();
}

/// The protection of the page that holds `addr`, from /proc/self/maps (`"---p"` for a guard).
#[cfg(feature = "secure")]
fn protection_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = usize::from_str_radix(lo, 16).unwrap();
        let hi = usize::from_str_radix(hi, 16).unwrap();
        if (lo..hi).contains(&addr) {
            return perms.to_string();
        }
    }
    panic!("{addr:#x} is in no mapping");
}

/// Asserts that live large block `p` of `size` bytes asked has whole OS pages, all accessible,
/// between two inaccessible guards.
#[cfg(feature = "secure")]
fn assert_guarded(p: *mut u8, size: usize) {
    let page = 4096;
    // SAFETY: p is a live block of ours.
    let usable = unsafe { scopealloc::usable_size(p) };
    assert!(usable >= size && usable - size < page, "whole OS pages");
    let (start, end) = (p as usize, p as usize + usable);
    assert_eq!(protection_at(start - 1), "---p", "guard before the block");
    assert_eq!(protection_at(end), "---p", "guard after the block");
    assert!(
        protection_at(end - 1).starts_with("rw"),
        "the block's last page"
    );
}

/// A quarantined span is handed out again for a block of the same size with no `mprotect` at
/// all (its block's pages stayed open, poisoned, while it waited; they used to close and open,
/// two calls per large block, each a TLB flush: the secure library was 7.6 times slower than the
/// fast one on `randsize`), and for a block of another size that fits in it with one: a shorter
/// block gets a guard right after it, a longer one the pages the old guard held.
#[cfg(feature = "secure")]
#[test]
fn secure_rust_a_quarantined_span_serves_its_size_without_mprotect_and_another_with_one() {
    use scopealloc::testing::{os_calls, OsCall};
    use std::alloc::{GlobalAlloc, Layout};
    let _one_at_a_time = QUARANTINE.lock().unwrap_or_else(|e| e.into_inner());
    // Both fit a span of four 64 KiB pages with a guard page before and after.
    let long = Layout::from_size_align(240 << 10, 8).unwrap();
    let short = Layout::from_size_align(190 << 10, 8).unwrap();
    // An empty quarantine.
    scopealloc::trim();
    // SAFETY: non-zero layouts; every block is written within its size and freed once.
    unsafe {
        let first = GLOBAL.alloc(long);
        first.write_bytes(0x11, long.size());
        GLOBAL.dealloc(first, long);
        assert!(
            protection_at(first as usize).starts_with("rw"),
            "a quarantined block's pages stay open"
        );
        // Each step: other spans (10 pages) age the quarantine, then the span serves `l` again
        // (zeroed, for a block as long as the first) with `protects` mprotect calls, guarded.
        let reuse = |l: Layout, protects: u64, what: &str, fill: u8| {
            age_quarantine(Layout::from_size_align(600 << 10, 8).unwrap());
            let calls = os_calls(OsCall::Protect);
            let p = if l == long {
                reused_zeroed(l, first, what)
            } else {
                GLOBAL.alloc(l)
            };
            assert_eq!(p, first, "{what}");
            assert_eq!(
                os_calls(OsCall::Protect) - calls,
                protects,
                "{what}: mprotect calls"
            );
            assert_guarded(p, l.size());
            p.write_bytes(fill, l.size());
            GLOBAL.dealloc(p, l);
        };
        reuse(long, 0, "the span serves a block of its size", 0x22);
        reuse(short, 1, "a shorter block: its guard moved", 0x33);
        reuse(long, 1, "a longer one again: its pages opened", 0x44);
    }
    scopealloc::trim();
}

/// A write after free into a waiting large block is caught when the block leaves the
/// quarantine, reused (`reuse`) or given back (`trim`): 32 bytes at its start, 32 bytes before
/// its end, one byte at the start of a page in its middle. The child process writes (it aborts);
/// the parent checks how it ended, and that an untouched block passes.
#[cfg(feature = "secure")]
#[test]
fn secure_rust_a_write_after_free_into_a_quarantined_block_is_caught() {
    use std::alloc::{GlobalAlloc, Layout};
    const NAME: &str = "secure_rust_a_write_after_free_into_a_quarantined_block_is_caught";
    let l = Layout::from_size_align(100 << 10, 8).unwrap();
    if let Some(mode) = std::env::var_os("SCOPEALLOC_TEST_WRITE_AFTER_FREE") {
        let mode = mode.into_string().unwrap();
        let (at, leave) = mode.split_once(',').unwrap();
        // SAFETY: a non-zero layout; the writes after free land in the block's span, which the
        // quarantine keeps mapped and open: a deliberate bug, which the allocator must see.
        unsafe {
            let p = GLOBAL.alloc(l);
            assert!(!p.is_null());
            let usable = scopealloc::usable_size(p);
            GLOBAL.dealloc(p, l);
            let (off, len) = match at {
                "start" => (0, 32),
                "end" => (usable - 32, 32),
                "page" => (12 << 12, 1),
                _ => (0, 0),
            };
            p.add(off).write_bytes(0x5a, len);
            if leave == "reuse" {
                age_quarantine(l);
                let _ = reused_zeroed(l, p, "the block leaves the quarantine");
            } else {
                scopealloc::trim();
            }
        }
        println!("missed");
        return;
    }
    for (at, leave) in [
        ("start", "reuse"),
        ("end", "trim"),
        ("page", "reuse"),
        ("none", "trim"),
    ] {
        let out = rerun(
            NAME,
            "SCOPEALLOC_TEST_WRITE_AFTER_FREE",
            &format!("{at},{leave}"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if at == "none" {
            assert!(
                out.status.success() && stdout.contains("missed"),
                "an untouched block leaves quietly: {}\n{stderr}",
                out.status
            );
        } else {
            assert!(
                !out.status.success() && stderr.contains("was written after free"),
                "a write after free at the {at}, then {leave}: {}\n{stdout}\n{stderr}",
                out.status
            );
        }
    }
}

/// Runs test `name` of this binary again in a process of its own, alone (with
/// `SCOPEALLOC_TEST_ALONE` set): for tests that make system calls fail, which would refuse
/// other tests' memory too.
#[cfg(feature = "secure")]
fn rerun_alone(name: &str) {
    let out = rerun(name, "SCOPEALLOC_TEST_ALONE", "1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} alone: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// When the kernel refuses to open a quarantined span for a new block, the span is released and a
/// fresh one is tried; if that is refused too, the allocation is refused with nothing charged,
/// and once the kernel agrees again large blocks are served, guarded, as before.
#[cfg(feature = "secure")]
#[test]
fn secure_rust_a_refused_reopening_refuses_cleanly() {
    use scopealloc::testing::{fail_after, os_calls, OsCall};
    use std::alloc::{GlobalAlloc, Layout};
    if std::env::var_os("SCOPEALLOC_TEST_ALONE").is_none() {
        return rerun_alone("secure_rust_a_refused_reopening_refuses_cleanly");
    }
    let long = Layout::from_size_align(240 << 10, 8).unwrap();
    let short = Layout::from_size_align(190 << 10, 8).unwrap();
    let other = Layout::from_size_align(600 << 10, 8).unwrap();
    scopealloc::trim();
    let scope = scopealloc::Scope::root().child("refused-guard");
    // SAFETY: non-zero layouts; every block is freed once with its layout.
    unsafe {
        let first = GLOBAL.alloc(long);
        GLOBAL.dealloc(first, long);
        age_quarantine(other);
        // `first` now serves `short` with one mprotect (its pages opened): refuse it, and every call
        // after it.
        let calls = os_calls(OsCall::Protect);
        let refused = scope.run(|| {
            fail_after(OsCall::Protect, Some(0));
            let p = GLOBAL.alloc(short);
            fail_after(OsCall::Protect, None);
            p
        });
        assert!(
            refused.is_null(),
            "every guard refused: the request is refused"
        );
        assert_eq!(
            os_calls(OsCall::Protect) - calls,
            3,
            "opening the block, opening the released span, the fresh span's first guard"
        );
        let st = scope.stats();
        assert_eq!(
            (st.bytes, st.objects, st.charged_bytes, st.allocs),
            (0, 0, 0, 0),
            "nothing charged for the refused block"
        );
        let p = scope.run(|| GLOBAL.alloc(short));
        assert!(!p.is_null());
        assert_ne!(
            p, first,
            "a span whose guards stayed up is never handed out again"
        );
        assert_guarded(p, short.size());
        p.write_bytes(0x44, short.size());
        assert_eq!(scope.stats().objects, 1);
        GLOBAL.dealloc(p, short);
    }
    scope.close();
    scopealloc::trim();
}

/// Runs test `name` of this binary alone in a child process with `var` set to `value` (the
/// child does the bug, and aborts if the allocator catches it); how it ended.
#[cfg(feature = "secure")]
fn rerun(name: &str, var: &str, value: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(var, value)
        .output()
        .unwrap()
}

/// Regression: the canary pad was one byte, so an overflow whose first byte happened to equal it
/// (one random byte in 128) and that stopped short of the trailer went unseen: the bug suite's
/// `overflow-32-memcpy-4k` was missed now and then. Here each overflow writes the pad's own first
/// byte at `n` and changes the bytes after it, up to `len` bytes (never reaching the trailer);
/// the free must abort naming the block. The child process does the overflow (it aborts); the
/// parent checks how it ended.
#[cfg(feature = "secure")]
#[test]
fn secure_rust_an_overflow_that_begins_with_the_pad_byte_is_caught() {
    use std::alloc::{GlobalAlloc, Layout};
    const NAME: &str = "secure_rust_an_overflow_that_begins_with_the_pad_byte_is_caught";
    if let Some(mode) = std::env::var_os("SCOPEALLOC_TEST_OVERFLOW") {
        let mode = mode.into_string().unwrap();
        let (n, len) = mode.split_once(',').unwrap();
        let (n, len): (usize, usize) = (n.parse().unwrap(), len.parse().unwrap());
        let l = Layout::from_size_align(n, 8).unwrap();
        // SAFETY: a non-zero layout; the bytes written past `n` lie inside the block (before its
        // trailer, by the choice of sizes below): a deliberate overflow, which the free must see.
        unsafe {
            let p = GLOBAL.alloc(l);
            assert!(!p.is_null());
            for i in 1..len {
                let b = p.add(n + i);
                b.write(b.read() ^ 0x5a);
            }
            GLOBAL.dealloc(p, l);
        }
        println!("missed");
        return;
    }
    // (asked, bytes overflowed): 32 bytes into the slack of 4 KiB, 1000 B and 300 B blocks; 3 and
    // 7 bytes where the slack before the trailer is that long (a 128 B and a 64 B block).
    for (n, len) in [(4096, 32), (1000, 32), (300, 32), (117, 3), (49, 7)] {
        let out = rerun(NAME, "SCOPEALLOC_TEST_OVERFLOW", &format!("{n},{len}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("was overwritten"),
            "a {len}-byte overflow of a {n} B block that begins with the pad byte: {}\n{}\n{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Seconds before a run counts as hung.
const TIMEOUT: &str = "20";

/// Where Debian installs the other allocators.
const SYSTEM_LIBS: &str = "/usr/lib/x86_64-linux-gnu";

/// Modes the secure library must catch (abort with one line), every one of them, every run.
/// Not here: the writes after free it does not see (into the middle or tail of a small block,
/// where no word of the free list or trailer lies).
const SECURE_CATCHES: &[&str] = &[
    "double-free-immediate-64",
    "double-free-immediate-4k",
    "double-free-immediate-256k",
    "double-free-after-others-64",
    "double-free-after-others-4k",
    "double-free-after-others-256k",
    "double-free-interleaved-64",
    "double-free-interleaved-4k",
    "double-free-interleaved-256k",
    "double-free-after-reuse-64",
    "double-free-after-reuse-4k",
    "double-free-after-reuse-256k",
    "double-free-cross-thread-64",
    "double-free-cross-thread-4k",
    "double-free-cross-thread-256k",
    "invalid-free-stack",
    "invalid-free-alloca",
    "invalid-free-interior-64",
    "invalid-free-interior-4k",
    "invalid-free-interior-256k",
    "invalid-free-unaligned-64",
    "invalid-free-unaligned-4k",
    "invalid-free-unaligned-256k",
    "invalid-free-past-end-64",
    "invalid-free-past-end-4k",
    "invalid-free-past-end-256k",
    "invalid-free-far-64",
    "invalid-free-far-4k",
    "invalid-free-far-256k",
    "overflow-1-64",
    "overflow-1-4k",
    "overflow-1-256k",
    "overflow-32-memcpy-64",
    "overflow-32-memcpy-4k",
    "overflow-32-memcpy-256k",
    "underflow-1-64",
    "underflow-1-4k",
    "underflow-1-256k",
    "underflow-32-memcpy-64",
    "underflow-32-memcpy-4k",
    "underflow-32-memcpy-256k",
    "overflow-1-4m",
    "overflow-32-memcpy-4m",
    "underflow-1-4m",
    "underflow-32-memcpy-4m",
    "overflow-nul-100",
    "overflow-1-after-realloc-64",
    "write-after-free-64",
    "write-after-free-4k",
    "write-after-free-256k",
    "absurd-size",
    "absurd-size-half-max",
    "absurd-size-4t",
    "absurd-calloc-overflow",
    "absurd-calloc-4t",
    "absurd-realloc-4t",
    "absurd-aligned-4t",
];

/// Modes that are no bug: every allocator must run them to their end (no false alarm).
const CLEAN: &[&str] = &["usable-size-is-writable"];

/// A mode the plain library does not catch and the secure one does: if the plain library caught
/// it, Cargo would have built it with the `secure` feature too.
const ONLY_SECURE: &str = "double-free-interleaved-64";

/// The bug suite, compiled without optimisations that would see through the bugs.
fn suite() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("secure");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("secure_bugs");
    let out = Command::new("cc")
        .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .args(["-Wno-use-after-free", "-Wno-free-nonheap-object"])
        .arg(root().join("tests/c/secure_bugs.c"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    check(&out, "cc tests/c/secure_bugs.c");
    exe
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Caught,
    Crashed,
    Missed,
    Hung,
}

impl Outcome {
    fn cell(self) -> &'static str {
        match self {
            Outcome::Caught => "caught",
            Outcome::Crashed => "crashed",
            Outcome::Missed => "missed",
            Outcome::Hung => "hung",
        }
    }
}

/// One allocator of the table: its column name, what to preload and extra environment.
struct Allocator {
    name: &'static str,
    preload: Option<PathBuf>,
    env: &'static [(&'static str, &'static str)],
}

/// Runs `mode` under `a`; the outcome and the first line of stderr.
fn run(exe: &Path, mode: &str, a: &Allocator) -> (Outcome, String) {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", TIMEOUT]).arg(exe).arg(mode);
    cmd.env_remove("LD_PRELOAD").env_remove("SCOPEALLOC_CHECK");
    if let Some(so) = &a.preload {
        cmd.env("LD_PRELOAD", so);
    }
    for (k, v) in a.env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the bug suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().next().unwrap_or("").to_string();
    let outcome = match out.status.code() {
        Some(0) if stdout.contains("completed") => Outcome::Missed,
        // timeout(1) -s KILL exits 137 when it killed the program.
        Some(137) => Outcome::Hung,
        _ if !line.is_empty() => Outcome::Caught,
        _ => Outcome::Crashed,
    };
    (outcome, line)
}

#[test]
fn the_secure_library_catches_the_bug_suite_and_the_plain_one_is_unchanged() {
    let (plain, secure) = libraries();
    let exe = suite();
    let system = |file: &str| {
        let p = Path::new(SYSTEM_LIBS).join(file);
        p.is_file().then_some(p)
    };
    let mut allocators = vec![Allocator {
        name: "glibc",
        preload: None,
        env: &[],
    }];
    for (name, file) in [
        ("jemalloc", "libjemalloc.so.2"),
        ("mimalloc", "libmimalloc.so.2"),
    ] {
        match system(file) {
            Some(p) => allocators.push(Allocator {
                name,
                preload: Some(p),
                env: &[],
            }),
            None => println!("{name}: {SYSTEM_LIBS}/{file} not installed, column left out"),
        }
    }
    allocators.push(Allocator {
        name: "scopealloc",
        preload: Some(plain.clone()),
        env: &[],
    });
    allocators.push(Allocator {
        name: "scopealloc CHECK=1",
        preload: Some(plain),
        env: &[("SCOPEALLOC_CHECK", "1")],
    });
    allocators.push(Allocator {
        name: "scopealloc secure",
        preload: Some(secure),
        env: &[],
    });

    let list = Command::new(&exe).arg("list").output().expect("list modes");
    check(&list, "secure_bugs list");
    let modes: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(SECURE_CATCHES.contains(&ONLY_SECURE));
    for m in SECURE_CATCHES.iter().chain(CLEAN).chain([&ONLY_SECURE]) {
        assert!(
            modes.iter().any(|x| x == m),
            "{m} is not a mode of the suite"
        );
    }

    let mut table = String::from("| bug |");
    for a in &allocators {
        table += &format!(" {} |", a.name);
    }
    table += "\n|---|";
    table += &"---|".repeat(allocators.len());
    table += "\n";
    let mut caught = vec![0usize; allocators.len()];
    let mut failures = Vec::new();
    let mut secure_lines = String::new();
    for mode in &modes {
        table += &format!("| {mode} |");
        for (i, a) in allocators.iter().enumerate() {
            let (outcome, line) = run(&exe, mode, a);
            table += &format!(" {} |", outcome.cell());
            if outcome == Outcome::Caught {
                caught[i] += 1;
            }
            if a.name == "scopealloc secure" {
                secure_lines += &format!("{mode}: {line}\n");
                if SECURE_CATCHES.contains(&mode.as_str()) && outcome != Outcome::Caught {
                    failures.push(format!(
                        "secure library: {mode} {} ({line})",
                        outcome.cell()
                    ));
                }
            }
            if CLEAN.contains(&mode.as_str()) && outcome != Outcome::Missed {
                failures.push(format!(
                    "{}: {mode} (no bug) {} ({line})",
                    a.name,
                    outcome.cell()
                ));
            }
            if a.name == "scopealloc" && mode == ONLY_SECURE && outcome == Outcome::Caught {
                failures.push(format!(
                    "plain library caught {mode} ({line}): built with the secure feature?"
                ));
            }
        }
        table += "\n";
    }
    table += "| **caught** |";
    for c in &caught {
        table += &format!(" **{c} / {}** |", modes.len());
    }
    table += "\n";
    println!("{table}\nThe secure library's lines:\n{secure_lines}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("secure/table.md");
    std::fs::write(&out, &table).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! The allocator never panics on its own path (docs/ARCHITECTURE.md): no function that the C
//! library's allocation entry points reach may call into Rust's panic machinery, which formats a
//! message (allocating, through the allocator itself) and unwinds or aborts. A bounds check, a
//! division by a value the compiler cannot prove non-zero or an `unwrap` leaves such a call in
//! the code even when it can never run; this test finds them in the release libraries
//! (libscopealloc.so and libscopealloc_secure.so) by reading their code with `objdump -d`.
//!
//! From `malloc`, `free`, `calloc`, `realloc`, the aligned allocations and `malloc_usable_size`,
//! it follows every direct call and jump (indirect calls are not followed: the few function
//! pointers on these paths are the C library's own refusals, reached directly from them too),
//! stopping at the panic entry points, and fails naming each function of ours that calls one,
//! with the source line of the call. Needs `objdump` and `addr2line` (binutils).
#![cfg(not(loom))]

#[path = "common/clib.rs"]
mod clib;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The exported functions a program calls.
const ROOTS: &[&str] = &[
    "malloc",
    "free",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "malloc_usable_size",
    "__libc_malloc",
    "__libc_free",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_memalign",
];

/// Whether `symbol` is an entry into the panic machinery (core's and std's).
fn is_panic_entry(symbol: &str) -> bool {
    [
        "panicking",
        "panic_fmt",
        "panic_const",
        "slice_index_fail",
        "slice_start_index",
        "slice_end_index",
        "unwrap_failed",
        "expect_failed",
    ]
    .iter()
    .any(|p| symbol.contains(p))
}

/// A library's functions: for each, the direct call and jump targets, and the addresses of its
/// calls and jumps into the panic machinery.
struct Code {
    edges: BTreeMap<String, BTreeSet<String>>,
    panics: BTreeMap<String, Vec<String>>,
}

fn disassemble(lib: &Path) -> Code {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(lib)
        .output()
        .expect("run objdump (binutils)");
    clib::check(&out, "objdump -d");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut code = Code {
        edges: BTreeMap::new(),
        panics: BTreeMap::new(),
    };
    let mut current: Option<String> = None;
    for line in text.lines() {
        // "000000000001a480 <free>:" starts a function.
        if let Some(name) = line
            .split_once(" <")
            .filter(|(addr, rest)| {
                rest.ends_with(">:") && addr.chars().all(|c| c.is_ascii_hexdigit())
            })
            .map(|(_, rest)| rest.trim_end_matches(">:").to_string())
        {
            code.edges.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some(f) = &current else { continue };
        // "   1a4ea:\tjne    47f40 <free_slow_untrusted_or>": a direct call or jump.
        let mut fields = line.split('\t');
        let (Some(addr), Some(insn)) = (fields.next(), fields.next()) else {
            continue;
        };
        let op = insn.split_whitespace().next().unwrap_or("");
        if !(op.starts_with('j') || op == "call") {
            continue;
        }
        let Some(target) = insn
            .split_once('<')
            .map(|(_, t)| t.trim_end_matches('>'))
            .map(|t| t.split('+').next().unwrap_or(t).to_string())
        else {
            continue;
        };
        if &target == f {
            continue;
        }
        if is_panic_entry(&target) && !is_panic_entry(f) {
            code.panics
                .entry(f.clone())
                .or_default()
                .push(addr.trim().trim_end_matches(':').to_string());
        }
        code.edges.get_mut(f).unwrap().insert(target);
    }
    code
}

/// The functions reachable from the roots present, not entering the panic machinery.
fn reachable(code: &Code) -> BTreeSet<String> {
    let mut seen: BTreeSet<String> = ROOTS
        .iter()
        .filter(|r| code.edges.contains_key(**r))
        .map(|r| r.to_string())
        .collect();
    let mut todo: Vec<String> = seen.iter().cloned().collect();
    while let Some(f) = todo.pop() {
        for g in code.edges.get(&f).into_iter().flatten() {
            if !is_panic_entry(g) && seen.insert(g.clone()) {
                todo.push(g.clone());
            }
        }
    }
    seen
}

/// The innermost source line of ours for `addr` in `lib` (its inlined frames, by addr2line).
fn source_of(lib: &Path, addr: &str) -> String {
    let out = Command::new("addr2line")
        .args(["-i", "-e"])
        .arg(lib)
        .arg(format!("0x{addr}"))
        .output()
        .expect("run addr2line (binutils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| !l.contains("/rustc/") && !l.contains("/.cargo/"))
        .unwrap_or(text.lines().next().unwrap_or("?"))
        .to_string()
}

#[test]
fn the_allocation_entry_points_reach_no_panic() {
    let (plain, secure) = clib::libraries();
    for lib in [plain, secure] {
        let code = disassemble(&lib);
        let reached = reachable(&code);
        // The reading must see what it looks for: the libraries do hold panic calls (off the
        // allocator's path: reports, options), and the allocation paths are dozens of functions.
        assert!(
            !code.panics.is_empty(),
            "{}: no call into the panic machinery found anywhere: the parse is broken",
            lib.display()
        );
        assert!(
            reached.len() >= 30 && reached.contains("free"),
            "{}: only {} functions reached from the entry points: the parse is broken",
            lib.display(),
            reached.len()
        );
        let mut bad = Vec::new();
        for f in &reached {
            for addr in code.panics.get(f).into_iter().flatten() {
                bad.push(format!("{f} at {}", source_of(&lib, addr)));
            }
        }
        println!(
            "{}: {} functions reachable from the entry points, {} panic calls among them",
            lib.display(),
            reached.len(),
            bad.len()
        );
        assert!(
            bad.is_empty(),
            "{}: the allocator's own path can panic:\n{}",
            lib.display(),
            bad.join("\n")
        );
    }
}

//! Options from the environment (`SCOPEALLOC_*`), read once by a constructor.
//!
//! The first `malloc` can come long before `main`: from the dynamic loader, from libc's own
//! start-up, from another library's constructor. So options are never read on the allocation
//! path. The constructor below sits in `.init_array`; the loader runs it after libc is
//! initialised (so `getenv` is safe) and before the program's `main`. Until it has run, the
//! defaults apply (no limit, no checks, no report). It stores what it read in atomics and calls
//! the core's setters, none of which allocates.
//!
//! A value that does not parse gives one warning line on stderr and the default; never a crash.

use crate::out::{StackBuf, PREFIX};
use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, CStr};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
use scopealloc::Scope;

/// `SCOPEALLOC_CHECK=1`: extra checks in `free`/`realloc` (double free) and junk/poison fills.
pub static CHECK: AtomicBool = AtomicBool::new(false);
/// Largest request `malloc` serves by its fast path (`raw::malloc_small`): 0 in check mode, so
/// that one comparison stands for both the size test and the mode test.
pub static MALLOC_FAST_MAX: AtomicUsize = AtomicUsize::new(scopealloc::raw::MALLOC_SMALL_MAX);
/// The limit `free` passes to `raw::free_untrusted_or`: `raw::UNTRUSTED_LIMIT`, or 0 in check
/// mode, so that one comparison stands for the registry's bound, null and the mode test.
pub static FREE_FAST_LIMIT: AtomicUsize = AtomicUsize::new(scopealloc::raw::UNTRUSTED_LIMIT);

/// Turns check mode on or off (`SCOPEALLOC_CHECK`), with the fast path's threshold.
fn set_check(on: bool) {
    CHECK.store(on, Ordering::Relaxed);
    // The check mode sends every malloc and free down the checked path.
    let (fast_max, free_limit) = if on {
        (0, 0)
    } else {
        (
            scopealloc::raw::MALLOC_SMALL_MAX,
            scopealloc::raw::UNTRUSTED_LIMIT,
        )
    };
    MALLOC_FAST_MAX.store(fast_max, Ordering::Relaxed);
    FREE_FAST_LIMIT.store(free_limit, Ordering::Relaxed);
}

/// `SCOPEALLOC_STATS=1|text|json|prometheus`: print the report at exit.
pub static STATS: AtomicBool = AtomicBool::new(false);

/// The report's format, for the report at exit and on `SCOPEALLOC_STATS_SIGNAL`: one of
/// [`FORMAT_TEXT`], [`FORMAT_JSON`], [`FORMAT_PROMETHEUS`] (text unless `SCOPEALLOC_STATS`
/// names another).
pub static STATS_FORMAT: AtomicU8 = AtomicU8::new(FORMAT_TEXT);

/// The flat text report (`SCOPEALLOC_REPORT_TEXT` in the header).
pub const FORMAT_TEXT: u8 = 0;
/// JSON (`SCOPEALLOC_REPORT_JSON`).
pub const FORMAT_JSON: u8 = 1;
/// Prometheus text exposition (`SCOPEALLOC_REPORT_PROMETHEUS`).
pub const FORMAT_PROMETHEUS: u8 = 2;

/// `SCOPEALLOC_STATS_SIGNAL`: the signal number that asks for a report (0: none).
pub static STATS_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Longest `SCOPEALLOC_STATS_FILE` accepted, terminating NUL included.
pub const PATH_MAX: usize = 4096;

/// `SCOPEALLOC_STATS_FILE`, copied at start-up (the environment may change later). Written once
/// by the constructor before `STATS_FILE_SET` is published; read-only afterwards.
pub struct PathCell(UnsafeCell<[u8; PATH_MAX]>);

// SAFETY: the cell is written only by the constructor, before the Release store to
// STATS_FILE_SET; readers load STATS_FILE_SET with Acquire first and never write.
unsafe impl Sync for PathCell {}

static STATS_FILE: PathCell = PathCell(UnsafeCell::new([0; PATH_MAX]));
static STATS_FILE_SET: AtomicBool = AtomicBool::new(false);

/// The report's file name (NUL-terminated), if `SCOPEALLOC_STATS_FILE` was given.
pub fn stats_file() -> Option<&'static [u8; PATH_MAX]> {
    if STATS_FILE_SET.load(Ordering::Acquire) {
        // SAFETY: published by the constructor and never written again (see PathCell).
        Some(unsafe { &*STATS_FILE.0.get() })
    } else {
        None
    }
}

/// The constructor, run by the dynamic loader (or by libc's start-up code for a static
/// program) with the usual `(argc, argv, envp)` arguments, which it does not need.
#[used]
#[link_section = ".init_array"]
static READ_OPTIONS_AT_START: extern "C" fn(c_int, *const *const c_char, *const *const c_char) =
    read_options;

extern "C" fn read_options(_argc: c_int, _argv: *const *const c_char, _env: *const *const c_char) {
    #[cfg(feature = "fault-injection")]
    if let Some(v) = env(c"SCOPEALLOC_FAIL") {
        crate::faults::arm_from_env(v);
    }
    if let Some(v) = env(c"SCOPEALLOC_LIMIT") {
        match parse_size(v) {
            Some(0) => {}
            Some(bytes) => Scope::root().set_limit(Some(bytes as usize)),
            None => warn(
                b"SCOPEALLOC_LIMIT",
                v,
                b"expected bytes with an optional K, M, G or T suffix, like 512M",
                b"no limit",
            ),
        }
    }
    if let Some(v) = env(c"SCOPEALLOC_STATS") {
        match parse_stats(v) {
            Some(None) => STATS.store(false, Ordering::Relaxed),
            Some(Some(format)) => {
                STATS_FORMAT.store(format, Ordering::Relaxed);
                STATS.store(true, Ordering::Relaxed);
            }
            None => warn(
                b"SCOPEALLOC_STATS",
                v,
                b"expected 0, 1, text, json or prometheus",
                b"0",
            ),
        }
    }
    if let Some(v) = env(c"SCOPEALLOC_STATS_FILE") {
        if v.is_empty() || v.len() >= PATH_MAX {
            warn(
                b"SCOPEALLOC_STATS_FILE",
                v,
                b"expected a file name of 1 to 4095 bytes",
                b"stderr",
            );
        } else {
            // SAFETY: the constructor runs once, before anyone reads the cell (STATS_FILE_SET
            // is still false), and v.len() < PATH_MAX leaves room for the zeroed terminator.
            unsafe { (&mut *STATS_FILE.0.get())[..v.len()].copy_from_slice(v) };
            STATS_FILE_SET.store(true, Ordering::Release);
        }
    }
    if let Some(v) = env(c"SCOPEALLOC_STATS_SIGNAL") {
        match parse_signal(v) {
            Some(sig) => STATS_SIGNAL.store(sig, Ordering::Relaxed),
            None => warn(
                b"SCOPEALLOC_STATS_SIGNAL",
                v,
                b"expected USR1, USR2 or HUP (optionally with SIG)",
                b"none",
            ),
        }
    }
    if let Some(v) = env(c"SCOPEALLOC_CHECK") {
        match parse_flag(v) {
            Some(on) => set_check(on),
            None => warn(b"SCOPEALLOC_CHECK", v, b"expected 0 or 1", b"0"),
        }
    }
    if let Some(v) = env(c"SCOPEALLOC_DECAY_MS") {
        match parse_u64(v) {
            Some(ms) => scopealloc::set_decay_ms(ms),
            None => warn(
                b"SCOPEALLOC_DECAY_MS",
                v,
                b"expected milliseconds, like 1000",
                b"1000",
            ),
        }
    }
    let sig = STATS_SIGNAL.load(Ordering::Relaxed);
    if sig != 0 {
        crate::signal::start(sig);
    }
}

/// The value of an environment variable, if set.
fn env(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv is safe once libc is initialised (constructors run after that) and while
    // no other thread changes the environment (none exists yet in a normal start-up).
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: getenv returned a NUL-terminated string of the initial environment, which
        // lives as long as the process.
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }
}

/// One line: `scopealloc: warning: ignoring NAME="value": why; using default`.
pub(crate) fn warn(name: &[u8], value: &[u8], why: &[u8], default: &[u8]) {
    let mut line = StackBuf::<512>::new();
    line.bytes(PREFIX)
        .bytes(b"warning: ignoring ")
        .bytes(name)
        .byte(b'=')
        .quoted(value, 64)
        .bytes(b": ")
        .bytes(why)
        .bytes(b"; using the default (")
        .bytes(default)
        .bytes(b")\n");
    line.write_to(libc::STDERR_FILENO);
}

/// `0` or `1`.
fn parse_flag(v: &[u8]) -> Option<bool> {
    match v {
        b"0" => Some(false),
        b"1" => Some(true),
        _ => None,
    }
}

/// `SCOPEALLOC_STATS`: `Some(None)` for off, `Some(Some(format))` for on.
fn parse_stats(v: &[u8]) -> Option<Option<u8>> {
    match v {
        b"0" => Some(None),
        b"1" | b"text" => Some(Some(FORMAT_TEXT)),
        b"json" => Some(Some(FORMAT_JSON)),
        b"prometheus" => Some(Some(FORMAT_PROMETHEUS)),
        _ => None,
    }
}

/// A signal name: `USR1`, `USR2` or `HUP`, optionally prefixed with `SIG` (any case).
fn parse_signal(v: &[u8]) -> Option<c_int> {
    let v = match v {
        [s, i, g, rest @ ..] if [*s, *i, *g].eq_ignore_ascii_case(b"SIG") => rest,
        _ => v,
    };
    [
        (&b"USR1"[..], libc::SIGUSR1),
        (b"USR2", libc::SIGUSR2),
        (b"HUP", libc::SIGHUP),
    ]
    .into_iter()
    .find(|(name, _)| v.eq_ignore_ascii_case(name))
    .map(|(_, sig)| sig)
}

/// A decimal number without sign or suffix.
pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add((b - b'0') as u64)
        } else {
            None
        }
    })
}

/// A byte count: digits, then optionally `K`, `M`, `G` or `T` (any case, powers of 1024),
/// optionally followed by `B` or `iB` (`512M`, `512MB`, `512MiB`, `4096`, `4096B`).
fn parse_size(v: &[u8]) -> Option<u64> {
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = parse_u64(&v[..digits])?;
    let mut rest = &v[digits..];
    let mut shift = 0;
    if let Some((&u, tail)) = rest.split_first() {
        shift = match u.to_ascii_uppercase() {
            b'K' => 10,
            b'M' => 20,
            b'G' => 30,
            b'T' => 40,
            _ => 0,
        };
        if shift != 0 {
            rest = tail;
        }
    }
    let unit_ok = match rest {
        [] => true,
        [b] => b.eq_ignore_ascii_case(&b'B'),
        [i, b] => shift != 0 && *i == b'i' && b.eq_ignore_ascii_case(&b'B'),
        _ => false,
    };
    if !unit_ok {
        return None;
    }
    let bytes = n.checked_mul(1u64 << shift)?;
    // A limit must fit in the address space.
    (bytes <= isize::MAX as u64).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_suffixes() {
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"4096B"), Some(4096));
        assert_eq!(parse_size(b"512M"), Some(512 << 20));
        assert_eq!(parse_size(b"512m"), Some(512 << 20));
        assert_eq!(parse_size(b"512MB"), Some(512 << 20));
        assert_eq!(parse_size(b"512MiB"), Some(512 << 20));
        assert_eq!(parse_size(b"2G"), Some(2 << 30));
        assert_eq!(parse_size(b"1k"), Some(1024));
        assert_eq!(parse_size(b"3T"), Some(3 << 40));
    }

    #[test]
    fn sizes_reject_garbage_and_overflow() {
        for bad in [
            &b""[..],
            b"M",
            b"-1",
            b" 5",
            b"5 ",
            b"5X",
            b"5iB",
            b"5MM",
            b"1.5G",
            b"99999999999999999999",
            b"9999999999999T",
        ] {
            assert_eq!(parse_size(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn flags_are_zero_or_one() {
        assert_eq!(parse_flag(b"0"), Some(false));
        assert_eq!(parse_flag(b"1"), Some(true));
        assert_eq!(parse_flag(b"yes"), None);
        assert_eq!(parse_flag(b""), None);
    }

    #[test]
    fn stats_take_a_format() {
        assert_eq!(parse_stats(b"0"), Some(None));
        assert_eq!(parse_stats(b"1"), Some(Some(FORMAT_TEXT)));
        assert_eq!(parse_stats(b"text"), Some(Some(FORMAT_TEXT)));
        assert_eq!(parse_stats(b"json"), Some(Some(FORMAT_JSON)));
        assert_eq!(parse_stats(b"prometheus"), Some(Some(FORMAT_PROMETHEUS)));
        assert_eq!(parse_stats(b"yes"), None);
        assert_eq!(parse_stats(b"JSON "), None);
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(parse_signal(b"USR2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal(b"SIGUSR2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal(b"sigusr1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal(b"HUP"), Some(libc::SIGHUP));
        assert_eq!(parse_signal(b"KILL"), None);
        assert_eq!(parse_signal(b"SIG"), None);
        assert_eq!(parse_signal(b"12"), None);
    }

    #[test]
    fn milliseconds_are_plain_numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"250"), Some(250));
        assert_eq!(parse_u64(b"250ms"), None);
        assert_eq!(parse_u64(b""), None);
    }
}

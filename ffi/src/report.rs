//! The statistics report: allocator figures and the scope tree, as plain text lines.
//!
//! Printed at exit with `SCOPEALLOC_STATS=1` or `text` (by a destructor in `.fini_array`, which
//! the loader runs after the program's `atexit` handlers and the destructors of libraries loaded
//! after this one), on `SCOPEALLOC_STATS_SIGNAL` (see `signal`), and on demand by
//! `scopealloc_print_stats` and `scopealloc_report`. JSON and Prometheus (`json`, `prometheus`)
//! come from the core's `Report`, which allocates its text outside any allocator lock. Each line is formatted into a stack
//! buffer and written with `libc::write`: no `core::fmt`, nothing that can recurse into
//! `malloc` while holding a lock. (`Scope::children` allocates its vector through the core
//! directly, outside any lock.)
//!
//! Format (one scope per line, indented two spaces per level; sizes in bytes):
//!
//! ```text
//! scopealloc: report of pid 4242
//! scopealloc: heap: mapped 8388608 (8.0 MiB), committed 8388608 (8.0 MiB), in use 196608 (192.0 KiB), cached 0 (0 B), returned 0 (0 B)
//! scopealloc: scopes: live 3, closed pending 0, caches 9 (dying 0), thread heaps 1
//! scopealloc: scope root id=1 bytes=1234 self_bytes=1000 objects=12 self_objects=10 peak=65536 charged=65536 allocs=40 frees=28 limit=none limit_hits=0
//! scopealloc:   scope tenant-a id=2 ...
//! ```

use crate::options;
use crate::out::{StackBuf, PREFIX};
use core::ffi::c_int;
use core::sync::atomic::Ordering;
use scopealloc::Scope;

/// Deepest level printed; deeper scopes are counted in their ancestors' `bytes`.
const MAX_DEPTH: usize = 32;

/// A line of the report.
type Line = StackBuf<512>;

/// The destructor that prints the report at exit when asked to.
#[used]
#[link_section = ".fini_array"]
static REPORT_AT_EXIT: extern "C" fn() = report_at_exit;

extern "C" fn report_at_exit() {
    if !options::STATS.load(Ordering::Relaxed) {
        return;
    }
    write_report(options::STATS_FORMAT.load(Ordering::Relaxed));
}

/// Writes the report in `format` (an `options::FORMAT_*`) to `SCOPEALLOC_STATS_FILE`
/// (appended, `%p` replaced by the process id) or stderr. Called at exit and by the signal
/// watcher, never with an allocator lock held (JSON and Prometheus allocate their text).
pub fn write_report(format: u8) {
    let Some(path) = options::stats_file() else {
        emit(libc::STDERR_FILENO, format);
        return;
    };
    let mut name = StackBuf::<{ options::PATH_MAX + 64 }>::new();
    expand_pid(path, &mut name);
    name.byte(0);
    let fd = if name.as_bytes().last() == Some(&0) {
        // SAFETY: `name` is NUL-terminated (checked just above).
        unsafe {
            libc::open(
                name.as_bytes().as_ptr().cast(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
                0o644,
            )
        }
    } else {
        crate::out::set_errno(libc::ENAMETOOLONG);
        -1
    };
    if fd < 0 {
        let err = crate::out::errno();
        let mut line = Line::new();
        line.bytes(PREFIX)
            .bytes(b"warning: cannot open SCOPEALLOC_STATS_FILE=")
            .quoted(until_nul(name.as_bytes()), 128)
            .bytes(b" (errno ")
            .u64(err as u64)
            .bytes(b"); printing the report on stderr\n");
        line.write_to(libc::STDERR_FILENO);
        emit(libc::STDERR_FILENO, format);
        return;
    }
    emit(fd, format);
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::close(fd) };
}

/// Writes the report in `format` to `fd`: the flat text report, or one line of JSON, or the
/// Prometheus exposition.
fn emit(fd: c_int, format: u8) {
    match format {
        options::FORMAT_JSON | options::FORMAT_PROMETHEUS => {
            if let Some(mut text) = render(format) {
                if format == options::FORMAT_JSON {
                    text.push('\n');
                }
                crate::out::write_all(fd, text.as_bytes());
            }
        }
        _ => print(fd),
    }
}

/// The JSON (compact, one line) or Prometheus text of a report of the whole tree taken now;
/// `None` if the OS refused memory for the snapshot (the report has no scope). Allocates: the
/// report's own memory is charged to the calling thread's current scope, after the figures
/// were read.
pub fn render(format: u8) -> Option<String> {
    let report = scopealloc::report();
    if report.scopes.is_empty() {
        return None;
    }
    Some(match format {
        options::FORMAT_JSON => report.to_json(),
        _ => report.prometheus(),
    })
}

/// Where the lines of the flat report go.
pub trait Sink {
    /// Takes the next bytes of the report.
    fn put(&mut self, bytes: &[u8]);
}

/// A file descriptor, written with `write(2)`.
pub struct FdSink(pub c_int);

impl Sink for FdSink {
    fn put(&mut self, bytes: &[u8]) {
        crate::out::write_all(self.0, bytes);
    }
}

/// A caller's buffer, filled like `snprintf` does: at most `buf.len() - 1` bytes of text and a
/// NUL, while `total` counts the whole report.
pub struct BufSink<'a> {
    /// Where the text goes (may be empty).
    pub buf: &'a mut [u8],
    /// Bytes of report seen so far, written or not.
    pub total: usize,
}

impl Sink for BufSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let room = self.buf.len().saturating_sub(1);
        if self.total < room {
            let n = bytes.len().min(room - self.total);
            self.buf[self.total..self.total + n].copy_from_slice(&bytes[..n]);
        }
        self.total += bytes.len();
    }
}

impl BufSink<'_> {
    /// Writes the terminating NUL (if the buffer has room for anything).
    pub fn finish(&mut self) {
        let room = self.buf.len().saturating_sub(1);
        if !self.buf.is_empty() {
            self.buf[self.total.min(room)] = 0;
        }
    }
}

/// Copies `path` (NUL-terminated) into `out`, replacing each `%p` with the process id.
fn expand_pid<const N: usize>(path: &[u8], out: &mut StackBuf<N>) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let path = until_nul(path);
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && path.get(i + 1) == Some(&b'p') {
            out.u64(pid);
            i += 2;
        } else {
            out.byte(path[i]);
            i += 1;
        }
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..n]
}

/// Writes the whole flat report to `fd`.
pub fn print(fd: c_int) {
    print_to(&mut FdSink(fd));
}

/// Writes the whole flat report to `sink`.
pub fn print_to(fd: &mut dyn Sink) {
    let mut line = Line::new();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    line.bytes(PREFIX)
        .bytes(b"report of pid ")
        .u64(pid)
        .byte(b'\n');
    fd.put(line.as_bytes());

    let h = scopealloc::heap_stats();
    let heap = [
        (&b"mapped"[..], h.mapped as u64),
        (b"committed", h.committed as u64),
        (b"in use", h.in_use as u64),
        (b"cached", h.cached as u64),
        (b"returned", h.returned as u64),
    ];
    fd.put(named_values(b"heap:", &heap, true).as_bytes());

    let g = scopealloc::global_stats();
    let mut line = Line::new();
    line.bytes(PREFIX)
        .bytes(b"scopes: live ")
        .u64(g.live_scopes as u64)
        .bytes(b", closed pending ")
        .u64(g.closed_scopes_pending as u64)
        .bytes(b", caches ")
        .u64(g.live_caches as u64)
        .bytes(b" (dying ")
        .u64(g.dying_caches as u64)
        .bytes(b"), thread heaps ")
        .u64(g.thread_heaps as u64)
        .byte(b'\n');
    fd.put(line.as_bytes());

    let sp = scopealloc::slow_paths();
    let slow = [
        (&b"malloc"[..], sp.malloc_slow),
        (b"stock refills", sp.stock_refills),
        (b"remote taken", sp.remote_taken),
        (b"carves", sp.carves),
        (b"slabs scanned", sp.slabs_scanned),
        (b"adopted", sp.adopted),
        (b"fresh slabs", sp.fresh_slabs),
        (b"free tails", sp.free_tails),
        (b"stock drains", sp.stock_drains),
        (b"slabs released", sp.slabs_released),
        (b"remote frees", sp.remote_frees),
        (b"abandoned frees", sp.abandoned_frees),
        (b"large allocs", sp.large_allocs),
        (b"large frees", sp.large_frees),
        (b"shared allocs", sp.shared_allocs),
        (b"stubs made", sp.stubs_made),
        (b"maintenance", sp.maintenance),
    ];
    fd.put(named_values(b"slow paths:", &slow, false).as_bytes());

    print_tree(fd, &Scope::root(), 0);
}

/// One line `scopealloc: LABEL name value, name value, ...`; with `sizes`, each value is also
/// given in human units (`mapped 11538432 (11.0 MiB)`).
fn named_values(label: &[u8], values: &[(&[u8], u64)], sizes: bool) -> Line {
    let mut line = Line::new();
    line.bytes(PREFIX).bytes(label);
    for (i, &(name, v)) in values.iter().enumerate() {
        line.bytes(if i == 0 { b" " } else { b", " })
            .bytes(name)
            .byte(b' ')
            .u64(v);
        if sizes {
            line.bytes(b" (").size(v).byte(b')');
        }
    }
    line.byte(b'\n');
    line
}

/// One line for `scope`, then its open children, depth first.
fn print_tree(fd: &mut dyn Sink, scope: &Scope, depth: usize) {
    let s = scope.stats();
    let mut line = Line::new();
    line.bytes(PREFIX)
        .spaces(2 * depth)
        .bytes(b"scope ")
        .printable(scope.name().as_bytes(), 64)
        .bytes(b" id=")
        .u64(scope.id())
        .bytes(b" bytes=")
        .u64(s.bytes)
        .bytes(b" self_bytes=")
        .u64(s.self_bytes)
        .bytes(b" objects=")
        .u64(s.objects)
        .bytes(b" self_objects=")
        .u64(s.self_objects)
        .bytes(b" peak=")
        .u64(s.peak_bytes)
        .bytes(b" charged=")
        .u64(s.charged_bytes)
        .bytes(b" allocs=")
        .u64(s.allocs)
        .bytes(b" frees=")
        .u64(s.frees)
        .bytes(b" limit=");
    match scope.limit() {
        Some(l) => line.u64(l as u64),
        None => line.bytes(b"none"),
    };
    line.bytes(b" limit_hits=").u64(s.limit_hits).byte(b'\n');
    fd.put(line.as_bytes());
    let children = scope.children();
    if depth >= MAX_DEPTH && !children.is_empty() {
        let mut line = Line::new();
        line.bytes(PREFIX)
            .spaces(2 * depth + 2)
            .bytes(b"(deeper scopes not shown)\n");
        fd.put(line.as_bytes());
        return;
    }
    for child in children {
        print_tree(fd, &child, depth + 1);
    }
}

//! The malloc family under glibc's names and with glibc's (2.36) semantics, so that
//! `LD_PRELOAD=libscopealloc.so` replaces glibc's allocator in any program, and glibc's own
//! internal calls (which go through the PLT, as glibc supports) land here too.
//!
//! Every function may be the first allocator call of the process, may run before this library's
//! constructor, and may be called from inside glibc (`dlerror`, `pthread_setspecific`, TLS
//! set-up): nothing here allocates through the global allocator, formats or unwinds, and the
//! locks the core takes on slow paths (a cache, the back end, the tree) are never held across a
//! call back into malloc. Failures set `errno` to `ENOMEM`
//! (`posix_memalign` returns the error instead and leaves `errno` alone). A pointer that the
//! allocator does not own, given to `free`, `realloc` or `malloc_usable_size`, prints one line
//! on stderr and aborts; with `SCOPEALLOC_CHECK=1` a double free does too, new objects are
//! filled with junk and freed ones poisoned.

use crate::options::{CHECK, FREE_FAST_LIMIT, MALLOC_FAST_MAX};
use crate::out::{errno, fatal_pointer, set_errno};
use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use core::sync::atomic::Ordering;
use scopealloc::raw;

/// Largest request served: glibc refuses sizes above `PTRDIFF_MAX` with `ENOMEM`, and the core's
/// size rounding relies on requests staying below it.
const MAX_REQUEST: usize = isize::MAX as usize;

/// Alignment of every `malloc` result (glibc's `MALLOC_ALIGNMENT`: 16 on 64-bit targets).
const MALLOC_ALIGNMENT: usize = 16;

/// Check mode fills at most this many bytes of an object (the start of bigger ones), so that
/// junk and poison stay cheap for multi-megabyte buffers.
const CHECK_FILL_MAX: usize = 64 << 10;
/// Fill of new objects in check mode: not zero, so reads of uninitialised memory show.
const JUNK: u8 = 0xa5;
/// Fill of freed objects in check mode: reads after free see obviously wrong data.
const POISON: u8 = 0xdf;

#[cold]
fn out_of_memory() -> *mut c_void {
    set_errno(libc::ENOMEM);
    null_mut()
}

/// Aborts unless `p` (not null) points into this allocator's objects; in check mode, unless it is
/// exactly the start of one.
#[inline(always)]
fn check_ours(function: &[u8], p: *const u8) {
    let ours = if CHECK.load(Ordering::Relaxed) {
        raw::is_block_start(p)
    } else {
        raw::owns(p)
    };
    if !ours {
        not_ours(function, p);
    }
}

/// Aborts with one line: `p`, given to `function`, is not a block of ours.
#[cold]
fn not_ours(function: &[u8], p: *const u8) -> ! {
    fatal_pointer(
        function,
        b"invalid pointer",
        p,
        b": not a block of scopealloc (foreign, inside a block, or a freed large block)",
    )
}

/// Check mode, before `p` (ours) is freed or moved: aborts on a double free.
#[cold]
fn check_not_free(function: &[u8], p: *const u8) {
    // SAFETY: every caller checked `raw::owns(p)` first (check_ours), so p points into memory of
    // ours.
    if unsafe { raw::is_double_free(p) } {
        fatal_pointer(function, b"double free of", p, b"");
    }
}

/// Check mode: fills the start of a new object with `JUNK`.
#[cold]
unsafe fn junk(p: *mut u8) {
    // SAFETY: p is a new object of ours; its usable size is writable.
    unsafe {
        let n = raw::usable_size(p).min(CHECK_FILL_MAX);
        core::ptr::write_bytes(p, JUNK, n);
    }
}

/// The result of an allocation: errno on failure, junk in check mode.
#[inline(always)]
fn finish(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        return out_of_memory();
    }
    if CHECK.load(Ordering::Relaxed) {
        // SAFETY: p is a new object of ours.
        unsafe { junk(p) };
    }
    p.cast()
}

/// `malloc`: 16-byte aligned; a unique pointer for 0 bytes; `NULL` and `ENOMEM` on failure
/// (including a refusal by a scope's limit).
///
/// # Safety
/// Always safe to call; `unsafe` because it is the C ABI.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // One comparison: the threshold is raw::MALLOC_SMALL_MAX, or 0 in check mode (which junks).
    if size <= MALLOC_FAST_MAX.load(Ordering::Relaxed) {
        // SAFETY: size <= MALLOC_FAST_MAX <= raw::MALLOC_SMALL_MAX.
        return unsafe { raw::malloc_small(size, refused_malloc) }.cast();
    }
    malloc_general(size)
}

/// A small malloc refused (out of memory or over a limit): errno, null.
fn refused_malloc() -> *mut u8 {
    out_of_memory().cast()
}

/// `malloc` past the fast path: large requests, and every request in check mode.
#[inline(never)]
fn malloc_general(size: usize) -> *mut c_void {
    if size > MAX_REQUEST {
        return out_of_memory();
    }
    // SAFETY: raw::malloc has no preconditions.
    finish(unsafe { raw::malloc(size) })
}

/// `free`: `NULL` is a no-op; a pointer not ours aborts with one line on stderr.
///
/// # Safety
/// `p` is `NULL` or a live pointer returned by this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // One comparison: the limit is raw::UNTRUSTED_LIMIT, or 0 in check mode, which sends every
    // pointer to free_refused (null too: it wraps to the top).
    // SAFETY: if p is in a block of ours, that block is live (the contract), and free_refused's
    // contract is free's.
    unsafe {
        raw::free_untrusted_or(
            p.cast(),
            FREE_FAST_LIMIT.load(Ordering::Relaxed),
            free_refused,
        )
    }
}

/// `free` of a pointer its fast path refused: every pointer in check mode; otherwise null (a
/// no-op) or a pointer not ours (one line, abort).
///
/// # Safety
/// As [`free`].
#[cold]
unsafe fn free_refused(p: *mut u8) {
    if CHECK.load(Ordering::Relaxed) {
        // SAFETY: the caller's contract is free's.
        return unsafe { free_checked(p) };
    }
    if !p.is_null() {
        not_ours(b"free", p);
    }
}

/// `free` in check mode: the exact block start, double frees, poison.
///
/// # Safety
/// As [`free`].
#[cold]
unsafe fn free_checked(p: *mut u8) {
    if p.is_null() {
        return;
    }
    check_ours(b"free", p);
    check_not_free(b"free", p);
    // SAFETY: p is a live object of ours (the caller's contract, checked above as far as the
    // allocator can), so its usable size is writable until it is freed below.
    unsafe {
        core::ptr::write_bytes(p, POISON, raw::usable_size(p).min(CHECK_FILL_MAX));
        raw::free(p)
    }
}

/// `calloc`: zeroed; `NULL` and `ENOMEM` if `n * size` overflows or memory runs out.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) if total <= MAX_REQUEST => {}
        _ => return out_of_memory(),
    }
    // SAFETY: raw::calloc has no preconditions. No junk here: the memory must stay zeroed.
    let p = unsafe { raw::calloc(n, size) };
    if p.is_null() {
        return out_of_memory();
    }
    p.cast()
}

/// `realloc`: `NULL` → `malloc(size)`; size 0 frees `p` and returns `NULL` (glibc's choice);
/// on failure returns `NULL`, sets `ENOMEM` and leaves `p` untouched.
///
/// # Safety
/// `p` is `NULL` or a live pointer returned by this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        // SAFETY: malloc is always safe.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // SAFETY: p is live and ours (caller's contract; free checks it).
        unsafe { free(p) };
        return null_mut();
    }
    let p = p.cast::<u8>();
    check_ours(b"realloc", p);
    if CHECK.load(Ordering::Relaxed) {
        check_not_free(b"realloc", p);
    }
    if size > MAX_REQUEST {
        return out_of_memory();
    }
    // SAFETY: p is a live object of ours.
    let q = unsafe { raw::realloc(p, size) };
    if q.is_null() {
        return out_of_memory();
    }
    q.cast()
}

/// `reallocarray`: `realloc(p, n * size)` with the multiplication checked (`ENOMEM`, `p`
/// untouched, on overflow).
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract is realloc's.
        Some(total) => unsafe { realloc(p, total) },
        None => out_of_memory(),
    }
}

/// An object of `size` bytes aligned to `align`, a power of two; errno set on failure.
fn aligned(align: usize, size: usize) -> *mut c_void {
    if size > MAX_REQUEST {
        return out_of_memory();
    }
    if align <= MALLOC_ALIGNMENT {
        // SAFETY: raw::malloc has no preconditions.
        return finish(unsafe { raw::malloc(size) });
    }
    // SAFETY: align is a power of two (callers check).
    finish(unsafe { raw::aligned_alloc(align, size) })
}

/// `posix_memalign`: `EINVAL` unless `align` is a power of two and a multiple of
/// `sizeof(void *)`; `ENOMEM` when out of memory. Never changes `errno`; `*memptr` is written
/// only on success.
///
/// # Safety
/// `memptr` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = aligned(align, size);
    set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller guarantees memptr is writable.
    unsafe { *memptr = p };
    0
}

/// `aligned_alloc`: any power-of-two alignment (like glibc, `size` need not be a multiple of
/// it); `NULL` and `EINVAL` for an alignment that is not a power of two (0 included), as in
/// glibc 2.38 and later and in C17 (glibc 2.36 rounds such an alignment up like `memalign`).
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    aligned(align, size)
}

/// `memalign` as glibc 2.36: alignments up to 16 are plain `malloc`; other alignments that
/// are not powers of two are rounded up to the next one; `EINVAL` above `SIZE_MAX / 2 + 1`.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if align > usize::MAX / 2 + 1 {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    aligned(align.next_power_of_two(), size)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE reads a value the loader set.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// `valloc`: page-aligned.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    aligned(page_size(), size)
}

/// `pvalloc`: page-aligned, size rounded up to a whole number of pages (`ENOMEM` if that
/// overflows).
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.checked_next_multiple_of(page) {
        Some(rounded) => aligned(page, rounded),
        None => out_of_memory(),
    }
}

/// `malloc_usable_size`: 0 for `NULL`; bytes usable at `p` (at least what was asked).
///
/// # Safety
/// `p` is `NULL` or a live pointer returned by this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    let p = p.cast::<u8>();
    if p.is_null() {
        return 0;
    }
    check_ours(b"malloc_usable_size", p);
    // SAFETY: p is a live object of ours.
    unsafe { raw::usable_size(p) }
}

/// `cfree`: the old name of `free`.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: same contract.
    unsafe { free(p) }
}

/// `malloc_trim`: gives free memory back to the OS now (`pad` is ignored); 1 if some memory was
/// released, else 0.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn malloc_trim(_pad: usize) -> c_int {
    let before = scopealloc::heap_stats().returned;
    scopealloc::trim();
    (scopealloc::heap_stats().returned > before) as c_int
}

/// glibc's `struct mallinfo2`, filled with this allocator's figures.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo2 {
    /// Memory taken from the OS and not given back (`HeapStats::committed`).
    pub arena: usize,
    /// Not tracked: 0.
    pub ordblks: usize,
    /// Not tracked: 0.
    pub smblks: usize,
    /// Not tracked separately (counted in `arena`): 0.
    pub hblks: usize,
    /// Not tracked separately (counted in `arena`): 0.
    pub hblkhd: usize,
    /// Always 0, as in glibc.
    pub usmblks: usize,
    /// Not tracked: 0.
    pub fsmblks: usize,
    /// Bytes of live objects (the root scope's `bytes`).
    pub uordblks: usize,
    /// `arena - uordblks`: committed memory not in live objects.
    pub fordblks: usize,
    /// Free pages kept committed, which `malloc_trim` would release (`HeapStats::cached`).
    pub keepcost: usize,
}

/// glibc's `struct mallinfo`: the same figures as `int`s (saturated at `INT_MAX`, where glibc
/// wraps).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Mallinfo {
    /// See [`Mallinfo2`].
    pub arena: c_int,
    /// See [`Mallinfo2`].
    pub ordblks: c_int,
    /// See [`Mallinfo2`].
    pub smblks: c_int,
    /// See [`Mallinfo2`].
    pub hblks: c_int,
    /// See [`Mallinfo2`].
    pub hblkhd: c_int,
    /// See [`Mallinfo2`].
    pub usmblks: c_int,
    /// See [`Mallinfo2`].
    pub fsmblks: c_int,
    /// See [`Mallinfo2`].
    pub uordblks: c_int,
    /// See [`Mallinfo2`].
    pub fordblks: c_int,
    /// See [`Mallinfo2`].
    pub keepcost: c_int,
}

/// `mallinfo2`.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn mallinfo2() -> Mallinfo2 {
    let h = scopealloc::heap_stats();
    let live = scopealloc::Scope::root().stats().bytes as usize;
    Mallinfo2 {
        arena: h.committed,
        uordblks: live,
        fordblks: h.committed.saturating_sub(live),
        keepcost: h.cached,
        ..Mallinfo2::default()
    }
}

/// `mallinfo` (deprecated in glibc): [`mallinfo2`] as `int`s.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn mallinfo() -> Mallinfo {
    let clamp = |v: usize| v.min(c_int::MAX as usize) as c_int;
    // SAFETY: always safe.
    let m = unsafe { mallinfo2() };
    Mallinfo {
        arena: clamp(m.arena),
        ordblks: clamp(m.ordblks),
        smblks: clamp(m.smblks),
        hblks: clamp(m.hblks),
        hblkhd: clamp(m.hblkhd),
        usmblks: clamp(m.usmblks),
        fsmblks: clamp(m.fsmblks),
        uordblks: clamp(m.uordblks),
        fordblks: clamp(m.fordblks),
        keepcost: clamp(m.keepcost),
    }
}

/// `malloc_stats`: prints this allocator's report (see `SCOPEALLOC_STATS`) on stderr, where
/// glibc prints its arenas.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn malloc_stats() {
    crate::report::print(libc::STDERR_FILENO);
}

// glibc's `__libc_*` names (all of those glibc 2.36 exports for the allocator; there is no
// `__libc_posix_memalign` or `__libc_aligned_alloc`). Some programs and sanitiser-like tools
// call them to reach "the real malloc"; here that is this one.

/// `__libc_malloc` = [`malloc`].
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { malloc(size) }
}

/// `__libc_free` = [`free`].
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: same contract.
    unsafe { free(p) }
}

/// `__libc_calloc` = [`calloc`].
///
/// # Safety
/// As [`calloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { calloc(n, size) }
}

/// `__libc_realloc` = [`realloc`].
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { realloc(p, size) }
}

/// `__libc_reallocarray` (`GLIBC_PRIVATE` in glibc) = [`reallocarray`].
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { reallocarray(p, n, size) }
}

/// `__libc_memalign` = [`memalign`].
///
/// # Safety
/// As [`memalign`].
#[no_mangle]
pub unsafe extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { memalign(align, size) }
}

/// `__libc_valloc` = [`valloc`].
///
/// # Safety
/// As [`valloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { valloc(size) }
}

/// `__libc_pvalloc` = [`pvalloc`].
///
/// # Safety
/// As [`pvalloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { pvalloc(size) }
}

/// `__libc_mallinfo` = [`mallinfo`].
///
/// # Safety
/// As [`mallinfo`].
#[no_mangle]
pub unsafe extern "C" fn __libc_mallinfo() -> Mallinfo {
    // SAFETY: same contract.
    unsafe { mallinfo() }
}

//! The OS calls for memory (mmap, munmap, madvise), time and diagnostics: the only place that
//! talks to the OS for them. Nothing here allocates or panics.
//!
//! A test hook ([`super::fail`]) makes `mmap`, `munmap` and `madvise` fail on demand, so the
//! tests can check that the allocator returns null (never aborts) when the OS refuses memory,
//! and keeps exact figures when it refuses to take memory back.
//!
//! **When `munmap` fails** (the kernel would have to split a mapping past `vm.max_map_count`,
//! or the hook says no), the range stays ours: it is still counted in [`MAPPED`], its pages
//! but the first are purged with `madvise`, and it goes on a *deferred* list, linked through
//! its own first page, that [`retry_unmaps`] (every decay tick, so every `trim`) hands to
//! `munmap` again. The caller has already forgotten the range, so it is never reused; the
//! list needs neither a lock nor an allocation. [`deferred_bytes`] says how much waits there.
//!
//! **When `madvise` fails**, [`purge`] says so and counts nothing: the caller keeps the pages
//! as committed (the decay ages them again and retries at its next tick).

use super::fail::{self, Call};
use crate::sync::{AtomicUsize, Ordering};

/// Bytes mapped from the OS right now (segments, huge objects, metadata, scratch buffers, and
/// ranges whose `munmap` failed until it is retried): counted at the system calls.
pub static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// Bytes given back to the OS since start (madvise(DONTNEED) plus munmap).
pub static RETURNED: AtomicUsize = AtomicUsize::new(0);
/// Bytes of mapped memory currently returned with madvise (mapped but not committed).
pub static PURGED: AtomicUsize = AtomicUsize::new(0);
/// The deferred unmaps: the first [`DeferredUnmap`] of a list linked through the ranges
/// themselves (0: empty). Pushed with a CAS, taken whole with a swap, so no node is ever
/// popped alone (no ABA).
static DEFERRED: AtomicUsize = AtomicUsize::new(0);
/// Bytes of the ranges on the deferred list.
static DEFERRED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The head of a range whose `munmap` failed, written into its own first page.
#[repr(C)]
struct DeferredUnmap {
    next: usize,
    /// Length of the range (whole pages), this page included.
    len: usize,
    /// Bytes of it purged while it waits (counted in [`PURGED`] until it is unmapped).
    purged: usize,
    /// Whether its unmap counts in [`RETURNED`] (heap memory, not a scratch buffer).
    returned: bool,
}

/// The OS page size, read once (`sysconf` reads the auxiliary vector: no allocation, no lock).
/// 4, 16 and 64 KiB pages all occur (aarch64 kernels use all three).
pub fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let v = if v > 0 && (v as usize).is_power_of_two() {
        v as usize
    } else {
        4096
    };
    PAGE.store(v, Ordering::Relaxed);
    v
}

/// `n` rounded up to a whole number of OS pages (None on overflow).
pub fn round_to_pages(n: usize) -> Option<usize> {
    let p = page_size();
    Some(n.checked_add(p - 1)? & !(p - 1))
}

/// Addresses the allocator can use: the registry and the remote-free list heads pack addresses
/// into this many bits. A mapping that ends above it (a 57-bit address space) is given back and
/// refused, so that no address is ever silently mis-packed.
pub const ADDRESS_BITS: u32 = 48;
const _: () = assert!(ADDRESS_BITS <= crate::sync::remote::ADDR_BITS);

/// Whether `start..start+len` lies below `2^ADDRESS_BITS`.
pub fn fits_address_width(start: usize, len: usize) -> bool {
    start
        .checked_add(len)
        .is_some_and(|end| end <= 1usize << ADDRESS_BITS)
}

/// Maps `len` bytes (rounded up to whole OS pages) of fresh, zeroed, read-write memory aligned
/// to `align` (a power of two; at least the page size is used). Returns null when the OS (or the
/// test hook) refuses, or when the kernel placed the mapping above [`ADDRESS_BITS`].
pub fn map_aligned(len: usize, align: usize) -> *mut u8 {
    debug_assert!(
        crate::sync::syscalls_allowed(),
        "mmap under the back-end lock"
    );
    if fail::refuses(Call::Map) {
        return core::ptr::null_mut();
    }
    let align = align.max(page_size());
    let Some(len) = round_to_pages(len) else {
        return core::ptr::null_mut();
    };
    // mmap's result is page-aligned already, so at most `align - page` bytes lie before an
    // aligned start: a page-aligned request maps exactly its length and trims nothing (a thread's
    // table index used to cost a second page and a munmap, which in a threaded process also
    // interrupts the other cores to flush their TLBs).
    let Some(over) = len.checked_add(align - page_size()) else {
        return core::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory.
    let raw = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return core::ptr::null_mut();
    }
    MAPPED.fetch_add(over, Ordering::Relaxed);
    let raw = raw as usize;
    if !fits_address_width(raw, over) {
        // SAFETY: the whole mapping was just made by us and is not handed out.
        unsafe { release(raw as *mut u8, over, false) };
        return core::ptr::null_mut();
    }
    let start = (raw + align - 1) & !(align - 1);
    let head = start - raw;
    let tail = over - head - len;
    // SAFETY: both trimmed ranges lie inside the mapping made above and are not handed out.
    // Should the kernel refuse to split the mapping, they wait on the deferred list.
    unsafe {
        if head > 0 {
            release(raw as *mut u8, head, false);
        }
        if tail > 0 {
            release((start + len) as *mut u8, tail, false);
        }
    }
    start as *mut u8
}

/// Unmaps a range obtained from [`map_aligned`] (`len` is rounded up to whole pages, as there).
/// If the kernel refuses, the range waits on the deferred list (see the module's essay): the
/// caller may forget it either way.
///
/// # Safety
/// `ptr..ptr+len` was mapped by [`map_aligned`] and nothing refers to it any more.
pub unsafe fn unmap(ptr: *mut u8, len: usize) {
    let len = round_to_pages(len).unwrap_or(len);
    // SAFETY: the caller's contract.
    unsafe { release(ptr, len, true) };
}

/// Unmaps a short-lived buffer of the allocator's own (a report's snapshot), like [`unmap`] but
/// not counted in [`RETURNED`], which counts the heap's memory given back. Returns the length
/// unmapped (whole pages).
///
/// # Safety
/// As for [`unmap`].
pub unsafe fn unmap_scratch(ptr: *mut u8, len: usize) -> usize {
    let len = round_to_pages(len).unwrap_or(len);
    // SAFETY: the caller's contract.
    unsafe { release(ptr, len, false) };
    len
}

/// `munmap`, through the failure hook; true when the range is gone.
///
/// # Safety
/// The range (whole pages) is ours and nothing refers to it.
unsafe fn try_munmap(ptr: *mut u8, len: usize) -> bool {
    debug_assert!(
        crate::sync::syscalls_allowed(),
        "munmap under the back-end lock"
    );
    // SAFETY: the caller's contract.
    !fail::refuses(Call::Unmap) && unsafe { libc::munmap(ptr as *mut libc::c_void, len) } == 0
}

/// Unmaps `len` bytes (whole pages) counted in [`MAPPED`], or defers them if the kernel says
/// no; `returned`: count them in [`RETURNED`].
///
/// # Safety
/// The range is ours, counted in [`MAPPED`], and nothing refers to it any more.
unsafe fn release(ptr: *mut u8, len: usize, returned: bool) {
    // SAFETY: the caller's contract.
    if unsafe { try_munmap(ptr, len) } {
        MAPPED.fetch_sub(len, Ordering::Relaxed);
        if returned {
            RETURNED.fetch_add(len, Ordering::Relaxed);
        }
    } else {
        // SAFETY: the range is ours and unused (the caller's contract).
        unsafe { defer(ptr, len, returned) };
    }
}

/// Puts a range whose `munmap` failed on the deferred list, its pages but the first purged.
///
/// # Safety
/// As for [`release`]; `len` is at least one page.
unsafe fn defer(ptr: *mut u8, len: usize, returned: bool) {
    let page = page_size();
    // SAFETY: the pages after the first are ours and unused; the first holds the node.
    let purged = if len > page && unsafe { purge(ptr.add(page), len - page) } {
        PURGED.fetch_add(len - page, Ordering::Relaxed);
        len - page
    } else {
        0
    };
    let node = ptr as *mut DeferredUnmap;
    // SAFETY: the range is still mapped read-write, ours and unused: its first page can hold
    // the node (a page is far larger than it, and page-aligned).
    unsafe {
        node.write(DeferredUnmap {
            next: 0,
            len,
            purged,
            returned,
        })
    };
    DEFERRED_BYTES.fetch_add(len, Ordering::Relaxed);
    push_deferred(node);
}

/// Pushes a node (written by its owner) on the deferred list.
fn push_deferred(node: *mut DeferredUnmap) {
    let mut head = DEFERRED.load(Ordering::Relaxed);
    loop {
        // SAFETY: the node is ours until the CAS below publishes it.
        unsafe { (*node).next = head };
        // Release publishes the node's fields to the swap (Acquire) of `retry_unmaps`.
        match DEFERRED.compare_exchange_weak(
            head,
            node as usize,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(h) => head = h,
        }
    }
}

/// Hands every deferred range to `munmap` again; those still refused go back on the list.
/// Called by each decay tick (one relaxed load when the list is empty).
pub fn retry_unmaps() {
    if DEFERRED.load(Ordering::Relaxed) == 0 {
        return;
    }
    // Acquire pairs with the Release of `push_deferred`: the nodes' fields are visible.
    let mut node = DEFERRED.swap(0, Ordering::Acquire) as *mut DeferredUnmap;
    while !node.is_null() {
        // SAFETY: the swap made this list ours alone; each node heads a mapped range of ours.
        let n = unsafe { node.read() };
        // SAFETY: the range is ours and nothing refers to it (it was released).
        if unsafe { try_munmap(node as *mut u8, n.len) } {
            DEFERRED_BYTES.fetch_sub(n.len, Ordering::Relaxed);
            MAPPED.fetch_sub(n.len, Ordering::Relaxed);
            PURGED.fetch_sub(n.purged, Ordering::Relaxed);
            if n.returned {
                // The purged part was counted when it was purged.
                RETURNED.fetch_add(n.len - n.purged, Ordering::Relaxed);
            }
        } else {
            push_deferred(node);
        }
        node = n.next as *mut DeferredUnmap;
    }
}

/// Bytes mapped that wait on the deferred list (their `munmap` failed): part of [`MAPPED`].
pub fn deferred_bytes() -> usize {
    DEFERRED_BYTES.load(Ordering::Relaxed)
}

/// Gives the physical pages of a range back to the OS; the range stays mapped and reads as zero
/// on its next touch. False when `madvise` failed (or the test hook refused it): the pages are
/// then still committed and keep their contents, and nothing was counted.
///
/// # Safety
/// The range lies inside memory of ours that holds no live object.
#[must_use]
pub unsafe fn purge(ptr: *mut u8, len: usize) -> bool {
    debug_assert!(
        crate::sync::syscalls_allowed(),
        "madvise under the back-end lock"
    );
    if fail::refuses(Call::Purge) {
        return false;
    }
    // SAFETY: the caller guarantees the range is ours and free.
    if unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_DONTNEED) } != 0 {
        return false;
    }
    RETURNED.fetch_add(len, Ordering::Relaxed);
    true
}

/// Nanoseconds of a monotonic clock (a vDSO read, no syscall), for measuring lock holds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds of a monotonic clock (coarse: a few ms of resolution, a vDSO read, no syscall).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Writes bytes to stderr without allocating.
pub fn write_stderr(bytes: &[u8]) {
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe {
            libc::write(
                2,
                bytes[off..].as_ptr() as *const libc::c_void,
                bytes.len() - off,
            )
        };
        if n <= 0 {
            return;
        }
        off += n as usize;
    }
}

/// Prints one line naming a detected corruption and aborts the process.
pub fn fatal(msg: &[u8]) -> ! {
    write_stderr(b"scopealloc: fatal: ");
    write_stderr(msg);
    write_stderr(b"\n");
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Prints `scopealloc: fatal: <what> 0x<addr><after>` on stderr, from a stack buffer, and aborts:
/// a corruption found at `addr` (the secure build's detections).
#[cfg(feature = "secure")]
#[cold]
pub fn fatal_at(what: &[u8], addr: usize, after: &[u8]) -> ! {
    let mut hex = [0u8; 18];
    hex[0] = b'0';
    hex[1] = b'x';
    let digits = (usize::BITS - addr.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        let d = (addr >> (4 * (digits - 1 - i))) & 0xf;
        hex[2 + i] = b"0123456789abcdef"[d];
    }
    write_stderr(b"scopealloc: fatal: ");
    write_stderr(what);
    write_stderr(b" ");
    write_stderr(&hex[..2 + digits]);
    write_stderr(after);
    write_stderr(b"; aborting\n");
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Secure build: makes whole pages inaccessible (`guard`: `PROT_NONE`, so that any access
/// faults) or read-write again. False, changing nothing, when the kernel (which may have to split
/// a mapping past `vm.max_map_count`) or the test hook refuses: callers treat a refused guard
/// like a refused `mmap` (the request is refused), and a guard that cannot be lifted as memory
/// that is never handed out again.
///
/// # Safety
/// `ptr..ptr+len` (page-aligned, whole pages) lies in a mapping of ours, and, for a guard, holds
/// nothing anybody will read or write.
#[cfg(feature = "secure")]
#[must_use]
pub unsafe fn protect(ptr: *mut u8, len: usize, guard: bool) -> bool {
    debug_assert!(
        crate::sync::syscalls_allowed(),
        "mprotect under the back-end lock"
    );
    debug_assert!((ptr as usize).is_multiple_of(page_size()) && len.is_multiple_of(page_size()));
    if fail::refuses(Call::Protect) {
        return false;
    }
    let prot = if guard {
        libc::PROT_NONE
    } else {
        libc::PROT_READ | libc::PROT_WRITE
    };
    // SAFETY: the range is ours (the contract); changing its protection touches no other memory.
    unsafe { libc::mprotect(ptr.cast::<libc::c_void>(), len, prot) == 0 }
}

/// Secure build: the SIGSEGV reporter. The guard pages make an overflow fault; without a handler
/// the program would die of `SIGSEGV` with nothing said. The reporter, installed once
/// ([`report_guard_faults`]), prints one line naming the address and aborts when the fault is an
/// access to a mapped page that is not accessible (`SEGV_ACCERR`) and the back end's predicate
/// says the page is in one of our mappings (where only our guards are inaccessible). Any other
/// fault puts the previous action back (the program's handler, or the default) and returns: the
/// access faults again and goes there, as if the reporter had never been installed. It runs on
/// the thread's alternate signal stack if there is one (`SA_ONSTACK`; Rust's runtime sets one).
#[cfg(feature = "secure")]
mod guard_faults {
    use crate::sync::{AtomicBool, AtomicUsize, Ordering};
    use core::cell::UnsafeCell;

    /// `si_code` of a fault on a mapped page that forbids the access (Linux's ABI).
    const SEGV_ACCERR: libc::c_int = 2;
    /// Offset of `si_addr` in the kernel's `siginfo_t` on 64-bit Linux (after `si_signo`,
    /// `si_errno`, `si_code` and padding).
    const SI_ADDR_OFFSET: usize = 16;

    /// The back end's predicate (a `fn(usize) -> bool`, as an address; 0 until installed).
    static IS_OURS: AtomicUsize = AtomicUsize::new(0);
    /// Set by the one thread that installs the handler.
    static INSTALLED: AtomicBool = AtomicBool::new(false);

    /// The action SIGSEGV had before ours, written once before ours is installed.
    struct Previous(UnsafeCell<core::mem::MaybeUninit<libc::sigaction>>);
    // SAFETY: written once by the thread that sets `INSTALLED`, before the handler that
    // reads it is installed (sigaction orders the write before any delivery).
    unsafe impl Sync for Previous {}
    static PREVIOUS: Previous = Previous(UnsafeCell::new(core::mem::MaybeUninit::uninit()));

    extern "C" fn on_fault(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO); for SIGSEGV its fault
        // address is the word at SI_ADDR_OFFSET.
        let (code, addr) = unsafe {
            (
                (*info).si_code,
                *(info as *const u8).add(SI_ADDR_OFFSET).cast::<usize>(),
            )
        };
        let f = IS_OURS.load(Ordering::Acquire);
        if code == SEGV_ACCERR && f != 0 {
            // SAFETY: IS_OURS holds only a `fn(usize) -> bool` (report_guard_faults).
            let is_ours = unsafe { core::mem::transmute::<usize, fn(usize) -> bool>(f) };
            if is_ours(addr) {
                super::fatal_at(
                    b"guard page hit at",
                    addr,
                    b" (an overflow or underflow of a large or huge block, a use of a freed large block, or an access past a segment's end)",
                );
            }
        }
        // SAFETY: PREVIOUS was written before this handler was installed (see Previous).
        unsafe {
            libc::sigaction(
                libc::SIGSEGV,
                (*PREVIOUS.0.get()).as_ptr(),
                core::ptr::null_mut(),
            )
        };
    }

    /// Installs the reporter once, with `is_ours` telling our mappings' addresses.
    pub fn install(is_ours: fn(usize) -> bool) {
        IS_OURS.store(is_ours as usize, Ordering::Release);
        if INSTALLED.swap(true, Ordering::AcqRel) {
            return;
        }
        // SAFETY: sigaction reads and writes only the structures passed; PREVIOUS is ours alone
        // until the handler is installed (we won the swap above); a zeroed sigaction is valid.
        unsafe {
            let mut act: libc::sigaction = core::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_fault;
            act.sa_sigaction = handler as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            let prev = (*PREVIOUS.0.get()).as_mut_ptr();
            if libc::sigaction(libc::SIGSEGV, core::ptr::null(), prev) == 0 {
                libc::sigaction(libc::SIGSEGV, &act, core::ptr::null_mut());
            }
        }
    }
}

/// Secure build: installs the SIGSEGV reporter of guard-page hits (once; later calls only
/// replace the predicate). `is_ours(addr)` must be async-signal-safe: it tells whether `addr`
/// lies in a mapping of ours.
#[cfg(feature = "secure")]
pub fn report_guard_faults(is_ours: fn(usize) -> bool) {
    guard_faults::install(is_ours);
}

/// 64 random bits from the kernel (`getrandom`, without blocking), for the secure build's keys;
/// if the kernel has none to give yet (early boot), the clock and an address, mixed.
#[cfg(feature = "secure")]
pub fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most the 8 bytes of `v` that we pass.
    let n = unsafe {
        libc::getrandom(
            (&mut v as *mut u64).cast::<libc::c_void>(),
            8,
            libc::GRND_NONBLOCK,
        )
    };
    if n == 8 {
        return v;
    }
    mix64(now_ns() ^ (&v as *const u64 as u64).rotate_left(32))
}

/// splitmix64's finaliser: a bijection of 64 bits that spreads every input bit over the output.
#[cfg(feature = "secure")]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_page_size_is_the_kernels() {
        // SAFETY: sysconf has no preconditions.
        let k = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        assert_eq!(page_size(), k);
        assert_eq!(round_to_pages(1), Some(k));
        assert_eq!(round_to_pages(k), Some(k));
        assert_eq!(round_to_pages(usize::MAX), None);
    }

    #[test]
    fn mappings_above_the_packed_address_width_are_refused() {
        let top = 1usize << ADDRESS_BITS;
        assert!(fits_address_width(top - 4096, 4096));
        assert!(!fits_address_width(top - 4096, 4097), "ends one byte above");
        assert!(!fits_address_width(1 << 56, 4096), "a 57-bit address");
        assert!(!fits_address_width(usize::MAX - 10, 4096), "overflow");
    }

    #[test]
    fn odd_lengths_are_mapped_and_unmapped_in_whole_pages() {
        let p = map_aligned(100, 16);
        assert!(!p.is_null());
        assert_eq!(p as usize % page_size(), 0);
        // SAFETY: just mapped, unused.
        unsafe {
            p.add(page_size() - 1).write(1);
            unmap(p, 100);
        }
    }
}

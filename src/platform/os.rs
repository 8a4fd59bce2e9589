//! The OS calls for memory (mmap, munmap, madvise), time and diagnostics: the only place that
//! talks to the OS for them. Nothing here allocates or panics.
//!
//! A test hook ([`super::fail`]) makes [`map_aligned`] fail on demand, so the tests can check
//! that the allocator returns null (never aborts) when the OS refuses memory.

use super::fail::{self, Call};
use crate::sync::{AtomicUsize, Ordering};

/// Bytes mapped from the OS right now (segments and huge objects).
pub static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// Bytes given back to the OS since start (madvise(DONTNEED) plus munmap).
pub static RETURNED: AtomicUsize = AtomicUsize::new(0);
/// Bytes of mapped memory currently returned with madvise (mapped but not committed).
pub static PURGED: AtomicUsize = AtomicUsize::new(0);

/// Maps `len` bytes (a multiple of the OS page size) of fresh, zeroed, read-write memory aligned
/// to `align` (a power of two ≥ 4096). Returns null when the OS (or the test hook) refuses.
pub fn map_aligned(len: usize, align: usize) -> *mut u8 {
    if fail::refuses(Call::Map) {
        return core::ptr::null_mut();
    }
    let Some(over) = len.checked_add(align) else {
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
    let raw = raw as usize;
    let start = (raw + align - 1) & !(align - 1);
    let head = start - raw;
    let tail = over - head - len;
    // SAFETY: both trimmed ranges lie inside the mapping made above and are not handed out.
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    MAPPED.fetch_add(len, Ordering::Relaxed);
    start as *mut u8
}

/// Unmaps a range obtained from [`map_aligned`].
///
/// # Safety
/// `ptr..ptr+len` was mapped by [`map_aligned`] and nothing refers to it any more.
pub unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees the range is ours and unused.
    unsafe {
        libc::munmap(ptr as *mut libc::c_void, len);
    }
    MAPPED.fetch_sub(len, Ordering::Relaxed);
    RETURNED.fetch_add(len, Ordering::Relaxed);
}

/// Gives the physical pages of a range back to the OS; the range stays mapped and reads as zero
/// on its next touch.
///
/// # Safety
/// The range lies inside memory of ours that holds no live object.
pub unsafe fn purge(ptr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees the range is ours and free.
    unsafe {
        libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_DONTNEED);
    }
    RETURNED.fetch_add(len, Ordering::Relaxed);
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

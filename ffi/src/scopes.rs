//! Scopes from C: the functions declared in `include/scopealloc.h`.
//!
//! A `scopealloc_scope_t *` is a [`Scope`] handle given up with [`Scope::into_raw`]: the C code
//! owns one reference per handle returned to it and gives it back with
//! `scopealloc_scope_release` (dropping the last handle of a scope closes it, as in Rust).
//! Functions that only use a handle borrow it without touching its count. Entering cannot hold
//! a Rust guard across calls, so `scopealloc_enter` returns the core's raw token for the
//! previous scope, which `scopealloc_leave` restores on the same thread.
//!
//! A `NULL` handle is accepted everywhere and does nothing (or reports `EINVAL`); any other
//! pointer that is not a live handle is undefined behaviour, as for `free`.

use crate::out::set_errno;
use core::ffi::{c_char, c_int, c_void, CStr};
use core::mem::ManuallyDrop;
use core::ptr::null;
use scopealloc::{Scope, ScopeStats};

/// A C handle (opaque `scopealloc_scope_t *`).
type Handle = *const c_void;

/// `SCOPEALLOC_NO_LIMIT` of the header.
const NO_LIMIT: usize = usize::MAX;

/// Longest scope name kept by the core, in bytes.
const NAME_MAX: usize = 63;

/// `struct scopealloc_stats`: the core's [`ScopeStats`] is `#[repr(C)]` with the same nine
/// `uint64_t` fields in the same order.
pub type CScopeStats = ScopeStats;

/// `struct scopealloc_heap_stats`: [`scopealloc::HeapStats`] field by field.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CHeapStats {
    /// See [`scopealloc::HeapStats::mapped`].
    pub mapped: usize,
    /// See [`scopealloc::HeapStats::committed`].
    pub committed: usize,
    /// See [`scopealloc::HeapStats::in_use`].
    pub in_use: usize,
    /// See [`scopealloc::HeapStats::cached`].
    pub cached: usize,
    /// See [`scopealloc::HeapStats::returned`].
    pub returned: usize,
}

/// Calls `f` with the scope of a handle, borrowed: the handle's count does not change.
///
/// # Safety
/// `h` is a live handle (not null).
unsafe fn with<R>(h: Handle, f: impl FnOnce(&Scope) -> R) -> R {
    // SAFETY: h is a live handle (caller); ManuallyDrop gives the reference back untouched.
    let s = ManuallyDrop::new(unsafe { Scope::from_raw(h) });
    f(&s)
}

/// Calls `f` with the name `name` (C string, `NULL` = empty), cut to what the core keeps, with
/// bytes that are not UTF-8 replaced by `?`. No allocation.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
unsafe fn with_name<R>(name: *const c_char, f: impl FnOnce(&str) -> R) -> R {
    if name.is_null() {
        return f("");
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    let bytes = &bytes[..bytes.len().min(NAME_MAX)];
    if let Ok(s) = core::str::from_utf8(bytes) {
        return f(s);
    }
    let mut buf = [0u8; NAME_MAX];
    let mut len = 0;
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        buf[len..len + valid.len()].copy_from_slice(valid);
        len += valid.len();
        for _ in chunk.invalid() {
            buf[len] = b'?';
            len += 1;
        }
    }
    // Each input byte gave one output byte, valid sequences copied whole, `?` is ASCII.
    f(core::str::from_utf8(&buf[..len]).unwrap_or(""))
}

/// A new handle on the root scope.
#[no_mangle]
pub extern "C" fn scopealloc_root() -> Handle {
    Scope::root().into_raw()
}

/// A new handle on the calling thread's current scope.
#[no_mangle]
pub extern "C" fn scopealloc_current() -> Handle {
    Scope::current().into_raw()
}

/// A new child of `parent` (`NULL`: of the current scope) named `name`; `NULL` with `errno`
/// `ENOMEM` when the OS refuses memory for its metadata.
///
/// # Safety
/// `parent` is null or a live handle; `name` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_scope_new(parent: Handle, name: *const c_char) -> Handle {
    // SAFETY: name's contract is the caller's.
    unsafe {
        with_name(name, |name| {
            let made = if parent.is_null() {
                Scope::current().try_child(name)
            } else {
                // SAFETY: parent is a live handle (caller).
                with(parent, |p| p.try_child(name))
            };
            match made {
                Some(s) => s.into_raw(),
                None => {
                    set_errno(libc::ENOMEM);
                    null()
                }
            }
        })
    }
}

/// A new handle on the scope of `h` (`NULL` for `NULL`).
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_scope_clone(h: Handle) -> Handle {
    if h.is_null() {
        return null();
    }
    // SAFETY: h is a live handle (caller).
    unsafe { Scope::clone_from_raw(h) }.into_raw()
}

/// Gives a handle back (`NULL`: no-op). Releasing the last handle of a scope closes it.
///
/// # Safety
/// `h` is null or a live handle, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_scope_release(h: Handle) {
    if !h.is_null() {
        // SAFETY: h is a live handle given back once (caller).
        drop(unsafe { Scope::from_raw(h) });
    }
}

/// Makes `h` the calling thread's current scope; returns a token for the previous scope, to
/// give to `scopealloc_leave` on the same thread (`NULL` if `h` is `NULL` or the thread's heap
/// could not be created; leaving `NULL` does nothing).
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_enter(h: Handle) -> *mut c_void {
    if h.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: h is a live handle (caller).
    unsafe { with(h, |s| s.enter_raw()) }
}

/// Restores the scope that the `scopealloc_enter` which returned `prev` left.
///
/// # Safety
/// `prev` is null or came from `scopealloc_enter` on this thread, and is used once, innermost
/// first.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_leave(prev: *mut c_void) {
    if !prev.is_null() {
        // SAFETY: prev is non-null, so it came from scopealloc_enter on this thread and is used
        // once, innermost first (the contract): leave_raw's own contract.
        unsafe { Scope::leave_raw(prev) }
    }
}

/// Closes the scope of `h` and its descendants (charges move to the nearest open ancestor;
/// objects stay valid). The root never closes. Idempotent.
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_close(h: Handle) {
    if !h.is_null() {
        // SAFETY: h is a live handle (caller).
        unsafe { with(h, |s| s.close()) }
    }
}

/// Sets the hard limit of `h` in bytes (`SCOPEALLOC_NO_LIMIT` removes it); 0 or `EINVAL`.
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_set_limit(h: Handle, limit: usize) -> c_int {
    if h.is_null() {
        return libc::EINVAL;
    }
    let limit = (limit != NO_LIMIT).then_some(limit);
    // SAFETY: h is a live handle (caller).
    unsafe { with(h, |s| s.set_limit(limit)) };
    0
}

/// The hard limit of `h` (`SCOPEALLOC_NO_LIMIT` if none or if `h` is `NULL`).
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_limit(h: Handle) -> usize {
    if h.is_null() {
        return NO_LIMIT;
    }
    // SAFETY: h is a live handle (caller).
    unsafe { with(h, |s| s.limit()) }.unwrap_or(NO_LIMIT)
}

/// Fills `*out` with the figures of `h`; 0, or `EINVAL` if either is `NULL`.
///
/// # Safety
/// `h` is null or a live handle; `out` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_stats(h: Handle, out: *mut CScopeStats) -> c_int {
    if h.is_null() || out.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: h is a live handle and out is writable (caller).
    unsafe { *out = with(h, |s| s.stats()) };
    0
}

/// Restarts the high-water mark of `h` at its current charge.
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_reset_peak(h: Handle) {
    if !h.is_null() {
        // SAFETY: h is a live handle (caller).
        unsafe { with(h, |s| s.reset_peak()) }
    }
}

/// Copies the name of `h` into `buf` (`len` bytes, NUL-terminated, cut if needed) and returns
/// the name's full length, like `snprintf`. 0 for `NULL`.
///
/// # Safety
/// `h` is null or a live handle; `buf` is null or valid for `len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_scope_name(h: Handle, buf: *mut c_char, len: usize) -> usize {
    if h.is_null() {
        return 0;
    }
    // SAFETY: h is a live handle (caller).
    unsafe {
        with(h, |s| {
            let name = s.name().as_bytes();
            if !buf.is_null() && len > 0 {
                let n = name.len().min(len - 1);
                // SAFETY: buf holds len > n bytes (caller); name is n or more bytes long.
                core::ptr::copy_nonoverlapping(name.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
            name.len()
        })
    }
}

/// The id of `h` (unique, never reused; 0 for `NULL`).
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_scope_id(h: Handle) -> u64 {
    if h.is_null() {
        return 0;
    }
    // SAFETY: h is a live handle (caller).
    unsafe { with(h, |s| s.id()) }
}

/// A new handle on the parent of `h` (`NULL` for the root or `NULL`).
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_scope_parent(h: Handle) -> Handle {
    if h.is_null() {
        return null();
    }
    // SAFETY: h is a live handle (caller).
    unsafe { with(h, |s| s.parent()) }.map_or(null(), Scope::into_raw)
}

/// 1 if the scope of `h` is closed, 0 if open, -1 for `NULL`.
///
/// # Safety
/// `h` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_is_closed(h: Handle) -> c_int {
    if h.is_null() {
        return -1;
    }
    // SAFETY: h is a live handle (caller).
    unsafe { with(h, |s| s.is_closed()) as c_int }
}

/// Fills `*out` with the allocator's memory figures; 0, or `EINVAL` if `out` is `NULL`.
///
/// # Safety
/// `out` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_heap_stats(out: *mut CHeapStats) -> c_int {
    if out.is_null() {
        return libc::EINVAL;
    }
    let h = scopealloc::heap_stats();
    // SAFETY: out is writable (caller).
    unsafe {
        *out = CHeapStats {
            mapped: h.mapped,
            committed: h.committed,
            in_use: h.in_use,
            cached: h.cached,
            returned: h.returned,
        }
    };
    0
}

/// Writes the report that `SCOPEALLOC_STATS=1` prints at exit (allocator figures, then one line
/// per open scope) to the file descriptor `fd`.
#[no_mangle]
pub extern "C" fn scopealloc_print_stats(fd: c_int) {
    crate::report::print(fd);
}

/// `scopealloc_report(buf, len, format)`: the report in `format` (`SCOPEALLOC_REPORT_TEXT`,
/// `_JSON`, `_PROMETHEUS`), like `snprintf`: writes at most `len` bytes into `buf`,
/// NUL-terminated when `len > 0`, and returns the length of the whole report (without the
/// NUL); -1 with errno `EINVAL` (unknown format, or `buf` NULL with `len > 0`), `ENOMEM` (no
/// memory for the report) or `EOVERFLOW` (longer than `SSIZE_MAX`).
///
/// # Safety
///
/// `buf` is NULL or points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn scopealloc_report(
    buf: *mut c_char,
    len: usize,
    format: c_int,
) -> libc::ssize_t {
    use crate::options::{FORMAT_JSON, FORMAT_PROMETHEUS, FORMAT_TEXT};
    let format = match u8::try_from(format) {
        Ok(f @ (FORMAT_TEXT | FORMAT_JSON | FORMAT_PROMETHEUS)) => f,
        _ => {
            crate::out::set_errno(libc::EINVAL);
            return -1;
        }
    };
    let out: &mut [u8] = if len == 0 {
        &mut []
    } else if buf.is_null() {
        crate::out::set_errno(libc::EINVAL);
        return -1;
    } else {
        // SAFETY: buf is non-null and points to len writable bytes (caller), which nothing
        // else touches during the call.
        unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
    };
    let mut sink = crate::report::BufSink { buf: out, total: 0 };
    if format == FORMAT_TEXT {
        crate::report::print_to(&mut sink);
    } else {
        match crate::report::render(format) {
            Some(text) => crate::report::Sink::put(&mut sink, text.as_bytes()),
            None => {
                crate::out::set_errno(libc::ENOMEM);
                return -1;
            }
        }
    }
    sink.finish();
    match libc::ssize_t::try_from(sink.total) {
        Ok(n) => n,
        Err(_) => {
            crate::out::set_errno(libc::EOVERFLOW);
            -1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_utf8_keep_their_length() {
        let raw = c"ab\xffcd";
        // SAFETY: a C string literal.
        let got = unsafe { with_name(raw.as_ptr(), |s| s.as_bytes().to_vec()) };
        assert_eq!(got, b"ab?cd");
    }

    #[test]
    fn long_names_are_cut_to_what_the_core_keeps() {
        let long = [b'x'; 100];
        let mut c = long.to_vec();
        c.push(0);
        // SAFETY: NUL-terminated above.
        let n = unsafe { with_name(c.as_ptr().cast(), |s| s.len()) };
        assert_eq!(n, NAME_MAX);
    }

    #[test]
    fn stats_mirror_has_the_layout_of_the_c_struct() {
        assert_eq!(size_of::<CScopeStats>(), 9 * 8);
        assert_eq!(size_of::<CHeapStats>(), 5 * size_of::<usize>());
    }
}

//! Output without allocating: lines are built in a fixed buffer on the stack, numbers are
//! formatted by hand, and the bytes go out with `libc::write`.
//!
//! Everything here may run inside `malloc` or `free`, before the Rust runtime or TLS exist, and
//! at process exit: no `core::fmt`, no heap, no locks.

use core::ffi::c_int;

/// Prefix of every line the library prints.
pub const PREFIX: &[u8] = b"scopealloc: ";

/// A line (or a few) under construction. Text that does not fit is dropped, never overflows.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> StackBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        // len <= N always (`get`: no panic path in a diagnostic).
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Appends bytes, dropping what does not fit.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let n = b.len().min(N - self.len);
        if let (Some(to), Some(from)) = (self.buf.get_mut(self.len..self.len + n), b.get(..n)) {
            to.copy_from_slice(from);
            self.len += n;
        }
        self
    }

    /// Appends one byte.
    pub fn byte(&mut self, b: u8) -> &mut Self {
        self.bytes(&[b])
    }

    /// Appends `n` spaces.
    pub fn spaces(&mut self, n: usize) -> &mut Self {
        for _ in 0..n {
            self.byte(b' ');
        }
        self
    }

    /// Appends a decimal number.
    pub fn u64(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.bytes(&digits[i..])
    }

    /// Appends `0x` and a hexadecimal number (for addresses).
    pub fn hex(&mut self, mut v: usize) -> &mut Self {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[v & 15];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.bytes(b"0x").bytes(&digits[i..])
    }

    /// Appends a byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB` (one decimal, truncated).
    pub fn size(&mut self, v: u64) -> &mut Self {
        const UNITS: [&[u8]; 6] = [b" B", b" KiB", b" MiB", b" GiB", b" TiB", b" PiB"];
        if v < 1024 {
            return self.u64(v).bytes(UNITS[0]);
        }
        let mut unit = 0;
        let mut scaled = v as u128 * 10; // tenths of the current unit
        while scaled >= 1024 * 10 && unit < UNITS.len() - 1 {
            scaled /= 1024;
            unit += 1;
        }
        self.u64((scaled / 10) as u64)
            .byte(b'.')
            .u64((scaled % 10) as u64)
            .bytes(UNITS[unit])
    }

    /// Appends at most `max` bytes of text given by the user, replacing control bytes with `?`
    /// so that a line stays one line, and `...` if it was cut.
    pub fn printable(&mut self, v: &[u8], max: usize) -> &mut Self {
        for &b in v.iter().take(max) {
            self.byte(if b < 0x20 || b == 0x7f { b'?' } else { b });
        }
        if v.len() > max {
            self.bytes(b"...");
        }
        self
    }

    /// Like [`StackBuf::printable`], between double quotes.
    pub fn quoted(&mut self, v: &[u8], max: usize) -> &mut Self {
        self.byte(b'"').printable(v, max).byte(b'"')
    }

    /// Writes the contents to `fd`.
    pub fn write_to(&self, fd: c_int) {
        write_all(fd, self.as_bytes());
    }
}

/// Writes all of `bytes` to `fd`, retrying on short writes and `EINTR`; gives up on any other
/// error (there is nowhere to report it).
pub fn write_all(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice; write reads nothing else.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = bytes.get(n as usize..).unwrap_or(&[]);
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// The calling thread's `errno`.
pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(v: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = v }
}

/// Prints `scopealloc: <function>(): <before> <ptr><after>; aborting` on stderr and aborts.
#[cold]
#[inline(never)]
pub fn fatal_pointer(function: &[u8], before: &[u8], ptr: *const u8, after: &[u8]) -> ! {
    let mut line = StackBuf::<256>::new();
    line.bytes(PREFIX)
        .bytes(function)
        .bytes(b"(): ")
        .bytes(before)
        .byte(b' ')
        .hex(ptr as usize)
        .bytes(after)
        .bytes(b"; aborting\n");
    line.write_to(libc::STDERR_FILENO);
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<const N: usize>(b: &StackBuf<N>) -> &str {
        core::str::from_utf8(b.as_bytes()).unwrap()
    }

    #[test]
    fn numbers_are_formatted_by_hand() {
        let mut b = StackBuf::<128>::new();
        b.u64(0)
            .byte(b' ')
            .u64(u64::MAX)
            .byte(b' ')
            .hex(0xdead_beef);
        assert_eq!(text(&b), "0 18446744073709551615 0xdeadbeef");
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        let mut b = StackBuf::<128>::new();
        b.size(512).byte(b',').size(1536).byte(b',').size(12 << 20);
        assert_eq!(text(&b), "512 B,1.5 KiB,12.0 MiB");
    }

    #[test]
    fn text_that_does_not_fit_is_dropped() {
        let mut b = StackBuf::<4>::new();
        b.bytes(b"abcdef").u64(7);
        assert_eq!(text(&b), "abcd");
    }

    #[test]
    fn quoted_values_stay_on_one_line() {
        let mut b = StackBuf::<32>::new();
        b.quoted(b"a\nb", 8).quoted(b"0123456789", 4);
        assert_eq!(text(&b), "\"a?b\"\"0123...\"");
    }
}

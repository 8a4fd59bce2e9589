//! The secure build's block trailers: the last word of every small block says how many bytes the
//! program asked for, and the bytes right after those hold a canary, so that a linear overflow
//! (or an underflow of the block after it) is found when the block is freed, and a write into
//! the end of a free block when it is handed out again.
//!
//! ```text
//!  live block b (size bytes, n asked):  [0, n) the program's | [n, n+8) pad (canary) | ... |
//!                                       [size-8, size) trailer = canary_key ^ b ^ n
//!  free block b:                        word 0 link, word 1 tag (objects::free_list) | ... |
//!                                       [size-8, size) trailer = canary_key ^ b ^ FREE
//! ```
//! `canary_key` is a third random key of the block's segment
//! (`backend::segment::Segment::canary_key`), independent of the link and tag keys, its top byte
//! odd (`backend::segment::canary_key_from`), so that a trailer's last byte, the one a one-byte
//! underflow of the next block writes, is odd: an even byte written there is always seen.
//!
//! The pad is the word at `n`, derived from the key and the block's address, or as much of it as
//! lies before the trailer (none when `n = size - 8`: the trailer follows the data). A linear
//! overflow of any length writes the pad first, so the pad is enough to see it, and the trailer
//! sees what reaches it. The pad's first byte is odd, so a string's terminator (or any even
//! byte) written one past the end is always seen; one random byte goes unseen with probability
//! 1/128, two or more with at most 2^-15 (1 in 2^63 for a full word). A one-byte pad missed one
//! in 128 overflows of *any* length that began with its value and stopped short of the trailer
//! (the bug suite's 32 bytes past a 4 KiB block, now and then): the word costs the free path a
//! mask of the bytes before the trailer, not a second load. A write that changes the trailer
//! decodes to a length above `size - 8` or to another `n`, whose pad then does not match, with
//! overwhelming probability. Checked by `frontend::free::check_small_free` (every free of a
//! small block, from any thread), by `frontend::alloc::pop` (the free trailer of a block handed
//! out) and by the usable size (`malloc_usable_size` and `realloc` read `n` from it).
//!
//! So a small block serves at most `size - TRAILER` bytes, and that is its usable size: exactly
//! what was asked (`malloc_usable_size` is truthful: writing up to it never trips the canary).

use crate::backend::segment::segment_of;
use crate::platform::os;

/// Bytes at the end of every small block kept for the trailer.
pub const TRAILER: usize = 8;
/// The smallest block: the free list's link and tag (16 bytes), then the trailer.
pub const MIN_BLOCK: usize = 16 + TRAILER;
/// The trailer's length word of a free block: no request is that long.
const FREE: u64 = 1 << 63;

/// The canary key of `b`'s segment.
///
/// # Safety
/// `b` is a block of a small slab of ours (its segment header is mapped).
#[inline(always)]
unsafe fn key(b: *const u8) -> u64 {
    // SAFETY: a small slab's block is never at a segment's first byte (page 0 is the header), so
    // segment_of finds its header, which is mapped (the contract).
    unsafe { (*segment_of(b)).canary_key }
}

/// The pad word of block `b`, as it lies in memory from the block's byte `n` on (little-endian:
/// its low byte first): the first byte odd, so never zero.
#[inline(always)]
fn pad(key: u64, b: *const u8) -> u64 {
    (key.rotate_right(32) ^ b as u64) | 1
}

/// The bits of a pad word that lie before the trailer, `room` bytes away (at least one byte;
/// fewer than 8 when the caller asks).
#[inline(always)]
fn pad_mask(room: usize) -> u64 {
    let bytes = room.min(8);
    u64::MAX >> (64 - 8 * bytes)
}

/// The trailer word of block `b` of `size` bytes.
///
/// # Safety
/// `b` is a block of `size >= MIN_BLOCK` bytes of a small slab of ours.
#[inline(always)]
unsafe fn trailer(b: *mut u8, size: usize) -> *mut u64 {
    // SAFETY: size - TRAILER < size: inside the block (the contract); blocks and sizes are
    // multiples of 8, so the word is aligned.
    unsafe { b.add(size - TRAILER).cast::<u64>() }
}

/// Arms live block `b` of `size` bytes for a request of `n <= size - TRAILER` bytes: the pad
/// word at `n`, then the trailer (which overwrites what of the pad reaches it).
///
/// # Safety
/// `b` was just handed out (or is being resized in place), a block of `size >= MIN_BLOCK` bytes
/// of a small slab of ours.
#[inline(always)]
pub unsafe fn arm(b: *mut u8, size: usize, n: usize) {
    debug_assert!(size >= MIN_BLOCK && n <= size - TRAILER);
    // SAFETY: the block is the caller's; n + 8 <= size, so the pad word lies in the block (when
    // less than 8 bytes separate n from the trailer, its tail is the trailer's, written after).
    unsafe {
        let k = key(b);
        b.add(n).cast::<u64>().write_unaligned(pad(k, b));
        trailer(b, size).write(k ^ b as u64 ^ n as u64);
    }
}

/// The length the program asked for of live block `b` of `size` bytes; aborts with one line if
/// its trailer or its pad was overwritten (an overflow of it, or an underflow of the next block).
///
/// # Safety
/// `b` is a block of `size >= MIN_BLOCK` bytes of a small slab of ours, handed out and armed.
#[inline(always)]
pub unsafe fn length(b: *mut u8, size: usize) -> usize {
    // SAFETY: the block and its pad lie in the slab (the contract; the decoded n is checked
    // before the pad word at n is read, and n + 8 <= size).
    unsafe {
        let k = key(b);
        let n = trailer(b, size).read() ^ k ^ b as u64;
        if n > (size - TRAILER) as u64 {
            overwritten(b);
        }
        let n = n as usize;
        let room = size - TRAILER - n;
        if room > 0 {
            // An intact pad word (the common case: 8 bytes or more before the trailer) is one
            // compare; a difference counts only in the bytes before the trailer.
            let diff = b.add(n).cast::<u64>().read_unaligned() ^ pad(k, b);
            if diff != 0 && (room >= 8 || diff & pad_mask(room) != 0) {
                overwritten(b);
            }
        }
        n
    }
}

/// Checks live block `b` as it is freed ([`length`]) and marks its trailer free.
///
/// # Safety
/// As [`length`]; the caller frees the block (it is no longer the program's).
#[inline(always)]
pub unsafe fn retire(b: *mut u8, size: usize) {
    // SAFETY: the contract; the trailer is the allocator's again once the block is freed.
    unsafe {
        length(b, size);
        trailer(b, size).write(key(b) ^ b as u64 ^ FREE);
    }
}

/// Marks the trailer of a block going on a free list for the first time (carved).
///
/// # Safety
/// `b` is a never handed out block of `size >= MIN_BLOCK` bytes of a small slab the caller owns.
#[inline(always)]
pub unsafe fn mark_free(b: *mut u8, size: usize) {
    // SAFETY: the block is the caller's (the contract).
    unsafe { trailer(b, size).write(key(b) ^ b as u64 ^ FREE) }
}

/// Aborts with one line unless free block `b`, being handed out, still has its free trailer (a
/// write after free into its end, or an underflow of the block after it, changed it).
///
/// # Safety
/// `b` is a free block of `size >= MIN_BLOCK` bytes of a small slab the caller owns.
#[inline(always)]
pub unsafe fn check_free(b: *mut u8, size: usize) {
    // SAFETY: the block is the caller's (the contract).
    unsafe {
        if trailer(b, size).read() != key(b) ^ b as u64 ^ FREE {
            written_after_free(b);
        }
    }
}

#[cold]
#[inline(never)]
fn overwritten(b: *mut u8) -> ! {
    os::fatal_at(
        b"free(): the end of block",
        b as usize,
        b" was overwritten (an overflow of it, or an underflow of the block after it)",
    )
}

#[cold]
#[inline(never)]
fn written_after_free(b: *mut u8) -> ! {
    os::fatal_at(
        b"malloc(): the end of free block",
        b as usize,
        b" was overwritten (a write after free, or an underflow of the block after it)",
    )
}

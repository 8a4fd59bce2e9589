//! The secure build's free-list words: how a free block's first two words are written and read
//! (`slab::Block::link` / `set_link` call only these).
//!
//! ```text
//!  free block b:  word 0 = next ^ key ^ b        (the link, encoded: mimalloc's secure mode)
//!                 word 1 = tag_key ^ b           (set while b is on a list: a double-free mark)
//!  live block b:  word 1 cleared when b is handed out (pop), then the program's data
//! ```
//! `key` and `tag_key` are two independent random keys of b's segment
//! (`backend::segment::Segment::{key, tag_key}`, from `getrandom` when the segment is mapped), so
//! that a tag read from a freed block (a read after free) reveals nothing about `key`. A link overwritten
//! by the program (a write after free, an overflow from the block before) decodes to an address
//! that is not an 8-byte aligned address of the same segment with overwhelming probability (the
//! attacker does not know the key): the decode aborts with one line instead of following it.
//! A free of a block whose word 1 is its tag is a double free (the program's data equals the tag
//! with probability 2^-64), whatever happened in between, and from whichever thread.
//!
//! Every block of a small slab is at least 24 bytes in this build (`canary::MIN_BLOCK`: the link,
//! the tag and the trailer of `objects::canary`).
//!
//! Fresh blocks are carved onto the list in a random order ([`carve`]), so that the address of
//! the next block handed out cannot be predicted from the last one's.

use super::slab::Block;
use crate::backend::segment::segment_of;
use crate::platform::os;

/// Every block is at least this aligned (the Rust path's classes are multiples of 8 bytes; the
/// C library's of 16).
const BLOCK_ALIGN: usize = core::mem::align_of::<Block>();

/// The key of `b`'s segment.
///
/// # Safety
/// `b` is a block of a small slab of ours (its segment header is mapped).
#[inline(always)]
unsafe fn key(b: *const Block) -> u64 {
    // SAFETY: a small slab's block is never at a segment's first byte (page 0 is the header),
    // so segment_of finds its header, which is mapped (the contract).
    unsafe { (*segment_of(b.cast())).key }
}

/// The tag of free block `b`.
///
/// # Safety
/// As [`key`].
#[inline(always)]
unsafe fn tag(b: *const Block) -> u64 {
    // SAFETY: as key's: b's segment header is mapped (the contract).
    unsafe { (*segment_of(b.cast())).tag_key ^ b as u64 }
}

/// Writes `next` (null or a block of the same slab) as `b`'s encoded link, and tags `b` free.
///
/// # Safety
/// `b` is a block of a small slab of ours that the caller may write (it owns the list).
#[inline(always)]
pub unsafe fn set_next(b: *mut Block, next: *mut Block) {
    // SAFETY: b is writable and at least 16 bytes (the contract and the module's invariant).
    unsafe {
        let k = key(b);
        (*b).next = (next as usize ^ k as usize ^ b as usize) as *mut Block;
        (*b).tag = tag(b);
    }
}

/// Decodes `b`'s link; aborts with one line if it is not null or an 8-byte aligned address of
/// `b`'s segment (the link was overwritten).
///
/// # Safety
/// `b` is a free block of a small slab of ours, on a list the caller owns.
#[inline(always)]
pub unsafe fn next(b: *mut Block) -> *mut Block {
    // SAFETY: b is a readable block of ours (the contract).
    let next = unsafe { (*b).next as usize ^ key(b) as usize ^ b as usize };
    let same_segment = segment_of(next as *const u8) == segment_of(b as *const u8);
    if next != 0 && (!same_segment || next % BLOCK_ALIGN != 0) {
        corrupt_link(b);
    }
    next as *mut Block
}

#[cold]
#[inline(never)]
fn corrupt_link(b: *mut Block) -> ! {
    os::fatal_at(
        b"free list: the link of free block",
        b as usize,
        b" was overwritten (a write after free, or an overflow of the block before it)",
    )
}

/// Whether `b` carries its free tag: it is on a free list (a free of it is a double free).
///
/// # Safety
/// `b` is a block (live or free) of a small slab of ours.
#[inline(always)]
pub unsafe fn is_free(b: *const Block) -> bool {
    // SAFETY: b is readable and at least 16 bytes (the contract).
    unsafe { (*b).tag == tag(b) }
}

/// Clears `b`'s free tag as it is handed out.
///
/// # Safety
/// `b` was just taken off a free list by its owner.
#[inline(always)]
pub unsafe fn mark_live(b: *mut Block) {
    // SAFETY: b is ours to write (the contract).
    unsafe { (*b).tag = 0 }
}

/// Most blocks carved at a time (`slab::EXTEND_BYTES` over the smallest block).
pub const CARVE_MAX: usize = 256;

/// Links the `n` fresh blocks of `size` bytes at `first` in a random order in front of `tail`;
/// returns the new head.
///
/// # Safety
/// The `n` blocks (`n <= CARVE_MAX`, `size >= canary::MIN_BLOCK`) lie in a small slab of ours,
/// were never handed out, and the caller owns the slab; `tail` is null or a free block of it.
pub unsafe fn carve(first: *mut u8, size: usize, n: usize, tail: *mut Block) -> *mut Block {
    debug_assert!(n <= CARVE_MAX && size >= super::canary::MIN_BLOCK);
    let mut order = [0u16; CARVE_MAX];
    for (i, o) in order.iter_mut().enumerate().take(n) {
        *o = i as u16;
    }
    // SAFETY: first is in a small slab of ours (the contract).
    let mut rng = os::mix64(unsafe { key(first.cast()) } ^ first as u64 ^ os::now_ns());
    for i in (1..n).rev() {
        rng = os::mix64(rng);
        let j = (rng % (i as u64 + 1)) as usize;
        // j <= i < n <= order.len(): checked so that no panic path is left on the slow path.
        if i < order.len() && j < order.len() {
            order.swap(i, j);
        }
    }
    let mut head = tail;
    for &i in order.iter().take(n) {
        // SAFETY: block i < n lies in the carved range (the contract).
        unsafe {
            let b = first.add(i as usize * size).cast::<Block>();
            set_next(b, head);
            super::canary::mark_free(b.cast(), size);
            head = b;
        }
    }
    head
}

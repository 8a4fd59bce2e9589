//! The registry: one bit per 4 MiB region of the address space, set while a segment or huge
//! mapping of ours starts there, so that the C library can reject foreign pointers without
//! touching them.

use super::segment::{Segment, SEGMENT_SHIFT};
use crate::platform::os::ADDRESS_BITS;
use crate::sync::{AtomicU64, Ordering};

const REGISTRY_WORDS: usize = 1 << (ADDRESS_BITS as usize - SEGMENT_SHIFT - 6);
/// One bit per 4 MiB region of the address space: set while a segment of ours starts there.
static REGISTRY: [AtomicU64; REGISTRY_WORDS] = [const { AtomicU64::new(0) }; REGISTRY_WORDS];

/// Marks `seg` as ours (or no longer ours).
pub fn set(seg: *mut Segment, on: bool) {
    let idx = seg as usize >> SEGMENT_SHIFT;
    // `os::map_aligned` refuses mappings above ADDRESS_BITS, so every segment has a bit.
    debug_assert!(idx / 64 < REGISTRY_WORDS);
    if idx / 64 >= REGISTRY_WORDS {
        return;
    }
    let bit = 1u64 << (idx % 64);
    if on {
        REGISTRY[idx / 64].fetch_or(bit, Ordering::Release);
    } else {
        REGISTRY[idx / 64].fetch_and(!bit, Ordering::Release);
    }
}

/// The addresses the registry covers: every segment of ours starts below.
pub const LIMIT: usize = (REGISTRY_WORDS * 64) << SEGMENT_SHIFT;

/// Whether a segment of ours starts at `seg` (a 4 MiB-aligned address).
#[inline(always)]
pub fn contains(seg: *const Segment) -> bool {
    // SAFETY: the bound is checked first.
    (seg as usize) < LIMIT && unsafe { contains_below(seg) }
}

/// [`contains`] for a `seg` the caller has compared with [`LIMIT`] (the C library's `free` does
/// it with the same comparison as its check-mode test).
///
/// # Safety
/// `seg < LIMIT`.
#[inline(always)]
pub unsafe fn contains_below(seg: *const Segment) -> bool {
    debug_assert!((seg as usize) < LIMIT);
    let idx = seg as usize >> SEGMENT_SHIFT;
    // SAFETY: seg < LIMIT (the contract), so idx / 64 < REGISTRY_WORDS. Acquire pairs with the
    // Release of `set`: a segment seen here has its header written.
    unsafe { REGISTRY.get_unchecked(idx / 64).load(Ordering::Acquire) & (1u64 << (idx % 64)) != 0 }
}

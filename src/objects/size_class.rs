//! Size classes: a request size is rounded up to one of [`NCLASSES`] object sizes.
//!
//! Spacing: 8 bytes up to 128 B, then 8 classes per doubling (step = 1/8 of the power of two
//! below), up to [`MAX_SMALL`] = 32 KiB. So every size above 64 B wastes at most 12.5 % (the step
//! is at most an eighth of the size). Every power of two is a class, which serves aligned
//! requests: a class whose size is a multiple of the alignment, in a slab that starts on a page
//! boundary, gives aligned objects without any per-object work.

/// Largest small size; bigger requests are "large" (page spans) or "huge" (own mapping).
pub const MAX_SMALL: usize = 32 * 1024;
/// Number of small size classes.
pub const NCLASSES: usize = 80;
/// Pseudo class index of the large objects' cache of a scope.
pub const LARGE_CLASS: usize = NCLASSES;
/// Pseudo class index of the cache of a scope that holds its tables' stubs, of every class
/// (`frontend::shared`): one cache per small scope, not one per class it touches (issue 10).
pub const SHARED_CLASS: usize = NCLASSES + 1;
/// Cache slots of a scope: the small classes, `LARGE_CLASS`, `SHARED_CLASS`.
pub const NSLOTS: usize = NCLASSES + 2;

const LOOKUP_MAX: usize = 1024;
/// Class of every size ≤ 1 KiB, by `(size + 7) / 8`, so the common case is one table load.
static LOOKUP: [u8; LOOKUP_MAX / 8 + 1] = build_lookup(8, 1);

/// A table of the class of every size `i · step` (`smallest` for `i = 0`), for `i < N`.
const fn build_lookup<const N: usize>(step: usize, smallest: usize) -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    while i < N {
        let size = if i == 0 { smallest } else { i * step };
        t[i] = class_of_slow(size) as u8;
        i += 1;
    }
    t
}

/// The class of a size in `1..=MAX_SMALL`, computed without tables.
///
/// ```
/// use scopealloc::size_class::{class_of, class_of_slow};
/// assert!((1..=4096).all(|n| class_of_slow(n) == class_of(n)));
/// ```
pub const fn class_of_slow(size: usize) -> usize {
    if size <= 128 {
        return if size == 0 { 0 } else { size.div_ceil(8) - 1 };
    }
    let s = size - 1;
    let b = (usize::BITS - 1 - s.leading_zeros()) as usize; // 2^b <= s < 2^(b+1), b >= 7
    let idx = (s >> (b - 3)) - 8;
    16 + (b - 7) * 8 + idx
}

/// The class of a size in `0..=MAX_SMALL` (0 maps to the 8-byte class).
///
/// ```
/// use scopealloc::size_class::{class_of, class_size};
/// assert_eq!(class_size(class_of(100)), 104);
/// assert_eq!(class_size(class_of(0)), 8);
/// ```
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    if size <= LOOKUP_MAX {
        LOOKUP[(size + 7) >> 3] as usize
    } else {
        class_of_slow(size)
    }
}

/// The class of a C request of `size ≤ C_LOOKUP_MAX` bytes: rounded up to a multiple of 16 (at
/// least 16, glibc's alignment), in one table load by `(size + 15) / 16`.
///
/// ```
/// use scopealloc::size_class::{c_class_of, class_of, C_LOOKUP_MAX};
/// assert!((0..=C_LOOKUP_MAX).all(|n| c_class_of(n) == class_of(((n.max(1) + 15) & !15))));
/// ```
#[inline(always)]
pub fn c_class_of(size: usize) -> usize {
    debug_assert!(size <= C_LOOKUP_MAX);
    C_LOOKUP[(size + 15) >> 4] as usize
}

/// [`c_class_of`] without the bounds check, for a caller whose bound the compiler cannot see
/// (the C library compares with a threshold it loads).
///
/// # Safety
/// `size <= C_LOOKUP_MAX`.
#[inline(always)]
pub unsafe fn c_class_of_unchecked(size: usize) -> usize {
    debug_assert!(size <= C_LOOKUP_MAX);
    // SAFETY: size <= C_LOOKUP_MAX (the contract), so (size + 15) / 16 <= C_LOOKUP_MAX / 16 is
    // in bounds of C_LOOKUP.
    unsafe { *C_LOOKUP.get_unchecked((size + 15) >> 4) as usize }
}

/// Largest size [`c_class_of`] takes.
pub const C_LOOKUP_MAX: usize = 1024;
static C_LOOKUP: [u8; C_LOOKUP_MAX / 16 + 1] = build_lookup(16, 16);

/// Object size of class `c`.
///
/// ```
/// use scopealloc::size_class::{class_size, MAX_SMALL, NCLASSES};
/// assert_eq!(class_size(0), 8);
/// assert_eq!(class_size(NCLASSES - 1), MAX_SMALL);
/// ```
pub const fn class_size(c: usize) -> usize {
    if c < 16 {
        (c + 1) * 8
    } else {
        let k = c - 16;
        let b = 7 + k / 8;
        let i = k % 8;
        (1 << b) + (i + 1) * (1 << (b - 3))
    }
}

/// Object sizes of all classes, for the paths that read it per object.
pub static SIZES: [u32; NCLASSES] = build_sizes();

/// Per class, `c = ⌊(2^64 - 1) / size⌋ + 1` (Lemire, Kaser and Kurz, "Faster remainder by
/// direct computation", 2019): for an offset `n < 2^32`, the high word of `n * c` is `n / size`
/// (the index of a block in a slab, [`index_in_class`], without a division), and `n` is a
/// multiple of the size exactly when the low word is below `c` (the secure build's block-start
/// check, `is_multiple_of_class`).
pub static DIVISIBILITY: [u64; NCLASSES] = build_divisibility();

const fn build_divisibility() -> [u64; NCLASSES] {
    let mut t = [0u64; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = (u64::MAX / class_size(c) as u64).wrapping_add(1);
        c += 1;
    }
    t
}

/// `off / size` for class `class`'s size, `off` below 2^32: which block of a slab of the class
/// an offset falls in, with a multiplication where a division would take tens of cycles (the
/// shared slabs' origin array is indexed so at every allocation and free of a small scope).
///
/// ```
/// use scopealloc::size_class::{class_size, index_in_class};
/// assert_eq!(index_in_class(3 * class_size(20) as u32 + 5, 20), 3);
/// ```
#[inline(always)]
pub fn index_in_class(off: u32, class: usize) -> u32 {
    assert!(class < NCLASSES, "no size class {class}");
    // SAFETY: class < NCLASSES, checked just before.
    unsafe { index_in_class_unchecked(off, class) }
}

/// [`index_in_class`] without the bounds check, for the allocator's own paths (a slab's class),
/// which must not have a panic on them.
///
/// # Safety
/// `class < NCLASSES`.
#[inline(always)]
pub(crate) unsafe fn index_in_class_unchecked(off: u32, class: usize) -> u32 {
    // SAFETY: class < NCLASSES (the contract).
    let c = unsafe { *DIVISIBILITY.get_unchecked(class) };
    ((c as u128 * off as u128) >> 64) as u32
}

/// Secure build: whether `off` (below 2^32) is a multiple of class `class`'s size.
///
/// # Safety
/// `class < NCLASSES` (no bounds check: the free path has no panic on it).
#[cfg(feature = "secure")]
#[inline(always)]
pub(crate) unsafe fn is_multiple_of_class(off: u32, class: usize) -> bool {
    // SAFETY: class < NCLASSES (the contract).
    let c = unsafe { *DIVISIBILITY.get_unchecked(class) };
    (off as u64).wrapping_mul(c) < c
}

const fn build_sizes() -> [u32; NCLASSES] {
    let mut t = [0u32; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = class_size(c) as u32;
        c += 1;
    }
    t
}

/// The class serving `size` bytes at alignment `align` (a power of two), or `None` when the
/// request must go to the large path. Alignments up to 8 bytes follow the size (every class is a
/// multiple of 8); larger ones pick a class whose size is a multiple of the alignment.
///
/// ```
/// use scopealloc::size_class::{class_for, class_size};
/// let c = class_for(100, 64).unwrap();
/// assert!(class_size(c) >= 100 && class_size(c) % 64 == 0);
/// assert_eq!(class_for(1 << 20, 8), None, "large");
/// ```
#[inline]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= 8 {
        if size <= MAX_SMALL {
            return Some(class_of(size));
        }
        return None;
    }
    let rounded = (size.max(1) + align - 1) & !(align - 1);
    if rounded > MAX_SMALL {
        return None;
    }
    let c = class_of(rounded);
    if class_size(c).is_multiple_of(align) {
        return Some(c);
    }
    // Powers of two are classes, and a power of two ≥ align is a multiple of it.
    let p = rounded.next_power_of_two();
    if p > MAX_SMALL {
        None
    } else {
        Some(class_of(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "secure")]
    #[test]
    fn block_start_check_without_division_agrees_with_the_remainder() {
        for c in 0..NCLASSES {
            let size = class_size(c) as u32;
            for off in (0..1u32 << 18).step_by(8).chain([size - 1, size, size + 1]) {
                assert_eq!(
                    // SAFETY: c < NCLASSES.
                    unsafe { is_multiple_of_class(off, c) },
                    off % size == 0,
                    "class {c} off {off}"
                );
            }
        }
    }

    #[test]
    fn block_index_without_division_agrees_with_the_quotient() {
        for c in 0..NCLASSES {
            let size = class_size(c) as u32;
            let ends = [size - 1, size, size + 1, u32::MAX - 1, u32::MAX];
            for off in (0..1u32 << 20).step_by(7).chain(ends) {
                assert_eq!(index_in_class(off, c), off / size, "class {c} off {off}");
            }
        }
    }

    #[test]
    fn every_size_maps_to_a_class_at_least_as_large() {
        for size in 0..=MAX_SMALL {
            let c = class_of(size);
            assert!(c < NCLASSES);
            assert!(class_size(c) >= size, "size {size} class {c}");
            if c > 0 {
                assert!(
                    class_size(c - 1) < size,
                    "size {size} not in the smallest class"
                );
            }
        }
    }

    #[test]
    fn waste_above_64_bytes_is_at_most_an_eighth() {
        for size in 65..=MAX_SMALL {
            let waste = class_size(class_of(size)) - size;
            assert!(waste * 8 <= size, "size {size} wastes {waste}");
        }
    }

    #[test]
    fn classes_are_strictly_increasing_and_end_at_max_small() {
        for (c, &size) in SIZES.iter().enumerate().skip(1) {
            assert!(class_size(c) > class_size(c - 1));
            assert_eq!(size as usize, class_size(c));
        }
        assert_eq!(class_size(NCLASSES - 1), MAX_SMALL);
        assert_eq!(class_of(MAX_SMALL), NCLASSES - 1);
    }

    #[test]
    fn table_lookup_agrees_with_computation() {
        for size in 1..=MAX_SMALL {
            assert_eq!(class_of(size), class_of_slow(size));
        }
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        let mut align = 16;
        while align <= MAX_SMALL {
            for size in [1, 7, 16, 100, 1000, 5000, 20000, MAX_SMALL] {
                if let Some(c) = class_for(size, align) {
                    assert_eq!(class_size(c) % align, 0, "size {size} align {align}");
                    assert!(class_size(c) >= size);
                }
            }
            align *= 2;
        }
        assert_eq!(class_for(MAX_SMALL + 1, 8), None);
        assert_eq!(class_for(100, 64 * 1024), None);
    }
}

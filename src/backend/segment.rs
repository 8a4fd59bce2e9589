//! Segments: 4 MiB regions mapped from the OS whose header holds one opaque descriptor per page
//! and the page map that finds a span's descriptor from any pointer into it.
//!
//! ```text
//!  segment (SEGMENT_SIZE = 4 MiB, aligned to 4 MiB: (p - 1) & !SEGMENT_MASK finds the header)
//!  +----------+----------+----------+-- ... --+----------+
//!  | page 0   | page 1   | page 2   |         | page 63  |   pages of PAGE_SIZE = 64 KiB
//!  | header:  | slab of  | slab of class 40   | large    |
//!  | descs[], | class 3  | (2 pages)          | object   |
//!  | page_map |          |                    |          |
//!  +----------+----------+----------+-- ... --+----------+
//! ```
//! Every span of pages (a small-object slab, or one large object) is described by the descriptor
//! of its first page, inside the segment header; `page_map` maps every page to that first page.
//! So the free path finds an object's descriptor with two loads and no global lookup. A "huge"
//! object (bigger than [`LARGE_MAX`], or aligned beyond it) gets a mapping of its own that starts
//! with the same header, whose `descs[0]` describes it; its object starts at most `SEGMENT_SIZE`
//! after the header (hence `p - 1` in the mask: an object may start exactly at the next 4 MiB
//! boundary).
//!
//! The back end does not know what a descriptor holds: [`Desc`] is an opaque, zero-initialised,
//! cache-line aligned slot that the object layer (`objects::slab::Slab`) lays its slab metadata
//! over, as snmalloc's back end is generic over the front end's slab metadata.

/// log2 of [`SEGMENT_SIZE`].
pub const SEGMENT_SHIFT: usize = 22;
/// One mmap per this many bytes; aligned so a mask finds the header.
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
/// Mask of the offset inside a segment.
pub const SEGMENT_MASK: usize = SEGMENT_SIZE - 1;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: usize = 16;
/// Unit of slabs and large objects: large enough that a slab of small objects amortises the
/// locks taken to get it, small enough that a scope that allocates little costs little.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Pages per segment; page 0 holds the header.
pub const PAGES: usize = SEGMENT_SIZE / PAGE_SIZE;
/// Largest object served from page spans inside segments; larger ones are huge.
pub const LARGE_MAX: usize = SEGMENT_SIZE / 2;

/// Bytes of one span descriptor: three cache lines (see `objects::slab::Slab`).
pub const DESC_BYTES: usize = 192;

/// An opaque span descriptor: zero when the segment is mapped, written only by the layer above.
#[repr(C, align(64))]
pub struct Desc {
    _opaque: [u8; DESC_BYTES],
}

/// Header of a segment (small segments and huge mappings alike).
#[repr(C)]
pub struct Segment {
    /// One descriptor per page; only the first page of a span has a meaningful one.
    pub descs: [Desc; PAGES],
    /// Page index → index of the first page of its span.
    pub page_map: [u8; PAGES + 1],
    /// Back end fields, under the back-end lock (`span`).
    pub(super) free_mask: u64,
    pub(super) dirty_new: u64,
    pub(super) dirty_old: u64,
    /// Free pages reserved by a decay tick while it purges them outside the lock.
    pub(super) purging: u64,
    pub(super) next: *mut Segment,
    pub(super) prev: *mut Segment,
    /// Huge mappings: where the mapping starts and how long it is.
    pub(super) map_base: *mut u8,
    pub(super) map_len: usize,
    /// Secure build: the random key that encodes the free-list links of this segment's slabs
    /// (`objects::free_list`). Written once when the segment is mapped, before any slab exists.
    #[cfg(feature = "secure")]
    pub key: u64,
    /// Secure build: a second random key, for the free tags of its blocks (independent of
    /// `key`, so that a tag read from a freed block tells nothing about `key`).
    #[cfg(feature = "secure")]
    pub tag_key: u64,
    /// Secure build: a third random key, for the trailers of its blocks (`objects::canary`),
    /// made by [`canary_key_from`].
    #[cfg(feature = "secure")]
    pub canary_key: u64,
    /// Secure build, huge mappings: the two guard pages around the object (before and after
    /// it), made inaccessible by `huge::alloc_huge` and lifted by `huge::free_huge`.
    #[cfg(feature = "secure")]
    pub(super) guards: [usize; 2],
}

const _: () = assert!(core::mem::size_of::<Segment>() <= PAGE_SIZE);

/// Secure build: a segment's canary key from a random word, its top byte made odd. A block's
/// trailer (`key ^ block ^ n`, `objects::canary`) then ends in an odd byte, since a user-space
/// address and a length have a zero top byte (and a free trailer's `FREE` flips its top bit
/// only): the byte that a one-byte underflow of the next block overwrites. So an even byte (a
/// string terminator, an ASCII 'X') written there is always seen, where a random top byte let
/// one write in 256 through unseen (the bug suite's `underflow-1-64` missed 8 runs in 2 000).
#[cfg(feature = "secure")]
pub const fn canary_key_from(random: u64) -> u64 {
    random | 1 << 56
}

/// The segment header of an object pointer of ours.
#[inline(always)]
pub fn segment_of(p: *const u8) -> *mut Segment {
    ((p as usize).wrapping_sub(1) & !SEGMENT_MASK) as *mut Segment
}

/// The descriptor of the span that holds object pointer `p`.
///
/// # Safety
/// `p` points into a segment of ours (a live or freed object, or a span's first byte + 1 for a
/// span that starts at a segment boundary): its header is mapped.
#[inline(always)]
pub unsafe fn desc_of(p: *const u8) -> *mut Desc {
    let seg = segment_of(p);
    let idx = (p as usize - seg as usize) >> PAGE_SHIFT;
    debug_assert!(idx <= PAGES);
    // SAFETY: seg is a mapped header of ours (the caller's invariant); idx <= PAGES, the length
    // of page_map, and page_map holds page indices < PAGES.
    unsafe {
        let first = *(*seg).page_map.get_unchecked(idx) as usize;
        (*seg).descs.as_mut_ptr().add(first)
    }
}

/// The descriptor of page `idx` of `seg`.
///
/// # Safety
/// `seg` is a mapped header of ours and `idx < PAGES`.
pub unsafe fn desc_at(seg: *mut Segment, idx: usize) -> *mut Desc {
    debug_assert!(idx < PAGES);
    // SAFETY: idx is inside the descriptor array of a mapped header.
    unsafe { (*seg).descs.as_mut_ptr().add(idx) }
}

/// The first byte of page `idx` of `seg`.
pub fn page_start(seg: *mut Segment, idx: usize) -> *mut u8 {
    (seg as usize + idx * PAGE_SIZE) as *mut u8
}

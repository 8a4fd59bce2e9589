//! Slabs: the descriptor of a span (a slab of small objects of one size class, or one large or
//! huge object), laid over the back end's opaque descriptor slot, and what a slab does with its
//! objects (carve, take remote frees, count).

use crate::backend::segment::{desc_at, desc_of, segment_of, Desc, Segment, DESC_BYTES};
use crate::backend::{registry, span};
use crate::objects::cache::Cache;
use crate::objects::protocol::{self, SlabWords};
use crate::objects::size_class::index_in_class_unchecked;
use crate::platform::valgrind;
use crate::sync::remote::{self, Linked};
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

/// The owner's table of a slab, opaque in this layer (the front end's `Table`).
pub enum OwnerTable {}

pub use super::protocol::OWNER_ABANDONED;
/// `Slab::owner` of a large or huge object: frees go to the large path.
pub const OWNER_LARGE: usize = 2;
/// `Slab::owner` of a descriptor that describes no live span. Zero, so that the descriptors of a
/// freshly mapped segment (all zero) read as describing nothing.
pub const OWNER_NONE: usize = 0;

/// Descriptor kind: describes no live span.
pub const KIND_FREE: u8 = 0;
/// Descriptor kind: a slab of small objects.
pub const KIND_SMALL: u8 = 1;
/// Descriptor kind: one large object in a span of a small segment.
pub const KIND_LARGE: u8 = 2;
/// Descriptor kind: one huge object in a mapping of its own.
pub const KIND_HUGE: u8 = 3;
/// Descriptor kind: a *stub*, the accounting half of a slab without pages (issue 10). A small
/// scope's table keeps one per class it uses: its objects sit in the thread's shared slabs,
/// each shared slab records per object the stub it was charged to (`Slab::origins`), and the
/// stub keeps what a slab keeps for statistics and release (`used`, `allocs`, the remote-free
/// list, its cache). Stubs come from a pool, never from a segment.
pub const KIND_STUB: u8 = 4;
/// Descriptor kind (secure build): a freed large block waiting in the quarantine, guard pages up
/// (`frontend::quarantine`). It describes no live block: a free of it is refused.
#[cfg(feature = "secure")]
pub const KIND_QUARANTINED: u8 = 5;

/// A free object: its first word links it into a free list. The words are read and written only
/// through [`Block::link`] and [`Block::set_link`], which tell Valgrind's memcheck (feature
/// `valgrind`) that the allocator, not the program, touches the free block; the secure build
/// encodes the link and tags the block free in its second word (see `objects::free_list`).
#[repr(C)]
pub struct Block {
    pub(super) next: *mut Block,
    #[cfg(feature = "secure")]
    pub(super) tag: u64,
}

impl Block {
    /// The block after free block `b` in its list (null at the end). The secure build aborts with
    /// one line if the link was overwritten.
    ///
    /// # Safety
    /// `b` is a free block of a small slab of ours that the caller may read (it owns the list,
    /// or the slab).
    #[inline(always)]
    pub unsafe fn link(b: *mut Block) -> *mut Block {
        let word = b as *const u8;
        valgrind::make_defined(word, size_of::<Block>());
        #[cfg(not(feature = "secure"))]
        // SAFETY: b is a free block of ours (the contract): its first word is our link.
        let next = unsafe { (*b).next };
        #[cfg(feature = "secure")]
        // SAFETY: the contract is free_list::next's.
        let next = unsafe { super::free_list::next(b) };
        valgrind::make_noaccess(word, size_of::<Block>());
        next
    }

    /// Links free block `b` to `next` (null or a free block of the same slab).
    ///
    /// # Safety
    /// `b` is a block of a small slab of ours, not live, that only the caller writes.
    #[inline(always)]
    pub unsafe fn set_link(b: *mut Block, next: *mut Block) {
        let word = b as *const u8;
        valgrind::make_undefined(word, size_of::<Block>());
        #[cfg(not(feature = "secure"))]
        // SAFETY: b is a block of ours that only the caller writes (the contract).
        unsafe {
            (*b).next = next
        };
        #[cfg(feature = "secure")]
        // SAFETY: the contract is free_list::set_next's.
        unsafe {
            super::free_list::set_next(b, next)
        };
        valgrind::make_noaccess(word, size_of::<Block>());
    }
}

/// The descriptor of a span of pages: a slab of small objects of one class, or one large object.
///
/// A slab belongs to one *cache* (scope × size class) and, while its thread lives, to one table of
/// one thread heap (its *owner*). Three cache lines, by who writes them, so that a thread freeing
/// remotely never contends with the owner's pops and pushes:
/// - line 1, read-mostly: `owner` (written by the owner when it takes or gives up the slab, read by
///   every free to decide local, remote or locked), and fields set when the span is set up and
///   immutable until it is released (`cache` may be read by a free of a live object without a lock).
/// - line 2, the owner thread only: the free list, `carved`, `table`, table links; `used` and
///   `allocs` are written by the owner (plain load + store) and read by anyone for statistics.
/// - line 3, other threads: `thread_free` (remote frees and their count, taken by the owner), and
///   the cache's list links (under the cache lock).
#[repr(C, align(64))]
pub struct Slab {
    // Line 1: read-mostly.
    pub owner: AtomicUsize,
    pub start: *mut u8,
    pub cache: *mut Cache,
    pub block_size: u32,
    pub capacity: u32,
    pub npages: u32,
    pub page_idx: u32,
    pub class: u16,
    pub kind: u8,
    /// Large objects: the span came from pages that read as zero.
    pub zeroed: bool,
    /// Small slabs: `capacity * block_size`, the bytes of its blocks from `start` (the C `free`'s
    /// range check, without a multiplication).
    pub blocks_bytes: u32,
    /// A shared slab (its table's scope is `scope::shared()`): per object, the stub it is charged
    /// to, in the slab's span after its blocks. Null for every other slab.
    pub origins: *mut *mut Slab,
    _pad1: [u8; 8],
    // Line 2: the owner thread.
    pub free: *mut Block,
    pub used: AtomicU32,
    /// `used` value at which a local free must look at the slab: 0 when the slab is not its
    /// table's current slab (an empty slab is then released), `u32::MAX` (never) while current.
    pub release_at: u32,
    pub allocs: AtomicU64,
    /// The owner's table for the slab's scope (a `frontend::table::Table`, opaque here).
    pub table: *mut OwnerTable,
    pub tnext: *mut Slab,
    pub tprev: *mut Slab,
    pub carved: u32,
    _pad2: [u8; 12],
    // Line 3: other threads.
    /// Remote-free list head: address and count (see `sync::remote`).
    pub thread_free: AtomicU64,
    pub cnext: *mut Slab,
    pub cprev: *mut Slab,
    pub anext: *mut Slab,
    pub aprev: *mut Slab,
}

const _: () = {
    assert!(core::mem::offset_of!(Slab, free) == 64);
    assert!(core::mem::offset_of!(Slab, thread_free) == 128);
    assert!(core::mem::size_of::<Slab>() == 192);
};

impl Slab {
    /// A descriptor of nothing; the fast path's stand-in when a table has no slab for a class.
    pub const fn empty() -> Slab {
        Slab {
            owner: AtomicUsize::new(OWNER_NONE),
            start: null_mut(),
            cache: null_mut(),
            block_size: 0,
            capacity: 0,
            npages: 0,
            page_idx: 0,
            class: 0,
            kind: KIND_FREE,
            zeroed: false,
            blocks_bytes: 0,
            origins: null_mut(),
            _pad1: [0; 8],
            free: null_mut(),
            used: AtomicU32::new(0),
            release_at: 0,
            allocs: AtomicU64::new(0),
            table: null_mut(),
            tnext: null_mut(),
            tprev: null_mut(),
            carved: 0,
            _pad2: [0; 12],
            thread_free: AtomicU64::new(0),
            cnext: null_mut(),
            cprev: null_mut(),
            anext: null_mut(),
            aprev: null_mut(),
        }
    }

    /// Objects that are live: handed out and not freed (remote frees waiting count as freed).
    pub fn live(&self) -> u32 {
        let pending = remote::remote_pending(&self.thread_free);
        self.used.load(Ordering::Relaxed).saturating_sub(pending)
    }
}

/// The stub that object `p` of shared slab `s` is charged to.
///
/// # Safety
/// `s` is a shared slab (`origins` set) and `p` a block of it that was handed out.
#[inline]
pub unsafe fn origin_stub(s: *const Slab, p: *const u8) -> *mut Slab {
    // SAFETY: p is a block of s (the contract), so its index is below the capacity, and the
    // origin array has one word per block; a small slab's class is below NCLASSES.
    unsafe {
        let i = index_in_class_unchecked(
            (p as usize - (*s).start as usize) as u32,
            (*s).class as usize,
        );
        *(*s).origins.add(i as usize)
    }
}

/// Records that block `p` of shared slab `s` is charged to `stub`.
///
/// # Safety
/// As [`origin_stub`]; the caller owns `s` (its thread hands `p` out).
#[inline]
pub unsafe fn set_origin(s: *mut Slab, p: *const u8, stub: *mut Slab) {
    // SAFETY: as in origin_stub.
    unsafe {
        let i = index_in_class_unchecked(
            (p as usize - (*s).start as usize) as u32,
            (*s).class as usize,
        );
        *(*s).origins.add(i as usize) = stub;
    }
}

/// The shared empty descriptor that every empty table slot points at.
pub struct EmptySlab(pub UnsafeCell<Slab>);
// SAFETY: the empty slab is never written: its free list is null, so every path that would write
// it takes the slow path first, which never writes a slab of kind KIND_FREE.
unsafe impl Sync for EmptySlab {}
pub static EMPTY_SLAB: EmptySlab = EmptySlab(UnsafeCell::new(Slab::empty()));

const _: () = {
    assert!(core::mem::size_of::<Slab>() == DESC_BYTES);
    assert!(core::mem::align_of::<Slab>() == core::mem::align_of::<Desc>());
};

impl Linked for Block {
    unsafe fn next(this: *mut Self) -> *mut Self {
        // SAFETY: `this` is a valid node (the trait's contract): a free block of ours.
        unsafe { Block::link(this) }
    }
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        // SAFETY: `this` is a free block owned by the caller (the trait's contract).
        unsafe { Block::set_link(this, next) }
    }
}

impl SlabWords for Slab {
    type Node = Block;
    #[inline]
    fn owner(&self) -> &AtomicUsize {
        &self.owner
    }
    #[inline]
    fn thread_free(&self) -> &AtomicU64 {
        &self.thread_free
    }
    #[inline]
    fn used(&self) -> &AtomicU32 {
        &self.used
    }
    #[inline]
    unsafe fn take_remote(this: *mut Self) -> u32 {
        // SAFETY: the caller owns the live slab `this` (the trait's contract).
        unsafe { (*this).take_remote() }
    }
}

/// The descriptor of the span that holds object pointer `p`.
///
/// # Safety
/// `p` points into a segment of ours (see `backend::segment::desc_of`).
#[inline(always)]
pub unsafe fn slab_of(p: *const u8) -> *mut Slab {
    // SAFETY: the caller's contract is desc_of's; a Slab is laid over every descriptor slot.
    unsafe { desc_of(p).cast::<Slab>() }
}

/// The descriptor of page `idx` of `seg`.
///
/// # Safety
/// `seg` is a mapped segment header of ours and `idx < PAGES`.
pub unsafe fn slab_at(seg: *mut Segment, idx: usize) -> *mut Slab {
    // SAFETY: the caller's contract is desc_at's.
    unsafe { desc_at(seg, idx).cast::<Slab>() }
}

/// Carve at most this many bytes of new objects into a slab's free list at a time, so that a
/// slab's untouched part stays uncommitted.
const EXTEND_BYTES: usize = 4096;
#[cfg(feature = "secure")]
const _: () = assert!(EXTEND_BYTES / 16 <= super::free_list::CARVE_MAX);

impl Slab {
    /// Carves up to `EXTEND_BYTES` (at least 4 objects) of never-used objects onto the free
    /// list.
    ///
    /// # Safety
    /// The caller owns the slab (its thread), and `carved < capacity`.
    pub unsafe fn extend(&mut self) {
        debug_assert!(self.carved < self.capacity);
        let size = self.block_size as usize;
        // size >= 16 (`max`: no division-by-zero panic on this path).
        let n =
            ((EXTEND_BYTES / size.max(1)).max(4) as u32).min(self.capacity - self.carved) as usize;
        // SAFETY: objects carved..carved+n lie inside the slab's span (carved + n <= capacity),
        // and were never handed out: nobody else touches them; n <= EXTEND_BYTES / 16.
        #[cfg(feature = "secure")]
        unsafe {
            let first = self.start.add(self.carved as usize * size);
            self.free = super::free_list::carve(first, size, n, self.free);
        }
        // SAFETY: as above.
        #[cfg(not(feature = "secure"))]
        unsafe {
            let first = self.start.add(self.carved as usize * size);
            for i in 0..n {
                let b = first.add(i * size) as *mut Block;
                let next = if i + 1 < n {
                    first.add((i + 1) * size) as *mut Block
                } else {
                    self.free
                };
                Block::set_link(b, next);
            }
            self.free = first as *mut Block;
        }
        self.carved += n as u32;
    }

    /// Moves the remote frees onto the free list and out of `used`; returns how many. The caller
    /// gives their bytes back (to a stock, or to the scope counters).
    ///
    /// # Safety
    /// The caller owns the slab: its thread, or the cache lock for an abandoned slab.
    pub unsafe fn take_remote(&mut self) -> u32 {
        // SAFETY: the caller owns the slab (the contract), so it is the list's only taker and
        // the only writer of `free` and `used`.
        unsafe { protocol::take_remote_into(&self.thread_free, &self.used, &mut self.free) }
    }

    /// Hides the `start` word of a published large or huge descriptor from memcheck's leak
    /// scan (feature `valgrind`): memcheck scans all of our mappings for pointers, and this word
    /// points at the object, so a leaked large object would read as reachable. The word keeps
    /// its value; memcheck only holds it undefined, so a scan skips it. Until
    /// [`Slab::reveal_start`], read it only through [`Slab::hidden_start`].
    ///
    /// # Safety
    /// `s` is a live descriptor of a large or huge object.
    #[inline(always)]
    pub unsafe fn hide_start(s: *mut Slab) {
        // SAFETY: s is a live descriptor (the contract); only its address is taken.
        let word = unsafe { &raw const (*s).start } as *const u8;
        valgrind::make_undefined(word, size_of::<*mut u8>());
    }

    /// Undoes [`Slab::hide_start`] when the object is released (or was never published).
    ///
    /// # Safety
    /// `s` is a live descriptor of a large or huge object that nobody else reads any more.
    #[inline(always)]
    pub unsafe fn reveal_start(s: *mut Slab) {
        // SAFETY: s is a live descriptor (the contract); only its address is taken.
        let word = unsafe { &raw const (*s).start } as *const u8;
        valgrind::make_defined(word, size_of::<*mut u8>());
    }

    /// The `start` of a published large or huge descriptor, whose word is hidden
    /// ([`Slab::hide_start`]), and hidden again after the read.
    ///
    /// # Safety
    /// `s` is a descriptor of a mapped segment of ours of kind `KIND_LARGE` or `KIND_HUGE`.
    #[inline(always)]
    pub unsafe fn hidden_start(s: *const Slab) -> *mut u8 {
        // SAFETY: s is mapped (the contract).
        unsafe {
            let word = &raw const (*s).start as *const u8;
            valgrind::make_defined(word, size_of::<*mut u8>());
            let start = (*s).start;
            valgrind::make_undefined(word, size_of::<*mut u8>());
            start
        }
    }

    /// Marks the descriptor free (describes nothing) before its span goes back.
    pub fn mark_free(&mut self) {
        self.kind = KIND_FREE;
        self.origins = null_mut();
        self.owner.store(OWNER_NONE, Ordering::Relaxed);
    }
}

/// Returns the span described by `s` (a small-object slab or a large object) to the back end.
///
/// # Safety
/// The span holds no live object and nobody touches it or its descriptor afterwards.
pub unsafe fn free_slab_span(s: *mut Slab) {
    // SAFETY: s is a live descriptor (the caller's contract); a span's start lies inside its own
    // segment, so start + 1 masks to its header.
    unsafe {
        (*s).mark_free();
        let seg = segment_of((*s).start.add(1));
        span::free_span(seg, (*s).page_idx as usize, (*s).npages as usize);
    }
}

/// Whether `p` points into a live slab or at a live large or huge object of ours. Touches only our
/// own memory; cheap (no division): every C `free` asks it. [`is_block_start`] adds the exact
/// object-boundary check.
pub fn owns(p: *const u8) -> bool {
    owns_where(p, false)
}

/// [`owns`], and `p` is exactly the start of an object (not inside one).
pub fn is_block_start(p: *const u8) -> bool {
    owns_where(p, true)
}

fn owns_where(p: *const u8, exact: bool) -> bool {
    if p.is_null() || !registry::contains(segment_of(p)) {
        return false;
    }
    // SAFETY: the registry says p's segment header is mapped and ours.
    unsafe { in_span(slab_of(p), p, exact) }
}

/// Whether `p` lies in a block described by `s` (`slab_of(p)`): inside a small slab's blocks
/// (exactly at the start of one if `exact`), or at the start of a live large or huge object.
///
/// # Safety
/// `s` is `slab_of(p)` of a `p` in a segment of ours.
#[inline]
pub unsafe fn in_span(s: *const Slab, p: *const u8, exact: bool) -> bool {
    // SAFETY: s is a descriptor of a mapped segment of ours (the contract).
    unsafe {
        match (*s).kind {
            KIND_SMALL => {
                let off = (p as usize).wrapping_sub((*s).start as usize);
                off < (*s).capacity as usize * (*s).block_size as usize
                    && (!exact || off.is_multiple_of((*s).block_size as usize))
            }
            KIND_LARGE | KIND_HUGE => core::ptr::eq(p, Slab::hidden_start(s)),
            _ => false,
        }
    }
}

//! Segments, slab descriptors and the back end that hands out page spans.
//!
//! ```text
//!  segment (SEGMENT_SIZE = 4 MiB, aligned to 4 MiB: (p - 1) & !SEGMENT_MASK finds the header)
//!  +----------+----------+----------+-- ... --+----------+
//!  | page 0   | page 1   | page 2   |         | page 63  |   pages of PAGE_SIZE = 64 KiB
//!  | header:  | slab of  | slab of class 40   | large    |
//!  | slabs[], | class 3  | (2 pages)          | object   |
//!  | page_map |          |                    |          |
//!  +----------+----------+----------+-- ... --+----------+
//! ```
//! Every span of pages (a small-object slab, or one large object) is described by the `Slab`
//! descriptor of its first page, inside the segment header; `page_map` maps every page to that
//! first page. So the free path finds an object's slab with two loads and no global lookup. A
//! "huge" object (bigger than [`LARGE_MAX`], or aligned beyond it) gets a mapping of its own that
//! starts with the same header, whose `slabs[0]` describes it; its object starts at most
//! `SEGMENT_SIZE` after the header (hence `p - 1` in the mask: an object may start exactly at the
//! next 4 MiB boundary).
//!
//! The back end (`BACKEND`, one lock) owns the page bitmaps of all small segments. It is taken
//! once per slab or large object, never per small object. Free pages are *dirty* (committed)
//! until the decay returns them with `madvise(MADV_DONTNEED)`; segments that are entirely free and
//! clean are unmapped. [`REGISTRY`] remembers which 4 MiB regions are ours, so the C library can
//! reject foreign pointers without touching them.

use crate::heap::Table;
use crate::os;
use crate::scope::Cache;
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Ordering, SpinLock};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

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
/// Granularity of huge mappings.
pub const OS_PAGE: usize = 4096;

/// `Slab::owner` of a slab whose thread exited: frees go through its cache's lock.
pub const OWNER_ABANDONED: usize = 1;
/// `Slab::owner` of a large or huge object: frees go to the large path.
pub const OWNER_LARGE: usize = 2;
/// `Slab::owner` of a descriptor that describes no live span.
pub const OWNER_NONE: usize = 3;

/// Descriptor kinds.
pub const KIND_FREE: u8 = 0;
pub const KIND_SMALL: u8 = 1;
pub const KIND_LARGE: u8 = 2;
pub const KIND_HUGE: u8 = 3;

/// A free object: its first word links it into a free list.
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
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
    _pad1: [u8; 20],
    // Line 2: the owner thread.
    pub free: *mut Block,
    pub used: AtomicU32,
    /// `used` value at which a local free must look at the slab: 0 when the slab is not its
    /// table's current slab (an empty slab is then released), `u32::MAX` (never) while current.
    pub retire_at: u32,
    pub allocs: AtomicU64,
    pub table: *mut Table,
    pub tnext: *mut Slab,
    pub tprev: *mut Slab,
    pub carved: u32,
    _pad2: [u8; 12],
    // Line 3: other threads.
    /// Remote-free list head: address and count (see `lifecycle::remote_push`).
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
            _pad1: [0; 20],
            free: null_mut(),
            used: AtomicU32::new(0),
            retire_at: 0,
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
        let pending = crate::lifecycle::remote_pending(&self.thread_free);
        self.used.load(Ordering::Relaxed).saturating_sub(pending)
    }
}

/// The shared empty descriptor that every empty table slot points at.
pub struct EmptySlab(pub UnsafeCell<Slab>);
// SAFETY: the empty slab is never written: its free list is null, so every path that would write
// it takes the slow path first, which never writes a slab of kind KIND_FREE.
unsafe impl Sync for EmptySlab {}
pub static EMPTY_SLAB: EmptySlab = EmptySlab(UnsafeCell::new(Slab::empty()));

/// Header of a segment (small segments and huge mappings alike).
#[repr(C)]
pub struct Segment {
    pub slabs: [Slab; PAGES],
    pub page_map: [u8; PAGES + 1],
    pub kind: u8,
    /// Back end fields, under the back-end lock.
    free_mask: u64,
    dirty_new: u64,
    dirty_old: u64,
    next: *mut Segment,
    prev: *mut Segment,
    /// Huge mappings: where the mapping starts and how long it is.
    pub map_base: *mut u8,
    pub map_len: usize,
}

pub const SEG_SMALL: u8 = 1;
pub const SEG_HUGE: u8 = 2;

const _: () = assert!(core::mem::size_of::<Segment>() <= PAGE_SIZE);

/// The segment header of an object pointer of ours.
#[inline(always)]
pub fn segment_of(p: *const u8) -> *mut Segment {
    ((p as usize).wrapping_sub(1) & !SEGMENT_MASK) as *mut Segment
}

/// The descriptor of the span that holds object pointer `p`.
///
/// # Safety
/// `p` points into memory of ours (a live or freed object).
#[inline(always)]
pub unsafe fn slab_of(p: *const u8) -> *mut Slab {
    let seg = segment_of(p);
    let idx = (p as usize - seg as usize) >> PAGE_SHIFT;
    // SAFETY: the caller guarantees seg is one of our segment headers; idx <= PAGES.
    unsafe {
        let first = *(*seg).page_map.get_unchecked(idx) as usize;
        (*seg).slabs.as_mut_ptr().add(first)
    }
}

// ---------------------------------------------------------------------------------------------
// Registry of our 4 MiB regions.

const ADDRESS_BITS: usize = 48;
const REGISTRY_WORDS: usize = 1 << (ADDRESS_BITS - SEGMENT_SHIFT - 6);
/// One bit per 4 MiB region of the address space: set while a segment of ours starts there.
static REGISTRY: [AtomicU64; REGISTRY_WORDS] = [const { AtomicU64::new(0) }; REGISTRY_WORDS];

fn registry_set(seg: *mut Segment, on: bool) {
    let idx = seg as usize >> SEGMENT_SHIFT;
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
    if p.is_null() {
        return false;
    }
    let seg = segment_of(p);
    let idx = seg as usize >> SEGMENT_SHIFT;
    if idx / 64 >= REGISTRY_WORDS
        || REGISTRY[idx / 64].load(Ordering::Acquire) & (1u64 << (idx % 64)) == 0
    {
        return false;
    }
    // SAFETY: the registry says seg is a mapped segment header of ours.
    unsafe {
        let s = slab_of(p);
        match (*s).kind {
            KIND_SMALL => {
                let off = (p as usize).wrapping_sub((*s).start as usize);
                off < (*s).capacity as usize * (*s).block_size as usize
                    && (!exact || off.is_multiple_of((*s).block_size as usize))
            }
            KIND_LARGE | KIND_HUGE => core::ptr::eq(p, (*s).start),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The back end.

struct BackendState {
    /// Small segments that have at least one free page.
    avail: *mut Segment,
    /// Small segments with no free page.
    full: *mut Segment,
    next_tick: u64,
    /// Pages handed out (slabs and large objects), for `heap_stats`.
    used_pages: usize,
    /// Free pages that are committed (dirty), for `heap_stats`.
    dirty_pages: usize,
}

struct Backend {
    lock: SpinLock,
    state: UnsafeCell<BackendState>,
}

// SAFETY: `state` is only touched under `lock`.
unsafe impl Sync for Backend {}

static BACKEND: Backend = Backend {
    lock: SpinLock::new(),
    state: UnsafeCell::new(BackendState {
        avail: null_mut(),
        full: null_mut(),
        next_tick: 0,
        used_pages: 0,
        dirty_pages: 0,
    }),
};

/// Milliseconds a free page stays committed before the decay returns it; settable at run time.
pub static DECAY_MS: AtomicU64 = AtomicU64::new(1000);
/// Bytes in huge mappings handed out.
static HUGE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Pages of page 0 (the header): never free.
const HEADER_BIT: u64 = 1;

/// A span of pages handed out by the back end.
pub struct Span {
    pub seg: *mut Segment,
    pub idx: usize,
    /// Every page of the span reads as zero (fresh or purged).
    pub zeroed: bool,
}

fn run_mask(n: usize, i: usize) -> u64 {
    (if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }) << i
}

unsafe fn list_remove(head: &mut *mut Segment, seg: *mut Segment) {
    // SAFETY: seg is on the list starting at head; called under the back-end lock.
    unsafe {
        if !(*seg).prev.is_null() {
            (*(*seg).prev).next = (*seg).next;
        } else {
            *head = (*seg).next;
        }
        if !(*seg).next.is_null() {
            (*(*seg).next).prev = (*seg).prev;
        }
        (*seg).next = null_mut();
        (*seg).prev = null_mut();
    }
}

unsafe fn list_push(head: &mut *mut Segment, seg: *mut Segment) {
    // SAFETY: seg is on no list; called under the back-end lock.
    unsafe {
        (*seg).prev = null_mut();
        (*seg).next = *head;
        if !(*head).is_null() {
            (**head).prev = seg;
        }
        *head = seg;
    }
}

/// Takes `n` contiguous pages (1 ≤ n ≤ PAGES - 1) whose first page index is a multiple of
/// `align_pages`. None when the OS refuses a new segment.
pub fn alloc_span(n: usize, align_pages: usize) -> Option<Span> {
    let b = &BACKEND;
    b.lock.lock();
    // SAFETY: we hold the back-end lock.
    let st = unsafe { &mut *b.state.get() };
    maybe_tick(st, false);
    let mut found = None;
    let mut seg = st.avail;
    let step = align_pages.max(1);
    // SAFETY: segments on the lists are mapped headers; we hold the lock.
    unsafe {
        while !seg.is_null() {
            let free = (*seg).free_mask;
            if free.count_ones() as usize >= n {
                let mut i = step;
                while i + n <= PAGES {
                    let m = run_mask(n, i);
                    if free & m == m {
                        found = Some((seg, i));
                        break;
                    }
                    i += step;
                }
                if found.is_some() {
                    break;
                }
            }
            seg = (*seg).next;
        }
        if found.is_none() {
            let fresh = new_segment();
            if fresh.is_null() {
                b.lock.unlock();
                return None;
            }
            list_push(&mut st.avail, fresh);
            found = Some((fresh, step));
        }
        let (seg, i) = found.unwrap_or((null_mut(), 0));
        let m = run_mask(n, i);
        let dirty = ((*seg).dirty_new | (*seg).dirty_old) & m;
        st.dirty_pages -= dirty.count_ones() as usize;
        (*seg).dirty_new &= !m;
        (*seg).dirty_old &= !m;
        (*seg).free_mask &= !m;
        // Pages that were clean (fresh or purged) are committed again from now on.
        os::PURGED.fetch_sub(
            (m & !dirty).count_ones() as usize * PAGE_SIZE,
            Ordering::Relaxed,
        );
        st.used_pages += n;
        if (*seg).free_mask == 0 {
            list_remove(&mut st.avail, seg);
            list_push(&mut st.full, seg);
        }
        for p in i..i + n {
            (*seg).page_map[p] = i as u8;
        }
        b.lock.unlock();
        Some(Span {
            seg,
            idx: i,
            zeroed: dirty == 0,
        })
    }
}

/// Maps and registers a fresh small segment; called under the back-end lock.
unsafe fn new_segment() -> *mut Segment {
    let seg = os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE) as *mut Segment;
    if seg.is_null() {
        return seg;
    }
    // SAFETY: the mapping is fresh and zeroed, and all-zero is a valid header except for the
    // fields set here.
    unsafe {
        (*seg).kind = SEG_SMALL;
        (*seg).free_mask = !HEADER_BIT;
        for s in (*seg).slabs.iter_mut() {
            s.owner = AtomicUsize::new(OWNER_NONE);
        }
    }
    // Fresh pages are clean: account them as "purged" so that taking them is symmetric.
    os::PURGED.fetch_add(SEGMENT_SIZE - PAGE_SIZE, Ordering::Relaxed);
    registry_set(seg, true);
    seg
}

/// Returns the span `idx..idx+n` of `seg` to the back end. The pages become dirty free pages.
///
/// # Safety
/// The span was handed out by [`alloc_span`] and holds no live object.
pub unsafe fn free_span(seg: *mut Segment, idx: usize, n: usize) {
    let b = &BACKEND;
    b.lock.lock();
    // SAFETY: we hold the back-end lock; seg is a small segment of ours.
    unsafe {
        let st = &mut *b.state.get();
        let m = run_mask(n, idx);
        let slab = (*seg).slabs.as_mut_ptr().add(idx);
        (*slab).kind = KIND_FREE;
        (*slab).owner.store(OWNER_NONE, Ordering::Relaxed);
        // A segment is on the full list exactly while it has no free page.
        let was_full = (*seg).free_mask == 0;
        (*seg).free_mask |= m;
        (*seg).dirty_new |= m;
        st.dirty_pages += n;
        st.used_pages -= n;
        if was_full {
            list_remove(&mut st.full, seg);
            list_push(&mut st.avail, seg);
        }
        maybe_tick(st, false);
    }
    b.lock.unlock();
}

/// Returns the span described by slab descriptor `s` (a small-object slab or a large object).
///
/// # Safety
/// As [`free_span`]: the span holds no live object.
pub unsafe fn free_slab_span(s: *mut Slab) {
    // SAFETY: guaranteed by the caller; a slab's start lies inside its own segment.
    unsafe {
        let seg = segment_of((*s).start.add(1));
        free_span(seg, (*s).page_idx as usize, (*s).npages as usize);
    }
}

fn maybe_tick(st: &mut BackendState, force: bool) {
    let decay = DECAY_MS.load(Ordering::Relaxed);
    let now = os::now_ms();
    if !force && decay > 0 && now < st.next_tick {
        return;
    }
    st.next_tick = now + decay / 2;
    // Two generations: pages freed since the last tick are `dirty_new`; at a tick the older ones
    // (free for at least decay/2, at most decay) are purged and the new ones age.
    // SAFETY: called under the back-end lock; segments on the avail list are ours.
    unsafe {
        let mut seg = st.avail;
        while !seg.is_null() {
            let next = (*seg).next;
            let purge = if force || decay == 0 {
                (*seg).dirty_old | (*seg).dirty_new
            } else {
                (*seg).dirty_old
            } & (*seg).free_mask;
            if purge != 0 {
                purge_pages(seg, purge);
                st.dirty_pages -= purge.count_ones() as usize;
            }
            (*seg).dirty_old = ((*seg).dirty_old | (*seg).dirty_new) & !purge;
            (*seg).dirty_new = 0;
            if (*seg).free_mask == !HEADER_BIT && (*seg).dirty_old == 0 {
                list_remove(&mut st.avail, seg);
                registry_set(seg, false);
                os::PURGED.fetch_sub(SEGMENT_SIZE - PAGE_SIZE, Ordering::Relaxed);
                os::unmap(seg as *mut u8, SEGMENT_SIZE);
            }
            seg = next;
        }
    }
}

/// madvises every run of set bits of `mask`.
unsafe fn purge_pages(seg: *mut Segment, mask: u64) {
    let mut m = mask;
    while m != 0 {
        let start = m.trailing_zeros() as usize;
        let len = (m >> start).trailing_ones() as usize;
        // SAFETY: the pages are free pages of our segment.
        unsafe {
            os::purge((seg as *mut u8).add(start * PAGE_SIZE), len * PAGE_SIZE);
        }
        os::PURGED.fetch_add(len * PAGE_SIZE, Ordering::Relaxed);
        m &= !run_mask(len, start);
    }
}

/// Runs the decay now if it is due (`force`: return every free page now).
pub fn tick(force: bool) {
    BACKEND.lock.lock();
    // SAFETY: we hold the back-end lock.
    maybe_tick(unsafe { &mut *BACKEND.state.get() }, force);
    BACKEND.lock.unlock();
    huge_cache_decay(force);
}

/// Maps a huge object of `size` bytes aligned to `align`; returns its descriptor (in the header
/// of its own mapping), or null when the OS refuses.
pub fn alloc_huge(size: usize, align: usize) -> *mut Slab {
    let hdr = (core::mem::size_of::<Segment>() + OS_PAGE - 1) & !(OS_PAGE - 1);
    let (offset, map_align) = if align < SEGMENT_SIZE {
        ((hdr + align - 1) & !(align - 1), SEGMENT_SIZE)
    } else {
        (SEGMENT_SIZE, align)
    };
    let Some(len) = size
        .checked_add(offset + OS_PAGE - 1)
        .map(|l| l & !(OS_PAGE - 1))
    else {
        return null_mut();
    };
    // A mapping freed a moment ago serves first (no system call, no page faults); then, for
    // align >= SEGMENT_SIZE the object must sit at base + SEGMENT_SIZE, aligned: map aligned to
    // `align` one segment early.
    let (base, map_len, fresh) = if align < SEGMENT_SIZE {
        match huge_cache_take(len) {
            Some((base, cached_len)) => (base, cached_len, false),
            None => (os::map_aligned(len, map_align), len, true),
        }
    } else {
        let Some(total) = len.checked_add(align) else {
            return null_mut();
        };
        let raw = os::map_aligned(total, SEGMENT_SIZE);
        if raw.is_null() {
            return null_mut();
        }
        // First address ≥ raw whose + SEGMENT_SIZE is align-aligned.
        let obj = ((raw as usize + SEGMENT_SIZE + align - 1) & !(align - 1)) as *mut u8;
        let base = (obj as usize - SEGMENT_SIZE) as *mut u8;
        // SAFETY: the unused head and tail are inside the mapping we just made.
        unsafe {
            let head = base as usize - raw as usize;
            if head > 0 {
                os::unmap(raw, head);
            }
            let tail = total - head - len;
            if tail > 0 {
                os::unmap(base.add(len), tail);
            }
        }
        (base, len, true)
    };
    if base.is_null() {
        return null_mut();
    }
    let seg = base as *mut Segment;
    // SAFETY: the mapping is fresh and zeroed, or a cached one nobody else refers to; we own it.
    unsafe {
        (*seg).kind = SEG_HUGE;
        (*seg).map_base = base;
        (*seg).map_len = map_len;
        let s = (*seg).slabs.as_mut_ptr();
        (*s).kind = KIND_HUGE;
        (*s).owner = AtomicUsize::new(OWNER_LARGE);
        (*s).start = base.add(offset);
        (*s).block_size = 0;
        // The usable size is what was asked, page-rounded, even in a larger cached mapping, so
        // that charge and uncharge agree.
        (*s).npages = ((len - offset) / OS_PAGE) as u32;
        (*s).zeroed = fresh;
        (*s).used = AtomicU32::new(1);
        HUGE_BYTES.fetch_add(map_len, Ordering::Relaxed);
        if fresh {
            registry_set(seg, true);
        }
        s
    }
}

/// Usable bytes of a huge object.
///
/// # Safety
/// `s` is the descriptor of a live huge object.
pub unsafe fn huge_usable(s: *const Slab) -> usize {
    // SAFETY: guaranteed by the caller.
    unsafe { (*s).npages as usize * OS_PAGE }
}

/// Frees a huge object: its mapping goes to the huge cache (for reuse within the decay time) or
/// back to the OS.
///
/// # Safety
/// `s` describes a huge object that is no longer used.
pub unsafe fn free_huge(s: *mut Slab) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let seg = segment_of((*s).start);
        let (base, len) = ((*seg).map_base, (*seg).map_len);
        HUGE_BYTES.fetch_sub(len, Ordering::Relaxed);
        (*s).kind = KIND_FREE;
        (*s).owner.store(OWNER_NONE, Ordering::Relaxed);
        huge_cache_decay(false);
        if !huge_cache_put(base, len) {
            registry_set(seg, false);
            os::unmap(base, len);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The huge cache: recently freed huge mappings, kept mapped (and dirty) for at most the decay
// time, so that a program that frees and allocates multi-MiB objects in a loop does not pay an
// mmap, a munmap and a page fault per page each time. Its own lock, taken with no other held.

const HUGE_CACHE_SLOTS: usize = 16;
/// At most this many bytes stay cached; a larger mapping is unmapped at once.
const HUGE_CACHE_BYTES: usize = 16 << 20;

#[derive(Clone, Copy)]
struct CachedMapping {
    base: usize,
    len: usize,
    freed_ms: u64,
}

struct HugeCache {
    lock: SpinLock,
    slots: UnsafeCell<[CachedMapping; HUGE_CACHE_SLOTS]>,
}

// SAFETY: `slots` is only touched under `lock`.
unsafe impl Sync for HugeCache {}

static HUGE_CACHE: HugeCache = HugeCache {
    lock: SpinLock::new(),
    slots: UnsafeCell::new(
        [CachedMapping {
            base: 0,
            len: 0,
            freed_ms: 0,
        }; HUGE_CACHE_SLOTS],
    ),
};
/// Bytes in the huge cache, for `heap_stats().cached`.
static HUGE_CACHED: AtomicUsize = AtomicUsize::new(0);

/// Keeps a freed huge mapping; false when it does not fit (the caller unmaps it).
fn huge_cache_put(base: *mut u8, len: usize) -> bool {
    if DECAY_MS.load(Ordering::Relaxed) == 0
        || HUGE_CACHED.load(Ordering::Relaxed) + len > HUGE_CACHE_BYTES
    {
        return false;
    }
    let now = os::now_ms();
    HUGE_CACHE.lock.lock();
    // SAFETY: we hold the huge-cache lock.
    let slots = unsafe { &mut *HUGE_CACHE.slots.get() };
    let kept = match slots.iter_mut().find(|m| m.base == 0) {
        Some(m) => {
            *m = CachedMapping {
                base: base as usize,
                len,
                freed_ms: now,
            };
            HUGE_CACHED.fetch_add(len, Ordering::Relaxed);
            true
        }
        None => false,
    };
    HUGE_CACHE.lock.unlock();
    kept
}

/// A cached mapping of at least `len` bytes and at most a quarter more; (base, its length).
fn huge_cache_take(len: usize) -> Option<(*mut u8, usize)> {
    if HUGE_CACHED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    HUGE_CACHE.lock.lock();
    // SAFETY: we hold the huge-cache lock.
    let slots = unsafe { &mut *HUGE_CACHE.slots.get() };
    let best = slots
        .iter_mut()
        .filter(|m| m.base != 0 && m.len >= len && m.len - len <= len / 4)
        .min_by_key(|m| m.len);
    let found = best.map(|m| {
        let got = (m.base as *mut u8, m.len);
        HUGE_CACHED.fetch_sub(m.len, Ordering::Relaxed);
        m.base = 0;
        got
    });
    HUGE_CACHE.lock.unlock();
    found
}

/// Unmaps cached huge mappings older than the decay time (all of them when `force`).
fn huge_cache_decay(force: bool) {
    if HUGE_CACHED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let now = os::now_ms();
    let decay = DECAY_MS.load(Ordering::Relaxed);
    let mut expired = [(0usize, 0usize); HUGE_CACHE_SLOTS];
    let mut n = 0;
    HUGE_CACHE.lock.lock();
    // SAFETY: we hold the huge-cache lock.
    let slots = unsafe { &mut *HUGE_CACHE.slots.get() };
    for m in slots.iter_mut() {
        if m.base != 0 && (force || now >= m.freed_ms + decay) {
            expired[n] = (m.base, m.len);
            n += 1;
            HUGE_CACHED.fetch_sub(m.len, Ordering::Relaxed);
            m.base = 0;
        }
    }
    HUGE_CACHE.lock.unlock();
    for &(base, len) in &expired[..n] {
        registry_set(base as *mut Segment, false);
        // SAFETY: the mapping left the cache under its lock: nobody else refers to it.
        unsafe { os::unmap(base as *mut u8, len) };
    }
}

/// Figures of the back end: (bytes handed out in spans and huge objects, dirty free bytes).
pub fn figures() -> (usize, usize) {
    BACKEND.lock.lock();
    // SAFETY: we hold the back-end lock.
    let (used, dirty) = unsafe {
        let st = &*BACKEND.state.get();
        (st.used_pages, st.dirty_pages)
    };
    BACKEND.lock.unlock();
    (
        used * PAGE_SIZE + HUGE_BYTES.load(Ordering::Relaxed),
        dirty * PAGE_SIZE + HUGE_CACHED.load(Ordering::Relaxed),
    )
}

/// Takes the back-end lock (fork prepare).
pub fn lock_for_fork() {
    BACKEND.lock.lock();
    HUGE_CACHE.lock.lock();
}

/// Releases the back-end lock (fork parent and child).
pub fn unlock_after_fork() {
    HUGE_CACHE.lock.force_unlock();
    BACKEND.lock.force_unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_found_from_any_interior_pointer_by_masking() {
        let span = alloc_span(3, 1).expect("a span");
        // SAFETY: the span is ours until freed below.
        unsafe {
            let base = (span.seg as *mut u8).add(span.idx * PAGE_SIZE);
            let first = (*span.seg).slabs.as_mut_ptr().add(span.idx);
            for off in [0usize, 1, PAGE_SIZE, 3 * PAGE_SIZE - 1] {
                let p = base.add(off);
                if off == 0 {
                    // An object never starts at a segment boundary unless huge; page starts do.
                    assert_eq!(segment_of(p.add(1)), span.seg);
                } else {
                    assert_eq!(segment_of(p), span.seg);
                    assert_eq!(slab_of(p), first);
                }
            }
            free_span(span.seg, span.idx, 3);
        }
    }

    #[test]
    fn aligned_spans_start_on_their_alignment() {
        let span = alloc_span(2, 8).expect("a span");
        let addr = span.seg as usize + span.idx * PAGE_SIZE;
        assert_eq!(addr % (8 * PAGE_SIZE), 0);
        // SAFETY: the span is ours.
        unsafe { free_span(span.seg, span.idx, 2) };
    }

    #[test]
    fn huge_objects_are_found_by_masking_at_every_alignment() {
        for align in [16usize, 4096, 1 << 20, SEGMENT_SIZE, 4 * SEGMENT_SIZE] {
            let s = alloc_huge(5 << 20, align);
            assert!(!s.is_null());
            // SAFETY: s is a live huge descriptor until freed.
            unsafe {
                let p = (*s).start;
                assert_eq!(p as usize % align, 0, "align {align}");
                assert_eq!(slab_of(p), s);
                assert!(owns(p));
                assert!(huge_usable(s) >= 5 << 20);
                free_huge(s);
                assert!(!owns(p));
            }
        }
    }

    #[test]
    fn a_freed_huge_mapping_is_reused_dirty_then_returned_by_the_decay() {
        let s = alloc_huge(6 << 20, 16);
        assert!(!s.is_null());
        // SAFETY: s is a live huge descriptor until freed.
        let (p, usable) = unsafe { ((*s).start, huge_usable(s)) };
        // SAFETY: as above.
        unsafe { free_huge(s) };
        assert!(!owns(p), "a cached mapping holds no object");
        let again = alloc_huge(6 << 20, 16);
        // SAFETY: again is live until freed.
        unsafe {
            assert_eq!(
                (*again).start,
                p,
                "the cached mapping serves the same size again"
            );
            assert!(!(*again).zeroed, "reused memory is not known to be zero");
            assert_eq!(huge_usable(again), usable);
            free_huge(again);
        }
        huge_cache_decay(true);
        assert!(!owns(p));
    }

    #[test]
    fn foreign_pointers_are_not_ours() {
        let x = 5u64;
        assert!(!owns(&x as *const u64 as *const u8));
        assert!(!owns(core::ptr::null()));
    }
}

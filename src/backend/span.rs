//! The page back end: hands out runs of pages ("spans") of small segments and takes them back.
//!
//! One lock, [`BACKEND`], guards the page bitmaps of every small segment and the two segment
//! lists. It is taken once per slab or large object, never per small object, and no system call
//! is made while it is held: a new segment is mapped before the lock is taken again, and the
//! decay (`decay`) reserves the pages it purges under the lock, then calls `madvise` and
//! `munmap` after releasing it.
//!
//! A page of a small segment is in exactly one state: handed out (in a span), free and dirty
//! (committed: `dirty_new` or `dirty_old`), free and clean (purged or never touched), or being
//! purged (`purging`: reserved by a tick that is calling `madvise` on it; neither free nor
//! handed out).

use super::decay;
use super::registry;
use super::segment::{Segment, PAGES, PAGE_SIZE, SEGMENT_SIZE};
use crate::platform::os;
use crate::sync::{Ordering, SpinLock};
use core::ptr::null_mut;

/// The back end's lists and figures.
pub(super) struct BackendState {
    /// Small segments that have a free page, or pages being purged.
    pub(super) avail: *mut Segment,
    /// Small segments with no free page and none being purged.
    pub(super) full: *mut Segment,
    /// When the decay is next due (ms of `os::now_ms`).
    pub(super) next_tick: u64,
    /// Pages handed out (slabs and large objects), for `heap_stats`.
    pub(super) used_pages: usize,
    /// Free pages that are committed (dirty), for `heap_stats`.
    pub(super) dirty_pages: usize,
}

// SAFETY: the segment pointers are our own mappings, reached only under the lock that owns the
// state; no thread affinity.
unsafe impl Send for BackendState {}

pub(super) static BACKEND: SpinLock<BackendState> = SpinLock::new_no_syscalls(BackendState {
    avail: null_mut(),
    full: null_mut(),
    next_tick: 0,
    used_pages: 0,
    dirty_pages: 0,
});

/// Page 0 of a segment (the header): never free.
pub(super) const HEADER_BIT: u64 = 1;
/// Secure build: the last page of a segment, never handed out and inaccessible (a guard between
/// segments, so that a linear overflow off the last span of one faults before it reaches
/// whatever the kernel mapped after it).
#[cfg(feature = "secure")]
const SEGMENT_GUARD_BIT: u64 = 1 << (PAGES - 1);
/// Pages of a segment that are never free: the header (and the secure build's guard page).
#[cfg(not(feature = "secure"))]
pub(super) const RESERVED: u64 = HEADER_BIT;
/// Pages of a segment that are never free: the header (and the secure build's guard page).
#[cfg(feature = "secure")]
pub(super) const RESERVED: u64 = HEADER_BIT | SEGMENT_GUARD_BIT;

/// A span of pages handed out by the back end.
pub struct Span {
    /// Its segment.
    pub seg: *mut Segment,
    /// Index of its first page.
    pub idx: usize,
    /// Every page of the span reads as zero (fresh or purged).
    pub zeroed: bool,
}

/// The mask of `n` pages starting at page `i`.
pub(super) fn run_mask(n: usize, i: usize) -> u64 {
    (if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }) << i
}

/// Takes `seg` off the list at `head`.
///
/// # Safety
/// The back-end lock is held (the caller has `&mut BackendState`) and `seg` is on that list.
pub(super) unsafe fn list_remove(head: &mut *mut Segment, seg: *mut Segment) {
    // SAFETY: seg and its neighbours are mapped headers on the list, guarded by the lock.
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

/// Pushes `seg` on the list at `head`.
///
/// # Safety
/// The back-end lock is held and `seg` is a mapped header on no list.
pub(super) unsafe fn list_push(head: &mut *mut Segment, seg: *mut Segment) {
    // SAFETY: seg and the old head are mapped headers, guarded by the lock.
    unsafe {
        (*seg).prev = null_mut();
        (*seg).next = *head;
        if !(*head).is_null() {
            (**head).prev = seg;
        }
        *head = seg;
    }
}

/// The first run of `n` free pages of `free` starting at a multiple of `step`.
fn find_run(free: u64, n: usize, step: usize) -> Option<usize> {
    if (free.count_ones() as usize) < n {
        return None;
    }
    let mut i = step;
    while i + n <= PAGES {
        let m = run_mask(n, i);
        if free & m == m {
            return Some(i);
        }
        i += step;
    }
    None
}

/// Takes `n` contiguous pages (1 ≤ n ≤ PAGES - 1) whose first page index is a multiple of
/// `align_pages`. None when the OS refuses a new segment.
pub fn alloc_span(n: usize, align_pages: usize) -> Option<Span> {
    debug_assert!((1..PAGES).contains(&n));
    let step = align_pages.max(1);
    let mut fresh: *mut Segment = null_mut();
    loop {
        let mut guard = BACKEND.lock();
        let st = &mut *guard;
        if !fresh.is_null() {
            // SAFETY: we hold the lock; the fresh segment is on no list.
            unsafe { list_push(&mut st.avail, fresh) };
        }
        let mut seg = st.avail;
        let mut found = None;
        // SAFETY: segments on the lists are mapped headers; we hold the lock.
        unsafe {
            while !seg.is_null() {
                if let Some(i) = find_run((*seg).free_mask, n, step) {
                    found = Some(i);
                    break;
                }
                seg = (*seg).next;
            }
        }
        if let Some(i) = found {
            // SAFETY: seg is a mapped header on the avail list; we hold the lock.
            let span = unsafe { take_pages(st, seg, i, n) };
            let due = decay::due(st.next_tick);
            drop(guard);
            if due {
                decay::tick(false);
            }
            return Some(span);
        }
        drop(guard);
        // No system call under the lock: map, then look again (another thread may have freed
        // pages meanwhile; the fresh segment is added to the list either way).
        fresh = new_segment();
        if fresh.is_null() {
            return None;
        }
    }
}

/// Marks pages `i..i+n` of `seg` handed out.
///
/// # Safety
/// The lock is held (through `st`); `seg` is on the avail list with those pages free.
unsafe fn take_pages(st: &mut BackendState, seg: *mut Segment, i: usize, n: usize) -> Span {
    // SAFETY: guarded by the lock, per the contract.
    unsafe {
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
        if (*seg).free_mask == 0 && (*seg).purging == 0 {
            list_remove(&mut st.avail, seg);
            list_push(&mut st.full, seg);
        }
        for m in (*seg).page_map.iter_mut().skip(i).take(n) {
            *m = i as u8;
        }
        Span {
            seg,
            idx: i,
            zeroed: dirty == 0,
        }
    }
}

/// Maps and registers a fresh small segment (no lock held).
fn new_segment() -> *mut Segment {
    let seg = os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE) as *mut Segment;
    if seg.is_null() {
        return seg;
    }
    #[cfg(feature = "secure")]
    // SAFETY: the mapping is fresh and ours alone; nothing refers to it yet.
    unsafe {
        if !guard_segment(seg) {
            // A refused guard is a refused segment (the request is refused, as for mmap).
            os::unmap(seg.cast(), SEGMENT_SIZE);
            return null_mut();
        }
        os::report_guard_faults(super::in_our_mapping);
    }
    // SAFETY: the mapping is fresh, zeroed and ours alone; all-zero is a valid header (every
    // descriptor zero, no list links) except for the free mask set here.
    unsafe { (*seg).free_mask = !RESERVED };
    #[cfg(feature = "secure")]
    // SAFETY: as above; no slab of this segment exists yet, so no link was encoded with the key.
    unsafe {
        (*seg).key = os::random_u64();
        (*seg).tag_key = os::random_u64();
        (*seg).canary_key = super::segment::canary_key_from(os::random_u64());
    }
    // Fresh pages are clean: account them as "purged" so that taking them is symmetric (the
    // secure build's guard page too: never touched, it is given back with the segment as a
    // clean page).
    os::PURGED.fetch_add(SEGMENT_SIZE - PAGE_SIZE, Ordering::Relaxed);
    registry::set(seg, true);
    seg
}

/// Secure build: makes a fresh segment's guards inaccessible: its last page, and the last OS
/// page of its header page when the header leaves room for one (OS pages smaller than
/// `PAGE_SIZE`), so that an underflow of the first span faults too. False if the kernel refused
/// (the caller unmaps the segment).
///
/// # Safety
/// `seg` is a fresh mapping of ours of `SEGMENT_SIZE` bytes that nothing refers to.
#[cfg(feature = "secure")]
unsafe fn guard_segment(seg: *mut Segment) -> bool {
    let page = os::page_size();
    let base = seg.cast::<u8>();
    let header_room = page < PAGE_SIZE && core::mem::size_of::<Segment>() <= PAGE_SIZE - page;
    // SAFETY: both ranges are whole pages inside the fresh mapping, which holds nothing yet.
    unsafe {
        os::protect(base.add(SEGMENT_SIZE - PAGE_SIZE), PAGE_SIZE, true)
            && (!header_room || os::protect(base.add(PAGE_SIZE - page), page, true))
    }
}

/// Returns the span `idx..idx+n` of `seg` to the back end. The pages become dirty free pages.
///
/// # Safety
/// The span was handed out by [`alloc_span`], holds no live object, and nobody touches it
/// afterwards.
pub unsafe fn free_span(seg: *mut Segment, idx: usize, n: usize) {
    let mut guard = BACKEND.lock();
    let st = &mut *guard;
    // SAFETY: we hold the back-end lock; seg is a small segment of ours with this span handed out.
    unsafe {
        let m = run_mask(n, idx);
        debug_assert!(
            (*seg).free_mask & m == 0,
            "free of a span that is not handed out"
        );
        // A segment is on the full list exactly while it has no free page and none being purged.
        let was_full = (*seg).free_mask == 0 && (*seg).purging == 0;
        (*seg).free_mask |= m;
        (*seg).dirty_new |= m;
        st.dirty_pages += n;
        st.used_pages -= n;
        if was_full {
            list_remove(&mut st.full, seg);
            list_push(&mut st.avail, seg);
        }
    }
    let due = decay::due(st.next_tick);
    drop(guard);
    if due {
        decay::tick(false);
    }
}

/// Bytes handed out in spans and free dirty bytes of small segments.
pub fn figures() -> (usize, usize) {
    let st = BACKEND.lock();
    (st.used_pages * PAGE_SIZE, st.dirty_pages * PAGE_SIZE)
}

/// Small segments the back end holds (on either list), for the census of mapped memory.
pub fn segments() -> usize {
    let st = BACKEND.lock();
    let mut n = 0;
    for head in [st.avail, st.full] {
        let mut seg = head;
        while !seg.is_null() {
            n += 1;
            // SAFETY: segments on the lists are mapped headers; we hold the lock.
            seg = unsafe { (*seg).next };
        }
    }
    n
}

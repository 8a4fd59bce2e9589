//! The decay: free pages go back to the OS after they have been free for a while.
//!
//! Free pages age in two generations: pages freed since the last tick are `dirty_new`; a tick
//! every `decay / 2` ms purges the older ones (`dirty_old`, free for between `decay / 2` and
//! `decay` ms) with `madvise(MADV_DONTNEED)` and ages the new ones. A segment that is entirely
//! free and would be clean after the tick is unmapped.
//!
//! A tick works in three steps so that no system call runs under the back-end lock: under the
//! lock it chooses the pages and reserves them (`purging`: no longer free, so no span can take
//! them) and takes whole free segments off the lists and out of the registry; without the lock
//! it calls `madvise` and `munmap`; under the lock again it gives the purged pages back as clean
//! free pages.
//!
//! When the OS says no: pages whose `madvise` failed go back as *dirty* free pages (`dirty_old`,
//! so the next tick tries again): they are still committed and keep their old contents, so a
//! span taken from them is not `zeroed`. A segment whose `munmap` failed is the platform's to
//! retry (`os::retry_unmaps`, called by every tick): it stays counted as mapped and is never
//! handed out again.

use super::huge;
use super::registry;
use super::segment::{page_start, Segment, PAGE_SIZE, SEGMENT_SIZE};
use super::span::{list_remove, run_mask, BACKEND, HEADER_BIT, RESERVED};
use crate::platform::os;
use crate::sync::{AtomicU64, Ordering};

/// Milliseconds a free page stays committed before the decay returns it; settable at run time.
pub static DECAY_MS: AtomicU64 = AtomicU64::new(1000);

/// Whether a tick is due, given the back end's `next_tick`: always when the decay is 0 (free
/// pages go back at once).
pub(super) fn due(next_tick: u64) -> bool {
    DECAY_MS.load(Ordering::Relaxed) == 0 || os::now_ms() >= next_tick
}

/// Segments a tick handles without the lock at most; the rest wait for the next tick.
const TICK_BATCH: usize = 32;

/// Runs the decay if it is due (`force`: return every free page now, due or not).
pub fn tick(force: bool) {
    // A forced tick repeats until a round left nothing behind; an ordinary one leaves what did
    // not fit in its batch to the next tick.
    while tick_round(force) && force {}
    huge::cache_decay(force);
    os::retry_unmaps();
}

/// One round of [`tick`]; true when it filled a batch (work may remain).
fn tick_round(force: bool) -> bool {
    let decay = DECAY_MS.load(Ordering::Relaxed);
    let now = os::now_ms();
    let mut purge = [(core::ptr::null_mut::<Segment>(), 0u64); TICK_BATCH];
    let mut unmap = [(core::ptr::null_mut::<Segment>(), 0usize); TICK_BATCH];
    let (mut np, mut nu) = (0, 0);
    {
        let mut guard = BACKEND.lock();
        let st = &mut *guard;
        if force || decay == 0 || now >= st.next_tick {
            st.next_tick = now + decay / 2;
            let mut seg = st.avail;
            // SAFETY: segments on the avail list are mapped headers; we hold the lock.
            unsafe {
                while !seg.is_null() {
                    let next = (*seg).next;
                    let dirty = (*seg).dirty_old | (*seg).dirty_new;
                    let old = if force || decay == 0 {
                        dirty
                    } else {
                        (*seg).dirty_old
                    } & (*seg).free_mask;
                    let whole =
                        (*seg).free_mask == !RESERVED && (*seg).purging == 0 && dirty & !old == 0;
                    if whole && nu < TICK_BATCH {
                        // Entirely free, and clean once `old` is purged: unmap it instead.
                        list_remove(&mut st.avail, seg);
                        registry::set(seg, false);
                        let clean = (!HEADER_BIT & !dirty).count_ones() as usize * PAGE_SIZE;
                        os::PURGED.fetch_sub(clean, Ordering::Relaxed);
                        unmap[nu] = (seg, dirty.count_ones() as usize);
                        nu += 1;
                    } else if old != 0 && np < TICK_BATCH {
                        (*seg).free_mask &= !old;
                        (*seg).purging |= old;
                        (*seg).dirty_old = ((*seg).dirty_old | (*seg).dirty_new) & !old;
                        (*seg).dirty_new = 0;
                        purge[np] = (seg, old);
                        np += 1;
                    } else {
                        (*seg).dirty_old |= (*seg).dirty_new;
                        (*seg).dirty_new = 0;
                    }
                    seg = next;
                }
            }
        }
    }
    let mut refused = [0u64; TICK_BATCH];
    // Iterators, not slices of the batches: no panic path (np, nu <= TICK_BATCH).
    for (&(seg, mask), r) in purge.iter().take(np).zip(refused.iter_mut()) {
        // SAFETY: the pages are reserved (`purging`): free, ours, and nobody can take them.
        *r = unsafe { purge_pages(seg, mask) };
    }
    for &(seg, _) in unmap.iter().take(nu) {
        // SAFETY: the segment is off every list and out of the registry, and entirely free:
        // nothing refers to it any more.
        unsafe { os::unmap(seg as *mut u8, SEGMENT_SIZE) };
    }
    if np > 0 || nu > 0 {
        // The pages count as dirty (committed) until the system call has returned them, so that
        // `heap_stats` never shows them neither cached nor returned.
        let mut guard = BACKEND.lock();
        for &(_, dirty) in unmap.iter().take(nu) {
            guard.dirty_pages -= dirty;
        }
        for (&(seg, mask), &refused) in purge.iter().take(np).zip(&refused) {
            guard.dirty_pages -= (mask & !refused).count_ones() as usize;
            // SAFETY: seg is still on the avail list (a segment with pages being purged is never
            // moved to the full list nor unmapped); we hold the lock.
            unsafe {
                (*seg).purging &= !mask;
                (*seg).free_mask |= mask;
                // Still committed, and not zero: free dirty pages, purged again next tick.
                (*seg).dirty_old |= refused;
            }
        }
    }
    np == TICK_BATCH || nu == TICK_BATCH
}

/// madvises every run of set bits of `mask`; returns the pages whose `madvise` failed (still
/// committed, contents kept).
///
/// # Safety
/// The pages of `mask` are free pages of our segment `seg` that nobody can take meanwhile.
unsafe fn purge_pages(seg: *mut Segment, mask: u64) -> u64 {
    let mut m = mask;
    let mut refused = 0;
    while m != 0 {
        let start = m.trailing_zeros() as usize;
        let len = (m >> start).trailing_ones() as usize;
        // SAFETY: the pages are free pages of our segment (the caller's contract).
        if unsafe { os::purge(page_start(seg, start), len * PAGE_SIZE) } {
            os::PURGED.fetch_add(len * PAGE_SIZE, Ordering::Relaxed);
        } else {
            refused |= run_mask(len, start);
        }
        m &= !run_mask(len, start);
    }
    refused
}

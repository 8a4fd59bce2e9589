//! The back end: memory from the OS in segments (spans of 64 KiB pages, found from any pointer by
//! masking), huge mappings, the decay that gives free pages back, the registry of our regions and
//! the pools of the allocator's own metadata.
//!
//! It knows nothing of slabs, caches, tables or scopes: a span's descriptor is an opaque slot
//! ([`segment::Desc`]) that the object layer lays its slab metadata over. Imports only
//! `platform` and `sync`.

pub mod decay;
pub mod huge;
pub mod pool;
pub mod registry;
pub mod segment;
pub mod span;

/// Figures of the back end: (bytes handed out in spans and huge objects, free bytes kept
/// committed: dirty free pages and the huge cache).
pub fn figures() -> (usize, usize) {
    let (span_used, dirty) = span::figures();
    let (huge_used, huge_cached) = huge::figures();
    (span_used + huge_used, dirty + huge_cached)
}

/// Bytes of address space the back end believes it holds: its small segments, its huge
/// mappings (handed out and cached) and the metadata mappings. At rest (no report being
/// built), `os::MAPPED` must equal this plus `os::deferred_bytes()`: memory the OS was asked
/// for and never given back is in one of them, or lost.
pub fn census() -> usize {
    let (huge_used, huge_cached) = huge::figures();
    span::segments() * segment::SEGMENT_SIZE
        + huge_used
        + huge_cached
        + pool::METADATA_MAPPED.load(crate::sync::Ordering::Relaxed)
}

/// Secure build: whether `addr` lies in a mapping of ours, a small segment or a huge mapping
/// (where only our guard pages are inaccessible), for the SIGSEGV reporter
/// (`platform::os::report_guard_faults`). Async-signal-safe: registry bits and header words,
/// no lock. A huge mapping is registered at its first 4 MiB region only, so the regions below
/// `addr` are tried in turn, as far back as the longest mapping we make; the first one of ours
/// found is the only mapping that can hold `addr`.
#[cfg(feature = "secure")]
pub fn in_our_mapping(addr: usize) -> bool {
    use segment::{Segment, SEGMENT_MASK, SEGMENT_SIZE};
    const WALK: usize = huge::SECURE_MAX_REQUEST / SEGMENT_SIZE + 2;
    let mut region = addr & !SEGMENT_MASK;
    for _ in 0..WALK {
        let seg = region as *const Segment;
        if registry::contains(seg) {
            // SAFETY: the registry says a header of ours is mapped at `region`.
            let len = unsafe { (*seg).map_len };
            let len = if len == 0 { SEGMENT_SIZE } else { len };
            return addr - region < len;
        }
        if region < SEGMENT_SIZE {
            return false;
        }
        region -= SEGMENT_SIZE;
    }
    false
}

/// Takes the back-end locks (fork prepare), in the lock order.
pub fn lock_for_fork() {
    span::BACKEND.lock_for_fork();
    huge::lock_for_fork();
}

/// Releases what [`lock_for_fork`] took (fork parent and child).
pub fn unlock_after_fork() {
    huge::unlock_after_fork();
    span::BACKEND.force_unlock();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::segment::{desc_at, desc_of, page_start, segment_of, PAGE_SIZE, SEGMENT_SIZE};
    use super::*;

    /// Regression (the bug suite's `underflow-1-64` missed 8 runs in 2 000): whatever the random
    /// word, a trailer (`key ^ block ^ n`, or `^ FREE` for a free block) ends in an odd byte, so a
    /// one-byte underflow writing an even byte ('X', 0) into it always changes it.
    #[cfg(feature = "secure")]
    #[test]
    fn canary_keys_end_every_trailer_in_an_odd_byte() {
        for random in [
            0u64,
            0x58 << 56,
            u64::MAX,
            0x5800_0000_dead_beef,
            0xfe00_0000_0000_0001,
        ] {
            let key = segment::canary_key_from(random);
            for block in [0x7f12_3456_7890usize, 0x5555_0000_1040, 0x7fff_ffff_f000] {
                for n in [0u64, 1, 64, 4088, 1 << 63] {
                    let last = ((key ^ block as u64 ^ n) >> 56) as u8;
                    assert_eq!(last & 1, 1, "{random:#x} {block:#x} {n:#x}");
                    assert_ne!(last, b'X');
                    assert_ne!(last, 0);
                }
            }
        }
    }

    #[test]
    fn a_span_is_found_from_any_interior_pointer_by_masking() {
        let s = span::alloc_span(3, 1).expect("a span");
        let base = page_start(s.seg, s.idx);
        // SAFETY: the span is ours until freed below; its header is mapped.
        unsafe {
            let first = desc_at(s.seg, s.idx);
            for off in [1usize, PAGE_SIZE, 3 * PAGE_SIZE - 1] {
                let p = base.add(off);
                assert_eq!(segment_of(p), s.seg);
                assert_eq!(desc_of(p), first);
            }
            span::free_span(s.seg, s.idx, 3);
        }
    }

    #[test]
    fn aligned_spans_start_on_their_alignment() {
        let s = span::alloc_span(2, 8).expect("a span");
        assert_eq!(page_start(s.seg, s.idx) as usize % (8 * PAGE_SIZE), 0);
        // SAFETY: the span is ours.
        unsafe { span::free_span(s.seg, s.idx, 2) };
    }

    #[test]
    fn huge_objects_are_found_by_masking_at_every_alignment() {
        for align in [16usize, 4096, 1 << 20, SEGMENT_SIZE, 4 * SEGMENT_SIZE] {
            let h = huge::alloc_huge(5 << 20, align).expect("a huge mapping");
            assert_eq!(h.start as usize % align, 0, "align {align}");
            assert_eq!(segment_of(h.start), h.seg);
            assert!(registry::contains(h.seg));
            assert!(h.usable >= 5 << 20);
            // SAFETY: the mapping's header is mapped; nothing uses the object.
            unsafe {
                assert_eq!(desc_of(h.start), desc_at(h.seg, 0));
                huge::free_huge(h.seg);
            }
        }
    }

    #[test]
    fn a_freed_huge_mapping_is_reused_dirty_then_returned_by_the_decay() {
        let h = huge::alloc_huge(6 << 20, 16).expect("a huge mapping");
        let (p, usable) = (h.start, h.usable);
        // SAFETY: nothing uses the object.
        unsafe { huge::free_huge(h.seg) };
        let again = huge::alloc_huge(6 << 20, 16).expect("a huge mapping");
        assert_eq!(
            again.start, p,
            "the cached mapping serves the same size again"
        );
        assert!(!again.fresh, "reused memory is not known to be zero");
        assert_eq!(again.usable, usable);
        // SAFETY: as above.
        unsafe { huge::free_huge(again.seg) };
        huge::cache_decay(true);
        assert!(!registry::contains(segment_of(p)));
    }

    #[test]
    fn a_cached_huge_mapping_serves_a_smaller_request_and_is_cut_when_much_larger() {
        // Pareto-sized programs free and allocate huge blocks of every size: a mapping that could
        // serve only requests within a quarter of its size made most of them map afresh and
        // fault every page in again (`pareto`: 32 000 page faults, 20 000 now).
        let h = huge::alloc_huge(7 << 20, 16).expect("a huge mapping");
        let p = h.start;
        // SAFETY: the header is mapped; nothing uses the object.
        let map_len = unsafe { (*h.seg).map_len };
        // SAFETY: as above.
        unsafe { huge::free_huge(h.seg) };
        let smaller = huge::alloc_huge(4 << 20, 16).expect("a huge mapping");
        assert_eq!(
            smaller.start, p,
            "the cached mapping serves a smaller request"
        );
        assert!(!smaller.fresh);
        assert_eq!(smaller.usable, 4 << 20, "usable: what was asked, in pages");
        // SAFETY: as above.
        unsafe {
            assert_eq!(
                (*smaller.seg).map_len,
                map_len,
                "not cut: less than twice the request"
            );
            huge::free_huge(smaller.seg);
        }
        let much_smaller = huge::alloc_huge(3 << 20, 16).expect("a huge mapping");
        assert_eq!(much_smaller.start, p);
        // SAFETY: as above.
        unsafe {
            let cut = (*much_smaller.seg).map_len;
            assert!(
                cut < map_len && cut >= much_smaller.usable,
                "cut to the request: {cut}"
            );
            assert!(registry::contains(much_smaller.seg));
            huge::free_huge(much_smaller.seg);
        }
        huge::cache_decay(true);
    }

    #[test]
    fn no_system_call_runs_under_the_back_end_lock() {
        // Debug builds assert it in every mmap, munmap and madvise (`sync::syscalls_allowed`):
        // take enough spans for new segments, free them, and purge and unmap them all.
        let spans: Vec<_> = (0..130)
            .map(|_| span::alloc_span(60, 1).expect("a span"))
            .collect();
        for s in &spans {
            // SAFETY: each span is ours and unused.
            unsafe { span::free_span(s.seg, s.idx, 60) };
        }
        decay::tick(true);
        let h = huge::alloc_huge(3 << 20, 16).expect("a huge mapping");
        // SAFETY: nothing uses the object.
        unsafe { huge::free_huge(h.seg) };
        huge::cache_decay(true);
        let guard = span::BACKEND.lock();
        // The check exists in debug builds only (release builds always allow).
        #[cfg(debug_assertions)]
        assert!(!crate::sync::syscalls_allowed(), "the check sees the lock");
        drop(guard);
        assert!(crate::sync::syscalls_allowed());
    }

    #[test]
    fn foreign_pointers_are_not_ours() {
        let x = 5u64;
        assert!(!registry::contains(segment_of(
            &x as *const u64 as *const u8
        )));
    }
}

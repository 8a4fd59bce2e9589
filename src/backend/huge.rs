//! Huge objects: bigger than `LARGE_MAX` (or aligned beyond it), each in a mapping of its own that
//! starts with a segment header, so that the same mask finds its descriptor (`descs[0]`).
//!
//! Freed huge mappings stay in a small cache (16 MiB at most, for at most the decay time) so that
//! a program that frees and allocates multi-MiB objects in a loop does not pay an mmap, a munmap
//! and a page fault per page each time; a cached mapping serves any request it can hold, its
//! tail cut off when it is much larger. The cache has its own lock, taken with no other held;
//! no system call runs under it.

use super::decay::DECAY_MS;
use super::registry;
use super::segment::{Segment, SEGMENT_SIZE};
use crate::platform::os;
use crate::sync::{AtomicUsize, Ordering, SpinLock};

/// Secure build: the largest request (size or alignment) served, 1 TiB (`frontend::large` refuses
/// anything bigger). No machine this runs on has that much memory, and with `MAP_NORESERVE` the
/// kernel maps far more than it could ever back, so a size computed from an overflowed or
/// attacker-chosen length (`malloc(n * m)`, `SIZE_MAX / 2`) would otherwise succeed and be
/// written into later. Also the bound of the walk of `backend::in_our_mapping`.
#[cfg(feature = "secure")]
pub const SECURE_MAX_REQUEST: usize = 1 << 40;

/// Granularity of huge mappings and of their usable size: the OS page.
pub fn granule() -> usize {
    os::page_size()
}

/// Bytes in huge mappings handed out.
static HUGE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A huge mapping handed out.
pub struct Huge {
    /// Its header (descriptor `descs[0]` describes the object).
    pub seg: *mut Segment,
    /// The object.
    pub start: *mut u8,
    /// Usable bytes from `start`: what was asked, rounded to whole OS pages (even in a larger
    /// cached mapping, so that charge and uncharge agree).
    pub usable: usize,
    /// The object's pages read as zero (a fresh mapping).
    pub fresh: bool,
}

/// Maps a huge object of `size` bytes aligned to `align` (a power of two). None when the OS
/// refuses or the size overflows.
pub fn alloc_huge(size: usize, align: usize) -> Option<Huge> {
    let page = granule();
    let hdr = core::mem::size_of::<Segment>().div_ceil(page) * page;
    // Secure build: an inaccessible page between the header and the object, and one after it.
    #[cfg(feature = "secure")]
    let hdr = hdr + page;
    let (offset, map_align) = if align < SEGMENT_SIZE {
        ((hdr + align - 1) & !(align - 1), SEGMENT_SIZE)
    } else {
        (SEGMENT_SIZE, align)
    };
    let len = size
        .checked_add(offset + page - 1)
        .map(|l| l & !(page - 1))?;
    let usable = len - offset;
    #[cfg(feature = "secure")]
    let len = len.checked_add(page)?;
    // A mapping freed a moment ago serves first (no system call, no page faults); then, for
    // align >= SEGMENT_SIZE the object must sit at base + SEGMENT_SIZE, aligned: map aligned to
    // `align` one segment early.
    let (base, map_len, fresh) = if align < SEGMENT_SIZE {
        match cache_take(len) {
            Some((base, cached_len)) => (base, cached_len, false),
            None => (os::map_aligned(len, map_align), len, true),
        }
    } else {
        let total = len.checked_add(align)?;
        let raw = os::map_aligned(total, SEGMENT_SIZE);
        if raw.is_null() {
            return None;
        }
        // First address ≥ raw whose + SEGMENT_SIZE is align-aligned.
        let obj = (raw as usize + SEGMENT_SIZE + align - 1) & !(align - 1);
        let base = (obj - SEGMENT_SIZE) as *mut u8;
        let head = base as usize - raw as usize;
        let tail = total - head - len;
        // SAFETY: the unused head and tail are inside the mapping we just made, and unused.
        unsafe {
            if head > 0 {
                os::unmap(raw, head);
            }
            if tail > 0 {
                os::unmap(base.add(len), tail);
            }
        }
        (base, len, true)
    };
    if base.is_null() {
        return None;
    }
    let seg = base as *mut Segment;
    let start = (base as usize + offset) as *mut u8;
    #[cfg(feature = "secure")]
    // SAFETY: the mapping is ours alone (fresh, or taken from the cache); its guards lie inside
    // it (offset >= one page past the header, and len has a page after the object).
    unsafe {
        let guards = [start.sub(page), start.add(usable)];
        if !os::protect(guards[0], page, true) || !os::protect(guards[1], page, true) {
            // munmap takes the pages whatever their protection: the mapping is given back.
            if !fresh {
                registry::set(seg, false);
            }
            os::unmap(base, map_len);
            return None;
        }
        (*seg).guards = guards.map(|g| g as usize);
        os::report_guard_faults(super::in_our_mapping);
    }
    // SAFETY: the mapping is fresh and zeroed, or a cached one nobody else refers to; we own it.
    unsafe {
        (*seg).map_base = base;
        (*seg).map_len = map_len;
    }
    HUGE_BYTES.fetch_add(map_len, Ordering::Relaxed);
    if fresh {
        registry::set(seg, true);
    }
    Some(Huge {
        seg,
        start,
        usable,
        fresh,
    })
}

/// Frees a huge mapping: to the huge cache (for reuse within the decay time) or back to the OS.
///
/// # Safety
/// `seg` heads a huge mapping from [`alloc_huge`] whose object is no longer used; the caller
/// has marked its descriptor free.
pub unsafe fn free_huge(seg: *mut Segment) {
    // SAFETY: seg is a mapped huge header (the caller's contract).
    let (base, len) = unsafe { ((*seg).map_base, (*seg).map_len) };
    HUGE_BYTES.fetch_sub(len, Ordering::Relaxed);
    cache_decay(false);
    // Secure build: the guards are lifted before the mapping may serve another size; if the
    // kernel refuses, the mapping is unmapped instead of cached.
    #[cfg(feature = "secure")]
    // SAFETY: the guards are pages of this mapping, which nobody uses any more.
    let cacheable = unsafe {
        let page = granule();
        let [g0, g1] = (*seg).guards.map(|g| g as *mut u8);
        os::protect(g0, page, false) && os::protect(g1, page, false)
    };
    #[cfg(not(feature = "secure"))]
    let cacheable = true;
    if !cacheable || !cache_put(base, len) {
        registry::set(seg, false);
        // SAFETY: the mapping is ours and nothing refers to it any more.
        unsafe { os::unmap(base, len) };
    }
}

/// Bytes of huge mappings handed out, and bytes kept in the huge cache.
pub fn figures() -> (usize, usize) {
    (
        HUGE_BYTES.load(Ordering::Relaxed),
        HUGE_CACHED.load(Ordering::Relaxed),
    )
}

/// Takes the huge-cache lock (fork prepare).
pub fn lock_for_fork() {
    HUGE_CACHE.lock_for_fork();
}

/// Releases the huge-cache lock (fork parent and child).
pub fn unlock_after_fork() {
    HUGE_CACHE.force_unlock();
}

// The huge cache: recently freed huge mappings, kept mapped (and dirty) for at most the decay
// time.

const HUGE_CACHE_SLOTS: usize = 16;
/// At most this many bytes stay cached; a larger mapping is unmapped at once.
const HUGE_CACHE_BYTES: usize = 16 << 20;

#[derive(Clone, Copy)]
struct CachedMapping {
    base: usize,
    len: usize,
    freed_ms: u64,
}

static HUGE_CACHE: SpinLock<[CachedMapping; HUGE_CACHE_SLOTS]> = SpinLock::new_no_syscalls(
    [CachedMapping {
        base: 0,
        len: 0,
        freed_ms: 0,
    }; HUGE_CACHE_SLOTS],
);
/// Bytes in the huge cache, for `heap_stats().cached`.
static HUGE_CACHED: AtomicUsize = AtomicUsize::new(0);

/// Keeps a freed huge mapping; false when it does not fit (the caller unmaps it).
fn cache_put(base: *mut u8, len: usize) -> bool {
    if DECAY_MS.load(Ordering::Relaxed) == 0
        || HUGE_CACHED.load(Ordering::Relaxed) + len > HUGE_CACHE_BYTES
    {
        return false;
    }
    let now = os::now_ms();
    let mut slots = HUGE_CACHE.lock();
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
    drop(slots);
    kept
}

/// The smallest cached mapping of at least `len` bytes (whole pages), cut down to `len` when it
/// is more than twice as long (its tail unmapped); (base, its length). The pages kept are
/// already faulted in, which a fresh mapping's would be again, one by one; a mapping kept whole
/// keeps its length for a larger request later (and at most as many bytes again as the block's
/// committed, beyond its end, until it is freed). Serving only requests within a quarter of the
/// mapping's length, the cache missed most of `pareto`'s (sizes spread over 2–4 MiB): 55 `mmap`
/// and 76 `munmap` calls and 32 000 page faults, 42, 38 and 20 000 this way.
fn cache_take(len: usize) -> Option<(*mut u8, usize)> {
    if HUGE_CACHED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut slots = HUGE_CACHE.lock();
    let best = slots
        .iter_mut()
        .filter(|m| m.base != 0 && m.len >= len)
        .min_by_key(|m| m.len);
    let found = best.map(|m| {
        let got = (m.base as *mut u8, m.len);
        HUGE_CACHED.fetch_sub(m.len, Ordering::Relaxed);
        m.base = 0;
        got
    });
    drop(slots);
    let (base, cached) = found?;
    if cached - len <= len {
        return Some((base, cached));
    }
    // SAFETY: the tail lies in the mapping, which left the cache under its lock: it is ours
    // alone, and nothing lies in it (its header is in the head, which we keep).
    unsafe { os::unmap(base.add(len), cached - len) };
    Some((base, len))
}

/// Unmaps cached huge mappings older than the decay time (all of them when `force`).
pub fn cache_decay(force: bool) {
    if HUGE_CACHED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let now = os::now_ms();
    let decay = DECAY_MS.load(Ordering::Relaxed);
    let mut expired = [(0usize, 0usize); HUGE_CACHE_SLOTS];
    let mut n = 0;
    let mut slots = HUGE_CACHE.lock();
    for m in slots.iter_mut() {
        // `expired` has a slot per cache slot: `get_mut` always finds one (no panic path).
        if m.base != 0 && (force || now >= m.freed_ms + decay) {
            let Some(e) = expired.get_mut(n) else { break };
            *e = (m.base, m.len);
            n += 1;
            HUGE_CACHED.fetch_sub(m.len, Ordering::Relaxed);
            m.base = 0;
        }
    }
    drop(slots);
    for &(base, len) in expired.iter().take(n) {
        registry::set(base as *mut Segment, false);
        // SAFETY: the mapping left the cache under its lock: nobody else refers to it.
        unsafe { os::unmap(base as *mut u8, len) };
    }
}

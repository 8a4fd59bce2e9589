//! Secure build: freed large blocks wait in a quarantine, poisoned, their guards up, before
//! they go back to the back end (issue 11).
//!
//! ```text
//! free_large  ─► put(s): poison words written into the block (its first and last 64 bytes, the
//!                first word of each OS page); kind = QUARANTINED; the oldest entries out while
//!                full (poison checked, the span opened and given back, after the lock)
//! alloc_large ─► take(pages, usable, align): an entry of as many pages whose block start suits
//!                the alignment, with AGE younger ones behind it, one of the same size first;
//!                poison checked; the block's pages fitted to the new size (none for the same
//!                size, else one mprotect), what is left before and after it its guards
//! maintenance ─► expire: entries older than the decay time out (poison checked; all at `trim`)
//! ```
//!
//! Three things come of it. A stale pointer to a waiting block frees nothing: its descriptor is
//! not a live block, so `free` refuses it (a double free of a large block is caught while the
//! span waits, from any thread, instead of freeing whatever the span became: a slab of another
//! thread, say). A write after free into a waiting block that touches a poisoned word is caught
//! when the block leaves the quarantine, reused or given back. And a large allocation that fits
//! a span freed before takes it with no `mprotect` (the same size) or one, where setting and
//! lifting a fresh block's two guards costs four.
//!
//! The block's pages stay open while it waits. They used to close (a write after free faulted at
//! once), which cost two `mprotect` calls per large block, each a TLB flush on every core the
//! process runs on and a VMA split: the secure library took 7.6 times the fast one's time on
//! `randsize` with one thread and 15 times with two (docs/SECURE.md). The quarantine holds at
//! most [`SLOTS`] blocks and [`BYTES`] bytes; a larger block skips it. Sized on `mstress` (2
//! threads, 14 483 large blocks, `strace -c -f`, before the blocks' pages were closed): 16 slots
//! and 8 MiB made 41 724 `mprotect` calls, 128 and 16 MiB 18 651 (peak RSS 72 → 76–81 MiB), 256
//! and 32 MiB 6 233 (88 MiB).

use super::large::{lift_span, span_of};
use crate::backend::decay::DECAY_MS;
use crate::backend::segment::{segment_of, PAGE_SIZE};
use crate::objects::slab::{free_slab_span, Slab, KIND_LARGE, KIND_QUARANTINED};
use crate::platform::os;
use crate::sync::{Ordering, SpinLock};
use core::ptr::null_mut;

/// Blocks the quarantine holds at most.
const SLOTS: usize = 128;
/// Bytes of spans it holds at most (a span larger than this skips it).
const BYTES: usize = 16 << 20;
/// A waiting block is handed out again only once this many blocks were quarantined after it:
/// a double free within the last `AGE` large frees is always caught.
const AGE: u64 = 8;

#[derive(Clone, Copy)]
struct Entry {
    /// The descriptor (null: a free slot).
    s: *mut Slab,
    /// Its place in the order of `put`s.
    seq: u64,
    freed_ms: u64,
    /// The descriptor's figures `take` needs, kept here so that its search reads no descriptor:
    /// the block's first byte, the bytes from it to the span's end, its usable bytes and the
    /// span's pages.
    start: usize,
    room: u32,
    usable: u32,
    npages: u32,
}

const EMPTY: Entry = Entry {
    s: null_mut(),
    seq: 0,
    freed_ms: 0,
    start: 0,
    room: 0,
    usable: 0,
    npages: 0,
};

struct Ring {
    e: [Entry; SLOTS],
    /// `put`s so far.
    seq: u64,
    bytes: usize,
}

// SAFETY: the descriptors are reached only under the lock, and belong to the quarantine there.
unsafe impl Send for Ring {}

static RING: SpinLock<Ring> = SpinLock::new(Ring {
    e: [EMPTY; SLOTS],
    seq: 0,
    bytes: 0,
});

/// Bytes of a span.
///
/// # Safety
/// `s` is a large descriptor.
unsafe fn span_bytes(s: *const Slab) -> usize {
    // SAFETY: per the contract.
    unsafe { (*s).npages as usize * PAGE_SIZE }
}

/// Quarantines `s`, a large block nobody uses any more (its charge and cache reference gone),
/// guards up; the oldest blocks leave to make room.
///
/// # Safety
/// `s` describes a large block of a segment of ours that nobody uses; its guards are set.
pub(super) unsafe fn put(s: *mut Slab) {
    // SAFETY: s is ours alone (the contract) until it is in the ring, then the ring's.
    unsafe {
        let (span_start, bytes) = span_of(s);
        // A span too large to wait goes back now.
        if bytes > BYTES {
            release(s);
            return;
        }
        poison(s);
        (*s).kind = KIND_QUARANTINED;
        let start = (*s).start as usize;
        let entry = Entry {
            s,
            seq: 0,
            freed_ms: os::now_ms(),
            start,
            room: (span_start as usize + bytes - start) as u32,
            usable: (*s).block_size,
            npages: (*s).npages,
        };
        let mut out = [null_mut(); SLOTS];
        let mut n = 0;
        let mut r = RING.lock();
        let slot = loop {
            let free = r.e.iter().position(|x| x.s.is_null());
            if let Some(i) = free {
                if r.bytes + bytes <= BYTES {
                    break i;
                }
            }
            // The oldest waiting block leaves (the ring is not empty: a free slot with too many
            // bytes means some are waiting).
            // At most SLOTS leave, one per slot of `out` (`get_mut`: no panic path).
            let oldest = (r.e.iter().enumerate())
                .filter(|(_, x)| !x.s.is_null())
                .min_by_key(|(_, x)| x.seq)
                .map(|(i, _)| i);
            let (Some(e), Some(o)) = (oldest.and_then(|i| r.e.get_mut(i)), out.get_mut(n)) else {
                break free.unwrap_or(0);
            };
            let x = core::mem::replace(&mut e.s, null_mut());
            *o = x;
            n += 1;
            r.bytes -= span_bytes(x);
        };
        r.seq += 1;
        let seq = r.seq;
        if let Some(e) = r.e.get_mut(slot) {
            *e = Entry { seq, ..entry };
        }
        r.bytes += bytes;
        drop(r);
        for &x in out.iter().take(n) {
            leave(x);
        }
    }
}

/// A waiting span of `npages` pages that can hold a block of `usable` bytes aligned to `align`
/// (a power of two) at its block's start (aligned so, with at least one OS page of the span
/// after the new end), with at least [`AGE`] younger ones behind it, the oldest such. Its
/// descriptor is the caller's (still `KIND_QUARANTINED`, its poison checked, `block_size` the old
/// block's: those pages are open, the rest of the span closed). Null when there is none.
pub(super) fn take(npages: usize, usable: usize, align: usize) -> *mut Slab {
    let page = os::page_size();
    let mut r = RING.lock();
    let seq = r.seq;
    // The oldest fitting one of the same size (its pages need no `mprotect`), else the oldest
    // fitting one: the least key, a resized block's with its top bit set (`seq` never reaches
    // it). A plain loop over the entries' own figures: this search runs for every large
    // allocation.
    // `align` is a power of two: a mask, not a division per entry.
    let misaligned = align.wrapping_sub(1);
    let mut found = None;
    let mut best = u64::MAX;
    for (i, x) in r.e.iter().enumerate() {
        let fits = !x.s.is_null()
            && x.npages as usize == npages
            && x.seq + AGE <= seq
            && x.start & misaligned == 0
            && usable + page <= x.room as usize;
        let key = x.seq | u64::from(x.usable as usize != usable) << 63;
        if fits && key < best {
            best = key;
            found = Some(i);
        }
    }
    let s = match found.and_then(|i| r.e.get_mut(i)) {
        Some(e) => {
            let s = core::mem::replace(&mut e.s, null_mut());
            // SAFETY: as above.
            r.bytes -= unsafe { span_bytes(s) };
            s
        }
        None => null_mut(),
    };
    drop(r);
    if !s.is_null() {
        // SAFETY: s left the ring under its lock: it is ours alone, its block poisoned.
        unsafe { check(s) };
    }
    s
}

/// Releases the blocks that waited longer than the decay time (all of them when `force`).
pub(super) fn expire(force: bool) {
    let now = os::now_ms();
    let decay = DECAY_MS.load(Ordering::Relaxed);
    let mut out = [null_mut(); SLOTS];
    let mut guard = RING.lock();
    let r = &mut *guard;
    // `out` has a slot per ring slot (zipped: no panic path).
    for (e, o) in r.e.iter_mut().zip(out.iter_mut()) {
        let x = *e;
        if !x.s.is_null() && (force || now >= x.freed_ms + decay) {
            *o = x.s;
            // SAFETY: the descriptor is the ring's, read under its lock.
            r.bytes -= unsafe { span_bytes(x.s) };
            e.s = null_mut();
        }
    }
    drop(guard);
    for &x in out.iter().filter(|x| !x.is_null()) {
        // SAFETY: x left the ring under its lock: it is ours alone.
        unsafe { leave(x) };
    }
}

/// Checks waiting block `s`'s poison as it leaves the quarantine for good, then releases it.
///
/// # Safety
/// `s` left the ring: it is the caller's alone, its block poisoned (`put`).
unsafe fn leave(s: *mut Slab) {
    // SAFETY: per the contract.
    unsafe {
        check(s);
        release(s);
    }
}

/// Bytes at each end of a waiting block that carry the poison, a word every 8 bytes; between
/// them, the first word of each OS page does.
const EDGE: usize = 64;

/// Calls `f` with each poisoned word of block `start..+usable` (whole OS pages, at least two
/// [`EDGE`]s) and the value it holds while the block waits: a 32-byte write after free at the
/// block's start or end, or one that touches any page's first word, changes one of them.
fn poisoned_words(start: *mut u8, usable: usize, mut f: impl FnMut(*mut u64, u64)) {
    // SAFETY: a large block's start lies in a segment of ours, whose header is mapped.
    let key = unsafe { (*segment_of(start)).canary_key };
    let mut word = |off: usize| {
        let w = start.wrapping_add(off).cast::<u64>();
        f(w, (key ^ w as u64).rotate_left(29) | 1);
    };
    for off in (0..EDGE).step_by(8) {
        word(off);
        word(usable - EDGE + off);
    }
    // A loop, not `step_by` (whose zero-step check is a panic path).
    let page = os::page_size();
    let mut off = page;
    while off < usable - EDGE {
        word(off);
        off += page;
    }
}

/// Poisons the block of `s` as it starts to wait (its pages stay open: closing and opening them
/// cost an `mprotect` each, with a TLB flush on every core the process runs on, and the VMAs
/// they split).
///
/// # Safety
/// `s` describes a large block nobody uses; its pages are accessible.
unsafe fn poison(s: *mut Slab) {
    // SAFETY: per the contract, every poisoned word lies in the block (`poisoned_words`).
    unsafe { poisoned_words((*s).start, (*s).block_size as usize, |w, v| w.write(v)) }
}

/// Aborts with one line unless the block of `s`, leaving the quarantine, still holds its
/// poison (a write after free changed it).
///
/// # Safety
/// `s` left the ring: it is the caller's alone, its block poisoned (`put`).
unsafe fn check(s: *mut Slab) {
    // SAFETY: per the contract, as `poison`.
    unsafe {
        let start = (*s).start;
        poisoned_words(start, (*s).block_size as usize, |w, v| {
            if w.read() != v {
                written_after_free(start);
            }
        })
    }
}

#[cold]
#[inline(never)]
fn written_after_free(b: *mut u8) -> ! {
    os::fatal_at(
        b"malloc(): freed large block",
        b as usize,
        b" was written after free (its poison changed while it waited in the quarantine)",
    )
}

/// Lifts the guards of `s` and gives its span back; a span whose guards stay up is never handed
/// out again (it stays taken in the back end, its descriptor describing nothing).
///
/// # Safety
/// `s` describes a large (or quarantined) block nobody uses, guards set.
pub(super) unsafe fn release(s: *mut Slab) {
    // SAFETY: per the contract.
    unsafe {
        (*s).kind = KIND_LARGE;
        if lift_span(s) {
            free_slab_span(s);
        } else {
            (*s).mark_free();
        }
    }
}

/// Takes the quarantine's lock (fork prepare). It is a leaf: nothing else is locked under it.
pub(super) fn lock_for_fork() {
    RING.lock_for_fork();
}

/// Releases what [`lock_for_fork`] took (fork parent and child).
pub(super) fn unlock_after_fork() {
    RING.force_unlock();
}

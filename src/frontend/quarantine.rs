//! Secure build: freed large blocks wait in a quarantine, their spans inaccessible all through,
//! before they go back to the back end (issue 11).
//!
//! ```text
//! free_large  ─► put(s): the block's pages closed (its guards already are: one mprotect, so
//!                the whole span faults); kind = QUARANTINED; the oldest entries out while full
//!                (the span opened again and given back to the back end, after the lock)
//! alloc_large ─► take(pages, usable, align): an entry of as many pages whose block start suits
//!                the alignment, with AGE younger ones behind it; the new block's pages opened
//!                (one mprotect), what is left before and after it its guards
//! maintenance ─► expire: entries older than the decay time out (all of them at `trim`)
//! ```
//!
//! Three things come of it. A stale pointer to a waiting block frees nothing: its descriptor is
//! not a live block, so `free` refuses it (a double free of a large block is caught while the
//! span waits, from any thread, instead of freeing whatever the span became: a slab of another
//! thread, say). A write after free into a waiting block faults at once, and the SIGSEGV
//! reporter names it. And a large allocation that fits a span freed before takes it with one
//! `mprotect` (its pages opened), where setting and lifting a fresh block's two guards costs
//! four. The quarantine holds at most [`SLOTS`] blocks and [`BYTES`] bytes; a larger block skips
//! it. Sized on `mstress` (2 threads, 14 483 large blocks, `strace -c -f`, before the blocks'
//! pages were closed too): 16 slots and 8 MiB made 41 724 `mprotect` calls, 128 and 16 MiB
//! 18 651 (peak RSS 72 → 76–81 MiB), 256 and 32 MiB 6 233 (88 MiB).

use super::large::{lift_span, span_of};
use crate::backend::decay::DECAY_MS;
use crate::backend::segment::PAGE_SIZE;
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
}

struct Ring {
    e: [Entry; SLOTS],
    /// `put`s so far.
    seq: u64,
    bytes: usize,
}

// SAFETY: the descriptors are reached only under the lock, and belong to the quarantine there.
unsafe impl Send for Ring {}

static RING: SpinLock<Ring> = SpinLock::new(Ring {
    e: [Entry {
        s: null_mut(),
        seq: 0,
        freed_ms: 0,
    }; SLOTS],
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
        let bytes = span_bytes(s);
        // The block's pages close too, so that the whole span is inaccessible while it waits:
        // a write (or read) after free of the block faults at once. A span that cannot wait
        // (too large, or the kernel refused) goes back now.
        if bytes > BYTES || !os::protect((*s).start, (*s).block_size as usize, true) {
            release(s);
            return;
        }
        (*s).kind = KIND_QUARANTINED;
        let now = os::now_ms();
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
            *e = Entry {
                s,
                seq,
                freed_ms: now,
            };
        }
        r.bytes += bytes;
        drop(r);
        for &x in out.iter().take(n) {
            release(x);
        }
    }
}

/// A waiting span of `npages` pages that can hold a block of `usable` bytes aligned to `align`
/// at its block's start (aligned so, with at least one OS page of the span after the new end),
/// with at least [`AGE`] younger ones behind it, the oldest such. Its descriptor is the caller's
/// (still `KIND_QUARANTINED`, the whole span inaccessible, `block_size` the old block's). Null
/// when there is none.
pub(super) fn take(npages: usize, usable: usize, align: usize) -> *mut Slab {
    let page = os::page_size();
    let mut r = RING.lock();
    let seq = r.seq;
    let fits = |x: Entry| {
        if x.s.is_null() {
            return false;
        }
        // SAFETY: the descriptors in the ring are the ring's, read under its lock.
        unsafe {
            let (span_start, span_len) = span_of(x.s);
            let start = (*x.s).start as usize;
            x.seq + AGE <= seq
                && (*x.s).npages as usize == npages
                && start.is_multiple_of(align)
                && start + usable + page <= span_start as usize + span_len
        }
    };
    // The oldest fitting one.
    let found = (r.e.iter().enumerate())
        .filter(|&(_, &x)| fits(x))
        .min_by_key(|(_, x)| x.seq)
        .map(|(i, _)| i);
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
        unsafe { release(x) };
    }
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

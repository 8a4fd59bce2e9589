//! Type-stable pools for the allocator's own metadata (scopes, caches, thread heaps, tables).
//!
//! Metadata never comes from the global allocator (that would recurse, and would charge the
//! user's scopes): it lives in chunks mapped from the OS. A freed item goes back on the pool's
//! free list and its memory stays a valid `T` forever (chunks are never unmapped), the userspace
//! form of `SLAB_TYPESAFE_BY_RCU`: a thread that raced with the free may still lock the item and
//! must then check an identity field (see `Cache::origin_id`) before trusting it.
//!
//! Who touches what: `alloc`/`free` under the pool lock; `for_each` walks the append-only chunk
//! list without the lock; an item's `live` flag is atomic.

use crate::os;
use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, Ordering, SpinLock};
use core::cell::UnsafeCell;
use core::mem::size_of;

/// Bytes mapped per chunk of a pool: large enough that chunk allocation is rare.
const CHUNK_BYTES: usize = 1 << 20;

#[repr(C)]
struct Slot<T> {
    value: UnsafeCell<T>,
    next_free: UnsafeCell<*mut Slot<T>>,
    live: AtomicBool,
}

#[repr(C)]
struct Chunk {
    next: *mut Chunk,
    count: usize,
}

/// A pool of `T`s. `T` must be valid when all-zero (atomics, raw pointers, integers, bools): fresh
/// items come zeroed from the OS.
pub struct Pool<T> {
    lock: SpinLock,
    free: UnsafeCell<*mut Slot<T>>,
    chunks: AtomicPtr<Chunk>,
    in_use: AtomicUsize,
}

// SAFETY: all mutable state is behind the pool lock or atomic; items are handed out as raw
// pointers whose use is governed by each item's own protocol.
unsafe impl<T> Sync for Pool<T> {}

impl<T> Pool<T> {
    /// An empty pool; maps nothing until the first `alloc`.
    pub const fn new() -> Self {
        Pool {
            lock: SpinLock::new(),
            free: UnsafeCell::new(core::ptr::null_mut()),
            chunks: AtomicPtr::new(core::ptr::null_mut()),
            in_use: AtomicUsize::new(0),
        }
    }

    fn slots_per_chunk() -> usize {
        (CHUNK_BYTES - size_of::<Chunk>()) / size_of::<Slot<T>>()
    }

    fn first_slot(chunk: *mut Chunk) -> *mut Slot<T> {
        let align = core::mem::align_of::<Slot<T>>().max(16);
        ((chunk as usize + size_of::<Chunk>() + align - 1) & !(align - 1)) as *mut Slot<T>
    }

    /// An item: either all-zero (fresh) or a previously freed `T` with its old field values.
    /// Null when the OS refuses memory.
    pub fn alloc(&self) -> *mut T {
        self.lock.lock();
        // SAFETY: the free list is only touched under the pool lock, which we hold.
        let mut slot = unsafe { *self.free.get() };
        if slot.is_null() {
            slot = self.grow();
        }
        if !slot.is_null() {
            // SAFETY: slot is a valid free slot of this pool; we hold the lock.
            unsafe {
                *self.free.get() = *(*slot).next_free.get();
                (*slot).live.store(true, Ordering::Release);
            }
            self.in_use.fetch_add(1, Ordering::Relaxed);
        }
        self.lock.unlock();
        if slot.is_null() {
            return core::ptr::null_mut();
        }
        // SAFETY: slot is valid; `value` is its first field.
        unsafe { (*slot).value.get() }
    }

    /// Maps a new chunk and threads its slots onto the free list; called with the lock held.
    fn grow(&self) -> *mut Slot<T> {
        let chunk = os::map_aligned(CHUNK_BYTES, 4096) as *mut Chunk;
        if chunk.is_null() {
            return core::ptr::null_mut();
        }
        let n = Self::slots_per_chunk() - 1;
        let first = Self::first_slot(chunk);
        // SAFETY: the chunk is fresh, zeroed and ours; n slots fit after its header (one slot is
        // kept in reserve for the alignment of the first).
        unsafe {
            (*chunk).count = n;
            for i in 0..n {
                let s = first.add(i);
                *(*s).next_free.get() = if i + 1 < n {
                    first.add(i + 1)
                } else {
                    core::ptr::null_mut()
                };
            }
            let mut head = self.chunks.load(Ordering::Relaxed);
            loop {
                (*chunk).next = head;
                match self.chunks.compare_exchange_weak(
                    head,
                    chunk,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(h) => head = h,
                }
            }
        }
        first
    }

    /// Returns an item to the pool. Its memory stays a valid `T`.
    ///
    /// # Safety
    /// `item` came from `alloc` of this pool and is not freed twice.
    pub unsafe fn free(&self, item: *mut T) {
        let slot = item as *mut Slot<T>;
        self.lock.lock();
        // SAFETY: `value` is the first field, so the item pointer is the slot pointer; the free
        // list is ours under the lock.
        unsafe {
            (*slot).live.store(false, Ordering::Release);
            *(*slot).next_free.get() = *self.free.get();
            *self.free.get() = slot;
        }
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        self.lock.unlock();
    }

    /// Items currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Calls `f(item, live)` for every item the pool ever mapped. Items may be allocated or freed
    /// concurrently; `live` is a snapshot.
    pub fn for_each(&self, mut f: impl FnMut(*mut T, bool)) {
        let mut chunk = self.chunks.load(Ordering::Acquire);
        while !chunk.is_null() {
            let first = Self::first_slot(chunk);
            // SAFETY: chunks are never unmapped; count and next were written before publication.
            unsafe {
                for i in 0..(*chunk).count {
                    let s = first.add(i);
                    f((*s).value.get(), (*s).live.load(Ordering::Acquire));
                }
                chunk = (*chunk).next;
            }
        }
    }

    /// Gives back to the OS every page of the pool that holds only free items (they read as zero
    /// afterwards, which is a valid free item), then rebuilds the free list, whose links lived in
    /// those pages. Only for pools whose freed items nobody reads (not caches, whose freed items
    /// may still be locked by a racing thread).
    pub fn trim(&self) {
        const OS_PAGE: usize = 4096;
        let size = size_of::<Slot<T>>();
        self.lock.lock();
        let mut head: *mut Slot<T> = core::ptr::null_mut();
        let mut chunk = self.chunks.load(Ordering::Acquire);
        while !chunk.is_null() {
            let first = Self::first_slot(chunk);
            // SAFETY: chunks are ours and never unmapped; we hold the lock, so no slot changes
            // between free and live.
            unsafe {
                let count = (*chunk).count;
                let area_end = first as usize + count * size;
                // Page 0 holds the chunk header: never purged.
                let mut page = (chunk as usize + OS_PAGE).max(first as usize) & !(OS_PAGE - 1);
                if page < first as usize {
                    page += OS_PAGE;
                }
                while page + OS_PAGE <= area_end {
                    let lo = (page - first as usize) / size;
                    let hi = (page + OS_PAGE - 1 - first as usize) / size;
                    if (lo..=hi.min(count - 1))
                        .all(|i| !(*first.add(i)).live.load(Ordering::Relaxed))
                    {
                        os::purge(page as *mut u8, OS_PAGE);
                    }
                    page += OS_PAGE;
                }
                for i in (0..count).rev() {
                    let s = first.add(i);
                    if !(*s).live.load(Ordering::Relaxed) {
                        *(*s).next_free.get() = head;
                        head = s;
                    }
                }
                chunk = (*chunk).next;
            }
        }
        // SAFETY: we hold the lock.
        unsafe { *self.free.get() = head };
        self.lock.unlock();
    }

    /// Takes the pool lock (fork prepare).
    pub fn lock(&self) {
        self.lock.lock();
    }

    /// Releases the pool lock (fork parent / child).
    pub fn unlock(&self) {
        self.lock.force_unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct Item {
        a: usize,
        b: AtomicUsize,
    }

    #[test]
    fn items_are_reused_and_counted() {
        static POOL: Pool<Item> = Pool::new();
        let a = POOL.alloc();
        let b = POOL.alloc();
        assert!(!a.is_null() && !b.is_null() && a != b);
        assert_eq!(POOL.in_use(), 2);
        // SAFETY: a and b are live items of POOL.
        unsafe {
            (*a).a = 7;
            POOL.free(a);
            let c = POOL.alloc();
            assert_eq!(c, a, "the freed item is handed out again");
            assert_eq!((*c).a, 7, "memory is type-stable: old fields remain");
            POOL.free(b);
            POOL.free(c);
        }
        assert_eq!(POOL.in_use(), 0);
        let mut seen = 0;
        POOL.for_each(|_, live| {
            if live {
                seen += 1
            }
        });
        assert_eq!(seen, 0);
    }

    #[test]
    fn trim_keeps_live_items_and_every_free_item_reusable() {
        static POOL: Pool<Item> = Pool::new();
        let items: Vec<*mut Item> = (0..2000).map(|_| POOL.alloc()).collect();
        // SAFETY: the items are live items of POOL.
        unsafe {
            for (i, &it) in items.iter().enumerate() {
                (*it).a = i;
            }
            for &it in &items[10..1990] {
                POOL.free(it);
            }
            POOL.trim();
            for (i, &it) in items[..10].iter().chain(&items[1990..]).enumerate() {
                let want = if i < 10 { i } else { 1990 + i - 10 };
                assert_eq!((*it).a, want, "live items survive trim");
            }
            let again: Vec<*mut Item> = (0..1980).map(|_| POOL.alloc()).collect();
            let mut sorted = again.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 1980, "no item handed out twice");
            assert!(again.iter().all(|p| !items[..10].contains(p)));
            for it in again.into_iter().chain(items[..10].iter().copied()) {
                POOL.free(it);
            }
            for &it in &items[1990..] {
                POOL.free(it);
            }
        }
        assert_eq!(POOL.in_use(), 0);
    }
}

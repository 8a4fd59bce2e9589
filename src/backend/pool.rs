//! Pools for the allocator's own metadata (scopes, caches, thread heaps, tables).
//!
//! Metadata never comes from the global allocator (that would recurse, and would charge the
//! user's scopes): it lives in chunks mapped from the OS. Chunks are never unmapped, so walking
//! every item (`for_each`, for fork handlers and sweeps) is always safe.
//!
//! Each chunk keeps a bitmap of its free slots in its header page, so that free items are not
//! linked through their own memory: `trim` can give the pages of free items back to the OS (they
//! read as zero afterwards, a valid free item) without touching them again.
//!
//! Who touches what: `alloc`/`free`/`trim` under the pool lock; `for_each` walks the append-only
//! chunk list and the (atomic) bitmaps without the lock.

use crate::platform::os;
use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, RawLock};
use core::cell::UnsafeCell;
use core::mem::size_of;

/// Bytes of address space mapped for the allocator's metadata: every pool's chunks (never
/// unmapped) and the other metadata mappings that add to it (the heaps' table indexes). Pages of
/// free items that `trim` gave back stay counted: they are still mapped.
pub static METADATA_MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Bytes mapped per chunk (and its alignment, so an item finds its chunk by masking).
const CHUNK_BYTES: usize = 1 << 20;
/// The header: chunk links and the free bitmap, alone on its first OS page(s) so that `trim`
/// never purges it (the OS page size is read at run time: 4, 16 or 64 KiB).
fn header_bytes() -> usize {
    os::page_size().max(MIN_PAGE)
}
/// The smallest OS page; the `purged` bitmap has a bit per page of this size.
const MIN_PAGE: usize = 4096;
/// Bitmap words: enough for 64-byte items.
const WORDS: usize = CHUNK_BYTES / 64 / 64;

#[repr(C)]
struct Chunk {
    next: *mut Chunk,
    count: usize,
    free_count: usize,
    /// No word of `free` below this index has a free bit (`alloc` starts its search here, so a
    /// chunk with many items in use is not scanned from its start every time).
    first_free_word: usize,
    /// Bit i set = slot i is free.
    free: [AtomicU64; WORDS],
    /// Bit p set = page p of the chunk was given back by `trim` and not touched since.
    purged: [u64; CHUNK_BYTES / MIN_PAGE / 64],
}

const _: () = assert!(size_of::<Chunk>() <= MIN_PAGE);

/// A pool of `T`s. `T` must be valid when all-zero (atomics, raw pointers, integers, bools): fresh
/// and trimmed items read as zero.
pub struct Pool<T> {
    lock: RawLock,
    chunks: AtomicPtr<Chunk>,
    /// A chunk that had a free slot at the last look (under the lock).
    hint: UnsafeCell<*mut Chunk>,
    in_use: AtomicUsize,
    _t: core::marker::PhantomData<T>,
}

// SAFETY: all mutable state is behind the pool lock or atomic; items are handed out as raw
// pointers whose use is governed by each item's own protocol.
unsafe impl<T> Sync for Pool<T> {}

impl<T> Pool<T> {
    /// An empty pool; maps nothing until the first `alloc`.
    pub const fn new() -> Self {
        Pool {
            lock: RawLock::new(),
            chunks: AtomicPtr::new(core::ptr::null_mut()),
            hint: UnsafeCell::new(core::ptr::null_mut()),
            in_use: AtomicUsize::new(0),
            _t: core::marker::PhantomData,
        }
    }

    fn slot_size() -> usize {
        let align = core::mem::align_of::<T>().max(16);
        size_of::<T>().max(64).div_ceil(align) * align
    }

    fn slot(chunk: *mut Chunk, i: usize) -> *mut T {
        (chunk as usize + header_bytes() + i * Self::slot_size()) as *mut T
    }

    /// An item: either all-zero or a previously freed `T` with its old field values. Null when the
    /// OS refuses memory.
    pub fn alloc(&self) -> *mut T {
        self.lock.lock();
        // SAFETY: chunk headers are only written under the pool lock, which we hold.
        let item = unsafe {
            let mut chunk = *self.hint.get();
            if chunk.is_null() || (*chunk).free_count == 0 {
                chunk = self.chunks.load(Ordering::Relaxed);
                while !chunk.is_null() && (*chunk).free_count == 0 {
                    chunk = (*chunk).next;
                }
                if chunk.is_null() {
                    chunk = self.grow();
                }
                *self.hint.get() = chunk;
            }
            if chunk.is_null() {
                core::ptr::null_mut()
            } else {
                let mut found = core::ptr::null_mut();
                let from = (*chunk).first_free_word;
                for (w, word) in (*chunk).free.iter().enumerate().skip(from) {
                    let bits = word.load(Ordering::Relaxed);
                    if bits != 0 {
                        (*chunk).first_free_word = w;
                        let b = bits.trailing_zeros() as usize;
                        word.store(bits & !(1 << b), Ordering::Release);
                        (*chunk).free_count -= 1;
                        found = Self::slot(chunk, w * 64 + b);
                        // The slot's pages are committed again from now on.
                        let lo = (found as usize - chunk as usize) / os::page_size();
                        let hi = (found as usize + Self::slot_size() - 1 - chunk as usize)
                            / os::page_size();
                        // The chunk's pages all have a bit (no panic path: `get_mut`).
                        for p in lo..=hi {
                            if let Some(w) = (*chunk).purged.get_mut(p / 64) {
                                *w &= !(1 << (p % 64));
                            }
                        }
                        break;
                    }
                }
                found
            }
        };
        if !item.is_null() {
            self.in_use.fetch_add(1, Ordering::Relaxed);
        }
        self.lock.unlock();
        item
    }

    /// Maps a new chunk with every slot free; called with the lock held.
    fn grow(&self) -> *mut Chunk {
        let chunk = os::map_aligned(CHUNK_BYTES, CHUNK_BYTES) as *mut Chunk;
        if chunk.is_null() {
            return chunk;
        }
        METADATA_MAPPED.fetch_add(CHUNK_BYTES, Ordering::Relaxed);
        let count = ((CHUNK_BYTES - header_bytes()) / Self::slot_size()).min(WORDS * 64);
        // SAFETY: the chunk is fresh, zeroed and ours.
        unsafe {
            (*chunk).count = count;
            (*chunk).free_count = count;
            for i in 0..count {
                (*chunk).free[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
            }
            (*chunk).next = self.chunks.load(Ordering::Relaxed);
            self.chunks.store(chunk, Ordering::Release);
        }
        chunk
    }

    /// Returns an item to the pool. Its memory stays a valid `T`.
    ///
    /// # Safety
    /// `item` came from `alloc` of this pool and is not freed twice.
    pub unsafe fn free(&self, item: *mut T) {
        let chunk = (item as usize & !(CHUNK_BYTES - 1)) as *mut Chunk;
        let i = (item as usize - chunk as usize - header_bytes()) / Self::slot_size();
        self.lock.lock();
        // SAFETY: item lies in chunk (chunks are aligned); we hold the lock.
        unsafe {
            // i is a slot of the chunk, so its word exists (`get`: no panic path).
            if let Some(w) = (*chunk).free.get(i / 64) {
                w.fetch_or(1 << (i % 64), Ordering::Release);
                (*chunk).free_count += 1;
                (*chunk).first_free_word = (*chunk).first_free_word.min(i / 64);
            }
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
            // SAFETY: chunks are never unmapped; count and next were written before publication.
            unsafe {
                for i in 0..(*chunk).count {
                    let free = (*chunk).free[i / 64].load(Ordering::Acquire) & (1 << (i % 64));
                    f(Self::slot(chunk, i), free == 0);
                }
                chunk = (*chunk).next;
            }
        }
    }

    /// Gives back to the OS every page that holds only free items (they read as zero afterwards,
    /// a valid free item). Nobody may hold a pointer to a freed item.
    pub fn trim(&self) {
        let size = Self::slot_size();
        self.lock.lock();
        let mut chunk = self.chunks.load(Ordering::Acquire);
        while !chunk.is_null() {
            // SAFETY: chunks are ours; we hold the lock, so no slot changes state meanwhile.
            unsafe {
                let count = (*chunk).count;
                let first = chunk as usize + header_bytes();
                let end = first + count * size;
                let mut page = first;
                while page + os::page_size() <= end {
                    let lo = (page - first) / size;
                    let hi = ((page + os::page_size() - 1 - first) / size).min(count - 1);
                    let all_free = (lo..=hi).all(|i| {
                        (*chunk).free[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) != 0
                    });
                    let p = (page - chunk as usize) / os::page_size();
                    // A page whose madvise failed stays unmarked (committed, its free items
                    // intact): the next trim tries again.
                    if all_free
                        && (*chunk).purged[p / 64] & (1 << (p % 64)) == 0
                        && os::purge(page as *mut u8, os::page_size())
                    {
                        (*chunk).purged[p / 64] |= 1 << (p % 64);
                    }
                    page += os::page_size();
                }
                chunk = (*chunk).next;
            }
        }
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
            assert_eq!((*c).a, 7, "a reused item keeps its old fields");
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
        let items: Vec<*mut Item> = (0..30_000).map(|_| POOL.alloc()).collect();
        // SAFETY: the items are live items of POOL.
        unsafe {
            for (i, &it) in items.iter().enumerate() {
                (*it).a = i + 1;
            }
            for &it in &items[10..29_990] {
                POOL.free(it);
            }
            POOL.trim();
            for (i, &it) in items.iter().enumerate() {
                if !(10..29_990).contains(&i) {
                    assert_eq!((*it).a, i + 1, "live items survive trim");
                }
            }
            let again: Vec<*mut Item> = (0..29_980).map(|_| POOL.alloc()).collect();
            let mut sorted = again.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 29_980, "no item handed out twice");
            assert!(again.iter().all(|p| !items[..10].contains(p)));
            for it in again {
                POOL.free(it);
            }
            for &it in items[..10].iter().chain(&items[29_990..]) {
                POOL.free(it);
            }
        }
        assert_eq!(POOL.in_use(), 0);
    }
}

//! The `GlobalAlloc`: the Rust entry points, and the size, zeroing and realloc logic the C
//! entry points share.

#[cfg(not(feature = "secure"))]
use crate::frontend::alloc;
use crate::frontend::{free, large, shared, thread_heap};
#[cfg(feature = "secure")]
use crate::objects::canary;
use crate::objects::scope;
use crate::objects::size_class::{class_for, class_of, MAX_SMALL};
use crate::objects::slab::{slab_of, Slab, KIND_SMALL};
use crate::platform::valgrind;
use core::alloc::{GlobalAlloc, Layout};

/// The allocator. Install it with `#[global_allocator]`, or call it directly through
/// [`GlobalAlloc`].
///
/// ```
/// #[global_allocator]
/// static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let v: Vec<u64> = (0..1000).collect();
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ScopeAlloc;

impl ScopeAlloc {
    /// The allocator; all state is global, so this is free.
    ///
    /// ```
    /// static A: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new(); // const
    /// use std::alloc::{GlobalAlloc, Layout};
    /// let l = Layout::new::<[u64; 4]>();
    /// // SAFETY: a non-zero layout; freed with the same layout.
    /// unsafe {
    ///     let p = A.alloc(l);
    ///     assert!(!p.is_null());
    ///     A.dealloc(p, l);
    /// }
    /// ```
    pub const fn new() -> Self {
        ScopeAlloc
    }
}

#[inline(always)]
#[cfg(not(feature = "secure"))]
pub(super) fn alloc_aligned(size: usize, align: usize) -> *mut u8 {
    if align <= 8 && size <= MAX_SMALL {
        // SAFETY: class_of returns a class < NCLASSES for size <= MAX_SMALL.
        return unsafe { alloc::alloc_small(class_of(size)) };
    }
    match class_for(size, align) {
        // SAFETY: class_for returns only classes < NCLASSES.
        Some(c) => unsafe { alloc::alloc_small(c) },
        None => large::alloc_large(size, align),
    }
}

/// Secure build: a small block has room for the request and its trailer (at least
/// `canary::MIN_BLOCK` bytes: the link, the free tag and the trailer), armed before it is
/// returned (`objects::canary`).
#[inline(always)]
#[cfg(feature = "secure")]
pub(super) fn alloc_aligned(size: usize, align: usize) -> *mut u8 {
    let need = size.saturating_add(canary::TRAILER).max(canary::MIN_BLOCK);
    if align <= 8 && need <= MAX_SMALL {
        // SAFETY: class_of returns a class < NCLASSES for need <= MAX_SMALL, of at least `need`
        // bytes.
        return unsafe { super::raw::armed(class_of(need), size) };
    }
    match class_for(need, align) {
        // SAFETY: class_for returns only classes < NCLASSES, of at least `need` bytes.
        Some(c) => unsafe { super::raw::armed(c, size) },
        None => large::alloc_large(size, align),
    }
}

/// Usable size of a pointer of ours: the bytes the program may write (the secure build's small
/// blocks: exactly what was asked, read from the block's trailer, which is checked, so that
/// writing all of it never trips the canary; the scope is charged the whole block).
#[inline]
pub(super) unsafe fn usable_of(p: *const u8) -> usize {
    // SAFETY: the caller guarantees p is ours (and live: a small one is armed in the secure
    // build).
    unsafe {
        let s = slab_of(p);
        if (*s).kind == KIND_SMALL {
            #[cfg(not(feature = "secure"))]
            let usable = (*s).block_size as usize;
            #[cfg(feature = "secure")]
            let usable = canary::length(p.cast_mut(), (*s).block_size as usize);
            usable
        } else {
            large::large_usable(s)
        }
    }
}

/// The bytes a live block of ours can be resized to in place: its usable size, or, for a small
/// block of the secure build, its block less the trailer (after checking the trailer).
///
/// # Safety
/// `p` is a live object of ours.
#[inline]
unsafe fn in_place_room(p: *const u8) -> usize {
    // SAFETY: p is a live object of ours (the contract).
    unsafe {
        #[cfg(feature = "secure")]
        {
            let s = slab_of(p);
            if (*s).kind == KIND_SMALL {
                let size = (*s).block_size as usize;
                canary::length(p.cast_mut(), size);
                return size - canary::TRAILER;
            }
        }
        usable_of(p)
    }
}

/// Zeroes the first `size` bytes of a new object unless it is known to be fresh from the OS.
pub(super) unsafe fn zero_new(p: *mut u8, size: usize) {
    // SAFETY: p is a new object of at least size bytes.
    unsafe {
        let s = slab_of(p);
        if (*s).kind == KIND_SMALL || !(*s).zeroed {
            core::ptr::write_bytes(p, 0, size);
        } else {
            // Memcheck was told the block is undefined (`frontend::large`); it reads as zero.
            valgrind::make_defined(p, size);
        }
    }
}

/// Moves an object to a new size: in place when the size still fits its class or span without
/// wasting more than half of it; otherwise a new object, a copy and a free.
pub(super) unsafe fn realloc_aligned(
    p: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    // SAFETY: p is a live object of ours of at least old_size bytes.
    unsafe {
        let room = in_place_room(p);
        if new_size <= room && new_size >= room / 2 {
            // Secure build: a small block's trailer says its new length.
            #[cfg(feature = "secure")]
            {
                let s = slab_of(p);
                if (*s).kind == KIND_SMALL {
                    canary::arm(p, (*s).block_size as usize, new_size);
                }
            }
            return p;
        }
        let s = slab_of(p);
        // The common case, a small object of a slab of this thread's current table, costs a few
        // compares; otherwise the new block is allocated in the old one's origin.
        let q = if thread_heap::charges_current_scope(s) {
            alloc_aligned(new_size, align)
        } else {
            alloc_in_origin(s, p, new_size, align)
        };
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
            free::free(p);
        }
        q
    }
}

/// Allocates `size` bytes aligned to `align` in the scope the objects of `s` are charged to: the
/// cache's `scope`, which is the origin or, after it closed, its nearest open ancestor.
///
/// # Safety
/// `s` is the descriptor of a live object of ours (its cache is alive while the object is).
#[cold]
unsafe fn alloc_in_origin(s: *mut Slab, p: *mut u8, size: usize, align: usize) -> *mut u8 {
    // SAFETY: the live object holds a reference on its cache. `cache.scope` changes only under
    // the cache lock (and the tree lock), so it is read under the cache lock, and the node
    // reference taken there keeps it alive after the lock is dropped, while the thread enters it
    // (entering a scope that closed meanwhile enters its nearest open ancestor).
    unsafe {
        let origin = shared::charged_scope(s, p);
        let q = if origin == thread_heap::current_scope() {
            alloc_aligned(size, align)
        } else {
            let prev = thread_heap::enter(origin);
            let q = alloc_aligned(size, align);
            thread_heap::leave(prev);
            q
        };
        scope::node_put(origin);
        q
    }
}

// SAFETY: every pointer returned is a fresh object of at least the requested size and alignment,
// owned by the caller until it is given back; null on failure.
unsafe impl GlobalAlloc for ScopeAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        alloc_aligned(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: ptr came from this allocator and is live.
        unsafe { free::free(ptr) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = alloc_aligned(layout.size(), layout.align());
        if !p.is_null() {
            // SAFETY: p is a new object of layout.size() bytes.
            unsafe { zero_new(p, layout.size()) };
        }
        p
    }

    /// Resizes in place when the new size fits the block; otherwise moves it to a new block
    /// charged to the old block's origin scope (or, if that scope has closed, to its nearest
    /// open ancestor), whatever scope the calling thread is in. Null (the old block left
    /// alone) when the origin's limit or the OS refuses.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: ptr is live with this layout.
        unsafe { realloc_aligned(ptr, layout.size(), layout.align(), new_size) }
    }
}

/// The usable size of an object: at least what was asked, often a little more (in the secure
/// build, exactly what was asked for a small object: the bytes after it hold its canary).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let v: Vec<u8> = Vec::with_capacity(100);
/// // SAFETY: the vector's buffer is a live object of the global allocator.
/// assert!(unsafe { scopealloc::usable_size(v.as_ptr()) } >= 100);
/// ```
///
/// # Safety
/// `ptr` is a live object of this allocator.
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    // SAFETY: ptr is a live object of ours (the contract), so its descriptor describes it.
    unsafe { usable_of(ptr) }
}

//! C-shaped entry points (16-byte minimum alignment, as glibc). Used by `libscopealloc.so`.

use super::global_alloc::{alloc_aligned, realloc_aligned, usable_of, zero_new};
use crate::frontend::{alloc, free, large};
#[cfg(feature = "secure")]
use crate::objects::canary;
#[cfg(feature = "secure")]
use crate::objects::size_class::SIZES;
use crate::objects::size_class::{
    c_class_of, c_class_of_unchecked, class_of, C_LOOKUP_MAX, MAX_SMALL,
};
use crate::objects::slab::{self};
use core::ptr::null_mut;

/// Bytes to allocate for a C request: at least 16 and a multiple of 16.
#[inline(always)]
fn c_size(size: usize) -> usize {
    (size.max(1) + 15) & !15
}

/// `malloc`: 16-byte aligned; a unique pointer for size 0; null when out of memory.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: malloc is always safe; p is freed once.
/// unsafe {
///     let p = raw::malloc(100);
///     assert!(!p.is_null() && p as usize % 16 == 0);
///     raw::free(p);
/// }
/// ```
///
/// # Safety
/// Always safe to call; unsafe for symmetry with `free`.
#[inline]
#[cfg(not(feature = "secure"))]
pub unsafe fn malloc(size: usize) -> *mut u8 {
    if size <= C_LOOKUP_MAX {
        // SAFETY: c_class_of returns a class < NCLASSES for sizes up to C_LOOKUP_MAX.
        unsafe { alloc::alloc_small(c_class_of(size)) }
    } else if size <= MAX_SMALL {
        // SAFETY: c_size(size) <= MAX_SMALL here (sizes are rounded up to 16 and MAX_SMALL is a
        // multiple of 16), so class_of returns a class < NCLASSES.
        unsafe { alloc::alloc_small(class_of(c_size(size))) }
    } else {
        large::alloc_large(size, 16)
    }
}

/// `malloc` (secure build): a small block has room for the request and its trailer
/// (`objects::canary`), armed before it is returned.
///
/// # Safety
/// Always safe to call; unsafe for symmetry with `free`.
#[inline]
#[cfg(feature = "secure")]
pub unsafe fn malloc(size: usize) -> *mut u8 {
    let need = size.saturating_add(canary::TRAILER).max(canary::MIN_BLOCK);
    if need <= C_LOOKUP_MAX {
        // SAFETY: c_class_of returns a class < NCLASSES for sizes up to C_LOOKUP_MAX.
        unsafe { armed(c_class_of(need), size) }
    } else if need <= MAX_SMALL {
        // SAFETY: c_size(need) <= MAX_SMALL here (MAX_SMALL is a multiple of 16), so class_of
        // returns a class < NCLASSES.
        unsafe { armed(class_of(c_size(need)), size) }
    } else {
        large::alloc_large(size, 16)
    }
}

/// Largest request [`malloc_small`] takes.
#[cfg(not(feature = "secure"))]
pub const MALLOC_SMALL_MAX: usize = C_LOOKUP_MAX;
/// Largest request [`malloc_small`] takes (the secure build keeps room for the trailer).
#[cfg(feature = "secure")]
pub const MALLOC_SMALL_MAX: usize = C_LOOKUP_MAX - canary::TRAILER;

/// [`malloc`] of a small request: the C library's fast path, which compares the size with a
/// threshold it loads (`MALLOC_SMALL_MAX`, or 0 in its check mode) and so skips the size tests of
/// [`malloc`]. When out of memory or over a limit, the result of `failed()`, called from the
/// slow path (the C library's sets `errno` and returns null), so that the fast path needs no
/// stack frame of its own.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: the sizes are at most MALLOC_SMALL_MAX; each block is freed once.
/// unsafe {
///     for n in [0, 1, 16, 17, raw::MALLOC_SMALL_MAX] {
///         let p = raw::malloc_small(n, core::ptr::null_mut);
///         assert!(!p.is_null() && p as usize % 16 == 0 && raw::usable_size(p) >= n.max(1));
///         raw::free(p);
///     }
/// }
/// ```
///
/// # Safety
/// `size <= MALLOC_SMALL_MAX`.
#[inline(always)]
pub unsafe fn malloc_small(size: usize, failed: fn() -> *mut u8) -> *mut u8 {
    #[cfg(not(feature = "secure"))]
    // SAFETY: size <= C_LOOKUP_MAX (the contract), and the class found is < NCLASSES.
    unsafe {
        alloc::alloc_small_or(c_class_of_unchecked(size), failed)
    }
    #[cfg(feature = "secure")]
    // SAFETY: size + TRAILER <= C_LOOKUP_MAX (the contract), and so is MIN_BLOCK; the class
    // found is < NCLASSES.
    unsafe {
        let p = armed(
            c_class_of_unchecked((size + canary::TRAILER).max(canary::MIN_BLOCK)),
            size,
        );
        if p.is_null() {
            return failed();
        }
        p
    }
}

/// Secure build: a block of `class` for a request of `size` bytes (which leaves the class room
/// for the trailer), armed (`objects::canary`); null when out of memory or over a limit.
///
/// # Safety
/// `class < NCLASSES` and `size + canary::TRAILER <= class_size(class)`.
#[cfg(feature = "secure")]
#[inline(always)]
pub(super) unsafe fn armed(class: usize, size: usize) -> *mut u8 {
    // SAFETY: class < NCLASSES (the contract); a block handed out is ours to arm, and its class
    // size leaves room for size and the trailer (the contract).
    unsafe {
        let p = alloc::alloc_small(class);
        if !p.is_null() {
            canary::arm(p, *SIZES.get_unchecked(class) as usize, size);
        }
        p
    }
}

/// `calloc`: zeroed; null on overflow.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: the block is read within its size and freed once.
/// unsafe {
///     let p = raw::calloc(10, 10);
///     assert!((0..100).all(|i| *p.add(i) == 0));
///     raw::free(p);
///     assert!(raw::calloc(usize::MAX, 2).is_null(), "the multiplication is checked");
/// }
/// ```
///
/// # Safety
/// Always safe to call.
pub unsafe fn calloc(n: usize, size: usize) -> *mut u8 {
    let Some(total) = n.checked_mul(size) else {
        return null_mut();
    };
    // SAFETY: malloc is always safe.
    let p = unsafe { malloc(total) };
    if !p.is_null() {
        // SAFETY: p is a new object of at least total bytes.
        unsafe { zero_new(p, total) };
    }
    p
}

/// `free` (null is a no-op).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// // SAFETY: null is a no-op.
/// unsafe { scopealloc::raw::free(core::ptr::null_mut()) };
/// ```
///
/// # Safety
/// `ptr` is null or a live object of ours (check foreign pointers with [`owns`]).
#[inline]
pub unsafe fn free(ptr: *mut u8) {
    if !ptr.is_null() {
        // SAFETY: ptr is non-null here, so a live object of ours (the contract).
        unsafe { free::free(ptr) }
    }
}

/// `free` of a pointer that is not trusted, as the C library's `free`: null is a no-op (true);
/// false, changing nothing, if `ptr` is not in a block of ours (foreign, in our metadata, past a
/// slab's last block, inside or after a large block). A pointer inside a small block is not
/// detected ([`is_block_start`] does, at the cost of a division).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// let on_stack = 0u64;
/// // SAFETY: the foreign pointer is refused without being freed; p is freed once.
/// unsafe {
///     assert!(!raw::free_untrusted(&on_stack as *const u64 as *mut u8), "not ours");
///     let p = raw::malloc(300_000);
///     assert!(!raw::free_untrusted(p.add(4096)), "inside a large block");
///     assert!(raw::free_untrusted(p));
/// }
/// ```
///
/// # Safety
/// If `ptr` is in a block of ours, that block is live (not freed yet).
#[inline]
pub unsafe fn free_untrusted(ptr: *mut u8) -> bool {
    // SAFETY: the caller's contract is free_untrusted's, which refuses null (no segment of ours
    // holds it); null is looked at only then, off the path of a pointer of ours.
    let freed = unsafe { free::free_untrusted(ptr) };
    freed || ptr.is_null()
}

/// The limit to pass to [`free_untrusted_or`] for its ordinary work: every segment of ours lies
/// below it.
pub const UNTRUSTED_LIMIT: usize = crate::backend::registry::LIMIT;

/// [`free_untrusted`] for the C library's `free`, whose fast path keeps no stack frame: instead
/// of answering false, calls `refused(ptr)` (in tail position) for a pointer not in a block of
/// ours, null included, and for every pointer when `limit` is 0, so that one comparison stands
/// for the registry's bound, null and the C library's check mode (which `refused` serves).
/// `limit` is [`UNTRUSTED_LIMIT`] or 0.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// static REFUSED: AtomicUsize = AtomicUsize::new(0);
/// unsafe fn refused(_: *mut u8) {
///     REFUSED.fetch_add(1, Ordering::Relaxed);
/// }
/// let on_stack = 0u64;
/// // SAFETY: foreign pointers and null are refused without being freed; p is freed once (the
/// // call with limit 0 refuses it without freeing it).
/// unsafe {
///     raw::free_untrusted_or(core::ptr::null_mut(), raw::UNTRUSTED_LIMIT, refused);
///     raw::free_untrusted_or(&on_stack as *const u64 as *mut u8, raw::UNTRUSTED_LIMIT, refused);
///     let p = raw::malloc(64);
///     raw::free_untrusted_or(p, 0, refused);
///     assert_eq!(REFUSED.load(Ordering::Relaxed), 3);
///     raw::free_untrusted_or(p, raw::UNTRUSTED_LIMIT, refused);
///     assert_eq!(REFUSED.load(Ordering::Relaxed), 3, "freed");
/// }
/// ```
///
/// # Safety
/// If `ptr` is in a block of ours, that block is live; `limit <= UNTRUSTED_LIMIT`; `refused`'s
/// contract is the caller's.
#[inline(always)]
pub unsafe fn free_untrusted_or(ptr: *mut u8, limit: usize, refused: unsafe fn(*mut u8)) {
    // SAFETY: the contract.
    unsafe { free::free_untrusted_or(ptr, limit, refused) }
}

/// `realloc` (null → malloc). Size 0 is not special here.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: each pointer is live when used and freed once.
/// unsafe {
///     let p = raw::malloc(8);
///     p.write(42);
///     let q = raw::realloc(p, 100_000);
///     assert_eq!(q.read(), 42, "contents move with the block");
///     raw::free(q);
/// }
/// ```
///
/// # Safety
/// `ptr` is null or a live object of ours.
pub unsafe fn realloc(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() {
        // SAFETY: always safe.
        return unsafe { malloc(size) };
    }
    // SAFETY: ptr is non-null here, so a live object of ours (the contract).
    unsafe {
        let old = usable_of(ptr);
        // The secure build keeps the exact size: its trailer then says where the block ends.
        #[cfg(not(feature = "secure"))]
        let size = c_size(size);
        realloc_aligned(ptr, old, 16, size)
    }
}

/// An object of `size` bytes aligned to `align` (a power of two).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: a power-of-two alignment; freed once.
/// unsafe {
///     let p = raw::aligned_alloc(4096, 100);
///     assert_eq!(p as usize % 4096, 0);
///     raw::free(p);
/// }
/// ```
///
/// # Safety
/// Always safe to call with a power-of-two `align`.
pub unsafe fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    // The secure build keeps the exact size (see `realloc`).
    #[cfg(not(feature = "secure"))]
    let size = c_size(size);
    alloc_aligned(size, align.max(16))
}

/// `malloc_usable_size`.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: p is live until freed.
/// unsafe {
///     let p = raw::malloc(100);
///     assert!(raw::usable_size(p) >= 100);
///     raw::free(p);
/// }
/// ```
///
/// # Safety
/// `ptr` is a live object of ours.
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    // SAFETY: ptr is a live object of ours (the contract).
    unsafe { usable_of(ptr) }
}

/// Whether `ptr` points into memory of ours that holds objects, without touching foreign
/// memory: into a live slab (a live or freed small object, or inside one: see
/// [`is_block_start`]), or at a live large or huge object (a freed large or huge object's pages are no longer ours to
/// describe, so it reads as foreign; and once a freed span is reused by a new object at the
/// same address, a late double free of the old one cannot be told from a free of the new).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// let x = 5u64;
/// assert!(!raw::owns(&x as *const u64 as *const u8), "a stack address is foreign");
/// // SAFETY: freed once.
/// unsafe {
///     let p = raw::malloc(10);
///     assert!(raw::owns(p));
///     raw::free(p);
/// }
/// ```
pub fn owns(ptr: *const u8) -> bool {
    slab::owns(ptr)
}

/// [`owns`], and `ptr` is exactly the start of an object, not inside one (costs a division;
/// for `SCOPEALLOC_CHECK=1`).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: freed once.
/// unsafe {
///     let p = raw::malloc(64);
///     assert!(raw::is_block_start(p));
///     assert!(raw::owns(p.add(8)) && !raw::is_block_start(p.add(8)), "inside a block");
///     raw::free(p);
/// }
/// ```
pub fn is_block_start(ptr: *const u8) -> bool {
    slab::is_block_start(ptr)
}

/// Best-effort double-free check (`SCOPEALLOC_CHECK=1`): true if `ptr` (ours) is already free
/// in a slab of this thread, or describes no live large object.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::raw;
/// // SAFETY: p is ours (owns says so); it is freed once, then only looked at.
/// unsafe {
///     let p = raw::malloc(48);
///     assert!(!raw::is_double_free(p));
///     raw::free(p);
///     assert!(raw::is_double_free(p), "a freed block on this thread's free list");
/// }
/// ```
///
/// # Safety
/// `ptr` points into memory of ours ([`owns`] said so).
pub unsafe fn is_double_free(ptr: *const u8) -> bool {
    // SAFETY: the caller's contract is is_double_free's.
    unsafe { free::is_double_free(ptr) }
}

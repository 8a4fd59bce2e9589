//! The public API: the `GlobalAlloc`, the raw C-shaped entry points, scopes and statistics.

use crate::heap::{self, Table};
use crate::scope::{self, ScopeNode};
use crate::segment::{self, slab_of, KIND_SMALL};
use crate::size_class::{class_for, class_of, MAX_SMALL};
use crate::{os, sync::Ordering};
use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::{null_mut, NonNull};

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
    pub const fn new() -> Self {
        ScopeAlloc
    }
}

#[inline(always)]
fn alloc_aligned(size: usize, align: usize) -> *mut u8 {
    if align <= 8 && size <= MAX_SMALL {
        return heap::alloc_small(class_of(size));
    }
    match class_for(size, align) {
        Some(c) => heap::alloc_small(c),
        None => heap::alloc_large(size, align),
    }
}

/// Usable size of a pointer of ours.
#[inline]
unsafe fn usable_of(p: *const u8) -> usize {
    // SAFETY: the caller guarantees p is ours.
    unsafe {
        let s = slab_of(p);
        if (*s).kind == KIND_SMALL {
            (*s).block_size as usize
        } else {
            heap::large_usable(s)
        }
    }
}

/// Zeroes the first `size` bytes of a new object unless it is known to be fresh from the OS.
unsafe fn zero_new(p: *mut u8, size: usize) {
    // SAFETY: p is a new object of at least size bytes.
    unsafe {
        let s = slab_of(p);
        if (*s).kind == KIND_SMALL || !(*s).zeroed {
            core::ptr::write_bytes(p, 0, size);
        }
    }
}

/// Moves an object to a new size: in place when the size still fits its class or span without
/// wasting more than half of it; otherwise a new object, a copy and a free.
unsafe fn realloc_aligned(p: *mut u8, old_size: usize, align: usize, new_size: usize) -> *mut u8 {
    // SAFETY: p is a live object of ours of at least old_size bytes.
    unsafe {
        let usable = usable_of(p);
        if new_size <= usable && new_size >= usable / 2 {
            return p;
        }
        let q = alloc_aligned(new_size, align);
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
            heap::free(p);
        }
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
        unsafe { heap::free(ptr) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = alloc_aligned(layout.size(), layout.align());
        if !p.is_null() {
            // SAFETY: p is a new object of layout.size() bytes.
            unsafe { zero_new(p, layout.size()) };
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: ptr is live with this layout.
        unsafe { realloc_aligned(ptr, layout.size(), layout.align(), new_size) }
    }
}

/// The usable size of an object: at least what was asked, often a little more.
///
/// # Safety
/// `ptr` is a live object of this allocator.
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    // SAFETY: guaranteed by the caller.
    unsafe { usable_of(ptr) }
}

/// Returns to the OS all the free memory it can, now: this thread's empty slabs, empty slabs of
/// exited threads, every free page, and the pages of released scope, table and heap metadata.
pub fn trim() {
    heap::trim();
    scope::trim_pools();
    heap::trim_pools();
}

/// How long free pages stay committed before the decay gives them back (default 1000 ms; 0 =
/// at once). The decay runs on allocator activity (slab and large-object traffic) and at
/// [`trim`].
pub fn set_decay_ms(ms: u64) {
    segment::DECAY_MS.store(ms, Ordering::Relaxed);
}

/// Starts (once per process) a background thread that runs the decay every `decay/2` ms even
/// when the program makes no allocator calls, so that idle memory goes back to the OS; without
/// it, the decay runs on allocator activity and at [`trim`]. Returns false if it was already
/// running or the thread could not be spawned.
pub fn start_background_decay() -> bool {
    use std::sync::atomic::AtomicBool;
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return false;
    }
    std::thread::Builder::new()
        .name("scopealloc-decay".into())
        .spawn(|| loop {
            let ms = segment::DECAY_MS.load(Ordering::Relaxed).max(2);
            std::thread::sleep(std::time::Duration::from_millis(ms / 2));
            heap::sweep_abandoned();
            segment::tick(false);
        })
        .is_ok()
}

/// Figures of the allocator's memory, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Address space mapped from the OS now (segments, huge objects, metadata).
    pub mapped: usize,
    /// `mapped` less what was given back with `madvise`: an upper bound of the resident memory.
    pub committed: usize,
    /// Bytes in pages handed to slabs and large objects.
    pub in_use: usize,
    /// Free pages kept committed for reuse, given back by the decay or [`trim`].
    pub cached: usize,
    /// Bytes given back to the OS since start (madvise and munmap).
    pub returned: usize,
}

/// Current [`HeapStats`].
pub fn heap_stats() -> HeapStats {
    let (in_use, cached) = segment::figures();
    let mapped = os::MAPPED.load(Ordering::Relaxed);
    HeapStats {
        mapped,
        committed: mapped.saturating_sub(os::PURGED.load(Ordering::Relaxed)),
        in_use,
        cached,
        returned: os::RETURNED.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// Scopes.

/// A handle on a scope: cheap to clone, `Send + Sync`. Dropping the last handle of a scope closes
/// it (its charges move to the parent; its objects stay valid).
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::Scope;
/// let server = Scope::root().child("server");
/// let req = server.child("request-42");
/// {
///     let _g = req.enter();
///     let v = vec![0u8; 4096];
///     assert_eq!(Scope::current(), req);
///     drop(v);
/// }
/// assert_eq!(req.stats().objects, 0);
/// assert!(req.stats().allocs >= 1);
/// ```
pub struct Scope {
    node: NonNull<ScopeNode>,
}

// SAFETY: a handle is a counted reference to a node whose shared state is atomic or locked.
unsafe impl Send for Scope {}
// SAFETY: as above.
unsafe impl Sync for Scope {}

impl Clone for Scope {
    fn clone(&self) -> Self {
        scope::handle_get(self.node.as_ptr());
        Scope { node: self.node }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        scope::handle_put(self.node.as_ptr());
    }
}

impl PartialEq for Scope {
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node
    }
}

impl Eq for Scope {}

impl core::fmt::Debug for Scope {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Scope")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Restores the previous scope when dropped. Not `Send`: it belongs to the thread that entered.
pub struct ScopeGuard<'a> {
    prev: *mut Table,
    _scope: PhantomData<&'a Scope>,
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: prev came from heap::enter on this thread (the guard is !Send) and is
        // restored once.
        unsafe { heap::leave(self.prev) };
    }
}

impl Scope {
    fn from_node(n: *mut ScopeNode) -> Scope {
        scope::handle_get(n);
        // SAFETY: nodes are never null.
        Scope {
            node: unsafe { NonNull::new_unchecked(n) },
        }
    }

    fn n(&self) -> *mut ScopeNode {
        self.node.as_ptr()
    }

    /// The root scope, which always exists and never closes.
    pub fn root() -> Scope {
        Scope::from_node(scope::root())
    }

    /// The calling thread's current scope.
    pub fn current() -> Scope {
        Scope::from_node(heap::current_scope())
    }

    /// A new child of the calling thread's current scope.
    pub fn new(name: &str) -> Scope {
        Scope::current().child(name)
    }

    /// A new child of this scope (of its nearest open ancestor if this one is closed). Names
    /// longer than 63 bytes are truncated.
    pub fn child(&self, name: &str) -> Scope {
        let n = scope::create_child(self.n(), name);
        // SAFETY: create_child returns a node with one handle for us.
        Scope {
            node: unsafe { NonNull::new_unchecked(n) },
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        // SAFETY: the handle keeps the node alive; the name never changes.
        unsafe { (*self.n()).name() }
    }

    /// A unique id (never reused in the process).
    pub fn id(&self) -> u64 {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).id.load(Ordering::Relaxed) }
    }

    /// The parent; `None` for the root.
    pub fn parent(&self) -> Option<Scope> {
        // SAFETY: the handle keeps the node, and so its parent, alive.
        let p = unsafe { (*self.n()).parent };
        (!p.is_null()).then(|| Scope::from_node(p))
    }

    /// The open children.
    pub fn children(&self) -> Vec<Scope> {
        // Never allocate under the tree lock: count first, then fill a vector with room to spare.
        let mut cap = 8;
        loop {
            let mut v: Vec<Scope> = Vec::with_capacity(cap);
            let total = scope::for_children(self.n(), cap, |n| {
                // SAFETY: for_children took a handle for us.
                v.push(Scope {
                    node: unsafe { NonNull::new_unchecked(n) },
                })
            });
            if total <= cap {
                return v;
            }
            drop(v);
            cap = total + 8;
        }
    }

    /// Makes this the calling thread's current scope until the guard is dropped. Entering a
    /// closed scope enters its nearest open ancestor.
    pub fn enter(&self) -> ScopeGuard<'_> {
        ScopeGuard {
            prev: heap::enter(self.n()),
            _scope: PhantomData,
        }
    }

    /// Runs `f` inside this scope (also restores the previous scope if `f` panics).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.enter();
        f()
    }

    /// Sets (`Some(bytes)`) or removes (`None`) the hard limit. Takes effect for the next charge.
    pub fn set_limit(&self, limit: Option<usize>) {
        scope::set_limit(self.n(), limit);
    }

    /// The hard limit.
    pub fn limit(&self) -> Option<usize> {
        scope::limit(self.n())
    }

    /// The scope's figures, summed now (exact once threads are quiet).
    pub fn stats(&self) -> ScopeStats {
        scope::stats(self.n())
    }

    /// Restarts the high-water mark at the current charge.
    pub fn reset_peak(&self) {
        scope::reset_peak(self.n());
    }

    /// Closes the scope and its descendants: from any thread, at any time, idempotent. Charges
    /// move to the nearest open ancestor; objects stay valid; threads inside continue in the
    /// ancestor. The root never closes.
    pub fn close(&self) {
        scope::close(self.n());
    }

    /// Whether the scope is closed.
    pub fn is_closed(&self) -> bool {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).is_closed() }
    }

    /// Gives up the handle as an opaque pointer (for C); take it back with [`Scope::from_raw`].
    pub fn into_raw(self) -> *const c_void {
        let p = self.node.as_ptr() as *const c_void;
        core::mem::forget(self);
        p
    }

    /// Takes back a handle given up with [`Scope::into_raw`].
    ///
    /// # Safety
    /// `p` came from `into_raw` and is taken back once.
    pub unsafe fn from_raw(p: *const c_void) -> Scope {
        // SAFETY: guaranteed by the caller.
        Scope {
            node: unsafe { NonNull::new_unchecked(p as *mut ScopeNode) },
        }
    }

    /// A new handle on the scope of a raw handle, which stays valid.
    ///
    /// # Safety
    /// `p` came from `into_raw` and has not been taken back.
    pub unsafe fn clone_from_raw(p: *const c_void) -> Scope {
        Scope::from_node(p as *mut ScopeNode)
    }

    /// Enters the scope without a guard (for C): returns a token to give to
    /// [`Scope::leave_raw`] on the same thread.
    pub fn enter_raw(&self) -> *mut c_void {
        heap::enter(self.n()) as *mut c_void
    }

    /// Leaves what [`Scope::enter_raw`] entered, restoring the previous scope.
    ///
    /// # Safety
    /// `token` came from `enter_raw` on this thread and is used once, innermost first.
    pub unsafe fn leave_raw(token: *mut c_void) {
        // SAFETY: guaranteed by the caller.
        unsafe { heap::leave(token as *mut Table) }
    }
}

/// Figures of a scope. `bytes`/`objects` count usable sizes of live objects charged to the scope
/// and its descendants (open ones, and closed ones reparented into it); `self_*` exclude open
/// descendants. Closed scopes report zero for the live figures (they moved to the ancestor).
/// `#[repr(C)]`: the C library hands it out as `struct scopealloc_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeStats {
    /// Usable bytes of live objects, descendants included.
    pub bytes: u64,
    /// Usable bytes of live objects charged to this scope itself.
    pub self_bytes: u64,
    /// Live objects, descendants included.
    pub objects: u64,
    /// Live objects of this scope itself.
    pub self_objects: u64,
    /// High-water mark of `charged_bytes` since creation or [`Scope::reset_peak`].
    pub peak_bytes: u64,
    /// Bytes held against the limit: live bytes plus what per-thread stocks hold in advance
    /// (at most 128 KiB per thread that allocated in the scope) and remote frees not yet
    /// collected by their slab's thread.
    pub charged_bytes: u64,
    /// Allocations charged here since creation, descendants included.
    pub allocs: u64,
    /// Frees of those (`allocs - objects`).
    pub frees: u64,
    /// Allocations refused because they would have passed this scope's limit.
    pub limit_hits: u64,
}

/// Process-wide counts, to check that nothing leaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Open scopes, the root included.
    pub live_scopes: usize,
    /// Closed scopes whose memory is not yet released (objects, handles or threads' tables
    /// still refer to them).
    pub closed_scopes_pending: usize,
    /// Caches (scope × size class) in existence, dying ones included.
    pub live_caches: usize,
    /// Caches of closed scopes that still hold objects.
    pub dying_caches: usize,
    /// Thread heaps in use.
    pub thread_heaps: usize,
}

/// Current [`GlobalStats`]. First retires the calling thread's tables of closed scopes (other
/// threads retire theirs on their next allocator slow path, scope entry or exit).
pub fn global_stats() -> GlobalStats {
    heap::reap();
    let (live_scopes, closed_scopes_pending, live_caches, dying_caches) = scope::counts();
    GlobalStats {
        live_scopes,
        closed_scopes_pending,
        live_caches,
        dying_caches,
        thread_heaps: heap::heaps_in_use(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw entry points for the C library.

/// C-shaped entry points (16-byte minimum alignment, as glibc). Used by `libscopealloc.so`.
pub mod raw {
    use super::*;

    /// Bytes to allocate for a C request: at least 16 and a multiple of 16.
    #[inline(always)]
    fn c_size(size: usize) -> usize {
        (size.max(1) + 15) & !15
    }

    /// `malloc`: 16-byte aligned; a unique pointer for size 0; null when out of memory.
    ///
    /// # Safety
    /// Always safe to call; unsafe for symmetry with `free`.
    #[inline]
    pub unsafe fn malloc(size: usize) -> *mut u8 {
        if size <= MAX_SMALL {
            heap::alloc_small(class_of(c_size(size)))
        } else {
            heap::alloc_large(size, 16)
        }
    }

    /// `calloc`: zeroed; null on overflow.
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
    /// # Safety
    /// `ptr` is null or a live object of ours (check foreign pointers with [`owns`]).
    #[inline]
    pub unsafe fn free(ptr: *mut u8) {
        if !ptr.is_null() {
            // SAFETY: guaranteed by the caller.
            unsafe { heap::free(ptr) }
        }
    }

    /// `realloc` (null → malloc). Size 0 is not special here.
    ///
    /// # Safety
    /// `ptr` is null or a live object of ours.
    pub unsafe fn realloc(ptr: *mut u8, size: usize) -> *mut u8 {
        if ptr.is_null() {
            // SAFETY: always safe.
            return unsafe { malloc(size) };
        }
        // SAFETY: guaranteed by the caller.
        unsafe {
            let old = usable_of(ptr);
            realloc_aligned(ptr, old, 16, c_size(size))
        }
    }

    /// An object of `size` bytes aligned to `align` (a power of two).
    ///
    /// # Safety
    /// Always safe to call with a power-of-two `align`.
    pub unsafe fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
        alloc_aligned(c_size(size), align.max(16))
    }

    /// `malloc_usable_size`.
    ///
    /// # Safety
    /// `ptr` is a live object of ours.
    pub unsafe fn usable_size(ptr: *const u8) -> usize {
        // SAFETY: guaranteed by the caller.
        unsafe { usable_of(ptr) }
    }

    /// Whether `ptr` points into memory of ours that holds objects, without touching foreign
    /// memory: into a live slab (a live or freed small object, or inside one: see
    /// [`is_block_start`]), or at a live large or huge object (a freed large or huge object's pages are no longer ours to
    /// describe, so it reads as foreign; and once a freed span is reused by a new object at the
    /// same address, a late double free of the old one cannot be told from a free of the new).
    pub fn owns(ptr: *const u8) -> bool {
        segment::owns(ptr)
    }

    /// [`owns`], and `ptr` is exactly the start of an object, not inside one (costs a division;
    /// for `SCOPEALLOC_CHECK=1`).
    pub fn is_block_start(ptr: *const u8) -> bool {
        segment::is_block_start(ptr)
    }

    /// Best-effort double-free check (`SCOPEALLOC_CHECK=1`): true if `ptr` (ours) is already free
    /// in a slab of this thread, or describes no live large object.
    pub fn is_double_free(ptr: *const u8) -> bool {
        heap::is_double_free(ptr)
    }
}

/// Hooks for tests.
#[doc(hidden)]
pub mod testing {
    /// `Some(k)`: the next k OS mappings succeed, then every mapping fails until
    /// `os_fail_after(None)`.
    pub fn os_fail_after(n: Option<u64>) {
        crate::os::set_fail_after(n);
    }
}

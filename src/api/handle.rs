//! Scope handles: `Scope` (a counted reference on a node) and `ScopeGuard` (entry until drop).

use crate::frontend::{table::Table, thread_heap};
use crate::objects::scope::{self, ScopeNode};
use crate::objects::stats::{self, ScopeStats};
use crate::sync::Ordering;
use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::NonNull;

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
        // SAFETY: this handle holds a user handle on the node, which keeps it alive.
        unsafe { scope::handle_get(self.node.as_ptr()) };
        Scope { node: self.node }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // SAFETY: this handle holds a user handle on the node, given up here (drop); the last
        // one closes the scope (reporting leaks to the hooks that watch it), while its reference
        // keeps the node alive.
        unsafe { scope::handle_put_then(self.node.as_ptr(), |n| close_here(n)) };
    }
}

/// Closes `n` (reporting leaks to the hooks that watch it) and retires the calling thread's
/// table of it at once (`thread_heap::retire_closed`): the thread that closes a request scope
/// is usually the one that ran it, and its stubs then serve the next request.
///
/// # Safety
/// `n` is a live node on which the caller holds a reference.
unsafe fn close_here(n: *mut ScopeNode) {
    // SAFETY: the caller's contract, which keeps n alive for both calls.
    unsafe {
        super::leaks::close(n);
        thread_heap::retire_closed(n);
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
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// let s = scopealloc::Scope::root().child("guard-doc");
/// let g = s.enter();
/// assert_eq!(scopealloc::Scope::current(), s);
/// drop(g);
/// assert_eq!(scopealloc::Scope::current(), scopealloc::Scope::root());
/// ```
pub struct ScopeGuard<'a> {
    prev: *mut Table,
    _scope: PhantomData<&'a Scope>,
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: prev came from thread_heap::enter on this thread (the guard is !Send) and is
        // restored once.
        unsafe { thread_heap::leave(self.prev) };
    }
}

impl Scope {
    /// A new handle on `n`.
    ///
    /// # Safety
    /// `n` is a live, non-null node on which the caller holds a reference (a handle, a
    /// table's, a child's, a cache's, or one of the hook registries').
    pub(super) unsafe fn from_node(n: *mut ScopeNode) -> Scope {
        // SAFETY: the caller holds a reference on the live node n (the contract).
        unsafe { scope::handle_get(n) };
        Scope {
            // SAFETY: nodes are never null.
            node: unsafe { NonNull::new_unchecked(n) },
        }
    }

    pub(super) fn n(&self) -> *mut ScopeNode {
        self.node.as_ptr()
    }

    /// The node; the handle holds a reference on it.
    pub(super) fn node_ptr(&self) -> *mut ScopeNode {
        self.node.as_ptr()
    }

    /// The root scope, which always exists and never closes.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// assert_eq!(Scope::root().name(), "root");
    /// assert!(Scope::root().parent().is_none());
    /// ```
    pub fn root() -> Scope {
        // SAFETY: the root is static and never released.
        unsafe { Scope::from_node(scope::root()) }
    }

    /// The calling thread's current scope.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let s = Scope::root().child("current-doc");
    /// assert_eq!(s.run(Scope::current), s);
    /// assert_eq!(Scope::current(), Scope::root());
    /// ```
    pub fn current() -> Scope {
        // SAFETY: the current scope is the root or the scope of this thread's table, which holds
        // a reference on it.
        unsafe { Scope::from_node(thread_heap::current_scope()) }
    }

    /// A new child of the calling thread's current scope.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let outer = Scope::root().child("outer");
    /// let inner = outer.run(|| Scope::new("inner"));
    /// assert_eq!(inner.parent().unwrap(), outer);
    /// ```
    pub fn new(name: &str) -> Scope {
        Scope::current().child(name)
    }

    /// A new child of this scope (of its nearest open ancestor if this one is closed). Names
    /// longer than 63 bytes are truncated.
    ///
    /// When the OS refuses memory for the scope's own metadata (about 1 KiB, from the
    /// allocator's pools), this prints one line and aborts, as Rust does when an allocation
    /// fails; [`Scope::try_child`] returns `None` instead.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let tenant = scopealloc::Scope::root().child("tenant");
    /// let req = tenant.child("request-1");
    /// assert_eq!(req.parent().unwrap(), tenant);
    /// ```
    pub fn child(&self, name: &str) -> Scope {
        match self.try_child(name) {
            Some(s) => s,
            None => crate::platform::os::fatal(b"out of memory for scope metadata"),
        }
    }

    /// [`Scope::child`], or `None` when the OS refuses memory for the scope's metadata.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let req = scopealloc::Scope::root().try_child("request").expect("metadata");
    /// assert_eq!(req.name(), "request");
    /// ```
    pub fn try_child(&self, name: &str) -> Option<Scope> {
        // SAFETY: this handle holds a user handle on the node, which keeps it alive.
        let n = unsafe { scope::create_child(self.n(), name) };
        // create_child returns null (refused) or a node with one handle for us.
        NonNull::new(n).map(|node| Scope { node })
    }

    /// The name.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("a-name");
    /// assert_eq!(s.name(), "a-name");
    /// ```
    pub fn name(&self) -> &str {
        // SAFETY: the handle keeps the node alive; the name never changes.
        unsafe { (*self.n()).name() }
    }

    /// A unique id (never reused in the process).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let (a, b) = (Scope::root().child("a"), Scope::root().child("b"));
    /// assert_ne!(a.id(), b.id());
    /// assert_eq!(a.id(), a.clone().id());
    /// ```
    pub fn id(&self) -> u64 {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).id.load(Ordering::Relaxed) }
    }

    /// The parent; `None` for the root.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let p = scopealloc::Scope::root().child("p");
    /// assert_eq!(p.child("c").parent(), Some(p));
    /// ```
    pub fn parent(&self) -> Option<Scope> {
        // SAFETY: the handle keeps the node, and so its parent, alive.
        let p = unsafe { (*self.n()).parent };
        // SAFETY: a child holds a reference on its parent, and this handle keeps the child.
        (!p.is_null()).then(|| unsafe { Scope::from_node(p) })
    }

    /// The open children.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let p = scopealloc::Scope::root().child("parent-doc");
    /// let kids: Vec<_> = (0..3).map(|i| p.child(&format!("k{i}"))).collect();
    /// assert_eq!(p.children().len(), 3);
    /// kids[0].close();
    /// assert_eq!(p.children().len(), 2, "open children only");
    /// ```
    pub fn children(&self) -> Vec<Scope> {
        // Never allocate under the tree lock: count first, then fill a vector with room to spare.
        let mut cap = 8;
        loop {
            let mut v: Vec<Scope> = Vec::with_capacity(cap);
            let push = |n| {
                v.push(Scope {
                    // SAFETY: for_children took a handle for us on a live, non-null node.
                    node: unsafe { NonNull::new_unchecked(n) },
                })
            };
            // SAFETY: this handle holds a user handle on the node, which keeps it alive.
            let total = unsafe { scope::for_children(self.n(), cap, push) };
            if total <= cap {
                return v;
            }
            drop(v);
            cap = total + 8;
        }
    }

    /// Makes this the calling thread's current scope until the guard is dropped. Entering a
    /// closed scope enters its nearest open ancestor.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let s = Scope::root().child("enter-doc");
    /// {
    ///     let _g = s.enter();
    ///     let v = vec![0u8; 100];
    ///     assert_eq!(s.stats().objects, 1);
    ///     drop(v);
    /// }
    /// assert_eq!(Scope::current(), Scope::root(), "the guard restored the previous scope");
    /// ```
    pub fn enter(&self) -> ScopeGuard<'_> {
        ScopeGuard {
            // SAFETY: this handle holds a user handle on the node, which keeps it alive.
            prev: unsafe { thread_heap::enter(self.n()) },
            _scope: PhantomData,
        }
    }

    /// Runs `f` inside this scope (also restores the previous scope if `f` panics).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("run-doc");
    /// let v = s.run(|| vec![1u8; 1000]);
    /// assert!(s.stats().bytes >= 1000);
    /// drop(v);
    /// ```
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.enter();
        f()
    }

    /// Sets (`Some(bytes)`) or removes (`None`) the hard limit. Takes effect for the next charge.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("limit-doc");
    /// s.set_limit(Some(64 << 10));
    /// assert!(s.run(|| Vec::<u8>::new().try_reserve(1 << 20)).is_err());
    /// assert_eq!(s.stats().limit_hits, 1);
    /// s.set_limit(None);
    /// assert!(s.run(|| Vec::<u8>::new().try_reserve(1 << 20)).is_ok());
    /// ```
    pub fn set_limit(&self, limit: Option<usize>) {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).counter.set_limit(limit) };
    }

    /// The hard limit.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("limit-get-doc");
    /// assert_eq!(s.limit(), None);
    /// s.set_limit(Some(1 << 20));
    /// assert_eq!(s.limit(), Some(1 << 20));
    /// ```
    pub fn limit(&self) -> Option<usize> {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).counter.limit() }
    }

    /// The scope's figures, summed now (exact once threads are quiet).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("stats-doc");
    /// let v = s.run(|| vec![0u8; 4096]);
    /// let st = s.stats();
    /// assert_eq!(st.objects, 1);
    /// assert!(st.bytes >= 4096 && st.charged_bytes >= st.bytes);
    /// drop(v);
    /// assert_eq!(s.stats().bytes, 0);
    /// ```
    pub fn stats(&self) -> ScopeStats {
        // SAFETY: this handle holds a user handle on the node, which keeps it alive.
        unsafe { stats::stats(self.n()) }
    }

    /// A report of this scope and its open descendants: a consistent snapshot of their figures
    /// and size classes (see [`crate::Report`]); [`crate::report`] is the root's.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let server = Scope::root().child("server");
    /// let tenant = server.child("tenant-a");
    /// let v = tenant.run(|| vec![0u8; 10_000]);
    /// let r = server.report();
    /// assert_eq!(r.scopes[0].path, "server");
    /// assert_eq!(r.get("server/tenant-a").unwrap().bytes, tenant.stats().bytes);
    /// println!("{}", r.text().classes(true));
    /// drop(v);
    /// ```
    pub fn report(&self) -> crate::Report {
        super::report::of(self)
    }

    /// Restarts the high-water mark at the current charge.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("peak-doc");
    /// drop(s.run(|| vec![0u8; 1 << 20]));
    /// assert!(s.stats().peak_bytes >= 1 << 20);
    /// s.reset_peak();
    /// assert!(s.stats().peak_bytes < 1 << 20);
    /// ```
    pub fn reset_peak(&self) {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).counter.reset_peak() };
    }

    /// Closes the scope and its descendants: from any thread, at any time, idempotent. Charges
    /// move to the nearest open ancestor; objects stay valid; threads inside continue in the
    /// ancestor. The root never closes.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let parent = scopealloc::Scope::root().child("close-doc");
    /// let req = parent.child("req");
    /// let v = req.run(|| vec![0u8; 1000]);
    /// req.close();
    /// assert!(req.is_closed());
    /// assert!(parent.stats().self_bytes >= 1000, "the charge moved to the parent");
    /// drop(v);
    /// assert_eq!(parent.stats().bytes, 0);
    /// ```
    pub fn close(&self) {
        // SAFETY: this handle holds a user handle on the node, which keeps it alive.
        unsafe { close_here(self.n()) };
    }

    /// Whether the scope is closed.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("closed-doc");
    /// assert!(!s.is_closed());
    /// s.close();
    /// assert!(s.is_closed() && !scopealloc::Scope::root().is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).is_closed() }
    }

    /// Gives up the handle as an opaque pointer (for C); take it back with [`Scope::from_raw`].
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let s = Scope::root().child("raw-doc");
    /// let p = s.clone().into_raw();
    /// // SAFETY: p came from into_raw and is taken back once.
    /// let back = unsafe { Scope::from_raw(p) };
    /// assert_eq!(back, s);
    /// ```
    pub fn into_raw(self) -> *const c_void {
        let p = self.node.as_ptr() as *const c_void;
        core::mem::forget(self);
        p
    }

    /// Takes back a handle given up with [`Scope::into_raw`].
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let p = Scope::root().child("from-raw-doc").into_raw();
    /// // SAFETY: p came from into_raw and is taken back once.
    /// let s = unsafe { Scope::from_raw(p) };
    /// assert_eq!(s.name(), "from-raw-doc");
    /// ```
    ///
    /// # Safety
    /// `p` came from `into_raw` and is taken back once.
    pub unsafe fn from_raw(p: *const c_void) -> Scope {
        Scope {
            // SAFETY: p came from into_raw (the contract): a non-null node pointer that carries
            // the handle given up there, taken back here.
            node: unsafe { NonNull::new_unchecked(p as *mut ScopeNode) },
        }
    }

    /// A new handle on the scope of a raw handle, which stays valid.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let p = Scope::root().child("clone-raw-doc").into_raw();
    /// // SAFETY: p came from into_raw and has not been taken back.
    /// let a = unsafe { Scope::clone_from_raw(p) };
    /// // SAFETY: taken back once.
    /// let b = unsafe { Scope::from_raw(p) };
    /// assert_eq!(a, b);
    /// ```
    ///
    /// # Safety
    /// `p` came from `into_raw` and has not been taken back.
    pub unsafe fn clone_from_raw(p: *const c_void) -> Scope {
        // SAFETY: p came from into_raw and was not taken back (the contract): it carries a
        // handle on a live node.
        unsafe { Scope::from_node(p as *mut ScopeNode) }
    }

    /// Enters the scope without a guard (for C): returns a token to give to
    /// [`Scope::leave_raw`] on the same thread.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let s = Scope::root().child("enter-raw-doc");
    /// let token = s.enter_raw();
    /// assert_eq!(Scope::current(), s);
    /// // SAFETY: token came from enter_raw on this thread, used once.
    /// unsafe { Scope::leave_raw(token) };
    /// assert_eq!(Scope::current(), Scope::root());
    /// ```
    pub fn enter_raw(&self) -> *mut c_void {
        // SAFETY: this handle holds a user handle on the node, which keeps it alive.
        unsafe { thread_heap::enter(self.n()) as *mut c_void }
    }

    /// Leaves what [`Scope::enter_raw`] entered, restoring the previous scope.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let s = Scope::root().child("leave-raw-doc");
    /// let token = s.enter_raw();
    /// // SAFETY: token came from enter_raw on this thread, used once.
    /// unsafe { Scope::leave_raw(token) };
    /// assert_eq!(Scope::current(), Scope::root());
    /// ```
    ///
    /// # Safety
    /// `token` came from `enter_raw` on this thread and is used once, innermost first.
    pub unsafe fn leave_raw(token: *mut c_void) {
        // SAFETY: token came from enter_raw on this thread and is used once, innermost first
        // (the contract): it is leave's own contract.
        unsafe { thread_heap::leave(token as *mut Table) }
    }
}

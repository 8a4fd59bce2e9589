//! Leaks at close: what a scope still held when it closed, by size class, reported to hooks.
//!
//! Off by default and cheap when off: a close reads one atomic (how many scopes are watched)
//! and, when it is zero, closes as before. When some scope is watched, the close looks for
//! watches on the closing scope or its ancestors (under this layer's mutex, never touched by an
//! allocation path); if there is one, the close reads the subtree's live objects by size class
//! into a buffer on the stack under the same hold of the tree lock as the close itself, and the
//! hooks are called after every lock is released, on the closing thread.

use super::handle::Scope;
use crate::objects::scope::{self, ScopeNode};
use crate::objects::size_class::{class_size, LARGE_CLASS, NCLASSES};
use crate::objects::stats::{ClassUsage, Usage};
use crate::sync::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a scope still held when it closed: the live objects of it and of its descendants
/// (they closed with it, or had closed into it before), which from then on are charged to the
/// nearest open ancestor. See [`Scope::on_close_leaks`].
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::{CloseLeaks, Scope};
/// use std::sync::{Arc, Mutex};
/// let server = Scope::root().child("server");
/// let last: Arc<Mutex<Option<CloseLeaks>>> = Arc::default();
/// let l = last.clone();
/// server.on_close_leaks(move |leaks| *l.lock().unwrap() = Some(leaks.clone()));
/// let req = server.child("req");
/// let kept: Vec<Box<[u8; 100]>> = req.run(|| (0..3).map(|_| Box::new([0; 100])).collect());
/// req.close();
/// let leaks = last.lock().unwrap().take().unwrap();
/// assert_eq!(leaks.objects, 4); // three boxes and the vector holding them
/// assert_eq!(leaks.bytes, leaks.classes.iter().map(|c| c.bytes).sum::<u64>());
/// # drop(kept);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseLeaks {
    /// The closed scope's id ([`Scope::id`]).
    pub scope_id: u64,
    /// The closed scope's name.
    pub name: String,
    /// Live objects left.
    pub objects: u64,
    /// Their usable bytes.
    pub bytes: u64,
    /// By size class, smallest first, large and huge objects last; only classes with objects.
    pub classes: Vec<ClassLeaks>,
}

/// One row of [`CloseLeaks::classes`].
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::{ClassLeaks, Scope};
/// use std::sync::{Arc, Mutex};
/// let s = Scope::root().child("s");
/// let rows: Arc<Mutex<Vec<ClassLeaks>>> = Arc::default();
/// let r = rows.clone();
/// s.on_close_leaks(move |leaks| r.lock().unwrap().extend(&leaks.classes));
/// let (small, large) = s.run(|| (vec![0u8; 48], vec![0u8; 1 << 20]));
/// s.close();
/// let rows = rows.lock().unwrap();
/// assert_eq!(rows[0].object_size, Some(48));
/// assert_eq!((rows[1].object_size, rows[1].objects), (None, 1)); // large objects last
/// # drop((small, large));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassLeaks {
    /// The class's object size; `None` for large and huge objects (each of its own size).
    pub object_size: Option<usize>,
    /// Live objects of the class.
    pub objects: u64,
    /// Their usable bytes.
    pub bytes: u64,
}

/// A hook of [`Scope::on_close_leaks`].
type LeakHook = Arc<dyn Fn(&CloseLeaks) + Send + Sync>;

struct LeakWatch {
    /// The watched node; the watch holds an internal reference on it.
    node: *mut ScopeNode,
    hook: LeakHook,
}

// SAFETY: `node` is a counted reference on a node whose shared state is atomic or locked; the
// watch is only reached under the registry's mutex.
unsafe impl Send for LeakWatch {}

static LEAK_WATCHES: Mutex<Vec<LeakWatch>> = Mutex::new(Vec::new());
/// Watches in `LEAK_WATCHES` (read without the lock by every close).
static WATCHED: AtomicUsize = AtomicUsize::new(0);

fn leak_watches() -> MutexGuard<'static, Vec<LeakWatch>> {
    // No hook runs under this lock: a poisoned lock left the list consistent.
    LEAK_WATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes `n` (and its open descendants), reporting what the subtree still holds to the hooks
/// that watch it or an ancestor, after the close has released the allocator's locks.
///
/// # Safety
/// `n` is a live node on which the caller holds a reference.
pub(super) unsafe fn close(n: *mut ScopeNode) {
    if WATCHED.load(Ordering::Relaxed) == 0 {
        // SAFETY: the caller's contract.
        unsafe { scope::close(n) };
        return;
    }
    let hooks = hooks_watching(n);
    if hooks.is_empty() {
        // SAFETY: the caller's contract.
        unsafe { scope::close(n) };
        return;
    }
    let mut usage: ClassUsage = [Usage::ZERO; NCLASSES + 1];
    // SAFETY: the caller's contract.
    let closed = unsafe { scope::close_collecting(n, Some(&mut usage)) };
    drop_closed_watches();
    if !closed {
        return;
    }
    let classes: Vec<ClassLeaks> = usage
        .iter()
        .enumerate()
        .filter(|(_, u)| u.objects > 0)
        .map(|(c, u)| ClassLeaks {
            object_size: (c != LARGE_CLASS).then(|| class_size(c)),
            objects: u.objects,
            bytes: u.bytes,
        })
        .collect();
    if classes.is_empty() {
        return;
    }
    // SAFETY: the caller's reference keeps the node (its id and name) alive.
    let node = unsafe { &*n };
    let leaks = CloseLeaks {
        scope_id: node.id.load(Ordering::Relaxed),
        name: node.name().to_owned(),
        objects: classes.iter().map(|c| c.objects).sum(),
        bytes: classes.iter().map(|c| c.bytes).sum(),
        classes,
    };
    for hook in hooks {
        // A panicking hook must not unwind out of a close (a `Drop`): the panic hook reports it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&leaks)));
    }
}

/// The hooks of the watches on `n` or one of its ancestors.
fn hooks_watching(n: *mut ScopeNode) -> Vec<LeakHook> {
    let w = leak_watches();
    w.iter()
        .filter(|x| {
            let mut a = n;
            while !a.is_null() {
                if a == x.node {
                    return true;
                }
                // SAFETY: `n` is alive (the caller's reference) and a child keeps its parent.
                a = unsafe { (*a).parent };
            }
            false
        })
        .map(|x| x.hook.clone())
        .collect()
}

/// Drops the watches of closed scopes (a closed scope and its descendants never close again).
fn drop_closed_watches() {
    let mut w = leak_watches();
    w.retain(|x| {
        // SAFETY: the watch's reference keeps the node alive.
        if unsafe { (*x.node).is_closed() } {
            // SAFETY: the watch gives up its reference (it leaves the list).
            unsafe { scope::node_put(x.node) };
            WATCHED.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    });
}

impl Scope {
    /// Calls `hook(leaks)` when this scope, or any of its descendants, closes while it still
    /// holds live objects (by [`Scope::close`] or by dropping its last handle): how many
    /// objects and bytes, by size class ([`CloseLeaks`]). A scope whose close also closes its
    /// descendants is reported once, with its whole subtree. The hook runs on the closing
    /// thread, after the close has released the allocator's locks, so it may allocate, log and
    /// take locks. The watch ends when this scope closes.
    ///
    /// Off by default; without any watch a close costs one more atomic load.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::{CloseLeaks, Scope};
    /// use std::sync::{Arc, Mutex};
    /// let tenant = Scope::root().child("tenant");
    /// let seen: Arc<Mutex<Vec<CloseLeaks>>> = Arc::default();
    /// let log = seen.clone();
    /// tenant.on_close_leaks(move |leaks| log.lock().unwrap().push(leaks.clone()));
    ///
    /// let req = tenant.child("request-7");
    /// let kept = req.run(|| Box::new([0u64; 8])); // outlives the request
    /// drop(req); // the last handle: the request closes
    /// let leaks = seen.lock().unwrap()[0].clone();
    /// assert_eq!((leaks.name.as_str(), leaks.objects, leaks.bytes), ("request-7", 1, 64));
    /// assert_eq!(leaks.classes[0].object_size, Some(64));
    /// # drop(kept);
    /// ```
    pub fn on_close_leaks<F>(&self, hook: F)
    where
        F: Fn(&CloseLeaks) + Send + Sync + 'static,
    {
        let n = self.n();
        let mut w = leak_watches();
        // SAFETY: the handle keeps the node alive; the watch takes its own reference, given
        // up when the watch is dropped.
        unsafe { scope::node_get(n) };
        w.push(LeakWatch {
            node: n,
            hook: Arc::new(hook),
        });
        WATCHED.fetch_add(1, Ordering::Relaxed);
    }
}

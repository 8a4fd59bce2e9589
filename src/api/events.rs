//! Soft limits (`high`), event counts, and the hooks called when a scope crosses its soft limit.
//!
//! # Where things happen
//! - **Detection** is in the charge path (`accounting::counter`): a charge that leaves a
//!   counter's `charged` above its `high` counts one event per crossing and signals
//!   `HIGH_CROSSED`, with no lock, no allocation and no call out. An uncharge that brings
//!   `charged` back to `high` or below re-arms it (see that module's essay).
//! - **Hooks** run on the *notifier*, a std thread named `scopealloc-events` started by the
//!   first [`Scope::on_high`]. It sleeps on `HIGH_CROSSED`; woken, it compares each watched
//!   scope's local `high` count with the count it last delivered, and calls the hooks of the
//!   scopes whose count moved, after releasing the registry's lock. So a hook runs on no
//!   allocating thread and under no lock of the allocator or of the registry: it may allocate,
//!   log, take locks, register hooks, change limits, even close the scope.
//!
//! # Who may touch what
//! The registry (`WATCHES`) is memory of this layer (a `std` mutex around a `Vec`), never
//! touched by an allocation path: [`Scope::on_high`] adds to it, the notifier reads it and drops
//! the watches of closed scopes. A watch holds an internal reference on its scope's node (not a
//! user handle, so it does not keep the scope open).

use super::handle::Scope;
use crate::accounting::counter::HIGH_CROSSED;
use crate::objects::scope::{self, ScopeNode};
use crate::objects::stats::{ScopeEvents, ScopeStats};
use crate::sync::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

/// A hook of [`Scope::on_high`].
type HighHook = Arc<dyn Fn(&Scope, &ScopeStats) + Send + Sync>;

/// One registered hook and the scope it watches.
struct Watch {
    /// The watched node; the watch holds an internal reference on it.
    node: *mut ScopeNode,
    /// The node's local `high` count when the hook was last called (or registered).
    seen: u64,
    hook: HighHook,
}

// SAFETY: `node` is a counted reference on a node whose shared state is atomic or locked; the
// watch is only reached under the registry's mutex.
unsafe impl Send for Watch {}

struct Watches {
    list: Vec<Watch>,
    /// Whether the notifier thread runs.
    started: bool,
}

static WATCHES: Mutex<Watches> = Mutex::new(Watches {
    list: Vec::new(),
    started: false,
});

/// How long the notifier sleeps at most between two looks (it also drops the watches of closed
/// scopes then, giving back their nodes' memory).
const NOTIFIER_PERIOD_MS: u64 = 1000;

fn watches() -> MutexGuard<'static, Watches> {
    // A hook never runs under this lock, so a poisoned lock only means a panic in our own short
    // critical sections, which leave the list consistent.
    WATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The notifier thread's loop.
fn notifier() {
    loop {
        let seen = HIGH_CROSSED.seq();
        deliver();
        HIGH_CROSSED.wait(seen, NOTIFIER_PERIOD_MS);
    }
}

/// Calls the hooks of the scopes that crossed their soft limit since their last call: collected
/// under the registry's lock, called after it is released.
fn deliver() {
    let mut due: Vec<(Scope, HighHook)> = Vec::new();
    {
        let mut w = watches();
        w.list.retain_mut(|x| {
            // SAFETY: the watch's reference keeps the node alive.
            let node = unsafe { &*x.node };
            if node.is_closed() {
                // SAFETY: the watch gives up its reference (it is dropped from the list).
                unsafe { scope::node_put(x.node) };
                return false;
            }
            let now = node.counter.events_local.high.load(Ordering::Relaxed);
            if now != x.seen {
                x.seen = now;
                // SAFETY: the watch holds a reference on the live node.
                due.push((unsafe { Scope::from_node(x.node) }, x.hook.clone()));
            }
            true
        });
    }
    for (scope, hook) in due {
        let stats = scope.stats();
        // A panicking hook must not stop the notifier (the panic is reported by the panic hook).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&scope, &stats)));
    }
}

impl Scope {
    /// Sets (`Some(bytes)`) or removes (`None`) the soft limit, cgroup's `memory.high`. Passing
    /// it never refuses an allocation: it counts a `high` event ([`Scope::events`]) and calls
    /// the [`Scope::on_high`] hooks, once per crossing; the crossing is re-armed when
    /// `charged_bytes` falls back to the soft limit or below. Setting it re-arms too.
    ///
    /// The soft limit is compared with `charged_bytes` (live bytes plus what threads' stocks
    /// hold in advance), at each stock refill and large allocation, so a crossing may be seen
    /// early, never late: when it fires, live bytes are at least the soft limit less the
    /// stocks (at most 128 KiB per other thread allocating in the scope) and remote frees not
    /// yet collected. With no soft limit, the charge path pays one never-taken branch.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let s = Scope::root().child("cache");
    /// s.set_high(Some(1 << 20));
    /// let v = s.run(|| vec![0u8; 2 << 20]); // never refused
    /// assert_eq!(s.events().high, 1);
    /// drop(v);
    /// let w = s.run(|| vec![0u8; 2 << 20]); // fell below and crossed again
    /// assert_eq!(s.events().high, 2);
    /// # drop(w);
    /// ```
    pub fn set_high(&self, high: Option<usize>) {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).counter.set_high(high) };
    }

    /// The soft limit ([`Scope::set_high`]).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("s");
    /// assert_eq!(s.high(), None);
    /// s.set_high(Some(4096));
    /// assert_eq!(s.high(), Some(4096));
    /// ```
    pub fn high(&self) -> Option<usize> {
        // SAFETY: the handle keeps the node alive.
        unsafe { (*self.n()).counter.high() }
    }

    /// Events of this scope and its descendants (cgroup's `memory.events`): an event of a
    /// descendant's soft or hard limit counts here too, and stays counted after the descendant
    /// closes. See [`ScopeEvents`].
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let tenant = Scope::root().child("tenant");
    /// let req = tenant.child("request");
    /// req.set_high(Some(64 << 10));
    /// let v = req.run(|| vec![0u8; 1 << 20]);
    /// assert_eq!(tenant.events().high, 1); // the request's crossing
    /// assert_eq!(tenant.events_local().high, 0); // the tenant has no soft limit
    /// # drop(v);
    /// ```
    pub fn events(&self) -> ScopeEvents {
        // SAFETY: the handle keeps the node alive.
        ScopeEvents::read(unsafe { &(*self.n()).counter.events })
    }

    /// Events of this scope's own limits only (cgroup's `memory.events.local`).
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("s");
    /// s.set_limit(Some(1 << 20));
    /// assert!(s.run(|| Vec::<u8>::new().try_reserve_exact(2 << 20)).is_err());
    /// assert_eq!(s.events_local().max, 1);
    /// assert_eq!(s.events_local().max, s.stats().limit_hits);
    /// ```
    pub fn events_local(&self) -> ScopeEvents {
        // SAFETY: the handle keeps the node alive.
        ScopeEvents::read(unsafe { &(*self.n()).counter.events_local })
    }

    /// Calls `hook(scope, stats)` each time this scope's `charged_bytes` crosses its soft
    /// limit ([`Scope::set_high`]), with the scope's statistics read just before the call.
    ///
    /// Hooks run on a notifier thread (`scopealloc-events`, started by the first call), never
    /// inside an allocation and under no lock of the allocator, so a hook may allocate (in
    /// any scope, this one included: that does not call the hook again while the scope stays
    /// above its soft limit), log, take locks, or close the scope. Crossings that happen before
    /// the notifier gets to them are delivered as one call ([`Scope::events`] counts each).
    /// Hooks of one notifier run one after another: a hook that blocks delays the others. A
    /// hook watches only this scope's own soft limit, not its descendants'; it is dropped when
    /// the scope closes. A panicking hook is reported by the panic hook and does not stop the
    /// notifier.
    ///
    /// Errors: the notifier thread could not be started (the hook is not registered; a later
    /// call tries again). After `fork`, the child has no notifier: hooks do not run there.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// use std::sync::mpsc;
    /// let s = Scope::root().child("tenant");
    /// s.set_high(Some(1 << 20));
    /// let (tx, rx) = mpsc::channel();
    /// let tx = std::sync::Mutex::new(tx);
    /// s.on_high(move |scope, stats| {
    ///     let msg = format!("{} is over its soft limit: {} bytes", scope.name(), stats.bytes);
    ///     tx.lock().unwrap().send(msg).unwrap();
    /// })
    /// .expect("notifier thread");
    /// let v = s.run(|| vec![0u8; 2 << 20]);
    /// let msg = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    /// assert!(msg.starts_with("tenant is over"));
    /// # drop(v);
    /// ```
    pub fn on_high<F>(&self, hook: F) -> std::io::Result<()>
    where
        F: Fn(&Scope, &ScopeStats) + Send + Sync + 'static,
    {
        let mut w = watches();
        if !w.started {
            std::thread::Builder::new()
                .name("scopealloc-events".into())
                .spawn(notifier)?;
            w.started = true;
        }
        let n = self.n();
        // SAFETY: the handle keeps the node alive; the watch takes its own reference, given
        // up when the notifier drops the watch.
        let seen = unsafe {
            scope::node_get(n);
            (*n).counter.events_local.high.load(Ordering::Relaxed)
        };
        w.list.push(Watch {
            node: n,
            seen,
            hook: Arc::new(hook),
        });
        Ok(())
    }
}

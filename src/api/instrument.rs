//! Async tasks in a scope: a future that enters its scope around every `poll` and around its
//! inner future's drop, on whichever thread the executor runs it.
//!
//! A task moves between threads, so entering a scope once, on the thread that spawned it, is
//! not enough: [`Instrumented`] holds a [`Scope`] handle (which is `Send`) and enters it for the
//! length of each `poll` (the [`ScopeGuard`](crate::ScopeGuard), which is not `Send`, never
//! lives across an `.await`). It depends on no executor.

use super::handle::Scope;
use core::future::Future;
use core::mem::ManuallyDrop;
use core::pin::Pin;
use core::task::{Context, Poll};

/// A future that runs `F` inside a scope: every `poll` of `F`, and its drop (destructors
/// allocate and free too), happen with the scope entered. Made by [`Scope::instrument`]. It is
/// `Send` when `F` is, and `Unpin` when `F` is.
///
/// ```
/// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
/// use scopealloc::{Instrumented, Scope};
/// fn send<T: Send>(t: T) -> T { t }
/// let s = Scope::root().child("job");
/// let job: Instrumented<_> = send(s.instrument(async { vec![0u8; 4096].len() }));
/// let rt = tokio::runtime::Runtime::new().unwrap();
/// assert_eq!(rt.block_on(rt.spawn(job)).unwrap(), 4096);
/// assert_eq!(s.stats().bytes, 0); // the vector was charged to `job` and freed there
/// assert!(s.stats().allocs >= 1);
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Instrumented<F> {
    scope: Scope,
    /// Pinned when `self` is (structural); dropped in place, once, by `Drop`.
    inner: ManuallyDrop<F>,
}

impl<F> Instrumented<F> {
    /// The scope the future runs in.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// let s = scopealloc::Scope::root().child("task");
    /// let f = s.instrument(async { 1 });
    /// assert_eq!(f.scope(), &s);
    /// ```
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of `self` (it is only
        // reached through this pinned projection, and `Drop` drops it in place), and
        // `Instrumented` is `Unpin` only when `F` is. `scope` is not pinned (a handle).
        let this = unsafe { self.get_unchecked_mut() };
        let _inside = this.scope.enter();
        // SAFETY: as above: `inner` stays where it is until dropped.
        let inner = unsafe { Pin::new_unchecked(&mut *this.inner) };
        inner.poll(cx)
    }
}

impl<F> Drop for Instrumented<F> {
    fn drop(&mut self) {
        let _inside = self.scope.enter();
        // SAFETY: `inner` is dropped once, here, in place (which the pinning contract allows),
        // and never touched again.
        unsafe { ManuallyDrop::drop(&mut self.inner) };
    }
}

impl<F> core::fmt::Debug for Instrumented<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Instrumented")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Scope {
    /// Runs `future` in this scope: the returned future enters the scope around every `poll`
    /// of `future` and around its drop, on whatever thread polls it, so what the task
    /// allocates is charged here however the executor moves it between threads. Works with
    /// any executor; `Send` when `future` is.
    ///
    /// **Tasks spawned from inside.** A task that an instrumented future spawns is *not* in
    /// this scope: the executor's allocation of the new task (its future's state, made during
    /// the spawning poll) is charged here, but its polls run in whatever scope the executor's
    /// thread is in (the root, for a runtime's worker threads). To keep it in the scope,
    /// instrument it too, with `Scope::current()` (inside a poll, that is this scope):
    /// `tokio::spawn(Scope::current().instrument(child))`.
    ///
    /// ```
    /// # #[global_allocator] static G: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
    /// use scopealloc::Scope;
    /// let rt = tokio::runtime::Runtime::new().unwrap();
    /// let req = Scope::root().child("request");
    /// let (mine, child) = rt.block_on(req.instrument(async {
    ///     let mine = vec![0u8; 100_000]; // charged to `request`
    ///     tokio::task::yield_now().await;
    ///     // A spawned task runs in the worker's scope unless instrumented:
    ///     let child = tokio::spawn(Scope::current().instrument(async { vec![0u8; 200_000] }));
    ///     (mine, child.await.unwrap())
    /// }));
    /// assert!(req.stats().bytes >= 300_000);
    /// drop((mine, child));
    /// # drop(rt);
    /// ```
    pub fn instrument<F: Future>(&self, future: F) -> Instrumented<F> {
        Instrumented {
            scope: self.clone(),
            inner: ManuallyDrop::new(future),
        }
    }
}

//! The hierarchical charge counter of a scope: bytes charged to it and its descendants, a hard
//! limit, a high-water mark, and the count of refusals (the kernel's `page_counter`).
//!
//! Every scope embeds one; a counter links to its parent's, so a charge walks to the root adding
//! to each and undoes itself if a limit would be passed (`page_counter_try_charge`). All fields
//! are atomics touched with `Relaxed` ordering: a counter publishes nothing but its own value,
//! and readers (statistics, the refill policy) only need each value to be one that was current.

use crate::sync::{AtomicU64, Ordering};

/// `limit` of a counter without a limit.
pub const NO_LIMIT: u64 = u64::MAX;

/// A node of the charge hierarchy. Shared by every thread that charges the scope.
#[repr(C)]
pub struct Counter {
    /// The parent scope's counter (null at the root); immutable after creation, kept alive by
    /// the child's reference on its parent scope.
    pub parent: *const Counter,
    /// Bytes charged here and below: live objects plus stocks held in advance.
    pub charged: AtomicU64,
    /// Hard limit on `charged`.
    pub limit: AtomicU64,
    /// High-water mark of `charged` (of accepted charges only).
    pub peak: AtomicU64,
    /// Charges refused by this counter's limit.
    pub limit_hits: AtomicU64,
}

// SAFETY: the fields are atomics; `parent` is immutable and points at a counter that outlives
// this one.
unsafe impl Sync for Counter {}

impl Counter {
    /// A root counter (no parent, no limit).
    pub const fn new() -> Self {
        Counter {
            parent: core::ptr::null(),
            charged: AtomicU64::new(0),
            limit: AtomicU64::new(NO_LIMIT),
            peak: AtomicU64::new(0),
            limit_hits: AtomicU64::new(0),
        }
    }

    /// Re-arms a recycled counter as a fresh child of `parent`.
    pub fn reset(&mut self, parent: *const Counter) {
        self.parent = parent;
        self.charged.store(0, Ordering::Relaxed);
        self.limit.store(NO_LIMIT, Ordering::Relaxed);
        self.peak.store(0, Ordering::Relaxed);
        self.limit_hits.store(0, Ordering::Relaxed);
    }

    fn ancestors(&self) -> impl Iterator<Item = &Counter> {
        let mut next: *const Counter = self;
        core::iter::from_fn(move || {
            // SAFETY: every counter on the chain is kept alive by its child's reference on the
            // parent scope, and the first by the caller's reference.
            let c = unsafe { next.as_ref()? };
            next = c.parent;
            Some(c)
        })
    }

    /// Charges `bytes` here and to every ancestor, unless that would pass a limit; then nothing
    /// is charged and the counter whose limit refused is returned.
    pub fn try_charge(&self, bytes: u64) -> Result<(), &Counter> {
        for a in self.ancestors() {
            let limit = a.limit.load(Ordering::Relaxed);
            // A limited counter takes the charge only if it fits (a CAS loop), so that a request
            // it refuses never counts against it, even for a moment: other threads filling the
            // scope meanwhile are not refused because of it. An unlimited one just adds.
            let fits = if limit == NO_LIMIT {
                a.charged.fetch_add(bytes, Ordering::Relaxed);
                true
            } else {
                a.charged
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                        c.checked_add(bytes).filter(|&n| n <= limit)
                    })
                    .is_ok()
            };
            if !fits {
                for b in self.ancestors() {
                    if core::ptr::eq(b, a) {
                        break;
                    }
                    b.charged.fetch_sub(bytes, Ordering::Relaxed);
                }
                return Err(a);
            }
        }
        // Peaks only once the whole chain accepted: a refused charge raises no peak.
        for a in self.ancestors() {
            let now = a
                .charged
                .load(Ordering::Relaxed)
                .min(a.limit.load(Ordering::Relaxed));
            if now > a.peak.load(Ordering::Relaxed) {
                a.peak.fetch_max(now, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Uncharges `bytes` here and from every ancestor.
    pub fn uncharge(&self, bytes: u64) {
        for a in self.ancestors() {
            let old = a.charged.fetch_sub(bytes, Ordering::Relaxed);
            debug_assert!(old >= bytes, "uncharge of more than was charged");
        }
    }

    /// Headroom under the tightest limit from here to the root (`u64::MAX`: no limit).
    pub fn headroom(&self) -> u64 {
        self.ancestors()
            .filter_map(|a| {
                let lim = a.limit.load(Ordering::Relaxed);
                (lim != NO_LIMIT).then(|| lim.saturating_sub(a.charged.load(Ordering::Relaxed)))
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Counts a refused charge (on the counter that refused it).
    pub fn count_limit_hit(&self) {
        self.limit_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets or removes the hard limit; it applies from the next charge.
    pub fn set_limit(&self, limit: Option<usize>) {
        let v = limit.map(|l| l as u64).unwrap_or(NO_LIMIT);
        self.limit.store(v, Ordering::Relaxed);
    }

    /// The hard limit.
    pub fn limit(&self) -> Option<usize> {
        let v = self.limit.load(Ordering::Relaxed);
        (v != NO_LIMIT).then_some(v as usize)
    }

    /// Restarts the high-water mark at the current charge.
    pub fn reset_peak(&self) {
        self.peak
            .store(self.charged.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_charge_past_an_ancestors_limit_is_refused_whole_and_raises_no_peak() {
        let root = Counter::new();
        let mut mid = Counter::new();
        mid.reset(&root);
        let mut leaf = Counter::new();
        leaf.reset(&mid);
        mid.set_limit(Some(100));
        assert!(leaf.try_charge(60).is_ok());
        let refused = leaf.try_charge(50).unwrap_err();
        assert!(core::ptr::eq(refused, &mid));
        for c in [&root, &mid, &leaf] {
            assert_eq!(c.charged.load(Ordering::Relaxed), 60);
            assert_eq!(c.peak.load(Ordering::Relaxed), 60);
        }
        assert_eq!(leaf.headroom(), 40);
        leaf.uncharge(60);
        assert_eq!(root.charged.load(Ordering::Relaxed), 0);
        assert_eq!(root.headroom(), u64::MAX);
    }
}

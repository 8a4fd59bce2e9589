//! The hierarchical charge counter of a scope: bytes charged to it and its descendants, a hard
//! limit, a soft limit (`high`), a high-water mark, and the counts of events (the kernel's
//! `page_counter`, with `memory.events` and `memory.events.local`).
//!
//! Every scope embeds one; a counter links to its parent's, so a charge walks to the root adding
//! to each and undoes itself if a limit would be passed (`page_counter_try_charge`). All fields
//! are atomics touched with `Relaxed` ordering: a counter publishes nothing but its own value,
//! and readers (statistics, the refill policy) only need each value to be one that was current.
//!
//! # The soft limit (`high`) and its crossings
//! Passing `high` never refuses a charge. A charge that the whole chain accepted compares each
//! counter's new `charged` with its `high` (no high is `u64::MAX`, so the compare is one
//! predictable branch when none is set); the first charge that passes it wins the swap of
//! `over_high` to true, counts one `high` event (locally and in every ancestor's hierarchical
//! figure) and signals [`HIGH_CROSSED`], an event a notifier thread outside the allocator waits
//! on. That is all the charge path does: it never calls a hook, so hooks may allocate, take locks
//! and close scopes. The crossing is *re-armed* at an uncharge that leaves `charged ≤ high` (or
//! by [`Counter::set_high`]): `over_high` goes back to false and the next passing charge is a new
//! crossing. A charge and an uncharge racing at the boundary may merge two crossings into one.
//!
//! `high` compares `charged` (live bytes plus per-thread stocks and uncollected remote frees),
//! so a crossing may come early, never late: it is seen when a stock refill (at most 64 KiB, an
//! eighth of the headroom near a hard limit) or a large object's exact charge passes `high`, and
//! live bytes are then at least `high` less the other threads' stocks (at most 128 KiB each) and
//! their uncollected remote frees. The re-arm lags live bytes by the same amount: frees go to the
//! freeing table's stock first, which is given back above 128 KiB.

use crate::platform::wake::Event;
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// `limit` of a counter without a limit, and `high` of one without a soft limit.
pub const NO_LIMIT: u64 = u64::MAX;

/// Signalled once per crossing of any counter's `high` (the notifier thread waits on it).
pub static HIGH_CROSSED: Event = Event::new();

/// Counts of events of one kind of scope: crossings of `high` and refusals by `limit` (`max`,
/// cgroup's name).
#[derive(Default)]
pub struct EventCounts {
    /// Crossings of `high` (each counted once, see the module doc).
    pub high: AtomicU64,
    /// Charges refused by a hard limit.
    pub max: AtomicU64,
}

impl EventCounts {
    const fn new() -> Self {
        EventCounts {
            high: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    fn reset(&self) {
        self.high.store(0, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }
}

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
    /// Soft limit on `charged`: passing it counts an event ([`NO_LIMIT`]: none).
    pub high: AtomicU64,
    /// True from a counted crossing of `high` until it is re-armed (see the module doc).
    over_high: AtomicBool,
    /// High-water mark of `charged` (of accepted charges only).
    pub peak: AtomicU64,
    /// Events of this counter's own limits (`memory.events.local`).
    pub events_local: EventCounts,
    /// Events of this counter's and its descendants' limits (`memory.events`): an event is
    /// counted here and in every ancestor.
    pub events: EventCounts,
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
            high: AtomicU64::new(NO_LIMIT),
            over_high: AtomicBool::new(false),
            peak: AtomicU64::new(0),
            events_local: EventCounts::new(),
            events: EventCounts::new(),
        }
    }

    /// Re-arms a recycled counter as a fresh child of `parent`.
    pub fn reset(&mut self, parent: *const Counter) {
        self.parent = parent;
        self.charged.store(0, Ordering::Relaxed);
        self.limit.store(NO_LIMIT, Ordering::Relaxed);
        self.high.store(NO_LIMIT, Ordering::Relaxed);
        self.over_high.store(false, Ordering::Relaxed);
        self.peak.store(0, Ordering::Relaxed);
        self.events_local.reset();
        self.events.reset();
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
        // Peaks and crossings of `high` only once the whole chain accepted: a refused charge
        // raises no peak and crosses nothing.
        for a in self.ancestors() {
            let charged = a.charged.load(Ordering::Relaxed);
            // No high is u64::MAX: one predictable, never-taken branch.
            if charged > a.high.load(Ordering::Relaxed) {
                a.cross_high();
            }
            let now = charged.min(a.limit.load(Ordering::Relaxed));
            if now > a.peak.load(Ordering::Relaxed) {
                a.peak.fetch_max(now, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// `charged` is above `high`: counts a crossing and wakes the notifier, unless this
    /// crossing was already counted (`over_high`). Cheap and lock-free: it may run with any
    /// allocator state held.
    #[cold]
    fn cross_high(&self) {
        if self.over_high.load(Ordering::Relaxed) || self.over_high.swap(true, Ordering::Relaxed) {
            return;
        }
        self.events_local.high.fetch_add(1, Ordering::Relaxed);
        for a in self.ancestors() {
            a.events.high.fetch_add(1, Ordering::Relaxed);
        }
        HIGH_CROSSED.signal();
    }

    /// Uncharges `bytes` here and from every ancestor; re-arms the crossing of `high` of each
    /// counter that falls to `high` or below.
    pub fn uncharge(&self, bytes: u64) {
        for a in self.ancestors() {
            let old = a.charged.fetch_sub(bytes, Ordering::Relaxed);
            debug_assert!(old >= bytes, "uncharge of more than was charged");
            // Without a high, over_high stays false: one predictable, never-taken branch.
            if a.over_high.load(Ordering::Relaxed)
                && old.wrapping_sub(bytes) <= a.high.load(Ordering::Relaxed)
            {
                a.over_high.store(false, Ordering::Relaxed);
            }
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

    /// Counts a refused charge (a `max` event) on the counter that refused it, locally and in
    /// its ancestors' hierarchical figure.
    pub fn count_limit_hit(&self) {
        self.events_local.max.fetch_add(1, Ordering::Relaxed);
        for a in self.ancestors() {
            a.events.max.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets or removes the soft limit; it applies from the next charge, and re-arms the
    /// crossing: a charge that finds `charged` above the new value counts a new event.
    pub fn set_high(&self, high: Option<usize>) {
        let v = high.map(|h| h as u64).unwrap_or(NO_LIMIT);
        self.high.store(v, Ordering::Relaxed);
        self.over_high.store(false, Ordering::Relaxed);
    }

    /// The soft limit.
    pub fn high(&self) -> Option<usize> {
        let v = self.high.load(Ordering::Relaxed);
        (v != NO_LIMIT).then_some(v as usize)
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
        refused.count_limit_hit();
        let max = |c: &Counter| {
            (
                c.events_local.max.load(Ordering::Relaxed),
                c.events.max.load(Ordering::Relaxed),
            )
        };
        assert_eq!(max(&mid), (1, 1));
        assert_eq!(max(&root), (0, 1), "hierarchical in the ancestors");
        assert_eq!(max(&leaf), (0, 0), "not in descendants");
    }

    #[test]
    fn passing_high_counts_one_event_per_crossing_until_an_uncharge_falls_below() {
        let root = Counter::new();
        let mut mid = Counter::new();
        mid.reset(&root);
        let mut leaf = Counter::new();
        leaf.reset(&mid);
        mid.set_high(Some(100));
        let high = |c: &Counter| {
            (
                c.events_local.high.load(Ordering::Relaxed),
                c.events.high.load(Ordering::Relaxed),
            )
        };
        assert!(leaf.try_charge(100).is_ok());
        assert_eq!(high(&mid), (0, 0), "at high is not past it");
        assert!(leaf.try_charge(1).is_ok());
        assert!(leaf.try_charge(50).is_ok());
        assert_eq!(high(&mid), (1, 1), "once per crossing");
        assert_eq!(high(&root), (0, 1), "hierarchical in the ancestors");
        assert_eq!(high(&leaf), (0, 0), "not in descendants");
        leaf.uncharge(50);
        assert!(leaf.try_charge(10).is_ok());
        assert_eq!(high(&mid), (1, 1), "still above high: not re-armed");
        leaf.uncharge(11);
        assert!(leaf.try_charge(1).is_ok());
        assert_eq!(high(&mid), (2, 2), "re-armed at or below high");
        mid.set_high(None);
        assert!(leaf.try_charge(1000).is_ok());
        assert_eq!(high(&mid), (2, 2));
        assert_eq!(mid.high(), None);
    }
}

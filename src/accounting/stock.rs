//! Stocks: bytes a thread has charged to a scope in advance, so that the fast path charges an
//! object with a subtraction (the kernel's `obj_stock`). A stock is a plain `i64` owned by one
//! thread's table for one scope; nobody else reads it (statistics read the counters, in which a
//! stock is already charged).
//!
//! The three verbs, as the kernel's: **consume** (the fast path: `stock -= size`), **refill**
//! (charge a batch to the scope's counter, the limit checked there) and **drain** (give a stock
//! back to the counter, all of it or the part above a mark).

use super::counter::Counter;

/// Largest refill: one atomic walk up the scope chain per this many bytes allocated, once a
/// thread holds enough live bytes in the scope.
pub const STOCK_BATCH: i64 = 64 * 1024;
/// Smallest refill, and half the smallest drain mark: what a scope that allocated a few bytes
/// shows charged beyond its live bytes, per thread.
pub const MIN_BATCH: i64 = 4 * 1024;
/// Largest drain mark: a stock above [`Stock::high`] (after frees) is drained down to half of
/// it, so a thread never sits on more than this much of a scope's limit.
pub const STOCK_HIGH: i64 = 2 * STOCK_BATCH;

/// A thread's stock for one scope (a field of its table for that scope).
///
/// The refill batch and the drain mark grow with what the thread holds live in the scope
/// (`held − avail`): a refill is an eighth of it (between [`MIN_BATCH`] and [`STOCK_BATCH`]), the
/// drain mark a quarter (between `2 · MIN_BATCH` and [`STOCK_HIGH`]). So, per thread that
/// allocated in a scope, `charged − live ≤ max(8 KiB, live / 4)` at rest and the peak, taken
/// at refill time, exceeds the live peak by at most `max(4 KiB, live / 8)` plus the object
/// being allocated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stock {
    /// Bytes charged in advance and not handed out: the fast path's `avail -= size`.
    pub avail: i64,
    /// The drain mark: a free that brings `avail` above it drains the stock (read by the free
    /// fast path next to `avail`).
    pub high: i64,
    /// Bytes this stock has charged to the scope and not given back: live objects it handed out
    /// plus `avail`. Changed on refill and drain only.
    pub held: i64,
}

impl Stock {
    /// An empty stock.
    pub const EMPTY: Stock = Stock {
        avail: 0,
        high: 2 * MIN_BATCH,
        held: 0,
    };

    /// Bytes of live objects this stock charged.
    fn live(&self) -> i64 {
        (self.held - self.avail).max(0)
    }

    fn set_marks(&mut self) {
        self.high = (self.live() / 4).clamp(2 * MIN_BATCH, STOCK_HIGH);
    }

    /// Refills the stock so that it covers `need`: an eighth of what the thread holds live in the
    /// scope (see the type's doc), and near a limit at most an eighth of the headroom (so that
    /// other threads find room too). On a refusal nothing is charged and the refusing counter is
    /// returned.
    pub fn refill<'a>(&mut self, counter: &'a Counter, need: i64) -> Result<(), &'a Counter> {
        let room = counter.headroom();
        let mut batch = (self.live() / 8).clamp(MIN_BATCH, STOCK_BATCH);
        if room != u64::MAX {
            batch = batch.min((room / 8) as i64);
        }
        let want = batch.max(need - self.avail);
        counter.try_charge(want as u64)?;
        self.avail += want;
        self.held += want;
        self.set_marks();
        Ok(())
    }

    /// Charges exactly what the stock lacks to cover `need` (the last try before a refusal).
    pub fn refill_exact<'a>(&mut self, counter: &'a Counter, need: i64) -> Result<(), &'a Counter> {
        if self.avail >= need {
            return Ok(());
        }
        let more = need - self.avail;
        counter.try_charge(more as u64)?;
        self.avail = need;
        self.held += more;
        self.set_marks();
        Ok(())
    }

    /// Gives the part of the stock above `keep` back to `counter`.
    pub fn drain(&mut self, counter: &Counter, keep: i64) {
        if self.avail > keep {
            let back = self.avail - keep;
            // The stock first, then the counter: a fork that lands between the two leaves the
            // child a stock that holds less than was charged (figures a little high), never one
            // that would give the same bytes back twice (see `thread_heap::release_dead_heap`,
            // which drains the stocks of threads the child does not have, wherever they were).
            self.avail = keep;
            self.held -= back;
            counter.uncharge(back as u64);
        }
        self.set_marks();
    }

    /// After frees raised `avail` above the drain mark: drains down to half of it.
    pub fn drain_to_mark(&mut self, counter: &Counter) {
        let keep = self.high / 2;
        self.drain(counter, keep);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_stock_grows_with_what_its_thread_holds_live() {
        let c = Counter::new();
        let mut st = Stock::EMPTY;
        assert!(st.refill(&c, 16).is_ok());
        assert_eq!(st.avail, MIN_BATCH, "a first refill is small");
        // Hand out 1 MiB: the batches grow to an eighth of the live bytes, up to STOCK_BATCH.
        let mut handed = 0;
        while handed < 1 << 20 {
            if st.avail < 64 {
                assert!(st.refill(&c, 64).is_ok());
                let live = st.held - st.avail;
                assert!(st.avail <= (live / 8).max(MIN_BATCH) + 64, "{st:?}");
            }
            st.avail -= 64;
            handed += 64;
        }
        assert_eq!(st.high, STOCK_HIGH, "the drain mark reached its cap");
        assert_eq!(
            c.charged.load(crate::sync::Ordering::Relaxed) as i64,
            st.held,
            "the counter holds what the stock charged"
        );
        st.drain(&c, 0);
        assert_eq!(
            c.charged.load(crate::sync::Ordering::Relaxed) as i64,
            handed
        );
    }

    #[test]
    fn near_a_limit_a_refill_takes_an_eighth_of_the_headroom() {
        let c = Counter::new();
        c.set_limit(Some(16_000));
        let mut st = Stock::EMPTY;
        assert!(st.refill(&c, 16).is_ok());
        assert_eq!(st.avail, 2_000, "an eighth of the headroom");
        assert!(st.refill_exact(&c, 16_001).is_err());
        assert!(st.refill_exact(&c, 16_000).is_ok());
        assert_eq!(st.avail, 16_000);
    }
}

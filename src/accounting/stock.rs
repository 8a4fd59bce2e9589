//! Stocks: bytes a thread has charged to a scope in advance, so that the fast path charges an
//! object with a subtraction (the kernel's `obj_stock`). A stock is a plain `i64` owned by one
//! thread's table for one scope; nobody else reads it (statistics read the counters, in which a
//! stock is already charged).
//!
//! The three verbs, as the kernel's: **consume** (the fast path: `stock -= size`), **refill**
//! (charge a batch to the scope's counter, the limit checked there) and **drain** (give a stock
//! back to the counter, all of it or the part above a mark).

use super::counter::Counter;

/// Bytes charged to a scope per refill of a stock: one atomic walk up the scope chain per this
/// many bytes allocated.
pub const STOCK_BATCH: i64 = 64 * 1024;
/// A stock above this (after frees) is drained down to [`STOCK_BATCH`], so that a thread never
/// sits on more than this much of a scope's limit.
pub const STOCK_HIGH: i64 = 2 * STOCK_BATCH;

/// Refills `stock` so that it covers `need`: a whole batch when the scope chain has no limit,
/// an eighth of the headroom near a limit (so that other threads find room too). On a refusal
/// nothing is charged and the refusing counter is returned.
pub fn refill<'a>(stock: &mut i64, counter: &'a Counter, need: i64) -> Result<(), &'a Counter> {
    let room = counter.headroom();
    let batch = if room == u64::MAX {
        STOCK_BATCH
    } else {
        ((room / 8) as i64).clamp(0, STOCK_BATCH)
    };
    let want = batch.max(need - *stock);
    counter.try_charge(want as u64)?;
    *stock += want;
    Ok(())
}

/// Charges exactly what `stock` lacks to cover `need` (the last try before a refusal).
pub fn refill_exact<'a>(
    stock: &mut i64,
    counter: &'a Counter,
    need: i64,
) -> Result<(), &'a Counter> {
    if *stock >= need {
        return Ok(());
    }
    counter.try_charge((need - *stock) as u64)?;
    *stock = need;
    Ok(())
}

/// Gives the part of `stock` above `keep` back to `counter`.
pub fn drain(stock: &mut i64, counter: &Counter, keep: i64) {
    if *stock > keep {
        counter.uncharge((*stock - keep) as u64);
        *stock = keep;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn near_a_limit_a_refill_takes_an_eighth_of_the_headroom() {
        let c = Counter::new();
        let mut stock = 0;
        assert!(refill(&mut stock, &c, 16).is_ok());
        assert_eq!(stock, STOCK_BATCH, "no limit: a whole batch");
        drain(&mut stock, &c, 0);
        assert_eq!(c.charged.load(crate::sync::Ordering::Relaxed), 0);
        c.set_limit(Some(80_000));
        assert!(refill(&mut stock, &c, 16).is_ok());
        assert_eq!(stock, 10_000, "an eighth of the headroom");
        assert!(refill_exact(&mut stock, &c, 80_001).is_err());
        assert!(refill_exact(&mut stock, &c, 80_000).is_ok());
        assert_eq!(stock, 80_000);
    }
}

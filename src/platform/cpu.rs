//! What the fast paths ask of the CPU itself: a prefetch of the next free block.

/// Asks the CPU to bring the cache line at `p` in for a later read or write, without waiting
/// for it and without faulting (`p` may be null or dangling: a prefetch never traps). A no-op
/// where the architecture has no stable prefetch intrinsic.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and never faults, whatever `p` is; SSE
    // is part of the x86-64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

//! Valgrind client requests: what the allocator tells memcheck about the blocks it hands out,
//! so that `valgrind --tool=memcheck` checks a program running on scopealloc (leaks, use after
//! free, overruns into free memory, invalid frees) as it would one on glibc's malloc.
//!
//! A client request is a magic instruction sequence that does nothing on a real CPU and that
//! Valgrind's JIT recognises: on x86-64, four rotations of `rdi` (3 + 13 + 61 + 51 = 128 bits,
//! so `rdi` is unchanged) then `xchg rbx, rbx`, with `rax` pointing at six words (the request
//! code and five arguments) and the result in `rdx`, which holds the default result (0) when
//! no Valgrind is there. The request codes are Valgrind's public ABI (`valgrind.h`,
//! `memcheck.h`).
//!
//! Only with the `valgrind` feature on x86-64; otherwise every function here is an empty
//! `#[inline(always)]` body, so the default build carries no trace of it. The requests never
//! allocate, lock or fail; without Valgrind each costs a few instructions.
//!
//! What the allocator says, and where (all of it in `frontend`, plus `objects::slab::Block`):
//! - [`malloclike`] when a block is handed out (`frontend::alloc::pop`, `large::alloc_large`),
//!   at its usable size with no redzone: memcheck records the block (for leak reports and
//!   invalid frees) and makes it addressable and undefined.
//! - [`freelike`] when a block is given back, before the allocator writes into it
//!   (`frontend::free`): memcheck reports an invalid or double free, and makes the block
//!   inaccessible.
//! - [`make_noaccess`] over a new slab's span (`refill::new_slab`): blocks not carved yet, or on
//!   a free list, are inaccessible to the program.
//! - [`make_defined`] / [`make_undefined`] around the allocator's own reads and writes of a free
//!   block's link word (`Block::link`, `Block::set_link`), which go back to inaccessible after.

/// Valgrind core request: running under Valgrind? (`VG_USERREQ__RUNNING_ON_VALGRIND`).
#[cfg(test)]
const RUNNING_ON_VALGRIND: usize = 0x1001;
/// Core request: a heap block was handed out (`VG_USERREQ__MALLOCLIKE_BLOCK`: address, size,
/// redzone, is_zeroed).
const MALLOCLIKE_BLOCK: usize = 0x1301;
/// Core request: a heap block was given back (`VG_USERREQ__FREELIKE_BLOCK`: address, redzone).
const FREELIKE_BLOCK: usize = 0x1302;
/// Memcheck's requests start at the tool base `'M' << 24 | 'C' << 16`.
const MEMCHECK_BASE: usize = (b'M' as usize) << 24 | (b'C' as usize) << 16;
/// Memcheck: a range becomes inaccessible (`VG_USERREQ__MAKE_MEM_NOACCESS`: address, length).
const MAKE_MEM_NOACCESS: usize = MEMCHECK_BASE;
/// Memcheck: a range becomes addressable, undefined (`VG_USERREQ__MAKE_MEM_UNDEFINED`).
const MAKE_MEM_UNDEFINED: usize = MEMCHECK_BASE + 1;
/// Memcheck: a range becomes addressable, defined (`VG_USERREQ__MAKE_MEM_DEFINED`).
const MAKE_MEM_DEFINED: usize = MEMCHECK_BASE + 2;

/// Issues a client request; `0` (the default result) when not under Valgrind.
#[cfg(all(feature = "valgrind", target_arch = "x86_64"))]
#[inline(always)]
fn request(code: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> usize {
    let args: [usize; 6] = [code, a1, a2, a3, a4, 0];
    let result: usize;
    // SAFETY: on a real CPU the sequence only rotates rdi by 128 bits in total (unchanged) and
    // exchanges rbx with itself; under Valgrind it reads the six words at rax (live on this
    // stack frame for the whole asm block) and writes the result to rdx. No other register or
    // memory of ours changes (the request may change Valgrind's shadow state only); flags are
    // clobbered, which asm! assumes by default.
    unsafe {
        core::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") args.as_ptr(),
            inout("rdx") 0usize => result,
            options(nostack),
        );
    }
    result
}

/// Without the feature (or off x86-64): nothing, the default result.
#[cfg(not(all(feature = "valgrind", target_arch = "x86_64")))]
#[inline(always)]
fn request(_code: usize, _a1: usize, _a2: usize, _a3: usize, _a4: usize) -> usize {
    0
}

/// Whether the process runs under Valgrind (always false without the feature). Only the tests
/// ask: nothing in the allocator behaves differently under Valgrind.
#[cfg(test)]
fn running_on_valgrind() -> bool {
    request(RUNNING_ON_VALGRIND, 0, 0, 0, 0) != 0
}

/// Block `p` of `size` bytes is handed out to the program; `zeroed` if it reads as zero.
#[inline(always)]
pub fn malloclike(p: *const u8, size: usize, zeroed: bool) {
    request(MALLOCLIKE_BLOCK, p as usize, size, 0, zeroed as usize);
}

/// Block `p` (handed out by [`malloclike`]) is given back by the program.
#[inline(always)]
pub fn freelike(p: *const u8) {
    request(FREELIKE_BLOCK, p as usize, 0, 0, 0);
}

/// `len` bytes at `p` are inaccessible to everyone (free or not yet handed out).
#[inline(always)]
pub fn make_noaccess(p: *const u8, len: usize) {
    request(MAKE_MEM_NOACCESS, p as usize, len, 0, 0);
}

/// `len` bytes at `p` are addressable, their contents undefined (about to be written).
#[inline(always)]
pub fn make_undefined(p: *const u8, len: usize) {
    request(MAKE_MEM_UNDEFINED, p as usize, len, 0, 0);
}

/// `len` bytes at `p` are addressable and defined (about to be read).
#[inline(always)]
pub fn make_defined(p: *const u8, len: usize) {
    request(MAKE_MEM_DEFINED, p as usize, len, 0, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_native_run_is_not_under_valgrind() {
        // With the feature, the request's result is rdx as the asm leaves it: the default.
        assert!(!running_on_valgrind());
    }

    #[test]
    fn requests_leave_the_memory_they_name_alone() {
        let mut word = 5u64;
        let p = &mut word as *mut u64 as *const u8;
        make_noaccess(p, 8);
        make_undefined(p, 8);
        make_defined(p, 8);
        malloclike(p, 8, false);
        freelike(p);
        // SAFETY: `word` is a live local; the requests above changed no memory.
        assert_eq!(unsafe { core::ptr::read_volatile(&word) }, 5);
    }
}

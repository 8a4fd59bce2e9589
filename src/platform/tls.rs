//! The fast paths' thread-local words (the current table, the heap), in the cheapest TLS model
//! the build allows.
//!
//! A shared library built by rustc reaches its `thread_local!`s through the general-dynamic
//! model: a call to `__tls_get_addr` per access, two per malloc/free pair under `LD_PRELOAD`
//! (about 22 instructions of ~150). jemalloc's and mimalloc's shared libraries use the
//! initial-exec model instead: the word's offset from the thread pointer is read from the GOT
//! (one load, resolved once by the dynamic linker) and the word itself is `fs:[offset]`. Stable
//! Rust has no `#[thread_local(model)]`, so with the `initial-exec-tls` feature, on x86-64 Linux,
//! [`fast_tls!`] defines the words in assembly (`.tdata`, hidden) and reaches them through
//! `@GOTTPOFF`. Elsewhere it falls back to a `thread_local!` (the general model in a shared
//! library, local-exec in an executable).
//!
//! An initial-exec library loaded by `dlopen` after start-up takes its words from glibc's
//! static TLS surplus (`glibc.rtld.optional_static_tls`, 512 bytes by default, as for jemalloc
//! and mimalloc); ours are 16 bytes. Where the surplus is exhausted, glibc refuses the `dlopen`
//! with "cannot allocate memory in static TLS block"; a library built without the feature is the
//! general-model fallback (`tests/c/dlopen.c` checks that a late `dlopen` works).

/// Declares `fn $get() -> *mut $t` and `fn $set(*mut $t)` over two thread-local words: the first
/// starts as `$init0` (the address of a static, written `sym PATH`), the second as null.
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux",
    not(loom)
))]
macro_rules! fast_tls {
    ($get0:ident, $set0:ident: $t0:ty = sym $init0:path; $get1:ident, $set1:ident: $t1:ty = null;) => {
        // The two words, in this module's TLS block. Hidden: not exported, not interposable, so
        // the GOT entry is resolved once to our own offset.
        core::arch::global_asm!(
            ".pushsection .tdata.scopealloc_fast_tls,\"awT\",@progbits",
            ".p2align 3",
            ".globl scopealloc_fast_tls",
            ".hidden scopealloc_fast_tls",
            ".type scopealloc_fast_tls,@object",
            ".size scopealloc_fast_tls,16",
            "scopealloc_fast_tls:",
            ".quad {init0}",
            ".quad 0",
            ".popsection",
            init0 = sym $init0,
        );

        #[inline(always)]
        pub(super) fn $get0() -> *mut $t0 {
            let v: usize;
            // SAFETY: reads this thread's word at offset 0 of `scopealloc_fast_tls` (defined
            // above, 8-aligned, initialised): the GOT holds its offset from the thread pointer.
            unsafe {
                core::arch::asm!(
                    "mov {v}, qword ptr [rip + scopealloc_fast_tls@GOTTPOFF]",
                    "mov {v}, qword ptr fs:[{v}]",
                    v = out(reg) v,
                    options(pure, readonly, nostack, preserves_flags)
                )
            };
            v as *mut $t0
        }

        #[inline(always)]
        pub(super) fn $set0(p: *mut $t0) {
            // SAFETY: writes this thread's word at offset 0 of `scopealloc_fast_tls`, which only
            // this thread reads.
            unsafe {
                core::arch::asm!(
                    "mov {o}, qword ptr [rip + scopealloc_fast_tls@GOTTPOFF]",
                    "mov qword ptr fs:[{o}], {v}",
                    o = out(reg) _,
                    v = in(reg) p as usize,
                    options(nostack, preserves_flags)
                )
            };
        }

        #[inline(always)]
        pub(super) fn $get1() -> *mut $t1 {
            let v: usize;
            // SAFETY: as for the first word, at offset 8.
            unsafe {
                core::arch::asm!(
                    "mov {v}, qword ptr [rip + scopealloc_fast_tls@GOTTPOFF]",
                    "mov {v}, qword ptr fs:[{v} + 8]",
                    v = out(reg) v,
                    options(pure, readonly, nostack, preserves_flags)
                )
            };
            v as *mut $t1
        }

        #[inline(always)]
        pub(super) fn $set1(p: *mut $t1) {
            // SAFETY: as for the first word, at offset 8.
            unsafe {
                core::arch::asm!(
                    "mov {o}, qword ptr [rip + scopealloc_fast_tls@GOTTPOFF]",
                    "mov qword ptr fs:[{o} + 8], {v}",
                    o = out(reg) _,
                    v = in(reg) p as usize,
                    options(nostack, preserves_flags)
                )
            };
        }
    };
}

/// The fallback: the same functions over a `thread_local!`.
#[cfg(not(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux",
    not(loom)
)))]
macro_rules! fast_tls {
    ($get0:ident, $set0:ident: $t0:ty = sym $init0:path; $get1:ident, $set1:ident: $t1:ty = null;) => {
        thread_local! {
            static FAST_TLS: (core::cell::Cell<*mut $t0>, core::cell::Cell<*mut $t1>) = const {
                (
                    core::cell::Cell::new((&raw const $init0) as *mut $t0),
                    core::cell::Cell::new(core::ptr::null_mut()),
                )
            };
        }

        #[inline(always)]
        pub(super) fn $get0() -> *mut $t0 {
            FAST_TLS.with(|w| w.0.get())
        }

        #[inline(always)]
        pub(super) fn $set0(p: *mut $t0) {
            FAST_TLS.with(|w| w.0.set(p))
        }

        #[inline(always)]
        pub(super) fn $get1() -> *mut $t1 {
            FAST_TLS.with(|w| w.1.get())
        }

        #[inline(always)]
        pub(super) fn $set1(p: *mut $t1) {
            FAST_TLS.with(|w| w.1.set(p))
        }
    };
}

pub(crate) use fast_tls;

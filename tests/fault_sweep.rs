//! The OS saying no at every call a workload makes, one call at a time, for each kind of call
//! the platform makes (`mmap`, `munmap`, `madvise`): from the n-th call of that kind on, every
//! one fails. Every refusal ends in a null allocation (or a clean degraded path: a refused
//! `munmap` or `madvise` keeps the memory, counted), nothing is charged for a refused
//! allocation, the figures stay exact, and no memory is lost: at rest, what the system calls
//! mapped is what the back end holds plus the unmaps it still has to retry
//! (`testing::mapped_census`), and once the OS agrees again a `trim` retries them all. The
//! kernel's own view (`/proc/self/maps`) moves by exactly what the allocator says it mapped.
//!
//! The failure hook is process-wide, so this file holds a single test.

use scopealloc::testing::{fail_after, mapped_census, os_calls, OsCall};
use scopealloc::{set_decay_ms, trim, usable_size, Scope, ScopeAlloc};
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// Requests of every kind: small objects over many classes (new slabs), large spans (new
/// segments) and huge mappings.
fn requests() -> Vec<Layout> {
    let mut v = Vec::new();
    for i in 0..3000usize {
        v.push(Layout::from_size_align(16 + (i * 37) % 4000, 8).unwrap());
    }
    for i in 0..24usize {
        v.push(Layout::from_size_align((64 << 10) + i * 4096, 8).unwrap());
    }
    for i in 0..3usize {
        v.push(Layout::from_size_align((3 << 20) + i * 4096, 8).unwrap());
    }
    v
}

/// Runs the requests inside `s`; returns the blocks that were given and the refusals.
fn run(s: &Scope, reqs: &[Layout]) -> (Vec<(*mut u8, Layout)>, usize) {
    let mut got = Vec::with_capacity(reqs.len()); // in the caller's scope, before the window
    let _g = s.enter();
    let mut refused = 0;
    for &l in reqs {
        // SAFETY: non-zero layouts.
        let p = unsafe { GLOBAL.alloc(l) };
        if p.is_null() {
            refused += 1;
        } else {
            // SAFETY: p has l.size() bytes.
            unsafe { p.write_bytes(0x5a, l.size()) };
            got.push((p, l));
        }
    }
    (got, refused)
}

/// Bytes of address space the kernel has mapped for this process, and the allocator's count of
/// its own mappings read right after (the read allocates only from what is already mapped:
/// the buffer is reserved beforehand, so a repeat read gives the same figures at rest).
fn kernel_and_allocator_mapped(buf: &mut String) -> (usize, usize) {
    use std::io::Read;
    buf.clear();
    std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_string(buf))
        .expect("read /proc/self/maps");
    let mapped = mapped_census().mapped;
    let total = buf
        .lines()
        .filter_map(|l| l.split(' ').next()?.split_once('-'))
        .map(|(a, b)| usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap())
        .sum();
    (total, mapped)
}

/// What the allocator mapped outside its own count: constant while no one else maps.
fn kernel_surplus(buf: &mut String) -> isize {
    let (kernel, ours) = kernel_and_allocator_mapped(buf);
    kernel as isize - ours as isize
}

/// Frees the blocks that `run` gave.
fn free_all(got: Vec<(*mut u8, Layout)>) {
    for (p, l) in got {
        // SAFETY: given by run() with this layout.
        unsafe { GLOBAL.dealloc(p, l) };
    }
}

/// At rest, every mapped byte is held by the back end or waits for its unmap to be retried.
fn census_exact(what: &str, n: u64) -> Result<(), String> {
    let c = mapped_census();
    if c.mapped == c.held + c.deferred {
        Ok(())
    } else {
        Err(format!(
            "{what}, n = {n}: mapped bytes unaccounted for: {c:?}"
        ))
    }
}

/// Sweeps a refusal of `call` over every such call the workload (allocations, frees, trim)
/// makes; returns the failures seen (printed as they come).
fn sweep(call: OsCall, reqs: &[Layout], maps: &mut String) -> usize {
    let what = format!("{call:?}");
    let s = Scope::root().child("fault-sweep");
    trim();
    let before = os_calls(call);
    let (got, refused) = run(&s, reqs);
    assert_eq!(refused, 0);
    free_all(got);
    trim();
    let calls = os_calls(call) - before;
    s.close();
    eprintln!("{what}: the workload makes {calls} calls; sweeping a refusal over each");
    assert!(calls >= 3, "the workload makes {what} calls");
    let surplus = kernel_surplus(maps);
    let mut failures = 0;
    let mut degraded = 0;
    for n in 0..=calls {
        trim();
        fail_after(call, Some(n));
        // Creating the scope needs metadata too: a refusal there is a clean `None`.
        let Some(s) = Scope::root().try_child("fault-sweep-n") else {
            fail_after(call, None);
            assert_eq!(
                call,
                OsCall::Map,
                "n = {n}: only mmap refusals can refuse a scope"
            );
            continue;
        };
        let (got, refused) = run(&s, reqs);
        let live: u64 = got
            .iter()
            // SAFETY: live blocks of ours.
            .map(|&(p, _)| unsafe { usable_size(p) } as u64)
            .sum();
        let st = s.stats();
        let ok = st.bytes == live
            && st.objects == got.len() as u64
            // Nothing is charged for a refusal: beyond the live bytes, only this thread's stock
            // (at most 128 KiB) is charged.
            && st.charged_bytes >= st.bytes
            && st.charged_bytes - st.bytes <= 128 << 10
            && st.limit_hits == 0
            && got.len() + refused == reqs.len()
            // Only mmap refusals may refuse an allocation; munmap and madvise ones degrade.
            && (call == OsCall::Map || refused == 0)
            && got.iter().all(|&(p, l)| {
                // SAFETY: each block holds l.size() bytes written by run().
                unsafe { core::slice::from_raw_parts(p, l.size()) }
                    .iter()
                    .all(|&b| b == 0x5a)
            });
        if !ok {
            eprintln!(
                "{what}, n = {n}: refused {refused}, {} given; {st:?}, live {live}",
                got.len()
            );
            failures += 1;
        }
        if n == 0 && call == OsCall::Map {
            assert!(
                refused > 0,
                "with every mapping refused, allocations were refused"
            );
        }
        free_all(got);
        let st = s.stats();
        assert_eq!(
            (st.bytes, st.objects),
            (0, 0),
            "{what}, n = {n}: freed, {st:?}"
        );
        s.close();
        // Still refused: the trim gives back what it can and keeps count of the rest.
        trim();
        if mapped_census().deferred > 0 {
            degraded += 1;
        }
        let mut check = census_exact(&format!("{what} refused, after trim"), n);
        fail_after(call, None);
        trim();
        check = check.and_then(|()| census_exact(&format!("{what} allowed again, after trim"), n));
        let c = mapped_census();
        if c.deferred != 0 {
            check = Err(format!(
                "{what}, n = {n}: unmaps still deferred after trim: {c:?}"
            ));
        }
        let now = kernel_surplus(maps);
        if now != surplus {
            check = Err(format!(
                "{what}, n = {n}: the kernel maps {} B more than the allocator counts (was {})",
                now, surplus
            ));
        }
        if let Err(e) = check {
            eprintln!("{e}");
            failures += 1;
        }
    }
    if call == OsCall::Unmap {
        assert!(degraded > 0, "some refused munmap left memory to retry");
    }
    failures
}

#[test]
fn every_refused_os_call_of_a_workload_ends_cleanly_with_exact_figures_and_nothing_lost() {
    set_decay_ms(0);
    let reqs = requests();
    let mut maps = String::with_capacity(1 << 20);
    let mut failures = 0;
    for call in [OsCall::Map, OsCall::Unmap, OsCall::Purge] {
        failures += sweep(call, &reqs, &mut maps);
    }
    assert_eq!(failures, 0, "some refusals went wrong (see above)");
}

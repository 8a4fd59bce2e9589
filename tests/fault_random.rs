//! The OS saying no at random: each `mmap`, `munmap` and `madvise` fails with a probability
//! drawn per round, from a seeded generator, while a workload allocates (small, large and huge
//! objects, zeroed ones, reallocations) and frees in a scope. After every refused allocation
//! the scope's figures are unchanged (nothing charged for it); every so often and at the end of
//! a round they are exact; a refused realloc leaves the old block intact; a zeroed block reads
//! zero; and once the OS agrees again a `trim` leaves no mapped byte unaccounted for (the census
//! and the kernel's `/proc/self/maps` agree with the allocator's count).
//!
//! Sized by `SCOPEALLOC_FAULT_ROUNDS` (default 6) and `SCOPEALLOC_FAULT_OPS` (operations per
//! round, default 3000); `SCOPEALLOC_FAULT_SEED` replays a printed seed. The failure hook is
//! process-wide, so this file holds a single test.

mod common;

use common::{seed_from_env, Rng};
use scopealloc::testing::{fail_randomly, mapped_census, OsCall};
use scopealloc::{set_decay_ms, trim, usable_size, Scope, ScopeAlloc};
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

const CALLS: [OsCall; 3] = [OsCall::Map, OsCall::Unmap, OsCall::Purge];

/// Disarms the hook even if the test panics.
struct HookOff;

impl Drop for HookOff {
    fn drop(&mut self) {
        for c in CALLS {
            fail_randomly(c, 0, 0);
        }
    }
}

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Total bytes the kernel maps for this process, minus the allocator's own count.
fn kernel_surplus(buf: &mut String) -> isize {
    use std::io::Read;
    buf.clear();
    std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_string(buf))
        .expect("read /proc/self/maps");
    let ours = mapped_census().mapped;
    let kernel: usize = buf
        .lines()
        .filter_map(|l| l.split(' ').next()?.split_once('-'))
        .map(|(a, b)| usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap())
        .sum();
    kernel as isize - ours as isize
}

/// A live block: where, its layout, the byte it is filled with.
struct Block {
    p: *mut u8,
    l: Layout,
    fill: u8,
}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(100) {
        0..=79 => rng.range(1, 4096),
        80..=95 => rng.range(32 << 10, 1 << 20),
        _ => rng.range(2 << 20, 6 << 20),
    };
    let align = [8, 16, 64, 4096][rng.below(4)];
    Layout::from_size_align(size, align).unwrap()
}

fn holds(b: &Block, len: usize) -> bool {
    // SAFETY: the block holds at least `len` bytes written with `fill`.
    unsafe { core::slice::from_raw_parts(b.p, len) }
        .iter()
        .all(|&x| x == b.fill)
}

/// One round: the workload with the given chances of refusal; returns what went wrong.
fn round(seed: u64, ops: usize, maps: &mut String) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut errors = Vec::new();
    let mut live: Vec<Block> = Vec::with_capacity(ops);
    let s = Scope::root().child("fault-random");
    let surplus = kernel_surplus(maps);
    // mmap always has a chance to fail; munmap and madvise sometimes none.
    let chances: Vec<u32> = CALLS
        .iter()
        .enumerate()
        .map(|(i, _)| [0, 1_000, 20_000, 100_000, 300_000][rng.range(usize::from(i == 0), 4)])
        .collect();
    let mut most_deferred = 0;
    let (mut refused, mut given) = (0usize, 0usize);
    let mut expected: u64 = 0;
    {
        let _g = s.enter();
        for (c, &p) in CALLS.iter().zip(&chances) {
            fail_randomly(*c, seed, p);
        }
        for op in 0..ops {
            let refused_before = refused;
            let pick = rng.below(100);
            if pick < 35 && !live.is_empty() {
                let b = live.swap_remove(rng.below(live.len()));
                if !holds(&b, b.l.size()) {
                    errors.push(format!("op {op}: a block lost its contents"));
                }
                // SAFETY: usable_size of a live block of ours.
                expected -= unsafe { usable_size(b.p) } as u64;
                // SAFETY: allocated with this layout.
                unsafe { GLOBAL.dealloc(b.p, b.l) };
            } else if pick < 45 && !live.is_empty() {
                let i = rng.below(live.len());
                let new_size = random_layout(&mut rng).size();
                let b = &mut live[i];
                // SAFETY: a live block of ours.
                let old_usable = unsafe { usable_size(b.p) } as u64;
                // SAFETY: a live block with this layout; new_size is non-zero.
                let q = unsafe { GLOBAL.realloc(b.p, b.l, new_size) };
                if q.is_null() {
                    refused += 1;
                    if !holds(b, b.l.size()) {
                        errors.push(format!("op {op}: a refused realloc changed the block"));
                    }
                } else {
                    let kept = b.l.size().min(new_size);
                    b.p = q;
                    b.l = Layout::from_size_align(new_size, b.l.align()).unwrap();
                    if !holds(b, kept) {
                        errors.push(format!("op {op}: realloc lost the contents"));
                    }
                    // SAFETY: q has new_size bytes.
                    unsafe { q.write_bytes(b.fill, new_size) };
                    // SAFETY: a live block of ours.
                    expected = expected - old_usable + unsafe { usable_size(q) } as u64;
                }
            } else {
                let l = random_layout(&mut rng);
                let zeroed = rng.chance(20);
                // SAFETY: a non-zero layout.
                let p = unsafe {
                    if zeroed {
                        GLOBAL.alloc_zeroed(l)
                    } else {
                        GLOBAL.alloc(l)
                    }
                };
                if p.is_null() {
                    refused += 1;
                } else {
                    given += 1;
                    // SAFETY: p has l.size() bytes.
                    let bytes = unsafe { core::slice::from_raw_parts(p, l.size()) };
                    if zeroed && bytes.iter().any(|&x| x != 0) {
                        errors.push(format!("op {op}: a zeroed block of {l:?} is not zero"));
                    }
                    let fill = (op % 251) as u8 + 1;
                    // SAFETY: p has l.size() bytes.
                    unsafe { p.write_bytes(fill, l.size()) };
                    // SAFETY: a live block of ours.
                    expected += unsafe { usable_size(p) } as u64;
                    live.push(Block { p, l, fill });
                }
            }
            most_deferred = most_deferred.max(mapped_census().deferred);
            // Right after each refusal (nothing may have been charged for it), and now and then.
            if refused != refused_before || op % 256 == 0 {
                let st = s.stats();
                if st.bytes != expected || st.objects != live.len() as u64 {
                    errors.push(format!(
                        "op {op}: figures {st:?}, expected {expected} B in {} objects",
                        live.len()
                    ));
                }
            }
        }
    }
    for b in live.drain(..) {
        // SAFETY: allocated with this layout.
        unsafe { GLOBAL.dealloc(b.p, b.l) };
    }
    let st = s.stats();
    if (st.bytes, st.objects) != (0, 0) {
        errors.push(format!("all freed, but {st:?}"));
    }
    s.close();
    trim();
    for c in CALLS {
        fail_randomly(c, 0, 0);
    }
    trim();
    let c = mapped_census();
    if c.mapped != c.held || c.deferred != 0 {
        errors.push(format!("mapped bytes unaccounted for after trim: {c:?}"));
    }
    let now = kernel_surplus(maps);
    if now != surplus {
        errors.push(format!(
            "the kernel maps {now} B more than the allocator counts (was {surplus})"
        ));
    }
    eprintln!(
        "  seed {seed}: chances per million (mmap, munmap, madvise) {chances:?}: {given} given, \
         {refused} refused, at most {most_deferred} B waiting for munmap, {} errors",
        errors.len()
    );
    errors
}

#[test]
fn random_os_refusals_charge_nothing_keep_figures_exact_and_lose_no_memory() {
    let _off = HookOff;
    set_decay_ms(0);
    let seed = seed_from_env("SCOPEALLOC_FAULT_SEED");
    let rounds = env_or("SCOPEALLOC_FAULT_ROUNDS", 6);
    let ops = env_or("SCOPEALLOC_FAULT_OPS", 3000);
    eprintln!(
        "fault_random: seed = {seed} (SCOPEALLOC_FAULT_SEED={seed} replays it), {rounds} rounds \
         of {ops} operations"
    );
    let mut maps = String::with_capacity(1 << 20);
    trim();
    let mut all = Vec::new();
    for r in 0..rounds as u64 {
        let errors = round(seed.wrapping_add(r), ops, &mut maps);
        all.extend(errors.into_iter().map(|e| format!("round {r}: {e}")));
    }
    for e in all.iter().take(20) {
        eprintln!("{e}");
    }
    assert!(
        all.is_empty(),
        "seed {seed}: {} errors (see above)",
        all.len()
    );
}

//! Real Rust workloads on scopealloc installed as the global allocator: collections, raw
//! allocations of every alignment up to 4 MiB, realloc growth and shrink, zeroed memory after
//! dirty reuse, zero-sized requests, usable sizes, cross-thread drops, many threads, fork while
//! another thread allocates, and refusal (null, never abort) when the OS refuses memory.
//!
//! Every test takes `SERIAL` for reading; the OOM test takes it for writing, because while the
//! OS-refusal hook is armed any other allocation in the process could fail.

mod common;
use common::{pattern_table, Rng, CHUNK, PERIOD};
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard};
use std::thread;
use std::time::{Duration, Instant};

use scopealloc::usable_size;

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

static SERIAL: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SERIAL.read().unwrap_or_else(|e| e.into_inner())
}

/// Where the pattern of object `tag` starts in the table.
fn pattern_offset(tag: u64) -> usize {
    (tag.wrapping_mul(0x9E37_79B9) % PERIOD as u64) as usize
}

/// Byte `i` of the pattern of object `tag`.
fn pattern(tag: u64, i: usize) -> u8 {
    pattern_table()[(pattern_offset(tag) + i) % PERIOD]
}

/// Fills `len` bytes at `p` with the pattern of `tag` (memcpy-speed, even in a debug build).
///
/// # Safety
/// `p..p+len` must be writable.
unsafe fn fill(p: *mut u8, len: usize, tag: u64) {
    let table = pattern_table();
    let mut i = 0;
    while i < len {
        let n = CHUNK.min(len - i);
        let from = (pattern_offset(tag) + i) % PERIOD;
        // SAFETY: i + n <= len, inside the caller's range; the table has from + n bytes.
        unsafe { std::ptr::copy_nonoverlapping(table[from..from + n].as_ptr(), p.add(i), n) };
        i += n;
    }
}

/// Panics unless the `len` bytes at `p` hold the pattern of `tag`.
///
/// # Safety
/// `p..p+len` must be readable.
unsafe fn check(p: *const u8, len: usize, tag: u64, what: &str) {
    let table = pattern_table();
    let mut i = 0;
    while i < len {
        let n = CHUNK.min(len - i);
        let from = (pattern_offset(tag) + i) % PERIOD;
        // SAFETY: i + n <= len, inside the caller's readable range.
        let got = unsafe { std::slice::from_raw_parts(p.add(i), n) };
        let want = &table[from..from + n];
        if got != want {
            let k = (0..n).find(|&k| got[k] != want[k]).unwrap_or(0);
            panic!(
                "{what}: byte {} of {len} at {p:p} (tag {tag}) is {:#x}, expected {:#x}",
                i + k,
                got[k],
                want[k]
            );
        }
        i += n;
    }
}

/// Index of the first non-zero byte, if any (memcmp-speed).
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut base = 0;
    for chunk in bytes.chunks(CHUNK) {
        if chunk != &ZEROS[..chunk.len()] {
            return chunk.iter().position(|&b| b != 0).map(|k| base + k);
        }
        base += chunk.len();
    }
    None
}

#[test]
fn vec_growth_keeps_elements_through_every_size_class() {
    let _s = shared();
    let mut v: Vec<u64> = Vec::new();
    for i in 0..300_000u64 {
        v.push(i.wrapping_mul(0x9E37_79B9));
    }
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, (i as u64).wrapping_mul(0x9E37_79B9));
    }
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v.capacity(), 10);
    assert_eq!(v[9], 9u64.wrapping_mul(0x9E37_79B9));

    let mut nested: Vec<Vec<u32>> = (0..2000).map(|i| (0..i % 97).collect()).collect();
    nested.retain(|x| x.len() % 2 == 0);
    for x in &nested {
        assert!(x.iter().enumerate().all(|(i, &y)| y as usize == i));
    }
}

#[test]
fn strings_build_format_and_concatenate() {
    let _s = shared();
    let mut s = String::new();
    for i in 0..20_000 {
        s.push_str(&i.to_string());
        s.push(',');
    }
    let parts: Vec<&str> = s.split(',').filter(|p| !p.is_empty()).collect();
    assert_eq!(parts.len(), 20_000);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.parse::<usize>().unwrap(), i);
    }
    let words: Vec<String> = (0..5000)
        .map(|i| format!("word-{i:>width$}", width = i % 40))
        .collect();
    let joined = words.join(" ");
    assert_eq!(
        joined.split(' ').filter(|w| w.starts_with("word-")).count(),
        5000
    );
    let upper = joined.to_uppercase();
    assert_eq!(upper.len(), joined.len());
}

#[test]
fn hashmap_insert_lookup_remove_with_boxed_values() {
    let _s = shared();
    let mut m: HashMap<u64, Box<[u8]>> = HashMap::new();
    let mut rng = Rng(1);
    for k in 0..50_000u64 {
        let len = rng.range(0, 300);
        m.insert(k, (0..len).map(|i| pattern(k, i)).collect());
    }
    for k in (0..50_000u64).step_by(3) {
        m.remove(&k);
    }
    for k in 0..50_000u64 {
        match m.get(&k) {
            Some(v) => {
                assert_ne!(k % 3, 0);
                assert!(v.iter().enumerate().all(|(i, &b)| b == pattern(k, i)));
            }
            None => assert_eq!(k % 3, 0),
        }
    }
    m.shrink_to_fit();
    assert_eq!(m.len(), 50_000 - 50_000usize.div_ceil(3));
}

#[test]
fn btreemap_of_strings_survives_churn() {
    let _s = shared();
    let mut m: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    let mut rng = Rng(2);
    for round in 0..5 {
        for _ in 0..20_000 {
            let k = rng.range(0, 30_000);
            m.insert(format!("key{k:06}"), vec![k as u16; k % 50]);
        }
        let doomed: Vec<String> = m
            .keys()
            .filter(|k| k.ends_with(&round.to_string()))
            .cloned()
            .collect();
        for k in doomed {
            m.remove(&k);
        }
    }
    for (k, v) in &m {
        let n: usize = k[3..].parse().unwrap();
        assert_eq!(v.len(), n % 50);
        assert!(v.iter().all(|&x| x == n as u16));
    }
}

#[test]
fn boxed_slices_of_random_sizes_keep_contents() {
    let _s = shared();
    let mut rng = Rng(3);
    let mut boxes: Vec<(u64, Box<[u8]>)> = Vec::new();
    let check_box = |tag: u64, b: &[u8]| {
        // SAFETY: the slice's bytes are readable.
        unsafe { check(b.as_ptr(), b.len(), tag, "boxed slice") }
    };
    for tag in 0..3000u64 {
        let len = match rng.range(0, 99) {
            0..=9 => rng.range(0, 16),
            10..=59 => rng.range(17, 1024),
            60..=89 => rng.range(1025, 64 * KIB),
            90..=98 => rng.range(64 * KIB, 1024 * KIB),
            _ => rng.range(2 * MIB, 5 * MIB),
        };
        let mut b = vec![0u8; len].into_boxed_slice();
        // SAFETY: the slice's bytes are writable.
        unsafe { fill(b.as_mut_ptr(), len, tag) };
        boxes.push((tag, b));
        if tag % 2 == 0 {
            let victim = rng.range(0, boxes.len() - 1);
            let (t, b) = boxes.swap_remove(victim);
            check_box(t, &b);
        }
    }
    for (t, b) in &boxes {
        check_box(*t, b);
    }
}

/// Every power-of-two alignment from 1 B to 4 MiB, including the page size and 2 MiB.
fn alignments() -> impl Iterator<Item = usize> {
    (0..=22).map(|s| 1usize << s)
}

#[test]
fn raw_allocations_of_every_alignment_are_aligned_and_keep_contents() {
    let _s = shared();
    let mut rng = Rng(4);
    let mut live: Vec<(usize, Layout, u64)> = Vec::new();
    let mut tag = 0u64;
    for align in alignments() {
        for size in [
            1,
            7,
            8,
            63,
            64,
            100,
            4096,
            5000,
            70_000,
            2 * MIB,
            3 * MIB + 5,
        ] {
            for _ in 0..2 {
                tag += 1;
                let size = size + rng.range(0, 3);
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size.
                let p = black_box(unsafe { alloc(layout) });
                assert!(!p.is_null(), "alloc({size}, align {align}) returned null");
                assert_eq!(
                    p as usize % align,
                    0,
                    "alloc({size}, align {align}) = {p:p} is misaligned"
                );
                // SAFETY: p is a live block of at least `size` bytes.
                unsafe { fill(p, size, tag) };
                live.push((p as usize, layout, tag));
            }
        }
        // Free a random half now, so later alignments reuse freed memory.
        for _ in 0..live.len() / 2 {
            let (p, layout, t) = live.swap_remove(rng.range(0, live.len() - 1));
            // SAFETY: p is live, with this layout, and freed once.
            unsafe {
                check(p as *const u8, layout.size(), t, "aligned alloc");
                dealloc(p as *mut u8, layout);
            }
        }
    }
    for (p, layout, t) in live {
        // SAFETY: as above.
        unsafe {
            check(p as *const u8, layout.size(), t, "aligned alloc");
            dealloc(p as *mut u8, layout);
        }
    }
}

#[test]
fn realloc_growth_and_shrink_preserve_contents() {
    let _s = shared();
    // Steps crossing small classes, large page spans and huge mappings, up and back down.
    let steps = [
        1,
        8,
        9,
        16,
        100,
        128,
        129,
        1000,
        4096,
        4097,
        32 * KIB,
        32 * KIB + 1,
        100 * KIB,
        MIB,
        2 * MIB,
        2 * MIB + 1,
        6 * MIB,
        20 * MIB,
        6 * MIB,
        2 * MIB + 1,
        2 * MIB,
        300 * KIB,
        64 * KIB,
        5000,
        4096,
        300,
        129,
        17,
        3,
        1,
    ];
    for align in [8usize, 16, 64, 4096] {
        let tag = align as u64;
        let mut layout = Layout::from_size_align(steps[0], align).unwrap();
        // SAFETY: non-zero size.
        let mut p = black_box(unsafe { alloc(layout) });
        assert!(!p.is_null());
        // SAFETY: p has layout.size() bytes.
        unsafe { fill(p, layout.size(), tag) };
        for &new_size in &steps[1..] {
            let old = layout.size();
            // SAFETY: p is live with `layout`; new_size is non-zero and fits isize.
            let q = unsafe { realloc(p, layout, new_size) };
            assert!(
                !q.is_null(),
                "realloc {old} -> {new_size} (align {align}) returned null"
            );
            assert_eq!(
                q as usize % align,
                0,
                "realloc {old} -> {new_size} lost alignment {align}"
            );
            let kept = old.min(new_size);
            // SAFETY: q has at least new_size >= kept bytes.
            unsafe {
                check(
                    q,
                    kept,
                    tag,
                    &format!("realloc {old} -> {new_size} align {align}"),
                );
                fill(q, new_size, tag);
            }
            p = q;
            layout = Layout::from_size_align(new_size, align).unwrap();
        }
        // SAFETY: p is live with `layout`.
        unsafe { dealloc(p, layout) };
    }

    // Many interleaved vectors growing and shrinking at once (realloc in place is impossible
    // when neighbours are live).
    let mut vs: Vec<Vec<u32>> = (0..64).map(|_| Vec::new()).collect();
    let mut rng = Rng(5);
    for round in 0..4000u32 {
        let i = rng.range(0, vs.len() - 1);
        if rng.range(0, 4) == 0 {
            let keep = vs[i].len() / 3;
            vs[i].truncate(keep);
            vs[i].shrink_to_fit();
        } else {
            let n = rng.range(1, 400);
            let base = vs[i].len() as u32;
            vs[i].extend((0..n as u32).map(|k| base + k));
        }
        if round % 500 == 0 {
            for v in &vs {
                assert!(v.iter().enumerate().all(|(k, &x)| x as usize == k));
            }
        }
    }
    for v in &vs {
        assert!(v.iter().enumerate().all(|(k, &x)| x as usize == k));
    }
}

#[test]
fn alloc_zeroed_after_dirty_reuse_returns_only_zeros() {
    let _s = shared();
    let sizes = [
        1,
        8,
        24,
        64,
        100,
        1000,
        4096,
        10_000,
        32 * KIB,
        40 * KIB,
        200 * KIB,
        MIB,
        2 * MIB,
        3 * MIB,
        8 * MIB,
    ];
    for &size in &sizes {
        for align in [8usize, 4096] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let (batch, rounds) = if size >= MIB { (3, 6) } else { (16, 20) };
            for round in 0..rounds {
                let mut ptrs = Vec::with_capacity(batch);
                for _ in 0..batch {
                    // SAFETY: non-zero size.
                    let p = black_box(unsafe { alloc(layout) });
                    assert!(!p.is_null());
                    // SAFETY: usable_size bytes are ours; dirty them all, slack included.
                    unsafe { p.write_bytes(0xAA, usable_size(p).max(size)) };
                    // The dirty bytes must reach memory: no dead-store elimination before free.
                    ptrs.push(black_box(p));
                }
                for p in ptrs.drain(..) {
                    // SAFETY: live block with this layout.
                    unsafe { dealloc(p, layout) };
                }
                for _ in 0..batch {
                    // SAFETY: non-zero size.
                    let p = black_box(unsafe { alloc_zeroed(layout) });
                    assert!(!p.is_null());
                    // SAFETY: p has `size` readable bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                    if let Some(bad) = first_nonzero(bytes) {
                        panic!(
                            "alloc_zeroed({size}, align {align}) round {round}: byte {bad} is {:#x}",
                            bytes[bad]
                        );
                    }
                    ptrs.push(p);
                }
                for p in ptrs.drain(..) {
                    // SAFETY: live block with this layout.
                    unsafe { dealloc(p, layout) };
                }
            }
        }
    }
}

#[test]
fn zero_sized_requests_give_unique_pointers_and_zst_collections_work() {
    let _s = shared();
    #[derive(Debug, PartialEq, Clone, Copy)]
    struct Nothing;
    let mut v: Vec<Nothing> = Vec::new();
    for _ in 0..1_000_000 {
        v.push(Nothing);
    }
    assert_eq!(v.len(), 1_000_000);
    let b: Box<[()]> = vec![(); 77].into_boxed_slice();
    assert_eq!(b.len(), 77);
    let empty: Box<[u8]> = Vec::new().into_boxed_slice();
    assert!(empty.is_empty());

    // The C-facing entry point gives a distinct, 16-byte aligned, freeable pointer for size 0.
    let ptrs: Vec<usize> = (0..1000)
        // SAFETY: malloc(0) has no precondition.
        .map(|_| unsafe { scopealloc::raw::malloc(0) } as usize)
        .collect();
    let mut sorted = ptrs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        ptrs.len(),
        "malloc(0) returned the same pointer twice"
    );
    for &p in &ptrs {
        assert_ne!(p, 0, "malloc(0) returned null");
        assert_eq!(p % 16, 0, "malloc(0) = {p:#x} is not 16-byte aligned");
        // SAFETY: p came from raw::malloc and is freed once.
        unsafe { scopealloc::raw::free(p as *mut u8) };
    }
}

#[test]
fn usable_size_is_at_least_the_request_and_fully_writable() {
    let _s = shared();
    let mut rng = Rng(6);
    let mut sizes: Vec<usize> = (1..=600).collect();
    sizes.extend((0..2000).map(|_| rng.range(600, 3 * MIB)));
    for (n, &size) in sizes.iter().enumerate() {
        let align = 1usize << rng.range(0, 13);
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let p = black_box(unsafe { alloc(layout) });
        assert!(!p.is_null());
        // SAFETY: p is a live block of this allocator.
        let usable = unsafe { usable_size(p) };
        assert!(
            usable >= size,
            "usable_size {usable} < requested {size} (align {align})"
        );
        // The whole usable size belongs to the caller: write it all, check it all.
        // SAFETY: p..p+usable is ours.
        unsafe {
            fill(p, usable, n as u64);
            check(p, usable, n as u64, "usable tail");
            dealloc(p, layout);
        }
    }
}

/// What a producer thread sends: a few kinds of heap objects with known contents.
enum Msg {
    Bytes(u64, Vec<u8>),
    Text(u64, String),
    Boxed(u64, Box<[u64]>),
}

#[test]
fn objects_dropped_on_other_threads_after_channel_handoff() {
    let _s = shared();
    let (tx, rx) = mpsc::channel::<Msg>();
    let producers: Vec<_> = (0..4u64)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng(100 + t);
                for i in 0..20_000u64 {
                    let tag = t << 32 | i;
                    let msg = match i % 3 {
                        0 => Msg::Bytes(
                            tag,
                            (0..rng.range(1, 2000)).map(|k| pattern(tag, k)).collect(),
                        ),
                        1 => Msg::Text(tag, format!("{tag}:{}", "x".repeat(rng.range(0, 300)))),
                        _ => Msg::Boxed(tag, vec![tag; rng.range(1, 700)].into_boxed_slice()),
                    };
                    tx.send(msg).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let (ctx, crx) = mpsc::channel::<Msg>();
            let h = thread::spawn(move || {
                let mut n = 0u64;
                for msg in crx {
                    match msg {
                        Msg::Bytes(tag, v) => {
                            assert!(v.iter().enumerate().all(|(k, &b)| b == pattern(tag, k)))
                        }
                        Msg::Text(tag, s) => assert!(s.starts_with(&format!("{tag}:"))),
                        Msg::Boxed(tag, b) => assert!(b.iter().all(|&x| x == tag)),
                    }
                    n += 1;
                }
                n
            });
            (ctx, h)
        })
        .collect();
    // The main thread routes each message to a consumer, so every object is allocated on one
    // thread and dropped on another.
    for (i, msg) in rx.into_iter().enumerate() {
        consumers[i % 2].0.send(msg).unwrap();
    }
    for p in producers {
        p.join().unwrap();
    }
    let mut total = 0;
    for (ctx, h) in consumers {
        drop(ctx);
        total += h.join().unwrap();
    }
    assert_eq!(total, 4 * 20_000);
}

#[test]
fn many_threads_run_collection_workloads_at_once() {
    let _s = shared();
    let handles: Vec<_> = (0..64u64)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = Rng(1000 + t);
                let mut m: HashMap<u64, Vec<u8>> = HashMap::new();
                let mut b: BTreeMap<u64, String> = BTreeMap::new();
                // The same operations on plain arrays: the length stored under each key.
                let mut model: [Option<usize>; 500] = [None; 500];
                for i in 0..3000u64 {
                    let k = rng.next() % 500;
                    let len = rng.range(0, 5000);
                    m.insert(k, vec![(k ^ t) as u8; len]);
                    model[k as usize] = Some(len);
                    b.insert(i % 700, format!("{t}-{i}"));
                    if i % 7 == 0 {
                        let gone = rng.next() % 500;
                        m.remove(&gone);
                        model[gone as usize] = None;
                    }
                }
                for (k, v) in &m {
                    assert_eq!(Some(v.len()), model[*k as usize], "thread {t} key {k}");
                    assert!(v.iter().all(|&x| x == (k ^ t) as u8));
                }
                assert_eq!(
                    m.len(),
                    model.iter().flatten().count(),
                    "thread {t}: keys lost"
                );
                assert_eq!(b.len(), 700, "thread {t}");
                for (k, v) in &b {
                    // The last insert under key k was at the largest i < 3000 with i % 700 == k.
                    let last = (3000 - 1 - k) / 700 * 700 + k;
                    assert_eq!(*v, format!("{t}-{last}"), "thread {t} key {k}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn forked_child_allocates_while_parent_thread_was_allocating() {
    let _s = shared();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let busy = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        thread::spawn(move || {
            let mut rng = Rng(7);
            let mut live: Vec<Vec<u8>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                live.push(vec![1u8; rng.range(1, 300 * KIB)]);
                if live.len() > 64 {
                    live.swap_remove(rng.range(0, 63));
                }
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut overlapped = 0;
    for attempt in 0..20 {
        // The busy thread is allocating right now, so the fork lands among its allocations.
        wait_until_moves(&rounds, "the busy thread before a fork");
        let before = rounds.load(Ordering::SeqCst);
        // SAFETY: the child only calls the allocator, reads and writes its own memory, and
        // leaves with _exit (no destructors, no stdio, no std locks).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid != 0 && rounds.load(Ordering::SeqCst) != before {
            overlapped += 1;
        }
        if pid == 0 {
            let mut ok = true;
            for i in 0..2000usize {
                let size = 1 + (i * 37) % (80 * KIB);
                let layout = Layout::from_size_align(size, 16).unwrap();
                // SAFETY: non-zero size; freed below with the same layout.
                let p = black_box(unsafe { alloc(layout) });
                if p.is_null() {
                    ok = false;
                    break;
                }
                // SAFETY: p has `size` bytes.
                unsafe {
                    p.write_bytes(i as u8, size);
                    ok &= p.add(size - 1).read() == i as u8;
                    dealloc(p, layout);
                }
            }
            let big = Layout::from_size_align(5 * MIB, 4096).unwrap();
            // SAFETY: non-zero size; freed at once.
            unsafe {
                let p = black_box(alloc(big));
                ok &= !p.is_null();
                if !p.is_null() {
                    p.write_bytes(3, big.size());
                    dealloc(p, big);
                }
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        // Parent: a child deadlocked on an allocator lock never exits.
        let status = wait_child(pid, &format!("fork attempt {attempt}"));
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "fork attempt {attempt}: child ended with status {status:#x}"
        );
        // The parent's allocating thread goes on after the fork (no lock left held).
        wait_until_moves(&rounds, "the busy thread after a fork");
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    assert!(
        overlapped > 0,
        "the busy thread allocated across none of the 20 forks"
    );
}

/// Waits (without a timed assertion: 60 s is only a hang detector) until `counter` changes.
fn wait_until_moves(counter: &AtomicU64, what: &str) {
    let start = counter.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::SeqCst) == start {
        assert!(Instant::now() < deadline, "{what} made no progress in 60 s");
        thread::yield_now();
    }
}

/// Waits up to 30 s for child `pid`; kills it and panics if it hangs (a lock held across fork).
fn wait_child(pid: libc::pid_t, what: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = 0;
    loop {
        // SAFETY: pid is our child; status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return status;
        }
        assert_eq!(r, 0, "waitpid failed");
        if Instant::now() > deadline {
            // SAFETY: pid is our child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("{what}: child hung (allocator lock held across fork?)");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Sizes of the objects the forked child frees: small classes, a large span, a huge mapping.
const FORK_KEPT_SIZES: &[usize] = &[24, 700, 5000, 40 * KIB, 300 * KIB, 3 * MIB];

/// Allocates one object per size of `FORK_KEPT_SIZES` in `scope`; (address, size) pairs.
fn alloc_kept(scope: &scopealloc::Scope) -> Vec<(usize, usize)> {
    let mut v = Vec::with_capacity(FORK_KEPT_SIZES.len());
    scope.run(|| {
        for &size in FORK_KEPT_SIZES {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) };
            assert!(!p.is_null());
            // SAFETY: p has size bytes.
            unsafe { fill(p, size, size as u64) };
            v.push((p as usize, size));
        }
    });
    v
}

/// The forked child's work: checks the parent's figures, uses scopes, frees the parent's
/// objects. Returns 0, or the number of the first check that failed. Allocates only through
/// the allocator; no stdio, no std locks, no panics on the paths it takes.
fn fork_child_checks(kept: &scopealloc::Scope, objs: &[(usize, usize)], expect: (u64, u64)) -> i32 {
    let usable = |p: usize| unsafe { usable_size(p as *const u8) } as u64;
    let st = kept.stats();
    if (st.bytes, st.objects) != expect {
        return 1;
    }
    for &(p, size) in objs {
        // SAFETY: p is live with size bytes, filled with its pattern.
        if !unsafe { check_pattern(p as *const u8, size, size as u64) } {
            return 2;
        }
    }
    // A new scope: create, enter, allocate, stats.
    let child = kept.child("forked-child");
    let mut mine = [(0usize, 0usize); 8];
    let sizes = [16usize, 200, 3000, 20 * KIB, 100 * KIB, 5 * MIB, 64, 1];
    {
        let _g = child.enter();
        for (slot, &size) in mine.iter_mut().zip(&sizes) {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) };
            if p.is_null() {
                return 3;
            }
            // SAFETY: p has size bytes.
            unsafe { p.write_bytes(0x6B, size) };
            *slot = (p as usize, size);
        }
    }
    let mine_bytes: u64 = mine.iter().map(|&(p, _)| usable(p)).sum();
    let cs = child.stats();
    if (cs.bytes, cs.objects, cs.allocs) != (mine_bytes, 8, 8) {
        return 4;
    }
    let st = kept.stats();
    if (st.bytes, st.objects) != (expect.0 + mine_bytes, expect.1 + 8) {
        return 5;
    }
    // Free the parent's objects (some from slabs of threads that do not exist here).
    for &(p, size) in objs {
        // SAFETY: live, this layout, freed once (in this process).
        unsafe { dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
    }
    let st = kept.stats();
    if (st.bytes, st.objects, st.self_bytes, st.self_objects) != (mine_bytes, 8, 0, 0) {
        return 6;
    }
    // Close with live objects: they move to the parent; freeing them empties it.
    child.close();
    let st = kept.stats();
    if !child.is_closed() || (st.self_bytes, st.self_objects) != (mine_bytes, 8) {
        return 7;
    }
    for &(p, size) in &mine {
        // SAFETY: p has size bytes, written above.
        if unsafe { *(p as *const u8) } != 0x6B || unsafe { *((p + size - 1) as *const u8) } != 0x6B
        {
            return 8;
        }
        // SAFETY: live, this layout, freed once.
        unsafe { dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
    }
    let st = kept.stats();
    if (st.bytes, st.objects) != (0, 0) {
        return 9;
    }
    // A limit still works.
    let limited = kept.child("forked-limited");
    limited.set_limit(Some(MIB));
    let refused = limited.run(|| {
        // black_box: LLVM may delete an allocation that is only null-checked and fold the
        // check to "succeeded" (release builds).
        // SAFETY: non-zero size.
        let p =
            black_box(unsafe { alloc(black_box(Layout::from_size_align(2 * MIB, 8).unwrap())) });
        p.is_null()
    });
    if !refused || limited.stats().limit_hits != 1 || limited.stats().bytes != 0 {
        return 10;
    }
    0
}

/// Whether `len` bytes at `p` hold the pattern of `tag`.
unsafe fn check_pattern(p: *const u8, len: usize, tag: u64) -> bool {
    // SAFETY: the caller's range.
    (0..len)
        .step_by(97)
        .chain([len - 1])
        .all(|i| unsafe { *p.add(i) } == pattern(tag, i))
}

#[test]
fn fork_while_threads_allocate_in_and_close_scopes_leaves_the_child_exact_scopes() {
    let _s = shared();
    let seed = common::seed_from_env("FORK_SCOPES_SEED");
    let threads: usize = std::env::var("FORK_SCOPES_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let forks: usize = std::env::var("FORK_SCOPES_FORKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    eprintln!("fork with scopes: FORK_SCOPES_SEED={seed}, {threads} threads, {forks} forks");

    pattern_table(); // built now, in the root scope, not by the first fill inside `kept`
    let kept = scopealloc::Scope::root().child("fork-kept");
    let busy_top = scopealloc::Scope::root().child("fork-busy");
    let mut objs = alloc_kept(&kept);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let (kept_tx, kept_rx) = mpsc::channel();
    let busy: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, progress, kept, top, kept_tx) = (
                stop.clone(),
                progress.clone(),
                kept.clone(),
                busy_top.clone(),
                kept_tx.clone(),
            );
            thread::spawn(move || {
                // Objects of a thread that is alive (and busy) at fork time, freed by the child.
                kept_tx.send(alloc_kept(&kept)).unwrap();
                let mut rng = Rng(seed ^ (t as u64 + 1));
                let mut survivors: Vec<Vec<u8>> = Vec::with_capacity(64);
                while !stop.load(Ordering::Relaxed) {
                    // Create a scope (tree lock), allocate in it (new slabs, large spans: cache
                    // locks), close it with live objects (tree and cache locks), free some.
                    let s = top.child("busy");
                    let inner = s.child("busy-inner");
                    inner.run(|| {
                        for _ in 0..8 {
                            let size = match rng.below(10) {
                                0 => rng.range(32 * KIB, 400 * KIB),
                                _ => rng.range(1, 4 * KIB),
                            };
                            survivors.push(vec![t as u8; size]);
                            progress.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                    if rng.chance(50) {
                        inner.close();
                    }
                    s.close();
                    while survivors.len() > 48 {
                        let v = survivors.swap_remove(rng.below(survivors.len()));
                        assert!(v.iter().all(|&b| b == t as u8));
                    }
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                drop(survivors);
            })
        })
        .collect();
    drop(kept_tx);
    for v in kept_rx.iter().take(threads) {
        objs.extend(v);
    }
    let expect_bytes: u64 = objs
        .iter()
        // SAFETY: live blocks of scopealloc.
        .map(|&(p, _)| unsafe { usable_size(p as *const u8) } as u64)
        .sum();
    let expect = (expect_bytes, objs.len() as u64);
    assert_eq!((kept.stats().bytes, kept.stats().objects), expect);

    let mut overlapped = 0;
    for attempt in 0..forks {
        wait_until_moves(&progress, "the scope threads before a fork");
        let before = progress.load(Ordering::SeqCst);
        // SAFETY: the child runs fork_child_checks, which only uses the allocator and its own
        // memory, and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = fork_child_checks(&kept, &objs, expect);
            // SAFETY: _exit runs no destructors and takes no lock.
            unsafe { libc::_exit(code) };
        }
        if progress.load(Ordering::SeqCst) != before {
            overlapped += 1;
        }
        let status = wait_child(pid, &format!("fork attempt {attempt}"));
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            stop.store(true, Ordering::Relaxed);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "seed {seed}, fork attempt {attempt}: child failed check {} (status {status:#x}; see fork_child_checks)",
            libc::WEXITSTATUS(status)
        );
        wait_until_moves(&progress, "the scope threads after a fork");
    }
    stop.store(true, Ordering::Relaxed);
    for h in busy {
        h.join().expect("a scope thread panicked");
    }
    eprintln!("{overlapped} of {forks} forks overlapped the scope threads' work");
    assert!(
        overlapped > 0,
        "seed {seed}: the scope threads progressed across none of the {forks} forks"
    );
    // The parent's figures are untouched by the children.
    assert_eq!((kept.stats().bytes, kept.stats().objects), expect);
    for (p, size) in objs {
        // SAFETY: live, this layout, freed once.
        unsafe { dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
    }
    assert_eq!((kept.stats().bytes, kept.stats().objects), (0, 0));
}

/// Disarms the OS-refusal hook even if the test panics.
struct HookOff;

impl Drop for HookOff {
    fn drop(&mut self) {
        scopealloc::testing::os_fail_after(None);
    }
}

#[test]
fn huge_allocation_returns_null_when_the_os_refuses_and_succeeds_after() {
    let _alone = SERIAL.write().unwrap_or_else(|e| e.into_inner());
    let layout = Layout::from_size_align(64 * MIB, 8).unwrap();
    let mut v: Vec<u8> = Vec::new();
    // Cached free memory could serve the request without asking the OS: give it all back first.
    scopealloc::trim();

    let hook = HookOff;
    scopealloc::testing::os_fail_after(Some(0));
    // black_box: LLVM may otherwise delete an allocation that is only null-checked and freed,
    // and fold the check to "succeeded".
    // SAFETY: non-zero size.
    let refused = black_box(unsafe { alloc(black_box(layout)) });
    let try_reserve_failed = v.try_reserve_exact(64 * MIB + 1).is_err();
    drop(hook);
    // Only now, with the hook off, may the test allocate for its messages.
    if !refused.is_null() {
        // SAFETY: live block with this layout.
        unsafe { dealloc(refused, layout) };
    }
    assert!(
        refused.is_null(),
        "64 MiB allocation succeeded although every mmap fails"
    );
    assert!(
        try_reserve_failed,
        "Vec::try_reserve of 64 MiB succeeded although every mmap fails"
    );

    // SAFETY: non-zero size.
    let p = black_box(unsafe { alloc(black_box(layout)) });
    assert!(
        !p.is_null(),
        "64 MiB allocation still fails after the hook was disarmed"
    );
    // SAFETY: p has 64 MiB; touch the first and last byte of every page.
    unsafe {
        for off in (0..layout.size()).step_by(4096) {
            p.add(off).write(off as u8);
        }
        p.add(layout.size() - 1).write(0x5A);
        assert_eq!(p.add(layout.size() - 1).read(), 0x5A);
        dealloc(p, layout);
    }
    v.try_reserve_exact(64 * MIB + 1)
        .expect("try_reserve after the hook was disarmed");
    assert!(v.capacity() > 64 * MIB);
}

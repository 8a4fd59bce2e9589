//! Memory goes back to the OS: resident set size (from /proc/self/statm) after a 256 MiB burst
//! and `trim()`, after 10 000 short-lived threads, and cached pages given back by decay alone.
//!
//! RSS is a property of the whole process, so the tests of this binary run one at a time (each
//! holds `ALONE`), and each measures against its own starting point.

mod common;
use common::{rss_bytes as rss, Rng};
use std::alloc::{alloc, dealloc, Layout};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use scopealloc::{global_stats, heap_stats, set_decay_ms, trim};

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const PAGE: usize = 4096;

static ALONE: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// Allocates about `total` bytes in objects of `lo..=hi` bytes and writes every page of each.
fn touched_burst(total: usize, lo: usize, hi: usize, seed: u64) -> Vec<(usize, Layout)> {
    let mut rng = Rng(seed);
    let mut objs = Vec::with_capacity(total / lo + 1);
    let mut sum = 0;
    while sum < total {
        let layout = Layout::from_size_align(rng.range(lo, hi), 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(layout) };
        assert!(
            !p.is_null(),
            "burst allocation of {} bytes failed",
            layout.size()
        );
        for off in (0..layout.size()).step_by(PAGE) {
            // SAFETY: off < size.
            unsafe { p.add(off).write(1) };
        }
        objs.push((p as usize, layout));
        sum += layout.size();
    }
    objs
}

fn free_all(objs: Vec<(usize, Layout)>) {
    for (p, layout) in objs {
        // SAFETY: each object is live with its layout and freed once.
        unsafe { dealloc(p as *mut u8, layout) };
    }
}

#[test]
fn burst_of_256_mib_freed_then_trim_returns_rss_to_start() {
    let _alone = alone();
    trim();
    let start = rss();
    let objs = touched_burst(256 * MIB, 4 * KIB, 256 * KIB, 1);
    let peak = rss();
    // The burst must really have been resident, or the check below proves nothing.
    assert!(
        peak >= start + 200 * MIB,
        "burst did not raise RSS: start {:.1} MiB, peak {:.1} MiB",
        mib(start),
        mib(peak)
    );
    free_all(objs);
    trim();
    let after = rss();
    let stats = heap_stats();
    eprintln!(
        "rss start {:.1} MiB, peak {:.1} MiB, after free+trim {:.1} MiB; {stats:?}",
        mib(start),
        mib(peak),
        mib(after)
    );
    assert!(
        after <= start + 32 * MIB,
        "after free + trim RSS is {:.1} MiB, start was {:.1} MiB (allowed +32 MiB)",
        mib(after),
        mib(start)
    );
}

/// Threads spawned and joined together.
const THREAD_BATCH: usize = 50;
const THREADS: usize = 10_000;

#[test]
fn ten_thousand_short_lived_threads_leave_bounded_rss_and_no_thread_heaps() {
    let _alone = alone();
    trim();
    let start = rss();
    let heaps_before = global_stats().thread_heaps;
    let mut leftovers: Vec<(usize, Vec<u8>)> = Vec::new();
    for batch in 0..THREADS / THREAD_BATCH {
        let handles: Vec<_> = (0..THREAD_BATCH)
            .map(|i| {
                let id = batch * THREAD_BATCH + i;
                thread::spawn(move || {
                    let mut rng = Rng(id as u64);
                    let mut local: Vec<Vec<u8>> = (0..32)
                        .map(|_| vec![id as u8; rng.range(16, 512)])
                        .collect();
                    local.push(vec![1; 4 * KIB]);
                    local.push(vec![2; 20 * KIB]);
                    let (small, big) = local.split_at(32);
                    assert!(small.iter().all(|v| v.iter().all(|&b| b == id as u8)));
                    assert!(big[0].len() == 4 * KIB && big[0].iter().all(|&b| b == 1));
                    assert!(big[1].len() == 20 * KIB && big[1].iter().all(|&b| b == 2));
                    // Keep a few objects for the main thread to free; free the rest here.
                    local.truncate(3);
                    (id, local)
                })
            })
            .collect();
        for h in handles {
            let (id, local) = h.join().expect("churn thread panicked");
            leftovers.extend(local.into_iter().map(|v| (id, v)));
        }
        if batch % 20 == 19 {
            // The main thread frees what dead threads allocated, intact.
            for (id, v) in leftovers.drain(..) {
                assert!(
                    (16..=512).contains(&v.len()) && v.iter().all(|&b| b == id as u8),
                    "an object of exited thread {id} changed: {} bytes",
                    v.len()
                );
            }
        }
    }
    drop(leftovers);
    trim();
    let after = rss();
    let heaps_after = global_stats().thread_heaps;
    eprintln!(
        "rss start {:.1} MiB, after {THREADS} threads + trim {:.1} MiB; thread heaps {heaps_before} -> {heaps_after}; {:?}",
        mib(start),
        mib(after),
        heap_stats()
    );
    assert!(
        after < start + 64 * MIB,
        "RSS grew from {:.1} MiB to {:.1} MiB over {THREADS} short-lived threads",
        mib(start),
        mib(after)
    );
    // Live threads now: the harness's main thread, this test's thread and at most one other test
    // thread waiting for ALONE; the dead ones must have given their heaps back.
    assert!(
        heaps_after <= heaps_before + 2 && heaps_after <= 8,
        "thread heaps: {heaps_before} before, {heaps_after} after {THREADS} threads exited"
    );
}

#[test]
fn decay_returns_cached_pages_without_trim() {
    let _alone = alone();
    set_decay_ms(500);
    trim();
    let objs = touched_burst(64 * MIB, 64 * KIB, 512 * KIB, 3);
    free_all(objs);
    let cached_after_free = heap_stats().cached;
    assert!(
        cached_after_free >= 8 * MIB,
        "freeing a 64 MiB burst left only {cached_after_free} bytes cached: nothing for decay to do"
    );
    // Decay runs on allocator activity: keep allocating a little until half the cached pages
    // went back (60 s is a hang detector, not a timed assertion).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0u64;
    let mut cached_later = heap_stats().cached;
    while cached_later > cached_after_free / 2 {
        assert!(
            Instant::now() < deadline,
            "cached stayed at {cached_later} bytes (from {cached_after_free}) over 60 s of \
             allocator activity with a 500 ms decay ({rounds} rounds)"
        );
        let small: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 16 + i * 61]).collect();
        let medium = vec![7u8; 100 * KIB];
        assert!(small
            .iter()
            .enumerate()
            .all(|(i, v)| v.len() == 16 + i * 61 && v.iter().all(|&b| b == i as u8)));
        assert!(medium.iter().all(|&b| b == 7));
        rounds += 1;
        thread::sleep(Duration::from_millis(20));
        cached_later = heap_stats().cached;
    }
    set_decay_ms(1000);
    eprintln!("cached after free {cached_after_free} B, after {rounds} rounds of activity {cached_later} B");
    assert!(
        rounds > 0,
        "the pages went back before any allocator activity"
    );
}

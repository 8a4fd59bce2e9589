//! Allocator micro-benchmarks: scopealloc side by side with jemalloc, mimalloc and the system
//! allocator (glibc), each called directly through its `GlobalAlloc` impl. The benchmark binary
//! keeps the system allocator as its global allocator, so criterion's own allocations never touch
//! the contenders. Within every group the contenders alternate (scopealloc, jemalloc, mimalloc,
//! system for one parameter, then the same four for the next), so a drift of the machine during
//! the run hits all of them alike.
//!
//! Run: `cargo bench --bench alloc` (quick: `cargo bench --bench alloc -- --warm-up-time 1
//! --measurement-time 2`). Figures and the command that produced them: notes/bench-rust.md.
//!
//! Groups:
//! - `pair/<size>`: one malloc + free of 16, 64, 256, 1024 bytes;
//! - `random_sizes`: a window of 256 live objects, each step frees the oldest and allocates a
//!   pre-generated random size in 8..=4096;
//! - `burst/<order>`: 10 000 allocations of 64 B, then free in FIFO, LIFO or random order;
//! - `producer_consumer`: one thread allocates, hands the pointers to a second thread through a
//!   lock-free ring in batches of 64, the second frees them (time per 10 000 objects);
//! - `larson`: two threads churn (free a random slot, allocate a random size into it) on slot
//!   arrays that the threads swap after every round, so half the frees are remote;
//! - `channel_batches`: one thread allocates objects of 64..=256 B and sends them in batches of
//!   64 through a `std::sync::mpsc::sync_channel`, the other frees them (time per 10 000);
//! - `channel_pipeline`: three stages joined by two `sync_channel`s; the first allocates
//!   messages of 32..=512 B, the second allocates the next message and frees the one it
//!   received, the third frees it (time per 10 000 messages).
//!
//! The channel groups send raw pointers (batches as arrays, by value): a bounded `sync_channel`
//! allocates its buffer once, when it is made, so every allocation per message is the
//! contender's, as when a Rust program with that allocator as global sends owned buffers.
//! Application-shaped programs with each allocator as `#[global_allocator]` are in
//! `bench/rust` (`scripts/bench-rust-apps.sh`).

#[path = "../tests/common/mod.rs"]
mod common;
use common::Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::spin_loop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

static SCOPEALLOC: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static SYSTEM: System = System;

/// Expands `$body` once per contender, with `$name` bound to its label and `$alloc` to a
/// `&'static` reference of its own concrete type (so every call is static, none goes through a
/// vtable).
macro_rules! for_each_contender {
    (|$name:ident, $alloc:ident| $body:block) => {{
        {
            let $name = "scopealloc";
            let $alloc = &SCOPEALLOC;
            $body
        }
        {
            let $name = "jemalloc";
            let $alloc = &JEMALLOC;
            $body
        }
        {
            let $name = "mimalloc";
            let $alloc = &MIMALLOC;
            $body
        }
        {
            let $name = "system";
            let $alloc = &SYSTEM;
            $body
        }
    }};
}

fn random_sizes(n: usize, lo: usize, hi: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.range(lo, hi)).collect()
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("benchmark sizes are valid layouts")
}

/// Allocates `size` bytes from `a`, aborting the benchmark if the contender refuses (a null would
/// make every later figure meaningless).
///
/// # Safety
/// `size` must be non-zero.
#[inline(always)]
unsafe fn must_alloc<A: GlobalAlloc>(a: &A, size: usize) -> *mut u8 {
    // SAFETY: the caller passes a non-zero size, so the layout is valid for GlobalAlloc::alloc.
    let p = unsafe { a.alloc(layout(size)) };
    assert!(!p.is_null(), "allocation of {size} bytes failed");
    p
}

/// Frees a block of `size` bytes from `a`.
///
/// # Safety
/// `p` must come from `must_alloc(a, size)` and not have been freed.
#[inline(always)]
unsafe fn free<A: GlobalAlloc>(a: &A, p: *mut u8, size: usize) {
    // SAFETY: forwarded from the caller: p is a live block of `a` with this layout.
    unsafe { a.dealloc(p, layout(size)) }
}

fn pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair");
    g.throughput(Throughput::Elements(1));
    for size in [16usize, 64, 256, 1024] {
        for_each_contender!(|name, a| {
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                let l = layout(size);
                b.iter(|| {
                    // SAFETY: the layout has a non-zero size; p is freed once, with the same
                    // layout, right after.
                    unsafe {
                        let p = a.alloc(black_box(l));
                        black_box(p);
                        a.dealloc(p, l);
                    }
                })
            });
        });
    }
    g.finish();
}

/// Live objects kept by `random_sizes`.
const WINDOW: usize = 256;
/// Steps (one free + one allocation) per iteration of `random_sizes`.
const RANDOM_STEPS: usize = 4096;

fn random_sizes_group(c: &mut Criterion) {
    let sizes = random_sizes(RANDOM_STEPS, 8, 4096, 0x5EED_0001);
    let mut g = c.benchmark_group("random_sizes");
    g.throughput(Throughput::Elements(RANDOM_STEPS as u64));
    for_each_contender!(|name, a| {
        g.bench_function(BenchmarkId::new(name, "8..=4096"), |b| {
            b.iter_custom(|iters| {
                // Slot i holds an object of size sizes[i % RANDOM_STEPS]; the window is the
                // WINDOW most recent steps.
                let mut live: Vec<*mut u8> = Vec::with_capacity(WINDOW);
                for &s in &sizes[RANDOM_STEPS - WINDOW..] {
                    // SAFETY: sizes are >= 8.
                    live.push(unsafe { must_alloc(a, s) });
                }
                let start = Instant::now();
                for _ in 0..iters {
                    for (i, &s) in sizes.iter().enumerate() {
                        let slot = i % WINDOW;
                        let old_size = sizes[(i + RANDOM_STEPS - WINDOW) % RANDOM_STEPS];
                        // SAFETY: live[slot] was allocated with old_size (the size WINDOW steps
                        // ago) and is replaced right away.
                        unsafe {
                            free(a, live[slot], old_size);
                            live[slot] = black_box(must_alloc(a, s));
                        }
                    }
                }
                let elapsed = start.elapsed();
                for (slot, &p) in live.iter().enumerate() {
                    // After a whole number of passes, slot k holds the object of the last step
                    // i with i % WINDOW == k, i.e. i = RANDOM_STEPS - WINDOW + k.
                    let s = sizes[RANDOM_STEPS - WINDOW + slot];
                    // SAFETY: p is live and was allocated with size s (see above).
                    unsafe { free(a, p, s) };
                }
                elapsed
            })
        });
    });
    g.finish();
}

/// Objects per burst.
const BURST: usize = 10_000;
const BURST_SIZE: usize = 64;

fn burst(c: &mut Criterion) {
    let mut rng = Rng(0x5EED_0002);
    let mut random_order: Vec<usize> = (0..BURST).collect();
    for i in (1..BURST).rev() {
        random_order.swap(i, rng.range(0, i));
    }
    let fifo: Vec<usize> = (0..BURST).collect();
    let lifo: Vec<usize> = (0..BURST).rev().collect();
    let orders = [("fifo", fifo), ("lifo", lifo), ("random", random_order)];

    let mut g = c.benchmark_group("burst");
    g.throughput(Throughput::Elements(BURST as u64));
    for (order_name, order) in &orders {
        for_each_contender!(|name, a| {
            g.bench_function(BenchmarkId::new(name, order_name), |b| {
                let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); BURST];
                b.iter(|| {
                    for p in ptrs.iter_mut() {
                        // SAFETY: BURST_SIZE is non-zero.
                        *p = unsafe { must_alloc(a, BURST_SIZE) };
                    }
                    black_box(&ptrs);
                    for &i in order {
                        // SAFETY: order is a permutation, so each block is freed exactly once.
                        unsafe { free(a, ptrs[i], BURST_SIZE) };
                    }
                })
            });
        });
    }
    g.finish();
}

/// A single-producer single-consumer ring of pointers. The producer publishes `tail` once per
/// batch (one release store per batch, the batching the group is named for); the consumer
/// publishes `head` once per batch it drained.
struct Ring {
    slots: Box<[AtomicUsize]>,
    head: AtomicUsize,
    tail: AtomicUsize,
}

const RING_SLOTS: usize = 4096;
const BATCH: usize = 64;
/// Objects handed over per iteration of `producer_consumer`.
const PC_OBJECTS: usize = 10_000;

impl Ring {
    fn new() -> Self {
        Ring {
            slots: (0..RING_SLOTS).map(|_| AtomicUsize::new(0)).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }
}

/// Spins politely: a few pause instructions, then a yield (two cores are shared by two threads
/// and whatever else runs).
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        spin_loop();
    } else {
        thread::yield_now();
    }
}

/// One producer/consumer run of `objects` objects; returns the wall time from the start signal
/// until the consumer freed the last one.
fn producer_consumer_run<A: GlobalAlloc + Sync>(
    a: &'static A,
    sizes: &[usize],
    objects: usize,
) -> Duration {
    let ring = Ring::new();
    let start_line = Barrier::new(2);
    thread::scope(|s| {
        let consumer = s.spawn(|| {
            start_line.wait();
            let mut head = 0usize;
            let mut spins = 0;
            while head < objects {
                let tail = ring.tail.load(Ordering::Acquire);
                if tail == head {
                    backoff(&mut spins);
                    continue;
                }
                spins = 0;
                while head < tail {
                    let p = ring.slots[head % RING_SLOTS].load(Ordering::Relaxed) as *mut u8;
                    // SAFETY: the producer allocated slot `head` with sizes[head % len] and
                    // published it with the release store of `tail`; it is freed once.
                    unsafe { free(a, p, sizes[head % sizes.len()]) };
                    head += 1;
                }
                ring.head.store(head, Ordering::Release);
            }
        });
        start_line.wait();
        let start = Instant::now();
        let mut tail = 0usize;
        let mut spins = 0;
        while tail < objects {
            let n = BATCH.min(objects - tail);
            while tail + n - ring.head.load(Ordering::Acquire) > RING_SLOTS {
                backoff(&mut spins);
            }
            spins = 0;
            for i in tail..tail + n {
                // SAFETY: sizes are non-zero.
                let p = unsafe { must_alloc(a, sizes[i % sizes.len()]) };
                ring.slots[i % RING_SLOTS].store(p as usize, Ordering::Relaxed);
            }
            tail += n;
            ring.tail.store(tail, Ordering::Release);
        }
        consumer.join().expect("consumer thread panicked");
        start.elapsed()
    })
}

fn producer_consumer(c: &mut Criterion) {
    let sizes = random_sizes(1024, 16, 512, 0x5EED_0003);
    let mut g = c.benchmark_group("producer_consumer");
    g.sample_size(20);
    g.throughput(Throughput::Elements(PC_OBJECTS as u64));
    for_each_contender!(|name, a| {
        g.bench_function(BenchmarkId::new(name, "16..=512"), |b| {
            b.iter_custom(|iters| {
                // One run per call: thread start-up is paid once, not per iteration.
                producer_consumer_run(a, &sizes, PC_OBJECTS * iters as usize)
            })
        });
    });
    g.finish();
}

/// Slots per larson thread.
const LARSON_SLOTS: usize = 1000;
/// Free + malloc steps per thread per round (one iteration = one round).
const LARSON_STEPS: usize = 10_000;

fn larson_run<A: GlobalAlloc + Sync>(a: &'static A, rounds: u64) -> Duration {
    let mut rng = Rng(0x5EED_0004);
    let arrays: [Mutex<Vec<(usize, usize)>>; 2] = std::array::from_fn(|_| {
        let slots = (0..LARSON_SLOTS)
            .map(|_| {
                let size = rng.range(16, 1024);
                // SAFETY: size >= 16.
                (unsafe { must_alloc(a, size) } as usize, size)
            })
            .collect();
        Mutex::new(slots)
    });
    let ready = Barrier::new(3);
    let round_end = Barrier::new(2);
    let elapsed = thread::scope(|s| {
        for t in 0..2usize {
            let (arrays, ready, round_end) = (&arrays, &ready, &round_end);
            s.spawn(move || {
                let mut rng = Rng(0x1A25_0000 + t as u64);
                ready.wait();
                for round in 0..rounds {
                    {
                        // The two threads take different arrays each round and swap them for the
                        // next one, so objects allocated by one thread are freed by the other.
                        let mut slots = arrays[(t + round as usize) % 2].lock().unwrap();
                        for _ in 0..LARSON_STEPS {
                            let k = rng.range(0, LARSON_SLOTS - 1);
                            let new_size = rng.range(16, 1024);
                            let (p, size) = slots[k];
                            // SAFETY: slot k holds a live block of `size` bytes; it is replaced
                            // by a fresh one at once.
                            unsafe {
                                free(a, p as *mut u8, size);
                                slots[k] = (black_box(must_alloc(a, new_size)) as usize, new_size);
                            }
                        }
                    }
                    round_end.wait();
                }
            });
        }
        ready.wait();
        let start = Instant::now();
        // Leaving the scope joins both workers.
        start
    })
    .elapsed();
    for array in arrays {
        for (p, size) in array.into_inner().unwrap() {
            // SAFETY: every slot holds a live block of its recorded size.
            unsafe { free(a, p as *mut u8, size) };
        }
    }
    elapsed
}

fn larson(c: &mut Criterion) {
    let mut g = c.benchmark_group("larson");
    g.sample_size(20);
    g.throughput(Throughput::Elements(2 * LARSON_STEPS as u64));
    for_each_contender!(|name, a| {
        g.bench_function(BenchmarkId::new(name, "2 threads 16..=1024"), |b| {
            b.iter_custom(|iters| larson_run(a, iters))
        });
    });
    g.finish();
}

/// A block handed to another thread through a channel.
#[derive(Clone, Copy)]
struct Block(*mut u8);
// SAFETY: a Block is owned by exactly one thread at a time: the sender gives it up by sending
// it and never touches it again; the receiver frees it (GlobalAlloc blocks may be freed from
// any thread).
unsafe impl Send for Block {}

/// Objects per batch in `channel_batches`, and the channels' capacity (in messages).
const CHANNEL_BATCH: usize = 64;
const CHANNEL_CAPACITY: usize = 64;
/// Objects (or messages) per iteration of the channel groups.
const CHANNEL_OBJECTS: usize = 10_000;

/// Sends `objects` objects of `sizes` (cycled) from a producer to a consumer in batches of
/// CHANNEL_BATCH through a sync_channel; returns the time until the consumer freed the last.
fn channel_batches_run<A: GlobalAlloc + Sync>(
    a: &'static A,
    sizes: &[usize],
    objects: usize,
) -> Duration {
    let (tx, rx) = sync_channel::<(usize, [Block; CHANNEL_BATCH])>(CHANNEL_CAPACITY);
    let start_line = &Barrier::new(2);
    thread::scope(|s| {
        let consumer = s.spawn(move || {
            start_line.wait();
            let mut seq = 0usize;
            while let Ok((n, batch)) = rx.recv() {
                for block in &batch[..n] {
                    // SAFETY: the producer allocated object `seq` with sizes[seq % len] and
                    // gave it up by sending it; objects arrive in order, each once.
                    unsafe { free(a, block.0, sizes[seq % sizes.len()]) };
                    seq += 1;
                }
            }
            assert_eq!(seq, objects, "every object arrived");
        });
        start_line.wait();
        let start = Instant::now();
        let mut sent = 0usize;
        while sent < objects {
            let n = CHANNEL_BATCH.min(objects - sent);
            let mut batch = [Block(std::ptr::null_mut()); CHANNEL_BATCH];
            for (k, slot) in batch[..n].iter_mut().enumerate() {
                // SAFETY: sizes are non-zero.
                *slot = Block(unsafe { must_alloc(a, sizes[(sent + k) % sizes.len()]) });
            }
            tx.send((n, batch)).expect("the consumer is alive");
            sent += n;
        }
        drop(tx);
        consumer.join().expect("consumer thread panicked");
        start.elapsed()
    })
}

fn channel_batches(c: &mut Criterion) {
    let sizes = random_sizes(1024, 64, 256, 0x5EED_0005);
    let mut g = c.benchmark_group("channel_batches");
    g.sample_size(20);
    g.throughput(Throughput::Elements(CHANNEL_OBJECTS as u64));
    for_each_contender!(|name, a| {
        g.bench_function(BenchmarkId::new(name, "64..=256"), |b| {
            b.iter_custom(|iters| channel_batches_run(a, &sizes, CHANNEL_OBJECTS * iters as usize))
        });
    });
    g.finish();
}

/// Passes `messages` messages through three stages and two sync_channels; stage 1 allocates
/// message i with `first[i % len]` bytes, stage 2 allocates its successor with `second[i % len]`
/// bytes and frees message i, stage 3 frees the successor. Returns the time until the last
/// message was freed.
fn channel_pipeline_run<A: GlobalAlloc + Sync>(
    a: &'static A,
    first: &[usize],
    second: &[usize],
    messages: usize,
) -> Duration {
    let (tx1, rx1) = sync_channel::<Block>(CHANNEL_CAPACITY);
    let (tx2, rx2) = sync_channel::<Block>(CHANNEL_CAPACITY);
    let start_line = &Barrier::new(3);
    thread::scope(|s| {
        let middle = s.spawn(move || {
            start_line.wait();
            for (i, received) in rx1.iter().enumerate() {
                // SAFETY: sizes are non-zero.
                let next = unsafe { must_alloc(a, second[i % second.len()]) };
                // SAFETY: message i was allocated by stage 1 with first[i % len] bytes and sent
                // to this stage only.
                unsafe { free(a, received.0, first[i % first.len()]) };
                tx2.send(Block(next)).expect("the last stage is alive");
            }
        });
        let last = s.spawn(move || {
            start_line.wait();
            let mut n = 0usize;
            for (i, received) in rx2.iter().enumerate() {
                // SAFETY: stage 2 allocated message i with second[i % len] bytes and sent it
                // here only.
                unsafe { free(a, received.0, second[i % second.len()]) };
                n += 1;
            }
            assert_eq!(n, messages, "every message arrived");
        });
        start_line.wait();
        let start = Instant::now();
        for i in 0..messages {
            // SAFETY: sizes are non-zero.
            let m = unsafe { must_alloc(a, first[i % first.len()]) };
            tx1.send(Block(m)).expect("the middle stage is alive");
        }
        drop(tx1);
        middle.join().expect("middle stage panicked");
        last.join().expect("last stage panicked");
        start.elapsed()
    })
}

fn channel_pipeline(c: &mut Criterion) {
    let first = random_sizes(1024, 32, 512, 0x5EED_0006);
    let second = random_sizes(1024, 32, 512, 0x5EED_0007);
    let mut g = c.benchmark_group("channel_pipeline");
    g.sample_size(20);
    g.throughput(Throughput::Elements(CHANNEL_OBJECTS as u64));
    for_each_contender!(|name, a| {
        g.bench_function(BenchmarkId::new(name, "3 stages 32..=512"), |b| {
            b.iter_custom(|iters| {
                channel_pipeline_run(a, &first, &second, CHANNEL_OBJECTS * iters as usize)
            })
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    pair,
    random_sizes_group,
    burst,
    producer_consumer,
    larson,
    channel_batches,
    channel_pipeline
);
criterion_main!(benches);

//! A short tour of scopealloc: `cargo run --release --example demo`.
//!
//! 1. scopealloc is the global allocator; every allocation is charged to the thread's current
//!    scope, and a scope's figures include its descendants.
//! 2. A hard limit refuses an allocation cleanly (`Vec::try_reserve` returns `Err`).
//! 3. Closing a scope moves its charges to the parent; its objects live on.
//! 4. A free is charged back to the scope that allocated, whichever thread frees.
//! 5. The cost: malloc/free pairs with and without a scope.
//!
//! Printing is done outside measured scopes: the first `println!` allocates stdout's buffer,
//! and it would be charged to the scope the thread is in.

mod common;
use common::human;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use scopealloc::{global_stats, heap_stats, Scope, ScopeAlloc};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// Prints `scope` and its open descendants as an indented tree.
fn print_tree(scope: &Scope, depth: usize) {
    let s = scope.stats();
    let limit = scope
        .limit()
        .map_or(String::new(), |l| format!("  limit {}", human(l as u64)));
    let name = format!("{:indent$}{}", "", scope.name(), indent = depth * 2);
    println!(
        "  {name:<16} {:>10} in {:>5} objects  (self {:>10}, peak {:>10}, limit hits {}){limit}",
        human(s.bytes),
        s.objects,
        human(s.self_bytes),
        human(s.peak_bytes),
        s.limit_hits,
    );
    for child in scope.children() {
        print_tree(&child, depth + 1);
    }
}

fn main() {
    let started = Instant::now();

    println!("1. Scopes form a tree; parents include their descendants");
    let app = Scope::root().child("app");
    let cache = app.child("cache");
    let requests = app.child("requests");
    let map: HashMap<String, Vec<u8>> = cache.run(|| {
        (0..2000)
            .map(|i| (format!("key-{i}"), vec![i as u8; 1000]))
            .collect()
    });
    let request1 = requests.child("request-1");
    let page = request1.run(|| "x".repeat(300_000));
    print_tree(&app, 0);

    println!("\n2. A hard limit refuses cleanly");
    requests.set_limit(Some(8 << 20));
    let big = requests.child("request-2");
    let outcome = big.run(|| {
        let mut buf: Vec<u8> = Vec::new();
        buf.try_reserve(64 << 20).map(|()| buf)
    });
    match &outcome {
        Ok(buf) => println!(
            "  64 MiB under an 8 MiB limit was granted?! ({} B)",
            buf.len()
        ),
        Err(e) => println!("  request-2 asked for 64 MiB under an 8 MiB limit: {e}"),
    }
    println!(
        "  requests: limit hits {}, bytes {}",
        requests.stats().limit_hits,
        human(requests.stats().bytes)
    );

    println!("\n3. Closing a scope moves its charges to the parent; objects live on");
    let session = app.child("session");
    let transcript: Vec<String> = session.run(|| (0..500).map(|i| format!("line {i}")).collect());
    println!(
        "  before close: session {} / app self {}",
        human(session.stats().bytes),
        human(app.stats().self_bytes)
    );
    session.close();
    println!(
        "  after close:  session {} (closed: {}) / app self {}; transcript still has {} lines",
        human(session.stats().bytes),
        session.is_closed(),
        human(app.stats().self_bytes),
        transcript.len()
    );
    drop(transcript);
    println!(
        "  transcript dropped: app self {}",
        human(app.stats().self_bytes)
    );

    println!("\n4. Frees go back to the scope that allocated, whichever thread frees");
    let before = cache.stats().bytes;
    let worker = Scope::root().child("worker");
    let w = worker.clone();
    std::thread::spawn(move || w.run(|| drop(map)))
        .join()
        .unwrap();
    println!(
        "  another thread, inside `worker`, dropped the map: cache {} -> {}, worker {}",
        human(before),
        human(cache.stats().bytes),
        human(worker.stats().bytes)
    );
    drop(page);

    println!("\n5. Cost of a malloc/free pair (64 B)");
    let n = 2_000_000;
    let time = |label: &str| {
        let t = Instant::now();
        for i in 0..n {
            black_box(Box::new([i as u8; 64]));
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        (label.to_owned(), ns)
    };
    let plain = time("root scope");
    // Keep a handle on each level: dropping the last handle of a scope closes it.
    let a = app.child("a");
    let b = a.child("b");
    let deep = b.child("c");
    deep.set_limit(Some(1 << 30));
    let scoped = deep.run(|| time("depth-4 scope, limited"));
    for (label, ns) in [plain, scoped] {
        println!("  {label:<24} {ns:.1} ns");
    }
    let t = Instant::now();
    for _ in 0..n {
        black_box(deep.enter());
    }
    println!(
        "  enter + leave            {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );

    println!("\nFinal tree:");
    print_tree(&app, 0);
    app.close();
    let g = global_stats();
    let h = heap_stats();
    println!(
        "\nglobal: {} open scopes, {} closed pending, {} caches, {} thread heaps",
        g.live_scopes, g.closed_scopes_pending, g.live_caches, g.thread_heaps
    );
    println!(
        "heap:   {} mapped, {} committed, {} in use, {} cached, {} returned to the OS",
        human(h.mapped as u64),
        human(h.committed as u64),
        human(h.in_use as u64),
        human(h.cached as u64),
        human(h.returned as u64)
    );
    println!("done in {:.2?}", started.elapsed());
}

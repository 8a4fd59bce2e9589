//! A thread's tables: one per scope it entered, found in constant time however many scopes it
//! has tables for, and dropped once their scopes close.

use scopealloc::{global_stats, testing, trim, Scope};

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

/// The tests of this binary read process-wide counts (tables of every thread): they run one after
/// the other on one thread, so that no other test thread's heap comes or goes between a count
/// and the next (a test thread that ends while another counts made the counts flaky).
#[test]
fn tables_are_found_in_constant_time_and_dropped_once_their_scopes_close() {
    entering_many_open_scopes_looks_each_table_up_in_constant_time();
    fifty_thousand_open_scopes_each_get_their_own_table_and_none_leaks();
}

/// Scopes per test, `SCOPEALLOC_TEST_SCOPES` or `default`.
fn scopes(default: usize) -> usize {
    let n = std::env::var("SCOPEALLOC_TEST_SCOPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    eprintln!("scopes: {n}");
    n
}

fn entering_many_open_scopes_looks_each_table_up_in_constant_time() {
    let n = scopes(20_000);
    let parent = Scope::new("connections");
    let mut open: Vec<Scope> = Vec::with_capacity(n);
    let before = testing::table_lookup_visits();
    for i in 0..n {
        let s = parent.child(&format!("conn-{i}"));
        drop(s.enter());
        open.push(s);
    }
    let first = testing::table_lookup_visits() - before;
    // Entering them all again finds the tables made the first time.
    for s in &open {
        drop(s.enter());
    }
    let visits = testing::table_lookup_visits() - before;
    eprintln!(
        "table lookups: {n} scopes opened and entered, then entered again: {first} then {visits} \
         tables visited"
    );
    assert!(
        visits <= 8 * n as u64,
        "2 x {n} lookups visited {visits} tables: not constant time per lookup"
    );
    for s in &open {
        s.close();
    }
    parent.close();
    // Drops this thread's tables of the closed scopes (the next test counts tables).
    let _ = global_stats();
}

fn fifty_thousand_open_scopes_each_get_their_own_table_and_none_leaks() {
    let n = scopes(50_000);
    trim();
    let start = global_stats();
    let tables_start = testing::tables_in_use();
    let parent = Scope::new("connections");
    let mut open: Vec<Scope> = Vec::with_capacity(n);
    let mut objs: Vec<Box<[u64; 4]>> = Vec::with_capacity(n);
    for i in 0..n {
        let s = parent.child(&format!("conn-{i}"));
        {
            let _g = s.enter();
            objs.push(Box::new([i as u64; 4]));
        }
        open.push(s);
    }
    assert!(testing::tables_in_use() >= n, "one table per scope");
    // A second object in a sample of them, entered again: still charged to the right scope.
    let mut more: Vec<Box<[u64; 4]>> = Vec::with_capacity(n / 997 + 1);
    for (i, s) in open.iter().enumerate().step_by(997) {
        let _g = s.enter();
        more.push(Box::new([i as u64; 4]));
    }
    for (i, s) in open.iter().enumerate() {
        let want = if i % 997 == 0 { 2 } else { 1 };
        let got = s.stats().objects;
        assert_eq!(
            got, want,
            "scope {i}: {got} objects charged, {want} allocated"
        );
    }
    assert_eq!(parent.stats().objects, (n + more.len()) as u64);
    drop(more);
    drop(objs);
    for s in &open {
        s.close();
    }
    parent.close();
    drop(open);
    drop(parent);
    trim();
    let end = global_stats();
    let tables_end = testing::tables_in_use();
    eprintln!("start {start:?} tables {tables_start}; end {end:?} tables {tables_end}");
    assert!(end.live_scopes <= start.live_scopes, "scopes leaked");
    assert!(
        end.closed_scopes_pending <= start.closed_scopes_pending,
        "closed scopes kept by tables"
    );
    assert!(
        tables_end <= tables_start,
        "tables leaked: {tables_start} at start, {tables_end} at end"
    );
}

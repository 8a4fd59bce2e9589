//! Soft limits and events: `set_high`, the `on_high` hooks (run on the notifier thread, never
//! under allocator state), `events()` / `events_local()`, and the leak reports of
//! `on_close_leaks`.

use scopealloc::{global_stats, usable_size, CloseLeaks, Scope, ScopeAlloc};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// Waits until `counter` reaches `target`. A hook that ran under an allocator lock would
/// deadlock and one that was never woken would never run: 30 s is a hang detector for both,
/// not a timed assertion.
fn wait_for(counter: &AtomicU64, target: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < deadline,
            "{what}: the hook did not run within 30 s (deadlocked or never woken)"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Long enough for a hook that recursed, or a crossing counted twice, to show.
fn settle() {
    thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_high_hook_runs_outside_allocator_state_and_may_allocate_in_its_own_scope_without_recursing() {
    const HIGH: usize = 1 << 20;
    let tenant = Scope::root().child("tenant-high");
    let limited = tenant.child("limited");
    limited.set_high(Some(HIGH));
    assert_eq!(limited.high(), Some(HIGH));

    let calls = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Vec<(String, u64, u64)>>> = Arc::default();
    let (c, log) = (calls.clone(), seen.clone());
    limited
        .on_high(move |scope, stats| {
            // Everything an allocation path may not do: allocate (in the limited scope itself,
            // which is above its soft limit), create and close scopes, read statistics (the
            // tree lock), take a lock of our own.
            let big = scope.run(|| vec![7u8; 300_000]);
            let small: Vec<String> = scope.run(|| (0..1000).map(|i| i.to_string()).collect());
            let child = scope.child("made-by-the-hook");
            let kept = child.run(|| vec![1u8; 5000]);
            child.close();
            drop(kept);
            assert!(scope.stats().bytes >= stats.bytes.min(HIGH as u64));
            let _ = global_stats();
            let name = thread::current().name().unwrap_or("?").to_owned();
            log.lock()
                .unwrap()
                .push((name, stats.charged_bytes, scope.events_local().high));
            drop((big, small));
            c.fetch_add(1, Ordering::SeqCst);
        })
        .expect("notifier thread");

    // First crossing: through stock refills of small objects.
    let boxes: Vec<Box<[u8; 64]>> =
        limited.run(|| (0..20_000).map(|_| Box::new([0u8; 64])).collect());
    wait_for(&calls, 1, "first crossing");
    settle();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "once per crossing: the hook's own allocations did not call it again"
    );
    assert_eq!(limited.events_local().high, 1);

    // Fall below the soft limit (re-arm), then cross again with one large object.
    drop(boxes);
    assert!(
        limited.stats().charged_bytes <= HIGH as u64,
        "below high again: {:?}",
        limited.stats()
    );
    let large = limited.run(|| vec![0u8; 2 * HIGH]);
    wait_for(&calls, 2, "second crossing");
    settle();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    drop(large);

    let log = seen.lock().unwrap().clone();
    for (name, charged, count) in &log {
        assert_eq!(
            name, "scopealloc-events",
            "hooks run on the notifier thread"
        );
        assert!(
            *charged > HIGH as u64,
            "the hook sees the scope above its soft limit"
        );
        assert!(*count >= 1);
    }
    assert_eq!(limited.events_local().high, 2);
    assert_eq!(limited.events().high, 2);
    assert_eq!(
        tenant.events().high,
        2,
        "hierarchical: the child's crossings count in the parent"
    );
    assert_eq!(
        tenant.events_local().high,
        0,
        "the parent has no soft limit of its own"
    );
    assert_eq!(limited.stats().limit_hits, 0, "a soft limit never refuses");
}

#[test]
fn a_high_hook_may_close_its_scope_and_is_then_dropped() {
    let s = Scope::root().child("closed-by-its-hook");
    s.set_high(Some(64 << 10));
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    s.on_high(move |scope, _| {
        scope.close();
        c.fetch_add(1, Ordering::SeqCst);
    })
    .expect("notifier thread");
    let v = s.run(|| vec![0u8; 1 << 20]);
    wait_for(&calls, 1, "crossing");
    assert!(s.is_closed());
    drop(v);
    settle();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn without_a_soft_limit_no_high_event_is_counted_and_setting_one_rearms() {
    let s = Scope::root().child("no-high");
    let v = s.run(|| vec![0u8; 1 << 20]);
    assert_eq!(s.events().high, 0);
    s.set_high(Some(1 << 19)); // already above: the next charge is a crossing
    let w = s.run(|| vec![0u8; 1 << 16]);
    assert_eq!(s.events().high, 1);
    s.set_high(None);
    let x = s.run(|| vec![0u8; 1 << 20]);
    assert_eq!(s.events().high, 1);
    drop((v, w, x));
}

#[test]
fn hard_limit_refusals_count_as_max_events_locally_and_in_every_ancestor() {
    let top = Scope::root().child("max-top");
    let mid = top.child("max-mid");
    let leaf = mid.child("max-leaf");
    mid.set_limit(Some(1 << 20));
    for _ in 0..3 {
        assert!(leaf
            .run(|| Vec::<u8>::new().try_reserve_exact(2 << 20))
            .is_err());
    }
    assert_eq!(mid.events_local().max, 3, "the refusing scope's own figure");
    assert_eq!(mid.stats().limit_hits, 3);
    assert_eq!(leaf.events_local().max, 0);
    assert_eq!(leaf.events().max, 0, "not counted in descendants");
    assert_eq!(top.events().max, 3);
    assert_eq!(top.events_local().max, 0);
    leaf.close();
    mid.close();
    assert_eq!(
        top.events().max,
        3,
        "events stay counted after the scopes close"
    );
}

/// Allocates `len` bytes in `scope` and keeps them in `kept` (whose room was allocated outside
/// the test's scopes, so pushing does not allocate); returns their usable size.
fn keep(kept: &mut Vec<Box<[u8]>>, scope: &Scope, len: usize) -> usize {
    let b = scope.run(|| vec![0u8; len].into_boxed_slice());
    // SAFETY: b is a live allocation of the global allocator.
    let usable = unsafe { usable_size(b.as_ptr()) };
    kept.push(b);
    usable
}

#[test]
fn closing_a_scope_with_live_objects_reports_them_by_size_class_once() {
    let tenant = Scope::root().child("leaky-tenant");
    let reports: Arc<Mutex<Vec<CloseLeaks>>> = Arc::default();
    let r = reports.clone();
    tenant.on_close_leaks(move |leaks| r.lock().unwrap().push(leaks.clone()));

    let req = tenant.child("request");
    let sub = req.child("sub-task");
    let mut kept: Vec<Box<[u8]>> = Vec::with_capacity(64);
    let mut by_size = std::collections::BTreeMap::<usize, (u64, u64)>::new();
    let mut large = (0u64, 0u64);
    let mut add = |usable: usize| {
        let row = if usable > 32 * 1024 {
            &mut large
        } else {
            by_size.entry(usable).or_default()
        };
        row.0 += 1;
        row.1 += usable as u64;
    };
    for _ in 0..10 {
        add(keep(&mut kept, &req, 100));
    }
    for _ in 0..3 {
        add(keep(&mut kept, &req, 1000));
    }
    add(keep(&mut kept, &req, 100_000));
    add(keep(&mut kept, &sub, 5000)); // the descendant closes with it
    let freed = req.run(|| vec![0u8; 777]);
    drop(freed); // freed before the close: not a leak

    req.close();
    let got = reports.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "one report for the scope and its descendants: {got:?}"
    );
    let l = &got[0];
    assert_eq!((l.scope_id, l.name.as_str()), (req.id(), "request"));
    assert_eq!(l.objects, 15);
    let total: usize = kept
        .iter()
        .map(|b| unsafe { usable_size(b.as_ptr()) })
        .sum();
    assert_eq!(l.bytes, total as u64);
    let rows: Vec<(Option<usize>, u64, u64)> = l
        .classes
        .iter()
        .map(|c| (c.object_size, c.objects, c.bytes))
        .collect();
    let mut want: Vec<(Option<usize>, u64, u64)> = by_size
        .iter()
        .map(|(&s, &(n, b))| (Some(s), n, b))
        .collect();
    want.push((None, large.0, large.1));
    assert_eq!(rows, want);

    // The objects stay valid and are now the tenant's.
    assert_eq!(tenant.stats().self_bytes, total as u64);
    drop(kept);
    assert_eq!(tenant.stats().bytes, 0);
}

#[test]
fn a_close_reports_nothing_without_live_objects_or_without_a_watch() {
    let watched = Scope::root().child("watched");
    let reports = Arc::new(AtomicU64::new(0));
    let r = reports.clone();
    watched.on_close_leaks(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let clean = watched.child("clean");
    drop(clean.run(|| vec![0u8; 4096]));
    clean.close();
    assert_eq!(reports.load(Ordering::SeqCst), 0, "nothing left: no report");

    let unwatched = Scope::root().child("unwatched");
    let v = unwatched.run(|| vec![0u8; 4096]);
    unwatched.close();
    assert_eq!(
        reports.load(Ordering::SeqCst),
        0,
        "not under a watched scope"
    );

    let dropped = watched.child("dropped");
    let w = dropped.run(|| vec![0u8; 4096]);
    drop(dropped); // the last handle closes it
    assert_eq!(reports.load(Ordering::SeqCst), 1);
    drop((v, w));
}

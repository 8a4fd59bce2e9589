//! When the OS refuses memory for a scope's own metadata, `Scope::try_child` returns `None` and
//! nothing else changes (before, creating the scope aborted the process). The failure hook is
//! process-wide, so this file holds a single test.

use scopealloc::testing::os_fail_after;
use scopealloc::{global_stats, Scope, ScopeAlloc};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn a_scope_whose_metadata_is_refused_is_not_created_and_nothing_leaks() {
    let top = Scope::root().child("refused-top");
    let mut kept = Vec::with_capacity(10_000);
    // Every mapping refused: scopes come from the metadata pool's current chunk until it is
    // full, then the next one is refused.
    os_fail_after(Some(0));
    let mut refused = None;
    for i in 0..10_000 {
        let before = global_stats().live_scopes;
        match top.try_child("c") {
            Some(s) => kept.push(s),
            None => {
                refused = Some((i, before, global_stats().live_scopes));
                break;
            }
        }
    }
    os_fail_after(None);
    let (i, before, after) = refused.expect("the pool's chunk filled up within 10 000 scopes");
    eprintln!("refused after {i} scopes");
    assert_eq!(before, after, "a refused scope is not counted");
    let again = top.try_child("after").expect("scopes are created again");
    assert_eq!(again.parent().unwrap(), top);
    drop(kept);
    drop(again);
    top.close();
}

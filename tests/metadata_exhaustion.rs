//! When the allocator's own metadata runs out, a thread inside a scope is refused rather than
//! allocating outside the scope's figures and limit. The OS failure hook is process-global: this
//! file holds a single test.

use scopealloc::{testing, Scope, ScopeAlloc};
use std::alloc::{alloc, dealloc, Layout};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// Enough new scopes to fill the tables' pool chunk in use (about 750 tables a chunk) twice.
const SCOPES: usize = 2000;

#[test]
fn a_thread_whose_table_cannot_be_made_is_refused_instead_of_allocating_in_the_root() {
    let layout = Layout::from_size_align(48, 8).unwrap();
    let root = Scope::root();
    let mut scopes = Vec::with_capacity(SCOPES);
    let mut kept = Vec::with_capacity(SCOPES);
    // SAFETY: a non-zero-sized layout.
    kept.push(unsafe { alloc(layout) }); // the root table has a slab of this class
    let mut misplaced = None;
    for i in 0..SCOPES {
        let s = Scope::root().child("s");
        let root_before = root.stats().self_objects;
        // Every mapping fails from here: a new table, cache or slab cannot be had.
        testing::os_fail_after(Some(0));
        let p = {
            let _g = s.enter();
            // SAFETY: a non-zero-sized layout.
            unsafe { alloc(layout) }
        };
        testing::os_fail_after(None);
        let (own, root_after) = (s.stats().objects, root.stats().self_objects);
        if !p.is_null() && (own != 1 || root_after != root_before) {
            misplaced = Some((i, own, root_after - root_before));
            // SAFETY: p came from alloc with this layout.
            unsafe { dealloc(p, layout) };
            break;
        }
        let p = if p.is_null() {
            assert_eq!(
                (own, root_after),
                (0, root_before),
                "a refusal charges nothing"
            );
            // Refused (metadata or a slab could not be mapped): now with the OS willing.
            let _g = s.enter();
            // SAFETY: a non-zero-sized layout.
            unsafe { alloc(layout) }
        } else {
            p
        };
        assert!(!p.is_null());
        kept.push(p);
        scopes.push(s); // an open scope keeps its table
    }
    testing::os_fail_after(None);
    for p in kept {
        // SAFETY: p came from alloc with this layout.
        unsafe { dealloc(p, layout) };
    }
    assert_eq!(
        misplaced, None,
        "(scope index, its objects, root's own extra objects): an allocation inside a scope whose \
         table could not be made was charged outside it"
    );
}

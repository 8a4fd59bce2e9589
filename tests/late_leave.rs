//! A scope left after the allocator's thread-exit destructor (from another library's pthread key
//! destructor, which runs later in the same round) must not touch the thread's freed tables.

use scopealloc::{Scope, ScopeAlloc};
use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

const SIZE: usize = 100;

struct Late {
    token: *mut libc::c_void,
}

/// Thread heaps in use as seen by the late destructor, plus one (0: not run yet). This key was
/// created after the allocator's, so its destructor runs after the allocator's in each round.
static READY: AtomicUsize = AtomicUsize::new(0);
/// Set once the test has made new tables (which reuse the freed table slots). The destructor
/// spins on it: waiting on a channel would allocate, and so give the thread a new heap.
static GO: AtomicBool = AtomicBool::new(false);

// SAFETY: the token is only used by the thread that made it (the mutex only carries it to
// that thread's own destructor).
unsafe impl Send for Late {}

static LATE: Mutex<Option<Late>> = Mutex::new(None);

unsafe extern "C" fn late_destructor(_: *mut libc::c_void) {
    let heaps = scopealloc::global_stats().thread_heaps;
    let late = LATE.lock().unwrap().take().unwrap();
    READY.store(heaps + 1, Ordering::Release);
    while !GO.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    // SAFETY: the token came from enter_raw on this thread and is used once.
    unsafe { Scope::leave_raw(late.token) };
    let layout = Layout::from_size_align(SIZE, 8).unwrap();
    // SAFETY: a non-zero-sized layout.
    let p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    // SAFETY: p came from alloc with this layout.
    unsafe { dealloc(p, layout) };
}

#[test]
fn leaving_a_scope_after_the_thread_exit_destructor_does_not_touch_freed_tables() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: a valid out-pointer and a destructor valid for the life of the process.
    assert_eq!(
        unsafe { libc::pthread_key_create(&mut key, Some(late_destructor)) },
        0
    );
    let inner = Scope::root().child("inner");
    let inner2 = inner.clone();
    let heaps_before = scopealloc::global_stats().thread_heaps;
    let t = thread::spawn(move || {
        let layout = Layout::from_size_align(SIZE, 8).unwrap();
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { alloc(layout) }; // a heap with a root table
                                          // SAFETY: p came from alloc with this layout.
        unsafe { dealloc(p, layout) };
        let token = inner2.enter_raw(); // pins the root table
        *LATE.lock().unwrap() = Some(Late { token });
        // SAFETY: key was created above; the value only needs to be non-null.
        unsafe { libc::pthread_setspecific(key, std::ptr::dangling_mut::<libc::c_void>()) };
    });
    while READY.load(Ordering::Acquire) == 0 {
        thread::yield_now();
    }
    let heaps_at_late = READY.load(Ordering::Acquire) - 1;
    // The exiting thread's tables are given back now: new tables reuse their slots.
    let layout = Layout::from_size_align(SIZE, 8).unwrap();
    let scopes: Vec<Scope> = (0..256)
        .map(|i| Scope::root().child(&format!("z{i}")))
        .collect();
    let mut kept = Vec::new();
    for s in &scopes {
        let _g = s.enter();
        // SAFETY: a non-zero-sized layout.
        kept.push(unsafe { alloc(layout) });
    }
    let before: Vec<u64> = scopes.iter().map(|s| s.stats().allocs).collect();
    GO.store(true, Ordering::Release);
    t.join().unwrap();
    let after: Vec<u64> = scopes.iter().map(|s| s.stats().allocs).collect();
    assert_eq!(
        heaps_at_late, heaps_before,
        "the late destructor ran after the allocator's (the thread's heap was given back)"
    );
    for p in kept {
        // SAFETY: p came from alloc with this layout.
        unsafe { dealloc(p, layout) };
    }
    assert_eq!(
        before, after,
        "the late leave installed another thread's table: the exiting thread allocated in its scope"
    );
    drop(inner);
}

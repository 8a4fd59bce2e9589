//! The OS refusing the thread-exit key (`pthread_key_create` failing) must not make the allocator
//! write another library's key: before the fix, the failure left the key at 0 and every thread
//! heap was stored with `pthread_setspecific(0, heap)`, overwriting key 0's value.
//!
//! The key is created by the first allocation of the process, so the refusal is armed by a
//! constructor that runs before `main` (and before the test harness allocates).

use scopealloc::{global_stats, ScopeAlloc};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// The key that "another library" created before the allocator's first allocation.
static OTHER_KEY: AtomicU32 = AtomicU32::new(u32::MAX);
/// The value it stored there.
static SENTINEL: AtomicUsize = AtomicUsize::new(0);

extern "C" fn before_main() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: a valid out-pointer; no destructor.
    assert_eq!(unsafe { libc::pthread_key_create(&mut key, None) }, 0);
    let sentinel = 0x5ca1_ab1e_usize;
    // SAFETY: the key was just created by us.
    unsafe { libc::pthread_setspecific(key, sentinel as *const libc::c_void) };
    OTHER_KEY.store(key, Ordering::SeqCst);
    SENTINEL.store(sentinel, Ordering::SeqCst);
    scopealloc::testing::key_create_fail_after(Some(0));
    // The first allocation of the process: creates this thread's heap, whose key is refused.
    let b = Box::new([7u8; 100]);
    assert_eq!(b[99], 7);
    drop(b);
    scopealloc::testing::key_create_fail_after(None);
    // SAFETY: the key exists.
    let v = unsafe { libc::pthread_getspecific(key) } as usize;
    MAIN_VALUE_AFTER_ALLOC.store(v, Ordering::SeqCst);
}

/// What the main thread read back from the other key after its first allocation.
static MAIN_VALUE_AFTER_ALLOC: AtomicUsize = AtomicUsize::new(0);

#[used]
#[link_section = ".init_array"]
static BEFORE_MAIN: extern "C" fn() = before_main;

#[test]
fn a_refused_thread_exit_key_leaves_other_libraries_keys_alone() {
    let key = OTHER_KEY.load(Ordering::SeqCst);
    assert_ne!(key, u32::MAX, "the constructor ran");
    eprintln!("the other library's key is {key}");
    assert_eq!(
        MAIN_VALUE_AFTER_ALLOC.load(Ordering::SeqCst),
        SENTINEL.load(Ordering::SeqCst),
        "the allocator's heap registration overwrote another library's key"
    );
    // Threads created after the refusal create the key, and their exit is seen.
    let before = global_stats().thread_heaps;
    for _ in 0..50 {
        std::thread::spawn(|| drop(vec![1u8; 1000])).join().unwrap();
    }
    let after = global_stats().thread_heaps;
    assert!(
        after <= before + 1,
        "exited threads' heaps are handed back once the key exists: {before} -> {after}"
    );
}

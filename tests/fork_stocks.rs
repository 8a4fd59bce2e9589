//! After `fork`, the threads that do not exist in the child must not keep a scope charged: their
//! stocks (bytes charged in advance) go back in the child, as their exit would have given them
//! back. Before the fix a limited scope in the child stayed pinned by a dead thread's stock.

use scopealloc::{Scope, ScopeAlloc};
use std::sync::mpsc;

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn a_fork_child_gets_back_the_stocks_of_threads_it_does_not_have() {
    let s = Scope::root().child("fork-stock");
    s.set_limit(Some(1 << 20));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = {
        let s = s.clone();
        std::thread::spawn(move || {
            let v = s.run(|| Box::new([1u8; 64]));
            ready_tx.send(()).unwrap();
            done_rx.recv().unwrap(); // stays alive, with its stock, across the fork
            drop(v);
        })
    };
    ready_rx.recv().unwrap();
    let before = s.stats();
    assert!(
        before.charged_bytes > before.bytes,
        "the worker holds a stock for the scope: {before:?}"
    );
    // SAFETY: the child only reads figures and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let st = s.stats();
        let code = if st.bytes != before.bytes {
            1
        } else if st.charged_bytes != st.bytes {
            2 // a dead thread's stock is still charged
        } else {
            0
        };
        // SAFETY: ends the child at once, running no destructor of the parent's state.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: pid is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child check failed (1: live bytes changed, 2: a dead thread's stock stayed charged); before fork: {before:?}"
    );
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(s.stats().bytes, 0);
}

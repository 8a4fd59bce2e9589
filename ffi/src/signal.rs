//! `SCOPEALLOC_STATS_SIGNAL`: a report of a running process on a signal.
//!
//! The handler only stores `true` to an atomic (async-signal-safe: it may interrupt `malloc`
//! holding an allocator lock, so it can do nothing else). A watcher thread, started by the
//! options constructor only when the variable is set, wakes every 50 ms, and when the flag is
//! set writes the report (`report::write_report`, in the `SCOPEALLOC_STATS` format) outside any
//! allocator lock. The watcher blocks every signal, so the program's own signals (and ours)
//! are delivered to the program's threads; it runs until the process ends.
//!
//! A child made by `fork` (without `exec`) inherits the handler but not the thread: it sets the
//! flag and writes nothing.

use crate::options;
use crate::out::{StackBuf, PREFIX};
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};

/// Set by the handler, cleared by the watcher when it writes the report.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// How often the watcher looks at the flag.
const POLL_MS: c_int = 50;

extern "C" fn on_signal(_sig: c_int) {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Installs the handler for `sig` (with `SA_RESTART`) and starts the watcher thread. Called
/// once by the options constructor. Failures print one warning line and leave things as they
/// were.
pub fn start(sig: c_int) {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) to fill in.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa` is initialised; the handler only stores to an atomic (async-signal-safe);
    // the old action is not wanted (null).
    if unsafe { libc::sigaction(sig, &sa, core::ptr::null_mut()) } != 0 {
        warn(b"cannot install the signal handler");
        return;
    }
    // SAFETY: a zeroed sigset_t is valid storage for sigfillset / pthread_sigmask to fill.
    let (mut all, mut old): (libc::sigset_t, libc::sigset_t) = unsafe { core::mem::zeroed() };
    // SAFETY: both sets are valid, writable sigset_t values owned by this frame. The new thread
    // inherits the mask in force when it is created: everything blocked; then ours is restored.
    let rc = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut tid: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut tid, core::ptr::null(), watch, core::ptr::null_mut());
        if rc == 0 {
            libc::pthread_detach(tid);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        rc
    };
    if rc != 0 {
        warn(b"cannot start the report thread");
    }
}

/// The watcher thread's body: polls the flag and writes a report each time it is set.
extern "C" fn watch(_: *mut c_void) -> *mut c_void {
    loop {
        // SAFETY: poll with no descriptors only sleeps for the timeout.
        unsafe { libc::poll(core::ptr::null_mut(), 0, POLL_MS) };
        if REQUESTED.swap(false, Ordering::Relaxed) {
            crate::report::write_report(options::STATS_FORMAT.load(Ordering::Relaxed));
        }
    }
}

fn warn(what: &[u8]) {
    let mut line = StackBuf::<256>::new();
    line.bytes(PREFIX)
        .bytes(b"warning: SCOPEALLOC_STATS_SIGNAL: ")
        .bytes(what)
        .bytes(b"; no report on the signal\n");
    line.write_to(libc::STDERR_FILENO);
}

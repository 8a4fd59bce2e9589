//! The thread-exit hook: one pthread key whose destructor hands the exiting thread's value back.
//!
//! The key is created once per process, by the first thread that arms it; creating it does not
//! allocate. Setting the key's value may call back into malloc (glibc allocates in
//! `pthread_setspecific` for keys of index 32 and above): callers arm it only once their own
//! state is complete.

use super::fail::{self, Call};
use crate::sync::{AtomicU32, AtomicU8, Ordering};

const NONE: u8 = 0;
const CREATING: u8 = 1;
const READY: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(NONE);
/// The key; written once by the creator before `STATE` becomes `READY` (Release), read only by
/// threads that saw `READY` (Acquire).
static KEY: AtomicU32 = AtomicU32::new(0);

/// The destructor type of the key.
pub type ExitFn = unsafe extern "C" fn(*mut libc::c_void);

/// Makes `dtor(value)` run when the calling thread exits. False when the key cannot be created
/// (the OS refused, or [`fail`] says so): the caller then gets no exit notification, and no
/// other library's key is touched. A later call tries to create the key again.
pub fn arm_exit(value: *mut libc::c_void, dtor: ExitFn) -> bool {
    loop {
        match STATE.load(Ordering::Acquire) {
            READY => break,
            NONE => {
                if STATE
                    .compare_exchange(NONE, CREATING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                let mut key: libc::pthread_key_t = 0;
                let ok = !fail::refuses(Call::KeyCreate)
                    // SAFETY: `key` is a valid out-pointer; `dtor` is a plain function valid for
                    // the life of the process.
                    && unsafe { libc::pthread_key_create(&mut key, Some(dtor)) } == 0;
                if !ok {
                    STATE.store(NONE, Ordering::Release);
                    return false;
                }
                KEY.store(key, Ordering::Relaxed);
                // Publishes KEY to the threads that load READY with Acquire.
                STATE.store(READY, Ordering::Release);
                break;
            }
            _ => core::hint::spin_loop(),
        }
    }
    // SAFETY: KEY holds a key created above (READY was seen with Acquire); the value is the
    // caller's to hand back.
    unsafe { libc::pthread_setspecific(KEY.load(Ordering::Relaxed), value) == 0 }
}

//! The platform layer: everything that talks to the OS (memory, time, stderr, the thread-exit
//! key, fork hooks, the fast paths' thread-local words, the wake-up event of the notifier
//! thread) or to a checker running us (Valgrind's client requests), the failure hook that tests
//! use to make it say no, and the one CPU hint the fast path gives (a prefetch). Imports nothing
//! of the allocator but `sync`.

pub mod cpu;
pub mod fail;
pub mod fork;
pub mod os;
pub mod thread;
pub mod tls;
pub mod valgrind;
pub mod wake;

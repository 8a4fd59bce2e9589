//! Randomized model testing: threads run random operation sequences against the allocator —
//! alloc, `alloc_zeroed`, realloc and free of random sizes and alignments, frees of another
//! thread's blocks, scope open / enter / close / set_limit — and after every round (threads
//! quiet) the allocator is checked against a simple reference model of the live blocks and the
//! scope tree: contents intact, every open scope's `bytes` and `objects` exact, no limit passed,
//! no refusal earlier than the documented bound; every few rounds a `fork` child checks the same
//! figures and frees everything.
//!
//! Reproduce a failure with the printed seed: `MODEL_SEED=<seed> cargo test --test model`.
//! Sizes: `MODEL_THREADS` (2), `MODEL_ROUNDS` (40), `MODEL_OPS` (400 per thread and round);
//! `scripts/model-long.sh` runs a long budget.

mod common;

#[path = "harness/model.rs"]
mod harness;

use common::Rng;
use harness::{check, round, Model, Node, Source};
use scopealloc::{Scope, ScopeAlloc};
use std::alloc::GlobalAlloc;
use std::sync::{Arc, Barrier, Mutex};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Source for Rng {
    fn next(&mut self) -> u64 {
        Rng::next(self)
    }
}

#[test]
fn random_operations_across_threads_match_the_reference_model() {
    let seed = common::seed_from_env("MODEL_SEED");
    // A panic in a worker would leave the others waiting at a barrier: print it where the test
    // harness does not capture it, with the seed, and end the process.
    SEED.store(seed, std::sync::atomic::Ordering::Relaxed);
    std::panic::set_hook(Box::new(|info| {
        let msg = format!(
            "model test failed (MODEL_SEED={}): {info}\n",
            SEED.load(std::sync::atomic::Ordering::Relaxed)
        );
        // SAFETY: writes a live buffer to stderr, then ends the process.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }));
    let threads = env("MODEL_THREADS", 2) as usize;
    let rounds = env("MODEL_ROUNDS", 40) as usize;
    let ops = env("MODEL_OPS", 400) as usize;
    eprintln!(
        "model: MODEL_SEED={seed} MODEL_THREADS={threads} MODEL_ROUNDS={rounds} MODEL_OPS={ops}"
    );

    let book = Scope::root().child("model-book");
    let top = Scope::root().child("model-top");
    let model = {
        let _g = book.enter();
        let mut nodes = vec![Node {
            scope: top.clone(),
            parent: None,
            owner: usize::MAX,
            open: true,
            limit: None,
        }];
        for t in 0..threads {
            nodes.push(Node {
                scope: top.child(&format!("thread-{t}")),
                parent: Some(0),
                owner: t,
                open: true,
                limit: None,
            });
        }
        Arc::new(Mutex::new(Model {
            nodes,
            blocks: (0..threads).map(|_| Vec::new()).collect(),
            inbox: (0..threads).map(|_| Vec::new()).collect(),
            remote_freed: vec![0; threads],
        }))
    };
    let start = Arc::new(Barrier::new(threads + 1));
    let done = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (model, book, start, done) =
                (model.clone(), book.clone(), start.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                for _ in 0..rounds {
                    start.wait();
                    round(t, threads, ops, &mut rng, &model, &book);
                    done.wait();
                }
            })
        })
        .collect();
    for r in 0..rounds {
        start.wait();
        done.wait();
        let m = model.lock().unwrap();
        if let Err(e) = check(&m, &format!("round {r}")) {
            panic!("{e} (MODEL_SEED={seed})");
        }
        if r % 10 == 9 {
            // SAFETY: the child only checks, frees and exits with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let code = match check(&m, "fork child") {
                    Ok(()) => {
                        for b in m.all_blocks() {
                            // SAFETY: live blocks of ours (inherited), freed once.
                            unsafe { GLOBAL.dealloc(b.ptr as *mut u8, b.layout) };
                        }
                        let st = top.stats();
                        if (st.bytes, st.objects) == (0, 0) {
                            0
                        } else {
                            3
                        }
                    }
                    Err(_) => 2,
                };
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: pid is our child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "fork child at round {r} failed with {} (2: figures, 3: not zero after freeing all); MODEL_SEED={seed}",
                libc::WEXITSTATUS(status)
            );
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    let mut m = model.lock().unwrap();
    let _g = book.enter();
    let m = &mut *m;
    for list in m.blocks.iter_mut().chain(m.inbox.iter_mut()) {
        for b in list.drain(..) {
            // SAFETY: live, with this layout.
            unsafe { GLOBAL.dealloc(b.ptr as *mut u8, b.layout) };
        }
    }
    drop(_g);
    let st = top.stats();
    assert_eq!((st.bytes, st.objects), (0, 0), "MODEL_SEED={seed}");
}

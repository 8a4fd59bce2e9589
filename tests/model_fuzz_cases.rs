//! Replays the fuzz target's cases (fuzz/cases/model: the fuzzer's findings and its seed inputs)
//! through the model harness, and a few hundred pseudo-random inputs, so that every finding stays
//! a regression test without cargo-fuzz. `MODEL_FUZZ_INPUTS` sets how many random inputs.

mod common;

#[path = "harness/model.rs"]
mod harness;

use common::Rng;
use scopealloc::{Scope, ScopeAlloc};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn the_fuzzers_cases_and_random_inputs_match_the_reference_model() {
    let top = Scope::root().child("fuzz-top");
    let book = Scope::root().child("fuzz-book");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/cases/model");
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .expect("fuzz/cases/model")
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no case in {dir}");
    for path in &cases {
        let data = std::fs::read(path).unwrap();
        eprintln!("case {} ({} bytes)", path.display(), data.len());
        harness::run_bytes(&data, &top, &book);
    }
    let seed = common::seed_from_env("MODEL_SEED");
    let n: usize = std::env::var("MODEL_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    eprintln!("random inputs: MODEL_SEED={seed} MODEL_FUZZ_INPUTS={n}");
    let mut rng = Rng(seed);
    for i in 0..n {
        let len = rng.below(2048);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness::run_bytes(&data, &top, &book)
        }));
        assert!(r.is_ok(), "random input {i} failed (MODEL_SEED={seed})");
    }
    let st = top.stats();
    assert_eq!((st.bytes, st.objects), (0, 0));
}

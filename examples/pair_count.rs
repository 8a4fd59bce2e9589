//! A malloc+free loop for instruction counting under callgrind (see `scripts/callgrind-pair.sh`):
//! `pair_count ALLOCATOR DEPTH N` runs N pairs of 64 B through the allocator's `GlobalAlloc`
//! (`scopealloc`, `jemalloc`, `mimalloc` or `system`), inside a chain of DEPTH scopes, each with
//! a limit (DEPTH 0 = the root scope). With `PAIR_KEEP=1` in the environment one more block
//! stays live during the loop, so that no free empties its page (mimalloc retires an empty page
//! at free, which the plain loop makes it do at every pair).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

fn pairs<A: GlobalAlloc>(a: &A, n: usize) {
    let l = Layout::from_size_align(64, 8).expect("a valid layout");
    let keep = std::env::var("PAIR_KEEP").is_ok_and(|v| v == "1");
    // SAFETY: a non-zero layout; freed once below with the same layout.
    let neighbour = keep.then(|| unsafe { a.alloc(l) });
    for _ in 0..n {
        // SAFETY: a non-zero layout; the pointer is freed once with the same layout.
        unsafe {
            let p = a.alloc(black_box(l));
            black_box(p);
            a.dealloc(p, l);
        }
    }
    if let Some(q) = neighbour {
        // SAFETY: allocated above with this layout, freed once.
        unsafe { a.dealloc(black_box(q), l) };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: pair_count scopealloc|jemalloc|mimalloc|system DEPTH N";
    let which = args.get(1).expect(usage).as_str();
    let depth: usize = args.get(2).and_then(|d| d.parse().ok()).expect(usage);
    let n: usize = args.get(3).and_then(|d| d.parse().ok()).expect(usage);
    let mut chain = vec![scopealloc::Scope::root()];
    for i in 0..depth {
        let child = chain[i].child(&format!("depth-{}", i + 1));
        child.set_limit(Some(1 << 40));
        chain.push(child);
    }
    let _inside = chain[depth].enter();
    match which {
        "scopealloc" => pairs(&scopealloc::ScopeAlloc, n),
        "jemalloc" => pairs(&tikv_jemallocator::Jemalloc, n),
        "mimalloc" => pairs(&mimalloc::MiMalloc, n),
        "system" => pairs(&System, n),
        _ => panic!("{usage}"),
    }
}

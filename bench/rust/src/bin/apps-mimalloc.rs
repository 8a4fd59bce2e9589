//! The application-shaped workloads with `mimalloc::MiMalloc` as the global allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    scopealloc_bench_apps::main("mimalloc");
}

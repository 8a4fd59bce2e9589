//! The application-shaped workloads with `tikv_jemallocator::Jemalloc` as the global allocator.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    scopealloc_bench_apps::main("jemalloc");
}

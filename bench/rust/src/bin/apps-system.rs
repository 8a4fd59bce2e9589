//! The application-shaped workloads with `std::alloc::System` as the global allocator.

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

fn main() {
    scopealloc_bench_apps::main("system");
}

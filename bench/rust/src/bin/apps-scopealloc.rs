//! The application-shaped workloads with `scopealloc::ScopeAlloc` as the global allocator.

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

fn main() {
    scopealloc_bench_apps::main("scopealloc");
}

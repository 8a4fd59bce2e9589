//! What scopes cost in memory (issue 10): many open scopes holding a few small objects each, and
//! a request cache whose entries outlive their request scopes. Each mode has an `--unscoped`
//! twin doing the same work without allocating in per-request scopes, so the difference is the
//! price of the scopes.
//!
//! ```text
//! cargo run --release --example scope_memory -- MODE [--unscoped] [options]
//!   one64   open --scopes N scopes (default 10 000) under one parent and allocate one 64 B
//!           object in each, all kept open and alive; --unscoped opens the same scopes but
//!           allocates the objects in the calling thread's scope (the root), so the difference is
//!           the cost of allocating inside the scopes, not of the scopes' own metadata
//!   five    the same with five objects per scope: 24, 100, 300, 1000 and 3000 B (4.3 KiB)
//!   cache   --requests R (300 000) requests, each in a short-lived scope under one of
//!           --tenants T (10) tenants: open, --allocs A (20) allocations of mixed sizes, one of
//!           them (64..=1984 B, random, --seed S) kept in a --cache C (100 000) entry cache that
//!           frees its oldest entry when full, the others freed, close; --unscoped does the same
//!           allocations with no request scopes
//! ```
//!
//! Every object is written (the cached ones entirely) so that its pages are resident. Prints the
//! figures for people, then one machine-readable line starting with `RESULT` (`key=value`
//! fields, bytes and nanoseconds; `scripts/scope-memory.sh` reads it): RSS (`VmRSS`, peak
//! `VmHWM`) and address space (`VmSize`) from /proc/self/status before and after the work, the
//! per-scope differences, live bytes (the allocator's `Scope::root().stats().bytes`, and what the
//! program itself holds), the allocator's pending closed scopes and dying caches
//! (`global_stats()`, read after the RSS), and the elapsed and CPU time of the work.

use std::alloc::{alloc, dealloc, Layout};
use std::collections::VecDeque;
use std::time::Instant;

use scopealloc::{global_stats, heap_stats, usable_size, Scope, ScopeAlloc};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

/// The objects each scope of mode `five` holds (4 424 B requested).
const FIVE_SIZES: [usize; 5] = [24, 100, 300, 1000, 3000];

/// Sizes of a request's temporary objects, used in turn: small and medium classes mixed, up to
/// 4 KiB, as a request parsing headers and building a response would allocate.
const REQUEST_SIZES: [usize; 19] = [
    16, 24, 32, 48, 64, 100, 128, 200, 256, 300, 512, 700, 1000, 1500, 2000, 3000, 4000, 64, 128,
];

/// The cached object of a request is this many bytes at least, and at most `KEPT_MIN + KEPT_SPAN`
/// (uniform: 1 KiB on average, so a 100 000-entry cache holds about 98 MiB).
const KEPT_MIN: usize = 64;
const KEPT_SPAN: usize = 1920;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    One64,
    Five,
    Cache,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::One64 => "one64",
            Mode::Five => "five",
            Mode::Cache => "cache",
        }
    }
}

struct Options {
    mode: Mode,
    scoped: bool,
    scopes: usize,
    requests: usize,
    tenants: usize,
    cache: usize,
    allocs: usize,
    seed: u64,
}

const USAGE: &str = "usage: scope_memory one64|five|cache [--unscoped] [--scopes N] \
                     [--requests N] [--tenants N] [--cache N] [--allocs N] [--seed S]";

fn parse_args() -> Options {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("one64") => Mode::One64,
        Some("five") => Mode::Five,
        Some("cache") => Mode::Cache,
        _ => usage_exit(),
    };
    let mut o = Options {
        mode,
        scoped: true,
        scopes: 10_000,
        requests: 300_000,
        tenants: 10,
        cache: 100_000,
        allocs: 20,
        seed: 1,
    };
    while let Some(flag) = args.next() {
        if flag == "--unscoped" {
            o.scoped = false;
            continue;
        }
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage_exit());
        let n = value as usize;
        match flag.as_str() {
            "--scopes" => o.scopes = n,
            "--requests" => o.requests = n,
            "--tenants" => o.tenants = n.max(1),
            "--cache" => o.cache = n.max(1),
            "--allocs" => o.allocs = n.max(1),
            "--seed" => o.seed = value,
            _ => usage_exit(),
        }
    }
    o
}

fn usage_exit() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

/// `VmRSS`, `VmHWM` and `VmSize` of this process, in bytes.
#[derive(Clone, Copy)]
struct Vm {
    rss: u64,
    hwm: u64,
    size: u64,
}

fn vm() -> Vm {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("/proc/self/status has no {name}"))
    };
    Vm {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        size: field("VmSize:"),
    }
}

/// User plus system CPU time of this process so far, in nanoseconds: on a machine shared with
/// other work, less disturbed than the elapsed time.
fn cpu_ns() -> u128 {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid rusage to write to; RUSAGE_SELF is a valid target.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage failed");
    let ns = |t: libc::timeval| t.tv_sec as u128 * 1_000_000_000 + t.tv_usec as u128 * 1000;
    ns(u.ru_utime) + ns(u.ru_stime)
}

/// splitmix64, for the cached objects' sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A live object of the global allocator.
struct Obj {
    ptr: *mut u8,
    layout: Layout,
}

impl Obj {
    /// Allocates `size` bytes and writes its first and last byte (or all of it if `fill`).
    fn new(size: usize, fill: bool) -> Obj {
        let layout = Layout::from_size_align(size, 8).expect("valid layout");
        // SAFETY: size > 0 (every size used here is at least 16).
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: ptr is a fresh block of `size` bytes.
        unsafe {
            if fill {
                ptr.write_bytes(0x5a, size);
            } else {
                ptr.write(1);
                ptr.add(size - 1).write(1);
            }
        }
        Obj { ptr, layout }
    }

    fn usable(&self) -> u64 {
        // SAFETY: the object is live and comes from the global allocator, which is ours.
        unsafe { usable_size(self.ptr) as u64 }
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout by `Obj::new` and freed once, here.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// What a run measured besides the /proc figures.
struct Work {
    /// Scopes the work opened and keeps open (modes one64, five), or requests (cache).
    units: usize,
    /// Bytes (usable sizes) of the objects the program holds at the end.
    held: u64,
    elapsed_ns: u128,
    /// CPU time (user + system) of the work.
    cpu_ns: u128,
    /// Kept alive until the figures are read.
    _scopes: Vec<Scope>,
    _objects: Vec<Obj>,
    _cache: VecDeque<Obj>,
}

/// Modes one64 and five: `n` open scopes under one parent, `sizes` allocated per scope (inside
/// it when `scoped`, else in the caller's scope).
fn open_scopes(n: usize, sizes: &[usize], scoped: bool) -> Work {
    let parent = Scope::root().child("holders");
    let mut scopes = Vec::with_capacity(n);
    let mut objects = Vec::with_capacity(n * sizes.len());
    let (start, cpu_start) = (Instant::now(), cpu_ns());
    for _ in 0..n {
        let s = parent.child("s");
        {
            let _inside = scoped.then(|| s.enter());
            objects.extend(sizes.iter().map(|&size| Obj::new(size, true)));
        }
        scopes.push(s);
    }
    let elapsed_ns = start.elapsed().as_nanos();
    let cpu = cpu_ns() - cpu_start;
    scopes.push(parent);
    Work {
        units: n,
        held: objects.iter().map(Obj::usable).sum(),
        elapsed_ns,
        cpu_ns: cpu,
        _scopes: scopes,
        _objects: objects,
        _cache: VecDeque::new(),
    }
}

/// One request's allocations: `allocs - 1` temporary objects and, in the middle, the one the
/// cache keeps, which is returned.
fn request(allocs: usize, kept_size: usize, temps: &mut Vec<Obj>) -> Obj {
    let middle = allocs / 2;
    let mut kept = None;
    for i in 0..allocs {
        if i == middle {
            kept = Some(Obj::new(kept_size, true));
        } else {
            temps.push(Obj::new(REQUEST_SIZES[i % REQUEST_SIZES.len()], false));
        }
    }
    temps.clear();
    kept.expect("allocs >= 1")
}

/// Mode cache: `o.requests` requests, each in its own scope under a tenant when `o.scoped`.
fn request_cache(o: &Options) -> Work {
    let tenants: Vec<Scope> = (0..o.tenants)
        .map(|t| Scope::root().child(&format!("tenant-{t}")))
        .collect();
    let mut cache: VecDeque<Obj> = VecDeque::with_capacity(o.cache);
    let mut temps: Vec<Obj> = Vec::with_capacity(o.allocs);
    let mut rng = Rng(o.seed);
    let (start, cpu_start) = (Instant::now(), cpu_ns());
    for r in 0..o.requests {
        let kept_size = KEPT_MIN + (rng.next() % (KEPT_SPAN as u64 + 1)) as usize;
        let kept = if o.scoped {
            let req = tenants[r % o.tenants].child("request");
            let kept = {
                let _inside = req.enter();
                request(o.allocs, kept_size, &mut temps)
            };
            req.close();
            kept
        } else {
            request(o.allocs, kept_size, &mut temps)
        };
        if cache.len() == o.cache {
            cache.pop_front();
        }
        cache.push_back(kept);
    }
    let elapsed_ns = start.elapsed().as_nanos();
    let cpu = cpu_ns() - cpu_start;
    Work {
        units: o.requests,
        held: cache.iter().map(Obj::usable).sum(),
        elapsed_ns,
        cpu_ns: cpu,
        _scopes: tenants,
        _objects: Vec::new(),
        _cache: cache,
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    let o = parse_args();
    let before = vm();
    let work = match o.mode {
        Mode::One64 => open_scopes(o.scopes, &[64], o.scoped),
        Mode::Five => open_scopes(o.scopes, &FIVE_SIZES, o.scoped),
        Mode::Cache => request_cache(&o),
    };
    let after = vm();
    let live = Scope::root().stats().bytes;
    let heap = heap_stats();
    // global_stats() first drops this thread's tables of closed scopes: read it after the RSS.
    let g = global_stats();

    let variant = if o.scoped { "scoped" } else { "unscoped" };
    let rss_delta = after.rss.saturating_sub(before.rss);
    let size_delta = after.size.saturating_sub(before.size);
    let per = |bytes: u64| bytes as f64 / work.units.max(1) as f64;
    println!("scope_memory {} {variant}", o.mode.name());
    match o.mode {
        Mode::Cache => println!(
            "  {} requests, {} tenants, {}-entry cache, {} allocations per request, seed {}",
            o.requests, o.tenants, o.cache, o.allocs, o.seed
        ),
        _ => println!("  {} open scopes", o.scopes),
    }
    println!(
        "  RSS {} -> {} (peak {}), address space {} -> {}",
        mib(before.rss),
        mib(after.rss),
        mib(after.hwm),
        mib(before.size),
        mib(after.size)
    );
    if o.mode == Mode::Cache {
        println!(
            "  live {} (held by the cache {}): RSS / live = {:.2}",
            mib(live),
            mib(work.held),
            after.rss as f64 / live.max(1) as f64
        );
    } else {
        println!(
            "  per scope: RSS {}, address space {}; held {} per scope",
            kib(per(rss_delta)),
            kib(per(size_delta)),
            kib(per(work.held))
        );
    }
    println!(
        "  closed scopes pending {}, dying caches {}, live scopes {}, live caches {}",
        g.closed_scopes_pending, g.dying_caches, g.live_scopes, g.live_caches
    );
    println!(
        "  allocator: mapped {}, committed {}, metadata {}",
        mib(heap.mapped as u64),
        mib(heap.committed as u64),
        mib(heap.metadata as u64)
    );
    println!(
        "  elapsed {:.3} s (CPU {:.3} s)",
        work.elapsed_ns as f64 / 1e9,
        work.cpu_ns as f64 / 1e9
    );
    println!(
        "RESULT mode={} variant={variant} units={} rss_before={} rss_after={} hwm={} \
         vmsize_before={} vmsize_after={} rss_per_unit={:.0} vmsize_per_unit={:.0} \
         live_bytes={live} held_bytes={} closed_pending={} dying_caches={} live_scopes={} \
         live_caches={} mapped={} committed={} metadata={} elapsed_ns={} cpu_ns={}",
        o.mode.name(),
        work.units,
        before.rss,
        after.rss,
        after.hwm,
        before.size,
        after.size,
        per(rss_delta),
        per(size_delta),
        work.held,
        g.closed_scopes_pending,
        g.dying_caches,
        g.live_scopes,
        g.live_caches,
        heap.mapped,
        heap.committed,
        heap.metadata,
        work.elapsed_ns,
        work.cpu_ns
    );
}

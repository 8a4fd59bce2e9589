//! Helpers shared by the test binaries and the benchmarks (each includes this file as a module):
//! a small seedable PRNG, so runs are reproducible from a printed seed without the `rand` crate,
//! and the process's resident set size.
#![allow(dead_code)]

/// splitmix64: small, seedable, good enough to pick sizes, orders and scopes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (modulo bias is irrelevant here).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with the given probability in percent.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Resident set size of this process in bytes (from /proc/self/statm).
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// The fill pattern of the stress and workload tests repeats every `PERIOD` bytes (a prime, so it
/// does not line up with power-of-two sizes).
pub const PERIOD: usize = 65_521;
/// Bytes copied or compared per step when filling or checking an object.
pub const CHUNK: usize = 64 * 1024;

/// `PERIOD + CHUNK` pseudo-random bytes: any window of `CHUNK` bytes starting below `PERIOD` is
/// a slice of the periodic pattern.
pub fn pattern_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = Rng(0xFEED);
        let period: Vec<u8> = (0..PERIOD).map(|_| rng.next() as u8).collect();
        (0..PERIOD + CHUNK).map(|j| period[j % PERIOD]).collect()
    })
}

/// The seed of a randomized test: the environment variable `var` if it is set (to reproduce a
/// printed seed), otherwise the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

//! Multi-threaded stress of scopealloc as the global allocator: random sizes from 1 B to 1 MiB
//! (skewed to small), random alignments, reallocs, and objects handed to other threads through
//! channels and freed there. Every object carries a pattern derived from its id, written at
//! allocation (and after every realloc) and checked in full before it is freed, so a block handed
//! out twice, a free that lands in the wrong place, or a realloc that loses bytes shows up as a
//! pattern mismatch naming the object.
//!
//! Knobs (environment): STRESS_THREADS (default 4), STRESS_ITERS (operations per thread, default
//! sized for ~10-20 s in a debug build on two cores), STRESS_SEED (default: from the clock; the
//! seed is printed first so a failure can be replayed).

mod common;
use common::{pattern_table, Rng, CHUNK, PERIOD};
use std::alloc::{alloc, dealloc, realloc, Layout};
use std::io::Write;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Live objects a thread keeps at most (bounds memory: about 12 KiB average size).
const MAX_LIVE: usize = 1500;
/// Objects per batch sent to another thread.
const HANDOFF_BATCH: usize = 16;

impl Rng {
    /// 1 B ..= 1 MiB, skewed to small: 80 % up to 256 B, 15 % up to 16 KiB, 4 % up to 256 KiB,
    /// 1 % up to 1 MiB.
    fn size(&mut self) -> usize {
        match self.range(0, 99) {
            0..=79 => self.range(1, 256),
            80..=94 => self.range(257, 16 * KIB),
            95..=98 => self.range(16 * KIB + 1, 256 * KIB),
            _ => self.range(256 * KIB + 1, MIB),
        }
    }

    fn align(&mut self) -> usize {
        match self.range(0, 99) {
            0..=69 => 8,
            70..=84 => 16,
            85..=94 => 64,
            95..=98 => 4096,
            _ => 64 * KIB,
        }
    }
}

/// One live object: its address, layout and id. Plain data, so it can cross threads.
#[derive(Clone, Copy, Debug)]
struct Obj {
    addr: usize,
    size: usize,
    align: usize,
    id: u64,
}

impl Obj {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).expect("valid layout")
    }

    fn offset(&self) -> usize {
        let mut r = Rng(self.id);
        (r.next() % PERIOD as u64) as usize
    }

    /// Writes the object's pattern over its `size` bytes.
    fn fill(&self) {
        let table = pattern_table();
        let mut i = 0;
        while i < self.size {
            let n = CHUNK.min(self.size - i);
            let from = (self.offset() + i) % PERIOD;
            // SAFETY: the object is live and owned by the caller; i + n <= size.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    table[from..from + n].as_ptr(),
                    (self.addr + i) as *mut u8,
                    n,
                )
            };
            i += n;
        }
    }

    /// Panics (naming the object and the seed) unless the first `len` bytes hold the pattern.
    fn check(&self, len: usize, seed: u64, what: &str) {
        let table = pattern_table();
        let mut i = 0;
        while i < len {
            let n = CHUNK.min(len - i);
            let from = (self.offset() + i) % PERIOD;
            // SAFETY: the object is live and owned by the caller; i + n <= len <= size.
            let got = unsafe { std::slice::from_raw_parts((self.addr + i) as *const u8, n) };
            let want = &table[from..from + n];
            if got != want {
                let k = (0..n).find(|&k| got[k] != want[k]).unwrap_or(0);
                panic!(
                    "stress seed = {seed}: {what}: object {:#x} ({:?}) byte {} is {:#x}, expected {:#x}",
                    self.id,
                    self,
                    i + k,
                    got[k],
                    want[k]
                );
            }
            i += n;
        }
    }

    /// Checks the whole pattern and frees the object.
    fn check_and_free(self, seed: u64, what: &str) {
        self.check(self.size, seed, what);
        // SAFETY: the object is live, has this layout, and is freed once (it is consumed).
        unsafe { dealloc(self.addr as *mut u8, self.layout()) };
    }
}

/// What one thread did.
#[derive(Default, Debug)]
struct Tally {
    allocs: u64,
    reallocs: u64,
    local_frees: u64,
    remote_frees: u64,
    bytes: u64,
}

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn worker(
    t: usize,
    seed: u64,
    iters: u64,
    inbox: Receiver<Vec<Obj>>,
    peers: Vec<Sender<Vec<Obj>>>,
) -> Tally {
    let mut rng = Rng(seed ^ (t as u64).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut live: Vec<Obj> = Vec::with_capacity(MAX_LIVE);
    let mut tally = Tally::default();
    let mut next_id = (t as u64) << 40;
    let receive = |batch: Vec<Obj>, tally: &mut Tally| {
        for o in batch {
            o.check_and_free(seed, "remote free");
            tally.remote_frees += 1;
        }
    };
    for _ in 0..iters {
        let op = rng.range(0, 99);
        if live.len() >= MAX_LIVE || (op < 30 && !live.is_empty()) {
            // Free a random local object.
            let o = live.swap_remove(rng.range(0, live.len() - 1));
            o.check_and_free(seed, "local free");
            tally.local_frees += 1;
        } else if op < 38 && !live.is_empty() {
            // Realloc a random local object to a new random size (same alignment).
            let k = rng.range(0, live.len() - 1);
            let o = live[k];
            let new_size = rng.size();
            // SAFETY: o is live with its layout; new_size is non-zero and small.
            let q = unsafe { realloc(o.addr as *mut u8, o.layout(), new_size) };
            assert!(
                !q.is_null(),
                "stress seed = {seed}: realloc {} -> {new_size} failed",
                o.size
            );
            let moved = Obj {
                addr: q as usize,
                size: new_size,
                ..o
            };
            assert_eq!(
                moved.addr % moved.align,
                0,
                "stress seed = {seed}: realloc lost alignment: {moved:?}"
            );
            moved.check(o.size.min(new_size), seed, "realloc kept prefix");
            moved.fill();
            live[k] = moved;
            tally.reallocs += 1;
        } else if op < 46 && live.len() >= HANDOFF_BATCH && peers.len() > 1 {
            // Hand a batch of random objects to another thread, which checks and frees them.
            let mut target = rng.range(0, peers.len() - 1);
            if target == t {
                target = (target + 1) % peers.len();
            }
            let batch: Vec<Obj> = (0..HANDOFF_BATCH)
                .map(|_| live.swap_remove(rng.range(0, live.len() - 1)))
                .collect();
            peers[target].send(batch).expect("peer inbox closed early");
        } else {
            let size = rng.size();
            let align = rng.align();
            let layout = Layout::from_size_align(size, align).expect("valid layout");
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(
                !p.is_null(),
                "stress seed = {seed}: alloc({size}, {align}) returned null"
            );
            let o = Obj {
                addr: p as usize,
                size,
                align,
                id: next_id,
            };
            assert_eq!(o.addr % align, 0, "stress seed = {seed}: misaligned {o:?}");
            next_id += 1;
            o.fill();
            live.push(o);
            tally.allocs += 1;
            tally.bytes += size as u64;
        }
        while let Ok(batch) = inbox.try_recv() {
            receive(batch, &mut tally);
        }
    }
    for o in live.drain(..) {
        o.check_and_free(seed, "final local free");
        tally.local_frees += 1;
    }
    // Stop sending; then take what the others still send until every sender is gone.
    drop(peers);
    for batch in inbox {
        receive(batch, &mut tally);
    }
    tally
}

#[test]
fn threads_allocate_check_and_free_each_others_objects() {
    let seed = env_or(
        "STRESS_SEED",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    // Straight to stderr, not eprintln!: the harness captures eprintln! output of passing (and
    // hung) tests, and the seed is what a hang or a crash needs to be replayed.
    let _ = writeln!(std::io::stderr(), "stress seed = {seed}");
    let threads = env_or("STRESS_THREADS", 4).max(1) as usize;
    let iters = env_or("STRESS_ITERS", 5_000_000);
    pattern_table();

    // Every allocation of the workers (objects, their lists, channel messages) is charged to this
    // scope, so once they are done it must read empty: a free lost or uncharged twice shows.
    let scope = scopealloc::Scope::root().child("stress");
    let (senders, inboxes): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::channel::<Vec<Obj>>()).unzip();
    let handles: Vec<_> = inboxes
        .into_iter()
        .enumerate()
        .map(|(t, inbox)| {
            let peers = senders.clone();
            let s = scope.clone();
            thread::Builder::new()
                .name(format!("stress-{t}"))
                .spawn(move || s.run(|| worker(t, seed, iters, inbox, peers)))
                .expect("spawn")
        })
        .collect();
    drop(senders);
    let mut total = Tally::default();
    for h in handles {
        let t = h
            .join()
            .expect("a stress thread panicked (see its message and the seed above)");
        total.allocs += t.allocs;
        total.reallocs += t.reallocs;
        total.local_frees += t.local_frees;
        total.remote_frees += t.remote_frees;
        total.bytes += t.bytes;
    }
    let st = scope.stats();
    eprintln!("stress totals: {total:?}; scope {st:?}");
    assert_eq!(
        (st.bytes, st.objects),
        (0, 0),
        "stress seed = {seed}: the workers freed everything, yet their scope holds live figures"
    );
    assert_eq!(st.frees, st.allocs, "stress seed = {seed}: {st:?}");
    assert!(
        st.allocs >= total.allocs,
        "stress seed = {seed}: {} allocations charged for {} made",
        st.allocs,
        total.allocs
    );
    if threads > 1 {
        assert!(
            total.remote_frees > 0,
            "no object was freed by another thread"
        );
    }
}

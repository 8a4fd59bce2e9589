//! The reference model of the randomized model test (`tests/model.rs`, several threads, from a
//! seed) and of the fuzz target (`fuzz/fuzz_targets/model.rs`, one thread, from the fuzzer's
//! bytes; its findings are replayed by `tests/model_fuzz_cases.rs`): the operations, the model
//! of the live blocks and the scope tree, and the checks at a quiet point.
#![allow(dead_code)]

use scopealloc::{usable_size, Scope};
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::sync::Mutex;

/// Where the operations' choices come from: a seeded generator, or a fuzzer's input.
pub trait Source {
    /// The next 64 bits of choice.
    fn next(&mut self) -> u64;

    /// In `lo..=hi` (modulo bias is irrelevant here).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// In `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with the given probability in percent.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// A scope of the model: which thread's subtree it is in, its parent, open or closed, its limit.
pub struct Node {
    pub scope: Scope,
    pub parent: Option<usize>,
    pub owner: usize,
    pub open: bool,
    pub limit: Option<usize>,
}

/// A live block of the model.
#[derive(Clone, Copy)]
pub struct Block {
    pub ptr: usize,
    pub layout: Layout,
    pub usable: u64,
    /// The scope it was charged to (a node index).
    pub origin: usize,
    pub tag: u8,
}

/// The model: the tree and the live blocks, per thread plus what is in transit to another
/// thread. Its own memory is allocated in a scope of its own (`book`), never in the scopes it
/// checks.
pub struct Model {
    pub nodes: Vec<Node>,
    pub blocks: Vec<Vec<Block>>,
    pub inbox: Vec<Vec<Block>>,
    /// Bytes of each thread's blocks freed by another thread: until the owner collects them
    /// they stay charged, so they widen the early-refusal bound (an upper bound of them).
    pub remote_freed: Vec<u64>,
}

/// Slack of the early-refusal bound: each thread's stock in a scope (128 KiB at most) plus the
/// bytes other threads freed but the owner has not collected yet (counted as live below).
pub const STOCK_BOUND: u64 = 128 << 10;

impl Model {
    /// The nearest open node at or above `i`.
    fn effective(&self, mut i: usize) -> usize {
        while !self.nodes[i].open {
            i = self.nodes[i].parent.expect("the top is never closed");
        }
        i
    }

    fn is_under(&self, mut i: usize, top: usize) -> bool {
        loop {
            if i == top {
                return true;
            }
            match self.nodes[i].parent {
                Some(p) => i = p,
                None => return false,
            }
        }
    }

    pub fn all_blocks(&self) -> impl Iterator<Item = &Block> {
        self.blocks.iter().chain(self.inbox.iter()).flatten()
    }

    /// (bytes, objects) of live blocks charged in the subtree of open node `n`.
    pub fn expected(&self, n: usize) -> (u64, u64) {
        let mut b = 0;
        let mut o = 0;
        for blk in self.all_blocks() {
            if self.is_under(self.effective(blk.origin), n) {
                b += blk.usable;
                o += 1;
            }
        }
        (b, o)
    }
}

pub fn fill(b: &Block) {
    // SAFETY: the block is live and holds layout.size() bytes.
    unsafe { (b.ptr as *mut u8).write_bytes(b.tag, b.layout.size()) };
}

pub fn intact(b: &Block) -> bool {
    // SAFETY: as in `fill`.
    unsafe { core::slice::from_raw_parts(b.ptr as *const u8, b.layout.size()) }
        .iter()
        .all(|&x| x == b.tag)
}

fn random_layout(rng: &mut impl Source) -> Layout {
    let size = match rng.below(100) {
        0..=69 => rng.range(1, 512),
        70..=94 => rng.range(513, 16 << 10),
        95..=98 => rng.range(32 << 10, 400 << 10),
        _ => rng.range(2 << 20, 5 << 20),
    };
    let align = [1, 8, 16, 64, 4096][rng.below(5)];
    Layout::from_size_align(size, align).unwrap()
}

/// One thread's round: `ops` random operations in its own subtree.
pub fn round(
    me: usize,
    threads: usize,
    ops: usize,
    rng: &mut impl Source,
    model: &Mutex<Model>,
    book: &Scope,
) {
    for _ in 0..ops {
        let _g = book.enter(); // the model's own allocations go to `book`
        let mut m = model.lock().unwrap();
        // Blocks other threads sent here are freed here (a free from a non-owner thread).
        let inbox = std::mem::take(&mut m.inbox[me]);
        for b in inbox {
            assert!(intact(&b), "a block in transit was overwritten");
            let owner = m.nodes[b.origin].owner;
            if owner < m.remote_freed.len() {
                m.remote_freed[owner] += b.usable;
            }
            // SAFETY: a live block of ours with this layout.
            unsafe { dealloc(b.ptr as *mut u8, b.layout) };
        }
        let mine: Vec<usize> = (0..m.nodes.len())
            .filter(|&i| m.nodes[i].owner == me && m.nodes[i].open)
            .collect();
        let at = mine[rng.below(mine.len())];
        match rng.below(100) {
            // alloc / alloc_zeroed in a random open scope of this thread
            0..=44 => {
                let l = random_layout(rng);
                let zeroed = rng.chance(20);
                let s = m.nodes[at].scope.clone();
                let p = s.run(|| {
                    // SAFETY: non-zero layout.
                    unsafe {
                        if zeroed {
                            alloc_zeroed(l)
                        } else {
                            alloc(l)
                        }
                    }
                });
                if p.is_null() {
                    // Refused: only a limit on the chain, no earlier than the bound.
                    let mut i = Some(at);
                    let mut plausible = false;
                    while let Some(n) = i {
                        if let Some(lim) = m.nodes[n].limit {
                            let (live, _) = m.expected(n);
                            let slack = STOCK_BOUND * threads as u64
                                + (l.size() as u64) * 2
                                + m.remote_freed[me];
                            if live + l.size() as u64 + slack + (64 << 10) > lim as u64 {
                                plausible = true;
                            }
                        }
                        i = m.nodes[n].parent;
                    }
                    if !plausible {
                        let mut chain = String::new();
                        let mut i = Some(at);
                        while let Some(n) = i {
                            chain += &format!(
                                "\n  node {n} open {} limit {:?} model {:?} stats {:?}",
                                m.nodes[n].open,
                                m.nodes[n].limit,
                                m.expected(n),
                                m.nodes[n].scope.stats()
                            );
                            i = m.nodes[n].parent;
                        }
                        panic!("refused with no limit near: {l:?}, zeroed {zeroed}{chain}");
                    }
                    continue;
                }
                if zeroed {
                    // SAFETY: p holds l.size() bytes.
                    let z = unsafe { core::slice::from_raw_parts(p, l.size()) };
                    assert!(
                        z.iter().all(|&x| x == 0),
                        "alloc_zeroed returned dirty memory"
                    );
                }
                // SAFETY: p is live.
                let usable = unsafe { usable_size(p) } as u64;
                assert!(usable >= l.size() as u64 && (p as usize).is_multiple_of(l.align()));
                let b = Block {
                    ptr: p as usize,
                    layout: l,
                    usable,
                    origin: at,
                    tag: rng.next() as u8,
                };
                fill(&b);
                m.blocks[me].push(b);
            }
            // free one of this thread's blocks
            45..=64 => {
                if !m.blocks[me].is_empty() {
                    let k = rng.below(m.blocks[me].len());
                    let b = m.blocks[me].swap_remove(k);
                    assert!(intact(&b), "a live block was overwritten");
                    // SAFETY: live, with this layout.
                    unsafe { dealloc(b.ptr as *mut u8, b.layout) };
                }
            }
            // send a block to another thread, which frees it
            65..=72 => {
                if threads > 1 && !m.blocks[me].is_empty() {
                    let k = rng.below(m.blocks[me].len());
                    let b = m.blocks[me].swap_remove(k);
                    let to = (me + 1 + rng.below(threads - 1)) % threads;
                    m.inbox[to].push(b);
                }
            }
            // realloc from whatever scope: the block keeps its origin
            73..=82 => {
                if !m.blocks[me].is_empty() {
                    let k = rng.below(m.blocks[me].len());
                    let b = m.blocks[me][k];
                    assert!(intact(&b));
                    let new = rng.range(1, 40 << 10);
                    let s = m.nodes[at].scope.clone();
                    // SAFETY: live block with this layout; new size non-zero.
                    let q = s.run(|| unsafe { realloc(b.ptr as *mut u8, b.layout, new) });
                    if !q.is_null() {
                        let l = Layout::from_size_align(new, b.layout.align()).unwrap();
                        let keep = new.min(b.layout.size());
                        // SAFETY: q holds at least `new` bytes.
                        let moved = unsafe { core::slice::from_raw_parts(q, keep) };
                        assert!(moved.iter().all(|&x| x == b.tag), "realloc lost contents");
                        let nb = Block {
                            ptr: q as usize,
                            layout: l,
                            // SAFETY: q is live.
                            usable: unsafe { usable_size(q) } as u64,
                            ..b
                        };
                        fill(&nb);
                        m.blocks[me][k] = nb;
                    }
                }
            }
            // open a child
            83..=89 => {
                if mine.len() < 24 {
                    let s = m.nodes[at].scope.child("m");
                    m.nodes.push(Node {
                        scope: s,
                        parent: Some(at),
                        owner: me,
                        open: true,
                        limit: None,
                    });
                }
            }
            // close a scope (not the thread's subtree top) and its descendants
            90..=94 => {
                if m.nodes[at].parent.is_some_and(|p| m.nodes[p].owner == me) {
                    m.nodes[at].scope.close();
                    for i in 0..m.nodes.len() {
                        if m.is_under(i, at) {
                            m.nodes[i].open = false;
                        }
                    }
                }
            }
            // set or remove a limit, above what the subtree holds
            _ => {
                // Above what the subtree holds charged (live bytes and stocks): a limit lowered
                // below the charge applies to new charges only, and stocks charged before it
                // could still be handed out (documented in README's Limits).
                let (live, _) = m.expected(at);
                let charged = m.nodes[at].scope.stats().charged_bytes;
                let lim = if rng.chance(30) {
                    None
                } else {
                    Some(live.max(charged) as usize + rng.range(64 << 10, 4 << 20))
                };
                m.nodes[at].scope.set_limit(lim);
                m.nodes[at].limit = lim;
            }
        }
    }
}

/// The checks at a quiet point: contents, exact figures of every open scope, limits.
pub fn check(m: &Model, when: &str) -> Result<(), String> {
    for b in m.all_blocks() {
        if !intact(b) {
            return Err(format!("{when}: a live block was overwritten"));
        }
    }
    for (i, n) in m.nodes.iter().enumerate() {
        if !n.open {
            continue;
        }
        let st = n.scope.stats();
        let (bytes, objects) = m.expected(i);
        if (st.bytes, st.objects) != (bytes, objects) {
            return Err(format!(
                "{when}: scope {i}: allocator says {} B / {} objects, model {bytes} B / {objects}",
                st.bytes, st.objects
            ));
        }
        if st.objects > st.allocs || st.frees != st.allocs - st.objects {
            return Err(format!("{when}: scope {i}: inconsistent {st:?}"));
        }
        if let Some(lim) = n.limit {
            if st.charged_bytes > lim as u64 {
                return Err(format!("{when}: scope {i}: limit {lim} passed: {st:?}"));
            }
        }
    }
    Ok(())
}

/// A fuzzer's input as a [`Source`]: eight bytes per choice, little-endian, zeros once it runs
/// out (`exhausted` then says so).
pub struct Bytes<'a> {
    pub data: &'a [u8],
    pub exhausted: bool,
}

impl Source for Bytes<'_> {
    fn next(&mut self) -> u64 {
        let n = self.data.len().min(8);
        if n == 0 {
            self.exhausted = true;
        }
        let mut word = [0u8; 8];
        word[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        u64::from_le_bytes(word)
    }
}

/// Operations per round of [`run_bytes`]: a check at a quiet point after each round.
const OPS_PER_ROUND: usize = 8;

/// One thread runs the operations that `data` chooses against the model, in a scope of its own
/// under `top`, checking after every few operations; then frees everything, checks that the
/// figures are back to zero and closes its scopes. Panics with the reason on a mismatch.
pub fn run_bytes(data: &[u8], top: &Scope, book: &Scope) {
    let mut src = Bytes {
        data,
        exhausted: false,
    };
    let model = {
        let _g = book.enter();
        let run = top.child("run");
        Mutex::new(Model {
            nodes: vec![
                Node {
                    scope: run.clone(),
                    parent: None,
                    owner: usize::MAX,
                    open: true,
                    limit: None,
                },
                Node {
                    scope: run.child("thread-0"),
                    parent: Some(0),
                    owner: 0,
                    open: true,
                    limit: None,
                },
            ],
            blocks: vec![Vec::new()],
            inbox: vec![Vec::new()],
            remote_freed: vec![0],
        })
    };
    let mut r = 0;
    while !src.exhausted {
        round(0, 1, OPS_PER_ROUND, &mut src, &model, book);
        let m = model.lock().unwrap();
        if let Err(e) = check(&m, &format!("round {r}")) {
            panic!("{e}");
        }
        r += 1;
    }
    let mut m = model.lock().unwrap();
    let _g = book.enter();
    let m = &mut *m;
    for list in m.blocks.iter_mut().chain(m.inbox.iter_mut()) {
        for b in list.drain(..) {
            assert!(intact(&b), "a live block was overwritten");
            // SAFETY: live, with this layout.
            unsafe { dealloc(b.ptr as *mut u8, b.layout) };
        }
    }
    let st = m.nodes[0].scope.stats();
    assert_eq!(
        (st.bytes, st.objects),
        (0, 0),
        "figures after freeing everything"
    );
    m.nodes[0].scope.close();
}

//! Application-shaped Rust workloads for comparing global allocators.
//!
//! Each binary of this crate (`apps-system`, `apps-jemalloc`, `apps-mimalloc`,
//! `apps-scopealloc`) installs one allocator as `#[global_allocator]` and calls [`main`], so
//! everything a workload allocates — collections, strings, channel buffers — comes from that
//! allocator, as in a real program. `scripts/bench-rust-apps.sh` runs them alternating.
//!
//! Usage: `apps-<allocator> WORKLOAD [SCALE=1] [SEED=1]`, WORKLOAD one of [`WORKLOADS`]. Prints
//! `WORKLOAD allocator=<name> checksum=<hex>`; the checksum depends only on the workload, the
//! scale and the seed, so every allocator must print the same one.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::mpsc::sync_channel;
use std::thread;

/// A workload: runs at a scale (1 = the work described in [`WORKLOADS`]) with a seed and
/// returns its checksum.
pub type Workload = fn(f64, u64) -> u64;

/// The workloads, by name, with the work done at scale 1.
pub const WORKLOADS: [(&str, Workload); 6] = [
    // 200 000 String keys and values in a BTreeMap: insert, look up, remove half, refill.
    ("btree", btree),
    // 60 000 records built as serde_json values, serialized, parsed back and walked, 3 times.
    ("json", json),
    // 300 000 strings built with format! and push_str, sorted, deduplicated, joined, split.
    ("strings", strings),
    // 1 000 000 steps of insert/replace/remove of Box<[u8]> of 16..=1024 B in a HashMap of
    // 50 000 keys.
    ("hashmap", hashmap),
    // 4 000 000 Box<[u8]> of 64..=256 B sent in Vecs of 64 through a sync_channel and dropped
    // by the receiver.
    ("channel", channel),
    // 600 000 Vec<u8> messages of 32..=512 B through two sync_channels and three threads; the
    // middle thread builds the next message and drops the one it received.
    ("pipeline", pipeline),
];

/// Entry point of every binary: parses the arguments, runs the workload, prints its checksum.
pub fn main(allocator: &str) {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        let names: Vec<&str> = WORKLOADS.iter().map(|w| w.0).collect();
        eprintln!(
            "usage: {} WORKLOAD [SCALE] [SEED]; workloads: {}",
            args[0],
            names.join(" ")
        );
        std::process::exit(2)
    };
    let Some(name) = args.get(1) else { usage() };
    let Some(&(_, run)) = WORKLOADS.iter().find(|w| w.0 == name) else {
        usage()
    };
    let scale: f64 = args
        .get(2)
        .map_or(Some(1.0), |s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let seed: u64 = args
        .get(3)
        .map_or(Some(1), |s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let checksum = run(scale, seed);
    println!("{name} allocator={allocator} checksum={checksum:016x}");
}

/// SplitMix64: small, seedable, the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// `base` scaled, at least 1.
fn scaled(base: usize, scale: f64) -> usize {
    ((base as f64 * scale).round() as usize).max(1)
}

/// FNV-1a over bytes, folded into `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn btree(scale: f64, seed: u64) -> u64 {
    let n = scaled(200_000, scale);
    let mut rng = Rng(seed);
    let mut map = BTreeMap::new();
    for i in 0..n {
        let key = format!("key-{:016x}", rng.next());
        let value = "v".repeat(rng.range(0, 40)) + &i.to_string();
        map.insert(key, value);
    }
    let keys: Vec<String> = map.keys().step_by(2).cloned().collect();
    let mut h = FNV_START;
    for k in &keys {
        let v = map.remove(k).expect("the key was inserted");
        h = fnv(h, v.as_bytes());
    }
    for (i, k) in keys.iter().enumerate() {
        map.insert(k.clone() + "-again", format!("{i}:{}", k.len()));
    }
    for (k, v) in &map {
        h = fnv(fnv(h, k.as_bytes()), v.as_bytes());
    }
    h
}

fn json(scale: f64, seed: u64) -> u64 {
    use serde_json::{json, Value};
    let n = scaled(60_000, scale);
    let mut rng = Rng(seed);
    let mut h = FNV_START;
    for round in 0..3 {
        let records: Vec<Value> = (0..n)
            .map(|i| {
                let tags: Vec<String> =
                    (0..rng.range(0, 6)).map(|t| format!("tag{}", rng.next() % 50 + t as u64)).collect();
                json!({
                    "id": i,
                    "name": format!("user-{}-{}", rng.next() % 100_000, round),
                    "score": (rng.next() % 10_000) as f64 / 100.0,
                    "tags": tags,
                    "address": { "city": format!("city{}", rng.next() % 300), "zip": rng.next() % 100_000 },
                })
            })
            .collect();
        let text = serde_json::to_string(&Value::Array(records)).expect("serializable");
        let back: Value = serde_json::from_str(&text).expect("parses back");
        let items = back.as_array().expect("an array");
        let mut tag_count = 0usize;
        let mut score_sum = 0f64;
        for item in items {
            tag_count += item["tags"].as_array().map_or(0, Vec::len);
            score_sum += item["score"].as_f64().unwrap_or(0.0);
            h = fnv(h, item["address"]["city"].as_str().unwrap_or("").as_bytes());
        }
        h = fnv(h, text.as_bytes());
        h = fnv(h, &(tag_count as u64).to_le_bytes());
        h = fnv(h, &((score_sum * 100.0).round() as u64).to_le_bytes());
    }
    h
}

fn strings(scale: f64, seed: u64) -> u64 {
    let n = scaled(300_000, scale);
    let mut rng = Rng(seed);
    let mut v: Vec<String> = Vec::with_capacity(n / 4);
    for i in 0..n {
        let mut s = format!("{:x}", rng.next() % 1_000_000);
        for _ in 0..rng.range(0, 6) {
            s.push_str(["-alpha", "-beta", "-gamma", "-delta"][rng.range(0, 3)]);
        }
        write!(s, "/{}", i % 1000).expect("writing to a String cannot fail");
        v.push(s);
    }
    v.sort_unstable();
    v.dedup();
    let joined = v.join(",");
    let mut h = fnv(FNV_START, joined.as_bytes());
    let mut upper: Vec<String> = joined.split(',').map(|p| p.to_uppercase()).collect();
    upper.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    for s in upper.iter().step_by(97) {
        h = fnv(h, s.as_bytes());
    }
    fnv(h, &(upper.len() as u64).to_le_bytes())
}

fn hashmap(scale: f64, seed: u64) -> u64 {
    let steps = scaled(1_000_000, scale);
    let keys = 50_000u64;
    let mut rng = Rng(seed);
    let mut map: HashMap<u64, Box<[u8]>> = HashMap::new();
    let mut h = 0u64;
    for _ in 0..steps {
        let k = rng.next() % keys;
        if rng.next().is_multiple_of(4) {
            if let Some(old) = map.remove(&k) {
                h = h.wrapping_add(old.len() as u64 + old[0] as u64);
            }
        } else {
            let len = rng.range(16, 1024);
            let fill = (rng.next() & 0xff) as u8;
            if let Some(old) = map.insert(k, vec![fill; len].into_boxed_slice()) {
                h = h.wrapping_add(old.len() as u64 + old[old.len() - 1] as u64);
            }
        }
    }
    // Iteration order depends on the map's random hasher keys: sum, do not chain.
    map.values()
        .fold(h, |h, b| h.wrapping_add(b.len() as u64 * 31 + b[0] as u64))
}

/// Objects per Vec sent by `channel`, and the capacity of the channels (in messages).
const BATCH: usize = 64;
const CAPACITY: usize = 64;

fn channel(scale: f64, seed: u64) -> u64 {
    let n = scaled(4_000_000, scale);
    let (tx, rx) = sync_channel::<Vec<Box<[u8]>>>(CAPACITY);
    let producer = thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut sent = 0;
        while sent < n {
            let k = BATCH.min(n - sent);
            let batch: Vec<Box<[u8]>> = (0..k)
                .map(|i| vec![(sent + i) as u8; rng.range(64, 256)].into_boxed_slice())
                .collect();
            tx.send(batch).expect("the consumer is alive");
            sent += k;
        }
    });
    let mut h = 0u64;
    let mut seq = 0usize;
    for batch in rx {
        for b in batch {
            assert_eq!(b[b.len() - 1], seq as u8, "objects arrive in order, intact");
            h = h.wrapping_mul(31).wrapping_add(b.len() as u64);
            seq += 1;
        }
    }
    producer.join().expect("producer panicked");
    assert_eq!(seq, n, "every object arrived");
    h
}

fn pipeline(scale: f64, seed: u64) -> u64 {
    let n = scaled(600_000, scale);
    let (tx1, rx1) = sync_channel::<Vec<u8>>(CAPACITY);
    let (tx2, rx2) = sync_channel::<Vec<u8>>(CAPACITY);
    let first = thread::spawn(move || {
        let mut rng = Rng(seed);
        for i in 0..n {
            let len = rng.range(32, 512);
            let mut m = Vec::with_capacity(len);
            m.extend((0..len).map(|j| (i + j) as u8));
            tx1.send(m).expect("the middle stage is alive");
        }
    });
    let middle = thread::spawn(move || {
        let mut rng = Rng(seed ^ 0x5555_5555_5555_5555);
        for m in rx1 {
            let len = rng.range(32, 512);
            let seedbyte = m[m.len() / 2];
            let next: Vec<u8> = (0..len).map(|j| seedbyte.wrapping_add(j as u8)).collect();
            drop(m);
            tx2.send(next).expect("the last stage is alive");
        }
    });
    let mut h = FNV_START;
    let mut count = 0usize;
    for m in rx2 {
        h = fnv(h, &[m[0], m[m.len() - 1], m.len() as u8]);
        count += 1;
    }
    first.join().expect("first stage panicked");
    middle.join().expect("middle stage panicked");
    assert_eq!(count, n, "every message arrived");
    h
}

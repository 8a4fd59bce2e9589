//! A small HTTP service on 127.0.0.1 where every request runs in a scope under its tenant, with a
//! built-in load generator that stops by itself. It serves `/metrics` (Prometheus) and `/report`
//! (text), trips one soft limit (tenant `acme`, reported by an `on_high` hook) and one hard limit
//! (tenant `globex`: its big requests are refused with 503), prints the top scopes once a second,
//! and writes the picture of the tree to `target/per_request.svg` at the end.
//!
//! Run: `cargo run --release --example per_request --features svg`

use scopealloc::{Scope, ScopeAlloc};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 400;

struct Service {
    tenants: Vec<(String, Scope)>,
    /// A session cache that keeps one small object of some requests (it outlives the request's
    /// scope: its charge moves to the tenant when the request closes).
    sessions: Mutex<Vec<Box<[u8]>>>,
    served: AtomicU64,
    refused: AtomicU64,
}

fn handle(svc: &Service, mut conn: TcpStream) {
    let mut line = String::new();
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers.
    let mut h = String::new();
    while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, body) = route(svc, &path);
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn route(svc: &Service, path: &str) -> (&'static str, String) {
    if path == "/metrics" {
        return ("200 OK", scopealloc::report().prometheus());
    }
    if path == "/report" {
        return (
            "200 OK",
            scopealloc::report().text().max_children(5).to_string(),
        );
    }
    // /work/<tenant>/<KiB>
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.len() != 3 || parts[0] != "work" {
        return ("404 Not Found", "no such page\n".into());
    }
    let Some((_, tenant)) = svc.tenants.iter().find(|(n, _)| n == parts[1]) else {
        return ("404 Not Found", "no such tenant\n".into());
    };
    let kib: usize = parts[2].parse().unwrap_or(1);
    let n = svc.served.fetch_add(1, Ordering::Relaxed);
    let request = tenant.child(&format!("request-{n}"));
    let result = request.run(|| {
        // The request's working memory: refused past the tenant's hard limit.
        let mut buf: Vec<u8> = Vec::new();
        buf.try_reserve_exact(kib << 10).map_err(|_| ())?;
        buf.resize(kib << 10, (n % 251) as u8);
        let sum: u64 = buf.iter().map(|&b| b as u64).sum();
        if n.is_multiple_of(7) {
            // One object of the request outlives it, in the session cache.
            let mut s = svc.sessions.lock().unwrap();
            s.push(vec![1u8; 256].into_boxed_slice());
            if s.len() > 200 {
                s.remove(0);
            }
        }
        Ok::<u64, ()>(sum)
    });
    request.close();
    match result {
        Ok(sum) => ("200 OK", format!("sum {sum}\n")),
        Err(()) => {
            svc.refused.fetch_add(1, Ordering::Relaxed);
            (
                "503 Service Unavailable",
                "over the tenant's limit\n".into(),
            )
        }
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).expect("connect to the service");
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

fn main() {
    let started = Instant::now();
    let server = Scope::root().child("server");
    let acme = server.child("acme");
    let globex = server.child("globex");
    let initech = server.child("initech");
    acme.set_high(Some(1 << 20)); // soft: 1 MiB, reported, never refused
    globex.set_limit(Some(2 << 20)); // hard: 2 MiB
    let highs = Arc::new(AtomicU64::new(0));
    {
        let highs = highs.clone();
        acme.on_high(move |scope, stats| {
            // Runs on the notifier thread, outside any allocation: it may print (allocate).
            if highs.fetch_add(1, Ordering::Relaxed) < 3 {
                println!(
                    "  [soft limit] {} crossed its high mark: {} KiB charged (further crossings \
                     are counted, not printed)",
                    scope.name(),
                    stats.charged_bytes >> 10
                );
            }
        })
        .expect("start the notifier");
    }
    let svc = Arc::new(Service {
        tenants: vec![
            ("acme".into(), acme.clone()),
            ("globex".into(), globex.clone()),
            ("initech".into(), initech.clone()),
        ],
        sessions: Mutex::new(Vec::new()),
        served: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().unwrap().to_string();
    println!("serving on http://{addr} (/metrics, /report, /work/<tenant>/<KiB>)");
    {
        let svc = svc.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let svc = svc.clone();
                std::thread::spawn(move || handle(&svc, conn));
            }
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let done = done.clone();
        let server = server.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                println!("-- top scopes --");
                print!("{}", server.report().text().max_depth(1).max_children(3));
            }
        })
    };

    // The load generator: clients asking for work in random tenants, stopping by themselves.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9u64 ^ c as u64;
                let mut codes = [0u64; 2];
                for _ in 0..REQUESTS_PER_CLIENT {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (tenant, kib) = match x % 10 {
                        0..=3 => ("acme", 256 + x % 1024),
                        4..=6 => (
                            "globex",
                            if x.is_multiple_of(5) {
                                3000
                            } else {
                                64 + x % 256
                            },
                        ),
                        _ => ("initech", 16 + x % 128),
                    };
                    let (code, _) = get(&addr, &format!("/work/{tenant}/{kib}"));
                    codes[(code != 200) as usize] += 1;
                }
                codes
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for c in clients {
        let [a, b] = c.join().unwrap();
        ok += a;
        refused += b;
    }
    done.store(true, Ordering::Relaxed);
    ticker.join().unwrap();

    let (_, metrics) = get(&addr, "/metrics");
    let (_, report) = get(&addr, "/report");
    println!("-- /metrics (the server's scopes) --");
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("scopealloc_scope_bytes") || l.contains("events_total"))
        .take(12)
    {
        println!("{l}");
    }
    println!("-- /report --\n{report}");
    let svg = server.report().svg();
    std::fs::create_dir_all("target").ok();
    std::fs::write("target/per_request.svg", svg).expect("write the picture");
    println!(
        "{ok} requests served, {refused} refused by globex's hard limit (503), {} soft-limit \
         crossings reported for acme; globex refusals counted: {}; picture: \
         target/per_request.svg; {:.1} s",
        highs.load(Ordering::Relaxed),
        globex.events().max,
        started.elapsed().as_secs_f64()
    );
    assert!(refused > 0, "the hard limit was tripped");
    assert!(globex.events().max > 0 && acme.events().high > 0);
    assert_eq!(svc.refused.load(Ordering::Relaxed), refused);
}

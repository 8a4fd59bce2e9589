//! A small multi-tenant "server": worker threads take requests from a channel and run each one
//! in its own scope, a child of the tenant's scope. One tenant has a memory limit, and one of
//! its requests asks for more than the limit: it gets a clean error (`Vec::try_reserve` returns
//! `Err`), the server and the other requests carry on. At the end the scope tree is printed with
//! its figures.
//!
//! `cargo run --release --example tenants`

mod common;
use common::human;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use scopealloc::{Scope, ScopeAlloc};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

const WORKERS: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Work {
    /// Build a report of `rows` rows; the rendered report is kept by the tenant.
    Report { rows: usize },
    /// Import `bytes` bytes of data into one buffer, then checksum it.
    Import { bytes: usize },
}

struct Request {
    id: u64,
    tenant: usize,
    work: Work,
}

struct Response {
    id: u64,
    tenant: usize,
    work: Work,
    result: Result<String, String>,
    /// The request's scope, kept open so the final tree shows each request's figures.
    scope: Scope,
}

struct Tenant {
    name: &'static str,
    scope: Scope,
    /// Rendered reports, allocated inside request scopes and kept after the request ends.
    reports: Mutex<Vec<String>>,
}

/// Runs inside the request's scope: every allocation here is charged to it.
fn handle(tenant: &Tenant, req: &Request) -> Result<String, String> {
    match req.work {
        Work::Report { rows } => {
            let mut lines: Vec<String> = (0..rows)
                .map(|i| format!("{}:{}:{:08}", tenant.name, req.id, (i * 7919) % rows))
                .collect();
            lines.sort();
            let report = lines.join("\n");
            let summary = format!("report of {} rows, {} bytes", rows, report.len());
            tenant.reports.lock().unwrap().push(report);
            Ok(summary)
        }
        Work::Import { bytes } => {
            let mut buf: Vec<u8> = Vec::new();
            if let Err(e) = buf.try_reserve_exact(bytes) {
                return Err(format!("import of {bytes} bytes refused: {e}"));
            }
            buf.extend((0..bytes).map(|i| (i % 251) as u8));
            let sum = buf.iter().fold(0u64, |a, &b| a.wrapping_mul(31) ^ b as u64);
            Ok(format!("imported {bytes} bytes, checksum {sum:016x}"))
        }
    }
}

/// Prints `scope` and its open descendants as an indented tree.
fn print_tree(scope: &Scope, depth: usize) {
    let s = scope.stats();
    let limit = scope.limit().map_or("-".to_owned(), |l| human(l as u64));
    println!(
        "{:<28} {:>10} {:>8} {:>10} {:>10} {:>6}",
        format!("{:indent$}{}", "", scope.name(), indent = depth * 2),
        human(s.bytes),
        s.objects,
        human(s.peak_bytes),
        limit,
        s.limit_hits,
    );
    for child in scope.children() {
        print_tree(&child, depth + 1);
    }
}

fn main() {
    let server = Scope::root().child("server");
    let tenants: Arc<Vec<Tenant>> = Arc::new(
        ["acme", "globex", "initech"]
            .into_iter()
            .map(|name| Tenant {
                name,
                scope: server.child(name),
                reports: Mutex::new(Vec::new()),
            })
            .collect(),
    );
    // globex pays for 4 MiB.
    tenants[1].scope.set_limit(Some(4 << 20));

    let (req_tx, req_rx) = mpsc::channel::<Request>();
    let req_rx = Arc::new(Mutex::new(req_rx));
    let (resp_tx, resp_rx) = mpsc::channel::<Response>();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (req_rx, resp_tx, tenants) = (req_rx.clone(), resp_tx.clone(), tenants.clone());
            thread::spawn(move || loop {
                let Ok(req) = req_rx.lock().unwrap().recv() else {
                    break;
                };
                let tenant = &tenants[req.tenant];
                // The request scope is created (and its name formatted) outside it, in the
                // worker's own scope.
                let scope = tenant.scope.child(&format!("req-{}", req.id));
                let result = scope.run(|| handle(tenant, &req));
                let response = Response {
                    id: req.id,
                    tenant: req.tenant,
                    work: req.work,
                    result,
                    scope,
                };
                resp_tx.send(response).unwrap();
            })
        })
        .collect();
    drop(resp_tx);

    let mut id = 0;
    for round in 0..4 {
        for tenant in 0..tenants.len() {
            id += 1;
            let work = match (tenant, round) {
                // The one request that passes its tenant's limit.
                (1, 2) => Work::Import { bytes: 16 << 20 },
                (_, r) if r % 2 == 1 => Work::Import {
                    bytes: (256 << 10) * (tenant + 1),
                },
                _ => Work::Report {
                    rows: 2000 * (tenant + 1) * (round + 1),
                },
            };
            req_tx.send(Request { id, tenant, work }).unwrap();
        }
    }
    drop(req_tx);

    let mut responses: Vec<Response> = resp_rx.iter().collect();
    for w in workers {
        w.join().unwrap();
    }
    responses.sort_by_key(|r| r.id);
    for r in &responses {
        let status = match &r.result {
            Ok(msg) => format!("200 {msg}"),
            Err(msg) => format!("507 {msg}"),
        };
        println!(
            "req-{:<3} {:<8} {:<32} peak {:>9}  {status}",
            r.id,
            tenants[r.tenant].name,
            format!("{:?}", r.work),
            human(r.scope.stats().peak_bytes),
        );
    }
    let refused = responses.iter().filter(|r| r.result.is_err()).count();
    assert_eq!(refused, 1, "exactly one request should pass globex's limit");
    assert!(tenants[1].scope.stats().limit_hits >= 1);

    println!(
        "\n{:<28} {:>10} {:>8} {:>10} {:>10} {:>6}",
        "scope", "bytes", "objects", "peak", "limit", "hits"
    );
    print_tree(&server, 0);

    // Requests end: their scopes close, and what they left (the reports) is now charged to
    // the tenants.
    drop(responses);
    println!("\nafter the request scopes closed (reports now charged to their tenant):");
    print_tree(&server, 0);
    for t in tenants.iter() {
        let reports: usize = t.reports.lock().unwrap().iter().map(String::len).sum();
        assert_eq!(t.scope.children().len(), 0);
        assert!(t.scope.stats().self_bytes >= reports as u64);
    }
}

//! Reports of the scope tree: figures equal to `stats()`, parents' totals equal to the sums of
//! their children in one snapshot, size-class rows, the text form's folding, the Prometheus
//! exposition (parsed by the official Python client's parser) and its cardinality cap, and JSON
//! (with the `serde` feature, parsed back by serde_json).
//!
//! The test harness allocates in the root scope, and so do the other tests of this binary, in
//! parallel: every assertion on figures is about scopes a test creates itself.

use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use scopealloc::{ClassKind, Report, Scope, ScopeReport};

#[global_allocator]
static GLOBAL: scopealloc::ScopeAlloc = scopealloc::ScopeAlloc::new();

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Every scope's bytes and objects are its own plus its children's, paths are the parent's plus
/// the name, ids are unique: what one consistent snapshot guarantees.
fn assert_consistent(r: &Report) {
    let mut ids = std::collections::HashSet::new();
    for (i, s) in r.scopes.iter().enumerate() {
        assert!(ids.insert(s.id), "scope {} twice in one report", s.id);
        let (mut bytes, mut objects) = (s.self_bytes, s.self_objects);
        for (_, c) in r.children(i) {
            bytes += c.bytes;
            objects += c.objects;
            let expect = if s.path.is_empty() {
                c.name.clone()
            } else {
                format!("{}/{}", s.path, c.name)
            };
            assert_eq!(c.path, expect);
            assert_eq!(c.depth, s.depth + 1);
        }
        assert_eq!(
            (s.bytes, s.objects),
            (bytes, objects),
            "totals of {}",
            s.path
        );
        let class_bytes: u64 = s.classes.iter().map(|c| c.bytes).sum();
        let class_objects: u64 = s.classes.iter().map(|c| c.objects).sum();
        assert_eq!((class_bytes, class_objects), (s.self_bytes, s.self_objects));
    }
}

fn find<'a>(r: &'a Report, path: &str) -> &'a ScopeReport {
    r.get(path)
        .unwrap_or_else(|| panic!("{path} not in the report"))
}

#[test]
fn a_report_of_a_subtree_has_the_figures_of_stats_and_full_paths() {
    let server = Scope::root().child("rep-server");
    let tenant = server.child("tenant-a");
    let request = tenant.child("request-1");
    tenant.set_limit(Some(4 * MIB));
    let a = tenant.run(|| vec![0u8; 1000]);
    let b = request.run(|| vec![0u8; 50 * KIB]);
    let refused = request.run(|| {
        // SAFETY: a non-zero size; a refusal returns null, which is never freed.
        unsafe { alloc(Layout::from_size_align(8 * MIB, 8).unwrap()) }
    });
    assert!(refused.is_null(), "the limit refuses 8 MiB");

    let r = tenant.report();
    assert_consistent(&r);
    assert_eq!(r.scopes.len(), 2);
    assert_eq!(r.scopes[0].path, "rep-server/tenant-a");
    assert_eq!(r.scopes[0].parent, None);
    let t = find(&r, "rep-server/tenant-a");
    let q = find(&r, "rep-server/tenant-a/request-1");
    assert_eq!(q.parent, Some(0));
    for (s, scope) in [(t, &tenant), (q, &request)] {
        let st = scope.stats();
        assert_eq!(s.id, scope.id());
        assert_eq!(s.name, scope.name());
        assert!(!s.closed);
        assert_eq!(
            (s.bytes, s.objects, s.self_bytes, s.self_objects),
            (st.bytes, st.objects, st.self_bytes, st.self_objects)
        );
        assert_eq!((s.allocs, s.frees), (st.allocs, st.frees));
        assert_eq!(s.peak_bytes, st.peak_bytes);
        assert_eq!(s.charged_bytes, st.charged_bytes);
        assert_eq!(s.events.max, st.limit_hits);
    }
    assert_eq!(t.limit, Some(4 * MIB as u64));
    assert_eq!(q.limit, None);
    assert_eq!(t.events.max, 1, "the tenant's limit refused the request");
    assert!(t.self_bytes >= 1000 && q.bytes >= 50 * KIB as u64);

    let whole = scopealloc::report();
    assert_consistent(&whole);
    assert_eq!(whole.scopes[0].path, "");
    assert_eq!(whole.scopes[0].name, "root");
    assert_eq!(find(&whole, "rep-server").bytes, server.stats().bytes);
    drop((a, b));
}

#[test]
fn size_class_rows_show_live_objects_free_bytes_slabs_and_large_and_huge_objects() {
    let s = Scope::root().child("rep-classes");
    let small: Vec<Box<[u8; 64]>> = s.run(|| (0..100).map(|_| Box::new([0u8; 64])).collect());
    let large = s.run(|| vec![0u8; 200 * KIB]);
    let huge = s.run(|| vec![0u8; 5 * MIB]);
    let r = s.report();
    assert_consistent(&r);
    let me = &r.scopes[0];
    let row = me
        .classes
        .iter()
        .find(|c| c.kind == ClassKind::Small && c.object_size == 64)
        .expect("a 64 B row");
    assert_eq!((row.objects, row.bytes), (100, 6400));
    assert!(row.slabs >= 1);
    assert_eq!(
        row.free_bytes % 64,
        0,
        "free space is whole objects of the class"
    );
    assert!(
        row.free_bytes > 0,
        "a slab holds more than 100 objects of 64 B"
    );
    let l = me
        .classes
        .iter()
        .find(|c| c.kind == ClassKind::Large)
        .unwrap();
    assert_eq!(l.objects, 1);
    assert!(l.bytes >= 200 * KIB as u64);
    let h = me
        .classes
        .iter()
        .find(|c| c.kind == ClassKind::Huge)
        .unwrap();
    assert_eq!(h.objects, 1);
    assert!(h.bytes >= 5 * MIB as u64);
    assert!(
        me.classes.windows(2).all(|w| w[0].bytes >= w[1].bytes),
        "rows largest first"
    );
    drop((small, large, huge));
    let r = s.report();
    assert_eq!(r.scopes[0].bytes, 0);
    assert!(r.scopes[0].classes.iter().all(|c| c.objects == 0));
}

#[test]
fn closed_scopes_leave_the_report_and_their_charges_show_in_the_ancestor() {
    let app = Scope::root().child("rep-close");
    let req = app.child("req");
    let v = req.run(|| vec![0u8; 3000]);
    req.close();
    let r = app.report();
    assert_consistent(&r);
    assert_eq!(r.scopes.len(), 1, "a closed child is not in the tree");
    assert!(r.scopes[0].self_bytes >= 3000, "its charges moved up");
    let closed = req.report();
    assert_eq!(closed.scopes.len(), 1);
    assert!(closed.scopes[0].closed);
    assert_eq!(closed.scopes[0].bytes, 0);
    assert_eq!(closed.scopes[0].path, "rep-close/req");
    drop(v);
}

#[test]
fn reports_of_ten_thousand_scopes_are_consistent_while_other_threads_change_the_tree() {
    let top = Scope::root().child("rep-10k");
    let tenants: Vec<Scope> = (0..100).map(|i| top.child(&format!("t{i}"))).collect();
    let mut keep = Vec::new();
    let mut held = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        for j in 0..99 {
            let s = t.child(&format!("r{j}"));
            if j % 10 == 0 {
                held.push(s.run(|| vec![0u8; 16 + i + j]));
            }
            keep.push(s);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn: Vec<_> = (0..2)
        .map(|k| {
            let stop = stop.clone();
            let parent = tenants[k].clone();
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = parent.child("churn");
                    let v = s.run(|| vec![1u8; 100]);
                    drop(v);
                    s.close();
                    n += 1;
                }
                n
            })
        })
        .collect();
    for _ in 0..5 {
        let r = top.report();
        assert_consistent(&r);
        assert!(r.scopes.len() >= 10_001, "{} scopes", r.scopes.len());
        assert_eq!(
            r.scopes.len() - r.scopes.iter().filter(|s| s.name == "churn").count(),
            10_001
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in churn {
        assert!(c.join().unwrap() > 0);
    }
    let r = top.report();
    assert_eq!(r.scopes.len(), 10_001);
    assert_eq!(r.scopes[0].bytes, top.stats().bytes);
    drop(held);
}

#[test]
fn the_text_form_is_a_tree_largest_first_with_folds_and_class_rows() {
    let app = Scope::root().child("rep-text");
    let big = app.child("big");
    let mid = app.child("mid");
    let smalls: Vec<Scope> = (0..5).map(|i| app.child(&format!("small-{i}"))).collect();
    let deep = big.child("deep");
    let a = big.run(|| vec![0u8; 3 * MIB]);
    let b = mid.run(|| vec![0u8; MIB]);
    let c = deep.run(|| vec![0u8; 100]);
    let s: Vec<Vec<u8>> = smalls.iter().map(|s| s.run(|| vec![0u8; 10])).collect();
    let r = app.report();
    let text = r.text().max_children(2).to_string();
    println!("{text}");
    let pos = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
    };
    assert!(text.starts_with("heap: "));
    assert!(pos("── big") < pos("── mid"), "largest first");
    assert!(pos("└── (5 others: ") > pos("── mid"), "the rest folded");
    assert!(text.contains("MiB"));
    assert!(text.contains("│   └── deep"), "the tree is drawn:\n{text}");
    assert!(
        text.contains("75.0%") || text.contains("74.9%"),
        "% of parent:\n{text}"
    );
    assert!(
        !text.contains("[large objects]"),
        "classes hidden by default"
    );

    let shallow = r.text().max_depth(1).to_string();
    assert!(!shallow.contains("deep") && shallow.contains("(1 others: 104 B)"));
    let with_classes = r.text().classes(true).to_string();
    assert!(with_classes.contains("[large objects]") && with_classes.contains("[16 B]"));
    assert_eq!(format!("{r}"), r.text().to_string());
    drop((a, b, c, s));
}

/// Parses `text` with `prometheus_client.parser.text_string_to_metric_families` (Python): its
/// samples as (name, scope label, event label) → value. Fails if python3 or the module is
/// missing (`pip install prometheus-client`; `.ci/run` installs it).
fn parse_with_python_client(text: &str) -> HashMap<(String, String, String), f64> {
    let dir = std::env::temp_dir().join(format!("scopealloc-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{:?}.prom", thread::current().id()));
    std::fs::write(&file, text).unwrap();
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        scope = s.labels.get("scope", "-")
        event = s.labels.get("event", "-")
        print(repr((s.name, scope, event, fam.type, s.value)))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("python3 must be installed to check the Prometheus exposition");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "the Python module prometheus_client is missing: pip install prometheus-client"
    );
    assert!(
        out.status.success(),
        "the parser refused the exposition: {stderr}\n{text}"
    );
    std::fs::remove_file(&file).ok();
    // Each line is a Python tuple repr: ('name', 'scope', 'event', 'type', value).
    let script_out = String::from_utf8(out.stdout).unwrap();
    let mut samples = HashMap::new();
    for line in script_out.lines() {
        let fields = python_tuple(line);
        assert_eq!(fields.len(), 5, "{line}");
        let value: f64 = fields[4].parse().unwrap();
        let key = (fields[0].clone(), fields[1].clone(), fields[2].clone());
        assert!(
            samples.insert(key, value).is_none(),
            "duplicate series: {line}"
        );
    }
    samples
}

/// The fields of a Python tuple repr of strings and one number (enough for the script above).
fn python_tuple(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('(').trim_end_matches(')');
    let mut fields = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') || chars.peek() == Some(&',') {
            chars.next();
        }
        match chars.peek() {
            None => break,
            Some(&q @ ('\'' | '"')) => {
                chars.next();
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some(o) => s.push(o),
                            None => break,
                        },
                        c if c == q => break,
                        c => s.push(c),
                    }
                }
                fields.push(s);
            }
            Some(_) => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                fields.push(s.trim().to_owned());
            }
        }
    }
    fields
}

#[test]
fn the_prometheus_exposition_parses_with_the_official_client_and_matches_the_report() {
    let app = Scope::root().child("rep-prom");
    let tenant = app.child("tenant \"a\"\\\nx");
    tenant.set_limit(Some(MIB));
    let other = app.child("tenant-b");
    let v = tenant.run(|| vec![0u8; 5000]);
    let w = other.run(|| vec![0u8; 700]);
    let refused = tenant.run(|| {
        // SAFETY: a non-zero size; a refusal returns null, which is never freed.
        unsafe { alloc(Layout::from_size_align(2 * MIB, 8).unwrap()) }
    });
    assert!(refused.is_null());
    let r = app.report();
    let text = r.prometheus();
    for name in [
        "scopealloc_scope_bytes",
        "scopealloc_scope_objects",
        "scopealloc_scope_peak_bytes",
        "scopealloc_scope_limit_bytes",
        "scopealloc_scope_charged_bytes",
        "scopealloc_scope_events_total",
        "scopealloc_heap_mapped_bytes",
        "scopealloc_heap_committed_bytes",
        "scopealloc_heap_in_use_bytes",
        "scopealloc_heap_cached_bytes",
        "scopealloc_heap_returned_bytes_total",
        "scopealloc_heap_metadata_bytes",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "HELP of {name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "TYPE of {name}");
    }
    let samples = parse_with_python_client(&text);
    let get = |name: &str, scope: &str, event: &str| {
        *samples
            .get(&(name.to_owned(), scope.to_owned(), event.to_owned()))
            .unwrap_or_else(|| panic!("no sample {name}{{scope={scope:?}}} in\n{text}"))
    };
    for s in &r.scopes {
        assert_eq!(get("scopealloc_scope_bytes", &s.path, "-"), s.bytes as f64);
        assert_eq!(
            get("scopealloc_scope_objects", &s.path, "-"),
            s.objects as f64
        );
        assert_eq!(
            get("scopealloc_scope_peak_bytes", &s.path, "-"),
            s.peak_bytes as f64
        );
        assert_eq!(
            get("scopealloc_scope_charged_bytes", &s.path, "-"),
            s.charged_bytes as f64
        );
        assert_eq!(
            get("scopealloc_scope_events_total", &s.path, "max"),
            s.events.max as f64
        );
        let limit = samples.get(&(
            "scopealloc_scope_limit_bytes".to_owned(),
            s.path.clone(),
            "-".to_owned(),
        ));
        assert_eq!(
            limit.copied(),
            s.limit.map(|l| l as f64),
            "limit of {}",
            s.path
        );
    }
    let t = find(&r, "rep-prom/tenant \"a\"\\\nx");
    assert_eq!(t.events.max, 1);
    assert_eq!(
        get("scopealloc_heap_mapped_bytes", "-", "-"),
        r.heap.mapped as f64
    );
    assert_eq!(
        get("scopealloc_heap_returned_bytes_total", "-", "-"),
        r.heap.returned as f64
    );
    assert_eq!(
        get("scopealloc_heap_metadata_bytes", "-", "-"),
        r.heap.metadata as f64
    );
    assert!(r.heap.metadata > 0);
    drop((v, w));
}

#[test]
fn per_request_scopes_fold_into_one_series_per_parent() {
    let app = Scope::root().child("rep-card");
    let tenants: Vec<Scope> = (0..3).map(|i| app.child(&format!("tenant-{i}"))).collect();
    let mut reqs = Vec::new();
    let mut held = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        for j in 0..200 {
            let s = t.child(&format!("req-{j}"));
            held.push(s.run(|| vec![0u8; 100 * (i + 1)]));
            reqs.push(s);
        }
    }
    let r = app.report();
    let text = r.metrics().max_depth(1).max_series(3).to_string();
    let samples = parse_with_python_client(&text);
    let series: Vec<&(String, String, String)> = samples
        .keys()
        .filter(|k| k.0 == "scopealloc_scope_bytes")
        .collect();
    // The top, the two largest tenants, the third folded, and one (others) per shown tenant.
    assert_eq!(series.len(), 6, "{series:?}");
    let bytes = |scope: &str| samples[&("scopealloc_scope_bytes".into(), scope.into(), "-".into())];
    assert_eq!(bytes("rep-card"), r.scopes[0].bytes as f64);
    assert_eq!(
        bytes("rep-card/(others)"),
        find(&r, "rep-card/tenant-0").bytes as f64
    );
    assert_eq!(
        bytes("rep-card/tenant-2/(others)"),
        find(&r, "rep-card/tenant-2").bytes as f64,
        "the requests' sum"
    );
    assert!(
        !samples
            .keys()
            .any(|k| k.0 == "scopealloc_scope_peak_bytes" && k.1.ends_with("(others)")),
        "a folded series has no peak"
    );

    // Same-named siblings share one series (their sums).
    let dup = app.child("dup");
    let (x, y) = (dup.child("same"), dup.child("same"));
    let a = x.run(|| vec![0u8; 1000]);
    let b = y.run(|| vec![0u8; 3000]);
    let r = dup.report();
    let samples = parse_with_python_client(&r.prometheus());
    let same = samples[&(
        "scopealloc_scope_bytes".into(),
        "rep-card/dup/same".into(),
        "-".into(),
    )];
    assert_eq!(same, (x.stats().bytes + y.stats().bytes) as f64);
    drop((held, a, b));
}

#[test]
fn the_report_buffer_is_not_charged_to_the_scopes_it_reads() {
    let s = Scope::root().child("rep-self");
    let many: Vec<Scope> = (0..1000).map(|i| s.child(&format!("c{i}"))).collect();
    // The report's own values are allocated in the caller's scope, after the figures were read.
    let r = s.run(|| s.report());
    assert_eq!(
        r.scopes[0].bytes, 0,
        "the snapshot saw no allocation of its own"
    );
    assert!(
        s.stats().bytes > 0,
        "the report's values are charged to the caller's scope"
    );
    drop(r);
    assert_eq!(s.stats().bytes, 0);
    drop(many);
    // A large object to check that freeing works as usual after reports.
    let l = Layout::from_size_align(MIB, 8).unwrap();
    // SAFETY: a non-zero size; freed once with the same layout.
    unsafe {
        let p = s.run(|| alloc(l));
        assert!(!p.is_null());
        dealloc(p, l);
    }
}

#[cfg(feature = "serde")]
#[test]
fn the_json_form_parses_back_with_serde_json_with_cgroup_names() {
    use serde_json::Value;
    let app = Scope::root().child("rep-json");
    let t = app.child("tenant");
    t.set_limit(Some(8 * MIB));
    let v = t.run(|| vec![0u8; 100 * KIB]);
    let r = app.report();
    let j: Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
    assert_eq!(j["heap"]["mapped"], r.heap.mapped as u64);
    assert_eq!(j["heap"]["metadata"], r.heap.metadata as u64);
    let scopes = j["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), r.scopes.len());
    for (js, s) in scopes.iter().zip(&r.scopes) {
        assert_eq!(js["path"], s.path.as_str());
        assert_eq!(js["id"], s.id);
        assert_eq!(js["current"], s.bytes);
        assert_eq!(js["peak"], s.peak_bytes);
        assert_eq!(js["charged"], s.charged_bytes);
        assert_eq!(js["self_bytes"], s.self_bytes);
        assert_eq!(js["events"]["max"], s.events.max);
        assert_eq!(js["closed"], s.closed);
        match s.limit {
            Some(l) => assert_eq!(js["max"], l),
            None => assert!(js["max"].is_null()),
        }
        assert_eq!(js["classes"].as_array().unwrap().len(), s.classes.len());
    }
    let tj = &scopes[1];
    assert_eq!(tj["parent"], 0);
    assert_eq!(tj["classes"][0]["kind"], "large");
    let st: Value = serde_json::to_value(t.stats()).unwrap();
    assert_eq!(st["current"], t.stats().bytes);
    assert!(st.get("peak").is_some() && st.get("limit_hits").is_some());
    drop(v);
}

#!/usr/bin/env bash
# Issue 10's memory figures: runs examples/scope_memory.rs in every mode (one64, five, cache),
# scoped and unscoped, SCOPE_MEMORY_RUNS times (default 3, the variants alternating, the order of
# the pair flipped every run), and prints a Markdown table of the medians with the ratios the
# goals use and PASS/MISS against each goal (docs/BENCHMARKS.md). Each run is its own process,
# so every figure starts from a fresh heap.
#
#   SCOPE_MEMORY_RUNS=3           runs per mode and variant (the median is reported)
#   SCOPE_MEMORY_SCOPES=10000     open scopes of modes one64 and five
#   SCOPE_MEMORY_CACHE_ARGS="--requests 300000 --tenants 10 --cache 100000 --allocs 20"
#
# The raw RESULT lines go to $SCOPE_MEMORY_LOG (default: a temporary file, named at the end).
# The goals are meant for the default sizes. Needs python3. Time at the defaults: 7-12 s per
# round of six runs, most of it the scoped cache run (37 s for 3 rounds, 44 s for 5, on the
# shared machine), plus the build.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${SCOPE_MEMORY_RUNS:-3}
scopes=${SCOPE_MEMORY_SCOPES:-10000}
cache_args=${SCOPE_MEMORY_CACHE_ARGS:---requests 300000 --tenants 10 --cache 100000 --allocs 20}
log=${SCOPE_MEMORY_LOG:-$(mktemp)}
cargo build -q --release --example scope_memory -p scopealloc
bin=${CARGO_TARGET_DIR:-target}/release/examples/scope_memory

: >"$log"
for run in $(seq "$runs"); do
    if [ $((run % 2)) -eq 1 ]; then order="scoped unscoped"; else order="unscoped scoped"; fi
    for mode in one64 five cache; do
        for variant in $order; do
            flag=()
            [ "$variant" = unscoped ] && flag=(--unscoped)
            if [ "$mode" = cache ]; then
                # shellcheck disable=SC2086
                out=$("$bin" cache "${flag[@]}" $cache_args)
            else
                out=$("$bin" "$mode" "${flag[@]}" --scopes "$scopes")
            fi
            grep '^RESULT ' <<<"$out" | tee -a "$log" >&2
        done
    done
done

python3 - "$log" "$runs" <<'EOF'
import statistics, sys

log, runs = sys.argv[1], sys.argv[2]
rows = {}
for line in open(log):
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    rows.setdefault((fields["mode"], fields["variant"]), []).append(fields)

def med(mode, variant, key):
    return statistics.median(float(r[key]) for r in rows[(mode, variant)])

def kib(b):
    return f"{b / 1024:.1f} KiB"

def mib(b):
    return f"{b / (1 << 20):.1f} MiB"

def verdict(ok):
    return "PASS" if ok else "**MISS**"

print(f"Medians of {runs} runs per mode and variant (raw lines: {log}).\n")
print("| mode | variant | RSS per scope | address space per scope | live (allocator) | "
      "RSS after (peak) | closed scopes pending | dying caches | time (CPU) |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ("one64", "five", "cache"):
    for variant in ("scoped", "unscoped"):
        m = lambda k: med(mode, variant, k)
        per_rss = kib(m("rss_per_unit")) if mode != "cache" else "—"
        per_as = kib(m("vmsize_per_unit")) if mode != "cache" else "—"
        print(f"| {mode} | {variant} | {per_rss} | {per_as} | {mib(m('live_bytes'))} | "
              f"{mib(m('rss_after'))} ({mib(m('hwm'))}) | {m('closed_pending'):.0f} | "
              f"{m('dying_caches'):.0f} | {m('elapsed_ns') / 1e9:.3f} s ({m('cpu_ns') / 1e9:.3f} s) |")

print("\n| goal | target | measured | |")
print("|---|---|---|---|")
s, u = med("one64", "scoped", "rss_per_unit"), med("one64", "unscoped", "rss_per_unit")
print(f"| one64: RSS per scope | <= unscoped + 1 KiB = {kib(u + 1024)} | {kib(s)} "
      f"(unscoped + {kib(s - u)}) | {verdict(s <= u + 1024)} |")
s, u = med("five", "scoped", "rss_per_unit"), med("five", "unscoped", "rss_per_unit")
print(f"| five: RSS per scope | <= 1.25 x unscoped = {kib(1.25 * u)} | {kib(s)} "
      f"({s / u:.2f} x) | {verdict(s <= 1.25 * u)} |")
for mode in ("one64", "five"):
    a, r = med(mode, "scoped", "vmsize_per_unit"), med(mode, "scoped", "rss_per_unit")
    print(f"| {mode}: address space per scope | <= 2 x RSS per scope = {kib(2 * r)} | "
          f"{kib(a)} ({a / r:.1f} x) | {verdict(a <= 2 * r)} |")
for variant in ("scoped", "unscoped"):
    r, l = med("cache", variant, "rss_after"), med("cache", variant, "live_bytes")
    goal = "<= 1.3 x live" if variant == "scoped" else "(reference)"
    mark = verdict(r <= 1.3 * l) if variant == "scoped" else ""
    print(f"| cache {variant}: RSS / live | {goal} | {mib(r)} / {mib(l)} = {r / l:.2f} x | {mark} |")
p, d = med("cache", "scoped", "closed_pending"), med("cache", "scoped", "dying_caches")
print(f"| cache: closed scopes left pending | <= ~1 000 | {p:.0f} (dying caches {d:.0f}) | "
      f"{verdict(p <= 1000)} |")
s, u = med("cache", "scoped", "elapsed_ns"), med("cache", "unscoped", "elapsed_ns")
cs, cu = med("cache", "scoped", "cpu_ns"), med("cache", "unscoped", "cpu_ns")
print(f"| cache: elapsed time | <= 2 x unscoped = {2 * u / 1e9:.3f} s | {s / 1e9:.3f} s "
      f"({s / u:.2f} x; CPU {cs / 1e9:.3f} s vs {cu / 1e9:.3f} s = {cs / cu:.2f} x) | "
      f"{verdict(s <= 2 * u)} |")
EOF

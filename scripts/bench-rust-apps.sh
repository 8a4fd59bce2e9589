#!/usr/bin/env bash
# bench-rust-apps.sh - application-shaped Rust programs, one binary per global allocator.
#
# Builds bench/rust (binaries apps-system, apps-jemalloc, apps-mimalloc, apps-scopealloc: the
# same code with a different #[global_allocator]), runs every workload once per allocator and
# compares the checksums (check pass), then BENCH_RUNS rounds in which each allocator runs each
# workload once, in an order rotated from round to round. Wall time is measured around each run
# (date +%s%N), peak RSS and CPU time by /usr/bin/time. Prints Markdown tables of the median
# ratios to jemalloc and to mimalloc, with geomeans, and the absolute medians.
#
# Environment:
#   BENCH_RUNS=5             timed rounds (0: the check pass only)
#   BENCH_SCALE=1            multiplies the work of every workload (float ok)
#   BENCH_SEED=1             seed passed to every workload
#   BENCH_WORKLOADS="..."    subset of: btree json strings hashmap channel pipeline
#   BENCH_ALLOCATORS="..."   subset of: system jemalloc mimalloc scopealloc
#   BENCH_PROFILE=release    cargo profile of the binaries (scripts/bench-smoke.sh uses dev)
#   BENCH_TIMEOUT=120        seconds before one run counts as hung
#   BENCH_OUT=DIR            output dir (default: $TMPDIR/scopealloc-bench-rust-apps)
#   CARGO_TARGET_DIR         honoured
#
# Exit status: 0 if every run passed its check, 1 otherwise. Results: stdout and
# $BENCH_OUT/results.md.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${BENCH_RUNS:-5}
SCALE=${BENCH_SCALE:-1}
SEED=${BENCH_SEED:-1}
WORKLOADS=${BENCH_WORKLOADS:-"btree json strings hashmap channel pipeline"}
ALLOCATORS=${BENCH_ALLOCATORS:-"system jemalloc mimalloc scopealloc"}
PROFILE=${BENCH_PROFILE:-release}
TIMEOUT=${BENCH_TIMEOUT:-120}
OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/scopealloc-bench-rust-apps}

log() { printf '[bench-rust-apps] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq --no-install-recommends time >&2; } \
    || die "/usr/bin/time missing (package time)"
command -v python3 >/dev/null 2>&1 || die "python3 missing"

log "building bench/rust (cargo build --profile $PROFILE -p scopealloc-bench-apps)"
(cd "$ROOT" && cargo build --profile "$PROFILE" -p scopealloc-bench-apps --bins) >&2 \
    || die "cargo build failed"
tgt=${CARGO_TARGET_DIR:-$ROOT/target}
case "$tgt" in /*) ;; *) tgt="$ROOT/$tgt" ;; esac
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
BIN=$tgt/$dir

mkdir -p "$OUT"
rm -f "$OUT"/*.runs "$OUT"/*.out "$OUT"/failures.txt
: >"$OUT/failures.txt"

# run WORKLOAD ALLOCATOR: one run, appends "wall_s rss_kb cpu_s" to $OUT/W.A.runs; prints the
# checksum, or fails
run() {
    local w=$1 a=$2 t0 t1 rc
    t0=$(date +%s%N)
    /usr/bin/time -f '%M %U %S' -o "$OUT/$w.$a.time" \
        timeout -k 5 "$TIMEOUT" "$BIN/apps-$a" "$w" "$SCALE" "$SEED" >"$OUT/$w.$a.out" 2>"$OUT/$w.$a.err"
    rc=$?
    t1=$(date +%s%N)
    if [ $rc != 0 ]; then
        echo "$w under $a: exit status $rc: $(tail -n 3 "$OUT/$w.$a.err" | tr '\n' ' ')" >>"$OUT/failures.txt"
        return 1
    fi
    read -r rss user sys < <(tail -n 1 "$OUT/$w.$a.time")
    echo "$(((t1 - t0) / 1000)) $rss $user $sys" >>"$OUT/$w.$a.runs"
    grep -o 'checksum=[0-9a-f]*' "$OUT/$w.$a.out"
}

rotate() { # $1=offset, rest=items
    local k=$1; shift; local n=$#; local arr=("$@") i
    for ((i = 0; i < n; i++)); do printf '%s\n' "${arr[$(((i + k) % n))]}"; done
}

declare -A FAILED=()
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for w in $WORKLOADS; do
    ref="" refa=""
    for a in $ALLOCATORS; do
        got=$(run "$w" "$a") || { FAILED[$w.$a]=1; log "FAILED: $w under $a"; continue; }
        if [ -z "$got" ]; then
            echo "$w under $a: no checksum printed" >>"$OUT/failures.txt"; FAILED[$w.$a]=1; continue
        fi
        if [ -z "$ref" ]; then ref=$got refa=$a
        elif [ "$got" != "$ref" ]; then
            echo "$w under $a: $got differs from $refa's $ref" >>"$OUT/failures.txt"; FAILED[$w.$a]=1; continue
        fi
        log "check $w/$a ok ($got)"
    done
done
rm -f "$OUT"/*.runs  # the check pass is the warm-up; only timed rounds count

allocs=($ALLOCATORS)
for ((r = 0; r < RUNS; r++)); do
    wi=0
    for w in $WORKLOADS; do
        for a in $(rotate $((r + wi)) "${allocs[@]}"); do
            [ -n "${FAILED[$w.$a]:-}" ] && continue
            run "$w" "$a" >/dev/null || { FAILED[$w.$a]=1; log "FAILED: $w under $a (round $((r + 1)))"; }
        done
        wi=$((wi + 1))
    done
    log "round $((r + 1))/$RUNS done"
done

failed_list=""
for k in "${!FAILED[@]}"; do failed_list+="$k "; done
{
    echo "# bench-rust-apps results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) cpus; load average (1/5/15 min) at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- command: BENCH_RUNS=$RUNS BENCH_SCALE=$SCALE BENCH_SEED=$SEED BENCH_PROFILE=$PROFILE scripts/bench-rust-apps.sh"
    echo "- git $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && [ -n "$(git status --porcelain)" ] && echo ', dirty tree'); binaries: $BIN/apps-*"
    echo
    python3 - "$OUT" "$WORKLOADS" "$ALLOCATORS" "$failed_list" <<'PYEOF'
import math, os, statistics, sys
out, workloads, allocators, failed = sys.argv[1:5]
workloads, allocators, failed = workloads.split(), allocators.split(), set(failed.split())
med = {}
for w in workloads:
    for a in allocators:
        p = os.path.join(out, f"{w}.{a}.runs")
        if f"{w}.{a}" in failed or not os.path.exists(p):
            continue
        rows = [line.split() for line in open(p) if line.strip()]
        wall = statistics.median(int(r[0]) / 1e6 for r in rows)
        rss = statistics.median(int(r[1]) / 1024 for r in rows)
        cpu = statistics.median(float(r[2]) + float(r[3]) for r in rows)
        med[(w, a)] = (wall, rss, cpu, len(rows))
def geo(xs):
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")
def rat(x, y):
    return x / y if y else float("nan")
for base in ("jemalloc", "mimalloc"):
    if base not in allocators:
        continue
    print(f"Median wall time / peak RSS / CPU time (user + system), as ratios to {base} (lower is better):")
    print()
    print("| workload | " + " | ".join(allocators) + " |")
    print("|---|" + "---|" * len(allocators))
    cols = {a: [] for a in allocators}
    for w in workloads:
        row = []
        for a in allocators:
            if f"{w}.{a}" in failed:
                row.append("**FAILED**")
            elif (w, a) in med and (w, base) in med:
                r = [rat(med[(w, a)][i], med[(w, base)][i]) for i in range(3)]
                cols[a].append(r)
                row.append(" / ".join(f"{x:.2f}" for x in r))
            else:
                row.append("n/a")
        print(f"| {w} | " + " | ".join(row) + " |")
    g = []
    for a in allocators:
        rs = [r for r in cols[a] if all(x == x and x > 0 for x in r)]
        g.append(" / ".join(f"{geo([r[i] for r in rs]):.2f}" for i in range(3)) if rs else "n/a")
    print("| **geomean** | " + " | ".join(g) + " |")
    print()
print("Absolute medians (wall s / peak RSS MiB / CPU s, n rounds):")
print()
print("| workload | " + " | ".join(allocators) + " |")
print("|---|" + "---|" * len(allocators))
for w in workloads:
    row = []
    for a in allocators:
        m = med.get((w, a))
        row.append("**FAILED**" if f"{w}.{a}" in failed else
                   f"{m[0]:.3f} s / {m[1]:.1f} MiB / {m[2]:.2f} s (n={m[3]})" if m else "n/a")
    print(f"| {w} | " + " | ".join(row) + " |")
PYEOF
    if [ -s "$OUT/failures.txt" ]; then
        echo
        echo "Failures:"
        echo '```'
        cat "$OUT/failures.txt"
        echo '```'
    fi
} | tee "$OUT/results.md"
[ ! -s "$OUT/failures.txt" ]

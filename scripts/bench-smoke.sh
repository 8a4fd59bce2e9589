#!/usr/bin/env bash
# bench-smoke.sh - CI's check that every benchmark workload runs, at tiny sizes, under every
# allocator and prints the same checksum under each (no timing). Runs:
#   - scripts/bench-preload.sh with BENCH_SET=all BENCH_RUNS=0 (the check pass only): every
#     bench/c program and real program under glibc, jemalloc, mimalloc and libscopealloc.so;
#   - scripts/bench-rust-apps.sh with BENCH_RUNS=0 in the dev profile: every application-shaped
#     Rust workload with each of the four global allocators.
# Fails if a workload crashed, hung, printed no checksum or a different one, or if an allocator
# was unavailable (a missing contender would otherwise be skipped silently).
#
# Environment: BENCH_SCALE (default 0.02), BENCH_OUT (default $TMPDIR/scopealloc-bench-smoke),
# CARGO_TARGET_DIR (honoured). Both scripts install their missing Debian packages.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/scopealloc-bench-smoke}
SCALE=${BENCH_SCALE:-0.02}
mkdir -p "$OUT"
ALLOCATORS="glibc jemalloc mimalloc scopealloc"

status=0
BENCH_SET=all BENCH_RUNS=0 BENCH_SCALE=$SCALE BENCH_ALLOCATORS="$ALLOCATORS" BENCH_OUT="$OUT/preload" \
    bash "$ROOT/scripts/bench-preload.sh" >"$OUT/preload.md" 2>"$OUT/preload.log" || status=1
workloads=$(sed -n 's/^- \([a-z0-9-]*\): `.*/\1/p' "$OUT/preload.md" | sort -u | wc -l)
passed=$(grep -c '^\[bench-preload\] check .* ok (checksum=' "$OUT/preload.log" || true)
expected=$((workloads * 4))
if grep -E '^\[bench-preload\] (FAILED|error)|: not available|does not interpose|probe program failed' "$OUT/preload.log"; then
    status=1
fi
if [ -s "$OUT/preload/failures.txt" ]; then cat "$OUT/preload/failures.txt"; status=1; fi
if [ "$workloads" -lt 19 ] || [ "$passed" != "$expected" ]; then
    echo "bench-smoke: bench-preload.sh passed $passed of $expected checks ($workloads workloads); log: $OUT/preload.log"
    tail -n 20 "$OUT/preload.log"
    status=1
else
    echo "bench-smoke: bench-preload.sh: $workloads workloads x 4 allocators, every checksum equal"
fi

if BENCH_RUNS=0 BENCH_SCALE=$SCALE BENCH_PROFILE=dev BENCH_OUT="$OUT/rust-apps" \
    bash "$ROOT/scripts/bench-rust-apps.sh" >"$OUT/rust-apps.md" 2>"$OUT/rust-apps.log"; then
    n=$(grep -c '^\[bench-rust-apps\] check .* ok (checksum=' "$OUT/rust-apps.log" || true)
    if [ "$n" != 24 ]; then
        echo "bench-smoke: bench-rust-apps.sh passed $n of 24 checks; log: $OUT/rust-apps.log"
        status=1
    else
        echo "bench-smoke: bench-rust-apps.sh: 6 workloads x 4 global allocators, every checksum equal"
    fi
else
    echo "bench-smoke: bench-rust-apps.sh failed; log: $OUT/rust-apps.log"
    tail -n 20 "$OUT/rust-apps.log"
    cat "$OUT/rust-apps/failures.txt" 2>/dev/null || true
    status=1
fi
exit $status

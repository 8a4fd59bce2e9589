#!/usr/bin/env bash
# How often each slow path runs per million allocations, per bench/c workload, under
# LD_PRELOAD=libscopealloc.so: the counts of `scopealloc::slow_paths()` that the flat report
# (SCOPEALLOC_STATS=1) prints at exit, divided by the root scope's `allocs`. Counts, not times:
# repeatable on a loaded machine (the multi-threaded workloads vary a little with scheduling).
# Usage: scripts/slow-paths.sh [path/to/libscopealloc.so]   (SLOW_SCALE=1 multiplies the work)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/find-library.sh
. "$ROOT/scripts/find-library.sh"
find_library slow-paths "${1:-}"
SCALE=${SLOW_SCALE:-1}
B=$(mktemp -d)
trap 'rm -rf "$B"' EXIT
for w in larson xmalloc cache-scratch mstress glibc-simple pareto workingset shortlived randsize prodcons; do
    cc -O2 -pthread -o "$B/$w" "$ROOT/bench/c/$w.c" -lm
done
sc() { awk -v n="$1" -v s="$SCALE" 'BEGIN { printf "%d", n * s }'; }
declare -A CMD=(
    [larson]="$B/larson 2 $(sc 20) 200000 1000 1"
    [xmalloc]="$B/xmalloc 2 $(sc 2000000) 256 1"
    [cache-scratch]="$B/cache-scratch 2 $(sc 500) 8 50000 1"
    [mstress]="$B/mstress 2 10 $(sc 10) 1"
    [glibc-simple]="$B/glibc-simple $(sc 1000000) 1"
    [pareto]="$B/pareto $(sc 2000000) 100000 1"
    [workingset]="$B/workingset 1 $(sc 2000000) 1 2"
    [workingset-l2]="$B/workingset 1 $(sc 500000) 1 1"
    [shortlived]="$B/shortlived $(sc 2000000) 1"
    [randsize-1t]="$B/randsize 1 $(sc 1000000) 1"
    [randsize-2t]="$B/randsize 2 $(sc 500000) 1"
    [prodcons]="$B/prodcons batch $(sc 1000000) 1"
    [pipeline]="$B/prodcons pipeline $(sc 300000) 1"
)
ORDER="larson xmalloc cache-scratch mstress glibc-simple pareto workingset workingset-l2 shortlived randsize-1t randsize-2t prodcons pipeline"
FIELDS="malloc|stock refills|remote taken|carves|slabs scanned|adopted|fresh slabs|free tails|stock drains|slabs released|remote frees|abandoned frees|large allocs|large frees|shared allocs|stubs made|maintenance"
printf '| workload | allocs |'
IFS='|' read -ra names <<<"$FIELDS"
for n in "${names[@]}"; do printf ' %s |' "$n"; done
printf '\n|---|---:|'
for _ in "${names[@]}"; do printf -- '---:|'; done
printf '\n'
for w in $ORDER; do
    report=$B/report.$w
    # shellcheck disable=SC2086
    LD_PRELOAD=$SO SCOPEALLOC_STATS=1 SCOPEALLOC_STATS_FILE=$report ${CMD[$w]} >/dev/null
    allocs=$(grep -o 'scope root id=1 .* allocs=[0-9]*' "$report" | tail -n1 | sed 's/.*allocs=//')
    line=$(grep 'slow paths:' "$report" | tail -n1)
    printf '| %s | %s |' "$w" "$allocs"
    for n in "${names[@]}"; do
        v=$(sed -n "s/.*[:,] $n \([0-9]*\).*/\1/p" <<<"$line")
        awk -v v="$v" -v a="$allocs" 'BEGIN { printf " %.0f |", v * 1e6 / a }'
    done
    printf '\n'
done
echo "(per million allocations; allocs = the root scope's allocation count at exit)"

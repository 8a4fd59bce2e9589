#!/usr/bin/env bash
# Instructions per malloc+free pair of 64 B, per allocator, counted by callgrind: the difference
# between runs of 2 000 000 and 1 000 000 pairs, divided by 1 000 000, so that start-up cancels
# (the loop's own few instructions are included). Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --example pair_count
bin=${CARGO_TARGET_DIR:-target}/release/examples/pair_count
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1 |
        awk '/Collected/ {print $4}'
}
for run in "scopealloc 0" "scopealloc 4" "jemalloc 0" "mimalloc 0" "system 0"; do
    # shellcheck disable=SC2086
    a=$(count $run 1000000)
    # shellcheck disable=SC2086
    b=$(count $run 2000000)
    echo "$run: $(((b - a) / 1000000)) instructions per pair"
done

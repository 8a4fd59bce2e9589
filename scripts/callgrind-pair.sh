#!/usr/bin/env bash
# Instructions per malloc+free pair of 64 B, per allocator, counted by callgrind: the difference
# between runs of 2 000 000 and 1 000 000 pairs, divided by 1 000 000, so that start-up cancels
# (the loop's own few instructions are included). Two sets: Rust (`examples/pair_count.rs`,
# through `GlobalAlloc`) and C (`bench/callgrind/pair.c` under LD_PRELOAD of libscopealloc.so and
# of Debian's libjemalloc2 and libmimalloc2.0 where installed, and glibc), each also with one more
# block kept live (PAIR_KEEP=1), so that no free empties its page: mimalloc retires an empty page
# at free, which the plain loop makes it do at every pair (116 against 54 instructions). Needs
# valgrind and cc.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --example pair_count -p scopealloc
cargo build -q --release -p scopealloc-ffi
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/examples/pair_count
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 |
        awk '/Collected/ {print $4}'
}
per_pair() { # command prefix...; the pair count is appended
    local a b
    a=$(count "$@" 1000000)
    b=$(count "$@" 2000000)
    echo $(((b - a) / 1000000))
}
for run in "scopealloc 0" "scopealloc 4" "jemalloc 0" "mimalloc 0" "system 0"; do
    # shellcheck disable=SC2086
    echo "rust $run: $(per_pair "$bin" $run) instructions per pair" \
        "($(PAIR_KEEP=1 per_pair "$bin" $run) with a neighbour kept live)"
done
pair=$(mktemp -d)/pair
cc -O2 -o "$pair" bench/callgrind/pair.c
lib=/usr/lib/x86_64-linux-gnu
for so in "$target/release/libscopealloc.so" "$lib/libjemalloc.so.2" "$lib/libmimalloc.so.2" ""; do
    if [ -n "$so" ] && [ ! -f "$so" ]; then
        echo "c $so: not installed"
        continue
    fi
    # LD_PRELOAD in valgrind's environment reaches the program (valgrind adds its own preloads).
    echo "c ${so:-glibc}: $(LD_PRELOAD=$so per_pair "$pair") instructions per pair" \
        "($(PAIR_KEEP=1 LD_PRELOAD=$so per_pair "$pair") with a neighbour kept live)"
done

#!/usr/bin/env bash
# soak.sh - the long soak (not run in CI): tests/c/soak.c under LD_PRELOAD of libscopealloc.so
# for SOAK_SECONDS (default 1800): worker threads allocating and freeing random sizes, objects
# passed between threads, threads created and joined all the time, fork + exec and fork
# without exec, scopes from C (a scope per task, enter/leave, limits, close while objects live),
# and the scope figures checked against the program's own tally at every quiescent point.
#
# Usage: scripts/soak.sh [path/to/libscopealloc.so]
#   Without an argument it uses $SCOPEALLOC_SO, or builds the library with
#   `cargo build -p scopealloc-ffi --release` (honouring $CARGO and $CARGO_TARGET_DIR).
# Environment:
#   SOAK_SECONDS=1800   how long the mix runs
#   SOAK_SEED=0         the seed (0: from the clock); the program prints the one it used
#   SOAK_WORKERS=4      worker threads per generation
#   WATCHDOG=180        seconds without progress that count as a hang (the program aborts)
#   SCOPEALLOC_CHECK=1 and the other SCOPEALLOC_* variables pass through to the program.
#
# First, four short runs with an injected fault (an untallied object, a corrupted byte, a
# failing child, a hung worker) must each fail: they show the checks can fire. Then the soak.
# Exits 0 only if the soak printed "soak: ok" and exited 0 within SOAK_SECONDS plus a margin;
# prints the seed, the progress lines and the final line.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_WANTED=${SOAK_SECONDS:-1800}
SEED=${SOAK_SEED:-0}
WORKERS=${SOAK_WORKERS:-4}

# shellcheck source=scripts/find-library.sh
. "$ROOT/scripts/find-library.sh"
find_library soak "${1:-}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/scopealloc-soak.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LIBDIR=$(dirname "$SO")
if ! cc -O2 -g -Wall -Wextra -Werror -pthread -I "$ROOT/ffi/include" "$ROOT/tests/c/soak.c" \
    -L "$LIBDIR" -Wl,-rpath,"$LIBDIR" -lscopealloc -o "$WORK/soak" 2>"$WORK/cc.err"; then
    echo "soak: cc failed: $(head -c 600 "$WORK/cc.err")" >&2
    exit 2
fi

# The checks must be able to fail: each injected fault has to end the program with its message.
injected_ok=1
for fault in leak:"soak scope bytes" corrupt:"corrupted at byte" child:"exit status 3" hang:"no progress for"; do
    name=${fault%%:*}
    want=${fault#*:}
    SOAK_INJECT=$name WATCHDOG=5 LD_PRELOAD=$SO timeout -k 5 120 "$WORK/soak" 30 1 "$WORKERS" \
        >"$WORK/inject.out" 2>"$WORK/inject.err"
    rc=$?
    if [ "$rc" != 0 ] && grep -q "soak: FAIL.*$want" "$WORK/inject.err"; then
        echo "ok - injected fault '$name' detected (status $rc): $(grep -m1 'soak: FAIL' "$WORK/inject.err")"
    else
        echo "FAIL - injected fault '$name' not detected: status $rc, $(tail -c 300 "$WORK/inject.err")"
        injected_ok=0
    fi
done

echo "soak: $SECONDS_WANTED s under LD_PRELOAD=$SO${SCOPEALLOC_CHECK:+ SCOPEALLOC_CHECK=$SCOPEALLOC_CHECK}"
start=$(date +%s)
LD_PRELOAD=$SO timeout -k 10 $((SECONDS_WANTED + 300)) "$WORK/soak" "$SECONDS_WANTED" "$SEED" "$WORKERS" \
    >"$WORK/soak.out" 2> >(tee "$WORK/soak.err" >&2)
rc=$?
end=$(date +%s)
cat "$WORK/soak.out"
echo "soak: exit status $rc after $((end - start)) s"
if [ "$rc" = 0 ] && grep -q '^soak: ok' "$WORK/soak.out" && ! grep -q '^scopealloc:' "$WORK/soak.err" &&
    [ "$injected_ok" = 1 ]; then
    echo "soak: PASS"
    exit 0
fi
[ "$rc" = 124 ] && echo "soak: killed by timeout (hang past the watchdog)"
echo "soak: FAILED"
exit 1

#!/usr/bin/env bash
# preload-tests.sh - real programs on libscopealloc.so under LD_PRELOAD, each output compared
# with a plain run on glibc's malloc: python3 (PYTHONMALLOC=malloc; also with
# SCOPEALLOC_CHECK=1), SCOPEALLOC_LIMIT=50M python3 -c "bytearray(100<<20)" (MemoryError, not a
# crash), git init/add/commit/gc/fsck, sort of a large generated file, tests/c/threads.c
# (cross-thread frees), tests/c/forkexec.c (fork + exec from a threaded program), allocations
# from another library's constructor before scopealloc's (tests/c/early.c), and the
# SCOPEALLOC_STATS report at exit, and SCOPEALLOC_STATS_SIGNAL=USR2 (JSON) of a running python3.
#
# Usage: scripts/preload-tests.sh [path/to/libscopealloc.so]
#   Without an argument it uses $SCOPEALLOC_SO, or builds the library with
#   `cargo build -p scopealloc-ffi --release` (honouring $CARGO and $CARGO_TARGET_DIR).
#
# Prints one line per check ("ok - NAME" or "FAIL - NAME: why") and a last line
# "N passed, M failed"; exits 1 if any check failed. Needs python3, git, coreutils and cc
# (installs nothing). PRELOAD_TIMEOUT=120 sets the timeout of one run in seconds;
# PRELOAD_KEEP=1 keeps the work directory (outputs of every run) for inspection. A check fails when the outputs differ, when the exit statuses differ,
# when the preloaded run dies of a signal or prints a line starting with "scopealloc:" on
# stderr (a warning or a fatal error of the allocator), or when it runs past the timeout.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TIMEOUT=${PRELOAD_TIMEOUT:-120}

# shellcheck source=scripts/find-library.sh
. "$ROOT/scripts/find-library.sh"
find_library preload-tests "${1:-}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/scopealloc-preload.XXXXXX")
if [ "${PRELOAD_KEEP:-0}" = 1 ]; then
    echo "preload-tests: keeping $WORK" >&2
else
    trap 'rm -rf "$WORK"' EXIT
fi
# The real interpreter, not a version manager's shell shim.
PY=$(python3 -c 'import sys; print(sys.executable)')

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1: $2"; }

# run TAG CMD...: runs CMD with a timeout; stdout to $WORK/TAG.out, stderr to $WORK/TAG.err,
# exit status to $WORK/TAG.rc. PRELOAD=1 in the environment of the caller adds LD_PRELOAD.
run() {
    local tag=$1
    shift
    if [ "${PRELOAD:-0}" = 1 ]; then
        LD_PRELOAD=$SO timeout -k 5 "$TIMEOUT" "$@" >"$WORK/$tag.out" 2>"$WORK/$tag.err"
    else
        timeout -k 5 "$TIMEOUT" "$@" >"$WORK/$tag.out" 2>"$WORK/$tag.err"
    fi
    echo $? >"$WORK/$tag.rc"
}

# compare NAME: compares the plain run ($WORK/NAME.plain.*) with the preloaded one.
compare() {
    local name=$1 p="$WORK/$1.plain" s="$WORK/$1.preload"
    local prc src
    prc=$(cat "$p.rc")
    src=$(cat "$s.rc")
    if [ "$src" = 124 ] || [ "$src" = 137 ]; then
        fail "$name" "timed out after ${TIMEOUT}s under LD_PRELOAD"
    elif [ "$src" -gt 128 ]; then
        fail "$name" "killed by signal $((src - 128)) under LD_PRELOAD; stderr: $(head -c 300 "$s.err")"
    elif grep -q '^scopealloc:' "$s.err"; then
        fail "$name" "allocator message: $(grep -m1 '^scopealloc:' "$s.err")"
    elif [ "$prc" != "$src" ]; then
        fail "$name" "exit status $src under LD_PRELOAD, $prc plain; stderr: $(head -c 300 "$s.err")"
    elif ! cmp -s "$p.out" "$s.out"; then
        fail "$name" "outputs differ: $(diff "$p.out" "$s.out" | head -n 4 | tr '\n' ' ')"
    elif [ ! -s "$p.out" ]; then
        fail "$name" "no output to compare (plain run: status $prc, $(head -c 200 "$p.err"))"
    else
        pass "$name"
    fi
}

# both NAME CMD...: the plain run, then the preloaded run, then the comparison.
both() {
    local name=$1
    shift
    PRELOAD=0 run "$name.plain" "$@"
    PRELOAD=1 run "$name.preload" "$@"
    compare "$name"
}

# --- python: an allocation-heavy workload with PYTHONMALLOC=malloc --------------------------
cat >"$WORK/workload.py" <<'EOF'
import hashlib, json, random, re, threading

rng = random.Random(1)
h = hashlib.sha256()
# dicts and strings
d = {}
for i in range(200_000):
    k = "key-%d-%s" % (i, "x" * (i % 50))
    d[k] = [i, str(i) * (i % 7), {"n": i}]
    if i % 3 == 0:
        del d[k]
h.update(str(len(d)).encode())
# string building and regexes
words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 12))) for _ in range(100_000)]
text = " ".join(words)
h.update(" ".join(sorted(set(re.findall(r"\b[a-c]\w*", text)))).encode())
# json round trip of a nested document
doc = {"items": [{"id": i, "name": w, "tags": [w[:2], w[-2:]], "score": i * 0.5} for i, w in enumerate(words[:50_000])]}
s = json.dumps(doc, sort_keys=True)
back = json.loads(s)
assert back == doc
h.update(s.encode())
# big lists, sorting, slicing, bytes
nums = [rng.random() for _ in range(300_000)]
nums.sort()
h.update(repr(nums[::1000]).encode())
blob = b"".join(bytes([i % 256]) * (i % 1000) for i in range(3000))
h.update(blob)
# threads allocating and dropping objects (cross-thread frees through the GIL hand-offs)
shared = []
def work(t):
    local = []
    for i in range(30_000):
        local.append({"t": t, "i": i, "s": "v" * (i % 100)})
        if len(local) > 1000:
            shared.append(local)
            local = []
threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
h.update(str(sum(len(x) for x in shared)).encode())
del shared
print(len(d), len(words), len(s), h.hexdigest())
EOF
export PYTHONMALLOC=malloc PYTHONHASHSEED=0
both python-workload "$PY" "$WORK/workload.py"

# the same under SCOPEALLOC_CHECK=1 (double-free checks, junk and poison fills)
PRELOAD=1 SCOPEALLOC_CHECK=1 run python-check.preload "$PY" "$WORK/workload.py"
cp "$WORK/python-workload.plain.out" "$WORK/python-check.plain.out"
cp "$WORK/python-workload.plain.rc" "$WORK/python-check.plain.rc"
compare python-check

# a limit Python must survive: MemoryError, not a crash
PRELOAD=1 SCOPEALLOC_LIMIT=50M run python-limit.preload "$PY" -c "bytearray(100<<20)"
rc=$(cat "$WORK/python-limit.preload.rc")
if [ "$rc" = 1 ] && grep -q '^MemoryError' "$WORK/python-limit.preload.err" &&
    ! grep -q '^scopealloc:' "$WORK/python-limit.preload.err"; then
    pass "python-limit-50M-raises-MemoryError"
else
    fail "python-limit-50M-raises-MemoryError" "status $rc, stderr: $(tail -c 300 "$WORK/python-limit.preload.err")"
fi
# ... and go on working after it
cat >"$WORK/limit.py" <<'EOF'
try:
    bytearray(100 << 20)
    print("no MemoryError")
except MemoryError:
    print("MemoryError")
print(sum(len(str(i)) for i in range(200_000)))
EOF
PRELOAD=1 SCOPEALLOC_LIMIT=50M run python-limit-recovers.preload "$PY" "$WORK/limit.py"
if [ "$(cat "$WORK/python-limit-recovers.preload.rc")" = 0 ] &&
    [ "$(cat "$WORK/python-limit-recovers.preload.out")" = "$(printf 'MemoryError\n1088890')" ]; then
    pass "python-limit-50M-recovers-after-MemoryError"
else
    fail "python-limit-50M-recovers-after-MemoryError" "status $(cat "$WORK/python-limit-recovers.preload.rc"), output $(head -c 200 "$WORK/python-limit-recovers.preload.out"), stderr $(tail -c 200 "$WORK/python-limit-recovers.preload.err")"
fi
unset PYTHONMALLOC PYTHONHASHSEED

# --- git: init, add, commit in a temporary repository ---------------------------------------
# Fixed names and dates make the commit id a function of the content only.
export GIT_AUTHOR_NAME=Test GIT_AUTHOR_EMAIL=test@example.com GIT_AUTHOR_DATE="2024-01-01T00:00:00Z"
export GIT_COMMITTER_NAME=Test GIT_COMMITTER_EMAIL=test@example.com GIT_COMMITTER_DATE="2024-01-01T00:00:00Z"
export GIT_CONFIG_NOSYSTEM=1 HOME="$WORK/home"
mkdir -p "$HOME"
cat >"$WORK/git.sh" <<'EOF'
set -e
repo=$1
rm -rf "$repo"
git init -q -b main "$repo"
cd "$repo"
for i in $(seq 1 300); do
    mkdir -p "dir$((i % 17))"
    seq "$i" $((i * 40)) >"dir$((i % 17))/file$i.txt"
done
git add -A
git commit -q -m "first"
for i in $(seq 1 300 | awk 'NR % 5 == 0'); do echo "change $i" >>"dir$((i % 17))/file$i.txt"; done
git add -A
git commit -q -m "second"
git log --format='%H %s'
git diff --stat HEAD~1 | tail -n 1
git gc -q
git fsck --no-progress 2>&1
git count-objects -v | grep -E '^(count|in-pack)'
EOF
PRELOAD=0 run git.plain bash "$WORK/git.sh" "$WORK/repo-plain"
PRELOAD=1 run git.preload bash "$WORK/git.sh" "$WORK/repo-preload"
compare git

# --- sort of a large generated file ---------------------------------------------------------
awk 'BEGIN { srand(1); for (i = 0; i < 600000; i++) printf "%08x %d %s\n", int(rand() * 4294967295), i, substr("abcdefghijklmnopqrstuvwxyz", 1 + i % 26, 1 + i % 9) }' >"$WORK/big.txt"
both sort-lexical sort -S 64M --parallel=2 "$WORK/big.txt"
both sort-numeric-key sort -S 64M --parallel=2 -k2,2nr "$WORK/big.txt"

# --- C programs: threads with cross-thread frees; fork + exec from a threaded program -------
for prog in threads forkexec; do
    if ! cc -O2 -pthread -o "$WORK/$prog" "$ROOT/tests/c/$prog.c" 2>"$WORK/$prog.cc.err"; then
        fail "$prog" "cc failed: $(head -c 300 "$WORK/$prog.cc.err")"
        continue
    fi
done
[ -x "$WORK/threads" ] && both threads "$WORK/threads" 4 4 40000 1
[ -x "$WORK/forkexec" ] && both forkexec "$WORK/forkexec" 60 2

# --- allocations before libscopealloc's constructor ----------------------------------------
# libearly.so's constructor allocates (and runs a thread) before ours has run: the loader
# initialises the later of two preloaded libraries first.
if cc -O2 -shared -fPIC -pthread -o "$WORK/libearly.so" "$ROOT/tests/c/early.c" 2>"$WORK/early.cc.err" &&
    [ -x "$WORK/threads" ]; then
    PRELOAD=0 run allocations-before-constructor.plain env LD_PRELOAD="$WORK/libearly.so" "$WORK/threads" 2 2 20000 3
    PRELOAD=0 run allocations-before-constructor.preload env LD_PRELOAD="$SO:$WORK/libearly.so" SCOPEALLOC_LIMIT=1G "$WORK/threads" 2 2 20000 3
    compare allocations-before-constructor
else
    fail allocations-before-constructor "cc failed: $(head -c 300 "$WORK/early.cc.err")"
fi

# --- the report at exit, through a whole program --------------------------------------------
PRELOAD=1 SCOPEALLOC_STATS=1 run stats.preload "$PY" -c "print(len([str(i) for i in range(10000)]))"
if [ "$(cat "$WORK/stats.preload.rc")" = 0 ] && [ "$(cat "$WORK/stats.preload.out")" = 10000 ] &&
    grep -q '^scopealloc: scope root id=1 bytes=' "$WORK/stats.preload.err"; then
    pass "stats-report-at-exit"
else
    fail "stats-report-at-exit" "status $(cat "$WORK/stats.preload.rc"), stderr $(head -c 300 "$WORK/stats.preload.err")"
fi

# --- a report of a running program on SCOPEALLOC_STATS_SIGNAL ------------------------------
# Python sends itself SIGUSR2, waits for the report and reads it back before it exits; the
# JSON must parse and hold the root scope. Then every line of the file must parse: the signal's
# report, python's at exit, and that of `timeout` (also preloaded) at exit.
cat >"$WORK/stats_signal.py" <<'PYEOF'
import json, os, signal, sys, time
path = sys.argv[1]
keep = [bytearray(1000) for _ in range(1000)]
os.kill(os.getpid(), signal.SIGUSR2)
for _ in range(500):
    time.sleep(0.01)
    if os.path.exists(path) and open(path).read().endswith("\n"):
        break
d = json.loads(open(path).read())
root = [s for s in d["scopes"] if s["path"] == ""][0]
print("report while running: root holds", "enough" if root["current"] >= 1000 * 1000 else root["current"])
PYEOF
rm -f "$WORK/signal.json"
PRELOAD=1 SCOPEALLOC_STATS=json SCOPEALLOC_STATS_SIGNAL=USR2 SCOPEALLOC_STATS_FILE="$WORK/signal.json" \
    run stats-signal.preload "$PY" "$WORK/stats_signal.py" "$WORK/signal.json"
if [ "$(cat "$WORK/stats-signal.preload.rc")" = 0 ] &&
    [ "$(cat "$WORK/stats-signal.preload.out")" = "report while running: root holds enough" ] &&
    [ "$("$PY" -c 'import json, sys; print(len([json.loads(l) for l in open(sys.argv[1])]) >= 2)' "$WORK/signal.json")" = True ] &&
    ! grep -q '^scopealloc:' "$WORK/stats-signal.preload.err"; then
    pass "stats-report-on-signal"
else
    fail "stats-report-on-signal" "status $(cat "$WORK/stats-signal.preload.rc"), stdout $(head -c 300 "$WORK/stats-signal.preload.out"), stderr $(head -c 300 "$WORK/stats-signal.preload.err")"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

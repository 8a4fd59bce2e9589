#!/usr/bin/env bash
# preload-suite.sh - the long LD_PRELOAD suite (not run in CI): a sample of CPython's own
# test suite, redis-server under redis-benchmark with its data read back, sqlite3 building and
# checking a generated database, git on a large generated repository (gc --aggressive, fsck,
# log, blame), and a C++ program (tests/cpp/containers.cpp). Each workload runs once on glibc's
# malloc and once under every configuration given, and each configuration's results are
# compared with the plain run's.
#
# Usage: scripts/preload-suite.sh [CONFIG...]
#   CONFIG is a library, optionally followed by environment settings for its runs, separated by
#   commas: `path/to/libscopealloc.so` or `path/to/libscopealloc.so,SCOPEALLOC_CHECK=1`.
#   Without arguments the configurations come from $SUITE_LIBS (space-separated CONFIGs), else
#   they are the library ($SCOPEALLOC_SO, or built with `cargo build -p scopealloc-ffi
#   --release`, honouring $CARGO and $CARGO_TARGET_DIR) and the same library with
#   SCOPEALLOC_CHECK=1.
# Environment:
#   SUITE_ONLY="python redis sqlite git cpp"  the workloads to run (default: all)
#   SUITE_PY_TESTS="test_json ..."  CPython test modules to run (default: sixteen, see below)
#   SUITE_REDIS_REQUESTS=100000     requests per redis-benchmark test
#   SUITE_SQLITE_ROWS=300000        rows of the generated sqlite database
#   SUITE_GIT_COMMITS=4000          commits of the generated git repository (600 files)
#   SUITE_GIT_SEED=1                its seed (scripts/gen-git-repo.py)
#   SUITE_CPP_ROUNDS=5000           rounds per producer thread of tests/cpp/containers.cpp
#   SUITE_TIMEOUT=900               seconds before one run counts as hung
#   SUITE_KEEP=1                    keep the work directory (every run's output)
#
# Installs redis-server with apt-get if it is missing (the only thing it installs); needs
# python3, sqlite3, git, g++. redis listens on 127.0.0.1 only. Prints one line per check and
# configuration ("ok - NAME [cK]" / "FAIL - NAME [cK]: why"), a table of wall times (plain and
# each configuration), and a last line "N passed, M failed"; exits 1 if any check failed.
# A check fails when the preloaded run dies of a signal or times out, prints a line starting
# with "scopealloc:" on stderr, or differs from the plain run in exit status or output (for
# sqlite3, git and C++ the plain run must also succeed).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TIMEOUT=${SUITE_TIMEOUT:-900}
PY_TESTS=${SUITE_PY_TESTS:-"test_json test_dict test_set test_list test_unicode test_re test_collections test_itertools test_pickle test_threading test_gc test_weakref test_sqlite3 test_subprocess test_mmap test_ctypes"}
REDIS_N=${SUITE_REDIS_REQUESTS:-100000}
ROWS=${SUITE_SQLITE_ROWS:-300000}
GIT_COMMITS=${SUITE_GIT_COMMITS:-4000}
GIT_SEED=${SUITE_GIT_SEED:-1}
CPP_ROUNDS=${SUITE_CPP_ROUNDS:-5000}
ONLY=${SUITE_ONLY:-python redis sqlite git cpp}

# shellcheck source=scripts/find-library.sh
. "$ROOT/scripts/find-library.sh"

# --- configurations: index 0 is the plain run, 1..NCFG the preloaded ones -----------------
CFG_LIB=("")
CFG_ENV=("")
if [ $# -gt 0 ]; then
    specs=("$@")
elif [ -n "${SUITE_LIBS:-}" ]; then
    read -ra specs <<<"$SUITE_LIBS"
else
    find_library preload-suite ""
    specs=("$SO" "$SO,SCOPEALLOC_CHECK=1")
fi
for spec in "${specs[@]}"; do
    lib=${spec%%,*}
    settings=${spec#"$lib"}
    settings=${settings#,}
    find_library preload-suite "$lib"
    CFG_LIB+=("$SO")
    CFG_ENV+=("${settings//,/ }")
done
NCFG=$((${#CFG_LIB[@]} - 1))
CFGS=$(seq 1 "$NCFG")
echo "# configurations"
for k in $CFGS; do
    echo "c$k: LD_PRELOAD=${CFG_LIB[$k]} ${CFG_ENV[$k]}"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/scopealloc-suite.XXXXXX")
if [ "${SUITE_KEEP:-0}" = 1 ]; then
    echo "preload-suite: keeping $WORK" >&2
else
    trap 'rm -rf "$WORK"' EXIT
fi
PY=$(python3 -c 'import sys; print(sys.executable)')

passed=0
failed=0
TIMES=()
pass() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1: $2"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }

# with_cfg K CMD...: runs CMD plain (K = 0) or under configuration K.
with_cfg() {
    local k=$1 settings
    shift
    if [ "$k" = 0 ]; then
        "$@"
    else
        read -ra settings <<<"${CFG_ENV[$k]}"
        env LD_PRELOAD="${CFG_LIB[$k]}" "${settings[@]}" "$@"
    fi
}

# run TAG K CMD...: stdout/stderr/status/seconds in $WORK/TAG.{out,err,rc,sec}.
run() {
    local tag=$1 k=$2
    shift 2
    local t0 t1
    t0=$(now)
    with_cfg "$k" timeout -k 10 "$TIMEOUT" "$@" >"$WORK/$tag.out" 2>"$WORK/$tag.err"
    echo $? >"$WORK/$tag.rc"
    t1=$(now)
    elapsed "$t0" "$t1" >"$WORK/$tag.sec"
}

status_of() { cat "$WORK/$1.rc"; }
secs() { cat "$WORK/$1.sec"; }
allocator_lines() { grep -m1 '^scopealloc:' "$WORK/$1.err"; }
# times BASE: "plain|c1|c2..." seconds of BASE.0, BASE.1, ...
times() {
    local row k
    row=$(secs "$1.0")
    for k in $CFGS; do row="$row|$(secs "$1.$k")"; done
    echo "$row"
}

# judge NAME BASE K: BASE.K against BASE.0, which must have succeeded (status, stdout, no
# allocator line, no signal).
judge() {
    local name=$1 p="$WORK/$2.0" s="$WORK/$2.$3"
    local prc src
    prc=$(cat "$p.rc")
    src=$(cat "$s.rc")
    if [ "$prc" != 0 ]; then
        fail "$name" "the plain run failed (status $prc): $(tail -c 300 "$p.err")"
    elif [ "$src" = 124 ] || [ "$src" = 137 ]; then
        fail "$name" "timed out after ${TIMEOUT}s under LD_PRELOAD"
    elif [ "$src" -gt 128 ]; then
        fail "$name" "killed by signal $((src - 128)) under LD_PRELOAD; stderr: $(tail -c 300 "$s.err")"
    elif grep -q '^scopealloc:' "$s.err"; then
        fail "$name" "allocator message: $(grep -m1 '^scopealloc:' "$s.err")"
    elif [ "$prc" != "$src" ]; then
        fail "$name" "exit status $src under LD_PRELOAD, $prc plain; stderr: $(tail -c 300 "$s.err")"
    elif ! cmp -s "$p.out" "$s.out"; then
        fail "$name" "outputs differ: $(diff "$p.out" "$s.out" | head -n 6 | tr '\n' ' ')"
    elif [ ! -s "$p.out" ]; then
        fail "$name" "no output to compare (plain run: status $prc, $(head -c 200 "$p.err"))"
    else
        pass "$name"
    fi
}

# --- CPython's test suite ---------------------------------------------------------------
if want python; then
    echo "# CPython $("$PY" -c 'import platform; print(platform.python_version())') test modules, PYTHONMALLOC=malloc"
    export PYTHONMALLOC=malloc
    result_of() { grep -m1 -E '^(Result|== Tests result):' "$WORK/$1.out" | sed 's/^== Tests result: //; s/ ==$//; s/^Result: //'; }
    for t in $PY_TESTS; do
        if ! "$PY" -c "import test.$t" >/dev/null 2>&1; then
            echo "skip - python-$t (module not available)"
            continue
        fi
        for k in 0 $CFGS; do run "py-$t.$k" "$k" "$PY" -m test --timeout 600 "$t"; done
        p=$(status_of "py-$t.0")
        presult=$(result_of "py-$t.0")
        note="plain: ${presult:-status $p}"
        for k in $CFGS; do
            s=$(status_of "py-$t.$k")
            sresult=$(result_of "py-$t.$k")
            note="$note; c$k: ${sresult:-status $s}"
            if [ "$s" -gt 128 ] || [ "$s" = 124 ]; then
                fail "python-$t [c$k]" "status $s under LD_PRELOAD: $(tail -c 300 "$WORK/py-$t.$k.err")"
            elif allocator_lines "py-$t.$k" >/dev/null; then
                fail "python-$t [c$k]" "allocator message: $(allocator_lines "py-$t.$k")"
            elif [ "$p" != "$s" ] || [ "$presult" != "$sresult" ] || [ -z "$sresult" ]; then
                fail "python-$t [c$k]" "plain: status $p ${presult}; preload: status $s ${sresult}: $(grep -E '^(FAIL|ERROR):' "$WORK/py-$t.$k.out" | head -n 3 | tr '\n' ' ')"
            else
                pass "python-$t [c$k] (${sresult})"
            fi
        done
        TIMES+=("python $t|$(times "py-$t")|$note")
    done
    unset PYTHONMALLOC
fi

# --- redis-server + redis-benchmark ---------------------------------------------------------
if want redis; then
    echo "# redis"
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "preload-suite: installing redis-server" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools) >"$WORK/apt.log" 2>&1 ||
            echo "preload-suite: apt-get failed, see $WORK/apt.log" >&2
    fi
fi
if want redis && command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; then
    echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
    port_of() { echo $((20000 + ($$ + $1) % 20000)); }
    redis_round() { # TAG K PORT: the server under configuration K, the clients plain
        local tag=$1 k=$2 port=$3 pid
        with_cfg "$k" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
            --protected-mode yes --daemonize no --enable-debug-command local --dir "$WORK" >"$WORK/$tag.server.log" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do
            redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        local t0 t1
        t0=$(now)
        redis-benchmark -h 127.0.0.1 -p "$port" -q -n "$REDIS_N" -c 20 -r 100000 -d 64 \
            -t set,get,incr,lpush,rpush,lpop,sadd,hset,zadd,lrange_100,mset >"$WORK/$tag.bench" 2>&1
        t1=$(now)
        elapsed "$t0" "$t1" >"$WORK/$tag.sec"
        # A deterministic data set, then read it back.
        "$PY" - "$port" >"$WORK/$tag.load" <<'EOF'
import sys
n = 20000
lines = []
for i in range(n):
    lines.append("SET key:%d %s" % (i, "v" * (1 + i % 300)))
    lines.append("RPUSH list:%d %s" % (i % 50, "item%d" % i))
    lines.append("HSET hash:%d f%d %d" % (i % 100, i, i * i))
print("\n".join(lines))
EOF
        redis-cli -h 127.0.0.1 -p "$port" flushall >/dev/null
        redis-cli -h 127.0.0.1 -p "$port" <"$WORK/$tag.load" >/dev/null
        {
            redis-cli -h 127.0.0.1 -p "$port" dbsize
            for i in 0 7 19999; do redis-cli -h 127.0.0.1 -p "$port" strlen "key:$i"; done
            redis-cli -h 127.0.0.1 -p "$port" llen list:3
            redis-cli -h 127.0.0.1 -p "$port" lrange list:3 0 4
            redis-cli -h 127.0.0.1 -p "$port" hget hash:42 f9942
            redis-cli -h 127.0.0.1 -p "$port" hlen hash:42
            redis-cli -h 127.0.0.1 -p "$port" --scan --pattern 'key:1*' | sort | sha256sum
            redis-cli -h 127.0.0.1 -p "$port" debug digest
        } >"$WORK/$tag.data"
        redis-cli -h 127.0.0.1 -p "$port" info memory | grep -E '^(used_memory|used_memory_rss|mem_allocator):' | tr -d '\r' >"$WORK/$tag.mem"
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1
        wait "$pid"
        echo $? >"$WORK/$tag.rc"
    }
    for k in 0 $CFGS; do redis_round "redis.$k" "$k" "$(port_of "$k")"; done
    allocator=$(grep mem_allocator "$WORK/redis.0.mem" | cut -d: -f2)
    TIMES+=("redis-benchmark (server; allocator in redis: $allocator)|$(times redis)|$REDIS_N requests x 11 tests, 20 clients")
    for k in $CFGS; do
        if [ "$(status_of "redis.$k")" -gt 128 ]; then
            fail "redis [c$k]" "server died: status $(status_of "redis.$k"); $(tail -n 3 "$WORK/redis.$k.server.log")"
        elif grep -q '^scopealloc:' "$WORK/redis.$k.server.log"; then
            fail "redis [c$k]" "allocator message: $(grep -m1 '^scopealloc:' "$WORK/redis.$k.server.log")"
        elif ! cmp -s "$WORK/redis.0.data" "$WORK/redis.$k.data" || [ ! -s "$WORK/redis.0.data" ]; then
            fail "redis [c$k]" "data differs: $(diff "$WORK/redis.0.data" "$WORK/redis.$k.data" | head -n 4 | tr '\n' ' ')"
        elif [ "$(grep -c 'requests per second' "$WORK/redis.$k.bench")" != "$(grep -c 'requests per second' "$WORK/redis.0.bench")" ]; then
            fail "redis [c$k]" "benchmark incomplete under LD_PRELOAD: $(tail -n 3 "$WORK/redis.$k.bench")"
        else
            pass "redis [c$k] (benchmark and data check)"
        fi
    done
    echo "redis-benchmark requests per second (plain$(for k in $CFGS; do printf ' | c%s' "$k"; done)):"
    for k in 0 $CFGS; do
        tr '\r' '\n' <"$WORK/redis.$k.bench" | grep 'requests per second' | sed 's/ requests per second.*//' >"$WORK/redis.$k.rps"
    done
    cols=("$WORK/redis.0.rps")
    for k in $CFGS; do
        sed 's/.*: //' "$WORK/redis.$k.rps" >"$WORK/redis.$k.rps-only"
        cols+=("$WORK/redis.$k.rps-only")
    done
    paste -d'|' "${cols[@]}" | sed 's/^/  /'
    echo "redis INFO used_memory_rss after the data set (bytes): plain $(grep -E '^used_memory_rss:' "$WORK/redis.0.mem" | cut -d: -f2)$(for k in $CFGS; do printf ', c%s %s' "$k" "$(grep -E '^used_memory_rss:' "$WORK/redis.$k.mem" | cut -d: -f2)"; done)"
elif want redis; then
    fail "redis" "redis-server not available"
fi

# --- sqlite3 on a generated database --------------------------------------------------------
if want sqlite && command -v sqlite3 >/dev/null 2>&1; then
    echo "# sqlite3 $(sqlite3 --version | cut -d' ' -f1)"
    cat >"$WORK/build.sql" <<EOF
PRAGMA journal_mode = OFF;
PRAGMA cache_size = -65536;
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, amount INTEGER, note TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ROWS / 10)
INSERT INTO customers SELECT i, 'customer-' || i, 'city-' || (i * 7919 % 97) FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ROWS)
INSERT INTO orders SELECT i, 1 + (i * 104729 % ($ROWS / 10)), (i * 7907) % 10000, printf('%.*c', i % 200, 'x') FROM n;
CREATE INDEX orders_customer ON orders(customer);
CREATE INDEX orders_amount ON orders(amount);
EOF
    cat >"$WORK/query.sql" <<'EOF'
SELECT count(*), sum(amount), max(length(note)) FROM orders;
SELECT c.city, count(*), sum(o.amount) FROM orders o JOIN customers c ON c.id = o.customer GROUP BY c.city ORDER BY 3 DESC LIMIT 5;
SELECT customer, group_concat(id, ',') FROM (SELECT * FROM orders WHERE amount < 3 ORDER BY id) GROUP BY customer ORDER BY customer LIMIT 5;
SELECT name FROM customers WHERE id IN (SELECT customer FROM orders ORDER BY amount DESC, id LIMIT 3) ORDER BY name;
SELECT count(DISTINCT note), count(DISTINCT amount) FROM orders;
SELECT amount, count(*) FROM orders GROUP BY amount ORDER BY count(*) DESC, amount LIMIT 3;
UPDATE orders SET note = upper(note) WHERE id % 3 = 0;
DELETE FROM orders WHERE id % 5 = 0;
VACUUM;
PRAGMA integrity_check;
SELECT count(*), sum(length(note)) FROM orders;
EOF
    for k in 0 $CFGS; do
        rm -f "$WORK/db.$k"
        run "sqlite-build.$k" "$k" sqlite3 "$WORK/db.$k" ".read $WORK/build.sql"
        run "sqlite-query.$k" "$k" sqlite3 "$WORK/db.$k" ".read $WORK/query.sql"
    done
    TIMES+=("sqlite3 build ($ROWS rows + indexes)|$(times sqlite-build)|")
    TIMES+=("sqlite3 queries, update, delete, vacuum, integrity_check|$(times sqlite-query)|")
    for k in $CFGS; do
        before=$failed
        judge "sqlite3-build [c$k]" sqlite-build "$k"
        judge "sqlite3-query [c$k]" sqlite-query "$k"
        if [ "$failed" = "$before" ] && ! grep -qx ok "$WORK/sqlite-query.$k.out"; then
            fail "sqlite3 [c$k]" "integrity_check did not print ok"
        fi
    done
elif want sqlite; then
    fail "sqlite3" "sqlite3 not available"
fi

# --- git on a large generated repository ----------------------------------------------------
if want git; then
    echo "# git $(git --version | cut -d' ' -f3), a generated repository ($GIT_COMMITS commits, seed $GIT_SEED)"
    # Fixed identities and no user or system configuration: the outputs depend on the data only.
    export GIT_AUTHOR_NAME=Test GIT_AUTHOR_EMAIL=test@example.com GIT_AUTHOR_DATE="2024-01-01T00:00:00Z"
    export GIT_COMMITTER_NAME=Test GIT_COMMITTER_EMAIL=test@example.com GIT_COMMITTER_DATE="2024-01-01T00:00:00Z"
    export GIT_CONFIG_NOSYSTEM=1 HOME="$WORK/home"
    mkdir -p "$HOME"
    git init -q --bare -b main "$WORK/git-src"
    t0=$(now)
    "$PY" "$ROOT/scripts/gen-git-repo.py" --seed "$GIT_SEED" --commits "$GIT_COMMITS" |
        git -C "$WORK/git-src" fast-import --quiet
    echo "generated in $(elapsed "$t0" "$(now)") s: $(git -C "$WORK/git-src" rev-list --count --all) commits, $(git -C "$WORK/git-src" ls-tree -r main | wc -l) files at main, $(git -C "$WORK/git-src" count-objects -vH | grep -E '^(in-pack|size-pack)' | tr '\n' ' ')"
    cat >"$WORK/git.sh" <<'EOF'
set -e
cd "$1"
git gc --aggressive --quiet
git count-objects -v | grep -E '^(count|in-pack|packs|garbage):'
git fsck --full --strict --no-progress 2>&1
git log --stat --format='%H %an %ad %s' main | sha256sum
git log -p --all | sha256sum
git log --graph --oneline --all | sha256sum
git blame --line-porcelain main -- src/d0/e0/file0.txt | sha256sum
git blame -M -C main -- src/d3/e3/file3.txt | sha256sum
git rev-list --all --objects | sort | sha256sum
git grep -c tenant main -- src/d1 | sha256sum
git diff --stat main~200 main | tail -n 1
git describe --tags --always main
EOF
    # Every run gets its own copy of the same fast-imported repository.
    for k in 0 $CFGS; do
        cp -a "$WORK/git-src" "$WORK/git-$k"
        run "git.$k" "$k" bash "$WORK/git.sh" "$WORK/git-$k"
        rm -rf "$WORK/git-$k"
    done
    TIMES+=("git gc --aggressive, fsck --full, log --stat/-p, blame, rev-list, grep|$(times git)|$GIT_COMMITS commits")
    for k in $CFGS; do judge "git [c$k]" git "$k"; done
fi

# --- a C++ program: threads, strings, containers, shared_ptr, exceptions ---------------------
if want cpp; then
    echo "# C++ (tests/cpp/containers.cpp, $(g++ --version | head -n 1))"
    if g++ -O2 -pthread -o "$WORK/containers" "$ROOT/tests/cpp/containers.cpp" 2>"$WORK/cpp.cc.err"; then
        for k in 0 $CFGS; do run "cpp.$k" "$k" "$WORK/containers" 4 "$CPP_ROUNDS"; done
        TIMES+=("C++ containers, 4 consumers + 4 x 4 producer threads|$(times cpp)|$CPP_ROUNDS rounds each")
        for k in $CFGS; do judge "cpp-containers [c$k]" cpp "$k"; done
    else
        fail "cpp-containers" "g++ failed: $(head -c 300 "$WORK/cpp.cc.err")"
    fi
fi

echo
header="| workload | plain (s) |"
rule="|---|---:|"
for k in $CFGS; do
    header="$header c$k (s) |"
    rule="$rule---:|"
done
echo "$header notes |"
echo "$rule---|"
for row in "${TIMES[@]}"; do
    echo "| ${row//|/ | } |"
done
echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

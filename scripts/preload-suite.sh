#!/usr/bin/env bash
# preload-suite.sh - the long LD_PRELOAD suite (not run in CI): a sample of CPython's own
# test suite, redis-server under redis-benchmark, and sqlite3 on a generated database, each
# run on glibc's malloc and on libscopealloc.so, results compared.
#
# Usage: scripts/preload-suite.sh [path/to/libscopealloc.so]
#   Without an argument it uses $SCOPEALLOC_SO, or builds the library with
#   `cargo build -p scopealloc-ffi --release` (honouring $CARGO and $CARGO_TARGET_DIR).
# Environment:
#   SUITE_PY_TESTS="test_json ..."  CPython test modules to run (default: a dozen, see below)
#   SUITE_REDIS_REQUESTS=100000     requests per redis-benchmark test
#   SUITE_SQLITE_ROWS=300000        rows of the generated sqlite database
#   SUITE_TIMEOUT=900               seconds before one run counts as hung
#
# Installs redis-server with apt-get if it is missing (the only thing it installs). redis
# listens on 127.0.0.1 only. Prints one line per check ("ok - ..." / "FAIL - ...: why"), a
# table of wall times (plain vs LD_PRELOAD), and a last line "N passed, M failed"; exits 1 if
# any check failed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TIMEOUT=${SUITE_TIMEOUT:-900}
PY_TESTS=${SUITE_PY_TESTS:-"test_json test_dict test_set test_list test_unicode test_re test_collections test_itertools test_pickle test_threading test_gc test_weakref test_sqlite3 test_subprocess test_mmap test_ctypes"}
REDIS_N=${SUITE_REDIS_REQUESTS:-100000}
ROWS=${SUITE_SQLITE_ROWS:-300000}

# shellcheck source=scripts/find-library.sh
. "$ROOT/scripts/find-library.sh"
find_library preload-suite "${1:-}"

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

# run TAG PRELOAD CMD...: stdout/stderr/status/seconds in $WORK/TAG.{out,err,rc,sec}.
run() {
    local tag=$1 preload=$2
    shift 2
    local t0 t1
    t0=$(now)
    if [ "$preload" = 1 ]; then
        LD_PRELOAD=$SO timeout -k 10 "$TIMEOUT" "$@" >"$WORK/$tag.out" 2>"$WORK/$tag.err"
    else
        timeout -k 10 "$TIMEOUT" "$@" >"$WORK/$tag.out" 2>"$WORK/$tag.err"
    fi
    echo $? >"$WORK/$tag.rc"
    t1=$(now)
    elapsed "$t0" "$t1" >"$WORK/$tag.sec"
}

status_of() { cat "$WORK/$1.rc"; }
secs() { cat "$WORK/$1.sec"; }
allocator_lines() { grep -m1 '^scopealloc:' "$WORK/$1.err"; }

# --- CPython's test suite ---------------------------------------------------------------
echo "# CPython $("$PY" -c 'import platform; print(platform.python_version())') test modules, PYTHONMALLOC=malloc"
export PYTHONMALLOC=malloc
for t in $PY_TESTS; do
    if ! "$PY" -c "import test.$t" 2>/dev/null; then
        echo "skip - python-$t (module not available)"
        continue
    fi
    run "py-$t.plain" 0 "$PY" -m test --timeout 600 "$t"
    run "py-$t.preload" 1 "$PY" -m test --timeout 600 "$t"
    p=$(status_of "py-$t.plain")
    s=$(status_of "py-$t.preload")
    presult=$(grep -m1 -E '^(Result|== Tests result):' "$WORK/py-$t.plain.out" | sed 's/^== Tests result: //; s/ ==$//; s/^Result: //')
    sresult=$(grep -m1 -E '^(Result|== Tests result):' "$WORK/py-$t.preload.out" | sed 's/^== Tests result: //; s/ ==$//; s/^Result: //')
    TIMES+=("python $t|$(secs "py-$t.plain")|$(secs "py-$t.preload")|plain: ${presult:-status $p}; preload: ${sresult:-status $s}")
    if [ "$s" -gt 128 ] || [ "$s" = 124 ]; then
        fail "python-$t" "status $s under LD_PRELOAD: $(tail -c 300 "$WORK/py-$t.preload.err")"
    elif allocator_lines "py-$t.preload" >/dev/null; then
        fail "python-$t" "allocator message: $(allocator_lines "py-$t.preload")"
    elif [ "$p" != "$s" ] || [ "$presult" != "$sresult" ]; then
        fail "python-$t" "plain: status $p ${presult}; preload: status $s ${sresult}: $(grep -E '^(FAIL|ERROR):' "$WORK/py-$t.preload.out" | head -n 3 | tr '\n' ' ')"
    else
        pass "python-$t (${sresult:-status $s})"
    fi
done
unset PYTHONMALLOC

# --- redis-server + redis-benchmark ---------------------------------------------------------
echo "# redis"
if ! command -v redis-server >/dev/null 2>&1; then
    echo "preload-suite: installing redis-server" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools) >"$WORK/apt.log" 2>&1 ||
        echo "preload-suite: apt-get failed, see $WORK/apt.log" >&2
fi
if command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; then
    port_of() { echo $((20000 + ($$ + $1) % 20000)); }
    redis_round() { # TAG PRELOAD PORT
        local tag=$1 preload=$2 port=$3 pid
        if [ "$preload" = 1 ]; then
            LD_PRELOAD=$SO redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
                --protected-mode yes --daemonize no --dir "$WORK" >"$WORK/$tag.server.log" 2>&1 &
        else
            redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
                --protected-mode yes --daemonize no --dir "$WORK" >"$WORK/$tag.server.log" 2>&1 &
        fi
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
        } >"$WORK/$tag.data"
        redis-cli -h 127.0.0.1 -p "$port" info memory | grep -E '^(used_memory|used_memory_rss|mem_allocator):' | tr -d '\r' >"$WORK/$tag.mem"
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1
        wait "$pid"
        echo $? >"$WORK/$tag.rc"
    }
    redis_round redis.plain 0 "$(port_of 1)"
    redis_round redis.preload 1 "$(port_of 2)"
    allocator=$(grep mem_allocator "$WORK/redis.plain.mem" | cut -d: -f2)
    TIMES+=("redis-benchmark (server; allocator in redis: $allocator)|$(secs redis.plain)|$(secs redis.preload)|$REDIS_N requests x 11 tests, 20 clients")
    if [ "$(status_of redis.preload)" -gt 128 ]; then
        fail "redis" "server died: status $(status_of redis.preload); $(tail -n 3 "$WORK/redis.preload.server.log")"
    elif grep -q '^scopealloc:' "$WORK/redis.preload.server.log"; then
        fail "redis" "allocator message: $(grep -m1 '^scopealloc:' "$WORK/redis.preload.server.log")"
    elif ! cmp -s "$WORK/redis.plain.data" "$WORK/redis.preload.data" || [ ! -s "$WORK/redis.plain.data" ]; then
        fail "redis" "data differs: $(diff "$WORK/redis.plain.data" "$WORK/redis.preload.data" | head -n 4 | tr '\n' ' ')"
    elif [ "$(grep -c 'requests per second' "$WORK/redis.preload.bench")" != "$(grep -c 'requests per second' "$WORK/redis.plain.bench")" ]; then
        fail "redis" "benchmark incomplete under LD_PRELOAD: $(tail -n 3 "$WORK/redis.preload.bench")"
    else
        pass "redis (benchmark and data check)"
    fi
    echo "redis-benchmark requests per second (plain | LD_PRELOAD):"
    paste -d'|' <(tr '\r' '\n' <"$WORK/redis.plain.bench" | grep 'requests per second' | sed 's/ requests per second.*//') \
        <(tr '\r' '\n' <"$WORK/redis.preload.bench" | grep 'requests per second' | sed 's/.*: //; s/ requests per second.*//') |
        sed 's/^/  /'
    echo "redis INFO memory after the data set: plain $(grep -E '^used_memory_rss:' "$WORK/redis.plain.mem" | cut -d: -f2), LD_PRELOAD $(grep -E '^used_memory_rss:' "$WORK/redis.preload.mem" | cut -d: -f2) (rss bytes)"
else
    fail "redis" "redis-server not available"
fi

# --- sqlite3 on a generated database --------------------------------------------------------
echo "# sqlite3"
if command -v sqlite3 >/dev/null 2>&1; then
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
    for mode in plain preload; do
        rm -f "$WORK/db.$mode"
        p=0
        [ "$mode" = preload ] && p=1
        run "sqlite-build.$mode" "$p" sqlite3 "$WORK/db.$mode" ".read $WORK/build.sql"
        run "sqlite-query.$mode" "$p" sqlite3 "$WORK/db.$mode" ".read $WORK/query.sql"
    done
    TIMES+=("sqlite3 build ($ROWS rows + indexes)|$(secs sqlite-build.plain)|$(secs sqlite-build.preload)|")
    TIMES+=("sqlite3 queries, update, delete, vacuum, integrity_check|$(secs sqlite-query.plain)|$(secs sqlite-query.preload)|")
    ok=1
    for step in build query; do
        if [ "$(status_of "sqlite-$step.preload")" != "$(status_of "sqlite-$step.plain")" ] ||
            ! cmp -s "$WORK/sqlite-$step.plain.out" "$WORK/sqlite-$step.preload.out" ||
            grep -q '^scopealloc:' "$WORK/sqlite-$step.preload.err"; then
            fail "sqlite3-$step" "status $(status_of "sqlite-$step.preload") vs $(status_of "sqlite-$step.plain"); $(diff "$WORK/sqlite-$step.plain.out" "$WORK/sqlite-$step.preload.out" | head -n 3 | tr '\n' ' ') $(head -c 200 "$WORK/sqlite-$step.preload.err")"
            ok=0
        fi
    done
    if [ "$ok" = 1 ] && grep -qx ok "$WORK/sqlite-query.preload.out"; then
        pass "sqlite3 (same results, integrity_check ok)"
    elif [ "$ok" = 1 ]; then
        fail "sqlite3" "integrity_check did not print ok"
    fi
else
    fail "sqlite3" "sqlite3 not available"
fi

echo
echo "| workload | plain (s) | LD_PRELOAD (s) | notes |"
echo "|---|---:|---:|---|"
for row in "${TIMES[@]}"; do
    IFS='|' read -r name a b note <<<"$row"
    echo "| $name | $a | $b | $note |"
done
echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

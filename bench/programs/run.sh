#!/usr/bin/env bash
# run.sh - one real-program workload of scripts/bench-preload.sh (BENCH_SET=programs).
#
# Usage: run.sh WORKLOAD WORKDIR COUNT SEED
#   gcc    gcc -O2 compiles and links the sources gen.py wrote to WORKDIR/gcc-src
#   z3     z3 solves WORKDIR/problems.smt2 (written by gen.py)
#   ruby   ruby runs work.rb with COUNT records
#   sqlite sqlite3 builds a database of COUNT rows in WORKDIR (file, synchronous off), indexes
#          it, updates, deletes and queries it
#   redis  redis-server on a free loopback port under redis-benchmark (COUNT requests per
#          test, 8 clients, pipelined by 16), then a deterministic fill and a few reads; the
#          server's peak RSS (VmHWM) is appended to WORKDIR/redis-server-rss.<preloaded file>
#
# The program under test runs with the LD_PRELOAD this script was started with; the helpers
# (md5sum, redis-cli, redis-benchmark, python3) run without it, so only the program's own
# allocations are measured. Prints "WORKLOAD checksum=..." from the program's output (the
# linked binary for gcc), which the harness compares against the glibc run.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# = 4 ] || { echo "usage: run.sh WORKLOAD WORKDIR COUNT SEED" >&2; exit 2; }
W=$1 DIR=$2 COUNT=$3 SEED=$4
PRELOAD=${LD_PRELOAD:-}
unset LD_PRELOAD
digest() { md5sum | cut -c1-16; }
under_test() { LD_PRELOAD=$PRELOAD "$@"; }

case $W in
gcc)
    rm -f "$DIR/gcc-prog"
    (cd "$DIR/gcc-src" && under_test gcc -O2 -o "$DIR/gcc-prog" ./*.c)
    echo "gcc checksum=$(digest <"$DIR/gcc-prog")"
    ;;
z3)
    echo "z3 checksum=$(under_test z3 -smt2 "$DIR/problems.smt2" | digest)"
    ;;
ruby)
    under_test ruby "$HERE/work.rb" "$COUNT" "$SEED"
    ;;
sqlite)
    db=$DIR/bench.sqlite
    rm -f "$db"
    out=$(under_test sqlite3 "$db" <<SQL
PRAGMA synchronous = OFF;
PRAGMA journal_mode = MEMORY;
CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, price REAL, note TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $COUNT)
INSERT INTO item SELECT i, printf('item-%08d-%d', (i * 7919 + $SEED) % 1000003, i % 97),
    (i * 31 + $SEED) % 1000, ((i * 17) % 10007) / 100.0, substr(hex(randomblob(0)) || printf('%.*c', i % 60, 'x'), 1, 60)
FROM c;
CREATE INDEX item_name ON item(name);
CREATE INDEX item_grp ON item(grp, price);
UPDATE item SET price = price * 1.1, note = note || 'u' WHERE grp % 7 = 0;
DELETE FROM item WHERE id % 13 = 0;
SELECT count(*), sum(price), max(name) FROM item;
SELECT grp, count(*), round(avg(price), 4), group_concat(substr(name, 6, 3), '') FROM item
    GROUP BY grp ORDER BY grp LIMIT 50;
SELECT a.name, b.name FROM item a JOIN item b ON a.grp = b.grp AND a.id + 1 = b.id
    ORDER BY a.name LIMIT 20;
SQL
)
    echo "sqlite checksum=$(printf '%s\n' "$out" | digest)"
    ;;
redis)
    # redis-server links libjemalloc.so.2, whose malloc comes before glibc's in the search
    # order: for the glibc run, preload glibc itself so that its malloc is the one used.
    rss_file=$DIR/redis-server-rss.$(basename "${PRELOAD:-glibc}")
    [ -n "$PRELOAD" ] || PRELOAD=$(ldd /usr/bin/redis-server | awk '$1 == "libc.so.6" {print $3}')
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rdir=$DIR/redis.$$
    mkdir -p "$rdir"
    env LD_PRELOAD="$PRELOAD" redis-server --bind 127.0.0.1 --port "$port" --save '' \
        --appendonly no --daemonize no --enable-debug-command local --dir "$rdir" \
        --logfile "$rdir/log" &
    pid=$!
    trap 'kill "$pid" 2>/dev/null; rm -rf "$rdir"' EXIT
    cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
    for _ in $(seq 200); do [ "$(cli ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
    [ "$(cli ping)" = PONG ] || { echo "redis-server did not start" >&2; cat "$rdir/log" >&2; exit 1; }
    redis-benchmark -h 127.0.0.1 -p "$port" -q -c 8 -P 16 -n "$COUNT" -r 100000 -d 128 \
        -t set,get,incr,lpush,rpop,sadd,hset,spop,zadd,lrange_100 >"$rdir/benchmark.out"
    # Then a fill whose result does not depend on the benchmark's random keys: the checksum.
    cli flushall >/dev/null
    cli debug populate "$COUNT" key 100 >/dev/null
    sum=$( (cli dbsize; cli getrange key:1 0 9; cli getrange "key:$((COUNT - 1))" 0 15; cli strlen key:7) | digest)
    # Peak RSS of the server alone (the harness's /usr/bin/time sees redis-benchmark too).
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    echo "$hwm" >>"$rss_file"
    cli shutdown nosave >/dev/null 2>&1 || true
    wait "$pid" || true
    trap - EXIT
    rm -rf "$rdir"
    echo "redis server_peak_rss_kb=$hwm checksum=$sum"
    ;;
*)
    echo "run.sh: unknown workload $W" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# bench-preload.sh - whole-process allocator benchmarks under LD_PRELOAD,
# modelled on mimalloc-bench.
#
# Runs the workloads of bench/c/*.c (set "c") and real Debian programs driven
# by bench/programs/ (set "programs") under glibc (no preload), Debian's
# libjemalloc2, Debian's libmimalloc (if the package exists) and
# libscopealloc.so, alternating the contenders round by round, measures wall
# time with hyperfine (--export-json, one run per contender per round), peak
# RSS and CPU time with /usr/bin/time -v, and prints Markdown tables of time,
# RSS and CPU-time ratios to jemalloc and to mimalloc, with geomean rows.
#
# Environment:
#   BENCH_SET=all          c | programs | all: which workloads run by default
#   BENCH_SCALE=1          multiply the work of every workload (float ok)
#   BENCH_RUNS=7           timed rounds (each contender runs once per round);
#                          0 runs only the check pass (every workload once per
#                          allocator, checksums compared: scripts/bench-smoke.sh)
#   BENCH_THREADS=2        threads for the multithreaded workloads
#   BENCH_SEED=1           PRNG seed passed to every workload
#   BENCH_TIMEOUT=60       seconds before one run counts as hung
#   BENCH_WORKLOADS="..."  subset of the set "c": larson xmalloc cache-scratch
#                          mstress glibc-simple pareto workingset workingset-l2
#                          shortlived randsize-1t randsize-2t prodcons pipeline;
#                          of the set "programs": python gcc z3 ruby sqlite redis
#   BENCH_ALLOCATORS="..." subset of: glibc jemalloc mimalloc scopealloc
#                          scopealloc-secure (not in the default set)
#   BENCH_OUT=DIR          work/output dir (default: $TMPDIR/scopealloc-bench-preload)
#   SCOPEALLOC_SO=PATH     use this libscopealloc.so instead of building it
#   SCOPEALLOC_SECURE_SO=PATH  the scopealloc-secure contender (default:
#                          $CARGO_TARGET_DIR/release/libscopealloc_secure.so, not built here)
#   CARGO_TARGET_DIR       honoured when building libscopealloc.so
#
# Results: stdout and $BENCH_OUT/results.md; failures (crash, hang, wrong
# checksum) are marked FAILED in the table and listed in $BENCH_OUT/failures.txt.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE=${BENCH_SCALE:-1}
RUNS=${BENCH_RUNS:-7}
THREADS=${BENCH_THREADS:-2}
SEED=${BENCH_SEED:-1}
TIMEOUT=${BENCH_TIMEOUT:-60}
SET=${BENCH_SET:-all}
C_WORKLOADS="larson xmalloc cache-scratch mstress glibc-simple pareto workingset workingset-l2 shortlived randsize-1t randsize-2t prodcons pipeline"
PROGRAM_WORKLOADS="python gcc z3 ruby sqlite redis"
case $SET in
c) DEFAULT_WORKLOADS=$C_WORKLOADS ;;
programs) DEFAULT_WORKLOADS=$PROGRAM_WORKLOADS ;;
all) DEFAULT_WORKLOADS="$C_WORKLOADS $PROGRAM_WORKLOADS" ;;
*) echo "[bench-preload] error: BENCH_SET must be c, programs or all (got $SET)" >&2; exit 1 ;;
esac
WORKLOADS=${BENCH_WORKLOADS:-$DEFAULT_WORKLOADS}
ALLOCATORS=${BENCH_ALLOCATORS:-"glibc jemalloc mimalloc scopealloc"}
OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/scopealloc-bench-preload}
LIBDIR=/usr/lib/x86_64-linux-gnu
PY=/usr/bin/python3

log() { printf '[bench-preload] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
exit_reason() { # $1=rc $2=time-file
    if [ "$1" = 124 ]; then echo "timeout after ${TIMEOUT}s (rc=$1)"
    elif [ "$1" = 137 ]; then echo "SIGKILL: timeout after ${TIMEOUT}+5s or OOM (rc=$1)"
    elif grep -q 'terminated by signal' "$2" 2>/dev/null; then
        echo "$(grep -o 'terminated by signal [0-9]*' "$2" | tail -n1) (rc=$1)"
    elif [ "$1" -gt 128 ] 2>/dev/null; then echo "killed by signal $(($1 - 128)) (rc=$1)"
    else echo "exit status $1"; fi
}

# ---------------------------------------------------------------- tools
SUDO=
if [ "$(id -u)" != 0 ]; then command -v sudo >/dev/null 2>&1 && SUDO=sudo; fi
APT_UPDATED=0
apt_install() {
    if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
        log "cannot install $* (not root, no sudo)"; return 1
    fi
    if [ $APT_UPDATED = 0 ]; then
        $SUDO apt-get update -qq >&2 || return 1
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

missing=()
command -v hyperfine >/dev/null 2>&1 || missing+=(hyperfine)
[ -x /usr/bin/time ] || missing+=(time)
[ -x "$PY" ] || missing+=(python3)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
[ -e "$LIBDIR/libjemalloc.so.2" ] || missing+=(libjemalloc2)
uses() { [[ " $WORKLOADS " == *" $1 "* ]]; }
uses z3 && ! command -v z3 >/dev/null 2>&1 && missing+=(z3)
uses ruby && ! command -v ruby >/dev/null 2>&1 && missing+=(ruby)
uses sqlite && ! command -v sqlite3 >/dev/null 2>&1 && missing+=(sqlite3)
uses redis && ! command -v redis-server >/dev/null 2>&1 && missing+=(redis-server)
uses redis && ! command -v redis-benchmark >/dev/null 2>&1 && missing+=(redis-tools)
mimalloc_so() { ls "$LIBDIR"/libmimalloc.so.[0-9]* 2>/dev/null | sort | head -n1; }
if [ -z "$(mimalloc_so)" ]; then
    # the package name carries the soname version (libmimalloc2.0 on bookworm)
    if [ $APT_UPDATED = 0 ] && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
        $SUDO apt-get update -qq >&2 && APT_UPDATED=1
    fi
    mipkg=$(apt-cache search --names-only '^libmimalloc[0-9.]+$' 2>/dev/null | awk '{print $1}' | sort -V | tail -n1)
    [ -n "$mipkg" ] && missing+=("$mipkg")
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    apt_install "${missing[@]}" || log "warning: apt-get install failed"
fi
command -v hyperfine >/dev/null 2>&1 || die "hyperfine missing"
[ -x /usr/bin/time ] || die "/usr/bin/time missing (package time)"
[ -x "$PY" ] || die "$PY missing"

# ---------------------------------------------------------------- build
mkdir -p "$OUT"/bin "$OUT"/json "$OUT"/time "$OUT"/out
rm -f "$OUT"/json/*.json "$OUT"/time/* "$OUT"/out/* "$OUT"/failures.txt "$OUT"/hyperfine.log
: >"$OUT"/failures.txt
for src in "$ROOT"/bench/c/*.c; do
    name=$(basename "$src" .c)
    cc -O2 -pthread -o "$OUT/bin/$name" "$src" -lm || die "cc failed for $src"
done

PROG=$ROOT/bench/programs
# Inputs of the real programs, written once (their generation is not timed).
mkdir -p "$OUT"/prog
rm -f "$OUT"/prog/redis-server-rss.*
if uses gcc; then
    rm -rf "$OUT/prog/gcc-src"
    "$PY" "$PROG/gen.py" gcc "$OUT/prog/gcc-src" "$(awk -v s="$SCALE" 'BEGIN { v = int(6 * s + 0.5); print v < 1 ? 1 : v }')" "$SEED" || die "gen.py gcc failed"
fi
if uses z3; then
    "$PY" "$PROG/gen.py" z3 "$OUT/prog/problems.smt2" "$(awk -v s="$SCALE" 'BEGIN { v = int(4 * s + 0.5); print v < 1 ? 1 : v }')" "$SEED" || die "gen.py z3 failed"
fi

declare -A SO=()
SO[glibc]=""
SO[jemalloc]="$LIBDIR/libjemalloc.so.2"
SO[mimalloc]="$(mimalloc_so)"
SCOPEALLOC_NOTE=""
if [[ " $ALLOCATORS " == *" scopealloc "* ]]; then
    if [ -n "${SCOPEALLOC_SO:-}" ]; then
        SO[scopealloc]=$(readlink -f "$SCOPEALLOC_SO")
    else
        log "building libscopealloc.so (cargo build -p scopealloc-ffi --release)"
        if (cd "$ROOT" && cargo build -p scopealloc-ffi --release >"$OUT/cargo-build.log" 2>&1); then
            tgt=${CARGO_TARGET_DIR:-$ROOT/target}
            case "$tgt" in /*) ;; *) tgt="$ROOT/$tgt" ;; esac
            SO[scopealloc]="$tgt/release/libscopealloc.so"
        else
            SCOPEALLOC_NOTE="build failed (see $OUT/cargo-build.log)"
            log "scopealloc: $SCOPEALLOC_NOTE"
            tail -n 20 "$OUT/cargo-build.log" >&2
        fi
    fi
fi

if [[ " $ALLOCATORS " == *" scopealloc-secure "* ]]; then
    tgt=${CARGO_TARGET_DIR:-$ROOT/target}
    case "$tgt" in /*) ;; *) tgt="$ROOT/$tgt" ;; esac
    SO[scopealloc-secure]=$(readlink -f "${SCOPEALLOC_SECURE_SO:-$tgt/release/libscopealloc_secure.so}")
fi

# probe: which object does the process's malloc family resolve to?
cat >"$OUT/probe.c" <<'CEOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    void *fns[] = {(void *)malloc, (void *)free, (void *)calloc, (void *)realloc};
    for (int i = 0; i < 4; i++) {
        Dl_info info;
        printf("%s\n", dladdr(fns[i], &info) && info.dli_fname ? info.dli_fname : "?");
    }
    void *p = malloc(100);
    free(p);
    return 0;
}
CEOF
cc -O0 -o "$OUT/probe" "$OUT/probe.c" -ldl || die "cc failed for probe.c"
interposes() { # $1=so: true if malloc/free/calloc/realloc all resolve to $1
    local so got
    so=$(readlink -f "$1")
    got=$(timeout -k 5 "$TIMEOUT" env LD_PRELOAD="$1" "$OUT/probe" 2>/dev/null | sort -u) || return 1
    [ -n "$got" ] || return 1
    while read -r f; do [ "$(readlink -f "$f")" = "$so" ] || return 1; done <<<"$got"
}

ALLOCS=()
declare -A UNAVAILABLE=()
for a in $ALLOCATORS; do
    case $a in
    glibc) ALLOCS+=(glibc) ;;
    jemalloc|mimalloc|scopealloc|scopealloc-secure)
        if [ -n "${SO[$a]:-}" ] && [ -e "${SO[$a]}" ] && ! interposes "${SO[$a]}"; then
            probe_out=$(timeout -k 5 "$TIMEOUT" env LD_PRELOAD="${SO[$a]}" "$OUT/probe" 2>&1); probe_rc=$?
            if [ $probe_rc != 0 ]; then
                UNAVAILABLE[$a]="${SO[$a]}: probe program failed under it ($(exit_reason $probe_rc /dev/null)): $(printf '%s' "$probe_out" | tail -n 3 | tr '\n;=' '   ')"
            else
                UNAVAILABLE[$a]="${SO[$a]} does not interpose malloc/free/calloc/realloc (probe: $(printf '%s\n' "$probe_out" | sort -u | tr '\n;=' '   '))"
            fi
            log "$a: ${UNAVAILABLE[$a]}"
        elif [ -n "${SO[$a]:-}" ] && [ -e "${SO[$a]}" ]; then
            ALLOCS+=("$a")
        else
            UNAVAILABLE[$a]=${SCOPEALLOC_NOTE:-"not available"}
            [ "$a" = scopealloc ] || UNAVAILABLE[$a]="not available"
            log "$a: ${UNAVAILABLE[$a]}"
        fi ;;
    *) die "unknown allocator $a" ;;
    esac
done
[ ${#ALLOCS[@]} -gt 0 ] || die "no allocator to run"

# ---------------------------------------------------------------- workloads
sc() { awk -v b="$1" -v s="$SCALE" 'BEGIN { v = int(b * s + 0.5); if (v < 1) v = 1; print v }'; }
declare -A CMD=()
B=$OUT/bin
CMD[larson]="$B/larson $THREADS $(sc 100) 200000 1000 $SEED"
CMD[xmalloc]="$B/xmalloc $THREADS $(sc 8000000) 256 $SEED"
CMD[cache-scratch]="$B/cache-scratch $THREADS $(sc 2000) 8 50000 $SEED"
CMD[mstress]="$B/mstress $THREADS 10 $(sc 50) $SEED"
CMD[glibc-simple]="$B/glibc-simple $(sc 3000000) $SEED"
CMD[pareto]="$B/pareto $(sc 10000000) 100000 $SEED"
CMD[workingset]="$B/workingset 1 $(sc 20000000) $SEED 2"
CMD[workingset-l2]="$B/workingset 1 $(sc 2000000) $SEED 1"
CMD[shortlived]="$B/shortlived $(sc 6000000) $SEED"
CMD[randsize-1t]="$B/randsize 1 $(sc 4000000) $SEED"
CMD[randsize-2t]="$B/randsize 2 $(sc 2000000) $SEED"
CMD[prodcons]="$B/prodcons batch $(sc 4000000) $SEED"
CMD[pipeline]="$B/prodcons pipeline $(sc 600000) $SEED"
CMD[python]="PYTHONMALLOC=malloc PYTHONHASHSEED=0 $PY $PROG/work.py $(sc 20000) $SEED"
R="bash $PROG/run.sh"
CMD[gcc]="$R gcc $OUT/prog 0 $SEED"
CMD[z3]="$R z3 $OUT/prog 0 $SEED"
CMD[ruby]="$R ruby $OUT/prog $(sc 20000) $SEED"
CMD[sqlite]="$R sqlite $OUT/prog $(sc 200000) $SEED"
CMD[redis]="$R redis $OUT/prog $(sc 30000) $SEED"
for w in $WORKLOADS; do [ -n "${CMD[$w]:-}" ] || die "unknown workload $w"; done

# full command line for (workload, allocator); time -v appends to a file
cmdline() { # $1=workload $2=allocator $3=time-file
    printf '/usr/bin/time -v -a -o %s timeout -k 5 %s env LD_PRELOAD=%s %s' \
        "$3" "$TIMEOUT" "${SO[$2]}" "${CMD[$1]}"
}

declare -A FAILED=()
fail() { # $1=workload $2=allocator $3=reason
    FAILED[$1.$2]=1
    {
        echo "workload=$1 allocator=$2: $3"
        echo "  command: $(cmdline "$1" "$2" "$OUT/time/$1.$2.check.time")"
        echo "  repro:   env LD_PRELOAD=${SO[$2]} ${CMD[$1]}"
        if [ -s "$OUT/out/$1.$2.stderr" ]; then
            echo "  stderr (last lines):"; tail -n 5 "$OUT/out/$1.$2.stderr" | sed 's/^/    /'
        fi
    } >>"$OUT/failures.txt"
    log "FAILED: $1 under $2: $3"
}

rotate() { # $1=offset, rest=items
    local k=$1; shift; local n=$#; local arr=("$@") i
    for ((i = 0; i < n; i++)); do printf '%s\n' "${arr[$(((i + k) % n))]}"; done
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
# ------------------------------------------------ check pass (also warm-up)
log "allocators: ${ALLOCS[*]}; workloads: $WORKLOADS; scale=$SCALE runs=$RUNS threads=$THREADS"
wi=0
for w in $WORKLOADS; do
    ref=""
    # glibc and jemalloc first so that a reference checksum exists
    for a in $(printf '%s\n' "${ALLOCS[@]}" | awk '$0=="glibc"{print 0,$0;next} $0=="jemalloc"{print 1,$0;next} {print 2,$0}' | sort -n | cut -d' ' -f2); do
        tf="$OUT/time/$w.$a.check.time"
        # shellcheck disable=SC2046
        eval "$(cmdline "$w" "$a" "$tf")" >"$OUT/out/$w.$a.stdout" 2>"$OUT/out/$w.$a.stderr" </dev/null
        rc=$?
        if [ $rc != 0 ]; then fail "$w" "$a" "check run: $(exit_reason $rc "$tf")"; continue; fi
        got=$(grep -o 'checksum=[0-9a-f]*' "$OUT/out/$w.$a.stdout" | tail -n1)
        if [ -z "$got" ]; then fail "$w" "$a" "check run: no checksum printed"; continue; fi
        if [ -z "$ref" ]; then ref=$got; refa=$a
        elif [ "$got" != "$ref" ]; then fail "$w" "$a" "check run: $got differs from $refa's $ref"; continue; fi
        log "check $w/$a ok ($got)"
    done
    wi=$((wi + 1))
done

# the servers' peaks recorded from here on are those of the timed runs
rm -f "$OUT"/prog/redis-server-rss.*

# ------------------------------------------------ timed rounds
for ((r = 0; r < RUNS; r++)); do
    wi=0
    for w in $WORKLOADS; do
        alive=()
        for a in "${ALLOCS[@]}"; do [ -z "${FAILED[$w.$a]:-}" ] && alive+=("$a"); done
        if [ ${#alive[@]} -eq 0 ]; then wi=$((wi + 1)); continue; fi
        args=()
        for a in $(rotate $((r + wi)) "${alive[@]}"); do
            args+=(-n "$a" "$(cmdline "$w" "$a" "$OUT/time/$w.$a.time")")
        done
        hyperfine -N -i --runs 1 --style basic --export-json "$OUT/json/$w.r$r.json" \
            "${args[@]}" >>"$OUT/hyperfine.log" 2>&1 </dev/null \
            || log "hyperfine failed for $w round $r (see $OUT/hyperfine.log)"
        # a contender that failed a timed run is dropped from later rounds
        while read -r a rc; do
            [ -n "$a" ] || continue
            : >"$OUT/out/$w.$a.stderr"
            fail "$w" "$a" "timed round $((r + 1)): $(exit_reason "$rc" /dev/null) (stderr went to $OUT/hyperfine.log)"
        done < <("$PY" -c '
import json, sys
for res in json.load(open(sys.argv[1]))["results"]:
    for rc in res.get("exit_codes", []):
        if rc != 0:
            print(res["command"], rc)
            break
' "$OUT/json/$w.r$r.json" 2>/dev/null)
        wi=$((wi + 1))
    done
    log "round $((r + 1))/$RUNS done"
done

# ------------------------------------------------ report
failed_list=""
for k in "${!FAILED[@]}"; do failed_list+="$k "; done
unavail=""
for k in "${!UNAVAILABLE[@]}"; do unavail+="$k=${UNAVAILABLE[$k]};"; done

{
    echo "# bench-preload results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) cpus, $(uname -r); load average (1/5/15 min) at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
    echo "- command: BENCH_SET=$SET BENCH_SCALE=$SCALE BENCH_RUNS=$RUNS BENCH_THREADS=$THREADS BENCH_SEED=$SEED BENCH_TIMEOUT=$TIMEOUT${SCOPEALLOC_SO:+ SCOPEALLOC_SO=$SCOPEALLOC_SO} scripts/bench-preload.sh"
    echo "- scopealloc: ${SO[scopealloc]:-n/a} (git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo none)$(cd "$ROOT" && [ -n "$(git status --porcelain 2>/dev/null)" ] && echo ', dirty tree'))"
    echo "- jemalloc: $(dpkg-query -W -f '${Version}' libjemalloc2 2>/dev/null || echo '?'); mimalloc: ${SO[mimalloc]:-n/a} $(dpkg-query -W -f '${Version}' "$(dpkg -S "${SO[mimalloc]:-none}" 2>/dev/null | cut -d: -f1)" 2>/dev/null); glibc: $(ldd --version | head -n1 | awk '{print $NF}')"
    echo
    for w in $WORKLOADS; do echo "- $w: \`${CMD[$w]#PYTHONMALLOC=malloc PYTHONHASHSEED=0 }\`$([ "$w" = python ] && echo ' (PYTHONMALLOC=malloc PYTHONHASHSEED=0)')" | sed "s#$OUT/bin/##; s#$OUT/##; s#$ROOT/##g"; done
    uses gcc && echo "- gcc compiles and links the $(ls "$OUT"/prog/gcc-src | wc -l) C files that \`bench/programs/gen.py gcc\` wrote"
    uses z3 && echo "- z3 solves the $(grep -c check-sat "$OUT"/prog/problems.smt2) factoring problems that \`bench/programs/gen.py z3\` wrote"
    uses redis && echo "- redis: the RSS column is the server's own VmHWM (bench/programs/run.sh), not redis-benchmark's; the glibc run preloads libc.so.6, since redis-server links libjemalloc"
    echo
    rss_tags=""
    for a in "${ALLOCS[@]}"; do
        if [ "$a" = glibc ]; then rss_tags+="glibc=glibc "; else rss_tags+="$a=$(basename "${SO[$a]}") "; fi
    done
    "$PY" - "$OUT" "$RUNS" "$WORKLOADS" "$ALLOCATORS" "$failed_list" "$unavail" "$rss_tags" <<'PYEOF'
import glob, json, math, os, re, statistics, sys
out, runs, workloads, allocators, failed, unavail, rss_tags = sys.argv[1:8]
workloads = workloads.split()
allocators = allocators.split()
failed = set(failed.split())
unavail = dict(kv.split("=", 1) for kv in unavail.split(";") if kv)
rss_tags = dict(kv.split("=", 1) for kv in rss_tags.split())
times = {}
for f in sorted(glob.glob(os.path.join(out, "json", "*.json"))):
    w = re.sub(r"\.r\d+\.json$", "", os.path.basename(f))
    for res in json.load(open(f))["results"]:
        a = res["command"]
        for t, rc in zip(res["times"], res.get("exit_codes", [0] * len(res["times"]))):
            if rc == 0:
                times.setdefault((w, a), []).append(t)
            else:
                failed.add(f"{w}.{a}")
# Peak RSS (MiB) and CPU time (user + system, s) of the timed runs, from /usr/bin/time -v.
rss, cpu = {}, {}
for w in workloads:
    for a in allocators:
        p = os.path.join(out, "time", f"{w}.{a}.time")
        if not os.path.exists(p):
            continue
        text = open(p).read()
        v = [int(x) for x in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text)]
        if w == "redis" and a in rss_tags:
            # the server's own peak (run.sh); time -v would report redis-benchmark's if larger
            q = os.path.join(out, "prog", "redis-server-rss." + rss_tags[a])
            v = [int(x) for x in open(q).read().split()] if os.path.exists(q) else []
        if v:
            rss[(w, a)] = statistics.median(v) / 1024.0
        us = [float(x) for x in re.findall(r"User time \(seconds\): ([\d.]+)", text)]
        ss = [float(x) for x in re.findall(r"System time \(seconds\): ([\d.]+)", text)]
        if us and len(us) == len(ss):
            cpu[(w, a)] = statistics.median(u + s for u, s in zip(us, ss))
def cell(w, a):
    if a in unavail:
        return None
    if f"{w}.{a}" in failed:
        return "FAILED"
    if (w, a) not in times:
        return None
    return statistics.median(times[(w, a)]), rss.get((w, a)), cpu.get((w, a))
cells = {(w, a): cell(w, a) for w in workloads for a in allocators}
def ratio(x, y):
    return x / y if x and y else float("nan")
def ratios(w, a, base):
    c, b = cells[(w, a)], cells.get((w, base))
    if not isinstance(c, tuple) or not isinstance(b, tuple):
        return None
    return tuple(ratio(c[i], b[i]) for i in range(3))
def geo(xs):
    xs = [x for x in xs if x == x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")
def table(base):
    print(f"Median wall time / median peak RSS / median CPU time (user + system), as ratios to "
          f"{base} (lower is better):")
    print()
    print("| workload | " + " | ".join(allocators) + " |")
    print("|---|" + "---|" * len(allocators))
    for w in workloads:
        cols = []
        for a in allocators:
            c, r = cells[(w, a)], ratios(w, a, base)
            if c == "FAILED":
                cols.append("**FAILED**")
            elif r is None:
                cols.append("n/a")
            else:
                cols.append(" / ".join(f"{x:.2f}" for x in r))
        print(f"| {w} | " + " | ".join(cols) + " |")
    row = []
    for a in allocators:
        rs = [r for r in (ratios(w, a, base) for w in workloads) if r is not None]
        if not rs:
            row.append("n/a")
            continue
        note = "" if len(rs) == len(workloads) else f" ({len(rs)}/{len(workloads)} workloads)"
        row.append(" / ".join(f"{geo([r[i] for r in rs]):.2f}" for i in range(3)) + note)
    print("| **geomean** | " + " | ".join(row) + " |")
    print()
for base in ("jemalloc", "mimalloc"):
    if base in allocators and base not in unavail:
        table(base)
print("Absolute figures (median wall time s / median peak RSS MiB / median CPU s; min..max wall time over rounds):")
print()
print("| workload | " + " | ".join(allocators) + " |")
print("|---|" + "---|" * len(allocators))
for w in workloads:
    cols = []
    for a in allocators:
        c = cells[(w, a)]
        if c is None:
            cols.append("n/a")
        elif c == "FAILED":
            cols.append("**FAILED**")
        else:
            ts = times[(w, a)]
            r = f"{c[1]:.1f}" if c[1] else "?"
            u = f"{c[2]:.3f}" if c[2] is not None else "?"
            cols.append(f"{c[0]:.3f} s / {r} MiB / {u} s ({min(ts):.3f}..{max(ts):.3f}, n={len(ts)})")
    print(f"| {w} | " + " | ".join(cols) + " |")
for a, why in unavail.items():
    print(f"\n{a}: {why}")

PYEOF
    if [ -s "$OUT/failures.txt" ]; then
        echo
        echo "Failures:"
        echo '```'
        cat "$OUT/failures.txt"
        echo '```'
    fi
} | tee "$OUT/results.md"

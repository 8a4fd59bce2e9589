/*
 * soak.c - a long multi-threaded mix on libscopealloc, for scripts/soak.sh (not run in CI).
 *
 * The program runs in generations. Each generation the main thread starts WORKERS worker
 * threads and one forker thread, lets them run for a slice, joins them (thread churn: every
 * thread of the program lives one slice at most), and at that quiescent point checks the figures
 * of the "soak" scope, whose subtree holds every object the program tracks, against its own tally
 * (sum of malloc_usable_size, count). Then it frees a random part of the shared objects and
 * checks again; every 20 generations it closes a tenant scope while its objects live and makes a
 * new one.
 *
 * Workers, at random:
 *   - task: a new scope under a tenant, entered while it allocates and reallocates a batch of
 *     random sizes (8 B .. 3 MiB); its figures must equal the batch's tally before any object
 *     leaves the thread; then some objects go to the shared exchange (freeing the objects found
 *     there, which other threads allocated), the scope is closed while objects live (its figures
 *     must then read 0), the rest freed;
 *   - limit: a scope with a random hard limit, filled until malloc returns NULL: errno ENOMEM,
 *     bytes never above the limit, a limit hit counted, the refusal only near the limit, and 0
 *     bytes after the frees;
 *   - swap: objects allocated in a tenant put into the exchange, the previous ones freed;
 *   - helper: a thread started with a batch of the worker's objects, which it checks and frees
 *     in part, allocates more (in a scope it sometimes leaves entered when it exits), and hands
 *     back at join.
 * The forker: fork + exec of this program in child mode (threads, a scope, its own exact check)
 * or of /bin/true, and fork without exec: the child (of a threaded parent) checks and frees the
 * parent's shared objects, allocates in a new scope, checks its figures and _exits.
 *
 * Every object carries a pattern derived from its address and size; it is checked before each
 * free. A watchdog thread aborts the program if no thread makes progress for WATCHDOG seconds
 * (default 180), and the forker kills a child that runs longer than 60 s and fails.
 * Any mismatch prints one line "soak: FAIL ..." and exits 1.
 *
 * Usage: soak SECONDS [SEED [WORKERS]]   (seed 0 or absent: from the clock; printed)
 *        soak --child SEED               (the exec'd child mode)
 * Build: cc -O2 -pthread -I ffi/include tests/c/soak.c -L DIR -Wl,-rpath,DIR -lscopealloc
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "scopealloc.h"

#define MAX_WORKERS 16
#define EXCHANGE_SLOTS 4096 /* objects shared between threads and generations */
#define TENANTS 4
#define BATCH_MAX 64         /* objects per task */
#define SLICE_MS 150         /* how long one generation of threads lives */
#define CHILD_DEADLINE_S 60  /* a forked child still running after this has hung */

/* An object the program tracks: every field written by the thread that holds it. */
struct obj {
    unsigned char *p; /* NULL: empty */
    size_t n;         /* requested size */
    size_t usable;    /* malloc_usable_size(p), counted in the tally */
};

/* Shared objects; one lock. The forker holds it across fork() so a child gets it unlocked. */
static struct obj exchange[EXCHANGE_SLOTS];
static pthread_mutex_t exchange_lock = PTHREAD_MUTEX_INITIALIZER;

/* The program's own figures for the "soak" subtree: every tracked object, wherever it lives. */
static atomic_ullong tally_bytes, tally_objects;

static atomic_int stop_slice;         /* set by main: the generation's threads finish */
static atomic_ullong progress;        /* bumped by every thread's loop: the watchdog's food */
static atomic_ullong n_ops, n_tasks, n_limit_tasks, n_helpers, n_forks, n_execs, n_checks;
static unsigned long long seed;
static scopealloc_scope_t *soak_scope;
static scopealloc_scope_t *tenants[TENANTS]; /* replaced by main between generations only */
static const char *self_exe = "/proc/self/exe";
/* SOAK_INJECT: a fault to inject, to show that the checks fire (scripts/soak.sh runs each):
 * "leak" (an object the tally misses), "corrupt" (a byte of a shared object overwritten),
 * "child" (a forked child exits 3), "hang" (a worker blocks for ever). */
static const char *inject = "";

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "soak: FAIL (seed %llu): %s\n", seed, line);
    fflush(stderr);
    _exit(1);
}

static uint64_t next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t s = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull);
    next(&s);
    return s ? s : 1;
}

/* Mostly small, some medium, a few large (up to 3 MiB: large spans and huge mappings). */
static size_t random_size(uint64_t *s) {
    uint64_t r = next(s);
    unsigned kind = (unsigned)(r % 64);
    r >>= 8;
    if (kind == 0) return (size_t)(r % (3u << 20)) + 1;
    if (kind <= 8) return (size_t)(r % 32768) + 1;
    return (size_t)(r % 512) + 1;
}

static unsigned char pattern_of(uintptr_t addr, size_t n, size_t i) {
    return (unsigned char)((addr >> 4) ^ n ^ (i * 31));
}

static unsigned char pattern(const struct obj *o, size_t i) { return pattern_of((uintptr_t)o->p, o->n, i); }

/* Writes the pattern at both ends (at most 64 bytes each). */
static void fill(struct obj *o) {
    size_t k = o->n < 64 ? o->n : 64;
    for (size_t i = 0; i < k; i++) o->p[i] = pattern(o, i);
    for (size_t i = o->n - k; i < o->n; i++) o->p[i] = pattern(o, i);
}

static void check(const struct obj *o, const char *where) {
    size_t k = o->n < 64 ? o->n : 64;
    for (size_t i = 0; i < k; i++)
        if (o->p[i] != pattern(o, i)) fail("%s: object %p (%zu B) corrupted at byte %zu", where, (void *)o->p, o->n, i);
    for (size_t i = o->n - k; i < o->n; i++)
        if (o->p[i] != pattern(o, i)) fail("%s: object %p (%zu B) corrupted at byte %zu", where, (void *)o->p, o->n, i);
    if (malloc_usable_size(o->p) != o->usable)
        fail("%s: malloc_usable_size(%p) = %zu, was %zu", where, (void *)o->p, malloc_usable_size(o->p), o->usable);
}

/* Allocates a tracked object in the calling thread's current scope; 0 if malloc refused. */
static int obj_alloc(struct obj *o, size_t n, int tally) {
    o->p = malloc(n);
    if (!o->p) return 0;
    o->n = n;
    o->usable = malloc_usable_size(o->p);
    if (o->usable < n) fail("malloc_usable_size(%p) = %zu < %zu", (void *)o->p, o->usable, n);
    fill(o);
    if (tally) {
        atomic_fetch_add(&tally_bytes, o->usable);
        atomic_fetch_add(&tally_objects, 1);
    }
    return 1;
}

static void obj_free(struct obj *o, int tally, const char *where) {
    if (!o->p) return;
    check(o, where);
    if (tally) {
        atomic_fetch_sub(&tally_bytes, o->usable);
        atomic_fetch_sub(&tally_objects, 1);
    }
    free(o->p);
    o->p = NULL;
}

/* realloc keeps the object's origin scope, so the tally only moves by the usable sizes; the
 * kept prefix must have survived a move. */
static void obj_realloc(struct obj *o, size_t n) {
    check(o, "realloc");
    uintptr_t was = (uintptr_t)o->p;
    size_t was_n = o->n, was_usable = o->usable;
    unsigned char *q = realloc(o->p, n);
    if (!q) fail("realloc(%zu) refused outside any limit", n);
    size_t keep = was_n < n ? was_n : n;
    if (keep > 64) keep = 64;
    for (size_t i = 0; i < keep; i++)
        if (q[i] != pattern_of(was, was_n, i)) fail("realloc(%#lx, %zu) -> %p lost byte %zu", (unsigned long)was, n, (void *)q, i);
    o->p = q;
    o->n = n;
    o->usable = malloc_usable_size(q);
    fill(o);
    atomic_fetch_add(&tally_bytes, o->usable);
    atomic_fetch_sub(&tally_bytes, was_usable);
}

static struct scopealloc_stats stats_of(scopealloc_scope_t *s) {
    struct scopealloc_stats st;
    if (scopealloc_stats(s, &st) != 0) fail("scopealloc_stats failed");
    return st;
}

static void swap_into_exchange(struct obj *o, uint64_t *s) {
    size_t i = next(s) % EXCHANGE_SLOTS;
    pthread_mutex_lock(&exchange_lock);
    struct obj old = exchange[i];
    exchange[i] = *o;
    pthread_mutex_unlock(&exchange_lock);
    o->p = NULL;
    obj_free(&old, 1, "exchange");
}

/* A scope per task: exact figures while the objects are the thread's own, then closed while
 * some of them live elsewhere. */
static void task(uint64_t *s) {
    scopealloc_scope_t *parent = tenants[next(s) % TENANTS];
    scopealloc_scope_t *sc = scopealloc_scope_new(parent, "task");
    if (!sc) fail("scopealloc_scope_new: %s", strerror(errno));
    struct obj batch[BATCH_MAX];
    int n = 1 + (int)(next(s) % BATCH_MAX);
    uint64_t bytes = 0;
    scopealloc_prev_t *prev = scopealloc_enter(sc);
    if (!prev) fail("scopealloc_enter returned NULL");
    for (int i = 0; i < n; i++) {
        size_t sz = random_size(s);
        if (!obj_alloc(&batch[i], sz, 1)) fail("malloc(%zu) refused in a task scope without limit", sz);
    }
    for (int i = 0; i < n; i += 3) obj_realloc(&batch[i], random_size(s));
    scopealloc_leave(prev);
    for (int i = 0; i < n; i++) bytes += batch[i].usable;
    struct scopealloc_stats st = stats_of(sc);
    atomic_fetch_add(&n_checks, 1);
    if (st.bytes != bytes || st.objects != (uint64_t)n || st.self_bytes != bytes)
        fail("task scope: bytes %llu objects %llu self_bytes %llu, the task holds %llu bytes in %d objects",
             (unsigned long long)st.bytes, (unsigned long long)st.objects, (unsigned long long)st.self_bytes,
             (unsigned long long)bytes, n);
    if (st.allocs - st.frees != (uint64_t)n)
        fail("task scope: allocs %llu - frees %llu != %d live objects", (unsigned long long)st.allocs,
             (unsigned long long)st.frees, n);
    int close_early = next(s) % 2;
    uint64_t handed = 0, handed_bytes = 0;
    for (int i = 0; i < n; i++)
        if (next(s) % 3 == 0) {
            handed++;
            handed_bytes += batch[i].usable;
            swap_into_exchange(&batch[i], s);
        }
    if (close_early) {
        scopealloc_close(sc);
        if (scopealloc_is_closed(sc) != 1) fail("scope not closed after scopealloc_close");
        st = stats_of(sc);
        if (st.bytes != 0 || st.objects != 0)
            fail("closed scope reads bytes %llu objects %llu", (unsigned long long)st.bytes,
                 (unsigned long long)st.objects);
    }
    for (int i = 0; i < n; i++) obj_free(&batch[i], 1, "task");
    if (!close_early) {
        /* Only the objects handed to the exchange can still be charged here (other threads may
         * be freeing them now, which only lowers the figures). */
        st = stats_of(sc);
        if (st.self_objects > handed || st.self_bytes > handed_bytes)
            fail("task scope after its frees: %llu objects, %llu bytes; at most %llu objects, %llu bytes were handed out",
                 (unsigned long long)st.self_objects, (unsigned long long)st.self_bytes,
                 (unsigned long long)handed, (unsigned long long)handed_bytes);
    }
    scopealloc_scope_release(sc);
    atomic_fetch_add(&n_tasks, 1);
}

/* A hard limit: filled to refusal, never passed. Only this thread allocates in the scope, so the
 * refusal must come near the limit (within the refused object's size class). */
static void limit_task(uint64_t *s) {
    size_t limit = 65536 + (size_t)(next(s) % (4u << 20));
    scopealloc_scope_t *sc = scopealloc_scope_new(tenants[next(s) % TENANTS], "limited");
    if (!sc) fail("scopealloc_scope_new: %s", strerror(errno));
    if (scopealloc_set_limit(sc, limit) != 0 || scopealloc_limit(sc) != limit) fail("set_limit");
    enum { MAXN = 4096 };
    struct obj *objs = calloc(MAXN, sizeof *objs); /* in the thread's own scope, not tracked */
    if (!objs) fail("calloc refused");
    uint64_t bytes = 0;
    int n = 0, refused = 0, err = 0;
    size_t refused_size = 0;
    scopealloc_prev_t *prev = scopealloc_enter(sc);
    while (n < MAXN) {
        size_t sz = next(s) % 4 == 0 ? (size_t)(next(s) % 200000) + 1 : (size_t)(next(s) % 4000) + 1;
        errno = 0;
        if (!obj_alloc(&objs[n], sz, 1)) {
            err = errno;
            refused = 1;
            refused_size = sz;
            break;
        }
        bytes += objs[n].usable;
        n++;
    }
    scopealloc_leave(prev);
    struct scopealloc_stats st = stats_of(sc);
    atomic_fetch_add(&n_checks, 1);
    if (st.bytes != bytes || st.objects != (uint64_t)n)
        fail("limited scope: bytes %llu objects %llu, the task holds %llu in %d", (unsigned long long)st.bytes,
             (unsigned long long)st.objects, (unsigned long long)bytes, n);
    if (st.bytes > limit) fail("limited scope: %llu bytes live over its limit %zu", (unsigned long long)st.bytes, limit);
    if (refused) {
        if (err != ENOMEM) fail("refused malloc set errno %d, not ENOMEM", err);
        if (st.limit_hits < 1) fail("refused malloc counted no limit hit");
        if (bytes + 2 * refused_size + 4096 <= limit)
            fail("malloc(%zu) refused with %llu of %zu bytes live (only this thread allocates there)", refused_size,
                 (unsigned long long)bytes, limit);
    }
    for (int i = 0; i < n; i++) obj_free(&objs[i], 1, "limit");
    st = stats_of(sc);
    if (st.bytes != 0 || st.objects != 0)
        fail("limited scope after its frees: bytes %llu objects %llu", (unsigned long long)st.bytes,
             (unsigned long long)st.objects);
    free(objs);
    scopealloc_scope_release(sc);
    atomic_fetch_add(&n_limit_tasks, 1);
}

struct helper_arg {
    struct obj batch[32];
    uint64_t seed;
};

/* Receives objects from its creator, frees some, allocates more; hands them all back. */
static void *helper(void *p) {
    struct helper_arg *a = p;
    uint64_t s = a->seed;
    scopealloc_scope_t *sc = scopealloc_scope_new(tenants[next(&s) % TENANTS], "helper");
    if (!sc) fail("scopealloc_scope_new: %s", strerror(errno));
    scopealloc_prev_t *prev = scopealloc_enter(sc);
    for (int i = 0; i < 32; i++) {
        if (a->batch[i].p && next(&s) % 2) obj_free(&a->batch[i], 1, "helper");
        if (!a->batch[i].p && !obj_alloc(&a->batch[i], random_size(&s), 1)) fail("malloc refused in helper");
    }
    atomic_fetch_add(&progress, 1);
    /* A quarter of the helpers exit inside their scope (never leave), a handle released. */
    if (next(&s) % 4) scopealloc_leave(prev);
    scopealloc_scope_release(sc);
    atomic_fetch_add(&n_helpers, 1);
    return a;
}

static void helper_round(uint64_t *s) {
    struct helper_arg *a = calloc(1, sizeof *a);
    if (!a) fail("calloc refused");
    a->seed = next(s) | 1;
    scopealloc_prev_t *prev = scopealloc_enter(tenants[next(s) % TENANTS]);
    for (int i = 0; i < 32; i++)
        if (next(s) % 2 && !obj_alloc(&a->batch[i], random_size(s), 1)) fail("malloc refused");
    scopealloc_leave(prev);
    pthread_t t;
    int rc = pthread_create(&t, NULL, helper, a);
    if (rc != 0) fail("pthread_create: %s", strerror(rc));
    void *back;
    pthread_join(t, &back);
    for (int i = 0; i < 32; i++) {
        if (next(s) % 2)
            swap_into_exchange(&a->batch[i], s);
        else
            obj_free(&a->batch[i], 1, "after helper");
    }
    free(a);
}

static void *worker(void *arg) {
    uint64_t s = (uint64_t)(uintptr_t)arg;
    if (strcmp(inject, "hang") == 0 && atomic_load(&n_ops) > 1000)
        for (;;) pause();
    while (!atomic_load(&stop_slice)) {
        uint64_t r = next(&s) % 100;
        if (r < 40) {
            task(&s);
        } else if (r < 45) {
            limit_task(&s);
        } else if (r < 90) {
            struct obj o;
            scopealloc_prev_t *prev = scopealloc_enter(tenants[next(&s) % TENANTS]);
            size_t sz = random_size(&s);
            int ok = obj_alloc(&o, sz, 1);
            scopealloc_leave(prev);
            if (!ok) fail("malloc(%zu) refused in a tenant", sz);
            swap_into_exchange(&o, &s);
        } else {
            helper_round(&s);
        }
        atomic_fetch_add(&n_ops, 1);
        atomic_fetch_add(&progress, 1);
    }
    return NULL;
}

/* --- fork ---------------------------------------------------------------------------------- */

/* In the child of a threaded parent: allocate in a new scope with exact figures. */
static int child_scope_check(uint64_t *s) {
    scopealloc_scope_t *sc = scopealloc_scope_new(NULL, "child");
    if (!sc) return 10;
    scopealloc_prev_t *prev = scopealloc_enter(sc);
    struct obj objs[100];
    uint64_t bytes = 0;
    for (int i = 0; i < 100; i++) {
        if (!obj_alloc(&objs[i], random_size(s), 0)) return 11;
        bytes += objs[i].usable;
    }
    scopealloc_leave(prev);
    struct scopealloc_stats st;
    if (scopealloc_stats(sc, &st) != 0) return 12;
    if (st.bytes != bytes || st.objects != 100) {
        fprintf(stderr, "soak: child scope bytes %llu objects %llu, holds %llu in 100\n",
                (unsigned long long)st.bytes, (unsigned long long)st.objects, (unsigned long long)bytes);
        return 13;
    }
    for (int i = 0; i < 100; i++) obj_free(&objs[i], 0, "child");
    if (scopealloc_stats(sc, &st) != 0 || st.bytes != 0 || st.objects != 0) return 14;
    scopealloc_scope_release(sc);
    return 0;
}

static void *child_thread(void *arg) {
    uint64_t s = (uint64_t)(uintptr_t)arg;
    return (void *)(intptr_t)child_scope_check(&s);
}

/* The exec'd child: threads, scopes, exact figures; status 0 if all held. */
static int child_main(uint64_t s) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        if (pthread_create(&t[i], NULL, child_thread, (void *)(uintptr_t)mix(s, (uint64_t)i))) return 20;
    int rc = child_scope_check(&s);
    for (int i = 0; i < 3; i++) {
        void *r;
        pthread_join(t[i], &r);
        if (r) rc = (int)(intptr_t)r;
    }
    return rc;
}

/* Waits for a child, killing it if it outlives the deadline (a hang). */
static void reap(pid_t pid, const char *what) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail("%s child %d: %s %d", what, (int)pid, WIFEXITED(status) ? "exit status" : "killed by signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            return;
        }
        if (r < 0) fail("waitpid: %s", strerror(errno));
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > CHILD_DEADLINE_S) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail("%s child %d hung (killed after %d s)", what, (int)pid, CHILD_DEADLINE_S);
        }
        usleep(2000);
    }
}

static void *forker(void *arg) {
    uint64_t s = (uint64_t)(uintptr_t)arg;
    while (!atomic_load(&stop_slice)) {
        uint64_t r = next(&s) % 3;
        if (r == 0) {
            /* fork without exec: the child owns a copy of the exchange and frees part of it */
            pthread_mutex_lock(&exchange_lock);
            pid_t pid = fork();
            if (pid == 0) {
                uint64_t cs = mix(s, 77);
                for (int k = 0; k < 200; k++) {
                    struct obj *o = &exchange[next(&cs) % EXCHANGE_SLOTS];
                    obj_free(o, 0, "forked child");
                }
                int rc = strcmp(inject, "child") == 0 ? 3 : child_scope_check(&cs);
                struct obj o;
                if (!obj_alloc(&o, 100, 0)) rc = 15;
                obj_free(&o, 0, "forked child");
                _exit(rc);
            }
            pthread_mutex_unlock(&exchange_lock);
            if (pid < 0) fail("fork: %s", strerror(errno));
            reap(pid, "forked");
            atomic_fetch_add(&n_forks, 1);
        } else {
            pid_t pid = fork();
            if (pid == 0) {
                char arg1[32];
                snprintf(arg1, sizeof arg1, "%llu", (unsigned long long)next(&s));
                if (r == 1)
                    execl(self_exe, "soak", "--child", arg1, (char *)NULL);
                else
                    execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            if (pid < 0) fail("fork: %s", strerror(errno));
            reap(pid, r == 1 ? "exec'd soak" : "exec'd /bin/true");
            atomic_fetch_add(&n_execs, 1);
        }
        atomic_fetch_add(&progress, 1);
    }
    return NULL;
}

/* --- main ---------------------------------------------------------------------------------- */

static unsigned watchdog_s = 180;

static void *watchdog(void *arg) {
    (void)arg;
    unsigned long long last = atomic_load(&progress);
    unsigned idle = 0;
    for (;;) {
        sleep(1);
        unsigned long long now = atomic_load(&progress);
        if (now != last) {
            last = now;
            idle = 0;
        } else if (++idle >= watchdog_s) {
            fprintf(stderr, "soak: FAIL (seed %llu): no progress for %u s (hang); aborting\n", seed, idle);
            fflush(stderr);
            abort();
        }
    }
    return NULL;
}

static void quiescent_check(const char *when, unsigned long gen) {
    struct scopealloc_stats st = stats_of(soak_scope);
    unsigned long long b = atomic_load(&tally_bytes), o = atomic_load(&tally_objects);
    atomic_fetch_add(&n_checks, 1);
    if (st.bytes != b || st.objects != o)
        fail("generation %lu, %s: soak scope bytes %llu objects %llu, the program holds %llu bytes in %llu objects",
             gen, when, (unsigned long long)st.bytes, (unsigned long long)st.objects, b, o);
}

static double seconds_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void new_tenant(int i, unsigned long gen) {
    char name[32];
    snprintf(name, sizeof name, "tenant-%d.%lu", i, gen);
    tenants[i] = scopealloc_scope_new(soak_scope, name);
    if (!tenants[i]) fail("scopealloc_scope_new: %s", strerror(errno));
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--child") == 0) return child_main(strtoull(argv[2], NULL, 10) | 1);
    if (argc < 2) {
        fprintf(stderr, "usage: soak SECONDS [SEED [WORKERS]]\n");
        return 2;
    }
    double duration = atof(argv[1]);
    seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
    if (seed == 0) seed = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32);
    int workers = argc > 3 ? atoi(argv[3]) : 4;
    if (workers < 1 || workers > MAX_WORKERS) workers = 4;
    if (getenv("SOAK_INJECT")) inject = getenv("SOAK_INJECT");
    const char *w = getenv("WATCHDOG");
    if (w && atoi(w) > 0) watchdog_s = (unsigned)atoi(w);
    printf("soak: seed %llu, %.0f s, %d workers\n", seed, duration, workers);
    fflush(stdout);

    /* Not a libscopealloc process (plain glibc): the checks would be meaningless. */
    scopealloc_scope_t *root = scopealloc_root();
    if (!root || scopealloc_scope_id(root) != 1) fail("scopealloc_root() is not the root scope");
    scopealloc_scope_release(root);
    soak_scope = scopealloc_scope_new(NULL, "soak");
    if (!soak_scope) fail("scopealloc_scope_new: %s", strerror(errno));
    for (int i = 0; i < TENANTS; i++) new_tenant(i, 0);

    pthread_t wd;
    if (pthread_create(&wd, NULL, watchdog, NULL)) fail("pthread_create watchdog");
    pthread_detach(wd);

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t ms = mix(seed, 0);
    unsigned long gen = 0;
    double next_report = 60;
    unsigned long long threads = 0;
    while (seconds_since(&t0) < duration) {
        gen++;
        atomic_store(&stop_slice, 0);
        pthread_t t[MAX_WORKERS + 1];
        for (int i = 0; i < workers; i++) {
            int rc = pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)mix(seed, gen * 64 + (uint64_t)i));
            if (rc) fail("pthread_create: %s", strerror(rc));
        }
        int rc = pthread_create(&t[workers], NULL, forker, (void *)(uintptr_t)mix(seed, gen * 64 + 63));
        if (rc) fail("pthread_create: %s", strerror(rc));
        threads += (unsigned long long)workers + 1;
        usleep(SLICE_MS * 1000);
        atomic_store(&stop_slice, 1);
        for (int i = 0; i <= workers; i++) pthread_join(t[i], NULL);
        atomic_fetch_add(&progress, 1);

        if (gen == 3 && strcmp(inject, "leak") == 0) {
            struct obj o;
            scopealloc_prev_t *prev = scopealloc_enter(tenants[0]);
            if (obj_alloc(&o, 1000, 0)) fprintf(stderr, "soak: injected an untallied object\n");
            scopealloc_leave(prev);
        }
        if (gen == 3 && strcmp(inject, "corrupt") == 0)
            for (int k = 0; k < EXCHANGE_SLOTS; k++)
                if (exchange[k].p) {
                    exchange[k].p[0] ^= 1;
                    fprintf(stderr, "soak: injected a corrupt byte\n");
                    break;
                }
        quiescent_check("after the join", gen);
        for (int k = 0; k < EXCHANGE_SLOTS / 8; k++) obj_free(&exchange[next(&ms) % EXCHANGE_SLOTS], 1, "main");
        quiescent_check("after main's frees", gen);
        if (gen % 20 == 0) {
            int i = (int)(next(&ms) % TENANTS);
            if (next(&ms) % 2)
                scopealloc_close(tenants[i]);
            scopealloc_scope_release(tenants[i]); /* closes it if close was not called */
            new_tenant(i, gen);
            quiescent_check("after a tenant closed with live objects", gen);
        }
        if (seconds_since(&t0) >= next_report) {
            fprintf(stderr, "soak: %.0f s, generation %lu, %llu threads, %llu ops, %llu tasks, %llu forks, %llu execs, %llu checks, %llu live objects\n",
                    seconds_since(&t0), gen, threads, (unsigned long long)n_ops, (unsigned long long)n_tasks,
                    (unsigned long long)n_forks, (unsigned long long)n_execs, (unsigned long long)n_checks,
                    (unsigned long long)atomic_load(&tally_objects));
            next_report += 60;
        }
    }
    for (int k = 0; k < EXCHANGE_SLOTS; k++) obj_free(&exchange[k], 1, "end");
    quiescent_check("at the end, everything freed", gen);
    struct scopealloc_stats st = stats_of(soak_scope);
    if (st.bytes != 0 || st.objects != 0) fail("soak scope holds %llu bytes at the end", (unsigned long long)st.bytes);
    printf("soak: ok: %.0f s, %lu generations, %llu threads, %llu ops, %llu tasks, %llu limit tasks, %llu helpers, "
           "%llu forks, %llu execs, %llu checks\n",
           seconds_since(&t0), gen, threads, (unsigned long long)n_ops, (unsigned long long)n_tasks,
           (unsigned long long)n_limit_tasks, (unsigned long long)n_helpers, (unsigned long long)n_forks,
           (unsigned long long)n_execs, (unsigned long long)n_checks);
    return 0;
}

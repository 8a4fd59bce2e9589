/*
 * test_ffi.c - the C library's own test: every exported symbol, every error case of the
 * malloc family (glibc 2.36 semantics), the abort on a foreign pointer, SCOPEALLOC_CHECK,
 * the environment options, and the scope API.
 *
 * Build: cc -O1 -g -Wall -Wextra -I ffi/include tests/c/test_ffi.c -L DIR -lscopealloc \
 *           -Wl,-rpath,DIR -ldl -lpthread -o test_ffi
 * Run:   ./test_ffi        (prints "ok - ..." / "FAIL - ..." lines and "N passed, M failed";
 *                           exits 1 on failure)
 * Checks that need another process (aborts, options read at start-up) fork, or re-execute
 * this program as "test_ffi --child MODE" with extra environment variables.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "scopealloc.h"

/* This program misuses the allocator on purpose (foreign and freed pointers, deprecated calls,
 * reads of uninitialised memory to check the junk fill). */
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#pragma GCC diagnostic ignored "-Wuse-after-free"
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wpragmas"

/* Not declared by glibc's headers (or not any more). */
extern void cfree(void *);
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
extern struct mallinfo __libc_mallinfo(void);

static int passed, failed;
static const char *self_path;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (cond) {                                                                           \
            passed++;                                                                         \
        } else {                                                                              \
            failed++;                                                                         \
            printf("FAIL - %s:%d: %s: ", __FILE__, __LINE__, #cond);                          \
            printf(__VA_ARGS__);                                                              \
            printf("\n");                                                                     \
        }                                                                                     \
    } while (0)

static void section(const char *name, int before_failed) {
    printf("%s - %s\n", failed == before_failed ? "ok" : "FAIL", name);
    fflush(stdout);
}

/* Keeps the compiler from reasoning about malloc results (it knows their semantics). */
static void *volatile sink;
static size_t opaque(size_t v) {
    volatile size_t x = v;
    return x;
}

/* Makes a block escape, so that the compiler cannot drop a malloc/free pair it can see. */
static void *escape(void *p) {
    sink = p;
    return p;
}

static int aligned_to(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static int all_bytes(const void *p, int v, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != (unsigned char)v) return 0;
    return 1;
}

/* Live objects and bytes of a scope. */
static struct scopealloc_stats stats_of(scopealloc_scope_t *s) {
    struct scopealloc_stats st;
    memset(&st, 0xff, sizeof st);
    int rc = scopealloc_stats(s, &st);
    CHECK(rc == 0, "scopealloc_stats returned %d", rc);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Child processes.                                                                           */

struct child {
    int status;      /* as from waitpid */
    char err[8192];  /* stderr */
    char out[8192];  /* stdout */
};

static void read_all(int fd, char *buf, size_t cap) {
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
        if (n == cap - 1) {
            char scratch[256];
            while (read(fd, scratch, sizeof scratch) > 0) {
            }
            break;
        }
    }
    buf[n] = 0;
}

/* Runs fn() in a forked child with stdout and stderr captured (or, if mode is set, re-executes
 * this program with "--child MODE" and the NULL-terminated extra environment). */
static void run_child(struct child *c, void (*fn)(void), const char *mode, const char *const *env) {
    int out[2], err[2];
    if (pipe(out) || pipe(err)) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        close(out[0]);
        close(err[0]);
        close(out[1]);
        close(err[1]);
        if (mode) {
            for (const char *const *e = env; e && *e; e++) putenv((char *)*e);
            char *argv[] = {(char *)self_path, "--child", (char *)mode, NULL};
            execv(self_path, argv);
            perror("execv");
            _exit(127);
        }
        fn();
        _exit(0);
    }
    close(out[1]);
    close(err[1]);
    /* Children write little: reading one pipe then the other cannot deadlock. */
    read_all(err[0], c->err, sizeof c->err);
    read_all(out[0], c->out, sizeof c->out);
    close(out[0]);
    close(err[0]);
    while (waitpid(pid, &c->status, 0) < 0 && errno == EINTR) {
    }
}

static int aborted(const struct child *c) {
    return WIFSIGNALED(c->status) && WTERMSIG(c->status) == SIGABRT;
}

static int exited_ok(const struct child *c) { return WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0; }

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* The report line of the scope named `name` at depth `depth` (the root is 0) in `report`,
 * copied to `line` (without its newline); 0 if there is none. */
static int report_line(const char *report, const char *name, int depth, char *line, size_t cap) {
    char head[128];
    snprintf(head, sizeof head, "scopealloc: %*sscope %s id=", 2 * depth, "", name);
    for (const char *l = report; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, head, strlen(head)) == 0) {
            size_t n = strcspn(l, "\n");
            if (n >= cap) n = cap - 1;
            memcpy(line, l, n);
            line[n] = 0;
            return 1;
        }
    }
    return 0;
}

/* The number after " key=" in a report line; -1 if absent or not a number ("none" is -2). */
static long long report_field(const char *line, const char *key) {
    char k[64];
    snprintf(k, sizeof k, " %s=", key);
    const char *p = strstr(line, k);
    if (!p) return -1;
    p += strlen(k);
    if (!strncmp(p, "none", 4)) return -2;
    char *end;
    long long v = strtoll(p, &end, 10);
    return end == p || (*end != ' ' && *end != 0) ? -1 : v;
}

/* A report line's figures are the scope's: those of `want` (read when the report was made). */
static void check_report_line(const char *report, const char *name, int depth, const struct scopealloc_stats *want,
                              long long limit) {
    char line[512];
    int found = report_line(report, name, depth, line, sizeof line);
    CHECK(found, "report has a line for scope %s at depth %d: %s", name, depth, report);
    if (!found) return;
    static const char *const keys[] = {"bytes", "self_bytes", "objects", "self_objects", "peak", "charged", "allocs", "frees", "limit_hits"};
    const unsigned long long vals[] = {want->bytes,        want->self_bytes,    want->objects,
                                       want->self_objects, want->peak_bytes,    want->charged_bytes,
                                       want->allocs,       want->frees,         want->limit_hits};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        CHECK(report_field(line, keys[i]) == (long long)vals[i], "scope %s: %s=%lld in the report, %llu in its stats: %s", name,
              keys[i], report_field(line, keys[i]), vals[i], line);
    CHECK(report_field(line, "limit") == limit, "scope %s: limit=%lld, want %lld", name, report_field(line, "limit"), limit);
}

/* ---------------------------------------------------------------------------------------- */
/* Symbols.                                                                                   */

static void test_symbols_resolve_to_scopealloc(void) {
    int f = failed;
    static const char *names[] = {
        "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
        "aligned_alloc", "memalign", "valloc", "pvalloc", "malloc_usable_size", "cfree",
        "malloc_trim", "mallinfo2", "mallinfo", "malloc_stats", "__libc_malloc", "__libc_free",
        "__libc_calloc", "__libc_realloc", "__libc_memalign", "__libc_valloc", "__libc_pvalloc",
        "__libc_mallinfo", "__libc_reallocarray", "scopealloc_root", "scopealloc_current",
        "scopealloc_scope_new", "scopealloc_scope_clone", "scopealloc_scope_release",
        "scopealloc_enter", "scopealloc_leave", "scopealloc_close", "scopealloc_set_limit",
        "scopealloc_limit", "scopealloc_stats", "scopealloc_reset_peak", "scopealloc_scope_name",
        "scopealloc_scope_id", "scopealloc_scope_parent", "scopealloc_is_closed",
        "scopealloc_heap_stats", "scopealloc_print_stats",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *sym = dlsym(RTLD_DEFAULT, names[i]);
        Dl_info info;
        int found = sym && dladdr(sym, &info) && info.dli_fname && strstr(info.dli_fname, "scopealloc");
        CHECK(found, "%s resolves to %s", names[i], sym && dladdr(sym, &info) ? info.dli_fname : "nothing");
    }
    section("every symbol resolves to libscopealloc", f);
}

/* Every allocation function charges the current scope: proof that the call reached us. */
static void test_every_allocation_function_charges_the_scope(void) {
    int f = failed;
    scopealloc_scope_t *s = scopealloc_scope_new(NULL, "symbols");
    scopealloc_prev_t *prev = scopealloc_enter(s);
    void *p[16];
    int n = 0;
    p[n++] = malloc(opaque(100));
    p[n++] = calloc(opaque(10), 10);
    p[n++] = realloc(NULL, opaque(100));
    p[n++] = reallocarray(NULL, opaque(10), 10);
    CHECK(posix_memalign(&p[n++], 64, opaque(100)) == 0, "posix_memalign");
    p[n++] = aligned_alloc(64, opaque(100));
    p[n++] = memalign(64, opaque(100));
    p[n++] = valloc(opaque(100));
    p[n++] = pvalloc(opaque(100));
    p[n++] = __libc_malloc(opaque(100));
    p[n++] = __libc_calloc(opaque(10), 10);
    p[n++] = __libc_realloc(NULL, opaque(100));
    p[n++] = __libc_memalign(64, opaque(100));
    p[n++] = __libc_valloc(opaque(100));
    p[n++] = __libc_pvalloc(opaque(100));
    scopealloc_leave(prev);
    for (int i = 0; i < n; i++) CHECK(p[i] != NULL, "allocation %d", i);
    struct scopealloc_stats st = stats_of(s);
    CHECK(st.objects == (uint64_t)n, "objects %llu, expected %d", (unsigned long long)st.objects, n);
    CHECK(st.bytes >= (uint64_t)n * 100, "bytes %llu", (unsigned long long)st.bytes);
    free(p[0]);
    cfree(p[1]);
    __libc_free(p[2]);
    for (int i = 3; i < n; i++) free(p[i]);
    st = stats_of(s);
    CHECK(st.objects == 0, "objects %llu after frees", (unsigned long long)st.objects);
    CHECK(st.bytes == 0, "bytes %llu after frees", (unsigned long long)st.bytes);
    CHECK(st.allocs == (uint64_t)n && st.frees == (uint64_t)n, "allocs %llu frees %llu",
          (unsigned long long)st.allocs, (unsigned long long)st.frees);
    scopealloc_scope_release(s);
    section("every allocation function charges the current scope; every free uncharges it", f);
}

/* ---------------------------------------------------------------------------------------- */
/* malloc, free, calloc, realloc, reallocarray.                                               */

static void test_malloc(void) {
    int f = failed;
    void *a = malloc(opaque(0)), *b = malloc(opaque(0));
    CHECK(a && b && a != b, "malloc(0) gives unique pointers: %p %p", a, b);
    free(a);
    free(b);
    free(NULL);
    static const size_t sizes[] = {1, 8, 15, 16, 17, 100, 1000, 4096, 32768, 32769, 100000, 1 << 20, 3 << 20, 16 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p) continue;
        CHECK(aligned_to(p, 16), "malloc(%zu) = %p is 16-byte aligned", n, (void *)p);
        CHECK(malloc_usable_size(p) >= n, "usable %zu >= %zu", malloc_usable_size(p), n);
        memset(p, 0x5a, n);
        CHECK(all_bytes(p, 0x5a, n), "malloc(%zu) is writable", n);
        free(p);
    }
    errno = 0;
    sink = malloc(opaque(SIZE_MAX));
    CHECK(sink == NULL && errno == ENOMEM, "malloc(SIZE_MAX): %p errno %d", sink, errno);
    errno = 0;
    sink = malloc(opaque((size_t)PTRDIFF_MAX + 1));
    CHECK(sink == NULL && errno == ENOMEM, "malloc(PTRDIFF_MAX + 1): %p errno %d", sink, errno);
    errno = 0;
    sink = malloc(opaque((size_t)1 << 62)); /* more than the address space */
    CHECK(sink == NULL && errno == ENOMEM, "malloc(2^62): %p errno %d", sink, errno);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL)");
    section("malloc, free, malloc_usable_size", f);
}

static void test_calloc(void) {
    int f = failed;
    static const size_t sizes[] = {1, 24, 512, 4000, 40000, 300000, 5 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        /* Dirty memory first, so that a reused block must be cleared. */
        for (int k = 0; k < 4; k++) {
            void *d = malloc(opaque(n));
            if (d) memset(d, 0xee, n);
            free(d);
        }
        unsigned char *p = calloc(opaque(n), 1);
        CHECK(p && all_bytes(p, 0, n), "calloc(%zu, 1) is zeroed", n);
        free(p);
        p = calloc(1, opaque(n));
        CHECK(p && all_bytes(p, 0, n), "calloc(1, %zu) is zeroed", n);
        free(p);
    }
    void *z = calloc(opaque(0), 0);
    CHECK(z != NULL, "calloc(0, 0) gives a pointer");
    free(z);
    errno = 0;
    sink = calloc(opaque(SIZE_MAX / 2), 3);
    CHECK(sink == NULL && errno == ENOMEM, "calloc overflow: %p errno %d", sink, errno);
    errno = 0;
    sink = calloc(opaque((size_t)1 << 32), (size_t)1 << 32);
    CHECK(sink == NULL && errno == ENOMEM, "calloc 2^32 * 2^32: %p errno %d", sink, errno);
    errno = 0;
    sink = calloc(1, opaque(SIZE_MAX));
    CHECK(sink == NULL && errno == ENOMEM, "calloc(1, SIZE_MAX): %p errno %d", sink, errno);
    section("calloc zeroes and checks overflow", f);
}

static void test_realloc(void) {
    int f = failed;
    unsigned char *p = realloc(NULL, opaque(10));
    CHECK(p != NULL, "realloc(NULL, 10) = malloc(10)");
    memset(p, 7, 10);
    static const size_t steps[] = {20, 100, 5000, 40000, 1 << 20, 5 << 20, 64, 12, 3};
    size_t have = 10;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n = steps[i];
        unsigned char *q = realloc(p, opaque(n));
        CHECK(q != NULL, "realloc to %zu", n);
        if (!q) break;
        size_t keep = have < n ? have : n;
        CHECK(all_bytes(q, 7, keep), "realloc to %zu keeps %zu bytes", n, keep);
        CHECK(malloc_usable_size(q) >= n, "realloc to %zu: usable %zu", n, malloc_usable_size(q));
        memset(q, 7, n);
        have = n;
        p = q;
    }
    errno = 0;
    void *q = realloc(p, opaque(SIZE_MAX));
    CHECK(q == NULL && errno == ENOMEM, "realloc(p, SIZE_MAX): %p errno %d", q, errno);
    CHECK(all_bytes(p, 7, have), "a failed realloc leaves the block alone");
    errno = 0;
    q = realloc(p, opaque((size_t)1 << 62));
    CHECK(q == NULL && errno == ENOMEM, "realloc(p, 2^62): %p errno %d", q, errno);
    CHECK(all_bytes(p, 7, have), "a failed realloc leaves the block alone");

    /* realloc(p, 0) frees p and returns NULL (glibc). */
    scopealloc_scope_t *s = scopealloc_scope_new(NULL, "realloc0");
    scopealloc_prev_t *prev = scopealloc_enter(s);
    void *r = malloc(opaque(100));
    scopealloc_leave(prev);
    CHECK(stats_of(s).objects == 1, "one object before realloc(p, 0)");
    errno = 0;
    q = realloc(r, 0);
    CHECK(q == NULL, "realloc(p, 0) returns NULL, got %p", q);
    CHECK(errno == 0, "realloc(p, 0) leaves errno alone: %d", errno);
    CHECK(stats_of(s).objects == 0, "realloc(p, 0) freed p");
    scopealloc_scope_release(s);
    free(p);

    /* reallocarray */
    unsigned int *a = reallocarray(NULL, opaque(10), sizeof(unsigned));
    CHECK(a != NULL, "reallocarray(NULL, 10, 4)");
    for (unsigned i = 0; i < 10; i++) a[i] = i;
    unsigned *b = reallocarray(a, opaque(1000), sizeof(unsigned));
    CHECK(b != NULL && b[9] == 9, "reallocarray grows and keeps contents");
    a = b;
    errno = 0;
    b = reallocarray(a, opaque(SIZE_MAX / 2), 4);
    CHECK(b == NULL && errno == ENOMEM, "reallocarray overflow: %p errno %d", (void *)b, errno);
    CHECK(a[999 - 990] == 9, "reallocarray overflow leaves the block alone");
    errno = 0;
    b = __libc_realloc(a, opaque(2000 * sizeof(unsigned)));
    CHECK(b != NULL && b[9] == 9, "__libc_realloc");
    free(b);
    section("realloc and reallocarray (glibc semantics for NULL and 0, ENOMEM, overflow)", f);
}

/* ---------------------------------------------------------------------------------------- */
/* Aligned allocation.                                                                        */

static void test_posix_memalign(void) {
    int f = failed;
    static const size_t good[] = {8, 16, 32, 64, 128, 4096, 65536, 1 << 20, 4 << 20, 16 << 20};
    static const size_t sizes[] = {0, 1, 100, 5000, 70000, 3 << 20};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
            void *p = (void *)1;
            errno = 4242;
            int rc = posix_memalign(&p, good[i], opaque(sizes[j]));
            CHECK(rc == 0 && p != NULL, "posix_memalign(align %zu, %zu) = %d", good[i], sizes[j], rc);
            if (rc) continue;
            CHECK(errno == 4242, "posix_memalign leaves errno alone: %d", errno);
            CHECK(aligned_to(p, good[i]), "posix_memalign(%zu, %zu) = %p", good[i], sizes[j], p);
            CHECK(malloc_usable_size(p) >= sizes[j], "usable");
            memset(p, 1, sizes[j]);
            void *q = realloc(p, opaque(sizes[j] + 100));
            CHECK(q != NULL, "realloc of an aligned block");
            free(q);
        }
    }
    static const size_t bad[] = {0, 1, 2, 3, 4, 12, 24, 48, 100, 4097, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *p = (void *)0x1234;
        errno = 4242;
        int rc = posix_memalign(&p, opaque(bad[i]), 16);
        CHECK(rc == EINVAL, "posix_memalign(align %zu) = %d, expected EINVAL", bad[i], rc);
        CHECK(errno == 4242, "posix_memalign(align %zu) leaves errno alone: %d", bad[i], errno);
        CHECK(p == (void *)0x1234, "posix_memalign(align %zu) leaves *memptr alone", bad[i]);
    }
    void *p = (void *)0x1234;
    errno = 4242;
    int rc = posix_memalign(&p, 64, opaque(SIZE_MAX));
    CHECK(rc == ENOMEM && errno == 4242 && p == (void *)0x1234, "posix_memalign(64, SIZE_MAX) = %d errno %d", rc, errno);
    rc = posix_memalign(&p, (size_t)1 << 62, 16);
    CHECK(rc == ENOMEM && p == (void *)0x1234, "posix_memalign(2^62, 16) = %d", rc);
    section("posix_memalign (EINVAL for bad alignments, ENOMEM, errno untouched)", f);
}

static void test_aligned_alloc_memalign_valloc_pvalloc(void) {
    int f = failed;
    static const size_t good[] = {1, 2, 4, 8, 16, 32, 64, 256, 4096, 1 << 16, 2 << 20};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        void *p = aligned_alloc(good[i], opaque(100)); /* size need not be a multiple */
        CHECK(p && aligned_to(p, good[i]), "aligned_alloc(%zu, 100) = %p", good[i], p);
        free(p);
    }
    static const size_t bad[] = {0, 3, 24, 100, 4097, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        void *p = aligned_alloc(opaque(bad[i]), 64);
        CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 64) = %p errno %d", bad[i], p, errno);
    }
    errno = 0;
    sink = aligned_alloc(64, opaque(SIZE_MAX));
    CHECK(sink == NULL && errno == ENOMEM, "aligned_alloc(64, SIZE_MAX): errno %d", errno);

    /* memalign: glibc 2.36 rounds a non-power-of-two alignment up. */
    void *p = memalign(opaque(24), 100);
    CHECK(p && aligned_to(p, 32), "memalign(24) is 32-aligned: %p", p);
    free(p);
    p = memalign(opaque(0), 100);
    CHECK(p && aligned_to(p, 16), "memalign(0) acts as malloc: %p", p);
    free(p);
    p = memalign(opaque(3000), 100);
    CHECK(p && aligned_to(p, 4096), "memalign(3000) is 4096-aligned: %p", p);
    free(p);
    p = memalign(opaque(1 << 20), 100);
    CHECK(p && aligned_to(p, 1 << 20), "memalign(1 MiB): %p", p);
    free(p);
    errno = 0;
    p = memalign(opaque(SIZE_MAX / 2 + 2), 16);
    CHECK(p == NULL && errno == EINVAL, "memalign(SIZE_MAX/2+2): %p errno %d", p, errno);
    errno = 0;
    p = memalign(64, opaque(SIZE_MAX));
    CHECK(p == NULL && errno == ENOMEM, "memalign(64, SIZE_MAX): errno %d", errno);

    long page = sysconf(_SC_PAGESIZE);
    p = valloc(opaque(10));
    CHECK(p && aligned_to(p, (size_t)page), "valloc: %p", p);
    free(p);
    p = pvalloc(opaque(10));
    CHECK(p && aligned_to(p, (size_t)page) && malloc_usable_size(p) >= (size_t)page,
          "pvalloc(10): %p usable %zu", p, p ? malloc_usable_size(p) : 0);
    free(p);
    p = pvalloc(opaque((size_t)page + 1));
    CHECK(p && malloc_usable_size(p) >= 2 * (size_t)page, "pvalloc(page + 1) rounds to 2 pages");
    free(p);
    errno = 0;
    p = pvalloc(opaque(SIZE_MAX - 10));
    CHECK(p == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX - 10): %p errno %d", p, errno);
    errno = 0;
    p = valloc(opaque(SIZE_MAX));
    CHECK(p == NULL && errno == ENOMEM, "valloc(SIZE_MAX): %p errno %d", p, errno);
    section("aligned_alloc, memalign, valloc, pvalloc", f);
}

/* ---------------------------------------------------------------------------------------- */
/* mallinfo, malloc_trim, malloc_stats.                                                       */

static void print_malloc_stats(void) { malloc_stats(); }

static void test_mallinfo_trim_stats(void) {
    int f = failed;
    struct mallinfo2 before = mallinfo2();
    void *big = malloc(opaque(8 << 20));
    memset(big, 1, 8 << 20);
    struct mallinfo2 during = mallinfo2();
    CHECK(during.uordblks >= before.uordblks + (8 << 20), "mallinfo2 uordblks %zu -> %zu",
          before.uordblks, during.uordblks);
    CHECK(during.arena >= during.uordblks, "arena %zu >= uordblks %zu", during.arena, during.uordblks);
    /* The figures are the allocator's own, read another way: live bytes are the root scope's
     * bytes (this thread is quiet), arena is the committed memory; and they move by exactly the
     * block's usable size. */
    scopealloc_scope_t *rootscope = scopealloc_root();
    struct scopealloc_stats rs_during = stats_of(rootscope);
    struct scopealloc_heap_stats hs_during;
    CHECK(scopealloc_heap_stats(&hs_during) == 0, "heap stats");
    struct mallinfo2 again = mallinfo2();
    CHECK(again.uordblks == rs_during.bytes, "uordblks %zu is the root scope's live bytes %llu", again.uordblks,
          (unsigned long long)rs_during.bytes);
    CHECK(again.arena == hs_during.committed, "arena %zu is the committed memory %zu", again.arena, hs_during.committed);
    CHECK(again.uordblks - before.uordblks == malloc_usable_size(big) &&
              during.uordblks - before.uordblks == malloc_usable_size(big),
          "uordblks grows by the block's usable size: %zu -> %zu, usable %zu", before.uordblks, during.uordblks,
          malloc_usable_size(big));
    struct mallinfo old = mallinfo();
    CHECK(old.uordblks >= (8 << 20), "mallinfo uordblks %d", old.uordblks);
    old = __libc_mallinfo();
    CHECK(old.uordblks >= (8 << 20), "__libc_mallinfo uordblks %d", old.uordblks);
    size_t big_usable = malloc_usable_size(big);
    free(big);
    struct mallinfo2 after = mallinfo2();
    CHECK(after.uordblks == during.uordblks - big_usable, "free lowers uordblks by %zu: %zu -> %zu", big_usable,
          during.uordblks, after.uordblks);
    scopealloc_scope_release(rootscope);

    /* Free many small blocks, then trim: something goes back to the OS. */
    enum { N = 20000 };
    static void *blocks[N];
    for (int i = 0; i < N; i++) blocks[i] = malloc(opaque(200));
    for (int i = 0; i < N; i++) free(blocks[i]);
    struct scopealloc_heap_stats h1, h2;
    CHECK(scopealloc_heap_stats(&h1) == 0, "heap stats");
    int rc = malloc_trim(0);
    CHECK(scopealloc_heap_stats(&h2) == 0, "heap stats");
    CHECK(rc == 0 || rc == 1, "malloc_trim returns 0 or 1: %d", rc);
    CHECK((rc == 1) == (h2.returned > h1.returned), "malloc_trim %d, returned %zu -> %zu", rc, h1.returned, h2.returned);
    CHECK(h2.committed <= h2.mapped, "committed %zu <= mapped %zu", h2.committed, h2.mapped);
    CHECK(scopealloc_heap_stats(NULL) == EINVAL, "heap stats NULL");

    struct child c;
    run_child(&c, print_malloc_stats, NULL, NULL);
    CHECK(exited_ok(&c), "malloc_stats child status %d", c.status);
    CHECK(strstr(c.err, "scopealloc: scope root id=1 ") != NULL, "malloc_stats prints the report: %s", c.err);
    CHECK(strstr(c.err, "scopealloc: heap: mapped ") != NULL, "malloc_stats prints heap figures");
    section("mallinfo2, mallinfo, malloc_trim, malloc_stats", f);
}

/* ---------------------------------------------------------------------------------------- */
/* Foreign pointers and check mode.                                                           */

static void free_stack_pointer(void) {
    char local[64];
    sink = local;
    free(sink);
}
static void free_interior_pointer(void) {
    char *p = malloc(opaque(64));
    free(p + 16);
}
static void realloc_foreign_pointer(void) {
    static char global[64];
    sink = realloc(global, 128);
}
static void usable_size_of_foreign_pointer(void) {
    static char global[64];
    sink = (void *)malloc_usable_size(global);
}
static void free_glibc_pointer(void) {
    /* A block from glibc's own allocator: dlsym on libc's handle finds libc's definition. */
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *(*glibc_malloc)(size_t) = libc ? (void *(*)(size_t))dlsym(libc, "__libc_malloc") : NULL;
    if (!glibc_malloc || glibc_malloc == __libc_malloc) {
        fprintf(stderr, "cannot reach glibc's malloc\n");
        _exit(3);
    }
    free(glibc_malloc(100));
}

static void test_foreign_pointers_abort_with_one_line(void) {
    int f = failed;
    /* A pointer inside a small block is only told from its start in check mode (it costs a
     * division per free); foreign memory is always recognised. */
    static const char *const check_on[] = {"SCOPEALLOC_CHECK=1", NULL};
    struct {
        void (*fn)(void);
        const char *expect;
        const char *const *env;
    } cases[] = {
        {free_stack_pointer, "scopealloc: free(): invalid pointer 0x", NULL},
        {NULL, "scopealloc: free(): invalid pointer 0x", check_on},
        {realloc_foreign_pointer, "scopealloc: realloc(): invalid pointer 0x", NULL},
        {usable_size_of_foreign_pointer, "scopealloc: malloc_usable_size(): invalid pointer 0x", NULL},
        {free_glibc_pointer, "scopealloc: free(): invalid pointer 0x", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct child c;
        run_child(&c, cases[i].fn, cases[i].fn ? NULL : "free-interior", cases[i].env);
        CHECK(aborted(&c), "case %zu: status %#x", i, c.status);
        CHECK(strncmp(c.err, cases[i].expect, strlen(cases[i].expect)) == 0, "case %zu: stderr %s", i, c.err);
        CHECK(count_lines(c.err) == 1 && strstr(c.err, "; aborting\n"), "case %zu: one line: %s", i, c.err);
    }
    section("a pointer not ours given to free/realloc/malloc_usable_size: one line, abort", f);
}

static void test_check_mode(void) {
    int f = failed;
    static const char *const check_on[] = {"SCOPEALLOC_CHECK=1", NULL};
    /* A small block freed twice is found on its slab's free list. A large or huge block freed
     * twice is caught before that: its memory is no longer a block of scopealloc. */
    static const struct {
        const char *mode, *expect;
    } cases[] = {
        {"double-free-small", "scopealloc: free(): double free of 0x"},
        {"realloc-after-free", "scopealloc: realloc(): double free of 0x"},
        {"double-free-large", "scopealloc: free(): "},
        {"double-free-huge", "scopealloc: free(): "},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct child c;
        run_child(&c, NULL, cases[i].mode, check_on);
        CHECK(aborted(&c), "%s: status %#x, stderr %s", cases[i].mode, c.status, c.err);
        CHECK(strncmp(c.err, cases[i].expect, strlen(cases[i].expect)) == 0 && count_lines(c.err) == 1,
              "%s: stderr %s", cases[i].mode, c.err);
    }
    struct child c;
    run_child(&c, NULL, "junk", check_on);
    CHECK(exited_ok(&c) && strstr(c.out, "junk ok"), "check mode junk/poison: %#x %s %s", c.status, c.out, c.err);
    run_child(&c, NULL, "workload", check_on);
    CHECK(exited_ok(&c) && c.err[0] == 0, "check mode runs a correct workload: %#x %s", c.status, c.err);
    section("SCOPEALLOC_CHECK=1: double free detected; junk and poison", f);
}

/* ---------------------------------------------------------------------------------------- */
/* Options from the environment.                                                              */

static void test_options(void) {
    int f = failed;
    struct child c;
    static const char *const limit[] = {"SCOPEALLOC_LIMIT=8M", NULL};
    run_child(&c, NULL, "limit-8M", limit);
    CHECK(exited_ok(&c) && strstr(c.out, "limit ok"), "SCOPEALLOC_LIMIT=8M: %#x %s %s", c.status, c.out, c.err);
    CHECK(c.err[0] == 0, "no output on stderr: %s", c.err);

    static const char *const suffixes[] = {"SCOPEALLOC_LIMIT=8192KiB", NULL};
    run_child(&c, NULL, "limit-8M", suffixes);
    CHECK(exited_ok(&c) && strstr(c.out, "limit ok"), "SCOPEALLOC_LIMIT=8192KiB: %#x %s %s", c.status, c.out, c.err);

    static const char *const good[] = {"SCOPEALLOC_DECAY_MS=0", "SCOPEALLOC_CHECK=0", "SCOPEALLOC_STATS=0", NULL};
    run_child(&c, NULL, "no-limit", good);
    CHECK(exited_ok(&c) && c.err[0] == 0 && strstr(c.out, "no limit ok"), "valid options are silent: %#x %s %s", c.status, c.out, c.err);

    static const struct {
        const char *env, *name;
    } bad[] = {
        {"SCOPEALLOC_LIMIT=lots", "SCOPEALLOC_LIMIT"},   {"SCOPEALLOC_LIMIT=-5M", "SCOPEALLOC_LIMIT"},
        {"SCOPEALLOC_LIMIT=99999999999T", "SCOPEALLOC_LIMIT"}, {"SCOPEALLOC_LIMIT=", "SCOPEALLOC_LIMIT"},
        {"SCOPEALLOC_STATS=yes", "SCOPEALLOC_STATS"},    {"SCOPEALLOC_CHECK=2", "SCOPEALLOC_CHECK"},
        {"SCOPEALLOC_DECAY_MS=1s", "SCOPEALLOC_DECAY_MS"}, {"SCOPEALLOC_STATS_FILE=", "SCOPEALLOC_STATS_FILE"},
        {"SCOPEALLOC_STATS_SIGNAL=TERM", "SCOPEALLOC_STATS_SIGNAL"}, {"SCOPEALLOC_STATS=JSON", "SCOPEALLOC_STATS"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *const env[] = {bad[i].env, NULL};
        run_child(&c, NULL, "no-limit", env);
        char want[128];
        snprintf(want, sizeof want, "scopealloc: warning: ignoring %s=\"", bad[i].name);
        CHECK(exited_ok(&c) && strstr(c.out, "no limit ok"), "%s: default applies: %#x %s", bad[i].env, c.status, c.err);
        CHECK(strncmp(c.err, want, strlen(want)) == 0 && count_lines(c.err) == 1, "%s: one warning line: %s", bad[i].env, c.err);
    }

    char path[256], env_file[300];
    snprintf(path, sizeof path, "/tmp/scopealloc-test-stats-%d-%%p.txt", (int)getpid());
    snprintf(env_file, sizeof env_file, "SCOPEALLOC_STATS_FILE=%s", path);
    const char *const stats_file[] = {"SCOPEALLOC_STATS=1", env_file, NULL};
    run_child(&c, NULL, "scopes-for-report", stats_file);
    CHECK(exited_ok(&c) && c.err[0] == 0, "stats to a file: %#x %s", c.status, c.err);
    int child_pid = atoi(c.out);
    char real[300];
    snprintf(real, sizeof real, "/tmp/scopealloc-test-stats-%d-%d.txt", (int)getpid(), child_pid);
    int fd = open(real, O_RDONLY);
    CHECK(fd >= 0, "report file %s exists", real);
    if (fd >= 0) {
        char buf[8192];
        read_all(fd, buf, sizeof buf);
        close(fd);
        unlink(real);
        char header[64];
        snprintf(header, sizeof header, "scopealloc: report of pid %d\n", child_pid);
        CHECK(strncmp(buf, header, strlen(header)) == 0, "report header names the child's pid %d: %s", child_pid, buf);
        /* The child's figures, known exactly: request-1 holds one live block of `usable` bytes,
         * refused one allocation and has a 1 MiB limit; tenant-a holds nothing of its own. */
        size_t usable = 0;
        CHECK(sscanf(c.out, "%*d %zu", &usable) == 1 && usable >= 1000, "child printed its block's size: %s", c.out);
        char line[512];
        CHECK(report_line(buf, "request-1", 2, line, sizeof line), "grandchild line indented: %s", buf);
        CHECK(report_field(line, "bytes") == (long long)usable && report_field(line, "self_bytes") == (long long)usable &&
                  report_field(line, "objects") == 1 && report_field(line, "self_objects") == 1 &&
                  report_field(line, "allocs") == 1 && report_field(line, "frees") == 0 &&
                  report_field(line, "limit") == 1048576 && report_field(line, "limit_hits") == 1 &&
                  report_field(line, "charged") >= (long long)usable && report_field(line, "charged") <= 1048576 &&
                  report_field(line, "peak") >= report_field(line, "charged"),
              "request-1's figures (one block of %zu bytes, one refusal): %s", usable, line);
        CHECK(report_line(buf, "tenant-a", 1, line, sizeof line), "child line indented: %s", buf);
        CHECK(report_field(line, "bytes") == (long long)usable && report_field(line, "self_bytes") == 0 &&
                  report_field(line, "objects") == 1 && report_field(line, "self_objects") == 0 &&
                  report_field(line, "limit") == -2 && report_field(line, "limit_hits") == 0,
              "tenant-a's figures are its child's: %s", line);
        CHECK(report_line(buf, "root", 0, line, sizeof line), "root line: %s", buf);
        CHECK(report_field(line, "bytes") >= (long long)usable && report_field(line, "objects") >= 1 &&
                  report_field(line, "objects") == report_field(line, "allocs") - report_field(line, "frees") &&
                  report_field(line, "self_bytes") == report_field(line, "bytes") - (long long)usable,
              "root's figures include the tree's: %s", line);
    }
    const char *const stats_err[] = {"SCOPEALLOC_STATS=1", NULL};
    run_child(&c, NULL, "scopes-for-report", stats_err);
    CHECK(exited_ok(&c) && strstr(c.err, "scopealloc: scope root id=1 ") && strstr(c.err, "scope tenant-a"),
          "SCOPEALLOC_STATS=1 prints on stderr at exit: %s", c.err);
    const char *const stats_bad_file[] = {"SCOPEALLOC_STATS=1", "SCOPEALLOC_STATS_FILE=/nonexistent/dir/x", NULL};
    run_child(&c, NULL, "scopes-for-report", stats_bad_file);
    CHECK(exited_ok(&c) && strstr(c.err, "scopealloc: warning: cannot open SCOPEALLOC_STATS_FILE=") &&
              strstr(c.err, "scopealloc: scope root id=1 "),
          "an unwritable report file: warning, then stderr: %s", c.err);
    section("options: SCOPEALLOC_LIMIT, _STATS, _STATS_FILE, _CHECK, _DECAY_MS; bad values warn once", f);
}

/* ---------------------------------------------------------------------------------------- */
/* Scopes.                                                                                    */

struct thread_arg {
    scopealloc_scope_t *scope;
    void *blocks[100];
};

static void *alloc_in_scope(void *argp) {
    struct thread_arg *arg = argp;
    scopealloc_prev_t *prev = scopealloc_enter(arg->scope);
    for (int i = 0; i < 100; i++) arg->blocks[i] = escape(malloc(opaque(1000)));
    scopealloc_leave(prev);
    return NULL;
}

static void test_scopes(void) {
    int f = failed;
    scopealloc_scope_t *root = scopealloc_root();
    scopealloc_scope_t *cur = scopealloc_current();
    CHECK(scopealloc_scope_id(root) == 1 && scopealloc_scope_id(cur) == 1, "the thread starts in the root");
    CHECK(scopealloc_scope_parent(root) == NULL, "the root has no parent");
    char name[64];
    CHECK(scopealloc_scope_name(root, name, sizeof name) == 4 && strcmp(name, "root") == 0, "root name %s", name);

    scopealloc_scope_t *tenant = scopealloc_scope_new(root, "tenant-a");
    scopealloc_scope_t *req = scopealloc_scope_new(tenant, "request-1");
    CHECK(scopealloc_scope_id(req) > scopealloc_scope_id(tenant), "ids grow");
    scopealloc_scope_t *parent = scopealloc_scope_parent(req);
    CHECK(scopealloc_scope_id(parent) == scopealloc_scope_id(tenant), "parent of request-1 is tenant-a");
    scopealloc_scope_release(parent);
    CHECK(scopealloc_scope_name(req, name, 5) == 9 && strcmp(name, "requ") == 0, "name cut like snprintf: %s", name);
    CHECK(scopealloc_scope_name(req, NULL, 0) == 9, "name length without a buffer");
    CHECK(scopealloc_is_closed(req) == 0, "open");

    /* Enter and leave, nested. */
    scopealloc_prev_t *p1 = scopealloc_enter(tenant);
    scopealloc_scope_t *now = scopealloc_current();
    CHECK(scopealloc_scope_id(now) == scopealloc_scope_id(tenant), "entered tenant-a");
    scopealloc_scope_release(now);
    scopealloc_prev_t *p2 = scopealloc_enter(req);
    scopealloc_scope_t *child_of_current = scopealloc_scope_new(NULL, "implicit");
    parent = scopealloc_scope_parent(child_of_current);
    CHECK(scopealloc_scope_id(parent) == scopealloc_scope_id(req), "scope_new(NULL, ...) is a child of the current scope");
    scopealloc_scope_release(parent);
    scopealloc_scope_release(child_of_current);
    char *buf = escape(malloc(opaque(10000)));
    scopealloc_leave(p2);
    now = scopealloc_current();
    CHECK(scopealloc_scope_id(now) == scopealloc_scope_id(tenant), "leave restores tenant-a");
    scopealloc_scope_release(now);
    char *tbuf = escape(malloc(opaque(1000)));
    scopealloc_leave(p1);
    now = scopealloc_current();
    CHECK(scopealloc_scope_id(now) == 1, "leave restores the root");
    scopealloc_scope_release(now);

    struct scopealloc_stats rs = stats_of(req), ts = stats_of(tenant);
    CHECK(rs.objects == 1 && rs.bytes >= 10000, "request-1: %llu objects, %llu bytes", (unsigned long long)rs.objects,
          (unsigned long long)rs.bytes);
    CHECK(ts.objects == 2 && ts.self_objects == 1 && ts.bytes >= 11000 && ts.self_bytes >= 1000 && ts.self_bytes < 10000,
          "tenant-a includes request-1: %llu/%llu objects, %llu/%llu bytes", (unsigned long long)ts.objects,
          (unsigned long long)ts.self_objects, (unsigned long long)ts.bytes, (unsigned long long)ts.self_bytes);
    CHECK(rs.peak_bytes >= rs.bytes && rs.charged_bytes >= rs.bytes, "peak and charge cover the live bytes");

    /* Limits. */
    CHECK(scopealloc_limit(req) == SCOPEALLOC_NO_LIMIT, "no limit at first");
    CHECK(scopealloc_set_limit(req, 1 << 20) == 0 && scopealloc_limit(req) == 1 << 20, "limit set");
    p1 = scopealloc_enter(req);
    errno = 0;
    void *big = escape(malloc(opaque(2 << 20)));
    int err = errno;
    void *small = escape(malloc(opaque(100000)));
    scopealloc_leave(p1);
    CHECK(big == NULL && err == ENOMEM, "over the limit: %p errno %d", big, err);
    CHECK(small != NULL, "under the limit still works");
    rs = stats_of(req);
    CHECK(rs.limit_hits == 1, "limit_hits %llu", (unsigned long long)rs.limit_hits);
    CHECK(rs.charged_bytes <= 1 << 20, "charge %llu within the limit", (unsigned long long)rs.charged_bytes);
    /* A parent's limit binds its descendants. */
    CHECK(scopealloc_set_limit(req, SCOPEALLOC_NO_LIMIT) == 0 && scopealloc_limit(req) == SCOPEALLOC_NO_LIMIT, "limit removed");
    scopealloc_set_limit(tenant, 1 << 20);
    p1 = scopealloc_enter(req);
    errno = 0;
    big = escape(malloc(opaque(2 << 20)));
    err = errno;
    scopealloc_leave(p1);
    CHECK(big == NULL && err == ENOMEM, "a parent's limit binds its children: %p errno %d", big, err);
    CHECK(stats_of(tenant).limit_hits == 1, "the hit counts at the parent");
    scopealloc_set_limit(tenant, SCOPEALLOC_NO_LIMIT);
    free(small);

    /* Peak. */
    scopealloc_reset_peak(req);
    rs = stats_of(req);
    CHECK(rs.peak_bytes == rs.charged_bytes, "reset_peak: peak %llu charge %llu", (unsigned long long)rs.peak_bytes,
          (unsigned long long)rs.charged_bytes);

    /* Another thread allocates in the scope; this one frees: frees uncharge the origin. */
    struct thread_arg arg = {.scope = req};
    pthread_t t;
    pthread_create(&t, NULL, alloc_in_scope, &arg);
    pthread_join(t, NULL);
    rs = stats_of(req);
    CHECK(rs.objects == 101, "thread's objects charged to request-1: %llu", (unsigned long long)rs.objects);
    for (int i = 0; i < 100; i++) free(arg.blocks[i]);
    rs = stats_of(req);
    CHECK(rs.objects == 1, "cross-thread frees uncharge request-1: %llu", (unsigned long long)rs.objects);

    /* Close: charges move to the parent, the object stays valid. */
    scopealloc_scope_t *req2 = scopealloc_scope_clone(req);
    CHECK(req2 == req, "a clone is the same scope");
    scopealloc_close(req);
    CHECK(scopealloc_is_closed(req) == 1 && scopealloc_is_closed(req2) == 1, "closed");
    scopealloc_close(req); /* idempotent */
    rs = stats_of(req);
    ts = stats_of(tenant);
    CHECK(rs.objects == 0 && rs.bytes == 0 && rs.allocs >= 101, "a closed scope reports no live figures");
    CHECK(ts.objects == 2 && ts.self_objects == 2 && ts.self_bytes >= 11000, "its charges moved to tenant-a: %llu objects",
          (unsigned long long)ts.self_objects);
    memset(buf, 3, 10000);
    free(buf);
    free(tbuf);
    ts = stats_of(tenant);
    CHECK(ts.objects == 0 && ts.bytes == 0, "all freed: %llu objects %llu bytes", (unsigned long long)ts.objects,
          (unsigned long long)ts.bytes);
    /* Entering a closed scope enters its nearest open ancestor. */
    p1 = scopealloc_enter(req);
    now = scopealloc_current();
    CHECK(scopealloc_scope_id(now) == scopealloc_scope_id(tenant), "entering a closed scope enters tenant-a");
    scopealloc_scope_release(now);
    scopealloc_leave(p1);
    scopealloc_scope_release(req);
    scopealloc_scope_release(req2);

    /* Releasing the last handle closes the scope. */
    scopealloc_scope_t *keep = scopealloc_scope_clone(tenant);
    scopealloc_scope_t *gone = scopealloc_scope_new(tenant, "released");
    p1 = scopealloc_enter(gone);
    void *o = escape(malloc(opaque(500)));
    scopealloc_leave(p1);
    scopealloc_scope_release(gone);
    CHECK(stats_of(keep).self_objects == 1, "released scope's object charged to tenant-a");
    free(o);
    scopealloc_scope_release(keep);

    /* NULL handles. */
    struct scopealloc_stats st;
    CHECK(scopealloc_stats(NULL, &st) == EINVAL && scopealloc_stats(tenant, NULL) == EINVAL, "stats NULL");
    CHECK(scopealloc_set_limit(NULL, 5) == EINVAL, "set_limit NULL");
    CHECK(scopealloc_limit(NULL) == SCOPEALLOC_NO_LIMIT && scopealloc_scope_id(NULL) == 0 && scopealloc_is_closed(NULL) == -1 &&
              scopealloc_scope_clone(NULL) == NULL && scopealloc_scope_parent(NULL) == NULL &&
              scopealloc_scope_name(NULL, name, sizeof name) == 0 && scopealloc_enter(NULL) == NULL,
          "NULL handles");
    scopealloc_close(NULL);
    scopealloc_reset_peak(NULL);
    scopealloc_scope_release(NULL);
    scopealloc_leave(NULL);

    /* Names: NULL, long, not UTF-8. */
    scopealloc_scope_t *n1 = scopealloc_scope_new(root, NULL);
    CHECK(scopealloc_scope_name(n1, name, sizeof name) == 0, "NULL name is empty");
    scopealloc_scope_t *n2 = scopealloc_scope_new(root, "0123456789012345678901234567890123456789012345678901234567890123456789");
    CHECK(scopealloc_scope_name(n2, name, sizeof name) == 63, "long names cut to 63 bytes: %zu", scopealloc_scope_name(n2, NULL, 0));
    scopealloc_scope_t *n3 = scopealloc_scope_new(root, "bad\xff\xfename");
    scopealloc_scope_name(n3, name, sizeof name);
    CHECK(strcmp(name, "bad??name") == 0, "bytes not UTF-8 become '?': %s", name);
    scopealloc_scope_release(n1);
    scopealloc_scope_release(n2);
    scopealloc_scope_release(n3);

    /* print_stats to a pipe. */
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    scopealloc_print_stats(fds[1]);
    close(fds[1]);
    char out[8192];
    read_all(fds[0], out, sizeof out);
    close(fds[0]);
    /* Nothing allocated since the report: its tenant-a line holds tenant-a's figures. */
    struct scopealloc_stats tst = stats_of(tenant);
    check_report_line(out, "tenant-a", 1, &tst, -2);
    char rline[512];
    CHECK(report_line(out, "root", 0, rline, sizeof rline) && report_field(rline, "objects") >= (long long)tst.objects,
          "print_stats: the root line counts at least tenant-a's objects: %s", out);

    scopealloc_scope_release(tenant);
    scopealloc_scope_release(cur);
    scopealloc_scope_release(root);
    section("scopes: create, enter/leave, stats, limits, close, release, names, NULL handles", f);
}

/* A block that realloc moves keeps its origin scope (or, once that closed, the origin's nearest
 * open ancestor), whatever scope the calling thread is in; from the same thread and from another. */
struct realloc_arg {
    void *p;
    size_t to;
    scopealloc_scope_t *scope; /* entered around the realloc */
};

static void *realloc_in_scope(void *argp) {
    struct realloc_arg *arg = argp;
    scopealloc_prev_t *prev = scopealloc_enter(arg->scope);
    arg->p = realloc(arg->p, opaque(arg->to));
    scopealloc_leave(prev);
    return NULL;
}

static void test_realloc_keeps_the_blocks_origin(void) {
    int f = failed;
    static const size_t moves[][2] = {{100, 3000}, {2000, 40000}, {40000, 300000}, {300000, 3 << 20}, {3 << 20, 64}};
    for (size_t i = 0; i < sizeof moves / sizeof moves[0]; i++) {
        size_t from = moves[i][0], to = moves[i][1];
        scopealloc_scope_t *origin = scopealloc_scope_new(NULL, "realloc-origin");
        scopealloc_scope_t *other = scopealloc_scope_new(NULL, "realloc-other");
        scopealloc_prev_t *prev = scopealloc_enter(origin);
        void *p = malloc(opaque(from));
        scopealloc_leave(prev);
        memset(p, 0x5c, from);

        /* From this thread, inside another scope. */
        prev = scopealloc_enter(other);
        void *q = realloc(p, opaque(to));
        scopealloc_leave(prev);
        CHECK(q != NULL && q != p && all_bytes(q, 0x5c, from < to ? from : to), "%zu -> %zu moved, contents kept", from, to);
        struct scopealloc_stats os = stats_of(origin), xs = stats_of(other);
        CHECK(os.objects == 1 && os.bytes == malloc_usable_size(q), "%zu -> %zu: origin has the new block: %llu objects %llu bytes, usable %zu",
              from, to, (unsigned long long)os.objects, (unsigned long long)os.bytes, malloc_usable_size(q));
        CHECK(xs.objects == 0 && xs.bytes == 0 && xs.allocs == 0, "%zu -> %zu: nothing charged to the caller's scope: %llu allocs", from, to,
              (unsigned long long)xs.allocs);

        /* From another thread, inside another scope, back to the first size. */
        struct realloc_arg arg = {.p = q, .to = from, .scope = other};
        pthread_t t;
        pthread_create(&t, NULL, realloc_in_scope, &arg);
        pthread_join(t, NULL);
        os = stats_of(origin);
        xs = stats_of(other);
        /* Only what the first move kept is known: a grown block's tail is not (a huge block
         * served from the huge cache happens to keep its old bytes, a fresh one does not). */
        CHECK(arg.p != NULL && all_bytes(arg.p, 0x5c, from < to ? from : to), "%zu -> %zu -> %zu from another thread keeps contents", from,
              to, from);
        CHECK(os.objects == 1 && arg.p && os.bytes == malloc_usable_size(arg.p), "%zu -> %zu from another thread: origin has it: %llu bytes",
              to, from, (unsigned long long)os.bytes);
        CHECK(xs.allocs == 0, "%zu -> %zu from another thread: nothing charged to its scope", to, from);

        /* After the origin closed: the nearest open ancestor. */
        scopealloc_scope_t *child = scopealloc_scope_new(origin, "realloc-child");
        prev = scopealloc_enter(child);
        void *c = malloc(opaque(from));
        scopealloc_leave(prev);
        memset(c, 0x3e, from);
        scopealloc_close(child);
        prev = scopealloc_enter(other);
        void *d = realloc(c, opaque(to));
        scopealloc_leave(prev);
        os = stats_of(origin);
        CHECK(d != NULL && all_bytes(d, 0x3e, from < to ? from : to), "%zu -> %zu after close keeps contents", from, to);
        CHECK(d && os.self_objects == 2 && os.self_bytes == malloc_usable_size(arg.p) + malloc_usable_size(d),
              "%zu -> %zu after the origin closed: charged to its parent: %llu objects %llu bytes", from, to,
              (unsigned long long)os.self_objects, (unsigned long long)os.self_bytes);
        CHECK(stats_of(other).allocs == 0, "%zu -> %zu after close: nothing charged to the caller's scope", from, to);
        free(d);
        free(arg.p);
        os = stats_of(origin);
        CHECK(os.objects == 0 && os.bytes == 0, "all freed from the origin: %llu objects", (unsigned long long)os.objects);
        scopealloc_scope_release(child);
        scopealloc_scope_release(other);
        scopealloc_scope_release(origin);
    }
    section("realloc keeps the block's origin scope, also after the origin closed", f);
}

/* ---------------------------------------------------------------------------------------- */
/* Child modes (re-executed with options in the environment).                                 */

static int child_main(const char *mode) {
    if (!strcmp(mode, "free-interior")) {
        free_interior_pointer();
        fprintf(stderr, "interior pointer not detected\n");
        return 1;
    }
    if (!strncmp(mode, "double-free-", 12) || !strcmp(mode, "realloc-after-free")) {
        size_t n = !strcmp(mode, "double-free-large") ? 100000 : !strcmp(mode, "double-free-huge") ? (8 << 20) : 48;
        void *p = malloc(opaque(n));
        free(p);
        if (!strcmp(mode, "realloc-after-free"))
            sink = realloc(p, 100);
        else
            free(p);
        fprintf(stderr, "double free not detected\n");
        return 1;
    }
    if (!strcmp(mode, "junk")) {
        unsigned char *p = malloc(opaque(64));
        int junk = all_bytes(p, 0xa5, 64);
        unsigned char *q = calloc(opaque(64), 1);
        int zero = all_bytes(q, 0, 64);
        free(q);
        free(p);
        printf("%s\n", junk && zero ? "junk ok" : "junk wrong");
        return 0;
    }
    if (!strcmp(mode, "workload")) {
        void *v[1000] = {0};
        unsigned x = 1;
        for (int i = 0; i < 200000; i++) {
            x = x * 1103515245 + 12345;
            int k = (x >> 8) % 1000;
            if (v[k]) {
                free(v[k]);
                v[k] = NULL;
            } else {
                v[k] = (x & 1) ? malloc((x >> 12) % 3000) : realloc(NULL, (x >> 12) % 70000);
            }
        }
        for (int k = 0; k < 1000; k++) free(v[k]);
        return 0;
    }
    if (!strcmp(mode, "limit-8M")) {
        scopealloc_scope_t *root = scopealloc_root();
        int ok = scopealloc_limit(root) == (8 << 20);
        errno = 0;
        void *p = malloc(opaque(16 << 20));
        ok = ok && p == NULL && errno == ENOMEM;
        void *q = malloc(opaque(1 << 20));
        ok = ok && q != NULL;
        struct scopealloc_stats st = stats_of(root);
        ok = ok && st.limit_hits >= 1;
        free(q);
        scopealloc_scope_release(root);
        printf("%s\n", ok ? "limit ok" : "limit wrong");
        return 0;
    }
    if (!strcmp(mode, "no-limit")) {
        scopealloc_scope_t *root = scopealloc_root();
        int ok = scopealloc_limit(root) == SCOPEALLOC_NO_LIMIT;
        void *p = malloc(opaque(16 << 20));
        ok = ok && p != NULL;
        free(p);
        scopealloc_scope_release(root);
        printf("%s\n", ok ? "no limit ok" : "no limit wrong");
        return 0;
    }
    if (!strcmp(mode, "scopes-for-report")) {
        scopealloc_scope_t *t = scopealloc_scope_new(NULL, "tenant-a");
        scopealloc_scope_t *r = scopealloc_scope_new(t, "request-1");
        scopealloc_set_limit(r, 1 << 20);
        scopealloc_prev_t *prev = scopealloc_enter(r);
        sink = malloc(opaque(2 << 20)); /* refused: one limit hit */
        sink = malloc(opaque(1000));    /* left alive on purpose */
        scopealloc_leave(prev);
        printf("%d %zu\n", (int)getpid(), malloc_usable_size(sink));
        /* The handles stay alive, so the scopes are open at exit. */
        return 0;
    }
    fprintf(stderr, "unknown child mode %s\n", mode);
    return 2;
}

/* TEST_ONLY=word runs only the tests whose function name contains it. */
#define RUN(fn)                                                                               \
    do {                                                                                      \
        const char *only = getenv("TEST_ONLY");                                               \
        if (!only || strstr(#fn, only)) fn();                                                 \
    } while (0)

int main(int argc, char **argv) {
    self_path = "/proc/self/exe";
    static char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        self_path = exe;
    }
    if (argc == 3 && !strcmp(argv[1], "--child")) return child_main(argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);

    RUN(test_symbols_resolve_to_scopealloc);
    RUN(test_every_allocation_function_charges_the_scope);
    RUN(test_malloc);
    RUN(test_calloc);
    RUN(test_realloc);
    RUN(test_posix_memalign);
    RUN(test_aligned_alloc_memalign_valloc_pvalloc);
    RUN(test_mallinfo_trim_stats);
    RUN(test_foreign_pointers_abort_with_one_line);
    RUN(test_check_mode);
    RUN(test_options);
    RUN(test_scopes);
    RUN(test_realloc_keeps_the_blocks_origin);

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

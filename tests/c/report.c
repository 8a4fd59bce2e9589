/*
 * report.c - scopealloc_report() and the report outside the program's control
 * (SCOPEALLOC_STATS=json|prometheus at exit, SCOPEALLOC_STATS_SIGNAL), driven by tests/ffi.rs,
 * which parses what it writes (JSON with python3's json module) and compares the figures.
 *
 * Usage: report api DIR      checks the buffer semantics itself ("ok"/"FAIL" lines and
 *                            "N passed, M failed"), writes DIR/api.{txt,json,prom} and
 *                            prints "bytes N" (the live bytes of scope c-report/tenant-x)
 *        report exit         creates the same scopes, prints "bytes N", exits
 *        report signal FILE  creates the scopes, prints "bytes N", raises SIGUSR2, waits until
 *                            FILE grew; allocates again, prints "bytes N", raises again, waits;
 *                            prints "seen 2" if both reports arrived while it ran
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scopealloc.h"

static int passed, failed;
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

static void *volatile keep[4];
static scopealloc_scope_t *tenant;

/* Scope c-report/tenant-x holding `n` bytes in one more live block; prints its live bytes. */
static void hold(size_t n, int slot) {
    if (!tenant) {
        scopealloc_scope_t *app = scopealloc_scope_new(NULL, "c-report");
        tenant = scopealloc_scope_new(app, "tenant-x");
        /* app's handle is kept alive on purpose (the scope stays open) */
        (void)app;
    }
    scopealloc_prev_t *prev = scopealloc_enter(tenant);
    keep[slot] = malloc(n);
    scopealloc_leave(prev);
    struct scopealloc_stats st;
    scopealloc_stats(tenant, &st);
    printf("bytes %llu\n", (unsigned long long)st.bytes);
    fflush(stdout);
}

static void write_file(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* The whole report in `format`, in a malloc'd buffer (retrying if it grew between calls). */
static char *whole(int format, ssize_t *len) {
    ssize_t n = scopealloc_report(NULL, 0, format);
    CHECK(n > 0, "format %d: the length of the report: %zd (errno %d)", format, n, errno);
    for (int tries = 0; n > 0 && tries < 5; tries++) {
        size_t cap = (size_t)n + 4096;
        char *buf = malloc(cap);
        memset(buf, 'x', cap);
        ssize_t m = scopealloc_report(buf, cap, format);
        if (m >= 0 && (size_t)m < cap) {
            CHECK(strlen(buf) == (size_t)m, "format %d: returns the length written: %zd vs %zu", format, m, strlen(buf));
            *len = m;
            return buf;
        }
        free(buf);
        n = m;
    }
    CHECK(0, "format %d: no whole report", format);
    exit(1);
}

static void api(const char *dir) {
    hold(5000, 0);
    static const struct {
        int format;
        const char *file, *start;
    } formats[] = {
        {SCOPEALLOC_REPORT_TEXT, "api.txt", "scopealloc: report of pid "},
        {SCOPEALLOC_REPORT_JSON, "api.json", "{\"heap\":"},
        {SCOPEALLOC_REPORT_PROMETHEUS, "api.prom", "# HELP "},
    };
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        int fmt = formats[i].format;
        ssize_t len = 0;
        char *full = whole(fmt, &len);
        CHECK(!strncmp(full, formats[i].start, strlen(formats[i].start)), "format %d starts with %s: %.80s", fmt,
              formats[i].start, full);
        write_file(dir, formats[i].file, full);

        /* A small buffer: cut, NUL-terminated, the length of the whole report returned. */
        char small[17];
        memset(small, 'x', sizeof small);
        ssize_t n = scopealloc_report(small, 16, fmt);
        CHECK(n > 100 && n > len / 2, "format %d: a 16-byte buffer returns the whole length: %zd (whole %zd)", fmt, n, len);
        CHECK(small[15] == 0 && strlen(small) == 15 && !strncmp(small, full, 15) && small[16] == 'x',
              "format %d: 15 bytes and a NUL, nothing past len: %.16s", fmt, small);
        char one = 'x';
        n = scopealloc_report(&one, 1, fmt);
        CHECK(n > 100 && one == 0, "format %d: len 1 writes only the NUL: %zd %d", fmt, n, one);
        char none = 'x';
        n = scopealloc_report(&none, 0, fmt);
        CHECK(n > 100 && none == 'x', "format %d: len 0 writes nothing: %zd", fmt, n);
        free(full);
    }
    errno = 0;
    char buf[8];
    CHECK(scopealloc_report(buf, sizeof buf, 3) == -1 && errno == EINVAL, "unknown format: -1, EINVAL (errno %d)", errno);
    errno = 0;
    CHECK(scopealloc_report(buf, sizeof buf, -1) == -1 && errno == EINVAL, "negative format: -1, EINVAL (errno %d)", errno);
    errno = 0;
    CHECK(scopealloc_report(NULL, 10, SCOPEALLOC_REPORT_JSON) == -1 && errno == EINVAL,
          "NULL buffer with len > 0: -1, EINVAL (errno %d)", errno);
    /* The report's own memory is not in its figures, and is given back. */
    struct scopealloc_stats before, after;
    scopealloc_scope_t *cur = scopealloc_current();
    scopealloc_stats(cur, &before);
    ssize_t len = 0;
    free(whole(SCOPEALLOC_REPORT_JSON, &len));
    scopealloc_stats(cur, &after);
    CHECK(after.objects == before.objects, "a report leaves nothing behind: %llu objects before, %llu after",
          (unsigned long long)before.objects, (unsigned long long)after.objects);
    scopealloc_scope_release(cur);
    printf("%d passed, %d failed\n", passed, failed);
}

static off_t size_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : 0;
}

/* Raises SIGUSR2 and waits (up to 5 s) for `path` to grow past `was`; 1 if it did. */
static int ask_and_wait(const char *path, off_t was) {
    kill(getpid(), SIGUSR2);
    for (int i = 0; i < 500; i++) {
        usleep(10000);
        off_t now = size_of(path);
        /* and stays put for a moment: the report is written in pieces */
        if (now > was) {
            usleep(100000);
            if (size_of(path) == now) return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && !strcmp(argv[1], "api")) {
        api(argv[2]);
        return failed ? 1 : 0;
    }
    if (argc == 2 && !strcmp(argv[1], "exit")) {
        hold(5000, 0);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "signal")) {
        int seen = 0;
        hold(5000, 0);
        seen += ask_and_wait(argv[2], 0);
        off_t was = size_of(argv[2]);
        hold(70000, 1);
        seen += ask_and_wait(argv[2], was);
        printf("seen %d\n", seen);
        return 0;
    }
    fprintf(stderr, "usage: report api DIR | exit | signal FILE\n");
    return 2;
}

/*
 * faults.c - the malloc family while the OS says no (run under SCOPEALLOC_FAIL with a
 * fault-injection build of libscopealloc.so: tests/ffi_faults.rs). Threads allocate, grow,
 * align and free blocks of 1 byte to 6 MiB in one scope; every refusal must be a NULL (or
 * posix_memalign's return value) with errno ENOMEM, a refused realloc must leave its block
 * intact, calloc must return zeroes, and once the threads are done the scope's figures must
 * equal the usable sizes of the blocks still live, then zero once main has freed them.
 *
 * A refused thread, scope or enter is a clean outcome too: the work then runs on the main
 * thread, or in the root scope (and its blocks are left out of the scope's figures). Prints its figures and "faults: ok"; exits 1 on a failed check.
 *
 * Usage: faults [threads ops seed]   (default 4 4000 1)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scopealloc.h"

#define SLOTS 512
#define MAX_THREADS 16

struct block {
    unsigned char *p;
    size_t len;
    unsigned char fill;
};

struct worker {
    pthread_t tid;
    int started;
    int entered; /* its blocks are charged to the scope (the enter was not refused) */
    uint64_t seed;
    struct block live[SLOTS];
    unsigned long given, refused, bad;
};

static scopealloc_scope_t *scope;
static int nops;

/* One line on stderr without stdio (stdio's buffer may itself have been refused). */
static void say(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static uint64_t rng(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t *s) {
    uint64_t r = rng(s);
    switch (r % 32) {
    case 0: return 2 * 1024 * 1024 + (r >> 40) % (4 * 1024 * 1024); /* huge: its own mapping */
    case 1: case 2: case 3: return 32 * 1024 + (r >> 40) % (1024 * 1024); /* large: a span */
    default: return 1 + (r >> 40) % 4096;                                  /* small */
    }
}

static int holds(const struct block *b, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (b->p[i] != b->fill) return 0;
    return 1;
}

/* A refusal: NULL with errno ENOMEM (rc: posix_memalign's return value, or -1). */
static void refused(struct worker *w, int rc, const char *what) {
    w->refused++;
    if ((rc < 0 ? errno : rc) != ENOMEM) {
        w->bad++;
        say("faults: a refused ");
        say(what);
        say(" did not say ENOMEM\n");
    }
}

static void work(struct worker *w) {
    uint64_t s = w->seed;
    scopealloc_prev_t *prev = scope ? scopealloc_enter(scope) : NULL;
    w->entered = prev != NULL;
    for (int op = 0; op < nops; op++) {
        struct block *b = &w->live[rng(&s) % SLOTS];
        uint64_t pick = rng(&s) % 8;
        if (b->p && pick < 3) {
            if (!holds(b, b->len)) { w->bad++; say("faults: a block lost its contents\n"); }
            free(b->p);
            b->p = NULL;
            continue;
        }
        if (b->p && pick < 5) {
            size_t len = pick_size(&s);
            errno = 0;
            unsigned char *q = realloc(b->p, len);
            if (!q) {
                refused(w, -1, "realloc");
                if (!holds(b, b->len)) { w->bad++; say("faults: a refused realloc changed its block\n"); }
                continue;
            }
            size_t kept = len < b->len ? len : b->len;
            b->p = q;
            if (!holds(b, kept)) { w->bad++; say("faults: realloc lost the contents\n"); }
            b->len = len;
            memset(q, b->fill, len);
            w->given++;
            continue;
        }
        if (b->p) continue;
        size_t len = pick_size(&s);
        unsigned char *p = NULL;
        int rc = -1;
        errno = 0;
        switch (pick) {
        case 5: p = calloc(1, len); break;
        case 6: rc = posix_memalign((void **)&p, (size_t)64 << (rng(&s) % 8), len); break;
        default: p = malloc(len); break;
        }
        if (rc > 0 || !p) {
            refused(w, rc, pick == 5 ? "calloc" : pick == 6 ? "posix_memalign" : "malloc");
            continue;
        }
        if (pick == 5)
            for (size_t i = 0; i < len; i++)
                if (p[i]) { w->bad++; say("faults: calloc returned a non-zero byte\n"); break; }
        b->p = p;
        b->len = len;
        b->fill = (unsigned char)(op % 251 + 1);
        memset(p, b->fill, len);
        w->given++;
    }
    scopealloc_leave(prev);
}

static void *thread_main(void *arg) {
    work(arg);
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = argc > 1 ? atoi(argv[1]) : 4;
    nops = argc > 2 ? atoi(argv[2]) : 4000;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    if (nthreads < 1 || nthreads > MAX_THREADS || nops < 1 || seed == 0) {
        say("usage: faults [threads(1-16) ops seed(>0)]\n");
        return 2;
    }
    static struct worker workers[MAX_THREADS];
    errno = 0;
    scope = scopealloc_scope_new(scopealloc_root(), "faults");
    int scope_refused = !scope;
    if (scope_refused && errno != ENOMEM) { say("faults: a refused scope did not say ENOMEM\n"); return 1; }
    int threads_refused = 0;
    for (int t = 0; t < nthreads; t++) {
        workers[t].seed = seed * 0x9E3779B97F4A7C15ull + (uint64_t)t + 1;
        workers[t].started = pthread_create(&workers[t].tid, NULL, thread_main, &workers[t]) == 0;
        if (!workers[t].started) {
            threads_refused++;
            work(&workers[t]);
        }
    }
    for (int t = 0; t < nthreads; t++)
        if (workers[t].started) pthread_join(workers[t].tid, NULL);

    unsigned long given = 0, refusals = 0, bad = 0;
    uint64_t live = 0, objects = 0;
    for (int t = 0; t < nthreads; t++) {
        given += workers[t].given;
        refusals += workers[t].refused;
        bad += workers[t].bad;
        for (int i = 0; i < SLOTS && workers[t].entered; i++)
            if (workers[t].live[i].p) {
                live += malloc_usable_size(workers[t].live[i].p);
                objects++;
            }
    }
    struct scopealloc_stats st;
    if (scope && scopealloc_stats(scope, &st) == 0) {
        if (st.bytes != live || st.objects != objects) {
            bad++;
            say("faults: the scope's figures differ from the live blocks\n");
        }
    }
    for (int t = 0; t < nthreads; t++)
        for (int i = 0; i < SLOTS; i++) free(workers[t].live[i].p);
    if (scope && scopealloc_stats(scope, &st) == 0 && (st.bytes != 0 || st.objects != 0)) {
        bad++;
        say("faults: the scope's figures are not zero once everything is freed\n");
    }
    scopealloc_scope_release(scope);
    char line[256];
    snprintf(line, sizeof line,
             "faults: %d threads (%d refused), scope %s: %lu given, %lu refused, %llu B in %llu "
             "blocks at the end\n",
             nthreads, threads_refused, scope_refused ? "refused" : "made", given, refusals,
             (unsigned long long)live, (unsigned long long)objects);
    say(line);
    if (bad) {
        say("faults: FAILED\n");
        return 1;
    }
    say("faults: ok\n");
    return 0;
}

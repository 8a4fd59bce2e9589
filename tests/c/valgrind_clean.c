/*
 * valgrind_clean.c - a correct program that exercises every kind of block scopealloc hands out,
 * for memcheck to find nothing wrong with (tests/valgrind.rs expects "ERROR SUMMARY: 0 errors"
 * and no leaks). Threads pass blocks to each other (remote frees) and exit (their slabs are
 * abandoned and adopted); blocks are allocated in scopes (the C API), grown and shrunk with
 * realloc (in place and moved, small, large and huge), zeroed by calloc and read, aligned by
 * memalign, posix_memalign and aligned_alloc, written up to malloc_usable_size.
 *
 * Usage: valgrind_clean [rounds]   (default 3; prints the checksum and the seed)
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scopealloc.h"

#define THREADS 4
#define SLOTS 256

static uint64_t rng(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fail(const char *what) {
    fprintf(stderr, "valgrind_clean: %s\n", what);
    exit(1);
}

/* Blocks handed from one thread to the next: freed by a thread that did not allocate them. */
static void *handoff[THREADS][SLOTS];
static pthread_barrier_t barrier;
static uint64_t sums[THREADS];
static unsigned seed = 1;

static size_t pick_size(uint64_t *s) {
    uint64_t r = rng(s);
    switch (r % 8) {
    case 0: return r >> 40 & 0x1ffff;  /* up to 128 KiB: large objects too */
    case 1: return r >> 40 & 0x3fff;   /* up to 16 KiB */
    default: return 1 + (r >> 40 & 0x3ff); /* up to 1 KiB */
    }
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + (uint64_t)id + 1;
    uint64_t sum = 0;
    scopealloc_scope_t *scope = scopealloc_scope_new(NULL, "worker");
    if (!scope) fail("scopealloc_scope_new");
    scopealloc_prev_t *prev = scopealloc_enter(scope);
    for (int i = 0; i < SLOTS; i++) {
        size_t n = pick_size(&s);
        unsigned char *p = malloc(n);
        if (!p && n) fail("malloc");
        memset(p, (int)(i & 0xff), n);
        handoff[id][i] = p;
    }
    scopealloc_leave(prev);
    pthread_barrier_wait(&barrier);
    /* Free the next thread's blocks (remote frees into its slabs), reading them first. */
    int from = (id + 1) % THREADS;
    for (int i = 0; i < SLOTS; i++) {
        unsigned char *p = handoff[from][i];
        if (p) sum += p[0];
        free(p);
    }
    struct scopealloc_stats st;
    if (scopealloc_stats(scope, &st) != 0) fail("scopealloc_stats");
    scopealloc_scope_release(scope);
    sums[id] = sum;
    return NULL;
}

static uint64_t threads_round(void) {
    pthread_t t[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i)) fail("pthread_create");
    uint64_t sum = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        sum += sums[i];
    }
    pthread_barrier_destroy(&barrier);
    return sum;
}

/* realloc through small, large and huge sizes and back, the contents checked at each step. */
static uint64_t realloc_round(void) {
    static const size_t sizes[] = {1, 24, 100, 1000, 5000, 40000, 300000, 3 << 20, 64, 16};
    unsigned char *p = NULL;
    size_t have = 0;
    uint64_t sum = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        p = realloc(p, n);
        if (!p) fail("realloc");
        size_t keep = have < n ? have : n;
        for (size_t i = 0; i < keep; i++)
            if (p[i] != (unsigned char)(i * 7)) fail("realloc lost the contents");
        for (size_t i = keep; i < n; i++) p[i] = (unsigned char)(i * 7);
        sum += p[n - 1];
        have = n;
    }
    free(p);
    return sum;
}

/* calloc's zeroes are defined (small, large from fresh pages, huge), and read. */
static uint64_t calloc_round(void) {
    static const size_t sizes[] = {8, 200, 4000, 50000, 200000, 5 << 20};
    uint64_t sum = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        unsigned char *p = calloc(sizes[k], 1);
        if (!p) fail("calloc");
        for (size_t i = 0; i < sizes[k]; i++)
            if (p[i]) fail("calloc not zeroed");
        sum += sizes[k];
        free(p);
    }
    return sum;
}

/* memalign, posix_memalign and aligned_alloc, small to huge alignments; usable sizes. */
static uint64_t aligned_round(void) {
    uint64_t sum = 0;
    for (size_t align = 16; align <= (4 << 20); align <<= 3) {
        unsigned char *a = memalign(align, 100);
        void *b = NULL;
        if (posix_memalign(&b, align, 3000)) fail("posix_memalign");
        unsigned char *c = aligned_alloc(align, align);
        if (!a || !c) fail("memalign or aligned_alloc");
        if ((uintptr_t)a % align || (uintptr_t)b % align || (uintptr_t)c % align)
            fail("misaligned");
        size_t n = malloc_usable_size(a);
        if (n < 100) fail("malloc_usable_size");
        memset(a, 1, n); /* the whole usable size is the program's */
        memset(b, 2, 3000);
        memset(c, 3, align);
        sum += a[n - 1] + ((unsigned char *)b)[2999] + c[align - 1];
        free(a);
        free(b);
        free(c);
    }
    return sum;
}

/* A scope with a limit: a refused request is NULL, the scope's objects outlive its close. */
static uint64_t scope_round(void) {
    scopealloc_scope_t *req = scopealloc_scope_new(NULL, "request");
    if (!req || scopealloc_set_limit(req, 1 << 20) != 0) fail("scope");
    scopealloc_prev_t *prev = scopealloc_enter(req);
    char *kept = malloc(4096);
    void *refused = malloc(2 << 20);
    scopealloc_leave(prev);
    if (!kept) fail("malloc in scope");
    if (refused) fail("the limit did not refuse");
    memset(kept, 'x', 4096);
    scopealloc_close(req);
    uint64_t sum = (unsigned char)kept[4095];
    free(kept);
    scopealloc_scope_release(req);
    return sum;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    const char *env = getenv("VALGRIND_CLEAN_SEED");
    if (env) seed = (unsigned)strtoul(env, NULL, 10);
    printf("valgrind_clean: seed %u, %d rounds\n", seed, rounds);
    uint64_t sum = 0;
    for (int r = 0; r < rounds; r++) {
        sum += threads_round();
        sum += realloc_round();
        sum += calloc_round();
        sum += aligned_round();
        sum += scope_round();
    }
    printf("valgrind_clean: checksum %llu\n", (unsigned long long)sum);
    return 0;
}

/* larson.c - larson-like server churn benchmark (after Larson & Krishnan,
 * "Memory allocation for long-running server applications", as used by
 * mimalloc-bench).
 *
 * Usage: larson [THREADS=2] [ROUNDS=40] [OPS_PER_ROUND=200000] [SLOTS=1000] [SEED=1]
 *
 * Each of THREADS slot arrays holds SLOTS live objects. In every round a fresh
 * set of THREADS threads is created (as larson does: a thread hands its array
 * to a newly created thread and exits), and thread t of round r works on the
 * array (t + r) % THREADS, so most frees are of objects malloc'ed by another,
 * possibly already exited, thread. Each op frees a random slot and mallocs a
 * random size in 16..1024 into it. Every object carries a tag at both ends
 * that is checked on free; the checksum is the sum of the tags freed, which is
 * deterministic for a given argv.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

typedef struct { void *p; size_t size; uint64_t tag; } slot_t;

static int nthreads, rounds, nslots;
static long ops_per_round;
static uint64_t seed;
static slot_t **arrays;
static int failed;

static void put(slot_t *s, size_t size, uint64_t tag) {
    unsigned char *p = malloc(size);
    if (!p) { fprintf(stderr, "larson: malloc(%zu) failed\n", size); exit(3); }
    memcpy(p, &tag, 8);
    memcpy(p + size - 8, &tag, 8);
    p[size / 2] = (unsigned char)tag;
    s->p = p; s->size = size; s->tag = tag;
}

static uint64_t take(slot_t *s) {
    unsigned char *p = s->p;
    uint64_t a, b;
    memcpy(&a, p, 8);
    memcpy(&b, p + s->size - 8, 8);
    if (a != s->tag || b != s->tag || p[s->size / 2] != (unsigned char)s->tag) {
        fprintf(stderr, "larson: corrupted object %p size %zu\n", (void *)p, s->size);
        __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
    }
    free(p);
    return s->tag;
}

typedef struct { int t, r; uint64_t sum; } targ_t;

static void *worker(void *arg) {
    targ_t *a = arg;
    slot_t *arr = arrays[(a->t + a->r) % nthreads];
    uint64_t rng = seed * 1000003ULL + (uint64_t)a->r * 7919ULL + (uint64_t)a->t;
    uint64_t sum = 0;
    for (long i = 0; i < ops_per_round; i++) {
        uint64_t x = splitmix(&rng);
        slot_t *s = &arr[x % (uint64_t)nslots];
        sum += take(s);
        put(s, 16 + (size_t)((x >> 32) % 1009), splitmix(&rng));
    }
    a->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 2;
    rounds = argc > 2 ? atoi(argv[2]) : 40;
    ops_per_round = argc > 3 ? atol(argv[3]) : 200000;
    nslots = argc > 4 ? atoi(argv[4]) : 1000;
    seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
    if (nthreads < 1 || rounds < 1 || ops_per_round < 1 || nslots < 1) {
        fprintf(stderr, "usage: larson THREADS ROUNDS OPS_PER_ROUND SLOTS SEED\n");
        return 2;
    }
    uint64_t rng = seed;
    uint64_t sum = 0;
    arrays = calloc((size_t)nthreads, sizeof *arrays);
    for (int t = 0; t < nthreads; t++) {
        arrays[t] = calloc((size_t)nslots, sizeof(slot_t));
        for (int i = 0; i < nslots; i++)
            put(&arrays[t][i], 16 + (size_t)(splitmix(&rng) % 1009), splitmix(&rng));
    }
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    targ_t *ta = calloc((size_t)nthreads, sizeof *ta);
    for (int r = 0; r < rounds; r++) {
        for (int t = 0; t < nthreads; t++) {
            ta[t].t = t; ta[t].r = r; ta[t].sum = 0;
            if (pthread_create(&th[t], NULL, worker, &ta[t]) != 0) { perror("pthread_create"); return 3; }
        }
        for (int t = 0; t < nthreads; t++) { pthread_join(th[t], NULL); sum += ta[t].sum; }
    }
    for (int t = 0; t < nthreads; t++) {
        for (int i = 0; i < nslots; i++) sum += take(&arrays[t][i]);
        free(arrays[t]);
    }
    free(arrays); free(th); free(ta);
    if (failed) { fprintf(stderr, "larson: FAILED integrity check\n"); return 1; }
    printf("larson threads=%d rounds=%d ops=%ld slots=%d checksum=%016llx\n",
           nthreads, rounds, ops_per_round, nslots, (unsigned long long)sum);
    return 0;
}

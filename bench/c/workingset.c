/* workingset.c - a single-thread-shaped working set that outgrows L1/L2.
 *
 * Usage: workingset [THREADS=1] [STEPS=4000000] [SEED=1] [EXPONENT=2]
 *
 * Each thread keeps LIVE = 1024 blocks whose sizes have the density
 * s^-EXPONENT on 4 B .. 32 KiB. EXPONENT=2 (inverse square) is the issue's
 * shape: mostly tiny blocks, mean about 36 B, so the 1024 blocks (about
 * 40 KiB) fit in L1 and the allocator's own metadata and placement decide
 * the misses. EXPONENT=1 (log-uniform, mean about 3.6 KiB, about 3.7 MiB
 * live per thread) outgrows a 2 MiB L2. Every step picks a
 * random block, checks its tag bytes, frees it and mallocs a new block of a
 * fresh random size, fills the whole new block (so the allocator's choice of
 * address decides how many cache lines the program touches) and reads one
 * byte of another random block. Threads are independent (no cross-thread
 * frees); THREADS > 1 shows how the allocator scales with private heaps.
 * Checksum: the sum over threads of the tags and sizes of every block freed
 * and of the bytes read, which depends only on the arguments.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#define LIVE 1024
#define MIN_SIZE 4.0
#define MAX_SIZE 32768.0


static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Density s^-e on [a, b] = [MIN_SIZE, MAX_SIZE], by inverting its CDF:
 * s(u) = (a^(1-e) + u (b^(1-e) - a^(1-e)))^(1/(1-e)), or a (b/a)^u for e = 1.
 * pow() per draw would cost more than malloc itself, so s(u) is tabulated at
 * QUANTILES + 1 points and interpolated linearly between them. */
#define QUANTILES 4096
static double quantile[QUANTILES + 1];

static void tabulate(double e) {
    for (int i = 0; i <= QUANTILES; i++) {
        double u = (double)i / QUANTILES;
        if (fabs(e - 1.0) < 1e-9) quantile[i] = MIN_SIZE * pow(MAX_SIZE / MIN_SIZE, u);
        else quantile[i] = pow(pow(MIN_SIZE, 1 - e) + u * (pow(MAX_SIZE, 1 - e) - pow(MIN_SIZE, 1 - e)), 1 / (1 - e));
    }
}

static size_t block_size(uint64_t *r) {
    uint64_t x = splitmix(r);
    unsigned i = (unsigned)(x >> 52);                        /* 12 bits: the quantile */
    double f = (double)((x >> 20) & 0xffffffff) / 4294967296.0; /* 32 bits: between two */
    size_t s = (size_t)(quantile[i] + f * (quantile[i + 1] - quantile[i]));
    return s < 4 ? 4 : s > 32768 ? 32768 : s;
}

typedef struct { unsigned char *p; size_t size; unsigned char tag; } block_t;
typedef struct { long steps; uint64_t seed; uint64_t sum; int failed; } job_t;

static void fill(block_t *b, uint64_t *r) {
    b->size = block_size(r);
    b->tag = (unsigned char)splitmix(r);
    b->p = malloc(b->size);
    if (!b->p) { fprintf(stderr, "workingset: malloc(%zu) failed\n", b->size); exit(3); }
    memset(b->p, b->tag, b->size);
}

static void *run(void *arg) {
    job_t *job = arg;
    uint64_t r = job->seed;
    block_t *blocks = calloc(LIVE, sizeof *blocks);
    if (!blocks) { fprintf(stderr, "workingset: calloc failed\n"); exit(3); }
    for (int i = 0; i < LIVE; i++) fill(&blocks[i], &r);
    uint64_t sum = 0, touched = 0;
    for (long i = 0; i < job->steps; i++) {
        uint64_t x = splitmix(&r);
        block_t *b = &blocks[x % LIVE];
        if (b->p[0] != b->tag || b->p[b->size - 1] != b->tag || b->p[b->size / 2] != b->tag) {
            fprintf(stderr, "workingset: corrupted block %p size %zu\n", (void *)b->p, b->size);
            job->failed = 1;
        }
        sum += b->tag + b->size;
        free(b->p);
        fill(b, &r);
        block_t *o = &blocks[(x >> 32) % LIVE];
        touched += o->p[(x >> 12) % o->size];
    }
    for (int i = 0; i < LIVE; i++) { sum += blocks[i].tag + blocks[i].size; free(blocks[i].p); }
    free(blocks);
    /* the bytes read are the tags written, so they depend on the seed only */
    job->sum = sum + touched;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    long steps = argc > 2 ? atol(argv[2]) : 4000000;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    double exponent = argc > 4 ? atof(argv[4]) : 2.0;
    if (threads < 1 || threads > 256 || steps < 1 || exponent <= 0) {
        fprintf(stderr, "usage: workingset THREADS STEPS SEED EXPONENT\n");
        return 2;
    }
    tabulate(exponent);
    job_t jobs[256];
    pthread_t tids[256];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){ .steps = steps, .seed = seed * 1000003u + (uint64_t)t };
        if (pthread_create(&tids[t], NULL, run, &jobs[t])) { fprintf(stderr, "workingset: pthread_create failed\n"); return 3; }
    }
    uint64_t sum = 0;
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        sum += jobs[t].sum;
        failed |= jobs[t].failed;
    }
    if (failed) return 1;
    printf("workingset threads=%d steps=%ld exponent=%g checksum=%016llx\n", threads, steps, exponent, (unsigned long long)sum);
    return 0;
}

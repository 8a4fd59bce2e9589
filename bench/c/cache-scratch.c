/* cache-scratch.c - passive/active false-sharing test (after Hoard's
 * cache-scratch, as used by mimalloc-bench).
 *
 * Usage: cache-scratch [THREADS=2] [ITERATIONS=1000] [OBJSIZE=8] [REPETITIONS=20000] [SEED=1]
 *
 * The main thread mallocs one small object per thread back to back (so they
 * likely share a cache line) and hands one to each thread, which frees it
 * (passive false sharing: a thread-caching allocator may then hand that
 * memory back to the thread). Each thread then ITERATIONS times mallocs an
 * OBJSIZE object, writes every byte of it REPETITIONS times and frees it.
 * An allocator that places different threads' small objects on the same
 * cache line makes this slow. Checksum: the sum of the final object bytes.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { char *given; int id; uint64_t sum; } targ_t;
static long iterations, repetitions;
static size_t objsize;
static uint64_t seed;

static void *worker(void *arg) {
    targ_t *a = arg;
    free(a->given);
    uint64_t sum = 0;
    unsigned char base = (unsigned char)(seed + (uint64_t)a->id);
    for (long i = 0; i < iterations; i++) {
        volatile unsigned char *p = malloc(objsize);
        if (!p) { fprintf(stderr, "cache-scratch: malloc failed\n"); exit(3); }
        for (size_t k = 0; k < objsize; k++) p[k] = 0;
        for (long j = 0; j < repetitions; j++)
            for (size_t k = 0; k < objsize; k++)
                p[k] = (unsigned char)(p[k] * 3 + base + (unsigned char)j);
        for (size_t k = 0; k < objsize; k++) sum += p[k];
        free((void *)p);
    }
    a->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    iterations = argc > 2 ? atol(argv[2]) : 1000;
    objsize = argc > 3 ? (size_t)atol(argv[3]) : 8;
    repetitions = argc > 4 ? atol(argv[4]) : 20000;
    seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
    if (threads < 1 || iterations < 1 || objsize < 1 || repetitions < 1) {
        fprintf(stderr, "usage: cache-scratch THREADS ITERATIONS OBJSIZE REPETITIONS SEED\n");
        return 2;
    }
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    targ_t *ta = calloc((size_t)threads, sizeof *ta);
    for (int t = 0; t < threads; t++) {
        ta[t].given = malloc(objsize);
        ta[t].id = t;
        for (size_t k = 0; k < objsize; k++) ta[t].given[k] = 0;
    }
    for (int t = 0; t < threads; t++) pthread_create(&th[t], NULL, worker, &ta[t]);
    uint64_t sum = 0;
    for (int t = 0; t < threads; t++) { pthread_join(th[t], NULL); sum += ta[t].sum; }
    free(th); free(ta);
    printf("cache-scratch threads=%d iterations=%ld objsize=%zu repetitions=%ld checksum=%016llx\n",
           threads, iterations, objsize, repetitions, (unsigned long long)sum);
    return 0;
}

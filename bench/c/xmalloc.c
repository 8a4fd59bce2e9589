/* xmalloc.c - xmalloc-test-like producer/consumer benchmark (after Lever &
 * Boreham's xmalloc-test, as used by mimalloc-bench).
 *
 * Usage: xmalloc [THREADS=2] [OBJECTS_PER_PRODUCER=4000000] [BATCH=256] [SEED=1]
 *
 * THREADS/2 (at least 1) producer threads malloc objects of random size
 * 8..512 and push them in batches onto a bounded mutex-protected queue; the
 * remaining (at least 1) consumer threads pop batches and free every object,
 * so every free is a cross-thread free. The batch arrays themselves are also
 * malloc'ed by the producer and freed by the consumer. Each object carries a
 * tag that the consumer checks; the checksum is the sum of the tags.
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

typedef struct { int n; void *items[]; } batch_t;

#define QCAP 64
static batch_t *queue[QCAP];
static int qhead, qlen, producers_left;
static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qnotempty = PTHREAD_COND_INITIALIZER, qnotfull = PTHREAD_COND_INITIALIZER;

static long nobjects;
static int batch;
static uint64_t seed;
static int failed;

static void push(batch_t *b) {
    pthread_mutex_lock(&qmu);
    while (qlen == QCAP) pthread_cond_wait(&qnotfull, &qmu);
    queue[(qhead + qlen) % QCAP] = b;
    qlen++;
    pthread_cond_signal(&qnotempty);
    pthread_mutex_unlock(&qmu);
}

static batch_t *pop(void) {
    pthread_mutex_lock(&qmu);
    while (qlen == 0 && producers_left > 0) pthread_cond_wait(&qnotempty, &qmu);
    batch_t *b = NULL;
    if (qlen > 0) {
        b = queue[qhead];
        qhead = (qhead + 1) % QCAP;
        qlen--;
        pthread_cond_signal(&qnotfull);
    }
    pthread_mutex_unlock(&qmu);
    return b;
}

static void *producer(void *arg) {
    uint64_t rng = seed * 1000003ULL + (uint64_t)(uintptr_t)arg;
    long made = 0;
    while (made < nobjects) {
        int n = (nobjects - made) < batch ? (int)(nobjects - made) : batch;
        batch_t *b = malloc(sizeof(batch_t) + (size_t)n * sizeof(void *));
        if (!b) { fprintf(stderr, "xmalloc: batch malloc failed\n"); exit(3); }
        b->n = n;
        for (int i = 0; i < n; i++) {
            uint64_t x = splitmix(&rng);
            size_t size = 8 + (size_t)(x % 505);
            unsigned char *p = malloc(size);
            if (!p) { fprintf(stderr, "xmalloc: malloc(%zu) failed\n", size); exit(3); }
            uint64_t tag = (x & ~0x3ffULL) | (uint64_t)size;   /* low 10 bits: size */
            memcpy(p, &tag, 8);
            p[size - 1] = (unsigned char)(tag >> 13);
            b->items[i] = p;
        }
        made += n;
        push(b);
    }
    pthread_mutex_lock(&qmu);
    producers_left--;
    pthread_cond_broadcast(&qnotempty);
    pthread_mutex_unlock(&qmu);
    return NULL;
}

static void *consumer(void *arg) {
    uint64_t *out = arg, sum = 0;
    batch_t *b;
    while ((b = pop()) != NULL) {
        for (int i = 0; i < b->n; i++) {
            unsigned char *p = b->items[i];
            uint64_t tag;
            memcpy(&tag, p, 8);
            size_t size = (size_t)(tag & 0x3ff);
            if (size < 8 || size > 512 || p[size - 1] != (unsigned char)(tag >> 13)) {
                fprintf(stderr, "xmalloc: corrupted object %p\n", (void *)p);
                __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
            }
            sum += tag;
            free(p);
        }
        free(b);
    }
    *out = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    nobjects = argc > 2 ? atol(argv[2]) : 4000000;
    batch = argc > 3 ? atoi(argv[3]) : 256;
    seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 1;
    if (threads < 1 || nobjects < 1 || batch < 1) {
        fprintf(stderr, "usage: xmalloc THREADS OBJECTS_PER_PRODUCER BATCH SEED\n");
        return 2;
    }
    int np = threads / 2 > 0 ? threads / 2 : 1;
    int nc = threads - np > 0 ? threads - np : 1;
    producers_left = np;
    pthread_t *th = calloc((size_t)(np + nc), sizeof *th);
    uint64_t *sums = calloc((size_t)nc, sizeof *sums);
    for (int i = 0; i < nc; i++) pthread_create(&th[np + i], NULL, consumer, &sums[i]);
    for (int i = 0; i < np; i++) pthread_create(&th[i], NULL, producer, (void *)(uintptr_t)i);
    uint64_t sum = 0;
    for (int i = 0; i < np + nc; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < nc; i++) sum += sums[i];
    free(th); free(sums);
    if (failed) { fprintf(stderr, "xmalloc: FAILED integrity check\n"); return 1; }
    printf("xmalloc producers=%d consumers=%d objects=%ld batch=%d checksum=%016llx\n",
           np, nc, nobjects, batch, (unsigned long long)sum);
    return 0;
}

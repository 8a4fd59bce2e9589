/* mstress.c - mstress-like benchmark (after mimalloc's test/test-stress.c,
 * as used by mimalloc-bench).
 *
 * Usage: mstress [THREADS=2] [SCALE=50] [ROUNDS=10] [SEED=1]
 *
 * Every round spawns THREADS fresh threads. Each thread allocates
 * 2000*SCALE*(tid%4+1) objects with a heavy-tailed size distribution
 * (95% 16..256 B, 4.5% up to 8 KiB, 0.45% up to 64 KiB, 0.05% up to 1 MiB),
 * frees a random live one two times out of three, swaps a random live one
 * with a slot of a global transfer array one time in four (so objects are
 * freed by other threads, and objects parked in the transfer array survive
 * across rounds), and keeps a retained set alive until the thread ends.
 * Objects are tagged at both ends and one word per 4 KiB page is written
 * (so every page is touched). Tags are checked on free; the checksum is the
 * sum of all tags, which is deterministic for a given argv.
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

#define TRANSFERS 1000
static void *transfer[TRANSFERS];
static long scale;
static uint64_t seed;
static int failed;

/* object layout: [size_t size][uint64 tag] ... [uint64 tag at end] */
static void *alloc_item(uint64_t *r) {
    uint64_t x = splitmix(r);
    unsigned c = (unsigned)(x % 10000);
    uint64_t y = x >> 10;
    size_t size;
    if (c < 9500) size = 16 + (size_t)(y % 241);
    else if (c < 9950) size = 256 + (size_t)(y % (8192 - 256 + 1));
    else if (c < 9995) size = 8192 + (size_t)(y % (65536 - 8192 + 1));
    else size = 65536 + (size_t)(y % (1048576 - 65536 + 1));
    if (size < 24) size = 24;
    unsigned char *p = malloc(size);
    if (!p) { fprintf(stderr, "mstress: malloc(%zu) failed\n", size); exit(3); }
    uint64_t tag = splitmix(r);
    memcpy(p, &size, sizeof size);
    memcpy(p + 8, &tag, 8);
    memcpy(p + size - 8, &tag, 8);
    for (size_t off = 4096; off + 8 <= size - 8; off += 4096) memcpy(p + off, &tag, 8);
    return p;
}

static uint64_t free_item(void *v) {
    if (!v) return 0;
    unsigned char *p = v;
    size_t size;
    uint64_t tag, t2;
    memcpy(&size, p, sizeof size);
    memcpy(&tag, p + 8, 8);
    if (size < 24 || size > 1048576) goto bad;
    memcpy(&t2, p + size - 8, 8);
    if (t2 != tag) goto bad;
    for (size_t off = 4096; off + 8 <= size - 8; off += 4096) {
        memcpy(&t2, p + off, 8);
        if (t2 != tag) goto bad;
    }
    free(p);
    return tag;
bad:
    fprintf(stderr, "mstress: corrupted object %p\n", v);
    __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
    return 0;
}

typedef struct { int tid, round; uint64_t sum; } targ_t;

static void *stress(void *arg) {
    targ_t *a = arg;
    uint64_t r = seed * 1000003ULL + (uint64_t)a->round * 7919ULL + (uint64_t)a->tid;
    size_t allocs = (size_t)(2000 * scale) * (size_t)(a->tid % 4 + 1);
    size_t retain = allocs / 2;
    size_t data_size = 1024, data_top = 0, retain_top = 0;
    void **data = malloc(data_size * sizeof(void *));
    void **retained = malloc((retain + 1) * sizeof(void *));
    uint64_t sum = 0;
    while (allocs > 0 || retain > 0) {
        uint64_t x = splitmix(&r);
        if (retain == 0 || ((x % 100) < 50 && allocs > 0)) {
            allocs--;
            if (data_top >= data_size) {
                data_size *= 2;
                data = realloc(data, data_size * sizeof(void *));
                if (!data) { fprintf(stderr, "mstress: realloc failed\n"); exit(3); }
            }
            data[data_top++] = alloc_item(&r);
        } else {
            retained[retain_top++] = alloc_item(&r);
            retain--;
        }
        x = splitmix(&r);
        if ((x % 100) < 66 && data_top > 0) {
            size_t idx = (size_t)((x >> 8) % data_top);
            sum += free_item(data[idx]);
            data[idx] = NULL;
        }
        x = splitmix(&r);
        if ((x % 100) < 25 && data_top > 0) {
            size_t idx = (size_t)((x >> 8) % data_top);
            size_t tidx = (size_t)((x >> 40) % TRANSFERS);
            data[idx] = __atomic_exchange_n(&transfer[tidx], data[idx], __ATOMIC_ACQ_REL);
        }
    }
    for (size_t i = 0; i < retain_top; i++) sum += free_item(retained[i]);
    for (size_t i = 0; i < data_top; i++) sum += free_item(data[i]);
    free(retained);
    free(data);
    a->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    scale = argc > 2 ? atol(argv[2]) : 50;
    int rounds = argc > 3 ? atoi(argv[3]) : 10;
    seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 1;
    if (threads < 1 || scale < 1 || rounds < 1) {
        fprintf(stderr, "usage: mstress THREADS SCALE ROUNDS SEED\n");
        return 2;
    }
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    targ_t *ta = calloc((size_t)threads, sizeof *ta);
    uint64_t sum = 0;
    for (int rd = 0; rd < rounds; rd++) {
        for (int t = 0; t < threads; t++) {
            ta[t].tid = t; ta[t].round = rd; ta[t].sum = 0;
            if (pthread_create(&th[t], NULL, stress, &ta[t]) != 0) { perror("pthread_create"); return 3; }
        }
        for (int t = 0; t < threads; t++) { pthread_join(th[t], NULL); sum += ta[t].sum; }
    }
    for (int i = 0; i < TRANSFERS; i++) sum += free_item(transfer[i]);
    free(th); free(ta);
    if (failed) { fprintf(stderr, "mstress: FAILED integrity check\n"); return 1; }
    printf("mstress threads=%d scale=%ld rounds=%d checksum=%016llx\n",
           threads, scale, rounds, (unsigned long long)sum);
    return 0;
}

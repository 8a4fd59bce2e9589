/* randsize.c - random-size allocator stress, one heap per thread.
 *
 * Usage: randsize [THREADS=1] [STEPS=5000000] [SEED=1]
 *
 * Each thread owns SLOTS = 4096 slots. Every step picks a random slot and
 * either frees its block and mallocs one of a new random size (85 %),
 * reallocs it to a new random size, checking that the common prefix survived
 * (10 %), or frees it and callocs a block, checking that it is zeroed (5 %).
 * Sizes: 70 % uniform in 16..256 B, 25 % in 256 B..4 KiB, 5 % in 4..64 KiB.
 * The first and last 8 bytes of every block carry a tag that is checked
 * before it is freed or reallocated. Threads do not share blocks.
 * Checksum: the sum of the tags and sizes seen by every thread, which
 * depends only on the arguments.
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

#define SLOTS 4096
typedef struct { unsigned char *p; size_t size; uint64_t tag; } slot_t;
typedef struct { long steps; uint64_t seed; uint64_t sum; int failed; } job_t;

static size_t rand_size(uint64_t *r) {
    uint64_t x = splitmix(r), pct = x % 100, y = x >> 16;
    if (pct < 70) return 16 + y % (256 - 16 + 1); /* >= 16: the two tags do not overlap */
    if (pct < 95) return 256 + y % (4096 - 256 + 1);
    return 4096 + y % (65536 - 4096 + 1);
}

static void stamp(slot_t *s) {
    memcpy(s->p, &s->tag, 8);
    memcpy(s->p + s->size - 8, &s->tag, 8);
}

static int intact(const slot_t *s) {
    uint64_t a, b;
    memcpy(&a, s->p, 8);
    memcpy(&b, s->p + s->size - 8, 8);
    return a == s->tag && b == s->tag;
}

static void *oom(size_t n) { fprintf(stderr, "randsize: allocation of %zu bytes failed\n", n); exit(3); }

static void *run(void *arg) {
    job_t *job = arg;
    uint64_t r = job->seed, sum = 0;
    slot_t *slots = calloc(SLOTS, sizeof *slots);
    if (!slots) oom(SLOTS * sizeof *slots);
    for (int i = 0; i < SLOTS; i++) {
        slot_t *s = &slots[i];
        s->size = rand_size(&r);
        s->tag = splitmix(&r);
        if (!(s->p = malloc(s->size))) oom(s->size);
        stamp(s);
    }
    for (long i = 0; i < job->steps; i++) {
        uint64_t x = splitmix(&r);
        slot_t *s = &slots[x % SLOTS];
        unsigned op = (unsigned)((x >> 32) % 100);
        if (!intact(s) && !job->failed) {
            fprintf(stderr, "randsize: corrupted block %p size %zu\n", (void *)s->p, s->size);
            job->failed = 1;
        }
        sum += s->tag + s->size;
        size_t n = rand_size(&r);
        uint64_t tag = splitmix(&r);
        if (op < 85) {
            free(s->p);
            if (!(s->p = malloc(n))) oom(n);
        } else if (op < 95) {
            unsigned char *q = realloc(s->p, n);
            if (!q) oom(n);
            uint64_t head;
            memcpy(&head, q, 8);
            if (head != s->tag && !job->failed) { fprintf(stderr, "randsize: realloc lost the prefix\n"); job->failed = 1; }
            s->p = q;
        } else {
            free(s->p);
            if (!(s->p = calloc(1, n))) oom(n);
            for (size_t k = 0; k < n; k += 512)
                if (s->p[k] && !job->failed) { fprintf(stderr, "randsize: calloc block not zeroed\n"); job->failed = 1; break; }
        }
        s->size = n;
        s->tag = tag;
        stamp(s);
    }
    for (int i = 0; i < SLOTS; i++) { sum += slots[i].tag + slots[i].size; free(slots[i].p); }
    free(slots);
    job->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    long steps = argc > 2 ? atol(argv[2]) : 5000000;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    if (threads < 1 || threads > 256 || steps < 1) { fprintf(stderr, "usage: randsize THREADS STEPS SEED\n"); return 2; }
    job_t jobs[256];
    pthread_t tids[256];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){ .steps = steps, .seed = seed * 7919u + (uint64_t)t };
        if (pthread_create(&tids[t], NULL, run, &jobs[t])) { fprintf(stderr, "randsize: pthread_create failed\n"); return 3; }
    }
    uint64_t sum = 0;
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        sum += jobs[t].sum;
        failed |= jobs[t].failed;
    }
    if (failed) return 1;
    printf("randsize threads=%d steps=%ld checksum=%016llx\n", threads, steps, (unsigned long long)sum);
    return 0;
}

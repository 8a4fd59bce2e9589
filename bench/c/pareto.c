/* pareto.c - Pareto-distributed size mix with a live working set.
 *
 * Usage: pareto [OPS=3000000] [LIVE=100000] [SEED=1]
 *
 * Single-threaded. Sizes follow a Pareto distribution with x_m = 16 bytes and
 * alpha = 1 (P(size > s) = 16/s), capped at 4 MiB: mostly small, a few
 * hundred above 64 KiB and some tens above 1 MiB per million ops. LIVE slots
 * are filled first; each op then picks a random slot and either frees it and
 * mallocs a new size (90%) or reallocs it to a new size (10%, checking that
 * the prefix survived). Objects are tagged at both ends and one byte per
 * 4 KiB page is written. Checksum: sum of the tags freed.
 */
#include <math.h>
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

#define MAXSIZE (4u << 20)
typedef struct { unsigned char *p; size_t size; uint64_t tag; } slot_t;
static int failed;

static size_t pareto_size(uint64_t *r) {
    /* u in (0,1]; size = 16 / u, capped */
    double u = ((double)(splitmix(r) >> 11) + 1.0) / 9007199254740992.0;
    double s = 16.0 / u;
    return s >= (double)MAXSIZE ? MAXSIZE : (size_t)s;
}

static void stamp(slot_t *s) {
    memcpy(s->p, &s->tag, 8);
    memcpy(s->p + s->size - 8, &s->tag, 8);
    for (size_t off = 4096; off < s->size - 8; off += 4096) s->p[off] = (unsigned char)s->tag;
}

static void check(const slot_t *s) {
    uint64_t a, b;
    memcpy(&a, s->p, 8);
    memcpy(&b, s->p + s->size - 8, 8);
    int bad = a != s->tag || b != s->tag;
    for (size_t off = 4096; !bad && off < s->size - 8; off += 4096)
        bad = s->p[off] != (unsigned char)s->tag;
    if (bad) {
        fprintf(stderr, "pareto: corrupted object %p size %zu\n", (void *)s->p, s->size);
        failed = 1;
    }
}

static void fill(slot_t *s, uint64_t *r) {
    s->size = pareto_size(r);
    s->tag = splitmix(r);
    s->p = malloc(s->size);
    if (!s->p) { fprintf(stderr, "pareto: malloc(%zu) failed\n", s->size); exit(3); }
    stamp(s);
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 3000000;
    long live = argc > 2 ? atol(argv[2]) : 100000;
    uint64_t r = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    if (ops < 1 || live < 1) { fprintf(stderr, "usage: pareto OPS LIVE SEED\n"); return 2; }
    slot_t *slots = calloc((size_t)live, sizeof *slots);
    uint64_t sum = 0;
    for (long i = 0; i < live; i++) fill(&slots[i], &r);
    for (long i = 0; i < ops; i++) {
        uint64_t x = splitmix(&r);
        slot_t *s = &slots[x % (uint64_t)live];
        check(s);
        sum += s->tag;
        if ((x >> 40) % 10 == 0) {
            size_t old = s->size, nsz = pareto_size(&r);
            unsigned char *q = realloc(s->p, nsz);
            if (!q) { fprintf(stderr, "pareto: realloc(%zu) failed\n", nsz); exit(3); }
            /* the prefix (first tag word and the page bytes below the old
             * end tag) must have survived the move */
            size_t keep = old < nsz ? old : nsz;
            uint64_t a;
            memcpy(&a, q, 8);
            int bad = a != s->tag;
            for (size_t off = 4096; !bad && off < keep && off < old - 8; off += 4096)
                bad = q[off] != (unsigned char)s->tag;
            if (bad) { fprintf(stderr, "pareto: realloc lost data\n"); failed = 1; }
            s->p = q; s->size = nsz; s->tag = splitmix(&r);
            stamp(s);
        } else {
            free(s->p);
            fill(s, &r);
        }
    }
    for (long i = 0; i < live; i++) { check(&slots[i]); sum += slots[i].tag; free(slots[i].p); }
    free(slots);
    if (failed) { fprintf(stderr, "pareto: FAILED integrity check\n"); return 1; }
    printf("pareto ops=%ld live=%ld checksum=%016llx\n", ops, live, (unsigned long long)sum);
    return 0;
}

/* shortlived.c - many short-lived small objects, the way a bignum program
 * allocates.
 *
 * Usage: shortlived [OPS=3000000] [SEED=1]
 *
 * Single-threaded. Numbers are heap objects of 20..100 bytes: a 4-byte limb
 * count followed by 32-bit limbs (4..24 limbs). An evaluation stack holds up
 * to STACK numbers; every op pops two, allocates the result (their sum or
 * product truncated to a random length in range, or a fresh constant), frees
 * the two operands and pushes the result (one op in eight multiplies), with now and then a copy pushed
 * too, so almost every object dies within a few operations of its birth in
 * LIFO-ish order, and a handful of longer-lived ones stay on the stack.
 * Checksum: a hash of every result's limbs; it depends only on the arguments.
 */
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

#define MIN_LIMBS 4  /* 4 + 4*4 = 20 bytes */
#define MAX_LIMBS 24 /* 4 + 24*4 = 100 bytes */
#define STACK 64

typedef struct { uint32_t n; uint32_t limb[]; } num_t;

static num_t *num_new(uint32_t n) {
    num_t *x = malloc(sizeof(num_t) + n * sizeof(uint32_t));
    if (!x) { fprintf(stderr, "shortlived: malloc failed\n"); exit(3); }
    x->n = n;
    return x;
}

static uint32_t limb(const num_t *x, uint32_t i) { return i < x->n ? x->limb[i] : 0; }

static num_t *add(const num_t *a, const num_t *b, uint32_t n) {
    num_t *r = num_new(n);
    uint64_t carry = 0;
    for (uint32_t i = 0; i < n; i++) {
        carry += (uint64_t)limb(a, i) + limb(b, i);
        r->limb[i] = (uint32_t)carry;
        carry >>= 32;
    }
    return r;
}

/* schoolbook product, truncated to n limbs */
static num_t *mul(const num_t *a, const num_t *b, uint32_t n) {
    num_t *r = num_new(n);
    memset(r->limb, 0, n * sizeof(uint32_t));
    for (uint32_t i = 0; i < a->n && i < n; i++) {
        uint64_t carry = 0;
        for (uint32_t j = 0; j < b->n && i + j < n; j++) {
            carry += (uint64_t)a->limb[i] * b->limb[j] + r->limb[i + j];
            r->limb[i + j] = (uint32_t)carry;
            carry >>= 32;
        }
    }
    return r;
}

static num_t *constant(uint64_t *rng, uint32_t n) {
    num_t *r = num_new(n);
    for (uint32_t i = 0; i < n; i++) r->limb[i] = (uint32_t)splitmix(rng) | 1;
    return r;
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 3000000;
    uint64_t rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    if (ops < 1) { fprintf(stderr, "usage: shortlived OPS SEED\n"); return 2; }
    num_t *stack[STACK + 2];
    int sp = 0;
    uint64_t h = 1469598103934665603ULL;
    for (; sp < 8; sp++) stack[sp] = constant(&rng, MIN_LIMBS);
    for (long i = 0; i < ops; i++) {
        uint64_t x = splitmix(&rng);
        uint32_t n = MIN_LIMBS + (uint32_t)(x % (MAX_LIMBS - MIN_LIMBS + 1));
        num_t *r;
        if (sp < 2 || (x >> 8) % 8 == 0) {
            r = constant(&rng, n);
        } else {
            num_t *b = stack[--sp], *a = stack[--sp];
            r = (x >> 16) % 8 == 0 ? mul(a, b, n) : add(a, b, n);
            free(a);
            free(b);
        }
        for (uint32_t k = 0; k < r->n; k++) h = (h ^ r->limb[k]) * 1099511628211ULL;
        stack[sp++] = r;
        if ((x >> 24) % 4 == 0 && sp < STACK) { /* keep a copy: an operand used twice */
            num_t *c = num_new(r->n);
            memcpy(c, r, sizeof(num_t) + r->n * sizeof(uint32_t));
            stack[sp++] = c;
        }
        while (sp > STACK) free(stack[--sp]);
    }
    while (sp > 0) free(stack[--sp]);
    printf("shortlived ops=%ld checksum=%016llx\n", ops, (unsigned long long)h);
    return 0;
}

/* The secure build's bug suite: one heap bug per mode, run under an allocator (plain, or with
 * LD_PRELOAD) by tests/secure.rs, which tells "caught" (abnormal exit with a line on stderr)
 * from "crashed" (killed by a signal, nothing said) and "missed" (the program reached its end).
 *
 * Usage: secure_bugs MODE   (secure_bugs list prints the modes)
 *
 * After the bug, each mode gives the allocator its chances to notice: the corrupted block and
 * its neighbours are freed, and blocks of the same size are allocated and freed again (reuse).
 * Sizes: 64 B (small), 4 KiB (medium), 256 KiB (large), 4 MiB (huge: its own mapping).
 */
#define _GNU_SOURCE
#include <alloca.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NEIGHBOURS 8
#define REUSE 64

/* Keeps the compiler from seeing through the pointers (no folding of the bugs away). */
static void *volatile sink;
static void *launder(void *p) {
    sink = p;
    return sink;
}

/* Allocates and frees blocks of `size` so that freed ones are handed out (and checked) again. */
static void reuse(size_t size) {
    void *p[REUSE];
    for (int i = 0; i < REUSE; i++) {
        p[i] = malloc(size);
        if (p[i]) memset(p[i], 0x11, size);
    }
    for (int i = 0; i < REUSE; i++) free(p[i]);
}

/* ---- double frees ---- */

static void double_immediate(size_t n) {
    char *p = malloc(n);
    free(p);
    free(launder(p));
}

static void double_after_others(size_t n) {
    char *p = malloc(n);
    void *q[NEIGHBOURS];
    for (int i = 0; i < NEIGHBOURS; i++) q[i] = malloc(n);
    free(p);
    for (int i = 0; i < NEIGHBOURS; i++) free(q[i]);
    free(launder(p));
}

static void double_interleaved(size_t n) {
    char *p = malloc(n), *q = malloc(n);
    free(p);
    free(q);
    free(launder(p));
}

/* The stale pointer is freed after its block was handed out again; if the allocator gave the
 * same block back, the stale free frees it and the second free of `r` is the double free. */
static void double_after_reuse(size_t n) {
    char *p = malloc(n);
    free(p);
    char *r = malloc(n);
    memset(r, 0x22, n);
    free(launder(p));
    free(launder(r));
}

/* Freed in a thread, freed again in another. */
static void *free_in_thread(void *p) {
    free(launder(p));
    return NULL;
}

static void double_cross_thread(size_t n) {
    char *p = malloc(n);
    free(p);
    pthread_t t;
    pthread_create(&t, NULL, free_in_thread, p);
    pthread_join(t, NULL);
}

/* ---- invalid frees ---- */

static void invalid_stack(size_t n) {
    (void)n;
    char buf[256];
    memset(buf, 0, sizeof buf);
    free(launder(buf + 16));
}

static void invalid_alloca(size_t n) {
    char *a = alloca(n);
    memset(a, 0, n);
    free(launder(a));
}

static void invalid_interior(size_t n) {
    char *p = malloc(n);
    free(launder(p + n / 2));
    free(p);
}

static void invalid_unaligned(size_t n) {
    char *p = malloc(n);
    free(launder(p + 1));
    free(p);
}

static void invalid_past_end(size_t n) {
    char *p = malloc(n);
    free(launder(p + n));
    free(p);
}

static void invalid_far(size_t n) {
    char *p = malloc(n);
    free(launder(p + ((size_t)1 << 36)));
    free(p);
}

/* ---- overflows, underflows, write after free ---- */

/* Writes `len` bytes at offset `at` of the middle one of NEIGHBOURS blocks of size n (by memcpy
 * or byte by byte), then frees them all and reuses their size. */
static void corrupt(size_t n, long at, size_t len, int by_memcpy) {
    char *q[NEIGHBOURS];
    for (int i = 0; i < NEIGHBOURS; i++) {
        q[i] = malloc(n);
        memset(q[i], 0x33, n);
    }
    char *p = launder(q[NEIGHBOURS / 2]);
    static const char junk[64] = "overflow overflow overflow overflow overflow overflow overflo";
    if (by_memcpy)
        memcpy(p + at, junk, len);
    else
        for (size_t i = 0; i < len; i++) ((volatile char *)p)[at + (long)i] = 'X';
    for (int i = 0; i < NEIGHBOURS; i++) free(q[i]);
    reuse(n);
}

/* The same for one huge block (4 MiB: its own mapping), without neighbours or reuse. */
static void corrupt_one(size_t n, long at, size_t len, int by_memcpy) {
    char *p = launder(malloc(n));
    memset(p, 0x33, n);
    static const char junk[64] = "overflow overflow overflow overflow overflow overflow overflo";
    if (by_memcpy)
        memcpy(p + at, junk, len);
    else
        for (size_t i = 0; i < len; i++) ((volatile char *)p)[at + (long)i] = 'X';
    free(p);
    free(malloc(n));
}

static void overflow_1_huge(size_t n) { corrupt_one(n, (long)n, 1, 0); }
static void overflow_32_huge(size_t n) { corrupt_one(n, (long)n, 32, 1); }
static void underflow_1_huge(size_t n) { corrupt_one(n, -1, 1, 0); }
static void underflow_32_huge(size_t n) { corrupt_one(n, -32, 32, 1); }

static void overflow_1(size_t n) { corrupt(n, (long)n, 1, 0); }
static void overflow_32(size_t n) { corrupt(n, (long)n, 32, 1); }
static void underflow_1(size_t n) { corrupt(n, -1, 1, 0); }
static void underflow_32(size_t n) { corrupt(n, -32, 32, 1); }

/* A string of n characters copied into n bytes: its terminator lands one past the end. */
static void overflow_nul(size_t n) {
    char *q[NEIGHBOURS];
    for (int i = 0; i < NEIGHBOURS; i++) q[i] = malloc(n);
    char *src = malloc(n + 1);
    memset(src, 'a', n);
    src[n] = 0;
    strcpy(launder(q[NEIGHBOURS / 2]), src);
    free(src);
    for (int i = 0; i < NEIGHBOURS; i++) free(q[i]);
    reuse(n);
}

/* A block shrunk by realloc (in place, in most allocators), then written past its new end. */
static void overflow_after_realloc(size_t n) {
    char *p = malloc(n);
    memset(p, 0x55, n);
    char *q = realloc(p, n / 2 + 8);
    ((volatile char *)launder(q))[n / 2 + 8] = 'X';
    free(q);
    reuse(n);
}

/* A write after free into the last 8 bytes of a block, where no free-list word lies. */
static void write_after_free_tail(size_t n) {
    char *p = malloc(n);
    free(p);
    memcpy((char *)launder(p) + n - 8, "written.", 8);
    reuse(n);
}

/* Not a bug: every byte malloc_usable_size reports may be written. Must run to its end. */
static void usable_size_is_writable(size_t n) {
    (void)n;
    for (size_t size = 0; size <= 5000; size += 7) {
        char *p = malloc(size);
        memset(p, 0x66, malloc_usable_size(p));
        p = realloc(p, size / 2 + 1);
        memset(p, 0x67, malloc_usable_size(p));
        p = realloc(p, size + 100);
        memset(p, 0x68, malloc_usable_size(p));
        free(p);
    }
}

static void write_after_free(size_t n) {
    char *p = malloc(n);
    free(p);
    memcpy(launder(p), "written after free, 32 bytes...", 32);
    reuse(n);
}

/* ---- absurd sizes ---- */

/* A request no machine could serve; the secure build refuses anything above 1 TiB. 4 TiB is
 * still below what the address space (128 TiB) and the descriptor of a huge block can hold, so
 * an allocator that maps with MAP_NORESERVE may well hand it out. */
#define HUGE_REQUEST ((size_t)1 << 42)

/* Hides a size from the compiler, which would warn about (or fold) a constant absurd request. */
static size_t opaque(size_t v) {
    volatile size_t x = v;
    return x;
}

/* Refused properly (NULL and ENOMEM): reported as caught (the test reads the line); otherwise
 * frees what it got and lets the mode run to its end (missed). */
static void refused(const char *what, void *p, int err) {
    if (p || err != ENOMEM) {
        printf("%s = %p, errno %d\n", what, p, err);
        free(p);
        return;
    }
    fprintf(stderr, "secure_bugs: %s refused with ENOMEM\n", what);
    exit(3);
}

static void absurd_size(size_t n) {
    (void)n;
    errno = 0;
    void *p = malloc((size_t)1 << 62);
    refused("malloc(2^62)", p, errno);
}

static void absurd_half_size_max(size_t n) {
    (void)n;
    errno = 0;
    void *p = malloc(opaque(SIZE_MAX / 2));
    refused("malloc(SIZE_MAX / 2)", p, errno);
}

static void absurd_4t(size_t n) {
    (void)n;
    errno = 0;
    void *p = malloc(opaque(HUGE_REQUEST));
    refused("malloc(2^42)", p, errno);
}

static void absurd_calloc_overflow(size_t n) {
    (void)n;
    errno = 0;
    void *p = calloc(opaque(SIZE_MAX / 8), 16);
    refused("calloc(SIZE_MAX / 8, 16)", p, errno);
}

static void absurd_calloc_4t(size_t n) {
    (void)n;
    errno = 0;
    void *p = calloc(opaque((size_t)1 << 21), (size_t)1 << 21);
    refused("calloc(2^21, 2^21)", p, errno);
}

/* The refused realloc must leave the block alone. */
static void absurd_realloc_4t(size_t n) {
    char *p = malloc(n);
    memset(p, 0x44, n);
    errno = 0;
    void *q = realloc(p, opaque(HUGE_REQUEST));
    int err = errno;
    if (!q) {
        for (size_t i = 0; i < n; i++)
            if (p[i] != 0x44) {
                printf("realloc(p, 2^42) refused but changed the block\n");
                return;
            }
        free(p);
    }
    refused("realloc(p, 2^42)", q, err);
}

static void absurd_aligned_4t(size_t n) {
    (void)n;
    errno = 0;
    void *p = aligned_alloc(4096, opaque(HUGE_REQUEST));
    refused("aligned_alloc(4096, 2^42)", p, errno);
}

struct mode {
    const char *name;
    void (*run)(size_t);
    size_t size;
};

#define SIZED(name, fn)                                                                           \
    {name "-64", fn, 64}, {name "-4k", fn, 4096}, { name "-256k", fn, 256 << 10 }

static const struct mode MODES[] = {
    SIZED("double-free-immediate", double_immediate),
    SIZED("double-free-after-others", double_after_others),
    SIZED("double-free-interleaved", double_interleaved),
    SIZED("double-free-after-reuse", double_after_reuse),
    SIZED("double-free-cross-thread", double_cross_thread),
    {"invalid-free-stack", invalid_stack, 0},
    {"invalid-free-alloca", invalid_alloca, 64},
    SIZED("invalid-free-interior", invalid_interior),
    SIZED("invalid-free-unaligned", invalid_unaligned),
    SIZED("invalid-free-past-end", invalid_past_end),
    SIZED("invalid-free-far", invalid_far),
    SIZED("overflow-1", overflow_1),
    SIZED("overflow-32-memcpy", overflow_32),
    SIZED("underflow-1", underflow_1),
    SIZED("underflow-32-memcpy", underflow_32),
    {"overflow-1-4m", overflow_1_huge, 4 << 20},
    {"overflow-32-memcpy-4m", overflow_32_huge, 4 << 20},
    {"underflow-1-4m", underflow_1_huge, 4 << 20},
    {"underflow-32-memcpy-4m", underflow_32_huge, 4 << 20},
    {"overflow-nul-100", overflow_nul, 100},
    {"overflow-1-after-realloc-64", overflow_after_realloc, 64},
    SIZED("write-after-free", write_after_free),
    {"write-after-free-tail-64", write_after_free_tail, 64},
    {"write-after-free-tail-4k", write_after_free_tail, 4096},
    {"usable-size-is-writable", usable_size_is_writable, 0},
    {"absurd-size", absurd_size, 0},
    {"absurd-size-half-max", absurd_half_size_max, 0},
    {"absurd-size-4t", absurd_4t, 0},
    {"absurd-calloc-overflow", absurd_calloc_overflow, 0},
    {"absurd-calloc-4t", absurd_calloc_4t, 0},
    {"absurd-realloc-4t", absurd_realloc_4t, 64},
    {"absurd-aligned-4t", absurd_aligned_4t, 0},
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODE | list\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof MODES / sizeof MODES[0]; i++) {
        if (strcmp(argv[1], "list") == 0) {
            printf("%s\n", MODES[i].name);
        } else if (strcmp(argv[1], MODES[i].name) == 0) {
            MODES[i].run(MODES[i].size);
            reuse(64);
            printf("completed\n");
            return 0;
        }
    }
    if (strcmp(argv[1], "list") == 0) return 0;
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}

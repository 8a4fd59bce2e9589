/*
 * valgrind_bugs.c - one heap bug per mode, for memcheck to find in a program running on
 * libscopealloc.so (tests/valgrind.rs runs each mode under valgrind and reads its report).
 *
 * Usage: valgrind_bugs leak|read-after-free|overrun|double-free
 *   leak             small (100 B), large (100 KiB) and huge (3 MiB) blocks lose their last
 *                    pointer: "definitely lost"
 *   read-after-free  reads a freed 64-byte block: "Invalid read"
 *   overrun          writes one byte past a 48-byte block (the block after it is free): "Invalid write"
 *   double-free      frees a 32-byte block twice: "Invalid free"
 * Every mode exits 0 (memcheck reports, the program does not crash).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keeps the compiler from proving a load or store dead. */
static volatile unsigned char sink;

/* The same pointer, through a volatile (taken before the free): the compiler neither sees the
 * bug (gcc's -Wuse-after-free, -Warray-bounds) nor optimises it away. */
static void *volatile hidden;
static void *hide(void *p) {
    hidden = p;
    return hidden;
}

/* A heap block whose only pointer is dropped before return (the pointer is not left in a
 * register or stack slot the leak checker would scan: the frame is gone). */
static __attribute__((noinline)) void leak_one(size_t size) {
    unsigned char *p = malloc(size);
    if (!p) abort();
    memset(p, 1, size);
    sink = p[size / 2];
}

/* Allocates and frees a few blocks and formats a line: registers and stack slots that held a
 * leaked pointer now hold something else. */
static void churn(void) {
    char line[128];
    for (int i = 0; i < 8; i++) {
        void *p = malloc(24 + (size_t)i * 40);
        snprintf(line, sizeof line, "%p %d", p, i);
        free(p);
    }
    sink = (unsigned char)line[0];
}

static int leak(void) {
    /* Small blocks between live neighbours of the same slab (none is the slab's first block),
     * large (100 KiB: a span of a segment) and huge (3 MiB: a mapping of its own) blocks, two
     * of each kind: a stale copy of one pointer in a register cannot hide every leak of its
     * kind. */
    void *before = malloc(100);
    for (int i = 0; i < 3; i++) leak_one(100);
    void *after = malloc(100);
    for (int i = 0; i < 2; i++) leak_one(100 << 10);
    for (int i = 0; i < 2; i++) leak_one(3 << 20);
    churn();
    free(before);
    free(after);
    printf("leaked 3 x 100 B, 2 x 100 KiB, 2 x 3 MiB\n");
    return 0;
}

static int read_after_free(void) {
    unsigned char *p = malloc(64);
    if (!p) abort();
    memset(p, 7, 64);
    unsigned char *q = hide(p);
    free(p);
    sink = q[8]; /* the bug */
    printf("read after free done\n");
    return 0;
}

static int overrun(void) {
    /* 48 bytes is a size class, so byte 48 is the first byte of the next block, which is free. */
    unsigned char *p = malloc(48);
    if (!p) abort();
    memset(p, 0, 48);
    ((unsigned char *)hide(p))[48] = 1; /* the bug */
    free(p);
    printf("overrun done\n");
    return 0;
}

static int double_free(void) {
    void *keep = malloc(32);
    void *p = malloc(32);
    if (!p || !keep) abort();
    void *q = hide(p);
    free(p);
    free(q); /* the bug */
    free(keep);
    printf("double free done\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s leak|read-after-free|overrun|double-free\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    if (!strcmp(mode, "leak")) return leak();
    if (!strcmp(mode, "read-after-free")) return read_after_free();
    if (!strcmp(mode, "overrun")) return overrun();
    if (!strcmp(mode, "double-free")) return double_free();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}

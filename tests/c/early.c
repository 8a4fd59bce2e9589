/*
 * early.c - a shared library whose constructor allocates before libscopealloc's own
 * constructor has run (preloaded as LD_PRELOAD="libscopealloc.so:libearly.so", the loader
 * initialises libearly.so first). The blocks it keeps are freed by its destructor, after the
 * program, so they cross the whole life of the process; a thread is started and joined from
 * the constructor too. Used by scripts/preload-tests.sh.
 *
 * Build: cc -O2 -shared -fPIC -pthread tests/c/early.c -o libearly.so
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *kept[64];
static size_t kept_size[64];

/* A failed check prints one line and aborts: the run then differs from the plain one (status,
 * signal), which is how scripts/preload-tests.sh sees it. */
static void check(int ok, const char *what, int i) {
    if (ok) return;
    char line[160];
    int n = snprintf(line, sizeof line, "early.c: check failed: %s (block %d)\n", what, i);
    if (n > 0) write(2, line, (size_t)n);
    abort();
}

static int holds(const unsigned char *p, unsigned char v, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (p[k] != v) return 0;
    return 1;
}

static void *thread_main(void *arg) {
    char *p = malloc(1000);
    check(p != NULL, "malloc in a thread", 0);
    memset(p, 1, 1000);
    check(holds((unsigned char *)p, 1, 1000), "a thread's block holds its bytes", 0);
    free(p);
    return strdup(arg);
}

__attribute__((constructor)) static void early_allocations(void) {
    for (int i = 0; i < 64; i++) {
        size_t n = i % 3 ? (size_t)i * 100 + 1 : (size_t)i * 5000 + 1;
        unsigned char *p = i % 3 ? malloc(n) : calloc(1, n);
        check(p != NULL, "malloc/calloc before the constructor", i);
        if (i % 3 == 0) check(holds(p, 0, n), "calloc before the constructor is zeroed", i);
        memset(p, (unsigned char)i, n);
        size_t m = (size_t)i * 150 + 1;
        unsigned char *q = realloc(p, m);
        check(q != NULL, "realloc before the constructor", i);
        check(holds(q, (unsigned char)i, n < m ? n : m), "realloc keeps the contents", i);
        memset(q, (unsigned char)(i + 1), m);
        kept[i] = q;
        kept_size[i] = m;
    }
    void *p = NULL;
    check(posix_memalign(&p, 4096, 10000) == 0 && p != NULL && ((uintptr_t)p & 4095) == 0,
          "posix_memalign(4096) before the constructor", 0);
    memset(p, 9, 10000);
    free(p);
    pthread_t t;
    void *ret = NULL;
    check(pthread_create(&t, NULL, thread_main, "from the constructor") == 0, "pthread_create", 0);
    pthread_join(t, &ret);
    check(ret != NULL && strcmp(ret, "from the constructor") == 0, "strdup in a thread", 0);
    free(ret);
}

__attribute__((destructor)) static void late_frees(void) {
    for (int i = 0; i < 64; i++) {
        check(holds(kept[i], (unsigned char)(i + 1), kept_size[i]), "a block kept over the program's life is intact", i);
        free(kept[i]);
    }
}

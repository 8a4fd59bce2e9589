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
#include <stdlib.h>
#include <string.h>

static void *kept[64];

static void *thread_main(void *arg) {
    char *p = malloc(1000);
    memset(p, 1, 1000);
    free(p);
    return strdup(arg);
}

__attribute__((constructor)) static void early_allocations(void) {
    for (int i = 0; i < 64; i++) {
        kept[i] = i % 3 ? malloc((size_t)i * 100 + 1) : calloc(1, (size_t)i * 5000 + 1);
        kept[i] = realloc(kept[i], (size_t)i * 150 + 1);
    }
    void *p = NULL;
    if (posix_memalign(&p, 4096, 10000) == 0) free(p);
    pthread_t t;
    void *ret = NULL;
    if (pthread_create(&t, NULL, thread_main, "from the constructor") == 0) {
        pthread_join(t, &ret);
        free(ret);
    }
}

__attribute__((destructor)) static void late_frees(void) {
    for (int i = 0; i < 64; i++) free(kept[i]);
}

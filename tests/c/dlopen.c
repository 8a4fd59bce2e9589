/*
 * dlopen.c - libscopealloc.so loaded by dlopen after start-up, with threads already running:
 * its fast paths' thread-local words are initial-exec TLS (src/platform/tls.rs), which glibc
 * must then place in its static TLS surplus, for the threads that exist and for new ones.
 * Each thread allocates and frees through the library's own malloc/free (found by dlsym: a
 * library opened RTLD_LOCAL does not replace the program's malloc) inside a scope of its own,
 * and checks the scope's figures: exact figures per thread show that each thread reached its
 * own words.
 *
 * Usage: dlopen /path/to/libscopealloc.so      Prints "N passed, 0 failed" last.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scopealloc.h"

static int passed, failed;
#define CHECK(cond)                                                            \
    do {                                                                       \
        if (cond) {                                                            \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
        }                                                                      \
    } while (0)

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
static scopealloc_scope_t *(*lib_root)(void);
static scopealloc_scope_t *(*lib_scope_new)(scopealloc_scope_t *, const char *);
static scopealloc_prev_t *(*lib_enter)(scopealloc_scope_t *);
static void (*lib_leave)(scopealloc_prev_t *);
static int (*lib_stats)(scopealloc_scope_t *, struct scopealloc_stats *);
static void (*lib_release)(scopealloc_scope_t *);
static void (*lib_close)(scopealloc_scope_t *);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t opened = PTHREAD_COND_INITIALIZER;
static int is_open;

#define N 1000

/* Allocates N blocks of 100 bytes in a scope of its own, checks the scope counts exactly them,
 * frees them and checks it is empty. Returns the number of failed checks. */
static int work(const char *name) {
    scopealloc_scope_t *root = lib_root();
    scopealloc_scope_t *s = lib_scope_new(root, name);
    if (!s) return 1;
    scopealloc_prev_t *prev = lib_enter(s);
    void *p[N];
    int bad = 0;
    for (int i = 0; i < N; i++) {
        p[i] = lib_malloc(100);
        if (!p[i]) bad++;
        else memset(p[i], i & 0xff, 100);
    }
    struct scopealloc_stats st;
    lib_stats(s, &st);
    if (st.objects != N || st.bytes != (uint64_t)N * 112) bad++;
    for (int i = 0; i < N; i++) {
        if (((unsigned char *)p[i])[99] != (i & 0xff)) bad++;
        lib_free(p[i]);
    }
    lib_stats(s, &st);
    if (st.objects != 0 || st.bytes != 0) bad++;
    lib_leave(prev);
    lib_close(s);
    lib_release(s);
    lib_release(root);
    return bad;
}

/* A thread that exists before the dlopen and works once the library is open. */
static void *early_thread(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    while (!is_open) pthread_cond_wait(&opened, &lock);
    pthread_mutex_unlock(&lock);
    if (!lib_close) return NULL; /* the dlopen failed: main reports it */
    return (void *)(intptr_t)work("early");
}

static void *late_thread(void *arg) {
    (void)arg;
    return (void *)(intptr_t)work("late");
}

#define SYM(var, name)                                                         \
    do {                                                                       \
        *(void **)&var = dlsym(lib, name);                                     \
        CHECK(var != NULL);                                                    \
        if (!var) goto out;                                                    \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: dlopen LIB\n");
        return 2;
    }
    pthread_t early[2], late[2];
    for (int i = 0; i < 2; i++) pthread_create(&early[i], NULL, early_thread, NULL);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) printf("dlopen: %s\n", dlerror());
    CHECK(lib != NULL);
    if (lib) {
        SYM(lib_malloc, "malloc");
        SYM(lib_free, "free");
        SYM(lib_root, "scopealloc_root");
        SYM(lib_scope_new, "scopealloc_scope_new");
        SYM(lib_enter, "scopealloc_enter");
        SYM(lib_leave, "scopealloc_leave");
        SYM(lib_stats, "scopealloc_stats");
        SYM(lib_release, "scopealloc_scope_release");
        SYM(lib_close, "scopealloc_close");
        CHECK(work("main") == 0);
    }
out:
    pthread_mutex_lock(&lock);
    is_open = 1;
    pthread_cond_broadcast(&opened);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(early[i], &r);
        if (lib_close) CHECK(r == NULL);
    }
    if (lib_close) {
        for (int i = 0; i < 2; i++) pthread_create(&late[i], NULL, late_thread, NULL);
        for (int i = 0; i < 2; i++) {
            void *r;
            pthread_join(late[i], &r);
            CHECK(r == NULL);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

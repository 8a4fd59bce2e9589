/*
 * threads.c - a multithreaded allocation workload for LD_PRELOAD runs: producer threads
 * allocate messages (sizes from 1 byte to 256 KiB, some grown with realloc, some aligned),
 * consumer threads verify and free them (cross-thread frees); every thread also churns
 * thread-local blocks; short-lived threads come and go. The output (counts and a checksum)
 * depends only on the seed, so a run on glibc and a run on scopealloc must print the same.
 *
 * Usage: threads [producers consumers messages-per-producer seed]   (default 3 3 60000 1)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUEUE 1024

struct msg {
    uint64_t id;
    size_t len;
    unsigned char data[];
};

static struct msg *queue[QUEUE];
static size_t head, tail;
static int producers_left;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER, not_full = PTHREAD_COND_INITIALIZER;
static uint64_t total_sum, total_msgs, total_bad;
static int nmessages;
static unsigned seed;

static uint64_t rng(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t *s) {
    uint64_t r = rng(s);
    switch (r % 16) {
    case 0: return r >> 40 & 0x3ffff;         /* up to 256 KiB */
    case 1: case 2: return r >> 40 & 0x3fff;  /* up to 16 KiB */
    default: return r >> 40 & 0x1ff;          /* up to 512 B */
    }
}

static void push(struct msg *m) {
    pthread_mutex_lock(&lock);
    while (tail - head == QUEUE) pthread_cond_wait(&not_full, &lock);
    queue[tail++ % QUEUE] = m;
    pthread_cond_signal(&not_empty);
    pthread_mutex_unlock(&lock);
}

static struct msg *pop(void) {
    pthread_mutex_lock(&lock);
    while (head == tail && producers_left > 0) pthread_cond_wait(&not_empty, &lock);
    struct msg *m = head == tail ? NULL : queue[head++ % QUEUE];
    pthread_cond_signal(&not_full);
    pthread_mutex_unlock(&lock);
    return m;
}

static void *producer(void *arg) {
    uint64_t s = seed * 7919u + (uintptr_t)arg * 104729u + 1;
    void *local[64] = {0};
    for (int i = 0; i < nmessages; i++) {
        size_t len = pick_size(&s);
        struct msg *m;
        if (i % 7 == 0) {
            /* grow in steps with realloc */
            m = malloc(sizeof *m + len / 4);
            m = realloc(m, sizeof *m + len / 2);
            m = realloc(m, sizeof *m + len);
        } else if (i % 11 == 0) {
            void *p = NULL;
            if (posix_memalign(&p, 64, sizeof *m + len)) abort();
            m = p;
        } else {
            m = malloc(sizeof *m + len);
        }
        if (!m) abort();
        m->id = (uint64_t)(uintptr_t)arg << 32 | (uint64_t)i;
        m->len = len;
        for (size_t k = 0; k < len; k++) m->data[k] = (unsigned char)(m->id + k);
        push(m);
        /* thread-local churn */
        int slot = (int)(rng(&s) % 64);
        free(local[slot]);
        local[slot] = calloc(1, pick_size(&s) + 1);
    }
    for (int k = 0; k < 64; k++) free(local[k]);
    pthread_mutex_lock(&lock);
    producers_left--;
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    uint64_t sum = 0, n = 0, bad = 0;
    struct msg *m;
    while ((m = pop()) != NULL) {
        for (size_t k = 0; k < m->len; k++) {
            if (m->data[k] != (unsigned char)(m->id + k)) {
                bad++;
                break;
            }
            sum += m->data[k];
        }
        sum += m->id;
        n++;
        free(m);
    }
    pthread_mutex_lock(&lock);
    total_sum += sum;
    total_msgs += n;
    total_bad += bad;
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *short_lived(void *arg) {
    char *p = malloc(100 + (uintptr_t)arg);
    if (!p) return NULL;
    memset(p, 1, 100 + (uintptr_t)arg);
    char *q = strdup("short-lived thread");
    free(p);
    return q; /* freed by the joiner: another cross-thread free */
}

int main(int argc, char **argv) {
    int np = argc > 1 ? atoi(argv[1]) : 3;
    int nc = argc > 2 ? atoi(argv[2]) : 3;
    nmessages = argc > 3 ? atoi(argv[3]) : 60000;
    seed = argc > 4 ? (unsigned)atoi(argv[4]) : 1;
    producers_left = np;
    pthread_t *t = calloc((size_t)(np + nc), sizeof *t);
    if (!t) {
        fputs("threads: out of memory for the thread array\n", stderr);
        return 1;
    }
    for (int i = 0; i < np; i++) pthread_create(&t[i], NULL, producer, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < nc; i++) pthread_create(&t[np + i], NULL, consumer, NULL);

    size_t short_len = 0;
    for (int round = 0; round < 200; round++) {
        pthread_t s;
        void *ret;
        pthread_create(&s, NULL, short_lived, (void *)(uintptr_t)round);
        pthread_join(s, &ret);
        short_len += strlen(ret);
        free(ret);
    }
    for (int i = 0; i < np + nc; i++) pthread_join(t[i], NULL);
    free(t);
    printf("messages %llu, corrupted %llu, checksum %llu, short-lived %zu\n", (unsigned long long)total_msgs,
           (unsigned long long)total_bad, (unsigned long long)total_sum, short_len);
    return total_bad != 0 || total_msgs != (uint64_t)np * (uint64_t)nmessages;
}

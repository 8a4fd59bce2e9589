/* prodcons.c - objects handed from thread to thread through queues.
 *
 * Usage: prodcons MODE [MESSAGES] [SEED=1]
 *   prodcons batch [1000000] [SEED]    one producer, one consumer
 *   prodcons pipeline [600000] [SEED]  three stages, two queues
 *
 * batch: the producer mallocs MESSAGES objects of 64..256 B, writes a
 * sequence number and a tag into each and sends them in batches of BATCH
 * (the batch array itself malloc'ed too, as a Vec sent through a channel
 * would be) through a bounded queue; the consumer checks and frees every
 * object and the batch array. Every object is freed by the thread that did
 * not allocate it.
 *
 * pipeline: stage 1 mallocs a message of 32..512 B and sends it to stage 2;
 * stage 2 receives it, mallocs the next message (of a new random size, its
 * payload derived from the one received), frees the one it received and
 * sends its own to stage 3, which checks and frees it. Like a Rust program
 * passing owned buffers through two sync_channels: every message is freed
 * by the next thread, one by one.
 *
 * The queues are bounded rings of QCAP pointers under a mutex with two
 * condition variables (the shape of a bounded channel). Checksum: a sum over
 * the messages' contents as the last stage saw them; it depends only on the
 * arguments, since each queue has one sender and one receiver and is FIFO.
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

#define QCAP 64
#define BATCH 128

typedef struct {
    void *items[QCAP];
    int head, len;
    pthread_mutex_t mu;
    pthread_cond_t notempty, notfull;
} queue_t;

static void q_init(queue_t *q) {
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->notempty, NULL);
    pthread_cond_init(&q->notfull, NULL);
}

static void q_send(queue_t *q, void *item) {
    pthread_mutex_lock(&q->mu);
    while (q->len == QCAP) pthread_cond_wait(&q->notfull, &q->mu);
    q->items[(q->head + q->len++) % QCAP] = item;
    pthread_cond_signal(&q->notempty);
    pthread_mutex_unlock(&q->mu);
}

static void *q_recv(queue_t *q) {
    pthread_mutex_lock(&q->mu);
    while (q->len == 0) pthread_cond_wait(&q->notempty, &q->mu);
    void *item = q->items[q->head];
    q->head = (q->head + 1) % QCAP;
    q->len--;
    pthread_cond_signal(&q->notfull);
    pthread_mutex_unlock(&q->mu);
    return item;
}

/* A message: its size, its sequence number, a tag, then payload bytes. The
 * last byte of the payload repeats the tag's low byte. */
typedef struct { uint32_t size; uint32_t seq; uint64_t tag; unsigned char bytes[]; } msg_t;

static long messages;
static uint64_t seed;
static queue_t q1, q2;
static int failed;

static msg_t *msg_new(uint64_t *r, size_t lo, size_t hi, uint32_t seq, uint64_t tag) {
    size_t size = lo + splitmix(r) % (hi - lo + 1);
    msg_t *m = malloc(size);
    if (!m) { fprintf(stderr, "prodcons: malloc(%zu) failed\n", size); exit(3); }
    m->size = (uint32_t)size;
    m->seq = seq;
    m->tag = tag;
    memset(m->bytes, (int)(tag & 0xff), size - sizeof(msg_t));
    return m;
}

/* checks a message and returns its contribution to the checksum */
static uint64_t msg_check(const msg_t *m, uint32_t want_seq) {
    if (m->seq != want_seq || m->bytes[m->size - sizeof(msg_t) - 1] != (unsigned char)m->tag) {
        if (!failed) fprintf(stderr, "prodcons: message %u corrupted or out of order\n", want_seq);
        failed = 1;
    }
    return m->tag ^ ((uint64_t)m->size << 48);
}

typedef struct { int n; msg_t *items[]; } batch_t;

static void *batch_producer(void *arg) {
    (void)arg;
    uint64_t r = seed;
    for (long i = 0; i < messages;) {
        int n = messages - i < BATCH ? (int)(messages - i) : BATCH;
        batch_t *b = malloc(sizeof(batch_t) + (size_t)n * sizeof(msg_t *));
        if (!b) { fprintf(stderr, "prodcons: malloc failed\n"); exit(3); }
        b->n = n;
        for (int k = 0; k < n; k++, i++) b->items[k] = msg_new(&r, 64, 256, (uint32_t)i, splitmix(&r));
        q_send(&q1, b);
    }
    return NULL;
}

static uint64_t batch_consumer(void) {
    uint64_t sum = 0;
    for (long i = 0; i < messages;) {
        batch_t *b = q_recv(&q1);
        for (int k = 0; k < b->n; k++, i++) {
            sum += msg_check(b->items[k], (uint32_t)i);
            free(b->items[k]);
        }
        free(b);
    }
    return sum;
}

static void *stage1(void *arg) {
    (void)arg;
    uint64_t r = seed;
    for (long i = 0; i < messages; i++) q_send(&q1, msg_new(&r, 32, 512, (uint32_t)i, splitmix(&r)));
    return NULL;
}

static void *stage2(void *arg) {
    (void)arg;
    uint64_t r = seed ^ 0x5555555555555555ULL;
    for (long i = 0; i < messages; i++) {
        msg_t *in = q_recv(&q1);
        msg_check(in, (uint32_t)i);
        msg_t *out = msg_new(&r, 32, 512, (uint32_t)i, in->tag * 0x9e3779b97f4a7c15ULL + in->size);
        free(in);
        q_send(&q2, out);
    }
    return NULL;
}

static uint64_t stage3(void) {
    uint64_t sum = 0;
    for (long i = 0; i < messages; i++) {
        msg_t *m = q_recv(&q2);
        sum += msg_check(m, (uint32_t)i);
        free(m);
    }
    return sum;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    int pipeline = strcmp(mode, "pipeline") == 0;
    if (!pipeline && strcmp(mode, "batch") != 0) {
        fprintf(stderr, "usage: prodcons batch|pipeline [MESSAGES] [SEED]\n");
        return 2;
    }
    messages = argc > 2 ? atol(argv[2]) : pipeline ? 600000 : 1000000;
    seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    if (messages < 1 || messages > 0xffffffffL) { fprintf(stderr, "prodcons: bad MESSAGES\n"); return 2; }
    q_init(&q1);
    q_init(&q2);
    pthread_t t1, t2;
    uint64_t sum;
    if (pipeline) {
        if (pthread_create(&t1, NULL, stage1, NULL) || pthread_create(&t2, NULL, stage2, NULL)) return 3;
        sum = stage3();
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
    } else {
        if (pthread_create(&t1, NULL, batch_producer, NULL)) return 3;
        sum = batch_consumer();
        pthread_join(t1, NULL);
    }
    if (failed) return 1;
    printf("prodcons mode=%s messages=%ld checksum=%016llx\n", mode, messages, (unsigned long long)sum);
    return 0;
}

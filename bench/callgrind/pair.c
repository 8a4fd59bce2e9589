/*
 * pair.c - N malloc/free pairs of one size, for counting instructions per pair with callgrind
 * under LD_PRELOAD (scripts/callgrind-pair.sh). The pointer goes through a volatile so the
 * compiler keeps every call.
 *
 * Usage: pair N [SIZE=64]
 */
#include <stdlib.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 64;
    void *volatile sink;
    for (long i = 0; i < n; i++) {
        void *p = malloc(size);
        sink = p;
        free(p);
    }
    (void)sink;
    return 0;
}

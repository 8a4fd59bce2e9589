/*
 * pair.c - N malloc/free pairs of one size, for counting instructions per pair with callgrind
 * under LD_PRELOAD (scripts/callgrind-pair.sh). The pointer goes through a volatile so the
 * compiler keeps every call.
 *
 * Usage: pair N [SIZE=64]
 * With PAIR_KEEP=1 in the environment, one more block of SIZE stays live during the loop, so
 * that no free empties its page: an allocator that retires an empty page at free (mimalloc)
 * otherwise pays for that at every pair, which a real program seldom makes it do.
 */
#include <stdlib.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 64;
    const char *keep_env = getenv("PAIR_KEEP");
    void *volatile keep = keep_env && *keep_env == '1' ? malloc(size) : NULL;
    void *volatile sink;
    for (long i = 0; i < n; i++) {
        void *p = malloc(size);
        sink = p;
        free(p);
    }
    (void)sink;
    free(keep);
    return 0;
}

/* glibc-simple.c - single-threaded malloc/free loop of small sizes (after
 * glibc's benchtests/bench-malloc-simple.c, as used by mimalloc-bench).
 *
 * Usage: glibc-simple [ITERS=4000000] [SEED=1]
 *
 * For each block size in {16, 32, 64, 128} and each batch length in
 * {25, 100, 400, 1600}: repeatedly malloc a batch of blocks (writing one
 * byte into each) and then free them in allocation order, for ITERS
 * malloc/free pairs per (size, batch) combination. Checksum: sum of the
 * bytes read back before each free.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 4000000;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    if (iters < 1) { fprintf(stderr, "usage: glibc-simple ITERS SEED\n"); return 2; }
    static const size_t sizes[] = {16, 32, 64, 128};
    static const int batches[] = {25, 100, 400, 1600};
    void *a[1600];
    uint64_t sum = 0;
    unsigned char v = (unsigned char)seed;
    for (int si = 0; si < 4; si++) {
        for (int bi = 0; bi < 4; bi++) {
            int n = batches[bi];
            for (long done = 0; done < iters; done += n) {
                for (int j = 0; j < n; j++) {
                    unsigned char *p = malloc(sizes[si]);
                    if (!p) { fprintf(stderr, "glibc-simple: malloc failed\n"); return 3; }
                    p[sizes[si] - 1] = v++;
                    a[j] = p;
                }
                for (int j = 0; j < n; j++) {
                    unsigned char *p = a[j];
                    sum += p[sizes[si] - 1];
                    free(p);
                }
            }
        }
    }
    printf("glibc-simple iters=%ld checksum=%016llx\n", iters, (unsigned long long)sum);
    return 0;
}

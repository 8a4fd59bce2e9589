/*
 * request_scopes.c - per-request accounting from C with libscopealloc.
 *
 * A toy server handles requests for two tenants. Each tenant has a scope with a hard limit;
 * each request runs in its own child scope, so every malloc made while handling it (by this
 * code or by libc on its behalf) is charged to the request and to its tenant. One request
 * asks for more than its tenant may use: its malloc returns NULL and the request fails
 * cleanly, while the other tenant is unaffected. At the end the program prints each tenant's
 * figures and the allocator's report.
 *
 * Build and run (from the repository root):
 *   cargo build -p scopealloc-ffi --release
 *   cc -O2 -I ffi/include examples/c/request_scopes.c -L target/release -lscopealloc \
 *      -Wl,-rpath,$PWD/target/release -o request_scopes
 *   ./request_scopes
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scopealloc.h"

#define MiB ((size_t)1 << 20)

struct tenant {
    const char *name;
    size_t limit;
    scopealloc_scope_t *scope;
};

/* Handles one request: builds a response of `size` bytes in a few pieces. Returns 0, or -1 if
 * memory was refused. All allocations are charged to the current scope (the request's). */
static int handle(size_t size, size_t *checksum) {
    char *header = malloc(256);
    if (!header) return -1;
    snprintf(header, 256, "response of %zu bytes", size);
    char *body = malloc(size);
    if (!body) {
        int err = errno;
        free(header);
        errno = err;
        return -1;
    }
    for (size_t i = 0; i < size; i += 4096) body[i] = (char)(i / 4096);
    char *copy = strdup(header); /* libc allocates on the request's behalf: also charged */
    size_t sum = strlen(copy);
    for (size_t i = 0; i < size; i += 4096) sum += (unsigned char)body[i];
    *checksum += sum;
    free(copy);
    free(body);
    free(header);
    return 0;
}

static void print_stats(const char *label, scopealloc_scope_t *s) {
    struct scopealloc_stats st;
    scopealloc_stats(s, &st);
    char name[64];
    scopealloc_scope_name(s, name, sizeof name);
    printf("%-8s %-10s live %8llu bytes in %3llu objects, peak %8llu, allocs %5llu, frees %5llu, limit hits %llu\n",
           label, name, (unsigned long long)st.bytes, (unsigned long long)st.objects,
           (unsigned long long)st.peak_bytes, (unsigned long long)st.allocs, (unsigned long long)st.frees,
           (unsigned long long)st.limit_hits);
}

int main(void) {
    struct tenant tenants[] = {
        {"alpha", 8 * MiB, NULL},
        {"beta", 2 * MiB, NULL},
    };
    /* One request list: (tenant, response size). Beta's 3 MiB request passes its limit. */
    static const struct {
        int tenant;
        size_t size;
    } requests[] = {
        {0, 100000}, {1, 50000}, {0, 3 * MiB}, {1, 3 * MiB}, {1, 200000}, {0, 5 * MiB}, {1, 1 * MiB},
    };

    scopealloc_scope_t *server = scopealloc_scope_new(NULL, "server");
    for (int t = 0; t < 2; t++) {
        tenants[t].scope = scopealloc_scope_new(server, tenants[t].name);
        scopealloc_set_limit(tenants[t].scope, tenants[t].limit);
    }

    /* A long-lived cache per tenant, charged to the tenant itself. */
    char *caches[2];
    for (int t = 0; t < 2; t++) {
        scopealloc_prev_t *prev = scopealloc_enter(tenants[t].scope);
        caches[t] = malloc(512 * 1024);
        memset(caches[t], 'a' + t, 512 * 1024);
        scopealloc_leave(prev);
    }

    size_t checksum = 0;
    int failures = 0;
    for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
        struct tenant *tn = &tenants[requests[i].tenant];
        char name[32];
        snprintf(name, sizeof name, "request-%zu", i);
        scopealloc_scope_t *req = scopealloc_scope_new(tn->scope, name);

        scopealloc_prev_t *prev = scopealloc_enter(req);
        int rc = handle(requests[i].size, &checksum);
        int err = errno;
        scopealloc_leave(prev);

        struct scopealloc_stats st;
        scopealloc_stats(req, &st);
        if (rc == 0) {
            printf("%-5s %-10s ok      %zu bytes, peak %llu\n", tn->name, name, requests[i].size,
                   (unsigned long long)st.peak_bytes);
        } else {
            failures++;
            printf("%-5s %-10s refused %zu bytes: %s (tenant limit %zu)\n", tn->name, name, requests[i].size,
                   strerror(err), tn->limit);
        }
        scopealloc_scope_release(req); /* last handle: the request scope closes */
    }

    for (int t = 0; t < 2; t++) checksum += (unsigned char)caches[t][4242];
    printf("\nchecksum %zu, %d request(s) refused\n\n", checksum, failures);
    for (int t = 0; t < 2; t++) print_stats("tenant", tenants[t].scope);
    print_stats("total", server);

    printf("\nallocator report:\n");
    fflush(stdout);
    scopealloc_print_stats(STDOUT_FILENO);

    for (int t = 0; t < 2; t++) {
        free(caches[t]);
        scopealloc_scope_release(tenants[t].scope);
    }
    scopealloc_scope_release(server);
    return failures == 1 ? 0 : 1; /* exactly beta's 3 MiB request must be refused */
}

/*
 * forkexec.c - fork and exec from a threaded program, for LD_PRELOAD runs. Worker threads
 * allocate and free without pause while the main thread forks: some children allocate,
 * free and _exit (they must not inherit a lock held by a worker), some exec /bin/echo, and
 * some call system() and popen(). The output depends only on the arguments, so a run on
 * glibc and a run on scopealloc must print the same.
 *
 * Usage: forkexec [forks workers]   (default 60 2)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_int stop;

static void *worker(void *arg) {
    uint64_t s = (uintptr_t)arg + 1;
    void *slots[256] = {0};
    while (!atomic_load(&stop)) {
        s = s * 6364136223846793005u + 1442695040888963407u;
        int k = (int)(s >> 56);
        free(slots[k]);
        size_t n = (s >> 20) % ((s & 1) ? 300000 : 2000);
        slots[k] = malloc(n + 1);
        if (slots[k]) memset(slots[k], k, n + 1);
    }
    for (int k = 0; k < 256; k++) free(slots[k]);
    return NULL;
}

/* In the child of a threaded parent: allocate a lot, check it, exit. */
static int child_work(int i) {
    size_t total = 0;
    void *blocks[100];
    for (int k = 0; k < 100; k++) {
        size_t n = (size_t)(k * 997 + i) % 70000 + 1;
        blocks[k] = malloc(n);
        if (!blocks[k]) return 2;
        memset(blocks[k], k, n);
        total += n;
    }
    for (int k = 0; k < 100; k++) free(blocks[k]);
    char *s = NULL;
    if (asprintf(&s, "child %d allocated %zu", i, total) < 0) return 3;
    free(s);
    return 0;
}

int main(int argc, char **argv) {
    int forks = argc > 1 ? atoi(argv[1]) : 60;
    int workers = argc > 2 ? atoi(argv[2]) : 2;
    pthread_t t[16];
    for (int i = 0; i < workers && i < 16; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);

    int ok = 0, failed = 0;
    for (int i = 0; i < forks; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            int rc = child_work(i);
            if (rc != 0 || i % 3 != 0) _exit(rc);
            char arg[32];
            snprintf(arg, sizeof arg, "exec %d", i);
            execl("/bin/echo", "echo", arg, (char *)NULL);
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
        else
            failed++, printf("child %d: status %#x\n", i, status);
    }
    /* system() and popen() fork/exec a shell from the threaded parent too. */
    if (system("echo system ok") != 0) failed++;
    FILE *p = popen("echo popen ok", "r");
    char line[64] = "";
    if (!p || !fgets(line, sizeof line, p)) failed++;
    if (p) pclose(p);
    printf("popen read: %s", line);

    atomic_store(&stop, 1);
    for (int i = 0; i < workers && i < 16; i++) pthread_join(t[i], NULL);
    printf("forks %d ok, %d failed\n", ok, failed);
    return failed != 0;
}

/*
 * segv_where.c - preloaded by tests/ffi_faults.rs into C test programs that do not expect
 * malloc to return NULL: when such a program dies of SIGSEGV or SIGBUS, this prints one line
 * naming the object (program, libc, libscopealloc.so) that holds the faulting instruction and
 * the one that holds its caller, then exits with 128 + the signal. The caller on x86-64 is the
 * first word from the top of the stack up that points into code of a loaded object (per
 * /proc/self/maps, read into a static buffer): the return address itself for libc's leaf
 * string functions, where these programs fault on a NULL, and for a function that pushed
 * registers first, the first return address above them (a saved register that points into code
 * can name an object too: the test's rule, "neither is the library", stays on the safe side
 * only if the library is named whenever its code is on the stack first). On aarch64 it is the
 * link register. "?" when nothing is found, which the test counts against the library. The
 * test can then tell a program's own use of a NULL from a crash inside the allocator.
 * Allocates nothing.
 *
 * Build: cc -O1 -shared -fPIC tests/c/segv_where.c -o libsegv_where.so -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static void say(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static const char *object_of(void *pc) {
    Dl_info info;
    if (dladdr(pc, &info) && info.dli_fname && info.dli_fname[0]) return info.dli_fname;
    return "?";
}

#if defined(__x86_64__)
/* /proc/self/maps, read once in the handler (open and read are async-signal-safe). */
static char maps[1 << 17];

/* The hexadecimal number at *c, up to `stop`; *c is left on `stop` (or the string's end). */
static uintptr_t hex(const char **c, char stop) {
    uintptr_t v = 0;
    for (; **c && **c != stop; (*c)++)
        v = v * 16 + (uintptr_t)(**c <= '9' ? **c - '0' : (**c | 32) - 'a' + 10);
    return v;
}

/* Whether `a` lies in an executable mapping of a file. */
static int in_code(uintptr_t a) {
    for (const char *l = maps; *l;) {
        const char *end = strchr(l, '\n');
        const char *c = l;
        uintptr_t lo = hex(&c, '-');
        if (*c == '-') c++;
        uintptr_t hi = hex(&c, ' ');
        /* " r-xp offset dev inode   path": executable, and a path after the inode. */
        if (a >= lo && a < hi && c[1] && c[3] == 'x' && (end ? memchr(c, '/', end - c) : strchr(c, '/')))
            return 1;
        if (!end) break;
        l = end + 1;
    }
    return 0;
}

/* The first word from `sp` up (64 at most) that points into code: the nearest return address. */
static void *caller_on_stack(void **sp) {
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd < 0) return NULL;
    size_t n = 0;
    for (ssize_t r; n < sizeof maps - 1 && (r = read(fd, maps + n, sizeof maps - 1 - n)) > 0;)
        n += (size_t)r;
    close(fd);
    maps[n] = 0;
    for (int i = 0; i < 64; i++)
        if (in_code((uintptr_t)sp[i])) return sp[i];
    return NULL;
}
#endif

static void on_fault(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    void *pc = NULL, *caller = NULL;
    (void)si;
#if defined(__x86_64__)
    pc = (void *)uc->uc_mcontext.gregs[REG_RIP];
    caller = caller_on_stack((void **)uc->uc_mcontext.gregs[REG_RSP]);
#elif defined(__aarch64__)
    pc = (void *)uc->uc_mcontext.pc;
    caller = (void *)uc->uc_mcontext.regs[30];
#endif
    say("segv-where: pc in ");
    say(object_of(pc));
    say(", caller in ");
    say(object_of(caller));
    say("\n");
    _exit(128 + sig);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
}

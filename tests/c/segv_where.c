/*
 * segv_where.c - preloaded by tests/ffi_faults.rs into C test programs that do not expect
 * malloc to return NULL: when such a program dies of SIGSEGV or SIGBUS, this prints one line
 * naming the object (program, libc, libscopealloc.so) that holds the faulting instruction and
 * the one that holds its caller (the return address on top of the stack on x86-64 - exact for
 * libc's leaf string functions, where these programs fault on a NULL - or the link register on
 * aarch64; "?" elsewhere, which the test counts against the library), then exits with 128 +
 * the signal. The test can then tell a program's own use of a NULL from a crash inside the
 * allocator. Allocates nothing.
 *
 * Build: cc -O1 -shared -fPIC tests/c/segv_where.c -o libsegv_where.so -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
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

static void on_fault(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    void *pc = NULL, *caller = NULL;
    (void)si;
#if defined(__x86_64__)
    pc = (void *)uc->uc_mcontext.gregs[REG_RIP];
    caller = *(void **)uc->uc_mcontext.gregs[REG_RSP];
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

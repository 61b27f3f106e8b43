/* A native backtrace for a process that dies of SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT, for hosts without gdb.
 *
 * Build and use (benchmarks/llamacpp_diag.py does this when a variant crashes and a C compiler exists):
 *   cc -shared -fPIC -O1 -o segv_backtrace.so benchmarks/segv_backtrace.c
 *   LD_PRELOAD=$PWD/segv_backtrace.so python3 ...
 * The handler is installed when the library loads; Python's faulthandler (PYTHONFAULTHANDLER=1), installed
 * later, dumps the Python stack first and then re-raises the signal to this handler. Frames in shared
 * libraries print as "lib.so(symbol+0xoff)" or "lib.so(+0xoff)" (backtrace_symbols_fd of glibc).
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_fatal(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    char head[160];
    int n = snprintf(head, sizeof head, "\n=== native backtrace: signal %d, fault address %p, thread %ld ===\n",
                     sig, si ? si->si_addr : NULL, (long)gettid());
    if (n > 0) (void)!write(2, head, (size_t)n);
    void *frames[96];
    int depth = backtrace(frames, 96);
    backtrace_symbols_fd(frames, depth, 2);
    (void)!write(2, "=== end of native backtrace ===\n", 32);
    signal(sig, SIG_DFL);
    raise(sig);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

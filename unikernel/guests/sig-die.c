/*
 * sig-die — argv[1] picks a way a signal must end the program even though
 * (or because) it has handlers: a blocked or ignored SIGSEGV is forced
 * through, a fault inside the SIGSEGV handler, a signal frame that cannot be
 * written (alternate stack on unmapped memory), SA_RESETHAND's second
 * signal, and default actions (SIGTERM, abort). Each prints one line first,
 * then must die with the signal Linux uses (exit status 128 + signo).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <unistd.h>
#include "guest.h"

static void on_sig(int sig)
{
    printf("handler %d\n", sig);
}

static void on_segv_faults(int sig)
{
    (void)sig;
    printf("in SIGSEGV handler\n");
    volatile uintptr_t bad = 16;
    (void)*(volatile int *)bad;
}

static void handle(int sig, void (*fn)(int), int flags)
{
    struct sigaction sa = {0};
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    EXPECT(sigaction(sig, &sa, NULL) == 0);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        ABORT("usage: sig-die blocked-segv|ignored-segv|handler-faults|badstack|resethand|term|abort");
    const char *w = argv[1];
    printf("mode %s\n", w);
    if (!strcmp(w, "blocked-segv")) {
        handle(SIGSEGV, on_sig, 0);
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGSEGV);
        EXPECT(sigprocmask(SIG_BLOCK, &s, NULL) == 0);
        (void)*(volatile int *)0;
    } else if (!strcmp(w, "ignored-segv")) {
        handle(SIGSEGV, SIG_IGN, 0);
        (void)*(volatile int *)0;
    } else if (!strcmp(w, "handler-faults")) {
        handle(SIGSEGV, on_segv_faults, 0);
        (void)*(volatile int *)0;
    } else if (!strcmp(w, "badstack")) {
        stack_t ss = {.ss_sp = (void *)0x1000, .ss_size = 16384};
        EXPECT(sigaltstack(&ss, NULL) == 0);
        handle(SIGUSR1, on_sig, SA_ONSTACK);
        raise(SIGUSR1);
    } else if (!strcmp(w, "resethand")) {
        handle(SIGUSR1, on_sig, SA_RESETHAND);
        raise(SIGUSR1);
        raise(SIGUSR1);
    } else if (!strcmp(w, "term")) {
        raise(SIGTERM);
    } else if (!strcmp(w, "abort")) {
        abort();
    } else {
        ABORT("unknown mode %s", w);
    }
    ABORT("survived %s", w);
}

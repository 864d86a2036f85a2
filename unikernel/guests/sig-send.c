/*
 * sig-send — signals a program sends itself: raise (tkill) and kill run the
 * handler before they return, with the si_code Linux gives; a blocked signal
 * stays pending (rt_sigpending) until unblocked; SA_RESETHAND and
 * SA_NODEFER; the handler's mask (sa_mask + the signal) and its removal by
 * rt_sigreturn; rt_sigtimedwait and rt_sigsuspend; ignored signals. Prints
 * the same lines natively and in a Kiln VM, then SUCCESS.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

static volatile int hits, last_code, last_pid, depth, max_depth;
static volatile int usr2_blocked_inside, usr1_blocked_inside;

static void on_sig(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    sigset_t now;
    sigprocmask(SIG_SETMASK, NULL, &now);
    usr1_blocked_inside = sigismember(&now, SIGUSR1);
    usr2_blocked_inside = sigismember(&now, SIGUSR2);
    hits++;
    last_code = si->si_code;
    last_pid = si->si_pid;
    if (sig == SIGUSR2 && ++depth < 3) /* SA_NODEFER: re-enters at once */
        raise(SIGUSR2);
    if (depth > max_depth)
        max_depth = depth;
}

static void handle(int sig, int flags, int maskusr2)
{
    struct sigaction sa = {0};
    sa.sa_sigaction = on_sig;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    if (maskusr2)
        sigaddset(&sa.sa_mask, SIGUSR2);
    EXPECT(sigaction(sig, &sa, NULL) == 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigset_t set, now;

    /* raise = tkill: handled before it returns, SI_TKILL; during the
     * handler the signal and sa_mask are blocked, afterwards neither. */
    handle(SIGUSR1, 0, 1);
    EXPECT(raise(SIGUSR1) == 0);
    EXPECT(hits == 1 && last_code == SI_TKILL && last_pid == getpid());
    EXPECT(usr1_blocked_inside && usr2_blocked_inside);
    EXPECT(sigprocmask(SIG_SETMASK, NULL, &now) == 0 && !sigismember(&now, SIGUSR1) &&
           !sigismember(&now, SIGUSR2));
    printf("raise: handled, code %d\n", last_code);

    /* kill(getpid()) : SI_USER. */
    EXPECT(kill(getpid(), SIGUSR1) == 0);
    EXPECT(hits == 2 && last_code == SI_USER && last_pid == getpid());
    printf("kill: handled, code %d\n", last_code);
    EXPECT(kill(getpid(), 0) == 0);
    EXPECT(kill(getpid(), 65) == -1 && errno == EINVAL);
    EXPECT(kill(4242, SIGUSR1) == -1 && errno == ESRCH);

    /* Blocked: pending until unblocked, then delivered once. */
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    EXPECT(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    EXPECT(raise(SIGUSR1) == 0 && raise(SIGUSR1) == 0);
    EXPECT(hits == 2);
    EXPECT(sigpending(&now) == 0 && sigismember(&now, SIGUSR1));
    EXPECT(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);
    EXPECT(hits == 3); /* standard signals do not queue */
    EXPECT(sigpending(&now) == 0 && !sigismember(&now, SIGUSR1));
    printf("blocked: pending, delivered once on unblock\n");

    /* SA_NODEFER: the handler re-raises itself and nests. */
    hits = 0;
    handle(SIGUSR2, SA_NODEFER, 0);
    EXPECT(raise(SIGUSR2) == 0);
    EXPECT(hits == 3 && max_depth == 3);
    printf("nodefer: nested %d deep\n", max_depth);

    /* SA_RESETHAND: once, then back to SIG_DFL. */
    hits = 0;
    handle(SIGUSR1, SA_RESETHAND, 0);
    EXPECT(raise(SIGUSR1) == 0 && hits == 1);
    struct sigaction cur;
    EXPECT(sigaction(SIGUSR1, NULL, &cur) == 0 && cur.sa_handler == SIG_DFL);
    printf("resethand: back to SIG_DFL\n");

    /* Ignored signals vanish, even when sent while blocked and then
     * ignored, and default-ignored ones too. */
    signal(SIGUSR1, SIG_IGN);
    EXPECT(raise(SIGUSR1) == 0);
    EXPECT(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    signal(SIGUSR1, SIG_DFL);
    EXPECT(raise(SIGUSR1) == 0);
    EXPECT(sigpending(&now) == 0 && sigismember(&now, SIGUSR1));
    signal(SIGUSR1, SIG_IGN);
    EXPECT(sigpending(&now) == 0 && !sigismember(&now, SIGUSR1));
    EXPECT(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);
    EXPECT(raise(SIGCHLD) == 0 && raise(SIGWINCH) == 0 && raise(SIGURG) == 0);
    printf("ignored: dropped\n");

    /* sigtimedwait takes a blocked pending signal without a handler. */
    EXPECT(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    handle(SIGUSR1, 0, 0);
    struct timespec zero = {0, 0}, short_wait = {0, 20 * 1000 * 1000};
    siginfo_t si;
    EXPECT(sigtimedwait(&set, &si, &zero) == -1 && errno == EAGAIN);
    EXPECT(sigtimedwait(&set, &si, &short_wait) == -1 && errno == EAGAIN);
    hits = 0;
    EXPECT(raise(SIGUSR1) == 0);
    EXPECT(sigtimedwait(&set, &si, &zero) == SIGUSR1 && si.si_signo == SIGUSR1 &&
           si.si_code == SI_TKILL);
    EXPECT(hits == 0);
    printf("sigtimedwait: EAGAIN, then SIGUSR1 code %d\n", si.si_code);

    /* sigsuspend: a pending signal unblocked by the temporary mask runs
     * the handler; -1 EINTR; the old mask comes back. */
    EXPECT(raise(SIGUSR1) == 0 && hits == 0);
    sigset_t empty;
    sigemptyset(&empty);
    EXPECT(sigsuspend(&empty) == -1 && errno == EINTR);
    EXPECT(hits == 1 && !usr2_blocked_inside && usr1_blocked_inside);
    EXPECT(sigprocmask(SIG_SETMASK, NULL, &now) == 0 && sigismember(&now, SIGUSR1));
    printf("sigsuspend: EINTR after the handler, mask restored\n");

    printf("SUCCESS\n");
    return 0;
}

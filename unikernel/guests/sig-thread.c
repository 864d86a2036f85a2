/*
 * sig-thread — signals between threads: pthread_kill (tgkill) runs the
 * handler on the target thread, not the sender; a thread waiting in
 * sigtimedwait is woken by a signal another thread sends it; a fault on a
 * second thread goes to that thread's handler on its own alternate stack;
 * masks are per thread. Prints the same lines natively and in a Kiln VM.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

static volatile pid_t handler_tid;
static volatile int stop;

static pid_t tid(void) { return (pid_t)syscall(SYS_gettid); }

static void on_usr1(int sig)
{
    (void)sig;
    handler_tid = tid();
    stop = 1;
}

static volatile pid_t spinner_tid;

static void *spinner(void *arg)
{
    (void)arg;
    spinner_tid = tid();
    while (!stop)
        sched_yield(); /* a syscall: where a pending signal is delivered */
    return NULL;
}

static sigset_t usr2;
static volatile int waited;

static void *waiter(void *arg)
{
    (void)arg;
    struct timespec ts = {10, 0};
    siginfo_t si;
    waited = sigtimedwait(&usr2, &si, &ts);
    return NULL;
}

static sigjmp_buf jb2;
static char alt2[1 << 16];
static volatile int fault_on_alt, fault_tid;

static void on_segv(int sig)
{
    (void)sig;
    char here;
    fault_on_alt = &here >= alt2 && &here < alt2 + sizeof(alt2);
    fault_tid = tid();
    siglongjmp(jb2, 1);
}

static void *faulter(void *arg)
{
    (void)arg;
    stack_t ss = {.ss_sp = alt2, .ss_size = sizeof(alt2)};
    EXPECT(sigaltstack(&ss, NULL) == 0);
    if (sigsetjmp(jb2, 1) == 0) {
        volatile uintptr_t bad = 24;
        (void)*(volatile int *)bad;
    }
    return (void *)(intptr_t)tid();
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    EXPECT(sigaction(SIGUSR1, &sa, NULL) == 0);

    /* The main thread blocks SIGUSR1; the spinner (created after the
     * unblock below) does not: the signal must run there. */
    pthread_t t;
    EXPECT(pthread_create(&t, NULL, spinner, NULL) == 0);
    while (!spinner_tid)
        sched_yield();
    sigset_t s1;
    sigemptyset(&s1);
    sigaddset(&s1, SIGUSR1);
    EXPECT(pthread_sigmask(SIG_BLOCK, &s1, NULL) == 0);
    EXPECT(pthread_kill(t, SIGUSR1) == 0);
    EXPECT(pthread_join(t, NULL) == 0);
    EXPECT(handler_tid == spinner_tid && handler_tid != tid());
    printf("pthread_kill: handler ran on the target thread\n");

    /* sigtimedwait in one thread, woken by tgkill from another. */
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    EXPECT(pthread_sigmask(SIG_BLOCK, &usr2, NULL) == 0); /* inherited */
    EXPECT(pthread_create(&t, NULL, waiter, NULL) == 0);
    struct timespec d = {0, 20 * 1000 * 1000};
    nanosleep(&d, NULL); /* let it block */
    EXPECT(pthread_kill(t, SIGUSR2) == 0);
    EXPECT(pthread_join(t, NULL) == 0);
    EXPECT(waited == SIGUSR2);
    printf("sigtimedwait: woken by another thread's signal\n");

    /* A fault on a second thread, handled there on its own altstack. */
    struct sigaction sg = {0};
    sg.sa_handler = on_segv;
    sg.sa_flags = SA_ONSTACK;
    sigemptyset(&sg.sa_mask);
    EXPECT(sigaction(SIGSEGV, &sg, NULL) == 0);
    void *ret;
    EXPECT(pthread_create(&t, NULL, faulter, NULL) == 0);
    EXPECT(pthread_join(t, &ret) == 0);
    EXPECT(fault_on_alt && fault_tid == (pid_t)(intptr_t)ret && fault_tid != tid());
    stack_t cur;
    EXPECT(sigaltstack(NULL, &cur) == 0 && (cur.ss_flags & SS_DISABLE)); /* per thread */
    printf("fault on a second thread: handled on its altstack\n");

    EXPECT(pthread_kill(pthread_self(), 0) == 0);
    printf("SUCCESS\n");
    return 0;
}

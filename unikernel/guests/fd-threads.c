/*
 * fd-threads — fds shared between threads, where blocking matters: a
 * reader blocked on an empty pipe woken by a writer thread, a writer
 * blocked on a full pipe woken by a reader thread, a blocked reader
 * seeing EOF when the last writer closes, and epoll_wait with a long
 * timeout woken early by an eventfd write from another thread (Go's
 * netpollBreak). Needs threads (clone): where pthread_create fails it
 * prints "SKIP: ..." and exits 0, and fd_test.go fails: the kernel has threads.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

static int64_t now_ms(void)
{
    struct timespec t;
    EXPECT(clock_gettime(CLOCK_MONOTONIC, &t) == 0);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000};
    EXPECT(nanosleep(&t, NULL) == 0);
}

static int pa[2];
static char big[200000];

static void *writer(void *arg)
{
    (void)arg;
    sleep_ms(50);
    EXPECT(write(pa[1], "wake", 4) == 4);
    sleep_ms(20);
    /* More than the pipe holds: this blocks until the reader drains. */
    memset(big, 'w', sizeof(big));
    EXPECT(write(pa[1], big, sizeof(big)) == (ssize_t)sizeof(big));
    EXPECT(close(pa[1]) == 0);
    return NULL;
}

static int efd;

static void *breaker(void *arg)
{
    (void)arg;
    sleep_ms(50);
    uint64_t one = 1;
    EXPECT(write(efd, &one, 8) == 8);
    return NULL;
}

static void *poke(void *arg)
{
    (void)arg;
    sleep_ms(50);
    EXPECT(write(pa[1], "p", 1) == 1);
    return NULL;
}

int main(void)
{
    EXPECT(pipe(pa) == 0);
    pthread_t t;
    int e = pthread_create(&t, NULL, writer, NULL);
    if (e) {
        printf("SKIP: pthread_create: %s\n", strerror(e));
        return 0;
    }
    char buf[4096];
    int64_t t0 = now_ms();
    EXPECT(read(pa[0], buf, sizeof(buf)) == 4 && memcmp(buf, "wake", 4) == 0);
    printf("timing: blocked read woken after %lld ms\n", (long long)(now_ms() - t0));
    sleep_ms(100); /* the writer fills the pipe and blocks */
    long total = 0;
    for (;;) {
        ssize_t n = read(pa[0], buf, sizeof(buf));
        EXPECT(n >= 0);
        if (n == 0)
            break; /* EOF: the writer closed after writing everything */
        for (ssize_t i = 0; i < n; i++)
            EXPECT(buf[i] == 'w');
        total += n;
    }
    EXPECT(total == (long)sizeof(big));
    EXPECT(pthread_join(t, NULL) == 0);
    printf("threads: pipe between threads ok (%ld bytes)\n", total);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 42};
    EXPECT(epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) == 0);
    EXPECT(pthread_create(&t, NULL, breaker, NULL) == 0);
    struct epoll_event out[128];
    t0 = now_ms();
    int n = epoll_wait(ep, out, 128, 10000);
    int64_t waited = now_ms() - t0;
    printf("timing: epoll_wait(10 s) woken after %lld ms\n", (long long)waited);
    EXPECT(n == 1 && out[0].data.u64 == 42 && out[0].events == EPOLLIN);
    EXPECT(waited < 5000);
    EXPECT(pthread_join(t, NULL) == 0);
    printf("threads: epoll woken by an eventfd write ok\n");

    /* poll woken by a write from another thread. */
    EXPECT(pipe(pa) == 0);
    EXPECT(pthread_create(&t, NULL, poke, NULL) == 0);
    struct pollfd pf = {pa[0], POLLIN, 0};
    t0 = now_ms();
    EXPECT(poll(&pf, 1, 10000) == 1 && pf.revents == POLLIN);
    waited = now_ms() - t0;
    printf("timing: poll(10 s) woken after %lld ms\n", (long long)waited);
    EXPECT(waited < 5000);
    EXPECT(pthread_join(t, NULL) == 0);
    printf("threads: poll woken by a pipe write ok\n");
    printf("SUCCESS\n");
    return 0;
}

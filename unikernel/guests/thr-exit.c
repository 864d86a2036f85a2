/*
 * thr-exit: how threads end the program.
 *   detach  main calls pthread_exit; the worker, now the last thread, sleeps,
 *           prints SUCCESS and returns: exit status 0.
 *   group   main calls exit(3) while a worker sleeps forever: status 3.
 *   worker  a worker calls exit_group(5) while main waits in pthread_join:
 *           status 5.
 *   last    main ends with a raw exit(0) (its thread only); the worker, the
 *           last thread, ends with a raw exit(7): status 7, the last
 *           thread's, as on Linux.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

static void msleep(long ms)
{
    struct timespec ts = {ms / 1000, ms % 1000 * 1000000};
    EXPECT(nanosleep(&ts, 0) == 0);
}

static void say(const char *s) { EXPECT(write(1, s, strlen(s)) == (ssize_t)strlen(s)); }

static void *detached(void *arg)
{
    (void)arg;
    msleep(20);
    printf("worker outlived main\nSUCCESS\n");
    return 0;
}

static void *forever(void *arg)
{
    (void)arg;
    for (;;)
        msleep(1000);
    return 0;
}

static void *grouper(void *arg)
{
    (void)arg;
    msleep(10);
    say("worker ends the group\n");
    syscall(SYS_exit_group, 5);
    return 0;
}

static void *last(void *arg)
{
    (void)arg;
    msleep(30);
    say("SUCCESS\n");
    syscall(SYS_exit, 7);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    pthread_t t;
    if (strcmp(mode, "detach") == 0) {
        EXPECT(pthread_create(&t, 0, detached, 0) == 0);
        pthread_exit(0);
    }
    if (strcmp(mode, "group") == 0) {
        EXPECT(pthread_create(&t, 0, forever, 0) == 0);
        msleep(10);
        printf("main exits 3\n");
        exit(3);
    }
    if (strcmp(mode, "worker") == 0) {
        EXPECT(pthread_create(&t, 0, grouper, 0) == 0);
        pthread_join(t, 0);
        ABORT("the worker's exit_group did not end main");
    }
    if (strcmp(mode, "last") == 0) {
        EXPECT(pthread_create(&t, 0, last, 0) == 0);
        say("main leaves\n");
        syscall(SYS_exit, 0);
        ABORT("exit returned");
    }
    ABORT("unknown mode %s", mode);
}

/*
 * thr-deadlock: main joins a thread that waits on a futex nobody will ever
 * wake, with no deadline. Linux would hang; Kiln reports the deadlock and
 * ends the VM (KILN_EXIT_PANIC, status 255). Never run natively.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "guest.h"

static int never;

static void *stuck(void *arg)
{
    (void)arg;
    for (;;)
        syscall(SYS_futex, &never, 128 /* FUTEX_WAIT_PRIVATE */, 0, 0, 0, 0);
    return 0;
}

int main(void)
{
    pthread_t t;
    EXPECT(pthread_create(&t, 0, stuck, 0) == 0);
    printf("joining\n");
    fflush(stdout);
    pthread_join(t, 0);
    ABORT("pthread_join returned");
}

/*
 * thr-join: 40 threads share out a sum and are joined; each reports its own
 * tid. The total, and that every tid is distinct and not the pid, are the
 * same natively and in a Kiln VM.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "guest.h"

#define NTHREADS 40
#define PER 100000ULL

struct work {
    uint64_t from, sum;
    pid_t tid;
};

static void *worker(void *arg)
{
    struct work *w = arg;
    uint64_t s = 0;
    for (uint64_t i = w->from; i < w->from + PER; i++)
        s += i * i % 1000003;
    w->sum = s;
    w->tid = (pid_t)syscall(SYS_gettid);
    return (void *)(uintptr_t)(w->from / PER + 1);
}

int main(void)
{
    static struct work w[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i].from = (uint64_t)i * PER;
        int e = pthread_create(&th[i], 0, worker, &w[i]);
        if (e)
            ABORT("pthread_create %d: %s", i, strerror(e));
    }
    uint64_t total = 0;
    for (int i = 0; i < NTHREADS; i++) {
        void *ret;
        EXPECT(pthread_join(th[i], &ret) == 0);
        EXPECT((uintptr_t)ret == (uintptr_t)i + 1);
        total += w[i].sum;
    }
    uint64_t want = 0;
    for (uint64_t i = 0; i < NTHREADS * PER; i++)
        want += i * i % 1000003;
    EXPECT(total == want);
    pid_t pid = getpid();
    for (int i = 0; i < NTHREADS; i++) {
        EXPECT(w[i].tid > 0 && w[i].tid != pid);
        for (int j = 0; j < i; j++)
            EXPECT(w[i].tid != w[j].tid);
    }
    EXPECT(syscall(SYS_gettid) == pid);
    printf("total=%llu\n", (unsigned long long)total);
    printf("SUCCESS\n");
    return 0;
}

/*
 * thr-sleep: nanosleep and clock_nanosleep sleep at least as long as asked
 * and not much longer, absolute deadlines hold on both clocks, and threads
 * sleep at the same time (three sleepers of 900, 300 and 600 ms wake in
 * deadline order, in well under the 1.8 s their sum would take).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

/* Generous: the VM may run under an emulator. */
#define SLACK_NS 1500000000LL
#define MS 1000000LL

static int64_t now_ns(clockid_t c)
{
    struct timespec ts;
    EXPECT(clock_gettime(c, &ts) == 0);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec ts_of(int64_t ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    return ts;
}

static void check(const char *what, int64_t slept, int64_t want)
{
    if (slept < want || slept > want + SLACK_NS)
        ABORT("%s: slept %lld ns, want %lld", what, (long long)slept, (long long)want);
    printf("%s ok\n", what);
    fprintf(stderr, "%s: %lld us\n", what, (long long)(slept / 1000)); /* varies: not on stdout */
}

static int order[3], norder;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void *sleeper(void *arg)
{
    int ms = (int)(intptr_t)arg;
    struct timespec ts = ts_of(ms * MS);
    EXPECT(nanosleep(&ts, 0) == 0);
    pthread_mutex_lock(&mu);
    order[norder++] = ms;
    pthread_mutex_unlock(&mu);
    return 0;
}

int main(void)
{
    static const int lens[] = {10, 50, 100};
    for (int i = 0; i < 3; i++) {
        struct timespec ts = ts_of(lens[i] * MS), rem = {-1, -1};
        int64_t t0 = now_ns(CLOCK_MONOTONIC);
        EXPECT(nanosleep(&ts, &rem) == 0);
        char what[32];
        snprintf(what, sizeof what, "nanosleep %dms", lens[i]);
        check(what, now_ns(CLOCK_MONOTONIC) - t0, lens[i] * MS);
        EXPECT(rem.tv_sec == -1 && rem.tv_nsec == -1); /* untouched */
    }

    int64_t t0 = now_ns(CLOCK_MONOTONIC);
    struct timespec abs = ts_of(t0 + 30 * MS);
    EXPECT(clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &abs, 0) == 0);
    EXPECT(now_ns(CLOCK_MONOTONIC) >= t0 + 30 * MS);
    check("clock_nanosleep monotonic abs 30ms", now_ns(CLOCK_MONOTONIC) - t0, 30 * MS);
    t0 = now_ns(CLOCK_MONOTONIC);
    abs = ts_of(now_ns(CLOCK_REALTIME) + 40 * MS);
    EXPECT(clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &abs, 0) == 0);
    check("clock_nanosleep realtime abs 40ms", now_ns(CLOCK_MONOTONIC) - t0, 40 * MS);
    struct timespec rel = ts_of(20 * MS);
    t0 = now_ns(CLOCK_MONOTONIC);
    EXPECT(clock_nanosleep(CLOCK_BOOTTIME, 0, &rel, 0) == 0);
    check("clock_nanosleep boottime 20ms", now_ns(CLOCK_MONOTONIC) - t0, 20 * MS);
    abs = ts_of(now_ns(CLOCK_MONOTONIC) - 5 * MS); /* already past */
    EXPECT(clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &abs, 0) == 0);
    struct timespec zero = {0, 0};
    EXPECT(nanosleep(&zero, 0) == 0);

    struct timespec bad = {0, 1000000000}, neg = {-1, 0};
    errno = 0;
    EXPECT(nanosleep(&bad, 0) == -1 && errno == EINVAL);
    EXPECT(nanosleep(&neg, 0) == -1 && errno == EINVAL);
    EXPECT(syscall(SYS_nanosleep, (void *)8, 0) == -1 && errno == EFAULT);
    EXPECT(syscall(SYS_clock_nanosleep, CLOCK_THREAD_CPUTIME_ID, 0, &rel, 0) == -1 && errno == EOPNOTSUPP);
    EXPECT(syscall(SYS_clock_nanosleep, 99, 0, &rel, 0) == -1 && errno == EINVAL);
    printf("errors ok\n");

    pthread_t th[3];
    static const int conc[] = {900, 300, 600};
    t0 = now_ns(CLOCK_MONOTONIC);
    for (int i = 0; i < 3; i++)
        EXPECT(pthread_create(&th[i], 0, sleeper, (void *)(intptr_t)conc[i]) == 0);
    for (int i = 0; i < 3; i++)
        EXPECT(pthread_join(th[i], 0) == 0);
    int64_t took = now_ns(CLOCK_MONOTONIC) - t0;
    EXPECT(norder == 3 && order[0] == 300 && order[1] == 600 && order[2] == 900);
    if (took < 900 * MS || took > 1500 * MS)
        ABORT("three concurrent sleeps of at most 900 ms took %lld ms", (long long)(took / MS));
    printf("concurrent sleeps ok\n");
    printf("SUCCESS\n");
    return 0;
}

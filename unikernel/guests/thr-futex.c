/*
 * thr-futex: the futex operations through raw syscall(2), as glibc, musl
 * and Go use them: values that do not match, timeouts (relative for WAIT,
 * absolute for WAIT_BITSET on either clock), bitsets, requeueing and
 * WAKE_OP, and the errors. A waiter is known to be blocked when a requeue
 * finds it, which works the same natively and in a VM.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

/* <linux/futex.h>, which musl-gcc does not ship. */
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define FUTEX_REQUEUE 3
#define FUTEX_CMP_REQUEUE 4
#define FUTEX_WAKE_OP 5
#define FUTEX_WAIT_BITSET 9
#define FUTEX_WAKE_BITSET 10
#define FUTEX_PRIVATE_FLAG 128
#define FUTEX_CLOCK_REALTIME 256
#define FUTEX_WAIT_PRIVATE (FUTEX_WAIT | FUTEX_PRIVATE_FLAG)
#define FUTEX_WAKE_PRIVATE (FUTEX_WAKE | FUTEX_PRIVATE_FLAG)
#define FUTEX_REQUEUE_PRIVATE (FUTEX_REQUEUE | FUTEX_PRIVATE_FLAG)
#define FUTEX_CMP_REQUEUE_PRIVATE (FUTEX_CMP_REQUEUE | FUTEX_PRIVATE_FLAG)
#define FUTEX_WAKE_OP_PRIVATE (FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG)
#define FUTEX_WAIT_BITSET_PRIVATE (FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG)
#define FUTEX_WAKE_BITSET_PRIVATE (FUTEX_WAKE_BITSET | FUTEX_PRIVATE_FLAG)
#define FUTEX_BITSET_MATCH_ANY 0xffffffffu
#define FUTEX_OP_SET 0
#define FUTEX_OP_ADD 1
#define FUTEX_OP_OPARG_SHIFT 8
#define FUTEX_OP_CMP_EQ 0
#define FUTEX_OP_CMP_GT 4
#define FUTEX_OP(op, oparg, cmp, cmparg) \
    ((((op) & 0xf) << 28) | (((cmp) & 0xf) << 24) | (((oparg) & 0xfff) << 12) | ((cmparg) & 0xfff))

static long futex(void *uaddr, int op, uint32_t val, const void *ts_or_val2,
                  void *uaddr2, uint32_t val3)
{
    return syscall(SYS_futex, uaddr, op, val, ts_or_val2, uaddr2, val3);
}

static int64_t now_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec ts_of(int64_t ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    return ts;
}

/* Generous upper bounds: the VM may run under an emulator. */
#define SLACK_NS 2000000000LL

static void expect_timeout(const char *what, int64_t t0, int64_t t1, int64_t want)
{
    if (t1 - t0 < want)
        ABORT("%s: woke after %lld ns, before its %lld ns", what, (long long)(t1 - t0), (long long)want);
    if (t1 - t0 > want + SLACK_NS)
        ABORT("%s: woke after %lld ns, far past its %lld ns", what, (long long)(t1 - t0), (long long)want);
}

struct waiter {
    uint32_t *addr;
    uint32_t val, bitset;
    long ret;
    int err;
};

static void *wait_thread(void *arg)
{
    struct waiter *w = arg;
    w->ret = futex(w->addr, FUTEX_WAIT_BITSET_PRIVATE, w->val, 0, 0, w->bitset);
    w->err = errno;
    return 0;
}

/* Move n waiters blocked on park to target; returns once all n were found
 * blocked (each is moved exactly once, so the count is exact). */
static void park_to(uint32_t *park, uint32_t *target, int n)
{
    int moved = 0;
    while (moved < n) {
        long r = futex(park, FUTEX_REQUEUE_PRIVATE, 0, (void *)(uintptr_t)INT_MAX, target, 0);
        EXPECT(r >= 0);
        moved += (int)r;
        if (moved < n)
            sched_yield();
    }
    EXPECT(moved == n);
}

int main(void)
{
    static uint32_t word = 7, park = 0, f1 = 0, f2 = 0;

    /* Errors. */
    errno = 0;
    EXPECT(futex(&word, FUTEX_WAIT_PRIVATE, 8, 0, 0, 0) == -1 && errno == EAGAIN);
    EXPECT(futex((char *)&word + 1, FUTEX_WAKE, 1, 0, 0, 0) == -1 && errno == EINVAL);
    EXPECT(futex(&word, FUTEX_WAIT_BITSET, 7, 0, 0, 0) == -1 && errno == EINVAL);
    EXPECT(futex(&word, FUTEX_WAKE_BITSET, 1, 0, 0, 0) == -1 && errno == EINVAL);
    EXPECT(futex((void *)16, FUTEX_WAIT, 0, 0, 0, 0) == -1 && errno == EFAULT);
    EXPECT(futex(&word, 99, 0, 0, 0, 0) == -1 && errno == ENOSYS);
    EXPECT(futex(&word, FUTEX_WAKE | FUTEX_CLOCK_REALTIME, 1, 0, 0, 0) == -1 && errno == ENOSYS);
    struct timespec bad = {0, 1000000000};
    EXPECT(futex(&word, FUTEX_WAIT, 7, &bad, 0, 0) == -1 && errno == EINVAL);
    EXPECT(futex(&word, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0) == 0);
    EXPECT(futex(&word, FUTEX_CMP_REQUEUE_PRIVATE, 1, (void *)1, &f1, 8) == -1 && errno == EAGAIN);
    printf("errors ok\n");

    /* Relative timeout: WAIT. */
    struct timespec rel = ts_of(50000000);
    int64_t t0 = now_ns(CLOCK_MONOTONIC);
    EXPECT(futex(&word, FUTEX_WAIT_PRIVATE, 7, &rel, 0, 0) == -1 && errno == ETIMEDOUT);
    expect_timeout("WAIT 50ms", t0, now_ns(CLOCK_MONOTONIC), 50000000);
    struct timespec zero = {0, 0};
    EXPECT(futex(&word, FUTEX_WAIT_PRIVATE, 7, &zero, 0, 0) == -1 && errno == ETIMEDOUT);

    /* Absolute timeouts: WAIT_BITSET on CLOCK_MONOTONIC and CLOCK_REALTIME. */
    t0 = now_ns(CLOCK_MONOTONIC);
    struct timespec abs = ts_of(t0 + 30000000);
    EXPECT(futex(&word, FUTEX_WAIT_BITSET_PRIVATE, 7, &abs, 0, FUTEX_BITSET_MATCH_ANY) == -1 &&
           errno == ETIMEDOUT);
    expect_timeout("WAIT_BITSET monotonic 30ms", t0, now_ns(CLOCK_MONOTONIC), 30000000);
    int64_t r0 = now_ns(CLOCK_REALTIME);
    t0 = now_ns(CLOCK_MONOTONIC);
    abs = ts_of(r0 + 40000000);
    EXPECT(futex(&word, FUTEX_WAIT_BITSET_PRIVATE | FUTEX_CLOCK_REALTIME, 7, &abs, 0,
                 FUTEX_BITSET_MATCH_ANY) == -1 && errno == ETIMEDOUT);
    expect_timeout("WAIT_BITSET realtime 40ms", t0, now_ns(CLOCK_MONOTONIC), 40000000);
    abs = ts_of(now_ns(CLOCK_MONOTONIC) - 1000000); /* already past */
    EXPECT(futex(&word, FUTEX_WAIT_BITSET_PRIVATE, 7, &abs, 0, FUTEX_BITSET_MATCH_ANY) == -1 &&
           errno == ETIMEDOUT);
    printf("timeouts ok\n");

    /* Bitsets: a wake must share a bit with the waiter. */
    pthread_t th[3];
    struct waiter w[3];
    w[0] = (struct waiter){&park, 0, 0x1, 0, 0};
    EXPECT(pthread_create(&th[0], 0, wait_thread, &w[0]) == 0);
    park_to(&park, &f1, 1);
    EXPECT(futex(&f1, FUTEX_WAKE_BITSET_PRIVATE, 1, 0, 0, 0x6) == 0);
    EXPECT(futex(&f1, FUTEX_WAKE_BITSET_PRIVATE, 1, 0, 0, 0x3) == 1);
    EXPECT(pthread_join(th[0], 0) == 0);
    EXPECT(w[0].ret == 0);
    printf("bitset ok\n");

    /* CMP_REQUEUE: three waiters on f1; wake one, move two to f2. */
    for (int i = 0; i < 3; i++) {
        w[i] = (struct waiter){&park, 0, FUTEX_BITSET_MATCH_ANY, 0, 0};
        EXPECT(pthread_create(&th[i], 0, wait_thread, &w[i]) == 0);
    }
    park_to(&park, &f1, 3);
    f1 = 5;
    long r = futex(&f1, FUTEX_CMP_REQUEUE_PRIVATE, 1, (void *)2, &f2, 5);
    EXPECT(r == 3);
    EXPECT(futex(&f1, FUTEX_WAKE_PRIVATE, INT_MAX, 0, 0, 0) == 0);
    EXPECT(futex(&f2, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0) == 1);
    EXPECT(futex(&f2, FUTEX_WAKE_PRIVATE, INT_MAX, 0, 0, 0) == 1);
    for (int i = 0; i < 3; i++) {
        EXPECT(pthread_join(th[i], 0) == 0);
        EXPECT(w[i].ret == 0);
    }
    printf("requeue ok\n");

    /* WAKE_OP: one waiter on f1, one on f2; *f2 = 5 if it was 0, then
     * wake f1 and (the comparison held) f2. */
    f1 = f2 = 0;
    for (int i = 0; i < 2; i++) {
        w[i] = (struct waiter){&park, 0, FUTEX_BITSET_MATCH_ANY, 0, 0};
        EXPECT(pthread_create(&th[i], 0, wait_thread, &w[i]) == 0);
        park_to(&park, i == 0 ? &f1 : &f2, 1);
    }
    r = futex(&f1, FUTEX_WAKE_OP_PRIVATE, 1, (void *)1, &f2,
              FUTEX_OP(FUTEX_OP_SET, 5, FUTEX_OP_CMP_EQ, 0));
    EXPECT(r == 2);
    EXPECT(f2 == 5);
    for (int i = 0; i < 2; i++)
        EXPECT(pthread_join(th[i], 0) == 0);
    /* Comparison fails: only f1's waiter wakes; ADD with OPARG_SHIFT. */
    f2 = 5;
    for (int i = 0; i < 2; i++) {
        w[i] = (struct waiter){&park, 0, FUTEX_BITSET_MATCH_ANY, 0, 0};
        EXPECT(pthread_create(&th[i], 0, wait_thread, &w[i]) == 0);
        park_to(&park, i == 0 ? &f1 : &f2, 1);
    }
    r = futex(&f1, FUTEX_WAKE_OP_PRIVATE, 1, (void *)1, &f2,
              FUTEX_OP(FUTEX_OP_ADD | FUTEX_OP_OPARG_SHIFT, 4, FUTEX_OP_CMP_GT, 5));
    EXPECT(r == 1);
    EXPECT(f2 == 5 + 16);
    EXPECT(pthread_join(th[0], 0) == 0);
    EXPECT(futex(&f2, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0) == 1);
    EXPECT(pthread_join(th[1], 0) == 0);
    printf("wake_op ok\n");

    printf("SUCCESS\n");
    return 0;
}

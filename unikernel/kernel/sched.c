/*
 * sched.c — threads and the cooperative scheduler. Today there is one
 * thread; sleeping idles the vCPU in the VMM until the deadline.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

static struct kthread main_thread;

void sched_init(void)
{
    main_thread.tid = 1;
    main_thread.kstack_top = arch_boot_kstack_top();
}

struct kthread *sched_current(void)
{
    return &main_thread;
}

void sched_sleep_until(uint64_t deadline_tsc)
{
    if (deadline_tsc == 0)
        deadline_tsc = 1;
    /* The VMM may wake the vCPU early (a signal to its thread); sleep
     * again until the deadline really passed. */
    int eof;
    while (rdtsc() < deadline_tsc)
        stdio_idle(0, 0, deadline_tsc, &eof);
}

void sched_yield(void) {}

int64_t waitq_wait(struct kwaitq *q, uint64_t deadline_tsc)
{
    (void)q;
    if (deadline_tsc == 0)
        kpanic("the only thread waits forever");
    sched_sleep_until(deadline_tsc);
    return -ETIMEDOUT;
}

int waitq_wake(struct kwaitq *q, int n)
{
    (void)q;
    (void)n;
    return 0;
}

static int64_t sys_nanosleep(uint64_t req, uint64_t rem)
{
    uint64_t ns;
    int64_t e = read_timespec(req, &ns);
    if (e)
        return e;
    if (rem && !UVALID(rem, sizeof(struct ktimespec)))
        return -EFAULT;
    uint64_t now = clock_ns(1);
    sched_sleep_until(clock_deadline_tsc(1, now + ns < now ? UINT64_MAX : now + ns));
    return 0;
}

static int64_t sys_clock_nanosleep(uint64_t clk, uint64_t flags, uint64_t req,
                                   uint64_t rem)
{
    if (clk > 7 || clk == 2 || clk == 3)
        return -EINVAL;
    uint64_t ns;
    int64_t e = read_timespec(req, &ns);
    if (e)
        return e;
    if (flags & 1) { /* TIMER_ABSTIME */
        sched_sleep_until(clock_deadline_tsc(clk, ns));
        return 0;
    }
    if (rem && !UVALID(rem, sizeof(struct ktimespec)))
        return -EFAULT;
    uint64_t now = clock_ns(clk);
    sched_sleep_until(clock_deadline_tsc(clk, now + ns < now ? UINT64_MAX : now + ns));
    return 0;
}


int sched_syscall(uint64_t nr, const uint64_t *a, struct kframe *f, int64_t *ret)
{
    (void)f;
    switch (nr) {
    case 24: sched_yield(); *ret = 0; return 1;
    case 35: *ret = sys_nanosleep(a[0], a[1]); return 1;
    case 60:                                                /* exit */
    case 231:                                               /* exit_group */
        kexit(KILN_EXIT_NORMAL, (int32_t)(a[0] & 0xff), 0, 0);
    case 186: *ret = sched_current()->tid; return 1;        /* gettid */
    case 218:                                               /* set_tid_address */
        sched_current()->clear_tid = a[0];
        *ret = sched_current()->tid;
        return 1;
    case 230: *ret = sys_clock_nanosleep(a[0], a[1], a[2], a[3]); return 1;
    }
    return 0;
}

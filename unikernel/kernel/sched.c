/*
 * sched.c — threads, the cooperative scheduler, futex and sleeping.
 *
 * One vCPU, no interrupts: a thread runs until it blocks or yields, and
 * nothing else runs meanwhile. Blocking is one primitive (waitq_wait), with
 * an optional TSC deadline; the run queue is FIFO. When nothing can run the
 * vCPU idles in the VMM (stdio_idle) until the nearest deadline or, if a
 * thread is blocked reading stdin, until input arrives: that idle call is
 * also the serve loop's single exit per request, so it must stay the only
 * place the scheduler leaves the VM.
 *
 * Each thread owns a 16 KiB kernel stack (the syscall entry builds its frame
 * there) and an XSAVE area. The kernel is built -mgeneral-regs-only, so
 * while a thread is in a syscall its SSE/AVX registers still hold its own
 * values; they are saved and restored only when the thread switches.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

enum {
    TS_FREE = 0,
    TS_RUNNING, /* the current thread */
    TS_READY,   /* on the run queue */
    TS_BLOCKED, /* on a wait queue, on a deadline, or reading stdin */
};

#define KSTACK_SIZE (16 * 1024)
#define FRAME_SIZE (2ULL << 20)
#define TID_MAX 0x3fffffff /* Linux's PID_MAX_LIMIT is far below this */

/* clone(2) flags. */
#define CLONE_VM 0x100
#define CLONE_FS 0x200
#define CLONE_FILES 0x400
#define CLONE_SIGHAND 0x800
#define CLONE_THREAD 0x10000
#define CLONE_SYSVSEM 0x40000
#define CLONE_SETTLS 0x80000
#define CLONE_PARENT_SETTID 0x100000
#define CLONE_CHILD_CLEARTID 0x200000
#define CLONE_DETACHED 0x400000
#define CLONE_CHILD_SETTID 0x1000000
#define CSIGNAL 0xff
#define CLONE_REQUIRED (CLONE_VM | CLONE_THREAD | CLONE_SIGHAND)
#define CLONE_ALLOWED                                                         \
    (CLONE_REQUIRED | CLONE_FS | CLONE_FILES | CLONE_SYSVSEM | CLONE_SETTLS | \
     CLONE_PARENT_SETTID | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID |        \
     CLONE_DETACHED | CSIGNAL)

#define SS_DISABLE 2

static struct kthread threads[KTHREAD_MAX];
static struct kthread *cur;
static int nlive;
static int32_t next_tid = 2;
/* Where a new thread enters the function: its parent's registers at the
 * clone. Kept apart from the kernel stack, which the first syscall of the
 * thread overwrites. */
static struct kframe start_frame[KTHREAD_MAX];
/* set_robust_list: recorded so get_robust_list could answer; the kernel
 * never walks it (no thread dies holding a lock without exiting the VM). */
static uint64_t robust_head[KTHREAD_MAX];

/* The run queue: a ring of READY threads, each at most once. */
static struct kthread *runq[KTHREAD_MAX];
static int runq_head, runq_len;

/* The one thread blocked reading stdin (stdio.c queues the others) and the
 * guest-physical buffer the idle hypercall fills for it. */
static struct {
    struct kthread *t;
    uint64_t gpa, cap;
    int64_t got;
} input;

/* All futex waiters, oldest first; wait_key says which word each waits on.
 * With at most KTHREAD_MAX waiters a scan beats hashing, and requeueing is
 * just rewriting wait_key. */
static struct kwaitq futex_q;

static inline int slot_of(const struct kthread *t) { return (int)(t - threads); }

/* ---- memory for thread stacks and FPU areas ---- */

static uint8_t *pool;
static uint64_t pool_left;

/* Bump allocation from kalloc_frame() frames; size a multiple of 64. The
 * memory is never returned: a slot keeps its stack and FPU area for the
 * next thread that reuses it. */
static void *kmem(uint64_t size)
{
    if (size > pool_left) {
        void *f = kalloc_frame();
        if (!f)
            return 0;
        pool = f;
        pool_left = FRAME_SIZE;
    }
    void *p = pool;
    pool += size;
    pool_left -= size;
    return p;
}

/* ---- FPU/SSE/AVX state ---- */

static struct {
    int xsave;
    uint64_t mask; /* XCR0: every state component the OS enabled */
    uint64_t size; /* bytes, a multiple of 64 */
} fpu;

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

static void fpu_init(void)
{
    uint32_t r[4];
    cpuid(1, 0, r);
    fpu.xsave = (r[2] >> 27) & 1; /* OSXSAVE: CR4.OSXSAVE is on */
    fpu.size = 512;               /* fxsave */
    if (fpu.xsave) {
        uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        fpu.mask = ((uint64_t)hi << 32) | lo;
        cpuid(0xd, 0, r);
        fpu.size = r[1] < 576 ? 576 : r[1]; /* legacy area + XSAVE header */
    }
    fpu.size = (fpu.size + 63) & ~63ULL;
}

static void fpu_save(void *area)
{
    if (fpu.xsave)
        __asm__ volatile("xsave64 (%0)" ::"r"(area), "a"((uint32_t)fpu.mask),
                         "d"((uint32_t)(fpu.mask >> 32))
                         : "memory");
    else
        __asm__ volatile("fxsave64 (%0)" ::"r"(area) : "memory");
}

static void fpu_restore(const void *area)
{
    if (fpu.xsave)
        __asm__ volatile("xrstor64 (%0)" ::"r"(area), "a"((uint32_t)fpu.mask),
                         "d"((uint32_t)(fpu.mask >> 32))
                         : "memory");
    else
        __asm__ volatile("fxrstor64 (%0)" ::"r"(area) : "memory");
}

/* A slot's kernel stack and FPU area, made on its first use. */
static int slot_memory(struct kthread *t)
{
    if (t->fpu)
        return 0;
    uint8_t *fp = kmem(fpu.size);
    if (!fp)
        return -ENOMEM;
    t->fpu = fp;
    if (!t->kstack_top) {
        uint8_t *st = kmem(KSTACK_SIZE);
        if (!st)
            return -ENOMEM;
        t->kstack_top = (uint64_t)(uintptr_t)(st + KSTACK_SIZE);
    }
    return 0;
}

/* ---- run queue and wait queues ---- */

static void runq_push(struct kthread *t)
{
    t->state = TS_READY;
    runq[(runq_head + runq_len) % KTHREAD_MAX] = t;
    runq_len++;
}

static struct kthread *runq_pop(void)
{
    if (runq_len == 0)
        return 0;
    struct kthread *t = runq[runq_head];
    runq_head = (runq_head + 1) % KTHREAD_MAX;
    runq_len--;
    return t;
}

static void wq_append(struct kwaitq *q, struct kthread *t)
{
    t->wq_next = 0;
    if (q->tail)
        q->tail->wq_next = t;
    else
        q->head = t;
    q->tail = t;
}

static void wq_unlink(struct kwaitq *q, struct kthread *t)
{
    struct kthread *prev = 0;
    for (struct kthread *p = q->head; p; prev = p, p = p->wq_next) {
        if (p != t)
            continue;
        if (prev)
            prev->wq_next = p->wq_next;
        else
            q->head = p->wq_next;
        if (q->tail == p)
            q->tail = prev;
        p->wq_next = 0;
        return;
    }
}

/* Make a blocked thread runnable, off whatever it waited on. */
static void wake_thread(struct kthread *t)
{
    if (t->waitq)
        wq_unlink(t->waitq, t);
    t->waitq = 0;
    t->deadline = 0;
    runq_push(t);
}

/* ---- switching and idling ---- */

static void switch_to(struct kthread *next)
{
    struct kthread *prev = cur;
    next->state = TS_RUNNING;
    if (next == prev)
        return;
    if (prev->state != TS_FREE)
        fpu_save(prev->fpu);
    cur = next;
    arch_set_kstack(next->kstack_top);
    /* Without FSGSBASE a write costs a ring-0 gate: skip equal ones. */
    if (next->fs != arch_get_fs())
        arch_set_fs(next->fs);
    arch_switch(&prev->ksp, next->ksp);
    /* prev runs again: whoever switched here set its stack and FS. */
    fpu_restore(prev->fpu);
}

static void expire_deadlines(void)
{
    uint64_t now = rdtsc();
    for (int i = 0; i < KTHREAD_MAX; i++) {
        struct kthread *t = &threads[i];
        if (t->state == TS_BLOCKED && t->deadline && t->deadline <= now) {
            t->timed_out = 1;
            wake_thread(t);
        }
    }
}

static __attribute__((noreturn)) void deadlock(void)
{
    kputs("kiln: deadlock: every thread is blocked forever\n");
    kexit(KILN_EXIT_PANIC, 255, 0, 0);
}

/* Nothing can run: wait in the VMM for the nearest deadline or for input
 * to the stdin reader, in one hypercall. */
static void idle(void)
{
    uint64_t nearest = 0;
    for (int i = 0; i < KTHREAD_MAX; i++) {
        struct kthread *t = &threads[i];
        if (t->state == TS_BLOCKED && t->deadline &&
            (nearest == 0 || t->deadline < nearest))
            nearest = t->deadline;
    }
    int eof;
    if (input.t) {
        uint64_t got = stdio_idle(input.gpa, input.cap, nearest, &eof);
        if (got > 0 || eof) {
            struct kthread *t = input.t;
            input.t = 0;
            input.got = (int64_t)got;
            wake_thread(t);
        }
        return;
    }
    if (nearest == 0)
        deadlock();
    stdio_idle(0, 0, nearest, &eof);
}

/* Give the vCPU away until the current thread is picked again. The caller
 * has already put it on a queue, blocked it, or freed it (then this never
 * returns). */
static void schedule(void)
{
    for (;;) {
        expire_deadlines();
        struct kthread *next = runq_pop();
        if (next) {
            switch_to(next);
            return;
        }
        idle();
    }
}

/* ---- the ksys.h interface ---- */

void sched_init(void)
{
    fpu_init();
    struct kthread *t = &threads[0];
    t->tid = 1;
    t->state = TS_RUNNING;
    t->kstack_top = arch_boot_kstack_top();
    t->altstack_flags = SS_DISABLE;
    cur = t;
    nlive = 1;
}

struct kthread *sched_current(void)
{
    return cur;
}

struct kthread *sched_thread(int tid)
{
    for (int i = 0; i < KTHREAD_MAX; i++)
        if (threads[i].state != TS_FREE && threads[i].tid == tid)
            return &threads[i];
    return 0;
}

int64_t waitq_wait(struct kwaitq *q, uint64_t deadline_tsc)
{
    struct kthread *me = cur;
    me->waitq = q;
    if (q)
        wq_append(q, me);
    me->deadline = deadline_tsc;
    me->timed_out = 0;
    me->state = TS_BLOCKED;
    schedule();
    return me->timed_out ? -ETIMEDOUT : 0;
}

int waitq_wake(struct kwaitq *q, int n)
{
    int woken = 0;
    while (woken < n && q->head) {
        wake_thread(q->head);
        woken++;
    }
    return woken;
}

void sched_yield(void)
{
    runq_push(cur);
    schedule();
}

void sched_sleep_until(uint64_t deadline_tsc)
{
    waitq_wait(0, deadline_tsc ? deadline_tsc : 1);
}

int64_t sched_wait_input(uint64_t p, uint64_t n)
{
    uint64_t gpa;
    int64_t c = vmem_phys(p, n, &gpa);
    if (c < 0)
        return c;
    input.t = cur;
    input.gpa = gpa;
    input.cap = (uint64_t)c;
    input.got = 0;
    waitq_wait(0, 0);
    return input.got;
}

/* ---- futex ---- */

#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define FUTEX_REQUEUE 3
#define FUTEX_CMP_REQUEUE 4
#define FUTEX_WAKE_OP 5
#define FUTEX_WAIT_BITSET 9
#define FUTEX_WAKE_BITSET 10
#define FUTEX_PRIVATE_FLAG 128
#define FUTEX_CLOCK_REALTIME 256
#define FUTEX_BITSET_ANY 0xffffffffu

static int64_t futex_check(uint64_t uaddr)
{
    if (uaddr & 3)
        return -EINVAL;
    if (!UVALID(uaddr, 4))
        return -EFAULT;
    return 0;
}

/* Wake up to n waiters on uaddr whose bitset meets bitset (Linux's
 * futex_wake, quirks included). */
static int futex_wake(uint64_t uaddr, int n, uint32_t bitset)
{
    int woken = 0;
    if (n <= 0) /* Linux counts after the first wake-up: 0 wakes one */
        n = 1;
    struct kthread *t = futex_q.head;
    while (t && woken < n) {
        struct kthread *next = t->wq_next;
        if (t->wait_key == uaddr && (t->wait_bitset & bitset)) {
            wake_thread(t);
            woken++;
        }
        t = next;
    }
    return woken;
}

static int64_t futex_wait(uint64_t uaddr, uint32_t val, uint64_t deadline,
                          uint32_t bitset)
{
    /* Nothing runs between this check and the block, so no wake-up can
     * slip in between: the atomicity Linux buys with the hash-bucket lock. */
    if (*(volatile uint32_t *)UPTR(uaddr) != val)
        return -EAGAIN;
    cur->wait_key = uaddr;
    cur->wait_bitset = bitset;
    int64_t r = waitq_wait(&futex_q, deadline);
    cur->wait_key = 0;
    return r;
}

static int64_t futex_requeue(uint64_t uaddr, int nwake, int nreq,
                             uint64_t uaddr2, int cmp, uint32_t val3)
{
    int64_t e = futex_check(uaddr);
    if (e == 0)
        e = futex_check(uaddr2);
    if (e)
        return e;
    if (nwake < 0 || nreq < 0)
        return -EINVAL;
    if (cmp && *(volatile uint32_t *)UPTR(uaddr) != val3)
        return -EAGAIN;
    int woken = 0, moved = 0;
    for (struct kthread *t = futex_q.head, *next; t; t = next) {
        next = t->wq_next;
        if (t->wait_key != uaddr)
            continue;
        if (woken < nwake) {
            wake_thread(t);
            woken++;
        } else if (moved < nreq) {
            t->wait_key = uaddr2;
            moved++;
        } else {
            break;
        }
    }
    return woken + moved;
}

static int64_t futex_wake_op(uint64_t uaddr, int n, uint64_t uaddr2, int n2,
                             uint32_t enc)
{
    int64_t e = futex_check(uaddr);
    if (e == 0)
        e = futex_check(uaddr2);
    if (e)
        return e;
    uint32_t op = (enc >> 28) & 7, cmp = (enc >> 24) & 15;
    int32_t oparg = (int32_t)(enc << 8) >> 20; /* 12-bit signed fields */
    int32_t cmparg = (int32_t)(enc << 20) >> 20;
    if (enc & (1u << 31)) /* FUTEX_OP_OPARG_SHIFT */
        oparg = (int32_t)(1u << (oparg & 31));
    if (op > 4 || cmp > 5)
        return -ENOSYS;
    volatile int32_t *w = UPTR(uaddr2);
    int32_t old = *w;
    switch (op) {
    case 0: *w = oparg; break;
    case 1: *w = (int32_t)((uint32_t)old + (uint32_t)oparg); break;
    case 2: *w = old | oparg; break;
    case 3: *w = old & ~oparg; break;
    case 4: *w = old ^ oparg; break;
    }
    int hit = 0;
    switch (cmp) {
    case 0: hit = old == cmparg; break;
    case 1: hit = old != cmparg; break;
    case 2: hit = old < cmparg; break;
    case 3: hit = old <= cmparg; break;
    case 4: hit = old > cmparg; break;
    case 5: hit = old >= cmparg; break;
    }
    int woken = futex_wake(uaddr, n, FUTEX_BITSET_ANY);
    if (hit)
        woken += futex_wake(uaddr2, n2, FUTEX_BITSET_ANY);
    return woken;
}

static int64_t sys_futex(uint64_t uaddr, uint64_t op, uint64_t val,
                         uint64_t timeout, uint64_t uaddr2, uint64_t val3)
{
    uint64_t cmd = op & ~(uint64_t)(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    int realtime = (op & FUTEX_CLOCK_REALTIME) != 0;
    if (realtime && cmd != FUTEX_WAIT_BITSET)
        return -ENOSYS;
    int64_t e;
    switch (cmd) {
    case FUTEX_WAIT:
    case FUTEX_WAIT_BITSET: {
        uint32_t bitset = cmd == FUTEX_WAIT ? FUTEX_BITSET_ANY : (uint32_t)val3;
        if (bitset == 0)
            return -EINVAL;
        if ((e = futex_check(uaddr)))
            return e;
        uint64_t deadline = 0;
        if (timeout) {
            uint64_t ns;
            if ((e = read_timespec(timeout, &ns)))
                return e;
            if (cmd == FUTEX_WAIT) {
                uint64_t now = clock_ns(1);
                deadline = clock_deadline_tsc(1, now + ns < now ? UINT64_MAX : now + ns);
            } else {
                deadline = clock_deadline_tsc(realtime ? 0 : 1, ns);
            }
        }
        return futex_wait(uaddr, (uint32_t)val, deadline, bitset);
    }
    case FUTEX_WAKE:
    case FUTEX_WAKE_BITSET: {
        uint32_t bitset = cmd == FUTEX_WAKE ? FUTEX_BITSET_ANY : (uint32_t)val3;
        if (bitset == 0)
            return -EINVAL;
        if ((e = futex_check(uaddr)))
            return e;
        int n = (int)val;
        return futex_wake(uaddr, n, bitset);
    }
    case FUTEX_REQUEUE:
    case FUTEX_CMP_REQUEUE:
        return futex_requeue(uaddr, (int)val, (int)timeout, uaddr2,
                             cmd == FUTEX_CMP_REQUEUE, (uint32_t)val3);
    case FUTEX_WAKE_OP:
        return futex_wake_op(uaddr, (int)val, uaddr2, (int)timeout, (uint32_t)val3);
    }
    return -ENOSYS;
}

/* ---- threads ---- */

static void thread_start(void)
{
    fpu_restore(cur->fpu);
    arch_resume(&start_frame[slot_of(cur)]);
}

static int32_t alloc_tid(void)
{
    for (;;) {
        int32_t tid = next_tid;
        next_tid = next_tid >= TID_MAX ? 2 : next_tid + 1;
        int used = 0;
        for (int i = 0; i < KTHREAD_MAX; i++)
            if (threads[i].state != TS_FREE && threads[i].tid == tid)
                used = 1;
        if (!used)
            return tid;
    }
}

static int64_t sys_clone(uint64_t flags, uint64_t newsp, uint64_t ptid,
                         uint64_t ctid, uint64_t tls, const struct kframe *f)
{
    if ((flags & CLONE_REQUIRED) != CLONE_REQUIRED || (flags & ~(uint64_t)CLONE_ALLOWED))
        return -EINVAL;
    if ((flags & CLONE_SETTLS) && tls >= (1ULL << 47))
        return -EPERM;
    if ((flags & CLONE_PARENT_SETTID) && (ptid & 3 || !UVALID(ptid, 4)))
        return -EFAULT;
    if ((flags & (CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID)) &&
        (ctid & 3 || !UVALID(ctid, 4)))
        return -EFAULT;
    struct kthread *t = 0;
    for (int i = 0; i < KTHREAD_MAX && !t; i++)
        if (threads[i].state == TS_FREE)
            t = &threads[i];
    if (!t)
        return -EAGAIN;
    /* The parent needs an FPU area too before the first switch away. */
    if (slot_memory(cur) || slot_memory(t))
        return -ENOMEM;

    struct kthread *p = cur;
    void *fp = t->fpu;
    uint64_t top = t->kstack_top;
    memset(t, 0, sizeof(*t));
    t->fpu = fp;
    t->kstack_top = top;
    t->tid = alloc_tid();
    t->fs = (flags & CLONE_SETTLS) ? tls : p->fs;
    t->clear_tid = (flags & CLONE_CHILD_CLEARTID) ? ctid : 0;
    t->sigmask = p->sigmask;
    t->altstack_flags = SS_DISABLE;
    robust_head[slot_of(t)] = 0;

    struct kframe *sf = &start_frame[slot_of(t)];
    *sf = *f;
    sf->rax = 0;
    if (newsp)
        sf->rsp = newsp;
    /* Linux copies the parent's FPU state into the child. */
    fpu_save(t->fpu);
    t->ksp = arch_thread_stack(t->kstack_top, thread_start);

    if (flags & CLONE_PARENT_SETTID)
        *(volatile int32_t *)UPTR(ptid) = t->tid;
    if (flags & CLONE_CHILD_SETTID)
        *(volatile int32_t *)UPTR(ctid) = t->tid;
    nlive++;
    runq_push(t);
    return t->tid;
}

static __attribute__((noreturn)) void thread_exit(int32_t status)
{
    struct kthread *me = cur;
    if (nlive == 1)
        kexit(KILN_EXIT_NORMAL, status & 0xff, 0, 0);
    if (me->clear_tid && !(me->clear_tid & 3) && UVALID(me->clear_tid, 4)) {
        *(volatile int32_t *)UPTR(me->clear_tid) = 0;
        futex_wake(me->clear_tid, 1, FUTEX_BITSET_ANY);
    }
    nlive--;
    /* The slot's stack stays in use until the switch below; nothing can
     * reuse it before then, since only a running thread can clone. */
    me->state = TS_FREE;
    schedule();
    kpanic("a dead thread was scheduled");
}

static int64_t sys_set_robust_list(uint64_t head, uint64_t len)
{
    if (len != 24) /* sizeof(struct robust_list_head) */
        return -EINVAL;
    robust_head[slot_of(cur)] = head;
    return 0;
}

/* ---- sleeping ---- */

static int64_t sys_nanosleep(uint64_t req)
{
    uint64_t ns;
    int64_t e = read_timespec(req, &ns);
    if (e)
        return e;
    uint64_t now = clock_ns(1);
    sched_sleep_until(clock_deadline_tsc(1, now + ns < now ? UINT64_MAX : now + ns));
    return 0;
}

static int64_t sys_clock_nanosleep(uint64_t clk, uint64_t flags, uint64_t req)
{
    /* As Linux: clocks without a sleep are EOPNOTSUPP, unknown ones
     * EINVAL. PROCESS_CPUTIME would never advance while the only process
     * sleeps, so it is refused too (Linux sleeps on it). */
    if (clk == 10 || clk > 11)
        return -EINVAL;
    if (clk == 2 || clk == 3 || clk == 4 || clk == 5 || clk == 6)
        return -ENOTSUP;
    if (clk == 11) /* TAI: no leap-second table, so it is REALTIME */
        clk = 0;
    uint64_t ns;
    int64_t e = read_timespec(req, &ns);
    if (e)
        return e;
    if (flags & 1) { /* TIMER_ABSTIME */
        sched_sleep_until(clock_deadline_tsc(clk, ns));
        return 0;
    }
    uint64_t now = clock_ns(clk);
    sched_sleep_until(clock_deadline_tsc(clk, now + ns < now ? UINT64_MAX : now + ns));
    return 0;
}

int sched_syscall(uint64_t nr, const uint64_t *a, struct kframe *f, int64_t *ret)
{
    switch (nr) {
    case 24: sched_yield(); *ret = 0; return 1;
    case 35: *ret = sys_nanosleep(a[0]); return 1;
    case 56: *ret = sys_clone(a[0], a[1], a[2], a[3], a[4], f); return 1;
    case 57:                                                /* fork */
    case 58:                                                /* vfork */
    case 435:                                               /* clone3 */
    case 334:                                               /* rseq */
        *ret = -ENOSYS;
        return 1;
    case 60: thread_exit((int32_t)a[0]);                    /* exit */
    case 231:                                               /* exit_group */
        kexit(KILN_EXIT_NORMAL, (int32_t)(a[0] & 0xff), 0, 0);
    case 186: *ret = cur->tid; return 1;                    /* gettid */
    case 202: *ret = sys_futex(a[0], a[1], a[2], a[3], a[4], a[5]); return 1;
    case 218:                                               /* set_tid_address */
        cur->clear_tid = a[0];
        *ret = cur->tid;
        return 1;
    case 230: *ret = sys_clock_nanosleep(a[0], a[1], a[2]); return 1;
    case 273: *ret = sys_set_robust_list(a[0], a[1]); return 1;
    }
    return 0;
}

/*
 * signal.c — dispositions (rt_sigaction), masks (rt_sigprocmask),
 * alternate stacks (sigaltstack) and signals a program sends itself.
 * Handlers are recorded; running them (rt_sigframe) comes with threads.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

#define OK(p, n) UVALID(p, n)
#define NSIG 64

struct ksigaction {
    uint64_t handler, flags, restorer, mask;
};

static struct {
    struct ksigaction act[NSIG + 1];
} S;

void signal_init(void)
{
    sched_current()->altstack_flags = 2; /* SS_DISABLE */
}

static void fatal_signal(int sig, const char *why)
{
    struct kbuf b = {(char[96]){0}, 0, 96};
    kb_str(&b, "kiln: ");
    kb_str(&b, why);
    kb_str(&b, " (signal ");
    kb_udec(&b, (uint64_t)sig);
    kb_str(&b, ")\n");
    stdio_write(2, b.p, b.len);
    kexit(KILN_EXIT_SIGNAL, 128 + sig, (uint32_t)sig, 0);
}


static int64_t sys_rt_sigaction(uint64_t sig, uint64_t act, uint64_t oact,
                                uint64_t size)
{
    if (size != 8 || sig < 1 || sig > NSIG)
        return -EINVAL;
    if (act && (sig == 9 || sig == 19)) /* SIGKILL, SIGSTOP */
        return -EINVAL;
    struct ksigaction n;
    if (act) {
        if (!OK(act, sizeof(n)))
            return -EFAULT;
        memcpy(&n, UPTR(act), sizeof(n));
    }
    if (oact) {
        if (!OK(oact, sizeof(n)))
            return -EFAULT;
        memcpy(UPTR(oact), &S.act[sig], sizeof(n));
    }
    if (act) {
        n.mask &= ~((1ULL << 8) | (1ULL << 18));
        S.act[sig] = n;
    }
    return 0;
}

static int64_t sys_rt_sigprocmask(uint64_t how, uint64_t set, uint64_t oset,
                                  uint64_t size)
{
    if (size != 8)
        return -EINVAL;
    uint64_t n = 0;
    if (set) {
        if (how > 2)
            return -EINVAL;
        if (!OK(set, 8))
            return -EFAULT;
        n = *(uint64_t *)UPTR(set);
    }
    if (oset) {
        if (!OK(oset, 8))
            return -EFAULT;
        *(uint64_t *)UPTR(oset) = sched_current()->sigmask;
    }
    if (set) {
        if (how == 0)
            sched_current()->sigmask |= n;
        else if (how == 1)
            sched_current()->sigmask &= ~n;
        else
            sched_current()->sigmask = n;
        sched_current()->sigmask &= ~((1ULL << 8) | (1ULL << 18));
    }
    return 0;
}

struct kstack {
    uint64_t sp;
    int32_t flags, pad;
    uint64_t size;
};

static int64_t sys_sigaltstack(uint64_t ss, uint64_t old)
{
    struct kstack n;
    if (ss) {
        if (!OK(ss, sizeof(n)))
            return -EFAULT;
        memcpy(&n, UPTR(ss), sizeof(n));
        int32_t f = n.flags & ~(int32_t)0x80000000; /* SS_AUTODISARM */
        if (f != 0 && f != 2)
            return -EINVAL;
        if (f == 0 && n.size < 2048) /* MINSIGSTKSZ */
            return -ENOMEM;
    }
    if (old) {
        if (!OK(old, sizeof(n)))
            return -EFAULT;
        struct kstack *o = UPTR(old);
        o->sp = sched_current()->altstack_sp;
        o->flags = sched_current()->altstack_flags;
        o->pad = 0;
        o->size = sched_current()->altstack_size;
    }
    if (ss) {
        sched_current()->altstack_sp = n.sp;
        sched_current()->altstack_size = n.size;
        sched_current()->altstack_flags = n.flags;
    }
    return 0;
}

/* A signal sent to ourselves. Handlers cannot run yet (no signal frames),
 * so anything not ignored or blocked ends the program as unhandled. */
static int64_t raise_sig(uint64_t sig)
{
    if (sig == 0)
        return 0;
    if (sig > NSIG)
        return -EINVAL;
    if ((sched_current()->sigmask >> (sig - 1)) & 1)
        return 0;
    uint64_t h = S.act[sig].handler;
    if (h == 1) /* SIG_IGN */
        return 0;
    if (h == 0 && (sig == 17 || sig == 18 || sig == 23 || sig == 28))
        return 0; /* default action: ignore */
    fatal_signal((int)sig, "killed by a signal sent to itself");
    return 0;
}


int signal_syscall(uint64_t nr, const uint64_t *a, struct kframe *f, int64_t *ret)
{
    (void)f;
    switch (nr) {
    case 13: *ret = sys_rt_sigaction(a[0], a[1], a[2], a[3]); return 1;
    case 14: *ret = sys_rt_sigprocmask(a[0], a[1], a[2], a[3]); return 1;
    case 62:                                                /* kill */
        *ret = a[0] == 1 || a[0] == 0 || (int64_t)a[0] == -1 ? raise_sig(a[1]) : -ESRCH;
        return 1;
    case 131: *ret = sys_sigaltstack(a[0], a[1]); return 1;
    case 200: *ret = a[0] == 1 ? raise_sig(a[1]) : -ESRCH; return 1; /* tkill */
    case 234: *ret = a[1] == 1 ? raise_sig(a[2]) : -ESRCH; return 1; /* tgkill */
    }
    return 0;
}

int signal_deliver_fault(struct kfault *f, int signo, int code, uint64_t addr)
{
    (void)f;
    (void)signo;
    (void)code;
    (void)addr;
    return 0;
}

void signal_on_return(struct kframe *f)
{
    (void)f;
}

/*
 * signal.c — dispositions (rt_sigaction), masks (rt_sigprocmask), alternate
 * stacks (sigaltstack), pending signals, and running handlers: the x86-64
 * Linux rt_sigframe, byte for byte, so that a handler written for Linux
 * (musl's, Go's runtime.sigtramp) reads its siginfo and ucontext where it
 * expects them and rt_sigreturn puts back exactly what it left there.
 *
 * There is one vCPU and no preemption, so a signal reaches a thread only at
 * the two points where the kernel holds its registers: the end of one of its
 * syscalls (signal_on_return) and a synchronous fault (signal_deliver_fault).
 * Dispositions are per process; masks, pending sets and alternate stacks per
 * thread (struct kthread). Standard signals do not queue: pending is a set.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

#define OK(p, n) UVALID(p, n)
#define NSIG 64
#define BIT(sig) (1ULL << ((sig) - 1))

#define SIGKILL 9
#define SIGSEGV 11
#define SIGCHLD 17
#define SIGCONT 18
#define SIGSTOP 19
#define SIGTSTP 20
#define SIGTTIN 21
#define SIGTTOU 22
#define SIGURG 23
#define SIGWINCH 28
#define UNBLOCKABLE (BIT(SIGKILL) | BIT(SIGSTOP))

#define SIG_DFL 0
#define SIG_IGN 1

#define SA_SIGINFO 0x4ULL
#define SA_RESTORER 0x04000000ULL
#define SA_ONSTACK 0x08000000ULL
#define SA_NODEFER 0x40000000ULL
#define SA_RESETHAND 0x80000000ULL

#define SS_ONSTACK 1
#define SS_DISABLE 2
#define SS_AUTODISARM ((int32_t)0x80000000)
#define MINSIGSTKSZ 2048

#define SI_USER 0
#define SI_TKILL (-6)

#define UC_FP_XSTATE 0x1
#define UC_SIGCONTEXT_SS 0x2
#define UC_STRICT_RESTORE_SS 0x4

#define FP_XSTATE_MAGIC1 0x46505853U
#define FP_XSTATE_MAGIC2 0x46505845U
#define FXSAVE_SIZE 512
#define XSAVE_HDR_SIZE 64

/* RFLAGS bits a handler may change through uc_mcontext (Linux FIX_EFLAGS):
 * the arithmetic flags, TF, DF, AC and RF — never IOPL, IF or the rest. */
#define FIX_EFLAGS 0x50dd5ULL
#define RFLAGS_TF 0x100ULL
#define RFLAGS_DF 0x400ULL
#define RFLAGS_RF 0x10000ULL

#define USER_ADDR_END (1ULL << 47) /* canonical lower half */

/* ---- the Linux UAPI layouts (arch/x86/include/uapi/asm/) ---- */

struct kstack { /* stack_t */
    uint64_t sp;
    int32_t flags, pad;
    uint64_t size;
};

struct ksigcontext { /* struct sigcontext (64-bit) */
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags;
    uint16_t cs, gs, fs, ss;
    uint64_t err, trapno, oldmask, cr2;
    uint64_t fpstate;
    uint64_t reserved1[8];
};

struct kucontext {
    uint64_t uc_flags;
    uint64_t uc_link;
    struct kstack uc_stack;
    struct ksigcontext uc_mcontext;
    uint64_t uc_sigmask;
};

struct ksiginfo {
    int32_t signo, err, code, pad;
    union {
        uint64_t addr; /* SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP */
        struct {
            int32_t pid;
            uint32_t uid;
        } kill;
        uint8_t raw[112];
    } f;
};

/* What the handler finds at its RSP: the return address first, as after a
 * call, so that its `ret` lands in sa_restorer (rt_sigreturn). */
struct rt_sigframe {
    uint64_t pretcode;
    struct kucontext uc;
    struct ksiginfo info;
};

/* fpx_sw_bytes: in the FXSAVE area's software-reserved bytes 464–511. */
struct fpx_sw_bytes {
    uint32_t magic1, extended_size;
    uint64_t xfeatures;
    uint32_t xstate_size;
    uint32_t padding[7];
};

_Static_assert(sizeof(struct kstack) == 24, "stack_t");
_Static_assert(sizeof(struct ksigcontext) == 256, "sigcontext");
_Static_assert(sizeof(struct kucontext) == 304, "ucontext");
_Static_assert(__builtin_offsetof(struct kucontext, uc_mcontext) == 40, "uc_mcontext");
_Static_assert(sizeof(struct ksiginfo) == 128, "siginfo");
_Static_assert(__builtin_offsetof(struct rt_sigframe, info) == 312, "rt_sigframe");
_Static_assert(sizeof(struct rt_sigframe) == 440, "rt_sigframe");
_Static_assert(sizeof(struct fpx_sw_bytes) == 48, "fpx_sw_bytes");

struct ksigaction {
    uint64_t handler, flags, restorer, mask;
};

/* What a delivery needs besides the registers. */
struct sigdesc {
    int sig;
    int32_t code;
    uint64_t addr;            /* si_addr for faults */
    uint64_t trapno, err, cr2; /* sigcontext's view of the fault */
    int fault;                /* si_addr (fault) rather than si_pid/uid */
};

static struct {
    struct ksigaction act[NSIG + 1];
    uint64_t shared;          /* process-directed signals pending */
    int32_t code[NSIG + 1];   /* si_code of the pending signal (last sender) */
    struct kwaitq wq;         /* threads in rt_sigsuspend / rt_sigtimedwait */
    /* rt_sigsuspend's mask to restore, consumed by the next delivery of
     * the same syscall (nothing runs in between: no preemption). */
    int32_t suspend_tid;
    uint64_t suspend_mask;
    /* The FPU save format, found on first use (CPUID is a VM exit). */
    int fpu_kind;             /* 0 unknown, 1 FXSAVE, 2 XSAVE */
    uint32_t fpu_size;        /* bytes the save area takes (XSAVE: + magic2) */
    uint32_t xstate_size;
    uint64_t xcr0;
    uint32_t mxcsr_mask;
} S;

/* The FPU state a handler starts with (Linux gives it a clean one): FCW
 * 0x37f, MXCSR 0x1f80, and an XSAVE header of zeros, which XRSTOR reads as
 * "every component in its initial state". */
static uint8_t fpu_init_image[FXSAVE_SIZE + XSAVE_HDR_SIZE] __attribute__((aligned(64)));
static uint8_t fxsave_probe[FXSAVE_SIZE] __attribute__((aligned(64)));

/* fault.c: the memory limit is reached; ends the VM like the OOM killer. */
__attribute__((noreturn)) void fault_out_of_memory(const struct kfault *f);

void signal_init(void)
{
    sched_current()->altstack_flags = SS_DISABLE;
}

static const char *const signames[NSIG + 1] = {
    [1] = "SIGHUP",   [2] = "SIGINT",    [3] = "SIGQUIT",  [4] = "SIGILL",
    [5] = "SIGTRAP",  [6] = "SIGABRT",   [7] = "SIGBUS",   [8] = "SIGFPE",
    [9] = "SIGKILL",  [10] = "SIGUSR1",  [11] = "SIGSEGV", [12] = "SIGUSR2",
    [13] = "SIGPIPE", [14] = "SIGALRM",  [15] = "SIGTERM", [16] = "SIGSTKFLT",
    [24] = "SIGXCPU", [25] = "SIGXFSZ",  [26] = "SIGVTALRM", [27] = "SIGPROF",
    [29] = "SIGIO",   [30] = "SIGPWR",   [31] = "SIGSYS",
};

/* The program ends as Linux ends it on a fatal signal: status 128 + sig. */
__attribute__((noreturn)) static void die(int sig, const char *why,
                                          const struct kfault *f)
{
    char tmp[160];
    struct kbuf b = {tmp, 0, sizeof(tmp)};
    kb_str(&b, "kiln: ");
    if (sig <= NSIG && signames[sig]) {
        kb_str(&b, signames[sig]);
        kb_str(&b, ": ");
    }
    kb_str(&b, why);
    kb_str(&b, " (signal ");
    kb_udec(&b, (uint64_t)sig);
    kb_str(&b, ")\n");
    stdio_write(2, tmp, b.len);
    kexit(KILN_EXIT_SIGNAL, 128 + sig, (uint32_t)sig, f);
}

/* Whether sig's default action is to do nothing. Stop signals count: there
 * is no one to send SIGCONT, and stopping a function forever helps nobody. */
static int default_ignored(int sig)
{
    return sig == SIGCHLD || sig == SIGCONT || sig == SIGURG || sig == SIGWINCH ||
           sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

static int ignored(int sig)
{
    uint64_t h = S.act[sig].handler;
    return h == SIG_IGN || (h == SIG_DFL && default_ignored(sig));
}

/* ---- alternate stacks ---- */

static int on_sig_stack(const struct kthread *t, uint64_t sp)
{
    /* With SS_AUTODISARM the stack is disarmed while a handler runs on it,
     * so "on it" cannot be known and Linux answers no. */
    if (t->altstack_flags & SS_AUTODISARM)
        return 0;
    return sp > t->altstack_sp && sp - t->altstack_sp <= t->altstack_size;
}

static int32_t sas_ss_flags(const struct kthread *t, uint64_t sp)
{
    if (t->altstack_size == 0)
        return SS_DISABLE;
    return on_sig_stack(t, sp) ? SS_ONSTACK : 0;
}

/* sigaltstack's core, also used by rt_sigreturn; sp is the caller's RSP. */
static int64_t set_altstack(struct kthread *t, const struct kstack *n, uint64_t sp)
{
    if (on_sig_stack(t, sp))
        return -EPERM;
    int32_t mode = n->flags & ~SS_AUTODISARM;
    if (mode != 0 && mode != SS_ONSTACK && mode != SS_DISABLE)
        return -EINVAL;
    if (mode == SS_DISABLE) {
        t->altstack_sp = 0;
        t->altstack_size = 0;
    } else {
        if (n->size < MINSIGSTKSZ)
            return -ENOMEM;
        t->altstack_sp = n->sp;
        t->altstack_size = n->size;
    }
    t->altstack_flags = n->flags;
    return 0;
}

static int64_t sys_sigaltstack(uint64_t ss, uint64_t old, uint64_t sp)
{
    struct kthread *t = sched_current();
    struct kstack n, o = {
        .sp = t->altstack_sp,
        .flags = sas_ss_flags(t, sp) | (t->altstack_flags & SS_AUTODISARM),
        .size = t->altstack_size,
    };
    if (ss) {
        if (!OK(ss, sizeof(n)))
            return -EFAULT;
        memcpy(&n, UPTR(ss), sizeof(n));
    }
    if (old && !OK(old, sizeof(o)))
        return -EFAULT;
    if (ss) {
        int64_t e = set_altstack(t, &n, sp);
        if (e)
            return e;
    }
    if (old)
        memcpy(UPTR(old), &o, sizeof(o));
    return 0;
}

/* ---- dispositions and masks ---- */

static int64_t sys_rt_sigaction(uint64_t sig, uint64_t act, uint64_t oact,
                                uint64_t size)
{
    if (size != 8 || sig < 1 || sig > NSIG)
        return -EINVAL;
    if (act && (sig == SIGKILL || sig == SIGSTOP))
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
        n.mask &= ~UNBLOCKABLE;
        S.act[sig] = n;
        /* POSIX: a pending signal whose action becomes "ignore" is
         * discarded. Other threads' sets keep it until they would deliver
         * it, where it is dropped as ignored anyway. */
        if (ignored((int)sig)) {
            S.shared &= ~BIT(sig);
            sched_current()->sigpending &= ~BIT(sig);
        }
    }
    return 0;
}

static int64_t sys_rt_sigprocmask(uint64_t how, uint64_t set, uint64_t oset,
                                  uint64_t size)
{
    struct kthread *t = sched_current();
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
        *(uint64_t *)UPTR(oset) = t->sigmask;
    }
    if (set) {
        if (how == 0)      /* SIG_BLOCK */
            t->sigmask |= n;
        else if (how == 1) /* SIG_UNBLOCK */
            t->sigmask &= ~n;
        else               /* SIG_SETMASK */
            t->sigmask = n;
        t->sigmask &= ~UNBLOCKABLE;
    }
    return 0;
}

static uint64_t pending_of(const struct kthread *t)
{
    return t->sigpending | S.shared;
}

static int64_t sys_rt_sigpending(uint64_t set, uint64_t size)
{
    if (size > 8)
        return -EINVAL;
    if (!OK(set, size))
        return -EFAULT;
    struct kthread *t = sched_current();
    uint64_t p = pending_of(t) & t->sigmask;
    memcpy(UPTR(set), &p, size);
    return 0;
}

/* ---- sending ---- */

/*
 * The weak lookup serves until sched.c provides the thread table
 * (ksys.h's sched_thread); with one thread only the caller exists.
 */
__attribute__((weak)) struct kthread *sched_thread(int tid)
{
    struct kthread *t = sched_current();
    return t->tid == tid ? t : 0;
}

static int64_t check_sig(uint64_t sig)
{
    return sig > NSIG ? -EINVAL : 0;
}

/*
 * Make sig pending on thread t (t == 0: on the process). SIGURG is Go's
 * preemption request; threads here are cooperative, so the target is never
 * running while another thread can send it, and there is nothing to
 * preempt: it is dropped. So is any signal that would be ignored.
 */
static void post(struct kthread *t, int sig, int32_t code)
{
    if (sig == SIGURG)
        return;
    struct kthread *cur = sched_current();
    uint64_t blocked = (t ? t : cur)->sigmask;
    if (!(blocked & BIT(sig)) && ignored(sig))
        return;
    S.code[sig] = code;
    if (t)
        t->sigpending |= BIT(sig);
    else if (!(cur->sigmask & BIT(sig)))
        cur->sigpending |= BIT(sig); /* Linux prefers the sender's thread */
    else
        S.shared |= BIT(sig);
    /* Threads waiting in rt_sigsuspend / rt_sigtimedwait look again. */
    waitq_wake(&S.wq, KTHREAD_MAX);
}

static int64_t sys_kill(int64_t pid, uint64_t sig)
{
    if (pid != 1 && pid != 0 && pid != -1)
        return -ESRCH;
    int64_t e = check_sig(sig);
    if (e || sig == 0)
        return e;
    post(0, (int)sig, SI_USER);
    return 0;
}

/* tgkill, and tkill as tgid 0 (no thread group named). */
static int64_t sys_tgkill(int64_t tgid, int64_t tid, uint64_t sig, int tkill)
{
    if (tid <= 0 || (!tkill && tgid <= 0))
        return -EINVAL;
    if (!tkill && tgid != 1)
        return -ESRCH;
    struct kthread *t = sched_thread((int)tid);
    if (!t)
        return -ESRCH;
    int64_t e = check_sig(sig);
    if (e || sig == 0)
        return e;
    post(t, (int)sig, SI_TKILL);
    return 0;
}

/* ---- the FPU part of the frame ---- */

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

static void fpu_probe(void)
{
    if (S.fpu_kind)
        return;
    uint32_t r[4];
    cpuid(1, 0, r);
    S.fpu_kind = 1;
    S.fpu_size = FXSAVE_SIZE;
    if (r[2] & (1U << 27)) { /* OSXSAVE: CR4.OSXSAVE is on */
        uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        S.xcr0 = ((uint64_t)hi << 32) | lo;
        cpuid(0xd, 0, r); /* EBX: the XSAVE size for what XCR0 enables */
        if (r[1] >= FXSAVE_SIZE + XSAVE_HDR_SIZE) {
            S.fpu_kind = 2;
            S.xstate_size = r[1];
            S.fpu_size = r[1] + 4; /* + FP_XSTATE_MAGIC2 */
        }
    }
    __asm__ volatile("fxsave64 %0" : "=m"(fxsave_probe));
    memcpy(&S.mxcsr_mask, fxsave_probe + 28, 4);
    if (S.mxcsr_mask == 0)
        S.mxcsr_mask = 0xffbf; /* the architectural default */
    uint16_t fcw = 0x37f;
    uint32_t mxcsr = 0x1f80;
    memcpy(fpu_init_image, &fcw, 2);
    memcpy(fpu_init_image + 24, &mxcsr, 4);
}

/* Save the function's FPU/SSE/AVX state (the kernel never touches it:
 * -mgeneral-regs-only) at p, 64-byte aligned, in the format Linux uses. */
static void fpu_save(uint8_t *p)
{
    memset(p + 464, 0, 48); /* software bytes: FXSAVE leaves them alone */
    if (S.fpu_kind == 2) {
        /* XRSTOR refuses a header with stray bits; XSAVE writes only
         * XSTATE_BV, so the rest must start out zero. */
        memset(p + FXSAVE_SIZE, 0, XSAVE_HDR_SIZE);
        __asm__ volatile("xsave64 (%0)" ::"r"(p), "a"(-1), "d"(-1) : "memory");
        struct fpx_sw_bytes sw = {
            .magic1 = FP_XSTATE_MAGIC1,
            .extended_size = S.fpu_size,
            .xfeatures = S.xcr0,
            .xstate_size = S.xstate_size,
        };
        memcpy(p + 464, &sw, sizeof(sw));
        uint32_t m2 = FP_XSTATE_MAGIC2;
        memcpy(p + S.xstate_size, &m2, 4);
    } else {
        __asm__ volatile("fxsave64 (%0)" ::"r"(p) : "memory");
    }
}

/* The handler starts with a clean FPU, as on Linux. */
static void fpu_reset(void)
{
    if (S.fpu_kind == 2)
        __asm__ volatile("xrstor64 (%0)" ::"r"(fpu_init_image), "a"(-1), "d"(-1)
                         : "memory");
    else
        __asm__ volatile("fxrstor64 (%0)" ::"r"(fpu_init_image) : "memory");
}

/* Load the FPU state at fp (rt_sigreturn). Everything XRSTOR/FXRSTOR would
 * fault on is checked first: a fault here would be the kernel's. 0 or
 * -EFAULT. */
static int fpu_restore(uint64_t fp, uint64_t uc_flags)
{
    fpu_probe();
    if (fp == 0) {
        fpu_reset();
        return 0;
    }
    if ((fp & 15) || !OK(fp, FXSAVE_SIZE))
        return -EFAULT;
    const uint8_t *p = UPTR(fp);
    uint32_t mxcsr;
    memcpy(&mxcsr, p + 24, 4);
    if (mxcsr & ~S.mxcsr_mask)
        return -EFAULT;
    struct fpx_sw_bytes sw;
    memcpy(&sw, p + 464, sizeof(sw));
    uint32_t m2 = 0;
    int xsave = S.fpu_kind == 2 && (uc_flags & UC_FP_XSTATE) &&
                sw.magic1 == FP_XSTATE_MAGIC1 && sw.xstate_size == S.xstate_size &&
                sw.extended_size == S.fpu_size && (fp & 63) == 0 && OK(fp, S.fpu_size);
    if (xsave)
        memcpy(&m2, p + S.xstate_size, 4);
    /* Anything short of a whole XSAVE frame restores the legacy part only,
     * as Linux's "fx_only". */
    if (xsave && m2 == FP_XSTATE_MAGIC2) {
        uint64_t hdr[8];
        memcpy(hdr, p + FXSAVE_SIZE, sizeof(hdr));
        int clean = (hdr[0] & ~S.xcr0) == 0;
        for (int i = 1; i < 8; i++)
            clean &= hdr[i] == 0;
        if (!clean)
            return -EFAULT;
        __asm__ volatile("xrstor64 (%0)" ::"r"(p), "a"(-1), "d"(-1) : "memory");
        return 0;
    }
    __asm__ volatile("fxrstor64 (%0)" ::"r"(p) : "memory");
    return 0;
}

/* ---- delivery ---- */

/* Whether the kernel may write [addr, addr+len) now: owned by the function
 * and present (demand paging must not happen inside the fault path). */
static int writable_now(uint64_t addr, uint64_t len, const struct kfault *f)
{
    if (!OK(addr, len))
        return 0;
    while (len) {
        uint64_t gpa;
        int64_t n = vmem_phys(addr, len, &gpa);
        if (n == -ENOMEM)
            fault_out_of_memory(f);
        if (n <= 0)
            return 0;
        addr += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 1;
}

/*
 * Build sig's rt_sigframe for the thread whose registers are r and rewrite
 * r to enter the handler; savemask is the mask the frame records (restored
 * by rt_sigreturn). A frame that cannot be written kills the program with
 * SIGSEGV, as Linux's force_sigsegv does.
 */
static void setup_frame(struct kframe *r, const struct sigdesc *d, uint64_t savemask,
                        const struct kfault *f)
{
    struct kthread *t = sched_current();
    struct ksigaction ka = S.act[d->sig];
    if (ka.flags & SA_RESETHAND)
        S.act[d->sig].handler = SIG_DFL;
    if (!(ka.flags & SA_RESTORER))
        die(SIGSEGV, "signal handler without SA_RESTORER", f);
    fpu_probe();

    int nested = on_sig_stack(t, r->rsp), entering = 0;
    uint64_t sp = r->rsp - 128; /* the red zone stays the function's */
    if ((ka.flags & SA_ONSTACK) && sas_ss_flags(t, sp) == 0) {
        sp = t->altstack_sp + t->altstack_size;
        entering = 1;
    }
    uint64_t fp = (sp - S.fpu_size) & ~63ULL;
    uint64_t frame = ((fp - sizeof(struct rt_sigframe)) & ~15ULL) - 8;
    if (sp < S.fpu_size + sizeof(struct rt_sigframe) + 64 ||
        ((nested || entering) && !(frame > t->altstack_sp &&
                                   frame - t->altstack_sp <= t->altstack_size)) ||
        !writable_now(frame, fp + S.fpu_size - frame, f))
        die(SIGSEGV, "cannot write a signal frame on the stack", f);

    struct rt_sigframe *sf = UPTR(frame);
    memset(sf, 0, sizeof(*sf));
    sf->pretcode = ka.restorer;
    sf->uc.uc_flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS |
                      (S.fpu_kind == 2 ? UC_FP_XSTATE : 0);
    sf->uc.uc_stack.sp = t->altstack_sp;
    sf->uc.uc_stack.flags = t->altstack_size ? t->altstack_flags : SS_DISABLE;
    sf->uc.uc_stack.size = t->altstack_size;
    struct ksigcontext *mc = &sf->uc.uc_mcontext;
    mc->r8 = r->r8, mc->r9 = r->r9, mc->r10 = r->r10, mc->r11 = r->r11;
    mc->r12 = r->r12, mc->r13 = r->r13, mc->r14 = r->r14, mc->r15 = r->r15;
    mc->rdi = r->rdi, mc->rsi = r->rsi, mc->rbp = r->rbp, mc->rbx = r->rbx;
    mc->rdx = r->rdx, mc->rax = r->rax, mc->rcx = r->rcx, mc->rsp = r->rsp;
    mc->rip = r->rip, mc->eflags = r->rflags;
    mc->cs = KILN_SEL_USER_CS;
    mc->ss = KILN_SEL_USER_DS;
    mc->err = d->err, mc->trapno = d->trapno, mc->cr2 = d->cr2;
    mc->oldmask = savemask;
    mc->fpstate = fp;
    sf->uc.uc_sigmask = savemask;
    sf->info.signo = d->sig;
    sf->info.code = d->code;
    if (d->fault) {
        sf->info.f.addr = d->addr;
    } else {
        sf->info.f.kill.pid = 1;
        sf->info.f.kill.uid = 0;
    }
    fpu_save(UPTR(fp));
    fpu_reset();

    if (entering && (t->altstack_flags & SS_AUTODISARM)) {
        t->altstack_sp = 0;
        t->altstack_size = 0;
        t->altstack_flags = SS_DISABLE;
    }
    t->sigmask |= ka.mask | ((ka.flags & SA_NODEFER) ? 0 : BIT(d->sig));
    t->sigmask &= ~UNBLOCKABLE;

    r->rip = ka.handler;
    r->rsp = frame;
    r->rdi = (uint64_t)d->sig;
    r->rsi = frame + __builtin_offsetof(struct rt_sigframe, info);
    r->rdx = frame + __builtin_offsetof(struct rt_sigframe, uc);
    r->rax = 0;
    r->rflags &= ~(RFLAGS_DF | RFLAGS_TF | RFLAGS_RF);
}

int signal_deliver_fault(struct kfault *f, int signo, int code, uint64_t addr)
{
    struct kthread *t = sched_current();
    uint64_t h = S.act[signo].handler;
    /* Linux forces a synchronous fault through: blocked or ignored, it
     * takes the default action, which for these signals is to die. */
    if (h == SIG_DFL || h == SIG_IGN || (t->sigmask & BIT(signo)))
        return 0;
    struct sigdesc d = {
        .sig = signo,
        .code = code,
        .addr = addr,
        .trapno = f->vector,
        .err = f->error | (f->vector == 14 ? 4 : 0), /* PF_USER, as Linux */
        .cr2 = f->vector == 14 ? f->cr2 : 0,
        .fault = 1,
    };
    setup_frame(&f->regs, &d, t->sigmask, f);
    return 1;
}

void signal_on_return(struct kframe *f)
{
    struct kthread *t = sched_current();
    int suspended = S.suspend_tid == t->tid;
    uint64_t savemask = suspended ? S.suspend_mask : t->sigmask;
    S.suspend_tid = 0;
    for (;;) {
        uint64_t p = pending_of(t) & ~t->sigmask;
        if (!p)
            break;
        int sig = __builtin_ctzll(p) + 1;
        t->sigpending &= ~BIT(sig);
        S.shared &= ~BIT(sig);
        if (ignored(sig))
            continue;
        if (S.act[sig].handler == SIG_DFL)
            die(sig, "killed by a signal", 0);
        struct sigdesc d = {.sig = sig, .code = S.code[sig]};
        setup_frame(f, &d, savemask, 0);
        return;
    }
    if (suspended)
        t->sigmask = savemask;
}

/* ---- rt_sigreturn, rt_sigsuspend, rt_sigtimedwait ---- */

/*
 * rt_sigreturn could not restore the frame. As Linux does, the registers
 * and mask already restored stay, and SIGSEGV is forced: its handler runs
 * if one may, otherwise the program dies.
 */
__attribute__((noreturn)) static void bad_sigreturn(struct kframe *f, const char *why)
{
    struct kthread *t = sched_current();
    uint64_t h = S.act[SIGSEGV].handler;
    if (h != SIG_DFL && h != SIG_IGN && !(t->sigmask & BIT(SIGSEGV))) {
        struct sigdesc d = {.sig = SIGSEGV, .code = 0x80 /* SI_KERNEL */, .fault = 1};
        setup_frame(f, &d, t->sigmask, 0);
        arch_resume(f);
    }
    die(SIGSEGV, why, 0);
}

__attribute__((noreturn)) static void sys_rt_sigreturn(struct kframe *f)
{
    struct kthread *t = sched_current();
    uint64_t frame = f->rsp - 8; /* the handler's ret popped pretcode */
    if (!OK(frame, sizeof(struct rt_sigframe)))
        bad_sigreturn(f, "rt_sigreturn with a bad frame");
    struct kucontext uc;
    memcpy(&uc, UPTR(frame + 8), sizeof(uc));
    const struct ksigcontext *mc = &uc.uc_mcontext;
    t->sigmask = uc.uc_sigmask & ~UNBLOCKABLE;
    /* As Linux: a failed restore (still on the stack) is not an error. */
    set_altstack(t, &uc.uc_stack, f->rsp);
    f->r8 = mc->r8, f->r9 = mc->r9, f->r10 = mc->r10, f->r11 = mc->r11;
    f->r12 = mc->r12, f->r13 = mc->r13, f->r14 = mc->r14, f->r15 = mc->r15;
    f->rdi = mc->rdi, f->rsi = mc->rsi, f->rbp = mc->rbp, f->rbx = mc->rbx;
    f->rdx = mc->rdx, f->rax = mc->rax, f->rcx = mc->rcx, f->rsp = mc->rsp;
    f->rip = mc->rip;
    /* Not TF: its trap would fire on the next instruction, which is the
     * kernel's own resume path, not the function's. */
    uint64_t fix = FIX_EFLAGS & ~RFLAGS_TF;
    f->rflags = (f->rflags & ~fix) | (mc->eflags & fix);
    if (fpu_restore(mc->fpstate, uc.uc_flags))
        bad_sigreturn(f, "rt_sigreturn with a corrupt FPU state");
    /* Jumping there would fault inside arch_resume, in the kernel. */
    if (f->rip >= USER_ADDR_END)
        bad_sigreturn(f, "rt_sigreturn to a non-canonical address");
    /* A signal the restored mask unblocks is due now, as on Linux's way
     * back to user mode. The syscall return would clobber RCX and R11. */
    signal_on_return(f);
    arch_resume(f);
}

static int64_t sys_rt_sigsuspend(uint64_t set, uint64_t size)
{
    if (size != 8)
        return -EINVAL;
    if (!OK(set, 8))
        return -EFAULT;
    struct kthread *t = sched_current();
    uint64_t old = t->sigmask;
    t->sigmask = *(uint64_t *)UPTR(set) & ~UNBLOCKABLE;
    while (!(pending_of(t) & ~t->sigmask))
        waitq_wait(&S.wq, 0);
    S.suspend_tid = t->tid;
    S.suspend_mask = old;
    return -EINTR;
}

static int64_t sys_rt_sigtimedwait(uint64_t set, uint64_t info, uint64_t ts,
                                   uint64_t size)
{
    if (size != 8)
        return -EINVAL;
    if (!OK(set, 8) || (info && !OK(info, sizeof(struct ksiginfo))))
        return -EFAULT;
    uint64_t want = *(uint64_t *)UPTR(set) & ~UNBLOCKABLE;
    uint64_t deadline = 0;
    int poll = 0;
    if (ts) {
        uint64_t ns;
        int64_t e = read_timespec(ts, &ns);
        if (e)
            return e;
        uint64_t now = clock_ns(1);
        poll = ns == 0;
        deadline = clock_deadline_tsc(1, now + ns < now ? UINT64_MAX : now + ns);
    }
    struct kthread *t = sched_current();
    for (;;) {
        uint64_t p = pending_of(t) & want;
        if (p) {
            int sig = __builtin_ctzll(p) + 1;
            t->sigpending &= ~BIT(sig);
            S.shared &= ~BIT(sig);
            if (info) {
                struct ksiginfo si = {.signo = sig, .code = S.code[sig]};
                si.f.kill.pid = 1;
                memcpy(UPTR(info), &si, sizeof(si));
            }
            return sig;
        }
        if (poll || waitq_wait(&S.wq, deadline) == -ETIMEDOUT) {
            if (pending_of(t) & want)
                continue;
            return -EAGAIN;
        }
    }
}

int signal_syscall(uint64_t nr, const uint64_t *a, struct kframe *f, int64_t *ret)
{
    switch (nr) {
    case 13: *ret = sys_rt_sigaction(a[0], a[1], a[2], a[3]); return 1;
    case 14: *ret = sys_rt_sigprocmask(a[0], a[1], a[2], a[3]); return 1;
    case 15: sys_rt_sigreturn(f);
    case 62: *ret = sys_kill((int64_t)a[0], a[1]); return 1;
    case 127: *ret = sys_rt_sigpending(a[0], a[1]); return 1;
    case 128: *ret = sys_rt_sigtimedwait(a[0], a[1], a[2], a[3]); return 1;
    case 130: *ret = sys_rt_sigsuspend(a[0], a[1]); return 1;
    case 131: *ret = sys_sigaltstack(a[0], a[1], f->rsp); return 1;
    case 200: *ret = sys_tgkill(0, (int64_t)a[0], a[1], 1); return 1; /* tkill */
    case 234: *ret = sys_tgkill((int64_t)a[0], (int64_t)a[1], a[2], 0); return 1;
    }
    return 0;
}

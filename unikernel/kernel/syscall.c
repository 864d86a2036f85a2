/*
 * syscall.c — the Linux x86-64 syscall subset a static single-threaded
 * program uses, answered in ring 3 beside the function. Linux numbers,
 * Linux structs, negative errno. Every pointer the function passes is
 * checked against its address space (vmem) before the kernel touches it,
 * so a bad one is -EFAULT, never a kernel fault. Unknown numbers are
 * -ENOSYS, counted per number and reported at exit.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

/* Per-process state of the small calls answered here. */
struct rlim {
    uint64_t cur, max;
};

#define RLIM_INF (~0ULL)
#define NRLIMIT 16
#define MONO_BASE_NS NSEC_PER_SEC /* Go refuses a monotonic clock of 0 */

const struct kiln_boot_info *kiln_bi;
struct vmem kiln_vm;

static struct {
    struct csprng rng;
    uint64_t rng_gen; /* the boot info's entropy_gen rng was seeded from */
    struct rlim rlim[NRLIMIT];
    int trace;
    uint64_t syscalls, enosys;
    uint32_t enosys_nr[KILN_ENOSYS_SLOTS], enosys_count[KILN_ENOSYS_SLOTS];
} K;

void ksys_fill_stats(struct kiln_hc_exit *e)
{
    e->syscalls = K.syscalls;
    e->enosys = K.enosys;
    e->mem_used = vmem_used_bytes();
    e->mem_peak = vmem_peak_bytes();
    for (int i = 0; i < KILN_ENOSYS_SLOTS; i++) {
        e->enosys_nr[i] = K.enosys_nr[i];
        e->enosys_count[i] = K.enosys_count[i];
    }
}

void libos_init(const struct kiln_boot_info *bi)
{
    if (bi->magic != KILN_BOOT_MAGIC || bi->abi_version != KILN_ABI_VERSION)
        kpanic("boot info: bad magic or ABI version");
    kiln_bi = bi;
    vmemsys_init(bi);
    sched_init();
    fd_init();
    signal_init();
    csprng_seed(&K.rng, bi->entropy);
    K.rng_gen = bi->entropy_gen;
    K.trace = (bi->flags & KILN_BOOT_TRACE) != 0;
    for (int i = 0; i < NRLIMIT; i++)
        K.rlim[i].cur = K.rlim[i].max = RLIM_INF;
    K.rlim[3].cur = K.rlim[3].max = kiln_vm.stack_top - kiln_vm.stack_low; /* STACK */
    K.rlim[4].cur = K.rlim[4].max = 0;                   /* CORE */
    K.rlim[6].cur = K.rlim[6].max = KTHREAD_MAX;         /* NPROC */
    K.rlim[7].cur = 1024;                                /* NOFILE */
    K.rlim[7].max = 4096;
    K.rlim[8].cur = K.rlim[8].max = 8 << 20;             /* MEMLOCK */
    K.rlim[11].cur = K.rlim[11].max = 1024;              /* SIGPENDING */
    K.rlim[12].cur = K.rlim[12].max = 819200;            /* MSGQUEUE */
    K.rlim[13].cur = K.rlim[13].max = 0;                 /* NICE */
    K.rlim[14].cur = K.rlim[14].max = 0;                 /* RTPRIO */
}

/* ---- helpers ---- */

#define OK(p, n) UVALID(p, n)

static uint64_t elapsed_ns(void)
{
    uint64_t now = rdtsc();
    uint64_t t0 = kiln_bi->boot_tsc;
    return now > t0 ? tsc_to_ns(now - t0, kiln_bi->tsc_khz) : 0;
}

uint64_t clock_ns(uint64_t clk)
{
    uint64_t e = elapsed_ns();
    if (clk == 0 || clk == 5 || clk == 8) /* REALTIME, _COARSE, _ALARM */
        return kiln_bi->boot_wall_ns + e;
    return MONO_BASE_NS + e;
}

uint64_t clock_deadline_tsc(uint64_t clk, uint64_t abs_ns)
{
    uint64_t now = clock_ns(clk);
    if (abs_ns <= now)
        return 1;
    uint64_t d = ns_to_tsc(abs_ns - now, kiln_bi->tsc_khz);
    uint64_t t = rdtsc();
    return t > UINT64_MAX - d - 1 ? UINT64_MAX : t + d + 1;
}

/* ---- time ---- */

static int64_t sys_clock_gettime(uint64_t clk, uint64_t ts)
{
    if (clk > 7)
        return -EINVAL;
    if (!OK(ts, sizeof(struct ktimespec)))
        return -EFAULT;
    uint64_t ns = clock_ns(clk);
    struct ktimespec *t = UPTR(ts);
    t->sec = (int64_t)(ns / NSEC_PER_SEC);
    t->nsec = (int64_t)(ns % NSEC_PER_SEC);
    return 0;
}

static int64_t sys_clock_getres(uint64_t clk, uint64_t ts)
{
    if (clk > 7)
        return -EINVAL;
    if (ts == 0)
        return 0;
    if (!OK(ts, sizeof(struct ktimespec)))
        return -EFAULT;
    struct ktimespec *t = UPTR(ts);
    t->sec = 0;
    t->nsec = 1;
    return 0;
}

static int64_t sys_gettimeofday(uint64_t tv, uint64_t tz)
{
    if (tv) {
        if (!OK(tv, 16))
            return -EFAULT;
        uint64_t ns = clock_ns(0);
        int64_t *p = UPTR(tv);
        p[0] = (int64_t)(ns / NSEC_PER_SEC);
        p[1] = (int64_t)(ns % NSEC_PER_SEC / 1000);
    }
    if (tz) {
        if (!OK(tz, 8))
            return -EFAULT;
        memset(UPTR(tz), 0, 8);
    }
    return 0;
}

static int64_t sys_time(uint64_t tp)
{
    int64_t s = (int64_t)(clock_ns(0) / NSEC_PER_SEC);
    if (tp) {
        if (!OK(tp, 8))
            return -EFAULT;
        *(int64_t *)UPTR(tp) = s;
    }
    return s;
}

int64_t read_timespec(uint64_t p, uint64_t *ns)
{
    if (!OK(p, sizeof(struct ktimespec)))
        return -EFAULT;
    const struct ktimespec *t = UPTR(p);
    if (t->sec < 0 || t->nsec < 0 || t->nsec >= (int64_t)NSEC_PER_SEC)
        return -EINVAL;
    if ((uint64_t)t->sec > UINT64_MAX / NSEC_PER_SEC - 1)
        *ns = UINT64_MAX / 2;
    else
        *ns = (uint64_t)t->sec * NSEC_PER_SEC + (uint64_t)t->nsec;
    return 0;
}

/* ---- identity, limits ---- */

static void put_field(char *dst, const char *src)
{
    size_t n = strlen(src);
    if (n > 64)
        n = 64;
    memcpy(dst, src, n);
    dst[n] = 0;
}

static int64_t sys_uname(uint64_t buf)
{
    if (!OK(buf, 6 * 65))
        return -EFAULT;
    char *u = UPTR(buf);
    memset(u, 0, 6 * 65);
    char host[KILN_HOSTNAME_MAX + 1];
    memcpy(host, kiln_bi->hostname, KILN_HOSTNAME_MAX);
    host[KILN_HOSTNAME_MAX] = 0;
    put_field(u + 0 * 65, "Linux");
    put_field(u + 1 * 65, host[0] ? host : "kiln");
    put_field(u + 2 * 65, "6.1.0-kiln");
    put_field(u + 3 * 65, "#1 SMP Kiln unikernel");
    put_field(u + 4 * 65, "x86_64");
    put_field(u + 5 * 65, "(none)");
    return 0;
}

static int64_t sys_prlimit(uint64_t pid, uint64_t res, uint64_t nw, uint64_t old)
{
    if (pid != 0 && pid != 1)
        return -ESRCH;
    if (res >= NRLIMIT)
        return -EINVAL;
    struct rlim n;
    if (nw) {
        if (!OK(nw, sizeof(n)))
            return -EFAULT;
        memcpy(&n, UPTR(nw), sizeof(n));
        if (n.cur > n.max)
            return -EINVAL;
        if (n.max > K.rlim[res].max)
            return -EPERM;
    }
    if (old) {
        if (!OK(old, sizeof(n)))
            return -EFAULT;
        memcpy(UPTR(old), &K.rlim[res], sizeof(n));
    }
    if (nw)
        K.rlim[res] = n;
    return 0;
}

static int64_t sys_getrandom(uint64_t buf, uint64_t n, uint64_t flags)
{
    if (flags & ~7ULL)
        return -EINVAL;
    if (n > (32 << 20) - 1)
        n = (32 << 20) - 1;
    if (!OK(buf, n))
        return -EFAULT;
    /* A restored snapshot: the VMM wrote fresh entropy. One compare per
     * call is all a clone costs. */
    if (kiln_bi->entropy_gen != K.rng_gen) {
        csprng_seed(&K.rng, kiln_bi->entropy);
        K.rng_gen = kiln_bi->entropy_gen;
    }
    csprng_fill(&K.rng, UPTR(buf), n);
    return (int64_t)n;
}

static int64_t sys_sched_getaffinity(uint64_t pid, uint64_t len, uint64_t mask)
{
    if (pid != 0 && pid != 1)
        return -ESRCH;
    if (len < 8 || (len & 7))
        return -EINVAL;
    if (!OK(mask, 8))
        return -EFAULT;
    *(uint64_t *)UPTR(mask) = 1;
    return 8;
}

/* ---- misc ---- */

static int64_t sys_arch_prctl(uint64_t code, uint64_t addr)
{
    switch (code) {
    case 0x1002: /* ARCH_SET_FS */
        if (addr >= (1ULL << 47))
            return -EPERM;
        sched_current()->fs = addr;
        arch_set_fs(addr);
        return 0;
    case 0x1003: /* ARCH_GET_FS */
        if (!OK(addr, 8))
            return -EFAULT;
        *(uint64_t *)UPTR(addr) = arch_get_fs();
        return 0;
    }
    return -EINVAL;
}

static char comm[16] = "main";

/* prctl: what static programs ask of it. Go names its mappings with
 * PR_SET_VMA; like a Linux built without CONFIG_ANON_VMA_NAME, the answer
 * is -EINVAL, which Go ignores. */
static int64_t sys_prctl(uint64_t op, uint64_t a2)
{
    switch (op) {
    case 15: /* PR_SET_NAME */
        if (vmem_strlen(&kiln_vm, a2, 4096) < 0 && !OK(a2, sizeof comm))
            return -EFAULT;
        for (size_t i = 0; i < sizeof comm - 1; i++) {
            comm[i] = ((const char *)UPTR(a2))[i];
            if (!comm[i])
                break;
        }
        comm[sizeof comm - 1] = 0;
        return 0;
    case 16: /* PR_GET_NAME */
        if (!OK(a2, sizeof comm))
            return -EFAULT;
        memcpy(UPTR(a2), comm, sizeof comm);
        return 0;
    case 1: /* PR_SET_PDEATHSIG: there is no parent to die */
    case 4: /* PR_SET_DUMPABLE */
    case 38: /* PR_SET_NO_NEW_PRIVS: nothing here can gain privileges */
        return 0;
    case 2: /* PR_GET_PDEATHSIG */
        if (!OK(a2, 4))
            return -EFAULT;
        *(int32_t *)UPTR(a2) = 0;
        return 0;
    case 3: /* PR_GET_DUMPABLE */
    case 39: /* PR_GET_NO_NEW_PRIVS */
        return 1;
    }
    return -EINVAL;
}

static int64_t path_call(uint64_t path)
{
    return vmem_strlen(&kiln_vm, path, 4096) < 0 ? -EFAULT : -ENOENT;
}

static void count_enosys(uint64_t nr)
{
    K.enosys++;
    for (int i = 0; i < KILN_ENOSYS_SLOTS; i++) {
        if (K.enosys_count[i] && K.enosys_nr[i] == (uint32_t)nr) {
            K.enosys_count[i]++;
            return;
        }
        if (K.enosys_count[i] == 0) {
            K.enosys_nr[i] = (uint32_t)nr;
            K.enosys_count[i] = 1;
            return;
        }
    }
}

/* The calls answered here; the areas answer theirs first (ksys.h). */
static int64_t dispatch(uint64_t nr, const uint64_t *a, struct kframe *f)
{
    int64_t r;
    if (fd_syscall(nr, a, &r) || vmem_syscall(nr, a, &r) ||
        sched_syscall(nr, a, f, &r) || signal_syscall(nr, a, f, &r))
        return r;
    switch (nr) {
    case 2: return path_call(a[0]);                         /* open */
    case 21: return path_call(a[0]);                        /* access */
    case 39: return 1;                                      /* getpid */
    case 63: return sys_uname(a[0]);
    case 96: return sys_gettimeofday(a[0], a[1]);
    case 97: return sys_prlimit(0, a[0], 0, a[1]);           /* getrlimit */
    case 102: case 104: case 107: case 108: return 0;       /* uid, gid */
    case 110: return 0;                                     /* getppid */
    case 157: return sys_prctl(a[0], a[1]);
    case 158: return sys_arch_prctl(a[0], a[1]);
    case 160: return sys_prlimit(0, a[0], a[1], 0);          /* setrlimit */
    case 201: return sys_time(a[0]);
    case 204: return sys_sched_getaffinity(a[0], a[1], a[2]);
    case 228: return sys_clock_gettime(a[0], a[1]);
    case 229: return sys_clock_getres(a[0], a[1]);
    case 257: return path_call(a[1]);                       /* openat */
    case 269: return path_call(a[1]);                       /* faccessat */
    case 302: return sys_prlimit(a[0], a[1], a[2], a[3]);
    case 318: return sys_getrandom(a[0], a[1], a[2]);
    }
    count_enosys(nr);
    return -ENOSYS;
}

static const struct {
    uint16_t nr;
    uint8_t nargs;
    const char *name;
} names[] = {
    {0, 3, "read"}, {1, 3, "write"}, {2, 3, "open"}, {3, 1, "close"},
    {4, 2, "stat"}, {5, 2, "fstat"}, {6, 2, "lstat"}, {7, 3, "poll"},
    {8, 3, "lseek"}, {9, 6, "mmap"}, {10, 3, "mprotect"}, {11, 2, "munmap"},
    {12, 1, "brk"}, {13, 4, "rt_sigaction"}, {14, 4, "rt_sigprocmask"},
    {15, 0, "rt_sigreturn"}, {16, 3, "ioctl"}, {17, 4, "pread64"},
    {18, 4, "pwrite64"}, {19, 3, "readv"}, {20, 3, "writev"}, {21, 2, "access"},
    {22, 1, "pipe"}, {23, 5, "select"}, {24, 0, "sched_yield"},
    {25, 5, "mremap"}, {27, 3, "mincore"}, {28, 3, "madvise"}, {32, 1, "dup"},
    {33, 2, "dup2"}, {35, 2, "nanosleep"}, {39, 0, "getpid"},
    {56, 5, "clone"}, {57, 0, "fork"}, {58, 0, "vfork"}, {59, 3, "execve"},
    {60, 1, "exit"}, {61, 4, "wait4"}, {62, 2, "kill"}, {63, 1, "uname"},
    {72, 3, "fcntl"}, {89, 3, "readlink"}, {96, 2, "gettimeofday"},
    {97, 2, "getrlimit"}, {99, 1, "sysinfo"}, {102, 0, "getuid"},
    {104, 0, "getgid"}, {107, 0, "geteuid"}, {108, 0, "getegid"},
    {110, 0, "getppid"}, {127, 4, "rt_sigpending"}, {130, 2, "rt_sigsuspend"},
    {131, 2, "sigaltstack"}, {157, 5, "prctl"}, {158, 2, "arch_prctl"},
    {160, 2, "setrlimit"}, {186, 0, "gettid"}, {200, 2, "tkill"},
    {201, 1, "time"}, {202, 6, "futex"}, {204, 3, "sched_getaffinity"},
    {213, 1, "epoll_create"}, {217, 3, "getdents64"},
    {218, 1, "set_tid_address"}, {228, 2, "clock_gettime"},
    {229, 2, "clock_getres"}, {230, 4, "clock_nanosleep"},
    {231, 1, "exit_group"}, {232, 4, "epoll_wait"}, {233, 4, "epoll_ctl"},
    {234, 3, "tgkill"}, {257, 4, "openat"}, {262, 4, "newfstatat"},
    {269, 3, "faccessat"}, {270, 6, "pselect6"}, {271, 5, "ppoll"},
    {273, 2, "set_robust_list"}, {281, 6, "epoll_pwait"}, {284, 2, "eventfd"},
    {290, 2, "eventfd2"}, {291, 1, "epoll_create1"}, {292, 3, "dup3"},
    {293, 2, "pipe2"}, {295, 4, "preadv"}, {296, 4, "pwritev"}, {302, 4, "prlimit64"}, {318, 3, "getrandom"},
    {324, 2, "membarrier"}, {332, 5, "statx"}, {334, 4, "rseq"},
    {435, 2, "clone3"}, {439, 4, "faccessat2"}, {441, 6, "epoll_pwait2"},
};

static void trace_call(uint64_t nr, const uint64_t *a, int64_t ret, int done)
{
    char tmp[256];
    struct kbuf b = {tmp, 0, sizeof(tmp)};
    int nargs = 6;
    const char *name = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].nr == nr) {
            name = names[i].name;
            nargs = names[i].nargs;
        }
    if (name) {
        kb_str(&b, name);
    } else {
        kb_str(&b, "syscall_");
        kb_udec(&b, nr);
    }
    kb_str(&b, "(");
    for (int i = 0; i < nargs; i++) {
        if (i)
            kb_str(&b, ", ");
        kb_hex(&b, a[i]);
    }
    kb_str(&b, ")");
    if (done) {
        kb_str(&b, " = ");
        if (ret < 0 && ret > -4096)
            kb_dec(&b, ret);
        else
            kb_hex(&b, (uint64_t)ret);
    } else {
        kb_str(&b, " ...");
    }
    kb_str(&b, "\n");
    stdio_write(2, tmp, b.len);
}

void libos_syscall(struct kframe *f)
{
    uint64_t nr = f->rax;
    uint64_t a[6] = {f->rdi, f->rsi, f->rdx, f->r10, f->r8, f->r9};
    K.syscalls++;
    /* Calls that never return are traced before they run. */
    if (K.trace && (nr == 15 || nr == 60 || nr == 231))
        trace_call(nr, a, 0, 0);
    int64_t r = dispatch(nr, a, f);
    f->rax = (uint64_t)r;
    if (K.trace)
        trace_call(nr, a, r, 1);
    signal_on_return(f);
}

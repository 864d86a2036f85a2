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

/* Per-thread state. There is one thread today; keeping it in one struct
 * makes cooperative threads an array of these later. */
struct kthread {
    uint64_t sigmask;
    uint64_t clear_tid;
    uint64_t altstack_sp, altstack_size;
    int32_t altstack_flags;
};

struct ksigaction {
    uint64_t handler, flags, restorer, mask;
};

struct rlim {
    uint64_t cur, max;
};

#define NSIG 64
#define RLIM_INF (~0ULL)
#define NRLIMIT 16
#define MONO_BASE_NS NSEC_PER_SEC /* Go refuses a monotonic clock of 0 */

static struct {
    const struct kiln_boot_info *bi;
    struct vmem vm;
    struct csprng rng;
    struct kthread th;
    struct ksigaction sig[NSIG + 1];
    struct rlim rlim[NRLIMIT];
    uint32_t fd_closed, fd_cloexec, fd_fl[3];
    int trace;
    uint64_t syscalls, enosys;
    uint32_t enosys_nr[KILN_ENOSYS_SLOTS], enosys_count[KILN_ENOSYS_SLOTS];
} K;

void ksys_fill_stats(struct kiln_hc_exit *e)
{
    e->syscalls = K.syscalls;
    e->enosys = K.enosys;
    for (int i = 0; i < KILN_ENOSYS_SLOTS; i++) {
        e->enosys_nr[i] = K.enosys_nr[i];
        e->enosys_count[i] = K.enosys_count[i];
    }
}

void libos_init(const struct kiln_boot_info *bi)
{
    if (bi->magic != KILN_BOOT_MAGIC || bi->abi_version != KILN_ABI_VERSION)
        kpanic("boot info: bad magic or ABI version");
    K.bi = bi;
    uint64_t img = bi->image_start < KILN_USER_BASE ? KILN_USER_BASE : bi->image_start;
    uint64_t top = bi->stack_top > bi->mem_size ? bi->mem_size : bi->stack_top;
    if (bi->image_end < img || bi->stack_low > top || bi->stack_low < bi->image_end)
        kpanic("boot info: inconsistent memory layout");
    vmem_init(&K.vm, img, bi->image_end, bi->stack_low, top);
    csprng_seed(&K.rng, bi->entropy);
    K.trace = (bi->flags & KILN_BOOT_TRACE) != 0;
    K.fd_fl[0] = 0;      /* O_RDONLY */
    K.fd_fl[1] = K.fd_fl[2] = 1; /* O_WRONLY */
    K.th.altstack_flags = 2; /* SS_DISABLE */
    for (int i = 0; i < NRLIMIT; i++)
        K.rlim[i].cur = K.rlim[i].max = RLIM_INF;
    K.rlim[3].cur = K.rlim[3].max = top - bi->stack_low; /* STACK */
    K.rlim[4].cur = K.rlim[4].max = 0;                   /* CORE */
    K.rlim[6].cur = K.rlim[6].max = 4096;                /* NPROC */
    K.rlim[7].cur = 1024;                                /* NOFILE */
    K.rlim[7].max = 4096;
    K.rlim[8].cur = K.rlim[8].max = 8 << 20;             /* MEMLOCK */
    K.rlim[11].cur = K.rlim[11].max = 1024;              /* SIGPENDING */
    K.rlim[12].cur = K.rlim[12].max = 819200;            /* MSGQUEUE */
    K.rlim[13].cur = K.rlim[13].max = 0;                 /* NICE */
    K.rlim[14].cur = K.rlim[14].max = 0;                 /* RTPRIO */
}

/* ---- helpers ---- */

#define UPTR(x) ((void *)(uintptr_t)(x))
#define OK(p, n) vmem_valid(&K.vm, (uint64_t)(p), (uint64_t)(n))

static uint64_t elapsed_ns(void)
{
    uint64_t now = rdtsc();
    uint64_t t0 = K.bi->boot_tsc;
    return now > t0 ? tsc_to_ns(now - t0, K.bi->tsc_khz) : 0;
}

static uint64_t clock_ns(uint64_t clk)
{
    uint64_t e = elapsed_ns();
    if (clk == 0 || clk == 5) /* REALTIME, REALTIME_COARSE */
        return K.bi->boot_wall_ns + e;
    return MONO_BASE_NS + e;
}

struct ktimespec {
    int64_t sec, nsec;
};

static int valid_fd(uint64_t fd)
{
    return fd < 3 && !(K.fd_closed & (1u << fd));
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

/* ---- stdio ---- */

static int64_t sys_write(uint64_t fd, uint64_t buf, uint64_t n)
{
    if (!valid_fd(fd) || fd == 0)
        return -EBADF;
    if (!OK(buf, n))
        return -EFAULT;
    stdio_write((int)fd, UPTR(buf), n);
    return (int64_t)n;
}

static int64_t sys_read(uint64_t fd, uint64_t buf, uint64_t n)
{
    if (!valid_fd(fd) || fd != 0)
        return -EBADF;
    if (!OK(buf, n))
        return -EFAULT;
    return stdio_read(UPTR(buf), n);
}

struct kiovec {
    uint64_t base, len;
};

static int64_t check_iov(uint64_t iov, uint64_t cnt)
{
    if (cnt > 1024)
        return -EINVAL;
    if (!OK(iov, cnt * sizeof(struct kiovec)))
        return -EFAULT;
    const struct kiovec *v = UPTR(iov);
    uint64_t total = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        if (!OK(v[i].base, v[i].len))
            return -EFAULT;
        total += v[i].len;
        if (total > 0x7ffff000ULL)
            return -EINVAL;
    }
    return 0;
}

static int64_t sys_writev(uint64_t fd, uint64_t iov, uint64_t cnt)
{
    if (!valid_fd(fd) || fd == 0)
        return -EBADF;
    int64_t e = check_iov(iov, cnt);
    if (e)
        return e;
    const struct kiovec *v = UPTR(iov);
    int64_t total = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        stdio_write((int)fd, UPTR(v[i].base), v[i].len);
        total += (int64_t)v[i].len;
    }
    return total;
}

static int64_t sys_readv(uint64_t fd, uint64_t iov, uint64_t cnt)
{
    if (!valid_fd(fd) || fd != 0)
        return -EBADF;
    int64_t e = check_iov(iov, cnt);
    if (e)
        return e;
    /* One hypercall into the first non-empty buffer: a short read, as a
     * pipe gives, and still zero copies. */
    const struct kiovec *v = UPTR(iov);
    for (uint64_t i = 0; i < cnt; i++)
        if (v[i].len)
            return stdio_read(UPTR(v[i].base), v[i].len);
    return 0;
}

/* struct stat on x86-64 */
struct kstat {
    uint64_t dev, ino, nlink;
    uint32_t mode, uid, gid, pad0;
    uint64_t rdev;
    int64_t size, blksize, blocks;
    int64_t atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns;
    int64_t unused[3];
};

static int64_t sys_fstat(uint64_t fd, uint64_t buf)
{
    if (!valid_fd(fd))
        return -EBADF;
    if (!OK(buf, sizeof(struct kstat)))
        return -EFAULT;
    struct kstat *st = UPTR(buf);
    memset(st, 0, sizeof(*st));
    st->dev = 0xc;                 /* Linux's pipefs */
    st->ino = 1000 + fd;
    st->nlink = 1;
    st->mode = 0010000 | 0600;     /* S_IFIFO, rw------- */
    st->blksize = 4096;
    int64_t t = (int64_t)(K.bi->boot_wall_ns / NSEC_PER_SEC);
    st->atime = st->mtime = st->ctime = t;
    return 0;
}

static int64_t sys_newfstatat(uint64_t dirfd, uint64_t path, uint64_t buf,
                              uint64_t flags)
{
    int64_t n = vmem_strlen(&K.vm, path, 4096);
    if (n < 0)
        return -EFAULT;
    if (n == 0 && (flags & 0x1000)) /* AT_EMPTY_PATH */
        return sys_fstat(dirfd, buf);
    return -ENOENT;
}

static int64_t sys_fcntl(uint64_t fd, uint64_t cmd, uint64_t arg)
{
    if (!valid_fd(fd))
        return -EBADF;
    switch (cmd) {
    case 1: /* F_GETFD */
        return (K.fd_cloexec >> fd) & 1;
    case 2: /* F_SETFD */
        K.fd_cloexec = (K.fd_cloexec & ~(1u << fd)) | ((uint32_t)(arg & 1) << fd);
        return 0;
    case 3: /* F_GETFL */
        return K.fd_fl[fd];
    case 4: /* F_SETFL: only O_APPEND and O_NONBLOCK change */
        K.fd_fl[fd] = (K.fd_fl[fd] & ~0xc00u) | (uint32_t)(arg & 0xc00);
        return 0;
    }
    return -EINVAL;
}

/* ---- memory ---- */

static int64_t sys_mmap(uint64_t addr, uint64_t len, uint64_t prot,
                        uint64_t flags, uint64_t fd)
{
    if (!(flags & KMAP_ANONYMOUS))
        return valid_fd(fd) ? -ENODEV : -EBADF;
    uint64_t type = flags & 3;
    if (type == 0 || (prot & ~7ULL))
        return -EINVAL;
    return vmem_mmap(&K.vm, addr, len, (uint32_t)prot, (uint32_t)flags);
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

/* Sleep until clock clk reads abs_ns: flush output, then one HC_IO with a
 * deadline and nothing to receive, so the vCPU idles in the VMM. */
static int64_t sleep_to(uint64_t clk, uint64_t abs_ns)
{
    uint64_t now = clock_ns(clk);
    if (abs_ns <= now)
        return 0;
    uint64_t d = ns_to_tsc(abs_ns - now, K.bi->tsc_khz);
    uint64_t t = rdtsc();
    stdio_sleep_until(t > UINT64_MAX - d ? UINT64_MAX : t + d + 1);
    return 0;
}

static int64_t read_timespec(uint64_t p, uint64_t *ns)
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

static int64_t sys_nanosleep(uint64_t req, uint64_t rem)
{
    uint64_t ns;
    int64_t e = read_timespec(req, &ns);
    if (e)
        return e;
    if (rem && !OK(rem, sizeof(struct ktimespec)))
        return -EFAULT;
    uint64_t now = clock_ns(1);
    sleep_to(1, now + ns < now ? UINT64_MAX : now + ns);
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
    if (flags & 1) /* TIMER_ABSTIME */
        return sleep_to(clk, ns);
    if (rem && !OK(rem, sizeof(struct ktimespec)))
        return -EFAULT;
    uint64_t now = clock_ns(clk);
    return sleep_to(clk, now + ns < now ? UINT64_MAX : now + ns);
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
    memcpy(host, K.bi->hostname, KILN_HOSTNAME_MAX);
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

/* ---- signals ---- */

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
        memcpy(UPTR(oact), &K.sig[sig], sizeof(n));
    }
    if (act) {
        n.mask &= ~((1ULL << 8) | (1ULL << 18));
        K.sig[sig] = n;
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
        *(uint64_t *)UPTR(oset) = K.th.sigmask;
    }
    if (set) {
        if (how == 0)
            K.th.sigmask |= n;
        else if (how == 1)
            K.th.sigmask &= ~n;
        else
            K.th.sigmask = n;
        K.th.sigmask &= ~((1ULL << 8) | (1ULL << 18));
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
        o->sp = K.th.altstack_sp;
        o->flags = K.th.altstack_flags;
        o->pad = 0;
        o->size = K.th.altstack_size;
    }
    if (ss) {
        K.th.altstack_sp = n.sp;
        K.th.altstack_size = n.size;
        K.th.altstack_flags = n.flags;
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
    if ((K.th.sigmask >> (sig - 1)) & 1)
        return 0;
    uint64_t h = K.sig[sig].handler;
    if (h == 1) /* SIG_IGN */
        return 0;
    if (h == 0 && (sig == 17 || sig == 18 || sig == 23 || sig == 28))
        return 0; /* default action: ignore */
    fatal_signal((int)sig, "killed by a signal sent to itself");
    return 0;
}

/* ---- misc ---- */

static int64_t sys_arch_prctl(uint64_t code, uint64_t addr)
{
    switch (code) {
    case 0x1002: /* ARCH_SET_FS */
        if (addr >= (1ULL << 47))
            return -EPERM;
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

static int64_t path_call(uint64_t path)
{
    return vmem_strlen(&K.vm, path, 4096) < 0 ? -EFAULT : -ENOENT;
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

static int64_t dispatch(uint64_t nr, const uint64_t *a)
{
    switch (nr) {
    case 0: return sys_read(a[0], a[1], a[2]);
    case 1: return sys_write(a[0], a[1], a[2]);
    case 2: return path_call(a[0]);                         /* open */
    case 3:                                                 /* close */
        if (!valid_fd(a[0]))
            return -EBADF;
        K.fd_closed |= 1u << a[0];
        return 0;
    case 5: return sys_fstat(a[0], a[1]);
    case 9: return sys_mmap(a[0], a[1], a[2], a[3], a[4]);
    case 10: return vmem_mprotect(&K.vm, a[0], a[1], (uint32_t)a[2]);
    case 11: return vmem_munmap(&K.vm, a[0], a[1]);
    case 12: return (int64_t)vmem_brk(&K.vm, a[0]);
    case 13: return sys_rt_sigaction(a[0], a[1], a[2], a[3]);
    case 14: return sys_rt_sigprocmask(a[0], a[1], a[2], a[3]);
    case 16: return valid_fd(a[0]) ? -ENOTTY : -EBADF;       /* ioctl */
    case 19: return sys_readv(a[0], a[1], a[2]);
    case 20: return sys_writev(a[0], a[1], a[2]);
    case 24: return 0;                                      /* sched_yield */
    case 28:                                                /* madvise */
        if (a[0] & (PAGE_SIZE - 1))
            return -EINVAL;
        return a[2] == 4 ? vmem_dontneed(&K.vm, a[0], a[1]) : 0;
    case 35: return sys_nanosleep(a[0], a[1]);
    case 39: return 1;                                      /* getpid */
    case 60:                                                /* exit */
    case 231:                                               /* exit_group */
        kexit(KILN_EXIT_NORMAL, (int32_t)(a[0] & 0xff), 0, 0);
    case 62: return a[0] == 1 || a[0] == 0 || (int64_t)a[0] == -1 ? raise_sig(a[1]) : -ESRCH;
    case 63: return sys_uname(a[0]);
    case 72: return sys_fcntl(a[0], a[1], a[2]);
    case 96: return sys_gettimeofday(a[0], a[1]);
    case 97: return sys_prlimit(0, a[0], 0, a[1]);           /* getrlimit */
    case 102: case 104: case 107: case 108: return 0;       /* uid, gid */
    case 110: return 0;                                     /* getppid */
    case 131: return sys_sigaltstack(a[0], a[1]);
    case 158: return sys_arch_prctl(a[0], a[1]);
    case 160: return sys_prlimit(0, a[0], a[1], 0);          /* setrlimit */
    case 186: return 1;                                     /* gettid */
    case 200: return a[0] == 1 ? raise_sig(a[1]) : -ESRCH;   /* tkill */
    case 201: return sys_time(a[0]);
    case 204: return sys_sched_getaffinity(a[0], a[1], a[2]);
    case 218: K.th.clear_tid = a[0]; return 1;               /* set_tid_address */
    case 228: return sys_clock_gettime(a[0], a[1]);
    case 229: return sys_clock_getres(a[0], a[1]);
    case 230: return sys_clock_nanosleep(a[0], a[1], a[2], a[3]);
    case 234: return a[1] == 1 ? raise_sig(a[2]) : -ESRCH;   /* tgkill */
    case 257: return path_call(a[1]);                       /* openat */
    case 262: return sys_newfstatat(a[0], a[1], a[2], a[3]);
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
    {5, 2, "fstat"}, {9, 6, "mmap"}, {10, 3, "mprotect"}, {11, 2, "munmap"},
    {12, 1, "brk"}, {13, 4, "rt_sigaction"}, {14, 4, "rt_sigprocmask"},
    {16, 3, "ioctl"}, {19, 3, "readv"}, {20, 3, "writev"},
    {24, 0, "sched_yield"}, {28, 3, "madvise"}, {35, 2, "nanosleep"},
    {39, 0, "getpid"}, {60, 1, "exit"}, {62, 2, "kill"}, {63, 1, "uname"},
    {72, 3, "fcntl"}, {96, 2, "gettimeofday"}, {97, 2, "getrlimit"},
    {102, 0, "getuid"}, {104, 0, "getgid"}, {107, 0, "geteuid"},
    {108, 0, "getegid"}, {110, 0, "getppid"}, {131, 2, "sigaltstack"},
    {158, 2, "arch_prctl"}, {160, 2, "setrlimit"}, {186, 0, "gettid"},
    {200, 2, "tkill"}, {201, 1, "time"}, {204, 3, "sched_getaffinity"},
    {218, 1, "set_tid_address"}, {228, 2, "clock_gettime"},
    {229, 2, "clock_getres"}, {230, 4, "clock_nanosleep"},
    {231, 1, "exit_group"}, {234, 3, "tgkill"}, {257, 4, "openat"},
    {262, 4, "newfstatat"}, {302, 4, "prlimit64"}, {318, 3, "getrandom"},
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
    if (K.trace && (nr == 60 || nr == 231))
        trace_call(nr, a, 0, 0);
    int64_t r = dispatch(nr, a);
    f->rax = (uint64_t)r;
    if (K.trace)
        trace_call(nr, a, r, 1);
}

/*
 * syscalls — exercises every syscall the library OS implements and checks
 * the results, the same way natively and in a VM. Values that differ by
 * design between the two (pid, hostname, fd types) are printed as
 * "info: key=value" lines for libos_test.go to check inside the VM.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"

extern char **environ;
static __thread int tls_counter = 42;
static __thread char tls_buf[64];

static int64_t ns(clockid_t c)
{
    struct timespec t;
    EXPECT(clock_gettime(c, &t) == 0);
    EXPECT(t.tv_nsec >= 0 && t.tv_nsec < 1000000000);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void test_brk(void)
{
    char *cur = (char *)syscall(SYS_brk, 0);
    EXPECT(cur != NULL);
    char *want = cur + (1 << 20);
    EXPECT((char *)syscall(SYS_brk, want) == want);
    memset(cur, 0x11, 1 << 20);
    EXPECT((char *)syscall(SYS_brk, cur + 4096) == cur + 4096);
    EXPECT((char *)syscall(SYS_brk, want) == want);
    /* Pages given back and regrown read as zero. */
    EXPECT(cur[8192] == 0 && want[-1] == 0);
    EXPECT((char *)syscall(SYS_brk, cur) == cur);
}

static void test_mmap(void)
{
    long pg = 4096;
    char *p = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(p != MAP_FAILED);
    for (int i = 0; i < 4 * pg; i++)
        EXPECT(p[i] == 0);
    memset(p, 0x22, 4 * pg);
    EXPECT(mprotect(p + pg, pg, PROT_READ) == 0);
    EXPECT(mprotect(p + pg, pg, PROT_READ | PROT_WRITE) == 0);
    /* MAP_FIXED over the third page replaces it with zeros. */
    char *q = mmap(p + 2 * pg, pg, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    EXPECT(q == p + 2 * pg);
    EXPECT(q[0] == 0 && q[pg - 1] == 0 && p[0] == 0x22 && p[3 * pg] == 0x22);
    /* MADV_DONTNEED zeroes private anonymous memory. */
    EXPECT(madvise(p, pg, MADV_DONTNEED) == 0);
    EXPECT(p[0] == 0 && p[pg - 1] == 0 && p[pg] == 0x22);
    EXPECT(munmap(p + pg, pg) == 0);
    EXPECT(munmap(p, 4 * pg) == 0);
    /* A PROT_NONE reservation, then part of it made usable. */
    char *r = mmap(NULL, 16 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(r != MAP_FAILED);
    EXPECT(mprotect(r + 4 * pg, 2 * pg, PROT_READ | PROT_WRITE) == 0);
    r[4 * pg] = 1;
    EXPECT(munmap(r, 16 * pg) == 0);
    EXPECT(mmap(NULL, pg, PROT_READ, MAP_PRIVATE, 99, 0) == MAP_FAILED && errno == EBADF);
    EXPECT(mmap(NULL, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED &&
           errno == EINVAL);
    EXPECT(munmap(p + 1, pg) == -1 && errno == EINVAL);
    /* Shared anonymous memory is plain memory to a single process. */
    char *s = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    EXPECT(s != MAP_FAILED);
    s[10] = 5;
    EXPECT(munmap(s, pg) == 0);
}

static void test_time(void)
{
    int64_t m1 = ns(CLOCK_MONOTONIC), m2 = ns(CLOCK_MONOTONIC);
    EXPECT(m2 >= m1 && m1 > 0);
    ns(CLOCK_MONOTONIC_RAW);
    ns(CLOCK_MONOTONIC_COARSE);
    ns(CLOCK_BOOTTIME);
    ns(CLOCK_REALTIME_COARSE);
    ns(CLOCK_PROCESS_CPUTIME_ID);
    struct timespec res;
    EXPECT(clock_getres(CLOCK_MONOTONIC, &res) == 0 && res.tv_sec == 0 && res.tv_nsec > 0);
    int64_t rt = ns(CLOCK_REALTIME);
    const char *now = getenv("KILN_TEST_NOW");
    if (now) {
        int64_t want = strtoll(now, NULL, 10);
        int64_t d = rt / 1000000000 - want;
        if (d < -2 || d > 2)
            ABORT("CLOCK_REALTIME %lld s is %lld s away from KILN_TEST_NOW %lld",
                  (long long)(rt / 1000000000), (long long)d, (long long)want);
    }
    struct timeval tv;
    EXPECT(gettimeofday(&tv, NULL) == 0);
    EXPECT(llabs((int64_t)tv.tv_sec - rt / 1000000000) <= 1);
    time_t t = time(NULL);
    EXPECT(llabs((int64_t)t - rt / 1000000000) <= 1);
    /* nanosleep 10 ms takes at least 10 ms. */
    int64_t s0 = ns(CLOCK_MONOTONIC);
    struct timespec d = {0, 10 * 1000 * 1000};
    EXPECT(nanosleep(&d, NULL) == 0);
    int64_t slept = ns(CLOCK_MONOTONIC) - s0;
    if (slept < 10 * 1000 * 1000)
        ABORT("nanosleep(10ms) took %lld ns", (long long)slept);
    s0 = ns(CLOCK_MONOTONIC);
    struct timespec abs = {(s0 + 5000000) / 1000000000, (s0 + 5000000) % 1000000000};
    EXPECT(clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &abs, NULL) == 0);
    EXPECT(ns(CLOCK_MONOTONIC) >= s0 + 5000000);
    d.tv_nsec = 1000000000;
    EXPECT(nanosleep(&d, NULL) == -1 && errno == EINVAL);
    printf("info: slept_ns=%lld\n", (long long)slept);
}

static void test_identity(void)
{
    EXPECT(getpid() > 0);
    EXPECT(getpid() == (pid_t)syscall(SYS_gettid));
    EXPECT(getppid() >= 0);
    EXPECT((pid_t)syscall(SYS_set_tid_address, &tls_counter) == getpid());
    printf("info: pid=%d ppid=%d uid=%d euid=%d gid=%d egid=%d\n", getpid(), getppid(),
           getuid(), geteuid(), getgid(), getegid());
    struct utsname u;
    EXPECT(uname(&u) == 0);
    EXPECT(!strcmp(u.sysname, "Linux"));
    EXPECT(!strcmp(u.machine, "x86_64"));
    printf("info: nodename=%s release=%s\n", u.nodename, u.release);
    cpu_set_t set;
    EXPECT(sched_getaffinity(0, sizeof(set), &set) == 0);
    EXPECT(CPU_COUNT(&set) >= 1);
    printf("info: cpus=%d\n", CPU_COUNT(&set));
    EXPECT(sched_yield() == 0);
    struct rlimit rl;
    EXPECT(getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur > 0);
    EXPECT(getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur >= 3 && rl.rlim_cur <= rl.rlim_max);
    EXPECT(prlimit(0, RLIMIT_NOFILE, NULL, &rl) == 0);
    struct rlimit nl = {rl.rlim_cur - 1, rl.rlim_max}, back;
    EXPECT(prlimit(0, RLIMIT_NOFILE, &nl, &back) == 0 && back.rlim_cur == rl.rlim_cur);
    EXPECT(getrlimit(RLIMIT_NOFILE, &back) == 0 && back.rlim_cur == rl.rlim_cur - 1);
    EXPECT(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    nl.rlim_cur = nl.rlim_max + 1;
    EXPECT(setrlimit(RLIMIT_NOFILE, &nl) == -1 && errno == EINVAL);
}

static void test_random(void)
{
    unsigned char a[32], b[32], z[32] = {0};
    EXPECT(getrandom(a, sizeof(a), 0) == sizeof(a));
    EXPECT(getrandom(b, sizeof(b), GRND_NONBLOCK) == sizeof(b));
    EXPECT(memcmp(a, b, sizeof(a)) != 0);
    EXPECT(memcmp(a, z, sizeof(a)) != 0);
    static unsigned char big[100000];
    EXPECT(getrandom(big, sizeof(big), 0) == sizeof(big));
}

static void test_fds(void)
{
    const char *kinds[3];
    for (int fd = 0; fd < 3; fd++) {
        struct stat st;
        EXPECT(fstat(fd, &st) == 0);
        kinds[fd] = S_ISFIFO(st.st_mode) ? "fifo" : S_ISREG(st.st_mode) ? "file"
                  : S_ISCHR(st.st_mode)  ? "chr"  : "other";
        struct stat st2;
        EXPECT(fstatat(fd, "", &st2, AT_EMPTY_PATH) == 0 && st2.st_mode == st.st_mode);
        if (!S_ISCHR(st.st_mode)) {
            struct termios tio;
            errno = 0;
            EXPECT(tcgetattr(fd, &tio) == -1 && errno == ENOTTY);
        }
        if (S_ISFIFO(st.st_mode))
            EXPECT(st.st_blksize == 4096);
        EXPECT(fcntl(fd, F_GETFD) >= 0);
        EXPECT(fcntl(fd, F_GETFL) >= 0);
    }
    EXPECT(fcntl(1, F_SETFD, FD_CLOEXEC) == 0 && fcntl(1, F_GETFD) == FD_CLOEXEC);
    EXPECT(fcntl(1, F_SETFD, 0) == 0 && fcntl(1, F_GETFD) == 0);
    EXPECT((fcntl(1, F_GETFL) & O_ACCMODE) != O_RDONLY);
    printf("info: fstat0=%s fstat1=%s fstat2=%s\n", kinds[0], kinds[1], kinds[2]);
    EXPECT(write(99, "x", 1) == -1 && errno == EBADF);
    EXPECT(open("/nonexistent/kiln", O_RDONLY) == -1 && errno == ENOENT);
    EXPECT(openat(AT_FDCWD, "/nonexistent/kiln", O_RDONLY) == -1 && errno == ENOENT);
    EXPECT(access("/nonexistent/kiln", R_OK) == -1 && errno == ENOENT);
    EXPECT(faccessat(AT_FDCWD, "/nonexistent/kiln", R_OK, 0) == -1 && errno == ENOENT);
    {
        char name[16] = {0};
        EXPECT(prctl(PR_SET_NAME, "kiln-guest") == 0);
        EXPECT(prctl(PR_GET_NAME, name) == 0 && strcmp(name, "kiln-guest") == 0);
        EXPECT(prctl(PR_SET_DUMPABLE, 1) == 0 && prctl(PR_GET_DUMPABLE) == 1);
        EXPECT(prctl(0x7fff0000) == -1 && errno == EINVAL);
    }
    struct iovec iov[3] = {{"wr", 2}, {"it", 2}, {"ev\n", 3}};
    EXPECT(writev(1, iov, 3) == 7);
    EXPECT(write(2, "stderr works\n", 13) == 13);
}

static void handler(int sig) { (void)sig; }

static void test_signals(void)
{
    struct sigaction sa = {0}, old, cur;
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    EXPECT(sigaction(SIGUSR1, &sa, &old) == 0);
    EXPECT(old.sa_handler == SIG_DFL);
    EXPECT(sigaction(SIGUSR1, NULL, &cur) == 0);
    EXPECT(cur.sa_handler == handler);
    EXPECT(cur.sa_flags & SA_RESTART);
    EXPECT(sigismember(&cur.sa_mask, SIGUSR2));
    sa.sa_handler = SIG_IGN;
    EXPECT(sigaction(SIGUSR1, &sa, &old) == 0 && old.sa_handler == handler);
    EXPECT(sigaction(SIGKILL, &sa, NULL) == -1 && errno == EINVAL);
    /* An ignored signal sent to ourselves is dropped. */
    EXPECT(raise(SIGUSR1) == 0);

    sigset_t set, oset, now;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    EXPECT(sigprocmask(SIG_BLOCK, &set, &oset) == 0);
    EXPECT(!sigismember(&oset, SIGUSR2));
    EXPECT(sigprocmask(SIG_SETMASK, NULL, &now) == 0 && sigismember(&now, SIGUSR2));
    EXPECT(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0);
    EXPECT(sigprocmask(SIG_SETMASK, NULL, &now) == 0 && !sigismember(&now, SIGUSR2));
    sigfillset(&set);
    EXPECT(sigprocmask(SIG_SETMASK, &set, NULL) == 0);
    EXPECT(sigprocmask(SIG_SETMASK, &oset, &now) == 0 && !sigismember(&now, SIGKILL));

    static char altstack[16384];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0}, os;
    EXPECT(sigaltstack(&ss, &os) == 0);
    EXPECT(sigaltstack(NULL, &os) == 0 && os.ss_sp == altstack && os.ss_size == sizeof(altstack));
    ss.ss_flags = SS_DISABLE;
    EXPECT(sigaltstack(&ss, NULL) == 0);
    EXPECT(sigaltstack(NULL, &os) == 0 && (os.ss_flags & SS_DISABLE));
}

static void test_startup(int argc, char **argv)
{
    EXPECT(argc >= 1 && argv[0] != NULL && argv[argc] == NULL);
    EXPECT(environ != NULL);
    EXPECT(getauxval(AT_PAGESZ) == 4096);
    const unsigned char *rnd = (const unsigned char *)getauxval(AT_RANDOM);
    EXPECT(rnd != NULL);
    int nz = 0;
    for (int i = 0; i < 16; i++)
        nz |= rnd[i];
    EXPECT(nz != 0);
    EXPECT(getauxval(AT_PHDR) != 0 && getauxval(AT_ENTRY) != 0);
    /* TLS: musl's thread pointer is the FS base. */
    EXPECT(tls_counter == 42);
    tls_counter++;
    strcpy(tls_buf, "tls");
    EXPECT(tls_counter == 43 && !strcmp(tls_buf, "tls"));
    unsigned long fs = 0;
    EXPECT(syscall(SYS_arch_prctl, 0x1003 /* ARCH_GET_FS */, &fs) == 0);
    unsigned long tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    EXPECT(fs == tp);
}

int main(int argc, char **argv)
{
    test_startup(argc, argv);
    test_brk();
    test_mmap();
    test_time();
    test_identity();
    test_random();
    test_fds();
    test_signals();
    printf("SUCCESS\n");
    return 0;
}

/*
 * thr-bomb: clone as Go and musl use it, and its limits.
 *   raw    a raw clone(2) whose child checks what it starts with (RAX 0,
 *          RSP = the new stack, R8–R13 as the parent left them), reports
 *          through memory, exits alone, and wakes the parent through
 *          CHILD_CLEARTID; then flags Linux refuses too. Same natively.
 *   refuse what Kiln refuses: fork, vfork, clone3, clone for a process.
 *   bomb   threads that block until the thread table is full; pthread_create
 *          then fails with EAGAIN and so does a raw clone; prints how many
 *          were made, releases them, and makes one more (slots are reused).
 *          Natively it stops at 200 threads instead.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "guest.h"

#define CLONE_THREAD_FLAGS                                                   \
    (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |      \
     CLONE_SYSVSEM | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID)

/* What the raw child saw, in order: rax, rsp, r8, r9, r10, r12, r13, tid. */
static volatile uint64_t seen[8];
static volatile int ctid, ptid;

/*
 * clone with the child's registers under test. The child never returns
 * into C: it stores what it sees, calls gettid, and exits its thread.
 */
static long raw_clone(unsigned long flags, void *stack)
{
    long ret;
    register uint64_t r10 __asm__("r10") = (uint64_t)(uintptr_t)&ctid;
    register uint64_t r8 __asm__("r8") = 0x8888888888888888ULL;
    register uint64_t r9 __asm__("r9") = 0x9999999999999999ULL;
    __asm__ volatile(
        "movabs $0x1212121212121212, %%r12\n\t"
        "movabs $0x1313131313131313, %%r13\n\t"
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "mov %%rax, seen+0(%%rip)\n\t"
        "mov %%rsp, seen+8(%%rip)\n\t"
        "mov %%r8, seen+16(%%rip)\n\t"
        "mov %%r9, seen+24(%%rip)\n\t"
        "mov %%r10, seen+32(%%rip)\n\t"
        "mov %%r12, seen+40(%%rip)\n\t"
        "mov %%r13, seen+48(%%rip)\n\t"
        "mov $186, %%eax\n\t" /* gettid */
        "syscall\n\t"
        "mov %%rax, seen+56(%%rip)\n\t"
        "mov $60, %%eax\n\t" /* exit this thread only */
        "xor %%edi, %%edi\n\t"
        "syscall\n\t"
        "ud2\n"
        "1:"
        : "=a"(ret), "+r"(r10), "+r"(r8), "+r"(r9)
        : "a"(SYS_clone), "D"(flags), "S"(stack), "d"(&ptid)
        : "rcx", "r11", "r12", "r13", "memory");
    return ret;
}

static void wait_cleartid(void)
{
    while (ctid != 0)
        /* Shared, not private: Linux wakes CLEARTID waiters with a shared
         * key. */
        syscall(SYS_futex, &ctid, 0 /* FUTEX_WAIT */, ctid, 0, 0, 0);
}

static void raw(void)
{
    static uint8_t stack[16384] __attribute__((aligned(16)));
    void *top = stack + sizeof stack;
    ctid = -1;
    long tid = raw_clone(CLONE_THREAD_FLAGS, top);
    EXPECT(tid > 0);
    EXPECT(ptid == tid);
    wait_cleartid();
    EXPECT(seen[0] == 0);
    EXPECT(seen[1] == (uint64_t)(uintptr_t)top);
    EXPECT(seen[2] == 0x8888888888888888ULL);
    EXPECT(seen[3] == 0x9999999999999999ULL);
    EXPECT(seen[4] == (uint64_t)(uintptr_t)&ctid);
    EXPECT(seen[5] == 0x1212121212121212ULL);
    EXPECT(seen[6] == 0x1313131313131313ULL);
    EXPECT((long)seen[7] == tid);
    printf("raw clone ok\n");

    errno = 0;
    /* Invalid to Linux as well: a thread must share signal handlers,
     * which must share memory. */
    EXPECT(syscall(SYS_clone, CLONE_VM | CLONE_THREAD, top, 0, 0, 0) == -1 && errno == EINVAL);
    EXPECT(syscall(SYS_clone, CLONE_SIGHAND | CLONE_THREAD, top, 0, 0, 0) == -1 && errno == EINVAL);
    printf("invalid ok\n");
}

/* What Kiln refuses and Linux would do: processes. Never run natively. */
static void refuse(void)
{
    errno = 0;
    EXPECT(syscall(SYS_fork) == -1 && errno == ENOSYS);
    EXPECT(syscall(SYS_vfork) == -1 && errno == ENOSYS);
    EXPECT(syscall(435 /* clone3 */, 0, 0) == -1 && errno == ENOSYS);
    EXPECT(syscall(SYS_clone, 17 /* SIGCHLD: fork */, 0, 0, 0, 0) == -1 && errno == EINVAL);
    EXPECT(syscall(SYS_clone, CLONE_VM | CLONE_SIGHAND, 0, 0, 0, 0) == -1 && errno == EINVAL);
    EXPECT(syscall(SYS_clone, CLONE_THREAD_FLAGS | CLONE_NEWNS, 0, 0, 0, 0) == -1 && errno == EINVAL);
    printf("refusals ok\n");
}

static volatile int release;

static void *blocker(void *arg)
{
    (void)arg;
    while (!release)
        syscall(SYS_futex, &release, 128, 0, 0, 0, 0);
    return 0;
}

static void bomb(void)
{
    static pthread_t th[256];
    int limit = 200, n = 0, e = 0;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 16384);
    while (n < limit && (e = pthread_create(&th[n], &a, blocker, 0)) == 0)
        n++;
    if (n < limit) {
        EXPECT(e == EAGAIN);
        static uint8_t stack[4096] __attribute__((aligned(16)));
        errno = 0;
        EXPECT(raw_clone(CLONE_THREAD_FLAGS, stack + sizeof stack) == -EAGAIN);
    }
    printf("threads=%d\n", n);
    release = 1;
    syscall(SYS_futex, &release, 129, 0x7fffffff, 0, 0, 0);
    for (int i = 0; i < n; i++)
        EXPECT(pthread_join(th[i], 0) == 0);
    /* Every slot is free again. */
    release = 0;
    for (int i = 0; i < n; i++)
        EXPECT(pthread_create(&th[i], &a, blocker, 0) == 0);
    release = 1;
    syscall(SYS_futex, &release, 129, 0x7fffffff, 0, 0, 0);
    for (int i = 0; i < n; i++)
        EXPECT(pthread_join(th[i], 0) == 0);
    printf("reused ok\n");
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "bomb") == 0)
        bomb();
    else if (argc > 1 && strcmp(argv[1], "refuse") == 0)
        refuse();
    else
        raw();
    printf("SUCCESS\n");
    return 0;
}

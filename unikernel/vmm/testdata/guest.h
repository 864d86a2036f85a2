/*
 * guest.h — the whole "libc" of the VMM's freestanding test guests: raw
 * syscalls, the entry point, and the hypercall doorbell for guests that
 * talk to the VMM directly from ring 3 (they share the kernel's protection
 * domain, so they can).
 */
#include <stdint.h>
#include <stddef.h>
#include "kiln_abi.h"

static inline long sys3(long nr, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

static inline long sys_write(int fd, const void *p, size_t n) { return sys3(1, fd, (long)p, (long)n); }
static inline long sys_read(int fd, void *p, size_t n) { return sys3(0, fd, (long)p, (long)n); }
static inline __attribute__((noreturn)) void sys_exit(int code)
{
    for (;;)
        sys3(231, code, 0, 0);
}

static inline size_t slen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static inline void puts1(const char *s) { sys_write(1, s, slen(s)); }

static inline void doorbell(unsigned nr, uint64_t gpa)
{
    volatile uint64_t *bell = (volatile uint64_t *)(uintptr_t)(KILN_HC_MMIO_BASE + 8ULL * nr);
    __asm__ volatile("movq %1, %0" : "=m"(*bell) : "r"(gpa) : "memory");
}

static inline unsigned long atoul(const char *s)
{
    unsigned long n = 0;
    while (s && *s >= '0' && *s <= '9')
        n = n * 10 + (unsigned long)(*s++ - '0');
    return n;
}

int main(int argc, char **argv);

/* _start: argc at (%rsp), argv after it, as execve leaves them. */
__asm__(".globl _start\n_start:\n"
        "  movq (%rsp), %rdi\n"
        "  leaq 8(%rsp), %rsi\n"
        "  andq $-16, %rsp\n"
        "  call guest_start\n"
        "  ud2\n");

__attribute__((used, noreturn)) static void guest_start(long argc, char **argv)
{
    sys_exit(main((int)argc, argv));
}

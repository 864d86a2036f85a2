/*
 * fallback.c — a minimal library OS, weak, so the machine part can boot and
 * be tested on its own. The real library OS (the .c files of unikernel/kernel) defines
 * the same functions strongly and replaces every one of these at link time.
 *
 * It knows read from fd 0 (one waiting HC_IO), write/writev to fd 1 and 2
 * (one HC_IO flush each, unbuffered), exit/exit_group, and
 * arch_prctl(ARCH_SET_FS); everything else is -ENOSYS.
 */
#include "arch.h"

#define NR_READ         0
#define NR_WRITE        1
#define NR_WRITEV       20
#define NR_EXIT         60
#define NR_ARCH_PRCTL   158
#define NR_EXIT_GROUP   231
#define ARCH_SET_FS     0x1002
#define EFAULT          14
#define EBADF           9
#define EINVAL          22
#define ENOSYS          38

static struct kiln_hc_exit fb_exit;
static uint64_t fb_mem_size;

__attribute__((weak)) void libos_init(const struct kiln_boot_info *bi)
{
    fb_mem_size = bi->mem_size;
}

/* A user buffer must lie in the function's part of memory. */
static int fb_user_range(uint64_t p, uint64_t n)
{
    return p >= KILN_USER_BASE && p <= fb_mem_size && n <= fb_mem_size - p;
}

static int64_t fb_flush(int fd, uint64_t p, uint64_t n)
{
    static struct kiln_hc_io io;
    if (fd != 1 && fd != 2)
        return -EBADF;
    if (!fb_user_range(p, n))
        return -EFAULT;
    io = (struct kiln_hc_io){0};
    if (fd == 1) {
        io.out_gpa = p;
        io.out_len = n;
    } else {
        io.err_gpa = p;
        io.err_len = n;
    }
    arch_hypercall(KILN_HC_IO, &io);
    return (int64_t)n;
}

static int64_t fb_read(int fd, uint64_t p, uint64_t n)
{
    static struct kiln_hc_io io;
    if (fd != 0)
        return -EBADF;
    if (!fb_user_range(p, n))
        return -EFAULT;
    if (n == 0)
        return 0;
    do {
        io = (struct kiln_hc_io){.in_gpa = p, .in_cap = n, .flags = KILN_IO_WAIT_INPUT};
        arch_hypercall(KILN_HC_IO, &io);
    } while (io.in_len == 0 && !io.in_eof);
    return (int64_t)io.in_len;
}

struct fb_iovec {
    uint64_t base, len;
};

static __attribute__((noreturn)) void fb_end(uint32_t reason, int32_t status)
{
    fb_exit.reason = reason;
    fb_exit.status = status;
    fb_exit.ring0_entries = arch_ring0_entries();
    for (;;)
        arch_hypercall(KILN_HC_EXIT, &fb_exit);
}

static void fb_enosys(uint64_t nr)
{
    fb_exit.enosys++;
    for (int i = 0; i < KILN_ENOSYS_SLOTS; i++) {
        if (fb_exit.enosys_count[i] == 0 || fb_exit.enosys_nr[i] == nr) {
            fb_exit.enosys_nr[i] = (uint32_t)nr;
            fb_exit.enosys_count[i]++;
            return;
        }
    }
}

__attribute__((weak)) void libos_syscall(struct kframe *f)
{
    fb_exit.syscalls++;
    switch (f->rax) {
    case NR_READ:
        f->rax = (uint64_t)fb_read((int)f->rdi, f->rsi, f->rdx);
        return;
    case NR_WRITE:
        f->rax = (uint64_t)fb_flush((int)f->rdi, f->rsi, f->rdx);
        return;
    case NR_WRITEV: {
        uint64_t cnt = f->rdx;
        int64_t total = 0;
        if (cnt > 1024 || !fb_user_range(f->rsi, cnt * sizeof(struct fb_iovec))) {
            f->rax = (uint64_t)-EINVAL;
            return;
        }
        const struct fb_iovec *iov = (const struct fb_iovec *)(uintptr_t)f->rsi;
        for (uint64_t i = 0; i < cnt; i++) {
            if (iov[i].len == 0)
                continue;
            int64_t r = fb_flush((int)f->rdi, iov[i].base, iov[i].len);
            if (r < 0) {
                f->rax = (uint64_t)(total ? total : r);
                return;
            }
            total += r;
        }
        f->rax = (uint64_t)total;
        return;
    }
    case NR_EXIT:
    case NR_EXIT_GROUP:
        fb_end(KILN_EXIT_NORMAL, (int32_t)(f->rdi & 0xff));
    case NR_ARCH_PRCTL:
        if (f->rdi != ARCH_SET_FS) {
            f->rax = (uint64_t)-EINVAL;
            return;
        }
        arch_set_fs(f->rsi);
        f->rax = 0;
        return;
    default:
        fb_enosys(f->rax);
        f->rax = (uint64_t)-ENOSYS;
    }
}

static const char *fb_vector_name(uint64_t v)
{
    static const char *const names[32] = {
        "divide error (#DE)", "debug (#DB)", "NMI", "breakpoint (#BP)",
        "overflow (#OF)", "bound (#BR)", "invalid opcode (#UD)", "no FPU (#NM)",
        "double fault (#DF)", "coprocessor overrun", "invalid TSS (#TS)",
        "segment not present (#NP)", "stack fault (#SS)",
        "general protection fault (#GP)", "page fault (#PF)", "vector 15",
        "x87 error (#MF)", "alignment check (#AC)", "machine check (#MC)",
        "SIMD error (#XM)", "virtualization (#VE)", "control protection (#CP)",
    };
    return v < 32 && names[v] ? names[v] : "exception";
}

static uint32_t fb_signal(uint64_t v)
{
    switch (v) {
    case 0: case 16: case 19: return 8;  /* SIGFPE */
    case 1: case 3: return 5;            /* SIGTRAP */
    case 6: return 4;                    /* SIGILL */
    case 17: return 7;                   /* SIGBUS */
    default: return 11;                  /* SIGSEGV */
    }
}

static char *fb_str(char *p, char *end, const char *s)
{
    while (*s && p < end)
        *p++ = *s++;
    return p;
}

static char *fb_hex(char *p, char *end, uint64_t x)
{
    p = fb_str(p, end, "0x");
    int shift = 60;
    while (shift > 0 && ((x >> shift) & 0xf) == 0)
        shift -= 4;
    for (; shift >= 0 && p < end; shift -= 4)
        *p++ = "0123456789abcdef"[(x >> shift) & 0xf];
    return p;
}

__attribute__((weak)) void libos_fault(struct kfault *f)
{
    static char msg[256];
    char *p = msg, *end = msg + sizeof msg;
    uint32_t sig = fb_signal(f->vector);
    p = fb_str(p, end, "kiln: ");
    p = fb_str(p, end, fb_vector_name(f->vector));
    p = fb_str(p, end, " at rip ");
    p = fb_hex(p, end, f->regs.rip);
    p = fb_str(p, end, " addr ");
    p = fb_hex(p, end, f->cr2);
    p = fb_str(p, end, " error ");
    p = fb_hex(p, end, f->error);
    p = fb_str(p, end, "\n");
    fb_exit.err_gpa = (uint64_t)(uintptr_t)msg;
    fb_exit.err_len = (uint64_t)(p - msg);
    fb_exit.signo = sig;
    fb_exit.fault_vector = (uint32_t)f->vector;
    fb_exit.fault_rip = f->regs.rip;
    fb_exit.fault_addr = f->cr2;
    fb_exit.fault_error = f->error;
    fb_end(KILN_EXIT_SIGNAL, 128 + (int32_t)sig);
}

__attribute__((weak)) void kpanic(const char *msg)
{
    fb_exit.err_gpa = (uint64_t)(uintptr_t)msg;
    fb_exit.err_len = 0;
    while (msg[fb_exit.err_len])
        fb_exit.err_len++;
    fb_end(KILN_EXIT_PANIC, 255);
}

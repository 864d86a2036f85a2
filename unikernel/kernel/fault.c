/*
 * fault.c — how a program (or the kernel) ends when it takes an exception:
 * the Linux signal for the vector, a one-line reason on stderr, and
 * KILN_HC_EXIT. Handlers are recorded by rt_sigaction but not run yet, so
 * every synchronous fault is fatal, as it is for a program without them.
 */
#include "kernel.h"
#include "libos.h"
#include "ksys.h"

#define SIGILL 4
#define SIGTRAP 5
#define SIGBUS 7
#define SIGFPE 8
#define SIGSEGV 11

static const char *const signames[] = {
    [SIGILL] = "SIGILL", [SIGTRAP] = "SIGTRAP", [SIGBUS] = "SIGBUS",
    [SIGFPE] = "SIGFPE", [SIGSEGV] = "SIGSEGV",
};

struct vecinfo {
    uint8_t sig;
    const char *what;
};

/* Linux's mapping of x86 exceptions to signals (arch/x86/kernel/traps.c). */
static struct vecinfo vector_info(uint64_t v)
{
    switch (v) {
    case 0: return (struct vecinfo){SIGFPE, "divide error"};
    case 1: return (struct vecinfo){SIGTRAP, "debug trap"};
    case 3: return (struct vecinfo){SIGTRAP, "breakpoint"};
    case 4: return (struct vecinfo){SIGSEGV, "overflow"};
    case 5: return (struct vecinfo){SIGSEGV, "bound range exceeded"};
    case 6: return (struct vecinfo){SIGILL, "invalid opcode"};
    case 7: return (struct vecinfo){SIGFPE, "device not available"};
    case 10: return (struct vecinfo){SIGSEGV, "invalid TSS"};
    case 11: return (struct vecinfo){SIGBUS, "segment not present"};
    case 12: return (struct vecinfo){SIGBUS, "stack segment fault"};
    case 13: return (struct vecinfo){SIGSEGV, "general protection fault"};
    case 14: return (struct vecinfo){SIGSEGV, "page fault"};
    case 16: return (struct vecinfo){SIGFPE, "x87 floating-point exception"};
    case 17: return (struct vecinfo){SIGBUS, "alignment check"};
    case 18: return (struct vecinfo){SIGBUS, "machine check"};
    case 19: return (struct vecinfo){SIGFPE, "SIMD floating-point exception"};
    }
    return (struct vecinfo){SIGSEGV, "unexpected exception"};
}

static int in_kernel(uint64_t rip)
{
    return rip >= KILN_BOOTINFO_GPA && rip < KILN_USER_BASE;
}

static void dump_regs(struct kbuf *b, const struct kframe *r)
{
    static const char *const n[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi",
                                    "rbp", "r8",  "r9",  "r10", "r11", "r12",
                                    "r13", "r14", "r15", "rip", "rsp", "rflags"};
    const uint64_t v[] = {r->rax, r->rbx, r->rcx, r->rdx, r->rsi, r->rdi,
                          r->rbp, r->r8,  r->r9,  r->r10, r->r11, r->r12,
                          r->r13, r->r14, r->r15, r->rip, r->rsp, r->rflags};
    for (int i = 0; i < 18; i++) {
        kb_str(b, n[i]);
        kb_str(b, "=");
        kb_hex(b, v[i]);
        kb_str(b, (i % 6 == 5) ? "\n" : " ");
    }
}

void libos_fault(struct kfault *f)
{
    char tmp[640];
    struct kbuf b = {tmp, 0, sizeof(tmp)};
    struct vecinfo vi = vector_info(f->vector);
    if (in_kernel(f->regs.rip) || f->vector == 8 /* #DF */) {
        kb_str(&b, "kiln: kernel panic: ");
        kb_str(&b, vi.what);
        kb_str(&b, " (vector ");
        kb_udec(&b, f->vector);
        kb_str(&b, ", error ");
        kb_hex(&b, f->error);
        kb_str(&b, ", cr2 ");
        kb_hex(&b, f->cr2);
        kb_str(&b, ") in the kernel\n");
        dump_regs(&b, &f->regs);
        stdio_write(2, tmp, b.len);
        kexit(KILN_EXIT_PANIC, 255, 0, f);
    }
    kb_str(&b, "kiln: ");
    kb_str(&b, signames[vi.sig]);
    kb_str(&b, ": ");
    kb_str(&b, vi.what);
    if (f->vector == 14) {
        kb_str(&b, " at address ");
        kb_hex(&b, f->cr2);
        kb_str(&b, (f->error & 0x10) ? " (exec, " : (f->error & 2) ? " (write, " : " (read, ");
        kb_str(&b, (f->error & 1) ? "protection violation)" : "not present)");
    }
    kb_str(&b, " at rip=");
    kb_hex(&b, f->regs.rip);
    kb_str(&b, "\n");
    stdio_write(2, tmp, b.len);
    kexit(KILN_EXIT_SIGNAL, 128 + vi.sig, vi.sig, f);
}

__attribute__((noreturn)) void kpanic(const char *msg)
{
    kputs("kiln: kernel panic: ");
    kputs(msg);
    kputs("\n");
    kexit(KILN_EXIT_PANIC, 255, 0, 0);
}

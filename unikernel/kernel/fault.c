/*
 * fault.c — what an exception becomes. A #PF first asks vmem whether it is
 * a page mapped on demand; then a fault in the kernel's own code is a
 * kernel panic; anything else is the program's, turned into the Linux
 * signal, si_code and si_addr for the vector (arch/x86/kernel/traps.c,
 * fault.c) and handed to its handler if it has one that may run. Without
 * one the program ends as on Linux: status 128 + signo, a reason on stderr.
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

/* si_code values (include/uapi/asm-generic/siginfo.h). */
#define SI_KERNEL 0x80
#define ILL_ILLOPN 2
#define FPE_INTDIV 1
#define FPE_FLTDIV 3
#define FPE_FLTOVF 4
#define FPE_FLTUND 5
#define FPE_FLTRES 6
#define FPE_FLTINV 7
#define SEGV_MAPERR 1
#define SEGV_ACCERR 2
#define TRAP_TRACE 2

/* The si_code of an x87 (#MF) or SIMD (#XM) exception: the first unmasked
 * condition in Linux's order of precedence. */
static int fp_code(uint64_t vector)
{
    uint32_t err;
    if (vector == 19) {
        uint32_t mxcsr;
        __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
        err = mxcsr & ~(mxcsr >> 7) & 0x3f;
    } else {
        uint16_t sw, cw;
        __asm__ volatile("fnstsw %0; fnstcw %1" : "=m"(sw), "=m"(cw));
        err = sw & ~cw & 0x3f;
    }
    if (err & 0x01)
        return FPE_FLTINV;
    if (err & 0x04)
        return FPE_FLTDIV;
    if (err & 0x08)
        return FPE_FLTOVF;
    if (err & 0x12)
        return FPE_FLTUND;
    if (err & 0x20)
        return FPE_FLTRES;
    return 0;
}

/* si_code and si_addr as Linux reports them for the vector. */
static void fault_siginfo(const struct kfault *f, int *code, uint64_t *addr)
{
    *code = SI_KERNEL;
    *addr = 0;
    switch (f->vector) {
    case 0: *code = FPE_INTDIV; *addr = f->regs.rip; break;
    case 1: *code = TRAP_TRACE; *addr = f->regs.rip; break;
    case 6: *code = ILL_ILLOPN; *addr = f->regs.rip; break;
    case 14:
        *code = (f->error & 1) ? SEGV_ACCERR : SEGV_MAPERR;
        *addr = f->cr2;
        break;
    case 16:
    case 19: *code = fp_code(f->vector); *addr = f->regs.rip; break;
    }
}

__attribute__((noreturn)) void fault_out_of_memory(const struct kfault *f)
{
    char tmp[128];
    struct kbuf b = {tmp, 0, sizeof(tmp)};
    kb_str(&b, "kiln: out of memory: the function used all of its ");
    kb_udec(&b, vmem_limit_bytes() >> 20);
    kb_str(&b, " MiB\n");
    stdio_write(2, tmp, b.len);
    kexit(KILN_EXIT_SIGNAL, 128 + 9, 9, f); /* as the OOM killer: SIGKILL */
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
    if (f->vector == 14) {
        int r = vmem_fault(f->cr2, f->error);
        if (r == 1)
            return;
        if (r == -ENOMEM)
            fault_out_of_memory(f);
    }
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
    int code;
    uint64_t addr;
    fault_siginfo(f, &code, &addr);
    if (signal_deliver_fault(f, vi.sig, code, addr))
        return;
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

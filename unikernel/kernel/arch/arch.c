/*
 * arch.c — the ring-3 C side of the machine part: the IDT, boot, the fault
 * hand-off, hypercalls and the FS base.
 */
#include <stddef.h>
#include "arch.h"

/* asmdefs.h restates these for the assembler; keep the two in step. */
_Static_assert(ASM_SEL_KERNEL_CS == KILN_SEL_KERNEL_CS, "kernel CS");
_Static_assert(ASM_SEL_USER_CS == KILN_SEL_USER_CS, "user CS");
_Static_assert(ASM_SEL_USER_DS == KILN_SEL_USER_DS, "user DS");
_Static_assert(offsetof(struct arch_cpu, sc_rax) == CPU_SC_RAX, "cpu");
_Static_assert(offsetof(struct arch_cpu, sc_rcx) == CPU_SC_RCX, "cpu");
_Static_assert(offsetof(struct arch_cpu, sc_r11) == CPU_SC_R11, "cpu");
_Static_assert(offsetof(struct arch_cpu, user_rsp) == CPU_USER_RSP, "cpu");
_Static_assert(offsetof(struct arch_cpu, kstack_top) == CPU_KSTACK_TOP, "cpu");
_Static_assert(offsetof(struct arch_cpu, entry) == CPU_ENTRY, "cpu");
_Static_assert(offsetof(struct arch_cpu, resume_rip) == CPU_RESUME_RIP, "cpu");
_Static_assert(offsetof(struct arch_cpu, resume_rsp) == CPU_RESUME_RSP, "cpu");
_Static_assert(offsetof(struct arch_fault_record, vector) == FR_VECTOR, "fr");
_Static_assert(offsetof(struct arch_fault_record, error) == FR_ERROR, "fr");
_Static_assert(offsetof(struct arch_fault_record, rip) == FR_RIP, "fr");
_Static_assert(offsetof(struct arch_fault_record, cs) == FR_CS, "fr");
_Static_assert(offsetof(struct arch_fault_record, rflags) == FR_RFLAGS, "fr");
_Static_assert(offsetof(struct arch_fault_record, rsp) == FR_RSP, "fr");
_Static_assert(offsetof(struct arch_fault_record, ss) == FR_SS, "fr");
_Static_assert(offsetof(struct arch_fault_record, cr2) == FR_CR2, "fr");
_Static_assert(offsetof(struct kframe, rax) == KF_RAX, "kframe");
_Static_assert(offsetof(struct kframe, rbx) == KF_RBX, "kframe");
_Static_assert(offsetof(struct kframe, rcx) == KF_RCX, "kframe");
_Static_assert(offsetof(struct kframe, rdx) == KF_RDX, "kframe");
_Static_assert(offsetof(struct kframe, rsi) == KF_RSI, "kframe");
_Static_assert(offsetof(struct kframe, rdi) == KF_RDI, "kframe");
_Static_assert(offsetof(struct kframe, rbp) == KF_RBP, "kframe");
_Static_assert(offsetof(struct kframe, r8) == KF_R8, "kframe");
_Static_assert(offsetof(struct kframe, r9) == KF_R9, "kframe");
_Static_assert(offsetof(struct kframe, r10) == KF_R10, "kframe");
_Static_assert(offsetof(struct kframe, r11) == KF_R11, "kframe");
_Static_assert(offsetof(struct kframe, r12) == KF_R12, "kframe");
_Static_assert(offsetof(struct kframe, r13) == KF_R13, "kframe");
_Static_assert(offsetof(struct kframe, r14) == KF_R14, "kframe");
_Static_assert(offsetof(struct kframe, r15) == KF_R15, "kframe");
_Static_assert(offsetof(struct kframe, rip) == KF_RIP, "kframe");
_Static_assert(offsetof(struct kframe, rsp) == KF_RSP, "kframe");
_Static_assert(offsetof(struct kframe, rflags) == KF_RFLAGS, "kframe");
_Static_assert(sizeof(struct kframe) == KF_SIZE, "kframe");
_Static_assert(KF_SIZE % 16 == 0, "kframe keeps the kernel stack aligned");
_Static_assert(offsetof(struct kfault, vector) == KFT_VECTOR, "kfault");
_Static_assert(offsetof(struct kfault, error) == KFT_ERROR, "kfault");
_Static_assert(offsetof(struct kfault, cr2) == KFT_CR2, "kfault");
_Static_assert(offsetof(struct kfault, regs) == KFT_REGS, "kfault");

struct arch_cpu kiln_cpu = {
    .kstack_top = (uint64_t)(uintptr_t)kiln_kstack_top,
};
struct arch_fault_record kiln_fault_record;
struct kfault kiln_kfault;
uint64_t kiln_ring0_entries;

static uint64_t fs_shadow;
static int fault_depth;

struct idt_gate {
    uint16_t off_lo;
    uint16_t selector;
    uint8_t ist;
    uint8_t type;     /* P | DPL | interrupt gate */
    uint16_t off_mid;
    uint32_t off_hi;
    uint32_t zero;
};
_Static_assert(sizeof(struct idt_gate) == 16, "idt gate");

#define GATE_INTR_DPL0 0x8e
#define GATE_INTR_DPL3 0xee
#define IST_EMERGENCY  1 /* TSS.IST1 = KILN_IST_STACK_TOP */

/*
 * The IDT page is a user page like every other, so ring 3 fills it. Vectors
 * 32–255 stay not-present: nothing raises them (no interrupt controller),
 * and a stray `int $n` becomes #GP.
 */
static void idt_fill(void)
{
    volatile struct idt_gate *idt = (volatile struct idt_gate *)(uintptr_t)KILN_IDT_GPA;
    for (int v = 0; v < 32; v++) {
        uint64_t off = (uint64_t)(uintptr_t)kiln_vectors + 16 * (uint64_t)v;
        struct idt_gate g = {
            .off_lo = (uint16_t)off,
            .selector = KILN_SEL_KERNEL_CS,
            .ist = 0,
            .type = GATE_INTR_DPL0,
            .off_mid = (uint16_t)(off >> 16),
            .off_hi = (uint32_t)(off >> 32),
        };
        if (v == 3)         /* int3 must work from ring 3: gates and breakpoints */
            g.type = GATE_INTR_DPL3;
        if (v == 2 || v == 8 || v == 18)  /* NMI, #DF, #MC: known-good stack */
            g.ist = IST_EMERGENCY;
        idt[v] = g;
    }
}

void arch_main(void)
{
    const struct kiln_boot_info *bi = boot_info();
    idt_fill();
    if (bi->magic != KILN_BOOT_MAGIC || bi->abi_version != KILN_ABI_VERSION)
        kpanic("boot info: bad magic or ABI version");
    libos_init(bi);
    arch_enter_user(bi->entry, bi->initial_rsp);
}

/*
 * A fault while a fault is being handled means the library OS's fault path
 * itself is broken: report that much without calling back into it. When the
 * library OS handled the fault (a page it maps on demand, a signal handler
 * it set up), it returns and the possibly rewritten registers resume.
 */
void arch_fault(struct kfault *f)
{
    if (fault_depth++ == 0) {
        libos_fault(f);
        fault_depth = 0;
        arch_resume(&f->regs);
    }
    static const char msg[] = "kiln kernel: fault inside the fault handler\n";
    static struct kiln_hc_exit ex;
    ex.err_gpa = (uint64_t)(uintptr_t)msg;
    ex.err_len = sizeof msg - 1;
    ex.status = 255;
    ex.reason = KILN_EXIT_PANIC;
    ex.fault_vector = (uint32_t)f->vector;
    ex.fault_rip = f->regs.rip;
    ex.fault_addr = f->cr2;
    ex.fault_error = f->error;
    ex.ring0_entries = kiln_ring0_entries;
    for (;;)
        arch_hypercall(KILN_HC_EXIT, &ex);
}

void arch_hypercall(unsigned nr, void *args)
{
    if (boot_info()->flags & KILN_BOOT_HC_PIO) {
        arch_gate(GATE_OUTL, (uint64_t)(uintptr_t)args, KILN_HC_PIO_BASE + nr);
        __asm__ volatile("" ::: "memory");
        return;
    }
    /* Identity mapping: the doorbell's virtual address is its gpa. */
    volatile uint64_t *bell =
        (volatile uint64_t *)(uintptr_t)(KILN_HC_MMIO_BASE + 8ULL * nr);
    __asm__ volatile("movq %1, %0" : "=m"(*bell) : "r"((uint64_t)(uintptr_t)args) : "memory");
}

void arch_set_fs(uint64_t base)
{
    fs_shadow = base;
    if (boot_info()->flags & KILN_BOOT_FSGSBASE)
        __asm__ volatile("wrfsbase %0" ::"r"(base) : "memory");
    else
        arch_gate(GATE_WRFSBASE, base, 0);
}

uint64_t arch_get_fs(void)
{
    uint64_t base = fs_shadow;
    if (boot_info()->flags & KILN_BOOT_FSGSBASE)
        __asm__ volatile("rdfsbase %0" : "=r"(base));
    return base;
}

void arch_set_kstack(uint64_t top)
{
    kiln_cpu.kstack_top = top;
}

uint64_t arch_boot_kstack_top(void)
{
    return (uint64_t)(uintptr_t)kiln_kstack_top;
}

static uint64_t cr3_shadow = KILN_PAGETABLE_GPA;

void arch_load_cr3(uint64_t pml4_gpa)
{
    cr3_shadow = pml4_gpa;
    arch_gate(GATE_LOAD_CR3, pml4_gpa, 0);
}

void arch_flush_tlb(void)
{
    arch_gate(GATE_LOAD_CR3, cr3_shadow, 0);
}

uint64_t arch_thread_stack(uint64_t top, void (*start)(void))
{
    /* What arch_switch pops: six callee-saved registers (zero), then the
     * return address; above it a zero "return address" for start itself,
     * so start runs with RSP = 8 mod 16, as after a call. */
    uint64_t *sp = (uint64_t *)(uintptr_t)(top & ~15ULL);
    *--sp = 0;
    *--sp = (uint64_t)(uintptr_t)start;
    for (int i = 0; i < 6; i++)
        *--sp = 0;
    return (uint64_t)(uintptr_t)sp;
}

uint64_t arch_ring0_entries(void)
{
    return kiln_ring0_entries;
}

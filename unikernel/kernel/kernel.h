/*
 * kernel.h — the seam inside the Kiln guest kernel between the machine part
 * (arch/: entry, ring-0 stub, IDT, syscall entry, fault entry, hypercalls;
 * x86-64 specific, a few dozen ring-0 instructions) and the library OS
 * (everything else: syscalls, memory bookkeeping, stdio buffers, time,
 * randomness; plain freestanding C that runs in ring 3).
 *
 * Every function here runs in ring 3 unless it says otherwise. The kernel is
 * built with -ffreestanding -mgeneral-regs-only -mno-red-zone, so it never
 * touches the function's SSE/AVX state.
 */
#ifndef KILN_KERNEL_H
#define KILN_KERNEL_H

#include <stdint.h>
#include <stddef.h>
#include "kiln_abi.h"

/* Registers of the function at a syscall or a fault, saved by arch/. */
struct kframe {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rsp, rflags;
};

/* A synchronous exception taken by the function (or by the kernel). */
struct kfault {
    uint64_t vector;     /* x86 exception vector */
    uint64_t error;      /* error code, 0 if the vector has none */
    uint64_t cr2;        /* faulting address for #PF */
    struct kframe regs;  /* state at the fault */
};

/* ---- provided by arch/ ---- */

/* The boot-info page the VMM wrote (at KILN_BOOTINFO_GPA). */
static inline const struct kiln_boot_info *boot_info(void)
{
    return (const struct kiln_boot_info *)KILN_BOOTINFO_GPA;
}

/* Issue hypercall nr with the guest-physical address of its argument struct
 * (MMIO doorbell from ring 3, or the port-I/O path when the boot info says
 * KILN_BOOT_HC_PIO). Returns when the VMM resumes the vCPU. */
void arch_hypercall(unsigned nr, void *args);

/* Set the function's FS base (arch_prctl ARCH_SET_FS): wrfsbase when the
 * boot info says KILN_BOOT_FSGSBASE, else a ring-0 gate. */
void arch_set_fs(uint64_t base);
uint64_t arch_get_fs(void);

/* Enter the function at entry with rsp, every other register zero.
 * Never returns. */
__attribute__((noreturn)) void arch_enter_user(uint64_t entry, uint64_t rsp);

/* Continue at f->rip with every register, RSP and RFLAGS taken from f.
 * Runs in ring 3 and never returns. */
__attribute__((noreturn)) void arch_resume(const struct kframe *f);

/* Cooperative thread switch: save the callee-saved registers and RSP to
 * *save_rsp, continue on next_rsp (saved by an earlier arch_switch or made
 * by arch_thread_stack). Returns when something switches back. */
void arch_switch(uint64_t *save_rsp, uint64_t next_rsp);

/* Prepare a fresh kernel stack ending at top so that arch_switch to the
 * returned RSP calls start(), which must never return. */
uint64_t arch_thread_stack(uint64_t top, void (*start)(void));

/* The kernel stack the syscall entry builds its frame on. The initial
 * thread uses arch_boot_kstack_top(); a thread switch installs the next
 * thread's. */
void arch_set_kstack(uint64_t top);
uint64_t arch_boot_kstack_top(void);

/* Install the page tables rooted at pml4_gpa (a ring-0 gate: mov cr3),
 * and flush the TLB by reloading the current ones. Adding a mapping where
 * none was needs no flush; removing or narrowing one does. */
void arch_load_cr3(uint64_t pml4_gpa);
void arch_flush_tlb(void);

/* Number of ring-0 entries (exceptions and gates) taken so far. */
uint64_t arch_ring0_entries(void);

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* ---- provided by the library OS ---- */

/* Called once by arch/ after the IDT is live: set up the library OS from the
 * boot info. Returns normally; arch/ then enters the function. */
void libos_init(const struct kiln_boot_info *bi);

/* Handle the syscall in f->rax with the arguments in rdi, rsi, rdx, r10, r8,
 * r9; store the result in f->rax. May change other fields of f (for
 * rt_sigreturn later). Called by arch/'s syscall entry on a kernel stack. */
void libos_syscall(struct kframe *f);

/* The function (or the kernel) took exception f, recorded on the fault
 * stack. Returns when the fault is handled — a page mapped on demand, or a
 * signal handler set up by rewriting f->regs — and arch/ resumes f->regs.
 * Otherwise it ends the program as Linux would with the matching signal
 * (status 128 + signo, the reason on stderr); a fault inside the kernel's
 * own code that is not a demand page is a kernel panic. Must not fault. */
void libos_fault(struct kfault *f);

/* Kernel bug: message to stderr, KILN_EXIT_PANIC. Never returns. */
__attribute__((noreturn)) void kpanic(const char *msg);

#endif /* KILN_KERNEL_H */

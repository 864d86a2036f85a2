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

/* The function (or the kernel) took exception f. Ends the program as Linux
 * would with the matching signal (status 128 + signo, the reason on stderr);
 * a fault inside the kernel's own code is a kernel panic. Never returns. */
__attribute__((noreturn)) void libos_fault(const struct kfault *f);

/* Kernel bug: message to stderr, KILN_EXIT_PANIC. Never returns. */
__attribute__((noreturn)) void kpanic(const char *msg);

#endif /* KILN_KERNEL_H */

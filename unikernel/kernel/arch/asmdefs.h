/*
 * asmdefs.h — numbers the assembly of arch/ needs, in a form both the
 * assembler and C can read (kiln_abi.h and kernel.h are C only). arch.c
 * proves with _Static_assert that every value here matches its C twin, so
 * an edit to a struct or to the ABI that forgets this file fails the build.
 */
#ifndef KILN_ARCH_ASMDEFS_H
#define KILN_ARCH_ASMDEFS_H

#define ASM_SEL_KERNEL_CS   0x10
#define ASM_SEL_USER_CS     0x33
#define ASM_SEL_USER_DS     0x2b
#define ASM_RFLAGS_BOOT     0x2     /* only the always-one bit */
#define ASM_MSR_FS_BASE     0xc0000100

/* struct arch_cpu: the state the syscall path keeps outside any stack. */
#define CPU_SC_RAX          0
#define CPU_SC_RCX          8
#define CPU_SC_R11          16
#define CPU_USER_RSP        24
#define CPU_KSTACK_TOP      32
#define CPU_ENTRY           40
#define CPU_RESUME_RIP      48
#define CPU_RESUME_RSP      56

/* struct arch_fault_record: what the ring-0 stub copies out of its frame. */
#define FR_VECTOR           0
#define FR_ERROR            8
#define FR_RIP              16
#define FR_CS               24
#define FR_RFLAGS           32
#define FR_RSP              40
#define FR_SS               48
#define FR_CR2              56

/* struct kframe (kernel.h) */
#define KF_RAX   0
#define KF_RBX   8
#define KF_RCX   16
#define KF_RDX   24
#define KF_RSI   32
#define KF_RDI   40
#define KF_RBP   48
#define KF_R8    56
#define KF_R9    64
#define KF_R10   72
#define KF_R11   80
#define KF_R12   88
#define KF_R13   96
#define KF_R14   104
#define KF_R15   112
#define KF_RIP   120
#define KF_RSP   128
#define KF_RFLAGS 136
#define KF_SIZE  144

/* struct kfault (kernel.h) */
#define KFT_VECTOR 0
#define KFT_ERROR  8
#define KFT_CR2    16
#define KFT_REGS   24

/* Ring-0 gate operations (arch_gate's first argument). */
#define GATE_OUTL       1 /* outl a → port b */
#define GATE_WRFSBASE   2 /* wrmsr FS_BASE ← a */
#define GATE_LOAD_CR3   3 /* mov a → cr3 (flushes the TLB) */

#endif

/*
 * arch.h — what the pieces of arch/ share with each other. Nothing outside
 * arch/ includes it: the library OS sees only kernel.h.
 */
#ifndef KILN_ARCH_H
#define KILN_ARCH_H

#include "kernel.h"
#include "asmdefs.h"

/*
 * The per-CPU state of the syscall path, kept in memory because the entry
 * has no stack to spare (the function's stack must not be touched: its red
 * zone is sacred). There is one vCPU; a cooperative thread switch in the
 * library OS changes kstack_top to the next thread's kernel stack.
 */
struct arch_cpu {
    uint64_t sc_rax;      /* RAX at entry, before the CPL test clobbers it */
    uint64_t sc_rcx;      /* return RIP, ring-0 entry path only */
    uint64_t sc_r11;      /* return RFLAGS, ring-0 entry path only */
    uint64_t user_rsp;    /* the function's RSP during a syscall */
    uint64_t kstack_top;  /* where the dispatcher builds its kframe */
    uint64_t entry;       /* arch_enter_user's jump target */
    uint64_t resume_rip;  /* arch_resume's jump target and stack: no */
    uint64_t resume_rsp;  /* register may hold them at the final jmp */
};

/* Filled by the ring-0 stub; read once by the ring-3 fault entry. */
struct arch_fault_record {
    uint64_t vector, error, rip, cs, rflags, rsp, ss, cr2;
};

extern struct arch_cpu kiln_cpu;
extern struct arch_fault_record kiln_fault_record;
extern uint64_t kiln_ring0_entries;
extern char kiln_vectors[];      /* 32 ring-0 stubs, 16 bytes apart */
extern char kiln_kstack_top[];

/* Enter ring 0 through int3, run operation op (GATE_*) and come back. */
uint64_t arch_gate(uint64_t op, uint64_t a, uint64_t b);

/* The ring-3 C side of the fault path. */
__attribute__((noreturn)) void arch_fault(struct kfault *f);

/* Ring-3 C entry, called by entry.S once it is in ring 3. */
__attribute__((noreturn)) void arch_main(void);

#endif

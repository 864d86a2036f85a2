/*
 * syscall.S — the syscall entry (LSTAR), the ring-3 dispatcher, the ring-3
 * fault entry and the jump into the function.
 */
#include "asmdefs.h"

	.text
/*
 * LSTAR. Architecturally `syscall` lands here in ring 0 (real VMX/SVM, and
 * kvmbox); on this project's PVM hosts it lands here still in ring 3 with
 * RCX = return RIP, R11 = RFLAGS, RSP = the function's. Both keep RSP on
 * the function's stack, which must not be written (red zone), so the only
 * scratch is a memory slot for RAX.
 */
	.globl kiln_syscall_entry
	.type kiln_syscall_entry, @function
kiln_syscall_entry:
	movq %rax, kiln_cpu+CPU_SC_RAX(%rip)
	movl %cs, %eax
	testb $3, %al
	jnz .Lfrom_ring3
	/*
	 * Ring 0: park the return RIP/RFLAGS and sysret to the trampoline in
	 * ring 3 with RFLAGS = 0x2 (sysretq to CS 0x33, SS 0x2b per STAR).
	 */
	movq %rcx, kiln_cpu+CPU_SC_RCX(%rip)
	movq %r11, kiln_cpu+CPU_SC_R11(%rip)
	movq $kiln_sysret_trampoline, %rcx
	movl $ASM_RFLAGS_BOOT, %r11d
	movq kiln_cpu+CPU_SC_RAX(%rip), %rax
	sysretq
.Lfrom_ring3:
	movq kiln_cpu+CPU_SC_RAX(%rip), %rax
	jmp kiln_syscall_dispatch

/* Ring 3, after the ring-0 path: RCX/R11 back as the CPU gave them. */
kiln_sysret_trampoline:
	movq kiln_cpu+CPU_SC_RCX(%rip), %rcx
	movq kiln_cpu+CPU_SC_R11(%rip), %r11
	/* fall through */

/*
 * The dispatcher, ring 3: RAX = number, RCX = return RIP, R11 = RFLAGS,
 * RSP = the function's stack, arguments in RDI RSI RDX R10 R8 R9.
 */
kiln_syscall_dispatch:
	movq %rsp, kiln_cpu+CPU_USER_RSP(%rip)
	movq kiln_cpu+CPU_KSTACK_TOP(%rip), %rsp
	subq $KF_SIZE, %rsp
	movq %rax, KF_RAX(%rsp)
	movq %rbx, KF_RBX(%rsp)
	movq %rcx, KF_RCX(%rsp)
	movq %rdx, KF_RDX(%rsp)
	movq %rsi, KF_RSI(%rsp)
	movq %rdi, KF_RDI(%rsp)
	movq %rbp, KF_RBP(%rsp)
	movq %r8, KF_R8(%rsp)
	movq %r9, KF_R9(%rsp)
	movq %r10, KF_R10(%rsp)
	movq %r11, KF_R11(%rsp)
	movq %r12, KF_R12(%rsp)
	movq %r13, KF_R13(%rsp)
	movq %r14, KF_R14(%rsp)
	movq %r15, KF_R15(%rsp)
	movq %rcx, KF_RIP(%rsp)
	movq kiln_cpu+CPU_USER_RSP(%rip), %rax
	movq %rax, KF_RSP(%rsp)
	movq %r11, KF_RFLAGS(%rsp)
	cld
	movq %rsp, %rdi
	call libos_syscall
	movq KF_RBX(%rsp), %rbx
	movq KF_RDX(%rsp), %rdx
	movq KF_RSI(%rsp), %rsi
	movq KF_RDI(%rsp), %rdi
	movq KF_RBP(%rsp), %rbp
	movq KF_R8(%rsp), %r8
	movq KF_R9(%rsp), %r9
	movq KF_R10(%rsp), %r10
	movq KF_R12(%rsp), %r12
	movq KF_R13(%rsp), %r13
	movq KF_R14(%rsp), %r14
	movq KF_R15(%rsp), %r15
	movq KF_RAX(%rsp), %rax
	/*
	 * Linux leaves RCX = RIP and R11 = RFLAGS after a syscall. The return
	 * stays in ring 3: sysret is ring-0 only and an iretq costs a host
	 * fix-up here, while popfq + jmp never leaves ring 3 and never writes
	 * below the function's RSP. RFLAGS is popped from the kernel stack.
	 */
	movq KF_RIP(%rsp), %rcx
	movq KF_RFLAGS(%rsp), %r11
	pushq %r11
	popfq
	movq KF_RSP(%rsp), %rsp
	jmp *%rcx

/*
 * Ring-3 fault entry: the ring-0 stub iretq'd here on the fault stack with
 * every GPR as the fault left it. Build the struct kfault and hand it over.
 */
	.globl kiln_fault_entry3
kiln_fault_entry3:
	movq %rax, kiln_kfault+KFT_REGS+KF_RAX(%rip)
	movq %rbx, kiln_kfault+KFT_REGS+KF_RBX(%rip)
	movq %rcx, kiln_kfault+KFT_REGS+KF_RCX(%rip)
	movq %rdx, kiln_kfault+KFT_REGS+KF_RDX(%rip)
	movq %rsi, kiln_kfault+KFT_REGS+KF_RSI(%rip)
	movq %rdi, kiln_kfault+KFT_REGS+KF_RDI(%rip)
	movq %rbp, kiln_kfault+KFT_REGS+KF_RBP(%rip)
	movq %r8, kiln_kfault+KFT_REGS+KF_R8(%rip)
	movq %r9, kiln_kfault+KFT_REGS+KF_R9(%rip)
	movq %r10, kiln_kfault+KFT_REGS+KF_R10(%rip)
	movq %r11, kiln_kfault+KFT_REGS+KF_R11(%rip)
	movq %r12, kiln_kfault+KFT_REGS+KF_R12(%rip)
	movq %r13, kiln_kfault+KFT_REGS+KF_R13(%rip)
	movq %r14, kiln_kfault+KFT_REGS+KF_R14(%rip)
	movq %r15, kiln_kfault+KFT_REGS+KF_R15(%rip)
	movq kiln_fault_record+FR_RIP(%rip), %rax
	movq %rax, kiln_kfault+KFT_REGS+KF_RIP(%rip)
	movq kiln_fault_record+FR_RSP(%rip), %rax
	movq %rax, kiln_kfault+KFT_REGS+KF_RSP(%rip)
	movq kiln_fault_record+FR_RFLAGS(%rip), %rax
	movq %rax, kiln_kfault+KFT_REGS+KF_RFLAGS(%rip)
	movq kiln_fault_record+FR_VECTOR(%rip), %rax
	movq %rax, kiln_kfault+KFT_VECTOR(%rip)
	movq kiln_fault_record+FR_ERROR(%rip), %rax
	movq %rax, kiln_kfault+KFT_ERROR(%rip)
	movq kiln_fault_record+FR_CR2(%rip), %rax
	movq %rax, kiln_kfault+KFT_CR2(%rip)
	cld
	leaq kiln_kfault(%rip), %rdi
	call arch_fault
	ud2

/*
 * arch_resume(const struct kframe *f): continue at f->rip with every
 * register, RSP and RFLAGS from f (after a fault the library OS handled, a
 * signal handler it set up, or rt_sigreturn). Unlike the syscall return it
 * keeps RCX and R11. The jump target and stack go through memory slots, so
 * the last two instructions need no register; one vCPU and no interrupts
 * mean nothing else uses the slots in between.
 */
	.globl arch_resume
	.type arch_resume, @function
arch_resume:
	movq KF_RIP(%rdi), %rax
	movq %rax, kiln_cpu+CPU_RESUME_RIP(%rip)
	movq KF_RSP(%rdi), %rax
	movq %rax, kiln_cpu+CPU_RESUME_RSP(%rip)
	pushq KF_RFLAGS(%rdi)
	popfq
	movq KF_RAX(%rdi), %rax
	movq KF_RBX(%rdi), %rbx
	movq KF_RCX(%rdi), %rcx
	movq KF_RDX(%rdi), %rdx
	movq KF_RSI(%rdi), %rsi
	movq KF_RBP(%rdi), %rbp
	movq KF_R8(%rdi), %r8
	movq KF_R9(%rdi), %r9
	movq KF_R10(%rdi), %r10
	movq KF_R11(%rdi), %r11
	movq KF_R12(%rdi), %r12
	movq KF_R13(%rdi), %r13
	movq KF_R14(%rdi), %r14
	movq KF_R15(%rdi), %r15
	movq KF_RDI(%rdi), %rdi
	movq kiln_cpu+CPU_RESUME_RSP(%rip), %rsp
	jmp *kiln_cpu+CPU_RESUME_RIP(%rip)

/*
 * arch_switch(uint64_t *save_rsp, uint64_t next_rsp): the cooperative
 * thread switch, called from the library OS on a thread's kernel stack.
 * Only the callee-saved registers need saving: to the caller this is a
 * function call. A new thread's stack comes from arch_thread_stack.
 */
	.globl arch_switch
	.type arch_switch, @function
arch_switch:
	pushq %rbp
	pushq %rbx
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, (%rdi)
	movq %rsi, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbx
	popq %rbp
	ret

/*
 * arch_enter_user(entry, rsp): the function starts as after execve, every
 * register but RSP zero and RFLAGS clean.
 */
	.globl arch_enter_user
	.type arch_enter_user, @function
arch_enter_user:
	movq %rdi, kiln_cpu+CPU_ENTRY(%rip)
	pushq $ASM_RFLAGS_BOOT
	popfq
	movq %rsi, %rsp
	xorl %eax, %eax
	xorl %ebx, %ebx
	xorl %ecx, %ecx
	xorl %edx, %edx
	xorl %esi, %esi
	xorl %edi, %edi
	xorl %ebp, %ebp
	xorl %r8d, %r8d
	xorl %r9d, %r9d
	xorl %r10d, %r10d
	xorl %r11d, %r11d
	xorl %r12d, %r12d
	xorl %r13d, %r13d
	xorl %r14d, %r14d
	xorl %r15d, %r15d
	jmp *kiln_cpu+CPU_ENTRY(%rip)

	.section .bss
	.align 16
	.globl kiln_kstack_top
kiln_kstack:
	.skip 65536
kiln_kstack_top:
	.align 16
kiln_fault_stack:
	.skip 16384
	.globl kiln_fault_stack_top
kiln_fault_stack_top:

	.section .note.GNU-stack, "", @progbits

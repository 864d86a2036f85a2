/*
 * entry.S — every instruction of the Kiln kernel that runs in ring 0.
 *
 * Ring 0 is where this machine is slow (each instruction is emulated) and
 * where a bug is most dangerous, so it does three things only: drop to
 * ring 3 at boot, bounce an exception to the ring-3 fault entry, and run a
 * gate operation (outl, wrmsr, mov cr3) for the kernel's own trampoline.
 * Everything it writes is a fixed record in .data; it never calls C.
 */
#include "asmdefs.h"

	.section .text.entry, "ax"
	.globl _start
	.type _start, @function
/*
 * The VMM enters here in ring 0 with RSP = KILN_R0_STACK_TOP. The boot
 * stack and everything after run in ring 3: build an iret frame and go.
 */
_start:
	pushq $ASM_SEL_USER_DS
	pushq $kiln_kstack_top
	pushq $ASM_RFLAGS_BOOT
	pushq $ASM_SEL_USER_CS
	pushq $kiln_start3
	iretq

	.text
/* Ring 3 from here on. RSP is 16-byte aligned, as a call expects. */
kiln_start3:
	xorl %ebp, %ebp
	call arch_main
	ud2

/*
 * The 32 exception stubs, 16 bytes apart so arch.c computes their
 * addresses. Each makes the frame uniform (an error code, then the vector)
 * and joins the common stub.
 */
.macro vec n, has_err
	.align 16
	.if \has_err == 0
	pushq $0
	.endif
	pushq $\n
	jmp kiln_r0_common
.endm

	.align 16
	.globl kiln_vectors
kiln_vectors:
	vec 0,0;  vec 1,0;  vec 2,0;  vec 3,0;  vec 4,0;  vec 5,0;  vec 6,0;  vec 7,0
	vec 8,1;  vec 9,0;  vec 10,1; vec 11,1; vec 12,1; vec 13,1; vec 14,1; vec 15,0
	vec 16,0; vec 17,1; vec 18,0; vec 19,0; vec 20,0; vec 21,1; vec 22,0; vec 23,0
	vec 24,0; vec 25,0; vec 26,0; vec 27,0; vec 28,0; vec 29,1; vec 30,1; vec 31,0

/*
 * Ring 0. Stack: vector, error, RIP, CS, RFLAGS, RSP, SS (long mode always
 * pushes SS:RSP, so the frame is the same from ring 0 and ring 3).
 */
kiln_r0_common:
	incq kiln_ring0_entries(%rip)
	cmpq $3, (%rsp)
	je .Lbreakpoint
.Lfault:
	pushq %rax
	movq 8(%rsp), %rax
	movq %rax, kiln_fault_record+FR_VECTOR(%rip)
	movq 16(%rsp), %rax
	movq %rax, kiln_fault_record+FR_ERROR(%rip)
	movq 24(%rsp), %rax
	movq %rax, kiln_fault_record+FR_RIP(%rip)
	movq 32(%rsp), %rax
	movq %rax, kiln_fault_record+FR_CS(%rip)
	movq 40(%rsp), %rax
	movq %rax, kiln_fault_record+FR_RFLAGS(%rip)
	movq 48(%rsp), %rax
	movq %rax, kiln_fault_record+FR_RSP(%rip)
	movq 56(%rsp), %rax
	movq %rax, kiln_fault_record+FR_SS(%rip)
	movq %cr2, %rax
	movq %rax, kiln_fault_record+FR_CR2(%rip)
	popq %rax
	/* Rewrite the iret frame: ring-3 fault entry on the fault stack. */
	addq $16, %rsp
	movq $kiln_fault_entry3, 0(%rsp)
	movq $ASM_SEL_USER_CS, 8(%rsp)
	movq $ASM_RFLAGS_BOOT, 16(%rsp)
	movq $kiln_fault_stack_top, 24(%rsp)
	movq $ASM_SEL_USER_DS, 32(%rsp)
	iretq

/*
 * #BP. Only an int3 at arch_gate (the return address is kiln_gate_ret) is a
 * gate; any other is the function's breakpoint and takes the fault path.
 * Gate arguments follow the C convention of arch_gate: op in RDI, a in
 * RSI, b in RDX; RAX, RCX, RDX are caller-saved, so free to clobber.
 */
.Lbreakpoint:
	cmpq $kiln_gate_ret, 16(%rsp)
	jne .Lfault
	addq $16, %rsp
	cmpl $GATE_OUTL, %edi
	jne 1f
	movl %esi, %eax
	outl %eax, %dx
	iretq
1:	cmpl $GATE_WRFSBASE, %edi
	jne 2f
	movl $ASM_MSR_FS_BASE, %ecx
	movl %esi, %eax
	movq %rsi, %rdx
	shrq $32, %rdx
	wrmsr
	iretq
2:	cmpl $GATE_LOAD_CR3, %edi
	jne 3f
	movq %rsi, %cr3
3:	iretq

/* uint64_t arch_gate(uint64_t op, uint64_t a, uint64_t b) — ring 3. */
	.globl arch_gate
	.type arch_gate, @function
arch_gate:
	int3
	.globl kiln_gate_ret
kiln_gate_ret:
	ret

	.section .note.GNU-stack, "", @progbits

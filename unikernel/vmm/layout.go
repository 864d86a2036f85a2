package vmm

import "github.com/kilnfaas/kiln/unikernel/abi"

// Guest physical layout; the authority is unikernel/abi (kiln_abi.h).
// Guest-virtual equals guest-physical everywhere.
//
//	0x0000_0000 ┌───────────────────────────────┐
//	            │ (unused)                       │ not mapped: NULL faults
//	0x0000_1000 │ PML4, PDPT, 4 PDs              │ page tables (pagetable.go)
//	0x0020_0000 ├───────────────────────────────┤ ← first mapped 2 MiB page
//	            │ boot info                      │ abi.BootInfoGPA
//	0x0020_1000 │ GDT                            │ abi.GDTGPA
//	0x0020_2000 │ TSS                            │ abi.TSSGPA
//	0x0020_3000 │ IDT (the kernel fills it)      │ abi.IDTGPA
//	0x0020_4000 │ ring-0 stack ↓ 0x208000        │ abi.R0StackTop (TSS.RSP0)
//	0x0020_8000 │ IST stack ↓ 0x20C000           │ abi.ISTStackTop (TSS.IST1)
//	0x0021_0000 ├───────────────────────────────┤
//	            │ guest kernel image             │ abi.KernelBase … abi.KernelLimit
//	0x0040_0000 ├───────────────────────────────┤
//	            │ function ELF, brk, mmap area   │ abi.UserBase
//	            │ …                              │
//	            │ stack (argv, envp, auxv) ↓     │ top stackSize bytes of RAM
//	mem_size    └───────────────────────────────┘
//	0xC000_0000   guest RAM never reaches here   abi.MemMax
//	0xFFE0_0000   hypercall doorbells (MMIO)     abi.MMIOGPA, no memslot
const (
	pml4GPA      = abi.PageTableGPA
	pdptGPA      = pml4GPA + 0x1000
	pdGPA        = pdptGPA + 0x1000 // 4 PDs, one per GiB of the low 4 GiB
	pdCount      = 4
	firstMapped  = abi.BootInfoGPA // everything below is unmapped
	hugePage     = 2 << 20
	stackSize    = 1 << 20 // the function's initial stack region
	minMemSize   = 8 << 20 // kernel + a small function + its stack
	doorbellSize = 8 * (abi.HCMax + 1)
)

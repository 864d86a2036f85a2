package vmm

import (
	"fmt"
	"strings"
)

// dump formats the vCPU's registers for a Result of an abnormal end.
func (c *vcpu) dump() string {
	r, err := c.getRegs()
	if err != nil {
		return "registers unavailable: " + err.Error()
	}
	s, err := c.getSregs()
	if err != nil {
		return "special registers unavailable: " + err.Error()
	}
	return formatRegs(&r, &s)
}

func formatRegs(r *kvmRegs, s *kvmSregs) string {
	var b strings.Builder
	row := func(names []string, vals []uint64) {
		for i := range names {
			fmt.Fprintf(&b, "%-6s %016x  ", names[i], vals[i])
		}
		b.WriteString("\n")
	}
	row([]string{"rax", "rbx", "rcx", "rdx"}, []uint64{r.RAX, r.RBX, r.RCX, r.RDX})
	row([]string{"rsi", "rdi", "rbp", "rsp"}, []uint64{r.RSI, r.RDI, r.RBP, r.RSP})
	row([]string{"r8", "r9", "r10", "r11"}, []uint64{r.R8, r.R9, r.R10, r.R11})
	row([]string{"r12", "r13", "r14", "r15"}, []uint64{r.R12, r.R13, r.R14, r.R15})
	row([]string{"rip", "rflags"}, []uint64{r.RIP, r.RFLAGS})
	row([]string{"cr0", "cr2", "cr3", "cr4"}, []uint64{s.CR0, s.CR2, s.CR3, s.CR4})
	row([]string{"efer"}, []uint64{s.EFER})
	fmt.Fprintf(&b, "cs     %04x dpl %d  ss %04x dpl %d  (ring %d)\n",
		s.CS.Selector, s.CS.DPL, s.SS.Selector, s.SS.DPL, s.CS.Selector&3)
	return b.String()
}

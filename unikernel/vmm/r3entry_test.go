package vmm_test

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/internal/kvmtest"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

// kernelSymbol returns the address of name in the kernel ELF's symbol table.
func kernelSymbol(t *testing.T, kernel []byte, name string) uint64 {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(kernel))
	if err != nil {
		t.Fatalf("kernel ELF: %v", err)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatalf("kernel ELF symbols: %v", err)
	}
	for _, s := range syms {
		if s.Name == name && elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
			return s.Value
		}
	}
	t.Fatalf("kernel ELF: no function symbol %s", name)
	return 0
}

// TestSyscallEntryRing3Branch runs the ring-3 branch of kiln_syscall_entry,
// the one this project's PVM hosts take and kvmbox never does: `syscall`
// lands there in ring 0 on VMX/SVM. The guest enters LSTAR the way a PVM
// host does — a jump from ring 3 with RCX = return RIP, R11 = RFLAGS and its
// own RSP — and checks the result, the preserved registers, RFLAGS and the
// red zone below RSP, for write(2) and for an unknown number (-ENOSYS).
func TestSyscallEntryRing3Branch(t *testing.T) {
	kvmtest.Require(t)
	kernel := kvmtest.Artifact(t, "kernel/kiln-kernel.elf")
	entry := kernelSymbol(t, kernel, "kiln_syscall_entry")
	var out, errb bytes.Buffer
	vm, err := vmm.New(vmm.Config{
		Kernel:  kernel,
		Program: kvmtest.Artifact(t, "vmmguests/r3entry"),
		Args:    []string{"r3entry", fmt.Sprintf("0x%x", entry)},
		Stdout:  &out,
		Stderr:  &errb,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := vm.Run(ctx)
	if res == nil {
		t.Fatalf("Run returned no result (err %v)", err)
	}
	t.Logf("entry %#x: reason %d status %d msg %q ring0 %d\nstdout %q\nstderr %q",
		entry, res.Reason, res.Status, res.Message, res.Ring0Entries, out.String(), errb.String())
	if err != nil || res.Reason != vmm.ReasonExited || res.Status != 0 {
		t.Fatalf("got reason %d status %d err %v, want a clean exit", res.Reason, res.Status, err)
	}
	if s := out.String(); !strings.Contains(s, "r3 entry ok\n") || !strings.Contains(s, "SUCCESS\n") {
		t.Errorf("stdout %q, want the write made through the ring-3 branch and SUCCESS", s)
	}
}

package vmm

import (
	"testing"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

func TestPageTables(t *testing.T) {
	const mem = 64 << 20
	pt := pageTables(mem)
	for _, tc := range []struct {
		va     uint64
		mapped bool
	}{
		{0, false}, {0x1000, false}, {firstMapped - 1, false},
		{firstMapped, true}, {abi.BootInfoGPA, true}, {abi.KernelBase + 5, true},
		{abi.UserBase, true}, {mem - 1, true},
		{mem, false}, {1 << 30, false}, {abi.MMIOGPA - 1, false},
		{abi.MMIOGPA, true}, {abi.MMIOGPA + 8*abi.HCMax, true},
		{1 << 32, false}, {1 << 39, false},
	} {
		pa, ok := translate(pt, tc.va)
		if ok != tc.mapped || (ok && pa != tc.va) {
			t.Errorf("va %#x: mapped=%v pa=%#x, want mapped=%v identity", tc.va, ok, pa, tc.mapped)
		}
	}
	if len(pt) > int(abi.BootInfoGPA-pml4GPA) {
		t.Errorf("page tables (%d bytes) spill into mapped memory", len(pt))
	}
	// The largest guest: every 2 MiB page up to MemMax.
	big := pageTables(abi.MemMax)
	if pa, ok := translate(big, abi.MemMax-1); !ok || pa != abi.MemMax-1 {
		t.Errorf("MemMax-1 not identity-mapped")
	}
}

func TestGDT(t *testing.T) {
	g := gdtBytes()
	if len(g) != abi.SelTSS+16 {
		t.Fatalf("GDT %d bytes", len(g))
	}
	desc := func(sel int) uint64 {
		var d uint64
		for i := 7; i >= 0; i-- {
			d = d<<8 | uint64(g[sel&^7+i])
		}
		return d
	}
	for sel, want := range map[int]struct{ dpl, long uint64 }{
		abi.SelKernelCS: {0, 1}, abi.SelUserCS: {3, 1}, abi.SelUserDS: {3, 0}, abi.SelKernelDS: {0, 0},
	} {
		d := desc(sel)
		if dpl, l, p := d>>45&3, d>>53&1, d>>47&1; dpl != want.dpl || l != want.long || p != 1 {
			t.Errorf("selector %#x: dpl %d long %d present %d", sel, dpl, l, p)
		}
	}
	// sysret's arithmetic on STAR must land on the 64-bit user segments.
	if base := star >> 48; base+16 != abi.SelUserCS || base+8 != abi.SelUserDS {
		t.Errorf("STAR sysret base %#x", base)
	}
	tss := desc(abi.SelTSS)
	if tss>>40&0xff != 0x89 || (tss>>16&0xffffff|tss>>56<<24) != abi.TSSGPA {
		t.Errorf("TSS descriptor %#x", tss)
	}
}

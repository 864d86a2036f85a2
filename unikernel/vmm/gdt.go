package vmm

import (
	"encoding/binary"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// The GDT uses Linux's x86-64 layout so the selectors this machine's PVM
// host shows ring-3 code (0x33/0x2b) agree with the guest's own table, and
// so STAR's pair makes sysretq land on user CS 0x33 / SS 0x2b.
const (
	gdtKernel32CS = 0x00cf9b000000ffff // 0x08: unused, present for Linux parity
	gdtKernelCS   = 0x00af9b000000ffff // 0x10: 64-bit code, DPL 0
	gdtKernelDS   = 0x00cf93000000ffff // 0x18
	gdtUser32CS   = 0x00cffb000000ffff // 0x23: 32-bit code, DPL 3 (sysret's base)
	gdtUserDS     = 0x00cff3000000ffff // 0x2b
	gdtUserCS     = 0x00affb000000ffff // 0x33: 64-bit code, DPL 3
	tssSize       = 104
	tssLimit      = tssSize - 1
)

// gdtBytes is the GDT: the segments above and the 16-byte TSS descriptor
// at abi.SelTSS.
func gdtBytes() []byte {
	b := make([]byte, abi.SelTSS+16)
	le := binary.LittleEndian
	for sel, d := range map[int]uint64{
		0x08: gdtKernel32CS, abi.SelKernelCS: gdtKernelCS, abi.SelKernelDS: gdtKernelDS,
		abi.SelUser32CS &^ 3: gdtUser32CS, abi.SelUserDS &^ 3: gdtUserDS, abi.SelUserCS &^ 3: gdtUserCS,
	} {
		le.PutUint64(b[sel:], d)
	}
	base := uint64(abi.TSSGPA)
	lo := uint64(tssLimit&0xffff) | (base&0xffffff)<<16 | uint64(0x89)<<40 | // present, 64-bit TSS (available)
		uint64(tssLimit>>16&0xf)<<48 | (base>>24&0xff)<<56
	le.PutUint64(b[abi.SelTSS:], lo)
	le.PutUint64(b[abi.SelTSS+8:], base>>32)
	return b
}

// tssBytes is the 64-bit TSS: RSP0 for exceptions from ring 3, IST1 for
// NMI/#DF/#MC, and an I/O bitmap offset past the limit so ring 3 has no
// port access.
func tssBytes() []byte {
	b := make([]byte, tssSize)
	le := binary.LittleEndian
	le.PutUint64(b[4:], abi.R0StackTop)
	le.PutUint64(b[36:], abi.ISTStackTop)
	le.PutUint16(b[102:], tssSize)
	return b
}

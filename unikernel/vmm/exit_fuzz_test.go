package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// fuzzRunSize is the kvm_run mapping as KVM sizes it on x86-64: the
// kvm_run page, the port-I/O data page (data_offset points there), the
// coalesced-MMIO ring.
const fuzzRunSize = 3 * pageSize

// fuzzVM is a VM with guest RAM and no KVM behind it: enough to serve
// hypercalls. Its vCPU has no fd (a register dump says so), its stdin is
// empty, and its discard budget runs on a clock that stands still.
func fuzzVM(tb testing.TB) *VM {
	mem, err := newMemory(minMemSize)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(mem.close)
	return &VM{mem: mem, cpu: &vcpu{fd: -1}, stats: &stats{}, input: newInputPump(nil),
		now: func() time.Time { return time.Unix(0, 0) }, sleep: func(context.Context, time.Time) error { return nil }}
}

// hcArgSize is the size of hypercall nr's argument struct.
func hcArgSize(nr uint64) uint64 {
	switch nr {
	case abi.HCIO:
		return hcIOSize
	case abi.HCExit:
		return hcExitSize
	}
	return hcDiscSize
}

// FuzzExit: any kvm_run page the guest can shape — exit reason, exit union,
// port-I/O data anywhere in the mapping — and any argument struct at the
// address the exit names is decoded without reading outside the page, and
// served without touching host memory outside guest RAM. The decision
// agrees with a model of the ABI written here independently (doorbell
// stores: aligned 8-byte MMIO writes to abi.HCMMIOBase + 8·nr; port calls:
// one 4-byte outl to abi.HCPIOBase + nr, its data inside the mapping);
// anything else the guest causes ends its VM, a malformed hypercall with
// ReasonBadHypercall, and an argument struct that is misaligned, below the
// guest's mapped memory or past its end is refused. The first 2 MiB of RAM
// (page tables, which no hypercall may name) is never written.
func FuzzExit(f *testing.F) {
	vm := fuzzVM(f)
	mem := vm.mem
	low := mem.b[:firstMapped]
	for i := range low {
		low[i] = byte(i*7 + 1)
	}
	lowWant := bytes.Clone(low)

	mmio := func(phys uint64, n uint32, write bool, data uint64) []byte {
		u := make([]byte, 24)
		binary.LittleEndian.PutUint64(u[0:], phys)
		binary.LittleEndian.PutUint64(u[8:], data)
		binary.LittleEndian.PutUint32(u[16:], n)
		if write {
			u[20] = 1
		}
		return u
	}
	pio := func(out bool, size uint8, port uint16, count uint32, off uint64) []byte {
		u := make([]byte, 16)
		if out {
			u[0] = 1
		}
		u[1] = size
		binary.LittleEndian.PutUint16(u[2:], port)
		binary.LittleEndian.PutUint32(u[4:], count)
		binary.LittleEndian.PutUint64(u[8:], off)
		return u
	}
	le32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	var exitArgs bytes.Buffer
	binary.Write(&exitArgs, binary.LittleEndian, &abi.HCExitArgs{Reason: abi.ExitSignal, Signo: 11, FaultRIP: 0x401000})
	var ioArgs bytes.Buffer
	binary.Write(&ioArgs, binary.LittleEndian, &abi.HCIOArgs{OutGPA: 0x600000, OutLen: 5, InGPA: 0x700000, InCap: 4096, Flags: abi.IOWaitInput})
	disc := abi.HCDiscardArgs{Count: 1}
	disc.Ranges[0] = abi.DiscardRange{GPA: 0x600000, Len: 0x2000}
	var discArgs bytes.Buffer
	binary.Write(&discArgs, binary.LittleEndian, &disc)

	// What the guest kernel really does (kiln_hc: MMIO from ring 3, outl
	// from its ring-0 stub), then the near misses.
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCExit, 8, true, 0x500000), []byte(nil), exitArgs.Bytes())
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCIO, 8, true, 0x500000), []byte(nil), ioArgs.Bytes())
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCDiscard, 8, true, 0x500000), []byte(nil), discArgs.Bytes())
	f.Add(uint32(exitIO), pio(true, 4, abi.HCPIOBase+abi.HCExit, 1, pageSize), le32(0x500000), exitArgs.Bytes())
	f.Add(uint32(exitIO), pio(true, 4, abi.HCPIOBase+abi.HCDiscard, 1, pageSize), le32(0x500000), discArgs.Bytes())
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCExit, 8, false, 0x500000), []byte(nil), []byte(nil))
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCExit+4, 4, true, 0x500000), []byte(nil), []byte(nil))
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCExit, 0xffffffff, true, 0x500000), []byte(nil), exitArgs.Bytes())
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase, 8, true, 0x500000), []byte(nil), []byte(nil))
	f.Add(uint32(exitMMIO), mmio(0x1000, 8, true, 0), []byte(nil), []byte(nil))
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCIO, 8, true, minMemSize-8), []byte(nil), ioArgs.Bytes())
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCIO, 8, true, 0x1000), []byte(nil), ioArgs.Bytes())
	f.Add(uint32(exitMMIO), mmio(abi.HCMMIOBase+8*abi.HCExit, 8, true, 0x500004), []byte(nil), exitArgs.Bytes())
	f.Add(uint32(exitIO), pio(true, 4, abi.HCPIOBase+abi.HCIO, 1, fuzzRunSize-2), le32(0x500000), []byte(nil))
	f.Add(uint32(exitIO), pio(true, 4, abi.HCPIOBase+abi.HCIO, 1, ^uint64(0)-1), le32(0x500000), []byte(nil))
	f.Add(uint32(exitIO), pio(true, 255, abi.HCPIOBase+abi.HCIO, 0xffffffff, pageSize), le32(0x500000), []byte(nil))
	f.Add(uint32(exitIO), pio(false, 4, abi.HCPIOBase+abi.HCIO, 1, pageSize), le32(0x500000), []byte(nil))
	f.Add(uint32(exitIO), pio(true, 4, abi.HCPIOBase, 1, pageSize), le32(0x500000), []byte(nil))
	f.Add(uint32(exitShutdown), []byte(nil), []byte(nil), []byte(nil))
	f.Add(uint32(exitHLT), []byte(nil), []byte(nil), []byte(nil))
	f.Add(uint32(exitFailEntry), []byte{0x21}, []byte(nil), []byte(nil))
	f.Add(uint32(exitInternalError), []byte{1}, []byte(nil), []byte(nil))
	f.Add(uint32(exitIntr), []byte(nil), []byte(nil), []byte(nil))
	f.Add(uint32(exitHypercall), []byte(nil), []byte(nil), []byte(nil))
	f.Add(uint32(0xdeadbeef), []byte(nil), []byte(nil), []byte(nil))

	run := make([]byte, fuzzRunSize)
	f.Fuzz(func(t *testing.T, reason uint32, union, pioData, arg []byte) {
		clear(run)
		binary.LittleEndian.PutUint32(run[runExitReason:], reason)
		copy(run[runExitUnion:runExitUnion+256], union) // the union is 256 bytes
		copy(run[pageSize:], pioData)
		d := decodeExit(bytes.Clone(run))
		if d.exit != reason {
			t.Fatalf("exit reason %d decoded as %d", reason, d.exit)
		}

		// The model: which hypercall, if any, this page rings.
		u := run[runExitUnion:]
		le := binary.LittleEndian
		var nr, gpa uint64
		switch reason {
		case exitMMIO:
			phys, n, write := le.Uint64(u[0:]), min(le.Uint32(u[16:]), 8), u[20] != 0
			if write && n == 8 && phys%8 == 0 && phys >= abi.HCMMIOBase+8 && phys <= abi.HCMMIOBase+8*abi.HCMax {
				nr, gpa = (phys-abi.HCMMIOBase)/8, le.Uint64(u[8:])
			}
		case exitIO:
			port, off := uint64(le.Uint16(u[2:])), le.Uint64(u[8:])
			if u[0] == 1 && u[1] == 4 && le.Uint32(u[4:]) == 1 && port > abi.HCPIOBase && port <= abi.HCPIOBase+abi.HCMax && off <= fuzzRunSize-4 {
				nr, gpa = port-abi.HCPIOBase, uint64(le.Uint32(run[off:]))
			}
		}
		switch {
		case reason == exitIntr:
			if d.msg != "" || d.nr != 0 {
				t.Fatalf("KVM_EXIT_INTR (a kick) decoded as %+v, want run again", d)
			}
			return
		case nr != 0:
			if d.msg != "" || d.nr != nr || d.gpa != gpa {
				t.Fatalf("exit %d rings hypercall %d with %#x; decoded %+v", reason, nr, gpa, d)
			}
		case d.msg == "":
			t.Fatalf("exit %d (union % x) decoded as hypercall %d with %#x: the ABI has no such call", reason, u[:24], d.nr, d.gpa)
		case reason == exitMMIO || reason == exitIO:
			if d.end != ReasonBadHypercall {
				t.Fatalf("malformed hypercall exit ends with reason %d (%s), want ReasonBadHypercall", d.end, d.msg)
			}
			return
		case reason == exitShutdown:
			if d.end != ReasonTripleFault {
				t.Fatalf("KVM_EXIT_SHUTDOWN ends with reason %d", d.end)
			}
			return
		default:
			if d.end != ReasonUnknownExit {
				t.Fatalf("exit %d ends with reason %d (%s)", reason, d.end, d.msg)
			}
			return
		}

		// Serve it, the fuzzer's argument struct at the address named (when
		// the guest could have put it there), and see it either served or
		// refused, nothing in between.
		// Each input starts from zero RAM above the first 2 MiB: the
		// struct is cleared afterwards with what HC_IO writes back into
		// it (in_len, in_eof); discards only zero.
		at := gpa % mem.Size()
		if at >= firstMapped {
			copy(mem.b[at:], arg)
			defer clear(mem.b[at:][:min(uint64(max(len(arg), hcExitSize)), mem.Size()-at)])
		}
		r := vm.hypercall(context.Background(), d.nr, d.gpa)
		size := hcArgSize(d.nr)
		outside := d.gpa%8 != 0 || d.gpa < firstMapped || d.gpa > mem.Size() || size > mem.Size()-d.gpa
		switch {
		case outside && (r == nil || r.Reason != ReasonBadHypercall):
			t.Fatalf("hypercall %d with its arguments at %#x (outside guest RAM or misaligned) was served: %+v", d.nr, d.gpa, r)
		case r == nil:
		case r.Reason == ReasonBadHypercall:
			if r.Message == "" || r.Regs == "" {
				t.Fatalf("bad hypercall without a message or register dump: %+v", r)
			}
		case r.Reason == ReasonExited || r.Reason == ReasonSignaled || r.Reason == ReasonPanic:
			if d.nr != abi.HCExit {
				t.Fatalf("hypercall %d ended the VM as HC_EXIT does: %+v", d.nr, r)
			}
		default:
			t.Fatalf("hypercall %d at %#x ended with reason %d: %s", d.nr, d.gpa, r.Reason, r.Message)
		}
		if !bytes.Equal(low, lowWant) {
			t.Fatalf("hypercall %d at %#x wrote to the first 2 MiB of guest RAM", d.nr, d.gpa)
		}
	})
}

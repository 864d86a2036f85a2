// Package vmm is Kiln's virtual machine monitor: it boots the Kiln guest
// kernel and one static x86-64 ELF in a KVM virtual machine through
// /dev/kvm ioctls (no cgo, no QEMU), serves the guest's hypercalls and
// reports how the VM ended. The guest is hostile from its first
// instruction: every address and length it hands over is bounds-checked,
// and whatever it does ends only its own VM.
//
// The contract with the guest is unikernel/abi; the boot recipe is boot.go.
package vmm

import (
	"context"
	"io"
)

// DefaultMemSize is the guest RAM of a VM whose Config names none.
const DefaultMemSize = 64 << 20

// Config describes one VM to boot.
type Config struct {
	Kernel   []byte    // the guest kernel ELF (build/kernel/kiln-kernel.elf)
	Program  []byte    // the function: a static x86-64 Linux ELF
	Args     []string  // argv; Args[0] is the program's name
	Env      []string  // "KEY=VALUE" entries of envp
	MemSize  uint64    // guest RAM in bytes, a multiple of 2 MiB; 0 → DefaultMemSize
	Hostname string    // what uname reports; "" → "kiln"
	Stdin    io.Reader // the function's fd 0; nil → empty; read by a pump goroutine
	Stdout   io.Writer // fd 1; nil → discarded; written from the vCPU thread
	Stderr   io.Writer // fd 2; nil → discarded
	// TraceSyscalls makes the guest kernel log every syscall to stderr.
	TraceSyscalls bool
	// PortIO makes the guest issue hypercalls with `out` from its ring-0
	// stub instead of the ring-3 MMIO doorbell (for measurements).
	PortIO bool
}

// Reason says how a VM ended.
type Reason int

// The ways a VM ends.
const (
	ReasonExited       Reason = iota // the program called exit/exit_group
	ReasonSignaled                   // the program faulted (Status = 128+Signal)
	ReasonPanic                      // the guest kernel gave up (message on stderr)
	ReasonTimeout                    // the context ended first: vCPU kicked, VM destroyed
	ReasonTripleFault                // KVM_EXIT_SHUTDOWN
	ReasonBadHypercall               // unknown number or an out-of-bounds address/length
	ReasonUnknownExit                // a KVM exit the VMM does not handle
	ReasonInternal                   // a host-side failure (ioctl error, ...)
)

// Stats counts what happened inside one VM. All counts are totals since boot.
type Stats struct {
	Exits      uint64 // every return from KVM_RUN
	IOExits    uint64 // KVM_EXIT_IO
	MMIOExits  uint64 // KVM_EXIT_MMIO
	Hypercalls uint64 // served hypercalls
}

// Result is how a VM ended.
type Result struct {
	Reason  Reason
	Status  int    // exit status (0–255); 128+Signal when signaled
	Signal  int    // signal number for ReasonSignaled
	Message string // why, in words, for anything but a clean exit
	Regs    string // guest register dump for abnormal ends
	Stats   Stats

	Syscalls     uint64            // syscalls the guest kernel handled
	Enosys       uint64            // of which answered -ENOSYS
	EnosysByNr   map[uint32]uint32 // unknown syscall number → count
	Ring0Entries uint64            // exceptions and gates taken in ring 0
}
